//! IPv4 networks and the policy's address syntax: `10.77.0.5/24`, egress rules
//! `CIDR[:PORT[/tcp|udp]]` and published ports `HOSTPORT:VMPORT[/tcp|udp]`.
//!
//! VM networks are IPv4: a VM gets one address on its store's bridge.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address with a prefix length (`10.77.0.5/24`); as a network, the address
/// may have host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network address (host bits cleared).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// The network as a CIDR with host bits cleared.
    pub fn trunc(self) -> Ipv4Net {
        Ipv4Net {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Whether the two networks share any address.
    pub fn overlaps(self, other: Ipv4Net) -> bool {
        let p = self.prefix.min(other.prefix);
        let m = Ipv4Net {
            addr: self.addr,
            prefix: p,
        }
        .mask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The `n`th address of the network (0 is the network address itself).
    pub fn nth(self, n: u32) -> Option<Ipv4Addr> {
        let size = if self.prefix == 0 {
            u64::from(u32::MAX) + 1
        } else {
            1u64 << (32 - u32::from(self.prefix))
        };
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.network()) + n))
    }

    /// Host addresses: neither the network nor the broadcast address.
    pub fn is_host(self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network() && ip != self.broadcast()
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Ipv4Net, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} needs a prefix length, as in 10.77.0.5/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{p:?} is not a prefix length (0 to 32)"))?;
        Ok(Ipv4Net { addr, prefix })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A transport protocol of a rule or published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn parse(s: &str) -> Result<Proto, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("{s:?} is not a protocol (tcp or udp)")),
        }
    }
}

fn port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{s:?} is not a port (1 to 65535)"))
}

/// An egress rule: a destination network, optionally one port (both protocols
/// unless one is named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub net: Ipv4Net,
    pub port: Option<u16>,
    pub proto: Option<Proto>,
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Rule, String> {
        let (net, rest) = match s.split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (s, None),
        };
        // A bare address means that one host.
        let net: Ipv4Net = if net.contains('/') {
            net.parse()?
        } else {
            Ipv4Net {
                addr: net
                    .parse()
                    .map_err(|_| format!("{net:?} is not an IPv4 address or network"))?,
                prefix: 32,
            }
        };
        let (port, proto) = match rest {
            None => (None, None),
            Some(r) => match r.split_once('/') {
                Some((p, proto)) => (Some(port(p)?), Some(Proto::parse(proto)?)),
                None => (Some(port(r)?), None),
            },
        };
        Ok(Rule {
            net: net.trunc(),
            port,
            proto,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(proto) = self.proto {
            write!(f, "/{}", proto.as_str())?;
        }
        Ok(())
    }
}

/// A host port forwarded to a VM port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Publish {
    pub host_port: u16,
    pub vm_port: u16,
    pub proto: Proto,
}

impl FromStr for Publish {
    type Err = String;

    fn from_str(s: &str) -> Result<Publish, String> {
        let (ports, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, Proto::parse(proto)?),
            None => (s, Proto::Tcp),
        };
        let (h, v) = ports
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not HOSTPORT:VMPORT, as in 8080:80"))?;
        Ok(Publish {
            host_port: port(h)?,
            vm_port: port(v)?,
            proto,
        })
    }
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host_port, self.vm_port)?;
        if self.proto != Proto::Tcp {
            write!(f, "/{}", self.proto.as_str())?;
        }
        Ok(())
    }
}

/// Serde as the text form, for the policy file.
macro_rules! serde_text {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_text!(Ipv4Net);
serde_text!(Rule);
serde_text!(Publish);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n: Ipv4Net = "10.77.0.5/24".parse().unwrap();
        assert_eq!(n.network(), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 77, 0, 255));
        assert_eq!(n.nth(1), Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(n.nth(256), None);
        assert!(n.is_host(Ipv4Addr::new(10, 77, 0, 254)));
        assert!(!n.is_host(Ipv4Addr::new(10, 77, 0, 255)));
        assert!(!n.contains(Ipv4Addr::new(10, 77, 1, 1)));
        assert!(n.overlaps("10.0.0.0/8".parse().unwrap()));
        assert!(!n.overlaps("10.78.0.0/16".parse().unwrap()));
        assert_eq!(n.to_string(), "10.77.0.5/24");
        for bad in [
            "10.77.0.5",
            "10.77.0.300/24",
            "10.77.0.0/33",
            "x/24",
            "10.77.0.0/",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rules() {
        let r: Rule = "192.168.1.7/24:443/tcp".parse().unwrap();
        assert_eq!(r.to_string(), "192.168.1.0/24:443/tcp");
        assert_eq!(
            "10.0.0.1".parse::<Rule>().unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!("0.0.0.0/0:53".parse::<Rule>().unwrap().port, Some(53));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/8:0",
            "10.0.0.0/8:70000",
            "10.0.0.0/8:53/icmp",
            "nope",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn publishes() {
        let p: Publish = "18080:80".parse().unwrap();
        assert_eq!((p.host_port, p.vm_port, p.proto), (18080, 80, Proto::Tcp));
        assert_eq!(p.to_string(), "18080:80");
        assert_eq!(
            "53:53/udp".parse::<Publish>().unwrap().to_string(),
            "53:53/udp"
        );
        for bad in ["99999:80", "80", "0:80", "80:80/sctp", ":80"] {
            assert!(bad.parse::<Publish>().is_err(), "{bad}");
        }
    }
}

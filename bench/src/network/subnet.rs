//! The bridge's subnet: one that no route of the host overlaps.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: u32,
    prefix: u32,
}

impl Cidr {
    /// `A.B.C.D/N`, or `A.B.C.D` for a single address.
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse().ok()?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().ok()?;
        (prefix <= 32).then_some(Cidr {
            addr: u32::from(addr),
            prefix,
        })
    }

    fn mask(self) -> u32 {
        u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0)
    }

    fn overlaps(self, other: Cidr) -> bool {
        let shorter = if self.prefix < other.prefix {
            self
        } else {
            other
        };
        (self.addr ^ other.addr) & shorter.mask() == 0
    }

    /// Addresses that are neither the network's nor its broadcast address.
    fn hosts(self) -> u64 {
        (1u64 << (32 - self.prefix)).saturating_sub(2)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.prefix)
    }
}

/// The destination of each route of `ip -4 route show table all` (default routes
/// left out: they overlap everything).
fn route_destinations(routes: &str) -> Vec<Cidr> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "throw",
        "unreachable",
        "prohibit",
        "blackhole",
        "nat",
        "anycast",
    ];
    routes
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let first = words.next()?;
            let dest = if TYPES.contains(&first) {
                words.next()?
            } else {
                first
            };
            Cidr::parse(dest)
        })
        .collect()
}

/// The bridge's subnet: `given`, or the first 10.231.x.0 network from /22 up that
/// holds `vms` VMs and its gateway; either way one that no route of the host overlaps.
pub fn choose_subnet(given: Option<&str>, vms: usize) -> Result<Cidr> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .context("running ip -4 route")?;
    if !out.status.success() {
        bail!(
            "ip -4 route failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let routes = route_destinations(&String::from_utf8_lossy(&out.stdout));
    pick_subnet(given, vms, &routes)
}

fn pick_subnet(given: Option<&str>, vms: usize, routes: &[Cidr]) -> Result<Cidr> {
    let need = vms as u64 + 1;
    let clash = |net: Cidr| routes.iter().copied().find(|r| r.overlaps(net));
    if let Some(text) = given {
        let net =
            Cidr::parse(text).with_context(|| format!("--net-subnet {text:?} is not A.B.C.D/N"))?;
        if net.addr & !net.mask() != 0 || !(8..=29).contains(&net.prefix) {
            bail!("--net-subnet {net}: host bits set, or a prefix outside 8 to 29");
        }
        if net.hosts() < need {
            bail!(
                "--net-subnet {net} has room for {} VMs, {vms} are needed",
                net.hosts() - 1
            );
        }
        if let Some(r) = clash(net) {
            bail!("--net-subnet {net} overlaps the host's route to {r}");
        }
        return Ok(net);
    }
    let prefix = (8..=22)
        .rev()
        .find(|&p| Cidr { addr: 0, prefix: p }.hosts() >= need)
        .context("too many VMs for one subnet")?;
    let size = 1u32 << (32 - prefix);
    let first = u32::from(Ipv4Addr::new(10, 231, 0, 0)) & !(size - 1);
    let end = u32::from(Ipv4Addr::new(11, 0, 0, 0));
    (first..end)
        .step_by(size as usize)
        .map(|addr| Cidr { addr, prefix })
        .find(|&net| clash(net).is_none())
        .context("no free subnet in 10.231.0.0 to 10.255.255.255")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_avoid_host_routes() {
        let routes = route_destinations(
            "default via 192.0.2.1 dev eth0\n\
             192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2\n\
             10.231.0.0/23 dev br0\n\
             local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1\n\
             broadcast 10.231.5.255 dev br1 table local\n",
        );
        assert_eq!(routes.len(), 4, "{routes:?}");
        let net = pick_subnet(None, 100, &routes).unwrap();
        // 10.231.0.0/22 overlaps the /23, 10.231.4.0/22 the broadcast address.
        assert_eq!(net.to_string(), "10.231.8.0/22");
        assert_eq!(
            pick_subnet(None, 2000, &[]).unwrap().to_string(),
            "10.231.0.0/21"
        );
        assert!(pick_subnet(Some("10.231.1.0/24"), 10, &routes).is_err());
        assert!(pick_subnet(Some("10.9.9.0/28"), 100, &routes).is_err());
        assert!(pick_subnet(Some("10.9.9.1/24"), 10, &routes).is_err());
        assert_eq!(
            pick_subnet(Some("10.9.9.0/24"), 100, &routes)
                .unwrap()
                .to_string(),
            "10.9.9.0/24"
        );
    }
}

//! VM networks: `host` (the host's network, as FVM had), `none` (a network
//! namespace with only `lo`) and `bridge` (its own namespace, a veth to the
//! store's bridge, its own address, NAT and an egress policy enforced on the host).
//!
//! - [`addr`]: addresses, egress rules and published ports, as the policy writes them;
//! - [`link`]: bridges, veths, addresses and routes, through netlink (blocking requests);
//! - [`dns`]: the store's resolver on the bridge (VM names, forwards within
//!   each VM's egress policy);
//! - [`nft`]: the store's nftables tables (egress policy, NAT, published ports),
//!   generated as text and applied atomically with `nft -f`.
//!
//! Everything fvm makes on the host carries `fvm` in its name: the bridge
//! (default `fvm0`), each VM's veth (`fvm` + 11 hex digits) and the tables
//! (`fvm-<store id>`).

pub mod addr;
pub mod attach;
pub mod dns;
pub mod link;
pub mod nft;

use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use addr::{Ipv4Net, Proto, Publish, Rule};

/// How a VM is networked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    #[default]
    Host,
    None,
    Bridge,
}

impl NetMode {
    pub fn parse(s: &str) -> Result<NetMode, String> {
        match s {
            "host" => Ok(NetMode::Host),
            "none" => Ok(NetMode::None),
            "bridge" => Ok(NetMode::Bridge),
            _ => Err(format!(
                "{s:?} is not a network mode (host, none or bridge)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Host => "host",
            NetMode::None => "none",
            NetMode::Bridge => "bridge",
        }
    }

    /// Whether the VM gets its own network namespace (and may configure it).
    pub fn own_namespace(self) -> bool {
        self != NetMode::Host
    }
}

/// The `[network]` table of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetPolicy {
    #[serde(default)]
    pub mode: NetMode,
    /// The VM's address on the bridge, with the bridge's prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Net>,
    /// Masquerade traffic to outside the bridge's subnet. Absent means the
    /// default, on for a bridged VM; `false` is written out, so a VM whose NAT
    /// was turned off keeps it off when the default changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<bool>,
    /// Name servers written to the VM's own /etc/resolv.conf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Publish>,
}

/// A setting of [`NetPolicy`], as `create` and `config` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKey {
    Net,
    Ip,
    Nat,
    Dns,
    Allow,
    Deny,
    Publish,
}

impl NetKey {
    pub fn name(self) -> &'static str {
        match self {
            NetKey::Net => "net",
            NetKey::Ip => "ip",
            NetKey::Nat => "nat",
            NetKey::Dns => "dns",
            NetKey::Allow => "allow",
            NetKey::Deny => "deny",
            NetKey::Publish => "publish",
        }
    }

    /// Settings that only take effect when the VM starts (its namespace, address
    /// and resolv.conf are made then); the others are host-side rules.
    pub fn at_start(self) -> bool {
        matches!(self, NetKey::Net | NetKey::Ip | NetKey::Dns)
    }
}

/// A network setting that can't be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{key}: {reason}")]
pub struct NetError {
    pub key: &'static str,
    pub reason: String,
}

fn err(key: NetKey, reason: impl Into<String>) -> NetError {
    NetError {
        key: key.name(),
        reason: reason.into(),
    }
}

impl NetPolicy {
    pub fn is_default(&self) -> bool {
        self == &NetPolicy::default()
    }

    /// Apply one flag. List settings add to their list; `none` clears it. `nat`
    /// takes `true`/`false` (the bare flag is `true`), or `default` (on).
    pub fn set(&mut self, key: NetKey, text: &str) -> Result<(), NetError> {
        let none = text == "none";
        match key {
            NetKey::Net => self.mode = NetMode::parse(text).map_err(|e| err(key, e))?,
            NetKey::Ip => {
                self.ip = if none {
                    None
                } else {
                    Some(text.parse().map_err(|e: String| err(key, e))?)
                }
            }
            NetKey::Nat => {
                self.nat = match text {
                    "true" | "yes" | "on" => Some(true),
                    "false" | "no" | "off" => Some(false),
                    "default" => None,
                    _ => {
                        return Err(err(key, format!("{text:?} is not true, false or default")));
                    }
                }
            }
            NetKey::Dns if none => self.dns.clear(),
            NetKey::Dns => self.dns.push(
                text.parse()
                    .map_err(|_| err(key, format!("{text:?} is not an IPv4 address")))?,
            ),
            NetKey::Allow if none => self.allow.clear(),
            NetKey::Allow => self
                .allow
                .push(text.parse().map_err(|e: String| err(key, e))?),
            NetKey::Deny if none => self.deny.clear(),
            NetKey::Deny => self
                .deny
                .push(text.parse().map_err(|e: String| err(key, e))?),
            NetKey::Publish if none => self.publish.clear(),
            NetKey::Publish => self
                .publish
                .push(text.parse().map_err(|e: String| err(key, e))?),
        }
        Ok(())
    }

    /// Check the policy on its own (the store's subnet and other VMs are
    /// checked by the engine).
    pub fn validate(&self) -> Result<(), NetError> {
        if self.mode != NetMode::Bridge {
            let extra = [
                (NetKey::Ip, self.ip.is_some()),
                // (`--nat false` says nothing a non-bridged VM could misread.)
                (NetKey::Nat, self.nat == Some(true)),
                (NetKey::Dns, !self.dns.is_empty()),
                (NetKey::Allow, !self.allow.is_empty()),
                (NetKey::Deny, !self.deny.is_empty()),
                (NetKey::Publish, !self.publish.is_empty()),
            ];
            if let Some((key, _)) = extra.iter().find(|(_, set)| *set) {
                return Err(err(
                    *key,
                    format!(
                        "only a vm with --net bridge has that (this one is {})",
                        self.mode.as_str()
                    ),
                ));
            }
        }
        let mut ports: Vec<(u16, Proto)> = self
            .publish
            .iter()
            .map(|p| (p.host_port, p.proto))
            .collect();
        ports.sort_unstable_by_key(|(p, proto)| (*p, proto.as_str()));
        if let Some(w) = ports.windows(2).find(|w| w[0] == w[1]) {
            return Err(err(
                NetKey::Publish,
                format!("host port {} is published twice", w[0].0),
            ));
        }
        Ok(())
    }

    /// Whether the VM's traffic beyond the bridge is masqueraded: a bridged VM
    /// has NAT unless its policy says `nat = false`.
    pub fn nat(&self) -> bool {
        self.mode == NetMode::Bridge && self.nat != Some(false)
    }

    /// The VM's address, for a bridged VM.
    pub fn address(&self) -> Option<Ipv4Addr> {
        (self.mode == NetMode::Bridge).then_some(self.ip?.addr)
    }
}

/// The store's network settings (`network.toml` in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreNet {
    pub bridge: String,
    /// The bridge's network; its first host address is the bridge's own, the
    /// VMs' gateway.
    pub subnet: Ipv4Net,
    /// Where the store's resolver forwards names that are not VMs'; empty: the
    /// host's /etc/resolv.conf name servers (read when the resolver starts).
    #[serde(
        default,
        rename = "upstream-dns",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub upstream_dns: Vec<std::net::SocketAddrV4>,
}

impl Default for StoreNet {
    fn default() -> StoreNet {
        StoreNet {
            bridge: "fvm0".into(),
            subnet: Ipv4Net {
                addr: Ipv4Addr::new(10, 77, 0, 0),
                prefix: 24,
            },
            upstream_dns: Vec::new(),
        }
    }
}

/// `IP[:PORT]`, an upstream name server (port 53 by default).
pub fn parse_upstream(text: &str) -> Result<std::net::SocketAddrV4, String> {
    text.parse::<std::net::SocketAddrV4>()
        .or_else(|_| {
            text.parse::<Ipv4Addr>()
                .map(|ip| std::net::SocketAddrV4::new(ip, dns::PORT))
        })
        .map_err(|_| format!("{text:?} is not an IPv4 address or IP:PORT"))
        .and_then(|a| {
            if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_broadcast() {
                Err(format!("{text:?} is not a name server's address"))
            } else {
                Ok(a)
            }
        })
}

impl StoreNet {
    /// The bridge's address, with the subnet's prefix.
    pub fn gateway(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.subnet.nth(1).unwrap_or(self.subnet.addr),
            prefix: self.subnet.prefix,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let b = &self.bridge;
        if b.is_empty()
            || b.len() > 15
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        {
            return Err(format!(
                "invalid bridge name {b:?}: 1 to 15 letters, digits, '_', '.' or '-'"
            ));
        }
        if !b.contains("fvm") {
            return Err(format!(
                "invalid bridge name {b:?}: it must contain \"fvm\", so that fvm's objects on the host can be told apart"
            ));
        }
        if self.subnet.addr != self.subnet.network() {
            return Err(format!(
                "invalid subnet {}: host bits are set (did you mean {}?)",
                self.subnet,
                self.subnet.trunc()
            ));
        }
        if !(8..=29).contains(&self.subnet.prefix) {
            return Err(format!(
                "invalid subnet {}: the prefix must be 8 to 29",
                self.subnet
            ));
        }
        Ok(())
    }

    /// Read the store's settings; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<StoreNet, String> {
        match crate::os::files::read_regular(path) {
            Ok(text) => {
                let s: StoreNet = toml::from_str(&text)
                    .map_err(|e| format!("{}: {}", path.display(), e.message()))?;
                s.validate()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreNet::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn to_toml(&self) -> String {
        format!(
            "# featherweight store network: the bridge bridged VMs attach to, and its\n\
             # subnet (the bridge has the first address; VMs get the others);\n\
             # upstream-dns: where the store's resolver forwards names that are not\n\
             # VMs' (absent: the host's /etc/resolv.conf name servers).\n{}",
            toml::to_string(self).expect("serializes")
        )
    }

    /// Is `ip` usable as a VM's address on this bridge?
    pub fn check_vm_ip(&self, ip: Ipv4Net) -> Result<(), String> {
        if ip.prefix != self.subnet.prefix || !self.subnet.contains(ip.addr) {
            return Err(format!(
                "{ip} is not in this store's bridge subnet {} (see fvm network)",
                self.subnet
            ));
        }
        if !self.subnet.is_host(ip.addr) {
            return Err(format!("{ip} is the subnet's network or broadcast address"));
        }
        if ip.addr == self.gateway().addr {
            return Err(format!("{} is the bridge's own address", ip.addr));
        }
        Ok(())
    }

    /// The lowest address of the subnet that is neither the gateway nor in `used`.
    pub fn allocate(&self, used: &[Ipv4Addr]) -> Option<Ipv4Net> {
        (2..)
            .map_while(|n| self.subnet.nth(n))
            .filter(|ip| self.subnet.is_host(*ip))
            .find(|ip| !used.contains(ip))
            .map(|addr| Ipv4Net {
                addr,
                prefix: self.subnet.prefix,
            })
    }
}

/// The host-side veth of VM `name` of the store `store_id`: `fvm` and 11 hex
/// digits of a hash of both (interface names have at most 15 bytes).
pub fn veth_name(store_id: &str, name: &str) -> String {
    // FNV-1a, 64 bits: stable across versions and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in store_id.bytes().chain([b'/']).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix, so names that differ in their last letter differ everywhere.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    format!("fvm{:011x}", h >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_build_a_policy_and_none_clears_lists() {
        let mut p = NetPolicy::default();
        for (k, v) in [
            (NetKey::Net, "bridge"),
            (NetKey::Ip, "10.77.0.5/24"),
            (NetKey::Nat, "true"),
            (NetKey::Dns, "10.77.0.1"),
            (NetKey::Allow, "192.168.0.0/16:443/tcp"),
            (NetKey::Deny, "10.77.0.9"),
            (NetKey::Publish, "18080:80"),
        ] {
            p.set(k, v).unwrap();
        }
        p.validate().unwrap();
        assert_eq!(p.address(), Some(Ipv4Addr::new(10, 77, 0, 5)));
        let text = toml::to_string(&p).unwrap();
        assert_eq!(toml::from_str::<NetPolicy>(&text).unwrap(), p);
        assert!(text.contains("deny = [\"10.77.0.9/32\"]"), "{text}");
        p.set(NetKey::Allow, "none").unwrap();
        assert!(p.allow.is_empty());
    }

    #[test]
    fn bridge_only_settings_need_bridge_mode() {
        let mut p = NetPolicy::default();
        p.set(NetKey::Ip, "10.77.0.5/24").unwrap();
        let e = p.validate().unwrap_err();
        assert_eq!(e.key, "ip");
        p.set(NetKey::Net, "none").unwrap();
        assert!(p.validate().is_err());
        let mut twice = NetPolicy::default();
        twice.set(NetKey::Net, "bridge").unwrap();
        twice.set(NetKey::Publish, "8080:80").unwrap();
        twice.set(NetKey::Publish, "8080:81").unwrap();
        assert!(twice.validate().is_err());
        assert!(NetPolicy::default().set(NetKey::Net, "bogus").is_err());
    }

    #[test]
    fn store_addresses() {
        let s = StoreNet::default();
        s.validate().unwrap();
        assert_eq!(s.gateway().to_string(), "10.77.0.1/24");
        assert!(s.check_vm_ip("10.77.0.5/24".parse().unwrap()).is_ok());
        for bad in [
            "10.77.0.1/24",
            "10.77.0.0/24",
            "10.77.0.255/24",
            "10.78.0.5/24",
            "10.77.0.5/16",
        ] {
            assert!(s.check_vm_ip(bad.parse().unwrap()).is_err(), "{bad}");
        }
        let used = [Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3)];
        assert_eq!(s.allocate(&used).unwrap().to_string(), "10.77.0.4/24");
        let tiny = StoreNet {
            bridge: "fvmt".into(),
            subnet: "10.9.9.0/30".parse().unwrap(),
            upstream_dns: Vec::new(),
        };
        assert_eq!(tiny.allocate(&[]).unwrap().to_string(), "10.9.9.2/30");
        assert_eq!(tiny.allocate(&[Ipv4Addr::new(10, 9, 9, 2)]), None);
        for bad in ["br0", "fvm-this-is-too-long", "fvm 0"] {
            let s = StoreNet {
                bridge: bad.into(),
                ..StoreNet::default()
            };
            assert!(s.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams_and_nat_round_trip() {
        assert_eq!(
            parse_upstream("192.0.2.1").unwrap().to_string(),
            "192.0.2.1:53"
        );
        assert_eq!(parse_upstream("127.0.0.1:5353").unwrap().port(), 5353);
        for bad in ["x", "0.0.0.0", "1.2.3.4:0", "::1"] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
        let s = StoreNet {
            upstream_dns: vec![parse_upstream("192.0.2.1").unwrap()],
            ..StoreNet::default()
        };
        let text = s.to_toml();
        assert!(text.contains("upstream-dns = [\"192.0.2.1:53\"]"), "{text}");
        assert_eq!(toml::from_str::<StoreNet>(&text).unwrap(), s);
        // A policy written before NAT was on by default has no `nat` key: it
        // gets the default; `false` is written out and read back.
        let old: NetPolicy = toml::from_str("mode = \"bridge\"\nip = \"10.77.0.2/24\"").unwrap();
        assert!(old.nat());
        let mut off = old.clone();
        off.set(NetKey::Nat, "false").unwrap();
        let text = toml::to_string(&off).unwrap();
        assert!(text.contains("nat = false"), "{text}");
        assert!(!toml::from_str::<NetPolicy>(&text).unwrap().nat());
        off.set(NetKey::Nat, "default").unwrap();
        assert!(off.nat());
        assert!(!NetPolicy::default().nat());
    }

    #[test]
    fn veth_names_are_short_stable_and_distinct() {
        let a = veth_name("1a2b3c4d", "web1");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("fvm"));
        assert_eq!(a, veth_name("1a2b3c4d", "web1"));
        assert_ne!(a, veth_name("1a2b3c4d", "web2"));
        assert_ne!(a, veth_name("ffffffff", "web1"));
    }
}

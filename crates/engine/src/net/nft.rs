//! The store's firewall: two nftables tables named `fvm-<store id>`, rebuilt from
//! the store's running bridged VMs and replaced atomically with `nft -f` (one
//! transaction: the old tables go and the new ones come in the same commit).
//!
//! - `bridge fvm-<id>` sees each VM's traffic on its own bridge port, where the
//!   VM can't lie about which port it is: it drops packets with another source
//!   address (IPv4 or ARP) and all IPv6, and applies `--deny` to traffic to other
//!   VMs on the bridge (which never reaches the IP layer of the host).
//! - `inet fvm-<id>` applies each VM's egress policy to what it sends to the host
//!   and beyond (by source address, which the bridge table made trustworthy), does
//!   the NAT (`--nat`), and forwards published ports (`--publish`), including from
//!   the host's own loopback.
//!
//! Root in a VM can't touch any of this: the tables live in the host's network
//! namespace, and a VM's `nft flush ruleset` empties only its own.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::{Ipv4Net, Publish, Rule};

/// One running bridged VM, as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRules {
    pub name: String,
    /// The host-side veth (the VM's bridge port).
    pub link: String,
    pub ip: Ipv4Addr,
    pub nat: bool,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub publish: Vec<Publish>,
}

/// What the tables are built from.
#[derive(Debug, Clone)]
pub struct Ruleset<'a> {
    /// `fvm-<store id>`.
    pub table: &'a str,
    pub bridge: &'a str,
    pub subnet: Ipv4Net,
    pub vms: &'a [VmRules],
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (install the nftables package)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the vm firewall: {0}")]
    Refused(String),
}

/// `ip daddr … [tcp|udp|th] dport …` for a rule.
fn matcher(rule: &Rule) -> String {
    let mut m = format!("ip daddr {}", rule.net);
    if let Some(port) = rule.port {
        let proto = rule.proto.map_or("th", |p| p.as_str());
        if let Some(p) = rule.proto {
            let _ = write!(m, " meta l4proto {}", p.as_str());
        }
        let _ = write!(m, " {proto} dport {port}");
    }
    m
}

impl Rule {
    /// Whether this rule matches a packet to `dst` (what [`matcher`] writes).
    pub fn matches(&self, dst: Ipv4Addr, port: u16, proto: super::Proto) -> bool {
        self.net.contains(dst)
            && self.port.is_none_or(|p| p == port)
            && (self.port.is_none() || self.proto.is_none_or(|p| p == proto))
    }
}

impl VmRules {
    /// Whether the VM's egress policy lets a packet to `dst` through, as its
    /// chain in the inet table decides (`local`: `dst` is one of the host's own
    /// addresses). The store's resolver asks this before it forwards a VM's
    /// query, so that DNS is no way around the policy. The host's loopback
    /// addresses are not among the ones a VM reaches without NAT: a packet from
    /// the bridge never gets to them (only an `--allow` names them on purpose),
    /// so a VM without NAT gets nothing from a loopback stub resolver, which
    /// would carry its queries to the internet.
    pub fn reaches(
        &self,
        subnet: Ipv4Net,
        dst: Ipv4Addr,
        port: u16,
        proto: super::Proto,
        local: bool,
    ) -> bool {
        if self.deny.iter().any(|r| r.matches(dst, port, proto)) {
            return false;
        }
        self.allow.iter().any(|r| r.matches(dst, port, proto))
            || subnet.contains(dst)
            || (local && !dst.is_loopback())
            || self.nat
    }
}

fn chain_name(vm: &VmRules) -> String {
    // Links are `fvm` + hex, so this is a valid, unique chain name.
    format!("from_{}", vm.link)
}

impl Ruleset<'_> {
    /// The bridge's own address: the subnet's first.
    fn gateway(&self) -> Ipv4Addr {
        self.subnet.nth(1).unwrap_or(self.subnet.addr)
    }

    /// The nft script that replaces the store's tables with these rules.
    pub fn script(&self) -> String {
        let mut s = String::new();
        // Declaring then deleting makes the delete valid when the table is absent;
        // nft applies the whole script as one transaction.
        for family in ["inet", "bridge"] {
            let _ = writeln!(
                s,
                "table {family} {t}\ndelete table {family} {t}",
                t = self.table
            );
        }
        if self.vms.is_empty() {
            return s;
        }
        self.bridge_table(&mut s);
        self.inet_table(&mut s);
        s
    }

    fn bridge_table(&self, s: &mut String) {
        let _ = writeln!(s, "table bridge {} {{", self.table);
        for hook in ["forward", "input"] {
            let _ = writeln!(
                s,
                "  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;"
            );
            for vm in self.vms {
                let _ = writeln!(s, "    iifname \"{}\" jump {}", vm.link, chain_name(vm));
            }
            let _ = writeln!(s, "  }}");
        }
        for vm in self.vms {
            let _ = writeln!(s, "  chain {} {{", chain_name(vm));
            let _ = writeln!(s, "    ether type ip6 drop");
            let _ = writeln!(s, "    ether type arp arp saddr ip != {} drop", vm.ip);
            let _ = writeln!(s, "    ether type ip ip saddr != {} drop", vm.ip);
            for rule in &vm.deny {
                let _ = writeln!(s, "    {} drop", matcher(rule));
            }
            let _ = writeln!(s, "  }}");
        }
        let _ = writeln!(s, "}}");
    }

    fn inet_table(&self, s: &mut String) {
        let t = self.table;
        let _ = writeln!(s, "table inet {t} {{");
        for hook in ["forward", "input"] {
            let _ = writeln!(
                s,
                "  chain {hook} {{\n    type filter hook {hook} priority filter - 1; policy accept;"
            );
            if hook == "input" {
                // The store's resolver answers on the bridge only: not to the
                // host's other interfaces, nor to the host itself.
                let _ = writeln!(
                    s,
                    "    ip daddr {} meta l4proto {{ tcp, udp }} th dport {} iifname != \"{}\" drop",
                    self.gateway(),
                    super::dns::PORT,
                    self.bridge
                );
            }
            for vm in self.vms {
                let _ = writeln!(s, "    ip saddr {} jump {}", vm.ip, chain_name(vm));
            }
            let _ = writeln!(s, "  }}");
        }
        for vm in self.vms {
            let _ = writeln!(s, "  chain {} {{", chain_name(vm));
            let _ = writeln!(s, "    ct state established,related accept");
            for rule in &vm.deny {
                let _ = writeln!(s, "    {} drop", matcher(rule));
            }
            for rule in &vm.allow {
                let _ = writeln!(s, "    {} accept", matcher(rule));
            }
            let _ = writeln!(s, "    ip daddr {} accept", self.subnet.trunc());
            let _ = writeln!(s, "    fib daddr type local accept");
            if vm.nat {
                let _ = writeln!(s, "    accept");
            } else {
                let _ = writeln!(s, "    drop");
            }
            let _ = writeln!(s, "  }}");
        }
        // Published ports: from outside (prerouting) and from the host itself
        // (output), to any of the host's own addresses.
        for (chain, hook, prio) in [
            ("prerouting", "prerouting", "dstnat"),
            ("output", "output", "-100"),
        ] {
            let _ = writeln!(
                s,
                "  chain {chain} {{\n    type nat hook {hook} priority {prio}; policy accept;"
            );
            for vm in self.vms {
                for p in &vm.publish {
                    let _ = writeln!(
                        s,
                        "    fib daddr type local {proto} dport {} dnat ip to {}:{}",
                        p.host_port,
                        vm.ip,
                        p.vm_port,
                        proto = p.proto.as_str()
                    );
                }
            }
            let _ = writeln!(s, "  }}");
        }
        let _ = writeln!(
            s,
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;"
        );
        // A published port reached from the host's loopback or from another VM
        // on the bridge: the VM must answer through the host.
        let _ = writeln!(
            s,
            "    oifname \"{}\" ip saddr 127.0.0.0/8 masquerade",
            self.bridge
        );
        let _ = writeln!(
            s,
            "    oifname \"{}\" ct status dnat ip saddr {} masquerade",
            self.bridge,
            self.subnet.trunc()
        );
        for vm in self.vms.iter().filter(|vm| vm.nat) {
            let _ = writeln!(
                s,
                "    ip saddr {} oifname != \"{}\" masquerade",
                vm.ip, self.bridge
            );
        }
        let _ = writeln!(s, "  }}\n}}");
    }

    /// Replace the store's tables (or remove them when no VM is left).
    pub fn apply(&self) -> Result<(), NftError> {
        run_nft(&self.script())
    }
}

/// Remove the store's tables, if they exist.
pub fn remove(table: &str) -> Result<(), NftError> {
    let mut s = String::new();
    for family in ["inet", "bridge"] {
        let _ = writeln!(s, "table {family} {table}\ndelete table {family} {table}");
    }
    run_nft(&s)
}

/// Whether the store has tables now (for doctor).
pub fn exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Host ports that running VMs of other stores publish: the `dnat` rules of
/// every other `fvm-*` inet table. (A published port has no socket on the host,
/// so only the rules tell.)
pub fn published_by_other_stores(own: &str) -> Vec<(u16, super::Proto)> {
    let list = |args: &[&str]| {
        Command::new("nft")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let tables = list(&["list", "tables", "inet"]);
    let mut out = Vec::new();
    for table in tables
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|t| t.starts_with("fvm-") && *t != own)
    {
        out.extend(published_in(&list(&[
            "list",
            "chain",
            "inet",
            table,
            "prerouting",
        ])));
    }
    out
}

/// The `PROTO dport PORT dnat` rules of a chain as `nft list` prints it.
fn published_in(text: &str) -> Vec<(u16, super::Proto)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.contains(" dnat ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(3) {
            let proto = match w[0] {
                "tcp" => super::Proto::Tcp,
                "udp" => super::Proto::Udp,
                _ => continue,
            };
            if w[1] == "dport"
                && let Ok(port) = w[2].parse()
            {
                out.push((port, proto));
            }
        }
    }
    out
}

fn run_nft(script: &str) -> Result<(), NftError> {
    tracing::debug!(%script, "nft -f -");
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        let first = msg
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        Err(NftError::Refused(first.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, link: &str, ip: [u8; 4]) -> VmRules {
        VmRules {
            name: name.into(),
            link: link.into(),
            ip: Ipv4Addr::from(ip),
            nat: false,
            allow: vec![],
            deny: vec![],
            publish: vec![],
        }
    }

    #[test]
    fn published_ports_are_read_back_from_a_listed_chain() {
        let listed = "table inet fvm-1a2b {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tfib daddr type local tcp dport 18080 dnat ip to 10.77.0.2:80\n\t\tfib daddr type local udp dport 5353 dnat ip to 10.77.0.3:53\n\t}\n}\n";
        assert_eq!(
            published_in(listed),
            vec![
                (18080, super::super::Proto::Tcp),
                (5353, super::super::Proto::Udp)
            ]
        );
        assert!(published_in("tcp dport 80 accept").is_empty());
    }

    #[test]
    fn reaches_follows_the_chain_deny_allow_subnet_host_nat() {
        let subnet: Ipv4Net = "10.77.0.0/24".parse().unwrap();
        let mut a = vm("a", "fvm00000000001", [10, 77, 0, 2]);
        let up = Ipv4Addr::new(192, 0, 2, 53);
        let udp = super::super::Proto::Udp;
        assert!(!a.reaches(subnet, up, 53, udp, false));
        assert!(a.reaches(subnet, up, 53, udp, true));
        assert!(a.reaches(subnet, Ipv4Addr::new(10, 77, 0, 9), 53, udp, false));
        a.nat = true;
        assert!(a.reaches(subnet, up, 53, udp, false));
        a.deny = vec!["192.0.2.0/24:53/udp".parse().unwrap()];
        assert!(!a.reaches(subnet, up, 53, udp, false));
        assert!(a.reaches(subnet, up, 53, super::super::Proto::Tcp, false));
        a.deny = vec!["0.0.0.0/0:53".parse().unwrap()];
        assert!(!a.reaches(subnet, Ipv4Addr::LOCALHOST, 53, udp, true));
        a.nat = false;
        a.deny.clear();
        a.allow = vec!["192.0.2.53".parse().unwrap()];
        assert!(a.reaches(subnet, up, 53, udp, false));
    }

    #[test]
    fn no_vm_only_removes_the_tables() {
        let r = Ruleset {
            table: "fvm-1a2b",
            bridge: "fvm0",
            subnet: "10.77.0.0/24".parse().unwrap(),
            vms: &[],
        };
        assert_eq!(
            r.script(),
            "table inet fvm-1a2b\ndelete table inet fvm-1a2b\n\
             table bridge fvm-1a2b\ndelete table bridge fvm-1a2b\n"
        );
    }

    #[test]
    fn a_vm_gets_anti_spoofing_its_policy_nat_and_published_ports() {
        let mut a = vm("a", "fvm00000000001", [10, 77, 0, 2]);
        a.nat = true;
        a.deny = vec!["10.77.0.3:80/tcp".parse().unwrap()];
        a.allow = vec!["192.168.0.0/16".parse().unwrap()];
        a.publish = vec!["18080:80".parse().unwrap()];
        let b = vm("b", "fvm00000000002", [10, 77, 0, 3]);
        let vms = [a, b];
        let r = Ruleset {
            table: "fvm-1a2b",
            bridge: "fvm0",
            subnet: "10.77.0.0/24".parse().unwrap(),
            vms: &vms,
        };
        let s = r.script();
        for line in [
            "iifname \"fvm00000000001\" jump from_fvm00000000001",
            "ether type ip ip saddr != 10.77.0.2 drop",
            "ether type arp arp saddr ip != 10.77.0.2 drop",
            "ether type ip6 drop",
            "ip daddr 10.77.0.3/32 meta l4proto tcp tcp dport 80 drop",
            "ip saddr 10.77.0.2 jump from_fvm00000000001",
            "ip daddr 192.168.0.0/16 accept",
            "ip daddr 10.77.0.0/24 accept",
            "fib daddr type local accept",
            "fib daddr type local tcp dport 18080 dnat ip to 10.77.0.2:80",
            "oifname \"fvm0\" ip saddr 127.0.0.0/8 masquerade",
            "ip saddr 10.77.0.2 oifname != \"fvm0\" masquerade",
        ] {
            assert!(s.contains(line), "missing {line:?} in:\n{s}");
        }
        // b has no nat: its chain ends in drop, and it is not masqueraded.
        let b_chain = s.split("chain from_fvm00000000002 {").nth(2).unwrap();
        let b_chain = &b_chain[..b_chain.find('}').unwrap()];
        assert!(b_chain.trim_end().ends_with("drop"), "{b_chain}");
        assert!(!s.contains("ip saddr 10.77.0.3 oifname"));
    }

    #[test]
    fn the_script_is_accepted_by_nft() {
        if !crate::testing::require_root("the_script_is_accepted_by_nft") {
            return;
        }
        if Command::new("nft").arg("--version").output().is_err() {
            panic!("nft is not installed");
        }
        let mut a = vm("a", "fvmtest0000001", [10, 231, 7, 2]);
        a.nat = true;
        a.deny = vec![
            "10.231.7.3:80/tcp".parse().unwrap(),
            "1.2.3.0/24:53".parse().unwrap(),
        ];
        a.allow = vec!["192.168.0.0/16:443/tcp".parse().unwrap()];
        a.publish = vec!["18080:80".parse().unwrap(), "5353:53/udp".parse().unwrap()];
        let vms = [a, vm("b", "fvmtest0000002", [10, 231, 7, 3])];
        let table = format!("fvm-unit{}", std::process::id());
        let r = Ruleset {
            table: &table,
            bridge: "fvmtestbr0",
            subnet: "10.231.7.0/24".parse().unwrap(),
            vms: &vms,
        };
        let applied = r.apply();
        let present = exists(&table);
        remove(&table).unwrap();
        applied.unwrap();
        assert!(present);
        assert!(!exists(&table));
    }

    /// A random set of running VMs of a random store, as the store would have
    /// them: hostile names (which reach the rules only through the hash in the
    /// link's name), any addresses, rules and published ports.
    fn random_vms(rng: &mut fastrand::Rng, store: &str) -> Vec<VmRules> {
        (0..rng.usize(1..6))
            .map(|i| {
                let name = format!("{i}{}", crate::testing::text(rng, 12));
                VmRules {
                    link: super::super::veth_name(store, &name),
                    name,
                    ip: Ipv4Addr::from(rng.u32(..)),
                    nat: rng.bool(),
                    allow: (0..rng.usize(..4))
                        .map(|_| crate::testing::rule(rng))
                        .collect(),
                    deny: (0..rng.usize(..4))
                        .map(|_| crate::testing::rule(rng))
                        .collect(),
                    publish: (0..rng.usize(..3))
                        .map(|_| crate::testing::publish(rng))
                        .collect(),
                }
            })
            .collect()
    }

    /// A bridge name as `fvm network` accepts it: 1 to 15 of `[A-Za-z0-9_.-]`,
    /// with "fvm" in it.
    fn random_bridge(rng: &mut fastrand::Rng) -> String {
        const CHARS: &[u8] = b"abcXYZ019_.-";
        let mut b: String = (0..rng.usize(..=12))
            .map(|_| char::from(CHARS[rng.usize(..CHARS.len())]))
            .collect();
        b.insert_str(rng.usize(..=b.len()), "fvm");
        b
    }

    #[test]
    fn vm_names_never_reach_the_script() {
        crate::testing::cases("nft names", 300, |rng| {
            let vms = random_vms(rng, "1a2b3c4d");
            let mut renamed = vms.clone();
            for vm in &mut renamed {
                vm.name = "x".into();
                assert!(
                    vm.link.len() == 14
                        && vm.link.starts_with("fvm")
                        && vm.link[3..].bytes().all(|b| b.is_ascii_hexdigit()),
                    "{}",
                    vm.link
                );
            }
            let bridge = random_bridge(rng);
            let r = |vms| Ruleset {
                table: "fvm-1a2b3c4d",
                bridge: &bridge,
                subnet: "10.77.0.0/24".parse().unwrap(),
                vms,
            };
            assert_eq!(r(&vms).script(), r(&renamed).script());
        });
    }

    #[test]
    fn any_vms_rules_are_accepted_by_nft() {
        if !crate::testing::require_root("any_vms_rules_are_accepted_by_nft") {
            return;
        }
        // Checked (`nft -c`), not applied: nothing changes on the host.
        crate::testing::cases("nft scripts", 40, |rng| {
            let store = format!("{:08x}", rng.u32(..));
            let vms = random_vms(rng, &store);
            let table = format!("fvm-{store}");
            let bridge = random_bridge(rng);
            let subnet = crate::net::Ipv4Net {
                addr: Ipv4Addr::from(rng.u32(..)),
                prefix: rng.u8(8..=30),
            }
            .trunc();
            let r = Ruleset {
                table: &table,
                bridge: &bridge,
                subnet,
                vms: &vms,
            };
            let script = r.script();
            let mut child = Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nft is installed");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft refused:\n{}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
    }
}

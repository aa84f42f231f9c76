//! The store's firewall: two nftables tables named `fvm-<store id>`, `bridge`
//! and `inet`, made of a skeleton that all the store's bridged VMs share and of
//! each running VM's own pieces.
//!
//! - The skeleton, made when the store's first bridged VM starts (or when it
//!   is found missing or different) and removed with the store's bridge: the
//!   tables, their base chains, verdict maps keyed by a VM's bridge port (its
//!   host-side veth), by its address and by its published host ports, and the
//!   set of the resolver's address (in it while a VM runs). Their
//!   names carry a fingerprint of the skeleton (the bridge, the subnet, the
//!   ports' interface group and the layout), so that a VM's pieces are never
//!   added to a skeleton made for something else.
//! - A VM's pieces: its chains (`from_<link>` in both tables, `pub_<link>` and
//!   `masq_<link>` in the inet table) and the map elements that lead to them.
//!   A VM's start adds them in one `nft -f` transaction that deletes nothing
//!   and touches nothing of the other VMs; its stop deletes them; a change of
//!   its rules replaces them, in one transaction too. A start creates its
//!   chains (`create`, which fails if they exist) and a stop deletes every one
//!   of them (which fails while a map element still leads there), so a stale
//!   or damaged ruleset makes the step fail, and the caller then rebuilds the
//!   whole ruleset from the running VMs ([`Ruleset::apply`]: one transaction
//!   that deletes the tables and makes them again), which always converges.
//!
//! What the tables do:
//!
//! - `bridge fvm-<id>` sees each VM's traffic on its own bridge port, where the
//!   VM can't lie about which port it is: it drops packets with another source
//!   address (IPv4 or ARP) and all IPv6, and applies `--deny` to traffic to other
//!   VMs on the bridge (which never reaches the IP layer of the host). The
//!   store's ports are in an interface group of the store's own: a port of
//!   the store that has no element in the map (a VM whose pieces aren't in yet)
//!   can send nothing.
//! - `inet fvm-<id>` applies each VM's egress policy to what it sends to the host
//!   and beyond (by source address, which the bridge table made trustworthy), does
//!   the NAT (`--nat`), and forwards published ports (`--publish`), including from
//!   the host's own loopback.
//!
//! Root in a VM can't touch any of this: the tables live in the host's network
//! namespace, and a VM's `nft flush ruleset` empties only its own. Nothing a VM
//! can set reaches a script: names in it are the table's (`fvm-` and hex), the
//! store's bridge (checked again here) and the veths' (`fvm` and hex, checked).

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
    /// The interface group of the store's bridge ports (never 0, every
    /// interface's default).
    pub group: u32,
    pub vms: &'a [VmRules],
    /// The store's network lock, which `nft` holds too while it runs (see
    /// [`crate::os::sys::spawn_killed_with_parent`]).
    pub hold: Option<std::os::fd::BorrowedFd<'a>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (install the nftables package)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the vm firewall: {0}")]
    Refused(String),
    #[error("not writing {0} into the vm firewall")]
    Name(String),
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

    /// The VM's link, if it is one fvm makes (`fvm` and 11 hex digits): only
    /// such a name goes into a script, where it names chains and elements.
    fn checked_link(&self) -> Result<&str, NftError> {
        let l = &self.link;
        if l.len() == 14 && l.starts_with("fvm") && l[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(l)
        } else {
            Err(NftError::Name(format!("link name {l:?}")))
        }
    }
}

/// The layout of the skeleton; part of its fingerprint, so that a skeleton
/// made by another version of this code is made again, not added to.
const LAYOUT: &str = "fvm-skeleton-1";

/// Where each map is, and what its elements are.
type Map = (&'static str, &'static str);
const PORTS: Map = ("bridge", "ports");
const SOURCES: Map = ("inet", "src");
const PUBLISHED: Map = ("inet", "pub");
const MASQUERADED: Map = ("inet", "masq");
const RESOLVER: Map = ("inet", "dns");

impl Ruleset<'_> {
    /// The bridge's own address: the subnet's first.
    fn gateway(&self) -> Ipv4Addr {
        self.subnet.nth(1).unwrap_or(self.subnet.addr)
    }

    /// The names that go into every script: the table (`fvm-` and letters or
    /// digits: the store's id), the
    /// bridge (what `fvm network` accepts), the group (never 0).
    fn check(&self) -> Result<(), NftError> {
        let t = self.table;
        if !(t.len() > 4
            && t.len() <= 20
            && t.starts_with("fvm-")
            && t[4..].bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(NftError::Name(format!("table name {t:?}")));
        }
        let b = self.bridge;
        if b.is_empty()
            || b.len() > 15
            || !b
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
        {
            return Err(NftError::Name(format!("bridge name {b:?}")));
        }
        if self.group == 0 {
            return Err(NftError::Name("interface group 0".into()));
        }
        Ok(())
    }

    /// 8 hex digits of a hash of everything the skeleton is made of.
    fn fingerprint(&self) -> String {
        let text = format!(
            "{LAYOUT} {} {} {} {}",
            self.table, self.bridge, self.subnet, self.group
        );
        let mut h: u32 = 0x811c_9dc5;
        for b in text.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        format!("{h:08x}")
    }

    fn map(&self, (_, name): Map) -> String {
        format!("{name}_{}", self.fingerprint())
    }

    /// The nft script that replaces the store's tables with the skeleton and
    /// every VM's pieces. With no VM left the skeleton stays (it goes with the
    /// store's bridge, [`remove`]), as after the last VM's own stop: a port of
    /// the store without its VM's pieces (one whose start is under way, or
    /// whose init isn't taken for running) still sends nothing.
    pub fn script(&self) -> Result<String, NftError> {
        self.check()?;
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
        self.skeleton(&mut s);
        if self.vms.is_empty() {
            return Ok(s);
        }
        self.resolver(&mut s, "add");
        // Two VMs can't have one address or host port (the engine refuses it),
        // but if hand-edited policies say so, the first one keeps it, as a
        // rule listed first would, and the rest of the firewall is still made.
        let mut taken = std::collections::HashSet::new();
        for vm in self.vms {
            self.add_pieces(&mut s, vm, Some(&mut taken))?;
        }
        Ok(s)
    }

    /// The tables, their base chains and the maps.
    fn skeleton(&self, s: &mut String) {
        let ports = self.map(PORTS);
        let _ = writeln!(
            s,
            "table bridge {} {{\n  map {ports} {{ type ifname : verdict; }}",
            self.table
        );
        for hook in ["forward", "input"] {
            // A port of the store without an element: nothing passes.
            let _ = writeln!(
                s,
                "  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;\n    \
                 iifname vmap @{ports}\n    iifgroup {} drop\n  }}",
                self.group
            );
        }
        let _ = writeln!(s, "}}");
        let (src, publ, masq) = (
            self.map(SOURCES),
            self.map(PUBLISHED),
            self.map(MASQUERADED),
        );
        let _ = writeln!(
            s,
            "table inet {} {{\n  map {src} {{ type ipv4_addr : verdict; }}\n  \
             map {publ} {{ type inet_proto . inet_service : verdict; }}\n  \
             map {masq} {{ type ipv4_addr : verdict; }}\n  \
             set {dns} {{ type ipv4_addr; }}",
            self.table,
            dns = self.map(RESOLVER),
        );
        for hook in ["forward", "input"] {
            let _ = writeln!(
                s,
                "  chain {hook} {{\n    type filter hook {hook} priority filter - 1; policy accept;"
            );
            if hook == "input" {
                // The store's resolver answers on the bridge only: not to the
                // host's other interfaces, nor to the host itself. (Its address
                // is in the set while a VM runs.)
                let _ = writeln!(
                    s,
                    "    ip daddr @{} meta l4proto {{ tcp, udp }} th dport {} iifname != \"{}\" drop",
                    self.map(RESOLVER),
                    super::dns::PORT,
                    self.bridge
                );
            }
            let _ = writeln!(s, "    ip saddr vmap @{src}\n  }}");
        }
        // Published ports: from outside (prerouting) and from the host itself
        // (output), to any of the host's own addresses.
        for (chain, hook, prio) in [
            ("prerouting", "prerouting", "dstnat"),
            ("output", "output", "-100"),
        ] {
            let _ = writeln!(
                s,
                "  chain {chain} {{\n    type nat hook {hook} priority {prio}; policy accept;\n    \
                 fib daddr type local meta l4proto . th dport vmap @{publ}\n  }}"
            );
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
        let _ = writeln!(
            s,
            "    oifname != \"{}\" ip saddr vmap @{masq}\n  }}\n}}",
            self.bridge
        );
    }

    /// A VM's chains and the elements that lead to them, all made anew
    /// (`create` fails if a chain is there already).
    fn add_pieces(
        &self,
        s: &mut String,
        vm: &VmRules,
        taken: Option<&mut std::collections::HashSet<(&'static str, String)>>,
    ) -> Result<(), NftError> {
        let link = vm.checked_link()?;
        let t = self.table;
        let from = format!("from_{link}");
        let publ = format!("pub_{link}");
        let masq = format!("masq_{link}");
        // Bridge port: anti-spoofing and --deny to other VMs.
        let _ = writeln!(s, "create chain bridge {t} {from}");
        let mut rule = |family: &str, chain: &str, text: &str| {
            let _ = writeln!(s, "add rule {family} {t} {chain} {text}");
        };
        rule("bridge", &from, "ether type ip6 drop");
        rule(
            "bridge",
            &from,
            &format!("ether type arp arp saddr ip != {} drop", vm.ip),
        );
        rule(
            "bridge",
            &from,
            &format!("ether type ip ip saddr != {} drop", vm.ip),
        );
        for r in &vm.deny {
            rule("bridge", &from, &format!("{} drop", matcher(r)));
        }
        rule("bridge", &from, "accept");
        // Egress policy to the host and beyond.
        let _ = writeln!(s, "create chain inet {t} {from}");
        let mut rule = |family: &str, chain: &str, text: &str| {
            let _ = writeln!(s, "add rule {family} {t} {chain} {text}");
        };
        rule("inet", &from, "ct state established,related accept");
        for r in &vm.deny {
            rule("inet", &from, &format!("{} drop", matcher(r)));
        }
        for r in &vm.allow {
            rule("inet", &from, &format!("{} accept", matcher(r)));
        }
        rule(
            "inet",
            &from,
            &format!("ip daddr {} accept", self.subnet.trunc()),
        );
        rule("inet", &from, "fib daddr type local accept");
        rule("inet", &from, if vm.nat { "accept" } else { "drop" });
        // Published ports and NAT: chains of their own, always made (empty if
        // unused), so that the stop's delete of them fails while an element
        // it didn't know of still leads there.
        let _ = writeln!(s, "create chain inet {t} {publ}");
        let _ = writeln!(s, "create chain inet {t} {masq}");
        let mut rule = |chain: &str, text: &str| {
            let _ = writeln!(s, "add rule inet {t} {chain} {text}");
        };
        for p in &vm.publish {
            rule(
                &publ,
                &format!(
                    "{proto} dport {} dnat ip to {}:{}",
                    p.host_port,
                    vm.ip,
                    p.vm_port,
                    proto = p.proto.as_str()
                ),
            );
        }
        if vm.nat {
            rule(&masq, "masquerade");
        }
        let mut elements = self.elements(vm);
        if let Some(taken) = taken {
            for (map, list) in &mut elements {
                list.retain(|(key, _)| taken.insert((map.1, key.clone())));
            }
        }
        for ((family, name), list) in elements {
            if list.is_empty() {
                continue;
            }
            let list: Vec<String> = list
                .iter()
                .map(|(key, chain)| format!("{key} : jump {chain}"))
                .collect();
            let _ = writeln!(
                s,
                "add element {family} {t} {} {{ {} }}",
                self.map((family, name)),
                list.join(", ")
            );
        }
        Ok(())
    }

    /// The VM's elements, map by map: each element's key and the chain it
    /// leads to.
    fn elements(&self, vm: &VmRules) -> Vec<(Map, Vec<(String, String)>)> {
        let link = &vm.link;
        let mut out = vec![
            (PORTS, vec![(format!("\"{link}\""), format!("from_{link}"))]),
            (SOURCES, vec![(vm.ip.to_string(), format!("from_{link}"))]),
        ];
        let mut published: Vec<(String, String)> = Vec::new();
        for p in &vm.publish {
            let key = format!("{} . {}", p.proto.as_str(), p.host_port);
            if !published.iter().any(|(k, _)| *k == key) {
                published.push((key, format!("pub_{link}")));
            }
        }
        out.push((PUBLISHED, published));
        if vm.nat {
            out.push((
                MASQUERADED,
                vec![(vm.ip.to_string(), format!("masq_{link}"))],
            ));
        }
        out
    }

    /// Delete a VM's elements, then its chains (which fails if an element
    /// still leads to one).
    fn remove_pieces(&self, s: &mut String, vm: &VmRules) -> Result<(), NftError> {
        let link = vm.checked_link()?;
        let t = self.table;
        for ((family, name), list) in self.elements(vm) {
            if list.is_empty() {
                continue;
            }
            let keys: Vec<&str> = list.iter().map(|(key, _)| key.as_str()).collect();
            let _ = writeln!(
                s,
                "delete element {family} {t} {} {{ {} }}",
                self.map((family, name)),
                keys.join(", ")
            );
        }
        let _ = writeln!(s, "delete chain bridge {t} from_{link}");
        for chain in ["from", "pub", "masq"] {
            let _ = writeln!(s, "delete chain inet {t} {chain}_{link}");
        }
        Ok(())
    }

    /// The resolver's address in or out of the set its rule matches.
    fn resolver(&self, s: &mut String, verb: &str) {
        let _ = writeln!(
            s,
            "{verb} element inet {} {} {{ {} }}",
            self.table,
            self.map(RESOLVER),
            self.gateway()
        );
    }

    /// The script of a VM's start: its pieces, into the skeleton that is there
    /// (and the resolver's address into its set, if it isn't there already).
    pub fn add_script(&self, vm: &VmRules) -> Result<String, NftError> {
        self.check()?;
        let mut s = String::new();
        self.resolver(&mut s, "add");
        self.add_pieces(&mut s, vm, None)?;
        Ok(s)
    }

    /// The script of a VM's stop: its pieces go (and, after the store's last
    /// running VM, the resolver's address from its set; the skeleton stays).
    pub fn remove_script(&self, vm: &VmRules, last: bool) -> Result<String, NftError> {
        self.check()?;
        let mut s = String::new();
        self.remove_pieces(&mut s, vm)?;
        if last {
            self.resolver(&mut s, "delete");
        }
        Ok(s)
    }

    /// The script of a change of a running VM's rules: its pieces as they were
    /// go, and come back as they are now, in one transaction.
    pub fn replace_script(&self, old: &VmRules, new: &VmRules) -> Result<String, NftError> {
        self.check()?;
        let mut s = String::new();
        self.remove_pieces(&mut s, old)?;
        self.add_pieces(&mut s, new, None)?;
        Ok(s)
    }

    /// Replace the store's tables.
    pub fn apply(&self) -> Result<(), NftError> {
        run_nft(&self.script()?, self.hold)
    }

    /// Add a started VM's pieces to the skeleton.
    pub fn apply_add(&self, vm: &VmRules) -> Result<(), NftError> {
        run_nft(&self.add_script(vm)?, self.hold)
    }

    /// Remove a stopped VM's pieces.
    pub fn apply_remove(&self, vm: &VmRules, last: bool) -> Result<(), NftError> {
        run_nft(&self.remove_script(vm, last)?, self.hold)
    }

    /// Replace a running VM's pieces.
    pub fn apply_replace(&self, old: &VmRules, new: &VmRules) -> Result<(), NftError> {
        run_nft(&self.replace_script(old, new)?, self.hold)
    }
}

/// Remove the store's tables, if they exist.
pub fn remove(table: &str, hold: Option<std::os::fd::BorrowedFd<'_>>) -> Result<(), NftError> {
    let mut s = String::new();
    for family in ["inet", "bridge"] {
        let _ = writeln!(s, "table {family} {table}\ndelete table {family} {table}");
    }
    run_nft(&s, hold)
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
        // The `dnat` rules are in the VMs' `pub_` chains (or, in tables an
        // older fvm made, in `prerouting` and `output`).
        out.extend(published_in(&list(&["list", "table", "inet", table])));
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

fn run_nft(script: &str, hold: Option<std::os::fd::BorrowedFd<'_>>) -> Result<(), NftError> {
    tracing::debug!(%script, "nft -f -");
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A killed fvm takes its nft with it, and nft holds the network lock
    // until it is gone: otherwise nft could apply a VM's change after the next
    // command has cleaned up after the VM (its rules would stay).
    let mut child =
        crate::os::sys::spawn_killed_with_parent(&mut cmd, hold).map_err(NftError::Spawn)?;
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
    fn with_no_vm_the_skeleton_stays_and_drops_the_stores_unknown_ports() {
        let r = Ruleset {
            table: "fvm-1a2b",
            bridge: "fvm0",
            subnet: "10.77.0.0/24".parse().unwrap(),
            group: 0x8000_0001,
            hold: None,
            vms: &[],
        };
        let s = r.script().unwrap();
        assert!(
            s.starts_with(
                "table inet fvm-1a2b\ndelete table inet fvm-1a2b\n\
                 table bridge fvm-1a2b\ndelete table bridge fvm-1a2b\n"
            ),
            "{s}"
        );
        // The skeleton: a port of the store's group without an element sends
        // nothing; no VM's pieces, and not the resolver's address.
        assert_eq!(s.matches("iifgroup 2147483649 drop").count(), 2, "{s}");
        assert!(!s.contains("element") && !s.contains("10.77.0.1"), "{s}");
        let mut skeleton = String::new();
        r.skeleton(&mut skeleton);
        assert!(s.ends_with(&skeleton), "{s}");
    }

    fn store_rules(vms: &[VmRules]) -> Ruleset<'_> {
        Ruleset {
            table: "fvm-1a2b",
            bridge: "fvm0",
            subnet: "10.77.0.0/24".parse().unwrap(),
            group: 0x8000_0001,
            hold: None,
            vms,
        }
    }

    fn example_vms() -> [VmRules; 2] {
        let mut a = vm("a", "fvm00000000001", [10, 77, 0, 2]);
        a.nat = true;
        a.deny = vec!["10.77.0.3:80/tcp".parse().unwrap()];
        a.allow = vec!["192.168.0.0/16".parse().unwrap()];
        a.publish = vec!["18080:80".parse().unwrap()];
        [a, vm("b", "fvm00000000002", [10, 77, 0, 3])]
    }

    #[test]
    fn a_vm_gets_anti_spoofing_its_policy_nat_and_published_ports() {
        let vms = example_vms();
        let r = store_rules(&vms);
        let fp = r.fingerprint();
        let s = r.script().unwrap();
        let t = "fvm-1a2b";
        for line in [
            format!("iifname vmap @ports_{fp}"),
            "iifgroup 2147483649 drop".into(),
            format!(
                "add element bridge {t} ports_{fp} {{ \"fvm00000000001\" : jump from_fvm00000000001 }}"
            ),
            format!(
                "add rule bridge {t} from_fvm00000000001 ether type ip ip saddr != 10.77.0.2 drop"
            ),
            format!(
                "add rule bridge {t} from_fvm00000000001 ether type arp arp saddr ip != 10.77.0.2 drop"
            ),
            format!("add rule bridge {t} from_fvm00000000001 ether type ip6 drop"),
            format!(
                "add rule bridge {t} from_fvm00000000001 ip daddr 10.77.0.3/32 meta l4proto tcp tcp dport 80 drop"
            ),
            format!("ip saddr vmap @src_{fp}"),
            format!("add element inet {t} src_{fp} {{ 10.77.0.2 : jump from_fvm00000000001 }}"),
            format!("add rule inet {t} from_fvm00000000001 ip daddr 192.168.0.0/16 accept"),
            format!("add rule inet {t} from_fvm00000000001 ip daddr 10.77.0.0/24 accept"),
            format!("add rule inet {t} from_fvm00000000001 fib daddr type local accept"),
            format!("fib daddr type local meta l4proto . th dport vmap @pub_{fp}"),
            format!("add rule inet {t} pub_fvm00000000001 tcp dport 18080 dnat ip to 10.77.0.2:80"),
            format!("add element inet {t} pub_{fp} {{ tcp . 18080 : jump pub_fvm00000000001 }}"),
            "oifname \"fvm0\" ip saddr 127.0.0.0/8 masquerade".into(),
            format!("oifname != \"fvm0\" ip saddr vmap @masq_{fp}"),
            format!("add rule inet {t} masq_fvm00000000001 masquerade"),
            format!("add element inet {t} masq_{fp} {{ 10.77.0.2 : jump masq_fvm00000000001 }}"),
        ] {
            assert!(s.contains(&line), "missing {line:?} in:\n{s}");
        }
        // A port's chain ends in accept: what follows in the base chain is the
        // drop of ports without an element.
        let a_bridge: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with(&format!("add rule bridge {t} from_fvm00000000001 ")))
            .collect();
        assert!(
            a_bridge.last().unwrap().ends_with(" accept"),
            "{a_bridge:?}"
        );
        // b has no nat: its chain ends in drop, and it is not masqueraded.
        let b_inet: Vec<&str> = s
            .lines()
            .filter(|l| l.starts_with(&format!("add rule inet {t} from_fvm00000000002 ")))
            .collect();
        assert!(b_inet.last().unwrap().ends_with(" drop"), "{b_inet:?}");
        assert!(!s.contains("10.77.0.3 : jump masq"));
        assert!(!s.contains(&format!("add rule inet {t} masq_fvm00000000002")));
    }

    #[test]
    fn a_vms_start_adds_only_its_own_pieces_and_its_stop_deletes_them() {
        let vms = example_vms();
        let r = store_rules(&vms[..1]);
        let b = &vms[1];
        let add = r.add_script(b).unwrap();
        let remove = r.remove_script(b, false).unwrap();
        for s in [&add, &remove] {
            assert!(
                !s.contains("fvm00000000001") && !s.contains("10.77.0.2"),
                "{s}"
            );
            // Nothing store-wide: no table, base chain, map or flush.
            assert!(
                s.lines().all(|l| !l.contains("table ")
                    && !l.contains("hook")
                    && !l.contains("flush")
                    && !l.starts_with("add map")
                    && !l.starts_with("delete map")),
                "{s}"
            );
        }
        assert!(!add.contains("delete"), "{add}");
        assert!(!remove.contains("add "), "{remove}");
        // Every chain made with `create` (fails if there), every one deleted.
        let made: Vec<&str> = add
            .lines()
            .filter_map(|l| l.strip_prefix("create chain "))
            .collect();
        assert_eq!(made.len(), 4, "{add}");
        for chain in &made {
            assert!(
                remove.contains(&format!("delete chain {chain}")),
                "{remove}"
            );
        }
        // Elements go before the chains they lead to.
        let last_element = remove.rfind("delete element").unwrap();
        assert!(
            last_element < remove.find("delete chain").unwrap(),
            "{remove}"
        );
        // A full rebuild makes the same pieces.
        let full = store_rules(&vms).script().unwrap();
        for line in add.lines() {
            assert!(full.contains(line), "missing {line:?} in:\n{full}");
        }
        // A change of rules: the old pieces go, the new come, in one script.
        let mut changed = b.clone();
        changed.nat = true;
        changed.publish = vec!["8443:443".parse().unwrap()];
        let replace = r.replace_script(b, &changed).unwrap();
        let added = r.add_script(&changed).unwrap();
        let resolver = format!(
            "add element inet fvm-1a2b dns_{} {{ 10.77.0.1 }}\n",
            r.fingerprint()
        );
        assert!(added.starts_with(&resolver), "{added}");
        assert_eq!(replace, remove + &added[resolver.len()..], "{replace}");
        // The store's last running VM takes the resolver's address out of its
        // set; the skeleton stays.
        let last = r.remove_script(b, true).unwrap();
        assert!(
            last.ends_with(&resolver.replacen("add", "delete", 1)),
            "{last}"
        );
    }

    #[test]
    fn hostile_names_never_reach_a_script() {
        let vms = example_vms();
        let r = store_rules(&vms);
        for link in [
            "fvm0000000000\"",
            "fvm000000000 1",
            "fvm0000000000;",
            "fvm000000000001",
            "eth0",
            "fvm0000000000g",
        ] {
            let mut bad = vms[1].clone();
            bad.link = link.into();
            assert!(
                matches!(r.add_script(&bad), Err(NftError::Name(_))),
                "{link}"
            );
            assert!(
                matches!(r.remove_script(&bad, false), Err(NftError::Name(_))),
                "{link}"
            );
            let both = [vms[0].clone(), bad];
            assert!(store_rules(&both).script().is_err(), "{link}");
        }
        for bridge in ["fvm0\" drop", "fvm0;", "", "fvm0}", "fvmbridgeistoolong"] {
            let r = Ruleset {
                bridge,
                ..store_rules(&vms)
            };
            assert!(matches!(r.script(), Err(NftError::Name(_))), "{bridge:?}");
            assert!(r.add_script(&vms[1]).is_err(), "{bridge:?}");
        }
        for table in ["fvm-1a2b ", "fvm-", "fvm-1a2b; flush ruleset", "other"] {
            let r = Ruleset {
                table,
                ..store_rules(&vms)
            };
            assert!(matches!(r.script(), Err(NftError::Name(_))), "{table:?}");
        }
        // Group 0 is every interface's: it would drop all bridged traffic.
        let r = Ruleset {
            group: 0,
            hold: None,
            ..store_rules(&vms)
        };
        assert!(r.script().is_err());
    }

    #[test]
    fn the_skeletons_fingerprint_follows_its_settings() {
        let vms = example_vms();
        let r = store_rules(&vms);
        let fp = r.fingerprint();
        assert_eq!(fp, store_rules(&[]).fingerprint());
        for other in [
            Ruleset {
                bridge: "fvm1",
                ..r.clone()
            },
            Ruleset {
                subnet: "10.77.1.0/24".parse().unwrap(),
                ..r.clone()
            },
            Ruleset {
                group: 0x8000_0002,
                hold: None,
                ..r.clone()
            },
        ] {
            assert_ne!(other.fingerprint(), fp);
            // So a VM's start into a skeleton made for other settings fails
            // (its maps aren't there), and the caller rebuilds.
            assert!(!other.add_script(&vms[1]).unwrap().contains(&fp));
        }
    }

    /// The chains of a table, each with its handle, as `nft -a list` prints
    /// them (the chain's text, rules and their handles included).
    fn chains_of(family: &str, table: &str) -> Vec<String> {
        let out = Command::new("nft")
            .args(["-a", "list", "table", family, table])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split("\tchain ")
            .skip(1)
            .map(|c| c[..c.find("\t}").unwrap()].to_owned())
            .collect()
    }

    #[test]
    fn the_script_is_accepted_by_nft() {
        if !crate::testing::require_root("the_script_is_accepted_by_nft") {
            return;
        }
        if Command::new("nft").arg("--version").output().is_err() {
            panic!("nft is not installed");
        }
        let mut a = vm("a", "fvm7e57a000001", [10, 231, 7, 2]);
        a.nat = true;
        a.deny = vec![
            "10.231.7.3:80/tcp".parse().unwrap(),
            "1.2.3.0/24:53".parse().unwrap(),
        ];
        a.allow = vec!["192.168.0.0/16:443/tcp".parse().unwrap()];
        a.publish = vec!["18080:80".parse().unwrap(), "5353:53/udp".parse().unwrap()];
        let mut c = vm("c", "fvm7e57a000003", [10, 231, 7, 4]);
        c.publish = vec!["18081:80".parse().unwrap()];
        let vms = [a, vm("b", "fvm7e57a000002", [10, 231, 7, 3]), c];
        let table = format!("fvm-unit{}", std::process::id());
        let r = |vms| Ruleset {
            table: &table,
            bridge: "fvmtestbr0",
            subnet: "10.231.7.0/24".parse().unwrap(),
            group: 0x8000_0001,
            hold: None,
            vms,
        };
        let steps = || -> Result<(), String> {
            r(&vms[..2]).apply().map_err(|e| e.to_string())?;
            let mine = |c: &String| c.contains("fvm7e57a000003");
            let before: Vec<String> = ["bridge", "inet"]
                .iter()
                .flat_map(|f| chains_of(f, &table))
                .collect();
            // The third VM's start: its own chains come, the others' stay as
            // they were, handles included.
            r(&[]).apply_add(&vms[2]).map_err(|e| e.to_string())?;
            let after: Vec<String> = ["bridge", "inet"]
                .iter()
                .flat_map(|f| chains_of(f, &table))
                .collect();
            let others: Vec<String> = after.iter().filter(|c| !mine(c)).cloned().collect();
            assert_eq!(before, others);
            assert_eq!(after.iter().filter(|c| mine(c)).count(), 4);
            // A second start of it fails (its chains are there): the caller
            // would rebuild.
            assert!(r(&[]).apply_add(&vms[2]).is_err());
            // A change of its rules, then its stop: the others untouched.
            let mut changed = vms[2].clone();
            changed.nat = true;
            changed.publish.clear();
            r(&[])
                .apply_replace(&vms[2], &changed)
                .map_err(|e| e.to_string())?;
            // Deleting it as it was before the change fails (its publish
            // element is gone, its masquerade element would stay).
            assert!(r(&[]).apply_remove(&vms[2], false).is_err());
            r(&[])
                .apply_remove(&changed, false)
                .map_err(|e| e.to_string())?;
            let stopped: Vec<String> = ["bridge", "inet"]
                .iter()
                .flat_map(|f| chains_of(f, &table))
                .collect();
            assert_eq!(before, stopped);
            // And a stop of what isn't there fails.
            assert!(r(&[]).apply_remove(&changed, false).is_err());
            Ok(())
        };
        let result = steps();
        let present = exists(&table);
        remove(&table, None).unwrap();
        result.unwrap();
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
                    // Distinct, as the engine has them.
                    ip: Ipv4Addr::from(rng.u32(..) & !0xff | i as u32),
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
                group: 0x8000_0001,
                hold: None,
                vms,
            };
            assert_eq!(r(&vms).script().unwrap(), r(&renamed).script().unwrap());
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
            let group = rng.u32(..) | 0x8000_0000;
            let r = |vms| Ruleset {
                table: &table,
                bridge: &bridge,
                subnet,
                group,
                vms,
                hold: None,
            };
            // The others' full rebuild, then the last VM's start, a change of
            // its rules and its stop, as one batch: each step must find what
            // the previous ones made.
            let (last, others) = vms.split_last().unwrap();
            let free = |vm: &VmRules| {
                let mut vm = vm.clone();
                vm.publish.retain(|p| {
                    !others
                        .iter()
                        .flat_map(|o| &o.publish)
                        .any(|q| (q.host_port, q.proto) == (p.host_port, p.proto))
                });
                vm
            };
            let last = free(last);
            let mut changed = free(&random_vms(rng, &store)[0]);
            changed.link.clone_from(&last.link);
            changed.ip = last.ip;
            let mut script = r(others).script().unwrap();
            if others.is_empty() {
                // The skeleton comes with the first VM.
                script = r(std::slice::from_ref(&last)).script().unwrap();
                script += &r(&[]).remove_script(&last, false).unwrap();
            }
            script += &r(&[]).add_script(&last).unwrap();
            script += &r(&[]).replace_script(&last, &changed).unwrap();
            script += &r(&[]).remove_script(&changed, false).unwrap();
            script += &r(&vms).script().unwrap();
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

//! Attaching a VM to its network and detaching the store's shared pieces: the
//! mechanics, over plain data. Which VMs run, their policies, the store's
//! settings and its network lock are the caller's (`vm`).
//!
//! Two store-wide things are shared by all bridged VMs: the bridge (marked as
//! the store's by its alias) and the nft tables, whose skeleton stays while VMs
//! come and go, each adding and removing its own pieces; rebuilt whole from the
//! VMs that run now when a VM's change can't be applied (see [`super::nft`]).

use std::os::fd::{AsFd, BorrowedFd};

use super::link::{self, LinkError, Netlink};
use super::nft::{self, NftError, Ruleset, VmRules};
use super::{NetError, NetMode, NetPolicy, StoreNet};

/// Why a VM could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Policy(#[from] NetError),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The alias that marks a bridge as this store's.
fn bridge_mark(store_id: &str) -> String {
    format!("fvm store {store_id}")
}

/// The store's nft table name (one `bridge` and one `inet` table).
pub fn table(store_id: &str) -> String {
    format!("fvm-{store_id}")
}

/// Connect a just-cloned VM (its init is `pid`, the caller's unreaped child) to
/// its network: `lo` up in its namespace, and for a bridged VM the store's bridge
/// (made if missing), a veth pair made in one request with the VM's end created
/// inside the VM's namespace as `eth0`, its address and default route. For a
/// bridged VM the caller holds the store's network lock.
pub fn connect(
    pid: i32,
    net: &NetPolicy,
    store: &StoreNet,
    store_id: &str,
    vm: &str,
) -> Result<(), AttachError> {
    if !net.mode.own_namespace() {
        return Ok(());
    }
    let netns = link::netns_of_child(pid).map_err(LinkError::Setns)?;
    let home = link::own_netns().map_err(LinkError::Setns)?;
    if net.mode == NetMode::None {
        let mut inside = Netlink::open_in(netns.as_fd(), home.as_fd())?;
        return Ok(inside.configure_vm_side("", None, None)?);
    }
    let ip = net.ip.ok_or_else(|| NetError {
        key: "ip",
        reason: "a bridged vm needs an address (fvm config NAME --ip …)".into(),
    })?;
    store
        .check_vm_ip(ip)
        .map_err(|reason| NetError { key: "ip", reason })?;
    let mut host = Netlink::open()?;
    let bridge = host.ensure_bridge(&store.bridge, store.gateway(), &bridge_mark(store_id))?;
    // Loopback clients of published ports leave through the bridge with a
    // 127.0.0.0/8 source until the masquerade rewrites it.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{}/route_localnet", store.bridge),
        "1",
    );
    let veth = super::veth_name(store_id, vm);
    // The VM's end is made inside its namespace, where no other eth0 exists.
    host.add_veth(&veth, "eth0", bridge, port_group(store_id), netns.as_fd())?;
    let mut inside = Netlink::open_in(netns.as_fd(), home.as_fd())?;
    inside.configure_vm_side("eth0", Some(ip), Some(store.gateway().addr))?;
    tracing::debug!(vm, %ip, veth, "vm connected to bridge {}", store.bridge);
    Ok(())
}

/// The interface group of the store's bridge ports: 30 bits of a hash of the
/// store's id, from 2^30 up (never 0, every interface's default, nor one of
/// the small numbers an administrator would pick; below 2^31, which `ip`
/// shows as a negative number). The bridge table drops what a port of this
/// group sends unless the port has its VM's rules.
pub fn port_group(store_id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in store_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x3fff_ffff) | 0x4000_0000
}

fn ruleset<'a>(
    store: &'a StoreNet,
    table: &'a str,
    store_id: &str,
    vms: &'a [VmRules],
    hold: BorrowedFd<'a>,
) -> Ruleset<'a> {
    Ruleset {
        table,
        bridge: &store.bridge,
        subnet: store.subnet,
        group: port_group(store_id),
        vms,
        hold: Some(hold),
    }
}

/// Rebuild the store's firewall from `vms`, the bridged VMs that run now, in
/// one transaction; IPv4 forwarding goes on if one of them needs it. `lock` is
/// the store's network lock, held by the caller (and by `nft` while it runs).
pub fn firewall(
    store: &StoreNet,
    store_id: &str,
    vms: &[VmRules],
    lock: BorrowedFd<'_>,
) -> Result<(), NftError> {
    let table = table(store_id);
    ruleset(store, &table, store_id, vms, lock).apply()?;
    if vms.iter().any(needs_forwarding) {
        enable_forwarding();
    }
    Ok(())
}

fn needs_forwarding(vm: &VmRules) -> bool {
    vm.nat || !vm.publish.is_empty()
}

/// A change of the store's firewall for one VM, which touches nothing of the
/// others.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// It started: its pieces go in.
    Add(&'a VmRules),
    /// It stopped: its pieces go (`true`: it was the last one running).
    Remove(&'a VmRules, bool),
    /// Its rules changed while it runs: its pieces are replaced.
    Replace(&'a VmRules, &'a VmRules),
}

/// Apply one VM's change to the store's firewall in one transaction. An error
/// means nothing changed: the skeleton is missing or other than this store's
/// now, or the VM's pieces are not as expected; the caller then rebuilds the
/// whole firewall ([`firewall`]).
pub fn change_firewall(
    store: &StoreNet,
    store_id: &str,
    change: Change<'_>,
    lock: BorrowedFd<'_>,
) -> Result<(), NftError> {
    let table = table(store_id);
    let r = ruleset(store, &table, store_id, &[], lock);
    match change {
        Change::Add(vm) => {
            r.apply_add(vm)?;
            if needs_forwarding(vm) {
                enable_forwarding();
            }
        }
        Change::Remove(vm, last) => r.apply_remove(vm, last)?,
        Change::Replace(old, new) => {
            r.apply_replace(old, new)?;
            if needs_forwarding(new) {
                enable_forwarding();
            }
        }
    }
    Ok(())
}

/// The store's bridge goes, if it is there and marked as the store's; true if it
/// was removed.
pub fn remove_bridge(store: &StoreNet, store_id: &str) -> Result<bool, LinkError> {
    let mut host = Netlink::open()?;
    host.delete_marked(&store.bridge, &bridge_mark(store_id))
}

/// The store's nft tables go.
pub fn remove_tables(store_id: &str, lock: BorrowedFd<'_>) -> Result<(), NftError> {
    nft::remove(&table(store_id), Some(lock))
}

/// Whether the store's nft tables are there.
pub fn has_tables(store_id: &str) -> bool {
    nft::exists(&table(store_id))
}

/// Turn on IPv4 forwarding for NAT and published ports, if it is off (the
/// kernel's default). Left on afterwards, as other tools expect it to stay.
fn enable_forwarding() {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "0") {
        match std::fs::write(path, "1") {
            Ok(()) => tracing::info!("enabled net.ipv4.ip_forward for vm nat and published ports"),
            Err(e) => tracing::warn!("cannot enable net.ipv4.ip_forward: {e}"),
        }
    }
}

/// Whether a process of the host holds `port`/`proto` (listens on it, on any
/// address, IPv4 or IPv6): publishing it would take its connections over.
/// Asked by binding it: TCP with SO_REUSEADDR, which only a listener (or a
/// socket bound without it) refuses; UDP without, which any socket on the port
/// refuses. IPv6 with IPV6_V6ONLY, so that an IPv6-only listener counts too.
pub fn port_in_use(port: u16, proto: super::Proto) -> bool {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let kind = match proto {
        super::Proto::Tcp => SocketType::STREAM,
        super::Proto::Udp => SocketType::DGRAM,
    };
    let v4 = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    [(AddressFamily::INET, v4), (AddressFamily::INET6, v6)]
        .into_iter()
        .any(|(family, at)| {
            let Ok(fd) = rustix::net::socket(family, kind, None) else {
                // No IPv6 on this host: nothing listens there.
                return false;
            };
            if proto == super::Proto::Tcp {
                let _ = sockopt::set_socket_reuseaddr(&fd, true);
            }
            if family == AddressFamily::INET6 {
                let _ = sockopt::set_ipv6_v6only(&fd, true);
            }
            rustix::net::bind(&fd, &at) == Err(rustix::io::Errno::ADDRINUSE)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Proto;

    #[test]
    fn a_stores_port_group_is_its_own_and_never_the_default() {
        let groups: Vec<u32> = ["1a2b3c4d", "1a2b3c4e", "00000000", "ffffffff"]
            .iter()
            .map(|id| port_group(id))
            .collect();
        for g in &groups {
            assert!((0x4000_0000..0x8000_0000).contains(g), "{g:#x}");
        }
        assert_eq!(port_group("1a2b3c4d"), groups[0]);
        assert_ne!(groups[0], groups[1]);
    }

    #[test]
    fn a_port_a_host_process_holds_is_in_use_on_any_address() {
        // Listeners on loopback only, IPv4 and IPv6, and a UDP socket.
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        assert!(port_in_use(port, Proto::Tcp));
        drop(v4);
        assert!(!port_in_use(port, Proto::Tcp));
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            assert!(port_in_use(v6.local_addr().unwrap().port(), Proto::Tcp));
        }
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        assert!(port_in_use(port, Proto::Udp));
        drop(udp);
        assert!(!port_in_use(port, Proto::Udp));
    }
}

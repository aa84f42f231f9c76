//! Attaching a VM to its network and detaching the store's shared pieces: the
//! mechanics, over plain data. Which VMs run, their policies, the store's
//! settings and its network lock are the caller's (`vm`).
//!
//! Two store-wide things are shared by all bridged VMs: the bridge (marked as
//! the store's by its alias) and the nft tables, rebuilt whole from the VMs that
//! run now, so a crashed VM's rules go with the next rebuild.

use std::os::fd::AsFd;

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
    host.add_veth(&veth, "eth0", bridge, netns.as_fd())?;
    let mut inside = Netlink::open_in(netns.as_fd(), home.as_fd())?;
    inside.configure_vm_side("eth0", Some(ip), Some(store.gateway().addr))?;
    tracing::debug!(vm, %ip, veth, "vm connected to bridge {}", store.bridge);
    Ok(())
}

/// Rebuild the store's firewall from `vms`, the bridged VMs that run now, in
/// one transaction; IPv4 forwarding goes on if one of them needs it.
pub fn firewall(store: &StoreNet, store_id: &str, vms: &[VmRules]) -> Result<(), NftError> {
    let table = table(store_id);
    Ruleset {
        table: &table,
        bridge: &store.bridge,
        subnet: store.subnet,
        vms,
    }
    .apply()?;
    if vms.iter().any(|v| v.nat || !v.publish.is_empty()) {
        enable_forwarding();
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
pub fn remove_tables(store_id: &str) -> Result<(), NftError> {
    nft::remove(&table(store_id))
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

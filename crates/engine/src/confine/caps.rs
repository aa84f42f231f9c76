//! The capabilities root keeps inside a VM.
//!
//! An allow list, Docker's default set without CAP_MKNOD: enough to install
//! packages (chown, setuid/setgid files, file capabilities), run daemons on low
//! ports, `su`, `chroot` and `ping`. Everything else is dropped from every set,
//! the bounding set included, so not even a setuid-root program can get it back.
//! In particular (docs/security.md): no SYS_ADMIN (mount, umount of the overlay), no
//! SYS_MODULE, SYS_RAWIO, SYS_TIME, SYS_BOOT, no MKNOD (a VM has no device cgroup,
//! so a block device node would be the host's disk), no DAC_READ_SEARCH (the
//! `open_by_handle_at` escape), SYSLOG, MAC_*, BPF, PERFMON, and no SYS_PTRACE
//! (the VM's init is a privileged process), SYS_RESOURCE (the policy's rlimits
//! and OOM priority) or SYS_NICE.
//!
//! No NET_ADMIN either, in any network mode, not even with the VM's own network
//! namespace: a VM's processes live in the host's user namespace, so the
//! capability counts for every network namespace they can name. A bridged VM's
//! veth gives it an id for the host's namespace (IFLA_TARGET_NETNSID,
//! IFLA_LINK_NETNSID), and any socket a VM inherits from the host names the
//! host's namespace (SIOCGSKNS); with NET_ADMIN either reaches the host's links.
//! fvm configures a VM's network from the host before its processes start.

use rustix::thread::{CapabilitySet, CapabilitySets};

/// What root in a VM keeps.
pub const KEPT: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::AUDIT_WRITE);

/// Drop every capability outside [`KEPT`] from the calling thread: the bounding
/// set first (that needs CAP_SETPCAP, which is kept), then the ambient set, then
/// effective, permitted and inheritable. Allocates nothing (used between fork and
/// exec).
pub fn drop_to_kept() -> std::io::Result<()> {
    drop_to(KEPT)
}

/// Drop every capability outside `kept` from the calling thread, as
/// [`drop_to_kept`] does (with an empty `kept`, CAP_SETPCAP goes last, with
/// the effective set). Allocates nothing.
pub fn drop_to(kept: CapabilitySet) -> std::io::Result<()> {
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if kept.contains(cap) {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            Ok(()) => {}
            // Past the last capability this kernel knows.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    let now = rustix::thread::capabilities(None)?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: now.effective & kept,
            permitted: now.permitted & kept,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// Remove every capability outside `keep` from the bounding set (what is
/// outside it already stays out). Allocates nothing.
pub fn limit_bounding(keep: CapabilitySet) -> std::io::Result<()> {
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if keep.contains(cap) {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Set the effective, permitted and inheritable sets to what is asked within
/// what the thread has now (its permitted set: never more), then raise the
/// ambient capabilities asked for that are permitted and inheritable; keeping
/// capabilities across a uid change is turned off again. Allocates nothing.
pub fn narrow(
    effective: CapabilitySet,
    permitted: CapabilitySet,
    inheritable: CapabilitySet,
    ambient: CapabilitySet,
) -> std::io::Result<()> {
    let now = rustix::thread::capabilities(None)?;
    let permitted = permitted & now.permitted;
    let inheritable = inheritable & (now.inheritable | now.permitted);
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: effective & permitted,
            permitted,
            inheritable,
        },
    )?;
    rustix::thread::clear_ambient_capability_set()?;
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if (ambient & permitted & inheritable).contains(cap) && !cap.is_empty() {
            rustix::thread::configure_capability_in_ambient_set(cap, true)?;
        }
    }
    rustix::thread::set_keep_capabilities(false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_is_dockers_without_mknod() {
        // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7,
        // SETPCAP 8, NET_BIND_SERVICE 10, NET_RAW 13, SYS_CHROOT 18, AUDIT_WRITE 29,
        // SETFCAP 31.
        assert_eq!(KEPT.bits(), 0xa004_25fb);
        for dropped in [
            CapabilitySet::SYS_ADMIN,
            CapabilitySet::MKNOD,
            CapabilitySet::DAC_READ_SEARCH,
            CapabilitySet::SYS_PTRACE,
            CapabilitySet::NET_ADMIN,
            CapabilitySet::SYS_RESOURCE,
        ] {
            assert!(!KEPT.contains(dropped));
        }
    }

    #[test]
    fn dropping_in_a_child_leaves_only_the_kept_set() {
        if !crate::testing::require_root("dropping_in_a_child_leaves_only_the_kept_set") {
            return;
        }
        let pid = crate::os::sys::spawn_from_test(None, || {
            let ok = drop_to_kept().is_ok()
                && rustix::thread::capabilities(None).is_ok_and(|c| {
                    c.effective == KEPT && c.permitted == KEPT && c.inheritable.is_empty()
                })
                && !rustix::thread::capability_is_in_bounding_set(CapabilitySet::SYS_ADMIN)
                    .unwrap_or(true);
            if ok { 0 } else { 1 }
        })
        .unwrap();
        let (_, status) =
            rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
                .unwrap()
                .unwrap();
        assert_eq!(status.exit_status(), Some(0));
    }
}

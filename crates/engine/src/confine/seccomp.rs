//! The default seccomp filter: system calls a VM's processes may not make, each
//! with the reason. In the spirit of Docker's default profile, but a deny list:
//! everything not named here is allowed, so ordinary programs (package managers,
//! compilers, servers) run unchanged.
//!
//! Denied calls fail with EPERM, so a program gets an error it can report instead
//! of dying. `clone3` fails with ENOSYS: its flags are in memory a filter can't
//! read, and ENOSYS makes the C library fall back to `clone`, whose flags it can.
//!
//! Most of these also need a capability the VM doesn't have (see `caps`). The
//! filter is the second wall: it also covers what needs no capability at all
//! (user namespaces, `userfaultfd`, `perf_event_open` at a permissive paranoid
//! level, `keyctl` on the shared kernel keyrings).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A denied system call.
#[derive(Debug, Clone, Copy)]
pub struct Denied {
    pub name: &'static str,
    pub nr: i64,
    /// Only when this flag is set in the first argument (`clone`, `unshare`).
    pub only_with_flag: Option<u64>,
    pub reason: &'static str,
}

const fn deny(name: &'static str, nr: i64, reason: &'static str) -> Denied {
    Denied {
        name,
        nr,
        only_with_flag: None,
        reason,
    }
}

const NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

/// The default policy.
pub const DENIED: &[Denied] = &[
    deny(
        "mount",
        libc::SYS_mount,
        "a mount could uncover the host beneath the VM's overlay or replace what it sees",
    ),
    deny(
        "umount2",
        libc::SYS_umount2,
        "unmounting the overlay would show the host's files beneath it",
    ),
    deny(
        "move_mount",
        libc::SYS_move_mount,
        "the new mount API: same as mount",
    ),
    deny(
        "fsopen",
        libc::SYS_fsopen,
        "the new mount API: same as mount",
    ),
    deny(
        "fsconfig",
        libc::SYS_fsconfig,
        "the new mount API: same as mount",
    ),
    deny(
        "fsmount",
        libc::SYS_fsmount,
        "the new mount API: same as mount",
    ),
    deny(
        "fspick",
        libc::SYS_fspick,
        "the new mount API: reconfigures an existing mount",
    ),
    deny(
        "open_tree",
        libc::SYS_open_tree,
        "clones mounts, a way around the VM's mount table",
    ),
    deny(
        "mount_setattr",
        libc::SYS_mount_setattr,
        "could make a read-only mount writable",
    ),
    deny(
        "pivot_root",
        libc::SYS_pivot_root,
        "changes the root the VM was given",
    ),
    deny(
        "kexec_load",
        libc::SYS_kexec_load,
        "would boot another kernel on the host",
    ),
    deny(
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        "would boot another kernel on the host",
    ),
    deny(
        "init_module",
        libc::SYS_init_module,
        "loads code into the host's kernel",
    ),
    deny(
        "finit_module",
        libc::SYS_finit_module,
        "loads code into the host's kernel",
    ),
    deny(
        "delete_module",
        libc::SYS_delete_module,
        "unloads modules the host relies on",
    ),
    deny(
        "bpf",
        libc::SYS_bpf,
        "runs programs in the host's kernel and reads its memory",
    ),
    deny(
        "perf_event_open",
        libc::SYS_perf_event_open,
        "observes the host's kernel and other processes",
    ),
    deny(
        "keyctl",
        libc::SYS_keyctl,
        "kernel keyrings are not namespaced: the host's keys",
    ),
    deny(
        "add_key",
        libc::SYS_add_key,
        "kernel keyrings are not namespaced",
    ),
    deny(
        "request_key",
        libc::SYS_request_key,
        "kernel keyrings are not namespaced",
    ),
    deny(
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        "opens host files by handle, past the VM's root (the \"shocker\" escape)",
    ),
    deny(
        "setns",
        libc::SYS_setns,
        "joins namespaces other than the VM's",
    ),
    deny("swapon", libc::SYS_swapon, "changes the host's swap"),
    deny("swapoff", libc::SYS_swapoff, "changes the host's swap"),
    deny(
        "reboot",
        libc::SYS_reboot,
        "reboots or halts the host (in a pid namespace: ends the VM, which fvm stop does)",
    ),
    deny("acct", libc::SYS_acct, "process accounting is host-wide"),
    deny(
        "settimeofday",
        libc::SYS_settimeofday,
        "the clock is the host's",
    ),
    deny(
        "clock_settime",
        libc::SYS_clock_settime,
        "the clock is the host's",
    ),
    deny("iopl", libc::SYS_iopl, "raw access to the host's I/O ports"),
    deny(
        "ioperm",
        libc::SYS_ioperm,
        "raw access to the host's I/O ports",
    ),
    deny(
        "userfaultfd",
        libc::SYS_userfaultfd,
        "a tool for widening kernel race windows in exploits",
    ),
    deny(
        "quotactl",
        libc::SYS_quotactl,
        "disk quotas of host filesystems",
    ),
    deny(
        "quotactl_fd",
        libc::SYS_quotactl_fd,
        "disk quotas of host filesystems",
    ),
    deny(
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        "kernel profiling interface",
    ),
    deny(
        "syslog",
        libc::SYS_syslog,
        "the host kernel's log, which can leak kernel addresses",
    ),
    deny("vhangup", libc::SYS_vhangup, "hangs up terminals"),
    Denied {
        name: "unshare",
        nr: libc::SYS_unshare,
        only_with_flag: Some(NEWUSER),
        reason: "a new user namespace would give back every capability inside it",
    },
    Denied {
        name: "clone",
        nr: libc::SYS_clone,
        only_with_flag: Some(NEWUSER),
        reason: "a new user namespace would give back every capability inside it",
    },
];

/// The filters to load, in order: the deny list (EPERM), then `clone3` (ENOSYS).
#[derive(Debug, Clone)]
pub struct Filters(pub Vec<BpfProgram>);

#[derive(Debug, thiserror::Error)]
#[error("cannot build the seccomp filter: {0}")]
pub struct FilterError(String);

/// Compile [`DENIED`] for this machine's architecture.
pub fn compile() -> Result<Filters, FilterError> {
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| FilterError(format!("{e:?}")))?;
    let bad = |e: seccompiler::BackendError| FilterError(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for d in DENIED {
        let entry = rules.entry(d.nr).or_default();
        if let Some(flag) = d.only_with_flag {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .map_err(bad)?;
            entry.push(SeccompRule::new(vec![cond]).map_err(bad)?);
        }
    }
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let main = SeccompFilter::new(rules, SeccompAction::Allow, eperm, arch).map_err(bad)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(bad)?;
    let programs = [main, clone3]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(bad))
        .collect::<Result<_, _>>()?;
    Ok(Filters(programs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_has_a_reason_and_a_unique_name() {
        let mut names: Vec<&str> = DENIED.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DENIED.len());
        for d in DENIED {
            assert!(
                !d.reason.is_empty() && !d.reason.contains('\n'),
                "{}",
                d.name
            );
        }
    }

    #[test]
    fn compiles_for_this_machine() {
        let f = compile().unwrap();
        assert_eq!(f.0.len(), 2);
        assert!(f.0.iter().all(|p| !p.is_empty()));
    }
}

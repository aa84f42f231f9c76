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
    pub when: When,
    pub reason: &'static str,
}

/// Which calls of a system call are denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// When these bits are set in the first argument (`clone`, `unshare`).
    FirstArgHas(u64),
    /// When the first argument is this value (`socket`'s address family).
    FirstArgIs(u32),
    /// When the second argument is this value (an `ioctl` request).
    SecondArgIs(u32),
}

const fn deny(name: &'static str, nr: i64, reason: &'static str) -> Denied {
    Denied {
        name,
        nr,
        when: When::Always,
        reason,
    }
}

const NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

/// `ioctl(SIOCGSKNS)`: a file descriptor for the network namespace of a socket.
const SIOCGSKNS: u32 = 0x894c;

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
        when: When::FirstArgHas(NEWUSER),
        reason: "a new user namespace would give back every capability inside it",
    },
    Denied {
        name: "clone",
        nr: libc::SYS_clone,
        when: When::FirstArgHas(NEWUSER),
        reason: "a new user namespace would give back every capability inside it",
    },
    deny(
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        "io_uring's operations run in kernel workers the filter never sees",
    ),
    deny(
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        "io_uring's operations run in kernel workers the filter never sees",
    ),
    deny(
        "io_uring_register",
        libc::SYS_io_uring_register,
        "io_uring's operations run in kernel workers the filter never sees",
    ),
    Denied {
        name: "socket(AF_VSOCK)",
        nr: libc::SYS_socket,
        when: When::FirstArgIs(libc::AF_VSOCK as u32),
        reason: "vsock is not namespaced: its ports are the host's",
    },
    Denied {
        name: "ioctl(SIOCGSKNS)",
        nr: libc::SYS_ioctl,
        when: When::SecondArgIs(SIOCGSKNS),
        reason: "a socket inherited from the host would hand over the host's network namespace",
    },
];

/// The filters to load, in order: the deny list (EPERM), then `clone3` (ENOSYS),
/// then (on x86_64) the x32 system call numbers (EPERM).
#[derive(Debug, Clone)]
pub struct Filters(pub Vec<BpfProgram>);

#[derive(Debug, thiserror::Error)]
#[error("cannot build the seccomp filter: {0}")]
pub struct FilterError(String);

/// Compile [`DENIED`] for this machine's architecture.
pub fn compile() -> Result<Filters, FilterError> {
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| FilterError(e.to_string()))?;
    let bad = |e: seccompiler::BackendError| FilterError(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for d in DENIED {
        let entry = rules.entry(d.nr).or_default();
        let cond = match d.when {
            When::Always => continue,
            When::FirstArgHas(bits) => SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(bits),
                bits,
            ),
            When::FirstArgIs(value) => {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value.into())
            }
            When::SecondArgIs(value) => {
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value.into())
            }
        }
        .map_err(bad)?;
        entry.push(SeccompRule::new(vec![cond]).map_err(bad)?);
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
    let mut programs = [main, clone3]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    if cfg!(target_arch = "x86_64") {
        programs.push(x32_filter());
    }
    Ok(Filters(programs))
}

/// On x86_64 the x32 ABI's system calls carry the x86_64 architecture token and
/// their number with bit 30 set (`__X32_SYSCALL_BIT`). The deny list matches
/// exact numbers, so on a kernel built with x32 support the x32 twin of a denied
/// call would pass it: deny every number at or above the bit. -1 still passes:
/// it is no system call (ENOSYS), and tracers use it to skip one.
fn x32_filter() -> BpfProgram {
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // struct seccomp_data: int nr, then __u32 arch.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let op = |code: u32, k: u32, jt: u8, jf: u8| seccompiler::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let jge = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    vec![
        op(load, ARCH, 0, 0),
        op(jeq, AUDIT_ARCH_X86_64, 0, 4), // another architecture: allow
        op(load, NR, 0, 0),
        op(jge, X32_SYSCALL_BIT, 0, 2), // below the bit: allow
        op(jeq, u32::MAX, 1, 0),        // -1: allow
        op(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32, 0, 0),
        op(ret, libc::SECCOMP_RET_ALLOW, 0, 0),
    ]
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
        assert_eq!(f.0.len(), if cfg!(target_arch = "x86_64") { 3 } else { 2 });
        assert!(f.0.iter().all(|p| !p.is_empty()));
    }
}

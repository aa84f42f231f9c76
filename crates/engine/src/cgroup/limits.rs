//! Resource limits as cgroup file writes: which file of which controller gets
//! which value, for each key of [`Limits`], on v1 and on v2.
//!
//! | key | v2 | v1 |
//! |---|---|---|
//! | memory | memory.max | memory.limit_in_bytes, memory.kmem.tcp.limit_in_bytes |
//! | swap | memory.swap.max = swap | memory.memsw.limit_in_bytes = memory + swap |
//! | processes | pids.max | pids.max |
//! | cpus | cpu.max = "quota period" | cpu.cfs_period_us, cpu.cfs_quota_us |
//! | cpu-weight, priority | cpu.weight | cpu.shares = weight × 1024 / 100 |
//!
//! Once memory is limited, swap defaults to 0: a limit that the VM can step
//! around by swapping isn't the limit the user set. A host without swap
//! accounting lacks the swap files; that is an error only if `swap` was asked for.
//!
//! Socket buffers: v2 charges them to the cgroup's `memory.current` always; v1
//! charges a cgroup's TCP buffers only once its `memory.kmem.tcp.limit_in_bytes`
//! has been written, and then against that limit (its own counter, not
//! `memory.usage_in_bytes`). So on v1 a memory limit also sets that file to the
//! same value, and a kernel without it can't enforce `memory`.
//!
//! The tables are pure functions so that unit tests can check every key on both
//! versions without a cgroupfs (see `tests.rs`).

use crate::limits::{Key, Limits};

/// cgroup v1's limit of the TCP buffers charged to a cgroup.
pub const V1_TCP: &str = "memory.kmem.tcp.limit_in_bytes";

/// The scheduler period for `cpus`: 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// One write to a control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWrite {
    /// The policy key this enforces (named in errors).
    pub key: Key,
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
    /// A missing controller or file is an error (else the write is skipped).
    pub required: bool,
}

fn write(
    key: Key,
    controller: &'static str,
    file: &'static str,
    value: impl ToString,
) -> LimitWrite {
    LimitWrite {
        key,
        controller,
        file,
        value: value.to_string(),
        required: true,
    }
}

/// What to write on cgroup v1. `all` also resets the keys that are unset (a live
/// change that removed a limit); otherwise only set keys are written, to a new
/// cgroup whose defaults are "unlimited". `raising_memory` orders the memory
/// writes: v1 refuses a memory limit above memory+swap and the reverse, so the
/// one that grows goes first.
pub fn v1(l: &Limits, all: bool, raising_memory: bool) -> Vec<LimitWrite> {
    let mut out = Vec::new();
    let mut memory = Vec::new();
    if all || l.memory.is_some() {
        let value = l.memory.map_or("-1".to_owned(), |m| m.0.to_string());
        memory.push(write(Key::Memory, "memory", "memory.limit_in_bytes", value));
    }
    let memsw = "memory.memsw.limit_in_bytes";
    match l.memory {
        Some(m) => {
            let total = m.0.saturating_add(l.swap.map_or(0, |s| s.0));
            memory.push(LimitWrite {
                required: l.swap.is_some(),
                ..write(swap_key(l), "memory", memsw, total)
            });
        }
        None if all => memory.push(LimitWrite {
            required: false,
            ..write(Key::Swap, "memory", memsw, "-1")
        }),
        None => {}
    }
    if raising_memory {
        memory.reverse();
    }
    out.extend(memory);
    // Socket buffers: v1 charges them to a VM only once this file was written
    // (before that they are the host's, unlimited). They count against their own
    // limit there, not memory.limit_in_bytes, so give them the same ceiling. The
    // file's limit is independent of the two above, so its order doesn't matter.
    match l.memory {
        Some(m) => out.push(write(Key::Memory, "memory", V1_TCP, m.0)),
        None if all => out.push(LimitWrite {
            required: false,
            ..write(Key::Memory, "memory", V1_TCP, "-1")
        }),
        None => {}
    }
    if all || l.processes.is_some() {
        out.push(write(
            Key::Processes,
            "pids",
            "pids.max",
            count_or_max(l.processes),
        ));
    }
    match l.cpus {
        Some(c) => {
            out.push(write(Key::Cpus, "cpu", "cpu.cfs_period_us", CPU_PERIOD_US));
            out.push(write(Key::Cpus, "cpu", "cpu.cfs_quota_us", quota(c.0)));
        }
        None if all => out.push(write(Key::Cpus, "cpu", "cpu.cfs_quota_us", "-1")),
        None => {}
    }
    if let Some(w) = l.weight() {
        out.push(write(weight_key(l), "cpu", "cpu.shares", shares(w)));
    } else if all {
        out.push(write(Key::CpuWeight, "cpu", "cpu.shares", 1024));
    }
    out
}

/// What to write on cgroup v2; `all` as for [`v1`].
pub fn v2(l: &Limits, all: bool) -> Vec<LimitWrite> {
    let mut out = Vec::new();
    if all || l.memory.is_some() {
        out.push(write(
            Key::Memory,
            "memory",
            "memory.max",
            count_or_max(l.memory.map(|m| m.0)),
        ));
    }
    match l.memory {
        Some(_) => out.push(LimitWrite {
            required: l.swap.is_some(),
            ..write(
                swap_key(l),
                "memory",
                "memory.swap.max",
                l.swap.map_or(0, |s| s.0),
            )
        }),
        None if all => out.push(LimitWrite {
            required: false,
            ..write(Key::Swap, "memory", "memory.swap.max", "max")
        }),
        None => {}
    }
    if all || l.processes.is_some() {
        out.push(write(
            Key::Processes,
            "pids",
            "pids.max",
            count_or_max(l.processes),
        ));
    }
    if all || l.cpus.is_some() {
        let q = l.cpus.map_or("max".to_owned(), |c| quota(c.0).to_string());
        out.push(write(
            Key::Cpus,
            "cpu",
            "cpu.max",
            format!("{q} {CPU_PERIOD_US}"),
        ));
    }
    if let Some(w) = l.weight() {
        out.push(write(weight_key(l), "cpu", "cpu.weight", w));
    } else if all {
        out.push(write(Key::CpuWeight, "cpu", "cpu.weight", 100));
    }
    out
}

fn swap_key(l: &Limits) -> Key {
    if l.swap.is_some() {
        Key::Swap
    } else {
        Key::Memory
    }
}

fn weight_key(l: &Limits) -> Key {
    if l.cpu_weight.is_some() {
        Key::CpuWeight
    } else {
        Key::Priority
    }
}

/// Microseconds per period for `hundredths` of a CPU.
fn quota(hundredths: u32) -> u64 {
    u64::from(hundredths) * CPU_PERIOD_US / 100
}

/// v1 `cpu.shares` for a v2-scale weight: 100 (the default weight) is 1024 (the
/// default share), proportionally, within the kernel's 2..262144.
pub fn shares(weight: u64) -> u64 {
    (weight * 1024 / 100).clamp(2, 262_144)
}

fn count_or_max(n: Option<u64>) -> String {
    n.map_or("max".to_owned(), |n| n.to_string())
}

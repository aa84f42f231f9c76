//! The featherweight VM engine.
//!
//! A featherweight VM is a copy-on-write clone of the running host: every host
//! mount seen through an overlay with a private upper layer, in its own mount, pid,
//! IPC, UTS and cgroup namespaces, with one cgroup for all its processes. This crate
//! holds the parts, each in a module named for what it is:
//!
//! - [`store`]: VMs on disk (policy, state, layers, locks);
//! - [`mounts`]: the mount plan from the host's mount table, and applying it;
//! - [`cgroup`]: one cgroup per VM on cgroup v1 and v2, and the limits in it;
//! - [`limits`]: the resource policy (sizes, durations, CPUs, rlimits);
//! - [`confine`]: what root in a VM may not do (capabilities, seccomp);
//! - [`net`]: VM networks (host, none, bridge), through netlink and nftables;
//! - [`logs`]: the output of a VM's services and detached commands;
//! - [`changes`]: what a VM changed (diff), writing it back (commit), cloning (copy);
//! - `runtime` (inside the crate): launch, the VM's init, commands inside, terminal relay, stop;
//! - [`vm`]: the operations users ask for, built from the above;
//! - [`watch`]: host changes made visible in running VMs;
//! - [`doctor`]: what this host supports;
//! - [`os`]: the bottom layer: raw system calls (all of fvm's `unsafe`), store
//!   files, bounded tree walks, process identity, how a VM's strings are shown.
//!
//! docs/architecture.md has the layers and what each may import.

pub mod cgroup;
pub mod changes;
pub mod confine;
pub mod doctor;
pub mod layers;
pub mod limits;
pub mod logs;
pub mod mounts;
pub mod net;
pub mod oci;
pub mod os;
pub(crate) mod runtime;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod vm;
pub mod watch;

pub use vm::{Engine, VmError};

/// An error and its causes on one line, without the "(os error N)" noise.
pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut s = plain(e.to_string());
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = plain(c.to_string());
        if !s.ends_with(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

fn plain(mut msg: String) -> String {
    if let Some(i) = msg.rfind(" (os error ")
        && msg.ends_with(')')
    {
        msg.truncate(i);
    }
    msg
}

/// Whether this process has root's effective uid (fvm refuses to run otherwise).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

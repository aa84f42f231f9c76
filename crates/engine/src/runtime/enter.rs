//! Run a command in a running VM: join its namespaces and cgroup, then spawn.
//!
//! The fvm process itself enters the VM's mount, pid, IPC, UTS and network
//! namespaces (through a pidfd of the VM's init, so a recycled pid can't redirect
//! it), opens the pty from the VM's devpts, and forks the command, which is then
//! inside the VM's pid namespace. The child is in the VM's cgroup (created inside
//! it on v2, moved on v1) before it enters the cgroup namespace, because a process
//! can only be moved into a cgroup it can see.

use std::os::fd::{AsFd, OwnedFd};

use rustix::process::Pid;
use rustix::thread::ThreadNameSpaceType as Ns;

use super::command::{self, CommandSpec, SpawnError};
use super::procid::ProcId;
use super::stdio::StdioPlan;
use super::stop::InitHandle;
use crate::cgroup::{CgroupError, VmCgroup};

#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("the vm is not running")]
    NotRunning,
    #[error("cannot reach the vm's init")]
    Init(#[source] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot enter the vm's namespaces")]
    Setns(#[source] std::io::Error),
    #[error("cannot open a pty in the vm")]
    Pty(#[source] std::io::Error),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

/// Enter the VM and start `spec`. Returns the command's pid (our child) and the pty
/// master if it has one. Afterwards this process lives in the VM's namespaces.
pub fn enter(
    init: &ProcId,
    cgroup: &VmCgroup,
    spec: &CommandSpec,
    stdio: &StdioPlan,
) -> Result<(Pid, Option<OwnedFd>), EnterError> {
    let handle = InitHandle::open(init)
        .map_err(EnterError::Init)?
        .ok_or(EnterError::NotRunning)?;
    let entry = cgroup.entry()?;
    rustix::thread::move_into_thread_name_spaces(
        handle.pidfd().as_fd(),
        Ns::MOUNT
            | Ns::PROCESS_ID
            | Ns::INTER_PROCESS_COMMUNICATION
            | Ns::HOST_NAME_AND_NIS_DOMAIN_NAME
            | Ns::NETWORK,
    )
    .map_err(|e| EnterError::Setns(e.into()))?;
    let (master, slave) = if stdio.pty() {
        let (m, s) = command::open_pty().map_err(EnterError::Pty)?;
        (Some(m), Some(s))
    } else {
        (None, None)
    };
    let join = || {
        entry.join_self()?;
        rustix::thread::move_into_thread_name_spaces(handle.pidfd().as_fd(), Ns::CONTROL_GROUP)?;
        Ok(())
    };
    let pid = command::spawn(spec, stdio, slave.as_ref(), entry.clone_into(), &join)?;
    Ok((pid, master))
}

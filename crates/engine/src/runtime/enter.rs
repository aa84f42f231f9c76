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

/// Cover `paths` (as the VM sees them) with an empty read-only tmpfs inside the
/// running VM whose init is `init`: for a VM directory made after the VM started.
/// A child process enters the VM's mount namespace and mounts, so this process
/// stays where it is. Returns false if the VM isn't running any more.
pub fn hide_paths(init: &ProcId, paths: &[std::path::PathBuf]) -> Result<bool, EnterError> {
    let Some(handle) = InitHandle::open(init).map_err(EnterError::Init)? else {
        return Ok(false);
    };
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| EnterError::Setns(e.into()))?;
    match crate::sys::fork().map_err(EnterError::Setns)? {
        crate::sys::Forked::Child => {
            drop(read);
            // The mounts go through /proc/self/fd, so the process that makes them
            // must be in the VM's pid namespace too, which only a child can be.
            let result = rustix::thread::move_into_thread_name_spaces(
                handle.pidfd().as_fd(),
                Ns::MOUNT | Ns::PROCESS_ID,
            )
            .map_err(|e| e.to_string())
            .and_then(|()| match crate::sys::fork() {
                Ok(crate::sys::Forked::Child) => {
                    let code = match crate::mounts::apply::hide_in_running(paths) {
                        Ok(()) => 0,
                        Err(e) => {
                            let msg = crate::vm::error_line(&e);
                            let _ = rustix::io::write(&write, msg.as_bytes());
                            1
                        }
                    };
                    crate::sys::exit_now(code);
                }
                Ok(crate::sys::Forked::Parent(pid)) => {
                    match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
                    {
                        Ok(Some((_, s))) if s.exit_status() == Some(0) => Ok(()),
                        _ => Err(String::new()),
                    }
                }
                Err(e) => Err(e.to_string()),
            });
            if let Err(msg) = result {
                let _ = rustix::io::write(&write, msg.as_bytes());
                crate::sys::exit_now(1);
            }
            crate::sys::exit_now(0);
        }
        crate::sys::Forked::Parent(pid) => {
            drop(write);
            let mut msg = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(read), &mut msg);
            let status = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
                .map_err(|e| EnterError::Setns(e.into()))?;
            let ok = status.is_some_and(|(_, s)| s.exit_status() == Some(0));
            if ok {
                Ok(true)
            } else {
                Err(EnterError::Setns(std::io::Error::other(
                    if msg.is_empty() {
                        "the helper process failed".to_owned()
                    } else {
                        msg
                    },
                )))
            }
        }
    }
}

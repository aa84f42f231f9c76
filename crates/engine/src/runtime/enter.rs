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
use super::stdio::{Pipes, StdioPlan};
use super::stop::InitHandle;
use crate::cgroup::{CgroupError, VmCgroup};
use crate::os::procid::ProcId;

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
    #[error("gave up after {} s", .0.as_secs())]
    Timeout(std::time::Duration),
    /// What the helper that covers a path in the VM reported.
    #[error("{0}")]
    Cover(String),
}

/// This process's own namespaces, to come back to after starting a command in a
/// VM: opened from the host's `/proc` before entering, so nothing of the VM can
/// stand in for them.
struct Home(Vec<OwnedFd>);

impl Home {
    const KINDS: [&'static str; 5] = ["mnt", "pid", "ipc", "uts", "net"];

    fn open() -> std::io::Result<Home> {
        Home::KINDS
            .iter()
            .map(|kind| {
                rustix::fs::open(
                    format!("/proc/self/ns/{kind}"),
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(Into::into)
            })
            .collect::<std::io::Result<_>>()
            .map(Home)
    }

    fn go_back(&self) -> std::io::Result<()> {
        for fd in &self.0 {
            rustix::thread::move_into_link_name_space(fd.as_fd(), None)?;
        }
        Ok(())
    }
}

/// Enter the VM and start `spec`. Returns the command's pid (our child) and the pty
/// master if it has one. Afterwards this process is back in the host's
/// namespaces (the command's pid is as the host sees it), so that after the
/// command it reaches the store again: to record how the command ended.
pub fn enter(
    init: &ProcId,
    cgroup: &VmCgroup,
    spec: &CommandSpec,
    stdio: &StdioPlan,
    pipes: Pipes<'_>,
) -> Result<(Pid, Option<OwnedFd>), EnterError> {
    let handle = InitHandle::open(init)
        .map_err(EnterError::Init)?
        .ok_or(EnterError::NotRunning)?;
    let entry = cgroup.entry()?;
    let home = Home::open().map_err(EnterError::Setns)?;
    let started = start_inside(&handle, &entry, spec, stdio, pipes);
    // Back home whatever happened inside. A process that can't come back must
    // not go on with the VM's view of files: it ends here, and its command with it.
    if let Err(e) = home.go_back() {
        if let Ok((pid, _)) = &started {
            let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
        }
        eprintln!("fvm: cannot come back from the vm's namespaces: {e}");
        crate::os::sys::exit_now(125);
    }
    started
}

/// The part of [`enter`] inside the VM's namespaces.
fn start_inside(
    handle: &InitHandle,
    entry: &crate::cgroup::Entry,
    spec: &CommandSpec,
    stdio: &StdioPlan,
    pipes: Pipes<'_>,
) -> Result<(Pid, Option<OwnedFd>), EnterError> {
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
    let pid = command::spawn(
        spec,
        stdio,
        pipes,
        slave.as_ref(),
        entry.clone_into(),
        &join,
    )?;
    Ok((pid, master))
}

/// What a path the VM doesn't show at all means to [`hide_paths`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// A VM that has run: it may be a stale lookup that shows the directory
    /// later, so it is an error.
    Error,
    /// A VM just assembled, none of whose processes ran yet: its own layer hides
    /// the path for good.
    Hidden,
}

/// The mount points of tmpfs mounts in the VM's mount table, read from the host.
/// A VM can't mount, so these are fvm's.
pub fn covered(init: &ProcId) -> Vec<std::path::PathBuf> {
    crate::mounts::mountinfo::mount_points_of(init, "tmpfs")
}

/// How long covering a new VM directory inside one running VM may take.
pub const HIDE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Cover `paths` (as the VM sees them) with an empty read-only tmpfs inside the
/// running VM whose init is `init`: for a VM directory made after the VM started.
/// Returns false if the VM isn't running any more.
///
/// A child process (`fvm-hide`) enters the VM's mount namespace and nothing else:
/// it stays in the host's pid namespace and this command's cgroup, so no process
/// of the VM can see, signal, trace or starve it, and it mounts by file
/// descriptor, never through the VM's `/proc`. It gets [`HIDE_DEADLINE`]; after
/// that it is killed and this is an error.
pub fn hide_paths(
    init: &ProcId,
    paths: &[std::path::PathBuf],
    missing: Missing,
) -> Result<bool, EnterError> {
    let Some(handle) = InitHandle::open(init).map_err(EnterError::Init)? else {
        return Ok(false);
    };
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| EnterError::Setns(e.into()))?;
    let pid = crate::os::sys::spawn(|_| {
        let _ = rustix::thread::set_name(c"fvm-hide");
        let result =
            rustix::thread::move_into_thread_name_spaces(handle.pidfd().as_fd(), Ns::MOUNT)
                .map_err(|e| format!("cannot enter the vm's mount namespace: {e}"))
                .and_then(|()| {
                    crate::mounts::apply::hide_in_running(paths, missing == Missing::Hidden)
                        .map_err(|e| crate::error_line(&e))
                });
        match result {
            Ok(()) => 0,
            Err(msg) => {
                let _ = rustix::io::write(&write, msg.as_bytes());
                1
            }
        }
    })
    .map_err(EnterError::Setns)?;
    drop(write);
    let ok = wait_with_deadline(pid, HIDE_DEADLINE)?;
    let mut msg = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(read), &mut msg);
    match ok {
        Some(true) => Ok(true),
        Some(false) => Err(EnterError::Cover(if msg.is_empty() {
            "the helper process failed".to_owned()
        } else {
            msg
        })),
        None => Err(EnterError::Timeout(HIDE_DEADLINE)),
    }
}

/// Wait for our child `pid` for at most `deadline`: whether it exited with 0, or
/// None if it had to be killed.
fn wait_with_deadline(pid: Pid, deadline: std::time::Duration) -> Result<Option<bool>, EnterError> {
    use rustix::process::{WaitOptions, waitpid};
    let child = InitHandle::of_child(pid).map_err(EnterError::Setns)?;
    if !child.wait(deadline).map_err(EnterError::Setns)? {
        let _ = child.signal(rustix::process::Signal::KILL);
        // Reaped if it died; one stuck in the kernel is left to our own exit.
        let _ = waitpid(Some(pid), WaitOptions::NOHANG);
        return Ok(None);
    }
    let status =
        waitpid(Some(pid), WaitOptions::empty()).map_err(|e| EnterError::Setns(e.into()))?;
    Ok(Some(
        status.is_some_and(|(_, s)| s.exit_status() == Some(0)),
    ))
}

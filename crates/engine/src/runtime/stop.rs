//! Stop a VM as a host shuts down: first hang up every terminal session in it
//! (SIGHUP to each session leader that has a pty, as a logout does: an
//! interactive shell ignores SIGTERM but ends on a hangup), then SIGTERM to its
//! init (which passes it to every process of the VM), then SIGKILL after the
//! grace time. When a pid namespace's init dies, the kernel kills every other
//! process in it, so nothing of the VM survives.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::os::procid::ProcId;

/// How long to wait for the kernel to finish a SIGKILLed VM.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It ended within the grace time.
    Terminated,
    /// It had to be killed.
    Killed,
    /// It was not running.
    NotRunning,
}

/// A handle on a VM's init that can't be confused with a later process of the
/// same pid: the pidfd is opened, then the process identity is checked.
#[derive(Debug)]
pub struct InitHandle {
    pidfd: OwnedFd,
}

impl InitHandle {
    /// `None` if the init is gone.
    pub fn open(init: &ProcId) -> io::Result<Option<InitHandle>> {
        let Some(pid) = Pid::from_raw(init.pid) else {
            return Ok(None);
        };
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Checked after opening: if the identity matches now, the pidfd refers to it.
        if !init.is_alive() {
            return Ok(None);
        }
        Ok(Some(InitHandle { pidfd }))
    }

    /// A handle on a child of this process that is not reaped yet (so its pid
    /// can't be reused), to wait for it with a deadline.
    pub fn of_child(pid: Pid) -> io::Result<InitHandle> {
        Ok(InitHandle {
            pidfd: rustix::process::pidfd_open(pid, PidfdFlags::empty())?,
        })
    }

    pub fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        match rustix::process::pidfd_send_signal(&self.pidfd, sig) {
            Err(rustix::io::Errno::SRCH) | Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Wait until the process has exited; false on timeout.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        wait_readable(&self.pidfd, timeout)
    }
}

/// Wait until `fd` is readable (a pidfd: the process exited; a pipe: data or its
/// other end closed); false on timeout. A huge timeout (`--time` near u64::MAX)
/// means "wait for ever".
pub fn wait_readable(fd: impl std::os::fd::AsFd, timeout: Duration) -> io::Result<bool> {
    let now = std::time::Instant::now();
    let deadline = now
        .checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The major device numbers of Unix98 pty slaves (`/dev/pts/N`).
const PTY_SLAVE_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// The terminal sessions among `pids` (host pids of the VM's cgroup): each
/// process that leads a session and has a pty as its controlling terminal, by
/// a pidfd opened before it was checked (its cgroup is `leaf`), so that a pid
/// the VM's process left behind and the host reused is never signalled.
pub fn pty_sessions(pids: &[i32], leaf: &str) -> Vec<OwnedFd> {
    pids.iter()
        .filter_map(|&pid| {
            let pidfd =
                rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
            (crate::os::procid::in_cgroup(pid, leaf) && leads_a_pty_session(pid)).then_some(pidfd)
        })
        .collect()
}

/// Hang up `sessions` (from [`pty_sessions`]): SIGHUP then SIGCONT, as the
/// kernel sends a session leader when its terminal hangs up. Returns how many
/// took the SIGHUP.
pub fn hang_up(sessions: &[OwnedFd]) -> usize {
    sessions
        .iter()
        .filter(|pidfd| {
            let hung_up = rustix::process::pidfd_send_signal(pidfd, Signal::HUP).is_ok();
            let _ = rustix::process::pidfd_send_signal(pidfd, Signal::CONT);
            hung_up
        })
        .count()
}

/// Whether `pid` leads its session and has a pty slave as its controlling
/// terminal (fields 6 and 7 of /proc/PID/stat, as the host sees them).
fn leads_a_pty_session(pid: i32) -> bool {
    crate::os::procid::read_stat(pid).is_ok_and(|stat| {
        let major = (stat.tty >> 8) & 0xfff;
        stat.session == pid && PTY_SLAVE_MAJORS.contains(&major)
    })
}

/// Stop the VM whose init is `init`, waiting at most `grace` before killing it.
pub fn stop(init: &ProcId, grace: Duration) -> io::Result<Stopped> {
    let Some(handle) = InitHandle::open(init)? else {
        return Ok(Stopped::NotRunning);
    };
    if !grace.is_zero() {
        handle.signal(Signal::TERM)?;
        if handle.wait(grace)? {
            return Ok(Stopped::Terminated);
        }
    }
    handle.signal(Signal::KILL)?;
    if !handle.wait(KILL_WAIT)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("init {} did not exit after SIGKILL", init.pid),
        ));
    }
    Ok(Stopped::Killed)
}

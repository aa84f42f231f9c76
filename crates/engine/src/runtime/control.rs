//! Changes fvm makes to a running VM through its init, after the command that
//! started it has gone: today the VM's timeout.
//!
//! The init holds both ends of a pipe it got at launch. A later fvm command takes
//! a copy of the write end with `pidfd_getfd` (which needs ptrace rights over the
//! init, which host root has) and writes one message. Nothing inside the VM can
//! reach the pipe: it is
//! close-on-exec and closed in every command the init starts, and the init is not
//! dumpable, so only a process with CAP_SYS_PTRACE over it could take a copy. A
//! signal would not do: processes of the VM can signal their init too, and fake
//! the sender's pid.
//!
//! A message is 8 bytes, native-endian: the VM's timeout in seconds counted from
//! its start, 0 for none; or [`START`], which lets a parked init (an OCI
//! container between `create` and `start`) run its command.

use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use rustix::fs::FileType;
use rustix::process::PidfdGetfdFlags;

use super::stop::InitHandle;
use crate::os::procid::ProcId;

/// The pipe, made before the init is cloned: both ends stay with the init.
#[derive(Debug)]
pub struct ControlPipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

impl ControlPipe {
    pub fn new() -> io::Result<ControlPipe> {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        Ok(ControlPipe { read, write })
    }
}

/// The message that starts a parked init's command. No timeout is this long
/// (timeouts are checked to be far shorter).
pub const START: u64 = u64::MAX;

/// The message for a timeout (`None`: no timeout).
pub fn encode_timeout(seconds: Option<u64>) -> [u8; 8] {
    seconds.unwrap_or(0).to_ne_bytes()
}

/// In the init: the last timeout among the pending messages, if any arrived;
/// `Some(None)` means "no timeout any more". A [`START`] among them sets
/// `started`.
pub fn read_messages(read: &OwnedFd, started: &mut bool) -> Option<Option<u64>> {
    let mut latest = None;
    let mut buf = [0u8; 8];
    while let Ok(8) = rustix::io::read(read, &mut buf) {
        let secs = u64::from_ne_bytes(buf);
        if secs == START {
            *started = true;
            continue;
        }
        latest = Some((secs > 0).then_some(secs));
    }
    latest
}

/// Tell the running init `init` its new timeout. Returns false if the VM is gone.
pub fn send_timeout(init: &ProcId, fd: RawFd, seconds: Option<u64>) -> io::Result<bool> {
    send(init, fd, encode_timeout(seconds))
}

/// Let the parked init `init` run its command. Returns false if the VM is gone.
pub fn send_start(init: &ProcId, fd: RawFd) -> io::Result<bool> {
    send(init, fd, START.to_ne_bytes())
}

fn send(init: &ProcId, fd: RawFd, msg: [u8; 8]) -> io::Result<bool> {
    let Some(handle) = InitHandle::open(init)? else {
        return Ok(false);
    };
    let pipe = rustix::process::pidfd_getfd(handle.pidfd(), fd, PidfdGetfdFlags::empty())?;
    // The fd number comes from the state file: make sure it is the pipe.
    let st = rustix::fs::fstat(&pipe)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Fifo {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the vm's init has no control pipe at the recorded fd",
        ));
    }
    let n = rustix::io::write(pipe.as_fd(), &msg)?;
    if n != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to the vm's init",
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_message_wins_and_zero_clears() {
        let p = ControlPipe::new().unwrap();
        assert_eq!(read_messages(&p.read, &mut false), None);
        rustix::io::write(&p.write, &encode_timeout(Some(5))).unwrap();
        rustix::io::write(&p.write, &encode_timeout(Some(9))).unwrap();
        assert_eq!(read_messages(&p.read, &mut false), Some(Some(9)));
        rustix::io::write(&p.write, &encode_timeout(None)).unwrap();
        assert_eq!(read_messages(&p.read, &mut false), Some(None));
    }

    #[test]
    fn start_is_told_apart_from_timeouts() {
        let p = ControlPipe::new().unwrap();
        let mut started = false;
        rustix::io::write(&p.write, &START.to_ne_bytes()).unwrap();
        assert_eq!(read_messages(&p.read, &mut started), None);
        assert!(started);
        rustix::io::write(&p.write, &encode_timeout(Some(3))).unwrap();
        rustix::io::write(&p.write, &START.to_ne_bytes()).unwrap();
        let mut again = false;
        assert_eq!(read_messages(&p.read, &mut again), Some(Some(3)));
        assert!(again);
    }
}

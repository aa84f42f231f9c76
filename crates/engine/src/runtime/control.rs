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
//!
//! Requests that want an answer (services, `fvm run -d`, see
//! `runtime::services`) go the same way over a second pair the init holds both
//! ends of: a SOCK_SEQPACKET socketpair. fvm takes a copy of one end and sends
//! one request, with the end of a new socketpair of its own attached, on which
//! the init answers. Every request has its own answer line, so concurrent fvm
//! commands never read each other's answers.

use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use rustix::fs::FileType;
use rustix::process::PidfdGetfdFlags;

use super::channel::Channel;
use super::stop::InitHandle;
use crate::os::procid::ProcId;

/// The pipe, made before the init is cloned: both ends stay with the init.
#[derive(Debug)]
pub struct ControlPipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    /// The init's end of the request socketpair, and the end fvm takes copies of.
    pub requests: Channel,
    pub requests_in: OwnedFd,
}

impl ControlPipe {
    pub fn new() -> io::Result<ControlPipe> {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        let (requests, requests_in) = Channel::pair()?;
        Ok(ControlPipe {
            read,
            write,
            requests,
            requests_in: requests_in.into(),
        })
    }
}

/// How long fvm waits for the init's answer to a request.
pub const ANSWER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(40);

/// Send `request` to the running init `init`, whose request socket is `fd`, and
/// wait for its answer. `None` if the VM is gone.
pub fn request<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    init: &ProcId,
    fd: RawFd,
    request: &Q,
) -> io::Result<Option<A>> {
    let Some(sock) = take_fd(init, fd, FileType::Socket, "request socket")? else {
        return Ok(None);
    };
    let sock = Channel::from(sock);
    let (ours, theirs) = Channel::pair()?;
    sock.send_value(request, &[theirs.as_fd()])?;
    drop(theirs);
    let answer_fd: OwnedFd = ours.into();
    if !super::stop::wait_readable(&answer_fd, ANSWER_DEADLINE)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the vm's init did not answer",
        ));
    }
    match Channel::from(answer_fd).recv_value::<A>()? {
        Some((answer, _)) => Ok(Some(answer)),
        // The init ended meanwhile.
        None => Ok(None),
    }
}

/// A copy of the running init's fd `fd`, which must be of type `kind` (the fd
/// number comes from the state file); `None` if the VM is gone.
fn take_fd(init: &ProcId, fd: RawFd, kind: FileType, what: &str) -> io::Result<Option<OwnedFd>> {
    let Some(handle) = InitHandle::open(init)? else {
        return Ok(None);
    };
    let copy = rustix::process::pidfd_getfd(handle.pidfd(), fd, PidfdGetfdFlags::empty())?;
    let st = rustix::fs::fstat(&copy)?;
    if FileType::from_raw_mode(st.st_mode) != kind {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the vm's init has no {what} at the recorded fd"),
        ));
    }
    Ok(Some(copy))
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
    let Some(pipe) = take_fd(init, fd, FileType::Fifo, "control pipe")? else {
        return Ok(false);
    };
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

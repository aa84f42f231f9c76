//! The private line between an fvm command and the VM's init while it starts.
//!
//! A SOCK_SEQPACKET socketpair keeps message boundaries and carries file
//! descriptors (the pty master the init opens from the VM's own devpts). Messages
//! are small JSON objects. If either side dies, the other reads end-of-file, so a
//! killed `fvm` never leaves an init waiting forever.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention: the code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => s.saturating_add(128),
        }
    }

    /// From a raw wait status (see [`crate::os::sys::reap`]).
    pub fn from_raw(status: i32) -> Exit {
        if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(255)
        }
    }

    /// The exit status, if it exited.
    pub fn status(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        }
    }

    /// The signal that ended it, if one did.
    pub fn signal(self) -> Option<i32> {
        match self {
            Exit::Code(_) => None,
            Exit::Signal(s) => Some(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum Msg {
    /// init → fvm: the VM is assembled and waits for `Go`.
    Ready,
    /// init → fvm: assembling the VM failed; it exits.
    Failed { error: String },
    /// fvm → init: the state file names this init; carry on.
    Go,
    /// init → fvm: the pty master for the command, attached as a file descriptor.
    Pty,
    /// init → fvm: the command could not be executed.
    ExecFailed { program: String, errno: i32 },
    /// init → fvm: the user the command was to run as is not in the VM's
    /// /etc/passwd.
    NoUser { user: String },
    /// init → fvm: the command ended; `last` if nothing else runs in the VM, so the
    /// init is exiting too; `timed_out` if the init was stopping the VM because its
    /// timeout ran out; `outside` the stop signal the init got from outside the
    /// VM, if one came; `cpu_ms` the CPU time the command used.
    Exited {
        exit: Exit,
        last: bool,
        #[serde(default)]
        timed_out: bool,
        #[serde(default)]
        outside: Option<i32>,
        #[serde(default)]
        cpu_ms: Option<u64>,
    },
}

/// The largest message: a service's definition or the status of every service
/// fits many times.
const MAX_MSG: usize = 256 << 10;
/// The most file descriptors one message carries.
const MAX_FDS: usize = 3;

#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Channel(a), Channel(b)))
    }

    pub fn send(&self, msg: &Msg, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.send_value(msg, &fds)
    }

    /// The next message, or `None` if the other side has gone.
    pub fn recv(&self) -> io::Result<Option<(Msg, Option<OwnedFd>)>> {
        Ok(self
            .recv_value()?
            .map(|(m, fds): (Msg, Vec<OwnedFd>)| (m, fds.into_iter().next())))
    }

    /// Send any message, with up to [`MAX_FDS`] file descriptors.
    pub fn send_value<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        if body.len() > MAX_MSG || fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message too large for the vm's init",
            ));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            cmsg.push(SendAncillaryMessage::ScmRights(fds));
        }
        // NOSIGNAL: a peer that died must give us EPIPE, not kill us with SIGPIPE.
        rustix::net::sendmsg(
            &self.0,
            &[io::IoSlice::new(&body)],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        )?;
        Ok(())
    }

    /// The next message of any kind, or `None` if the other side has gone.
    pub fn recv_value<T: serde::de::DeserializeOwned>(
        &self,
    ) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MSG];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match rustix::net::recvmsg(
                &self.0,
                &mut [io::IoSliceMut::new(&mut buf)],
                &mut cmsg,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other?,
            }
        };
        let mut fds = Vec::new();
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(got) = m {
                fds.extend(got);
            }
        }
        if got.bytes == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..got.bytes])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((msg, fds)))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.0
    }
}

impl From<OwnedFd> for Channel {
    fn from(fd: OwnedFd) -> Channel {
        Channel(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_and_eof_is_none() {
        let (a, b) = Channel::pair().unwrap();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        a.send(&Msg::Pty, Some(r.as_fd())).unwrap();
        a.send(
            &Msg::Exited {
                exit: Exit::Signal(9),
                last: true,
                timed_out: true,
                outside: Some(15),
                cpu_ms: Some(1500),
            },
            None,
        )
        .unwrap();
        let (m, fd) = b.recv().unwrap().unwrap();
        assert_eq!(m, Msg::Pty);
        assert!(fd.is_some());
        let (m, fd) = b.recv().unwrap().unwrap();
        assert_eq!(
            m,
            Msg::Exited {
                exit: Exit::Signal(9),
                last: true,
                timed_out: true,
                outside: Some(15),
                cpu_ms: Some(1500),
            }
        );
        assert!(fd.is_none());
        drop(a);
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(15).code(), 143);
        assert_eq!(Exit::from_raw(3 << 8), Exit::Code(3));
        assert_eq!(Exit::from_raw(9), Exit::Signal(9));
    }
}

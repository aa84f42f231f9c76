//! The foreground side of `fvm run` and `fvm shell`: wait for the command, pass
//! signals on, and, when the command has a pty, copy the terminal both ways.
//!
//! One poll loop, no threads: the user's terminal in raw mode, the pty master (from
//! the VM's own devpts), a signalfd, and either the channel from a freshly started
//! VM's init or a pidfd of the command we started in a running VM.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, WaitOptions};
use rustix::termios::{self, OptionalActions, Termios};

use super::channel::{Channel, Exit, Msg};
use super::command::SpawnError;

/// What we wait on for the command's end.
#[derive(Debug)]
pub enum Waited {
    /// The init of a VM started for this command reports over the channel; signals
    /// go to the init, which passes them to every process of the VM.
    Init { pid: Pid, chan: Channel },
    /// A command we forked inside a running VM.
    Child { pid: Pid },
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    /// The VM's init is exiting too (nothing else runs in the VM).
    pub vm_ended: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the vm stopped before the command finished")]
    VmGone,
    #[error("{0}")]
    Init(String),
    #[error("terminal i/o failed")]
    Io(#[from] io::Error),
}

const SIGNALS: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Block the signals the relay handles, so they queue for its signalfd. Call this
/// before starting the command, so none is lost in between.
pub fn block_signals() -> io::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in SIGNALS {
        set.add(s);
    }
    set.thread_block()?;
    Ok(set)
}

/// Puts the user's terminal in raw mode while a pty command runs; restores it on drop.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Drain, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin(), OptionalActions::Drain, &self.saved);
    }
}

struct Relay {
    master: Option<OwnedFd>,
    raw: Option<RawMode>,
    stdin_open: bool,
    stdin_is_tty: bool,
    /// Typed input not yet accepted by the pty.
    pending: Vec<u8>,
    stdout_ok: bool,
    target: Pid,
}

/// Wait for the command, relaying the terminal if `master` is (or becomes) set.
pub fn run(
    waited: Waited,
    master: Option<OwnedFd>,
    signals: &SigSet,
) -> Result<Outcome, RelayError> {
    let sigfd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(io::Error::from)?;
    let (target, pidfd, chan) = match waited {
        Waited::Init { pid, chan } => (pid, None, Some(chan)),
        Waited::Child { pid } => (
            pid,
            Some(
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                    .map_err(io::Error::from)?,
            ),
            None,
        ),
    };
    let mut r = Relay {
        master: None,
        raw: None,
        stdin_open: true,
        stdin_is_tty: termios::isatty(io::stdin()),
        pending: Vec::new(),
        stdout_ok: true,
        target,
    };
    if let Some(m) = master {
        r.attach(m)?;
    }
    loop {
        let stdin = io::stdin();
        let want_stdin = r.master.is_some() && r.stdin_open && r.pending.len() < 1 << 16;
        let has_master = r.master.is_some();
        let mut fds: Vec<PollFd<'_>> = vec![PollFd::new(&sigfd, PollFlags::IN)];
        let end_fd: BorrowedFd<'_> = match (&pidfd, &chan) {
            (Some(p), _) => p.as_fd(),
            (None, Some(c)) => c.as_fd(),
            (None, None) => unreachable!("one of them is always set"),
        };
        fds.push(PollFd::from_borrowed_fd(end_fd, PollFlags::IN));
        let mut master_events = PollFlags::IN;
        if !r.pending.is_empty() {
            master_events |= PollFlags::OUT;
        }
        if let Some(m) = &r.master {
            fds.push(PollFd::new(m, master_events));
        }
        if want_stdin {
            fds.push(PollFd::new(&stdin, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
            Ok(_) => {}
        }
        let ready: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        if !ready[0].is_empty() {
            r.signals(&sigfd)?;
        }
        if has_master && !ready[2].is_empty() {
            r.pump_master(ready[2])?;
        }
        if want_stdin {
            let i = if has_master { 3 } else { 2 };
            if !ready[i].is_empty() {
                r.pump_stdin()?;
            }
        }
        if !ready[1].is_empty() {
            let outcome = match (&pidfd, &chan) {
                (Some(_), _) => {
                    let status = rustix::process::waitpid(Some(target), WaitOptions::empty())
                        .map_err(io::Error::from)?;
                    let exit = status.map_or(Exit::Code(255), |(_, s)| Exit::from_wait(s));
                    Some(Outcome {
                        exit,
                        vm_ended: false,
                    })
                }
                (None, Some(c)) => r.message(c)?,
                (None, None) => None,
            };
            if let Some(o) = outcome {
                r.drain();
                return Ok(o);
            }
        }
    }
}

impl Relay {
    fn attach(&mut self, master: OwnedFd) -> io::Result<()> {
        rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK)?;
        if let Ok(ws) = termios::tcgetwinsize(io::stdin()) {
            let _ = termios::tcsetwinsize(&master, ws);
        }
        if self.stdin_is_tty {
            self.raw = RawMode::enter();
        }
        self.master = Some(master);
        Ok(())
    }

    fn message(&mut self, chan: &Channel) -> Result<Option<Outcome>, RelayError> {
        match chan.recv()? {
            Some((Msg::Pty, Some(fd))) => {
                self.attach(fd)?;
                Ok(None)
            }
            Some((Msg::Exited { exit, last }, _)) => Ok(Some(Outcome {
                exit,
                vm_ended: last,
            })),
            Some((Msg::ExecFailed { program, errno }, _)) => {
                Err(SpawnError::from_errno(program, errno).into())
            }
            Some((Msg::Failed { error }, _)) => Err(RelayError::Init(error)),
            Some(_) => Ok(None),
            None => Err(RelayError::VmGone),
        }
    }

    fn signals(&mut self, sigfd: &SignalFd) -> io::Result<()> {
        while let Ok(Some(info)) = sigfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGWINCH => {
                    if let (Some(m), Ok(ws)) = (&self.master, termios::tcgetwinsize(io::stdin())) {
                        let _ = termios::tcsetwinsize(m, ws);
                    }
                }
                // With a pty, ^C and ^\ reach the command as bytes through it.
                Signal::SIGINT | Signal::SIGQUIT if self.master.is_some() => {}
                sig => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(self.target.as_raw_nonzero().get()),
                        sig,
                    );
                }
            }
        }
        Ok(())
    }

    fn pump_master(&mut self, events: PollFlags) -> io::Result<()> {
        if events.intersects(PollFlags::OUT) {
            self.flush_pending()?;
        }
        if events.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            self.read_master();
        }
        Ok(())
    }

    /// Copy what the pty has to stdout. On EIO (every slave fd closed) stop polling it.
    fn read_master(&mut self) {
        let Some(m) = &self.master else { return };
        let mut buf = [0u8; 16384];
        loop {
            match rustix::io::read(m, &mut buf) {
                Ok(0) | Err(rustix::io::Errno::IO) => {
                    self.master = None;
                    return;
                }
                Ok(n) => {
                    if self.stdout_ok {
                        let mut out = io::stdout().lock();
                        self.stdout_ok =
                            out.write_all(&buf[..n]).and_then(|()| out.flush()).is_ok();
                    }
                }
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return,
                Err(_) => {
                    self.master = None;
                    return;
                }
            }
        }
    }

    fn pump_stdin(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 16384];
        match rustix::io::read(io::stdin(), &mut buf) {
            Ok(0) => {
                self.stdin_open = false;
                // A piped stdin ends: type the terminal's end-of-file character.
                if !self.stdin_is_tty {
                    self.pending.push(0x04);
                }
            }
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => self.stdin_open = false,
        }
        self.flush_pending()
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        let Some(m) = &self.master else {
            self.pending.clear();
            return Ok(());
        };
        while !self.pending.is_empty() {
            match rustix::io::write(m, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    self.pending.clear();
                    break;
                }
            }
        }
        Ok(())
    }

    /// The command has ended: copy what is left in the pty. The kernel moves the
    /// last output to the master side asynchronously, so wait briefly for it until
    /// the pty reports that every slave is closed (EIO).
    fn drain(&mut self) {
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        while let Some(m) = &self.master {
            let mut fds = [PollFd::new(m, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
                Ok(_) => self.read_master(),
            }
        }
        self.raw = None;
    }
}

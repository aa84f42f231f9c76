//! The foreground side of `fvm run` and `fvm shell`: wait for the command, pass
//! signals on, and copy the caller's terminal streams to and from the command
//! (through the pty master from the VM's own devpts, or pipes; see `stdio`).
//!
//! One poll loop, no threads: a signalfd, either the channel from a freshly started
//! VM's init or a pidfd of the command we started in a running VM, and the relayed
//! streams, each a non-blocking source copied to a sink.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags};
use rustix::process::Pid;
use rustix::termios::{self, OptionalActions, Termios};

use super::channel::{Channel, Exit, Msg};
use super::command::SpawnError;
use super::stdio::CallerEnds;

/// What we wait on for the command's end.
#[derive(Debug)]
pub enum Waited {
    /// The init of a VM started for this command reports over the channel; signals
    /// go to the init, which passes them to every process of the VM. A stop
    /// signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) to this process starts `grace`:
    /// when it runs out with the VM still there, the init gets SIGKILL, which
    /// ends every process of the VM (it is their pid namespace's init).
    Init {
        pid: Pid,
        chan: Channel,
        grace: Duration,
    },
    /// A command we forked inside a running VM.
    Child { pid: Pid },
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    /// The VM's init is exiting too (nothing else runs in the VM).
    pub vm_ended: bool,
    /// The VM was being stopped because its timeout ran out.
    pub timed_out: bool,
    /// The stop signal the VM's init got from outside the VM, if one came.
    pub outside: Option<i32>,
    /// The CPU time the command used, where known.
    pub cpu: Option<Duration>,
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

/// Where output read from the command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Stdout,
    Stderr,
    /// Nobody wants it (a pty that carries only stdin echoes what is typed).
    Discard,
}

/// One stream from the command to the caller: the pty master or a pipe.
struct Output {
    fd: OwnedFd,
    sink: Sink,
}

struct Relay {
    outputs: Vec<Output>,
    /// Where the caller's stdin goes: the pty master (a dup of it) or a pipe.
    input: Option<OwnedFd>,
    input_is_pty: bool,
    stdin_open: bool,
    stdin_is_tty: bool,
    /// Input read but not yet accepted by the command.
    pending: Vec<u8>,
    /// The caller's fd 0/1/2 carried by the pty.
    on_pty: [bool; 3],
    raw: Option<RawMode>,
    /// The pty master, for window sizes.
    winsize_to: Option<OwnedFd>,
    target: Pid,
    /// The target is the command itself, in a running VM, whose processes can
    /// stop it: a signal that ends it is followed by SIGCONT.
    wake_after: bool,
    /// How long the VM gets after a stop signal before its init is killed
    /// (`None`: the target is a command in a running VM, which is only signalled).
    grace: Option<Duration>,
    /// When the VM's init gets SIGKILL, once a stop signal has arrived.
    kill_at: Option<Instant>,
    /// The init was killed for not stopping in time.
    killed: bool,
}

/// Wait for the command, relaying the caller's streams as `ends` says; a pty
/// master is given here (a command in a running VM) or arrives from the init.
pub fn run(
    waited: Waited,
    master: Option<OwnedFd>,
    signals: &SigSet,
    ends: CallerEnds,
) -> Result<Outcome, RelayError> {
    let sigfd = SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(io::Error::from)?;
    let (target, pidfd, chan, grace) = match waited {
        Waited::Init { pid, chan, grace } => (pid, None, Some(chan), Some(grace)),
        Waited::Child { pid } => (
            pid,
            Some(
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                    .map_err(io::Error::from)?,
            ),
            None,
            None,
        ),
    };
    let mut r = Relay {
        outputs: Vec::new(),
        input: None,
        input_is_pty: false,
        stdin_open: true,
        stdin_is_tty: termios::isatty(io::stdin()),
        pending: Vec::new(),
        on_pty: ends.on_pty,
        raw: None,
        winsize_to: None,
        target,
        wake_after: pidfd.is_some(),
        grace,
        kill_at: None,
        killed: false,
    };
    r.attach_pipes(ends)?;
    if let Some(m) = master {
        r.attach_pty(m)?;
    }
    loop {
        let stdin = io::stdin();
        let want_stdin = r.input.is_some() && r.stdin_open && r.pending.len() < 1 << 16;
        let mut fds: Vec<PollFd<'_>> = vec![PollFd::new(&sigfd, PollFlags::IN)];
        let end_fd: BorrowedFd<'_> = match (&pidfd, &chan) {
            (Some(p), _) => p.as_fd(),
            (None, Some(c)) => c.as_fd(),
            (None, None) => unreachable!("one of them is always set"),
        };
        fds.push(PollFd::from_borrowed_fd(end_fd, PollFlags::IN));
        for o in &r.outputs {
            fds.push(PollFd::new(&o.fd, PollFlags::IN));
        }
        if let Some(i) = &r.input
            && !r.pending.is_empty()
        {
            fds.push(PollFd::new(i, PollFlags::OUT));
        }
        let stdin_at = fds.len();
        if want_stdin {
            fds.push(PollFd::new(&stdin, PollFlags::IN));
        }
        let wake = r.kill_at.map(|at| {
            let d = at.saturating_duration_since(Instant::now());
            rustix::event::Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            }
        });
        match rustix::event::poll(&mut fds, wake.as_ref()) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
            Ok(_) => {}
        }
        let ready: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        if !ready[0].is_empty() {
            r.signals(&sigfd);
        }
        r.kill_when_grace_is_over();
        let outputs_ready: Vec<bool> = ready[2..2 + r.outputs.len()]
            .iter()
            .map(|f| !f.is_empty())
            .collect();
        r.pump_outputs(&outputs_ready);
        r.flush_pending();
        if want_stdin && !ready[stdin_at].is_empty() {
            r.pump_stdin();
        }
        if !ready[1].is_empty() {
            let outcome = match (&pidfd, &chan) {
                (Some(_), _) => {
                    let child = crate::os::sys::reap(Some(target), false)?;
                    Some(Outcome {
                        exit: child.map_or(Exit::Code(255), |c| Exit::from_raw(c.status)),
                        vm_ended: false,
                        timed_out: false,
                        outside: None,
                        cpu: child.map(|c| c.cpu),
                    })
                }
                (None, Some(c)) => match r.message(c) {
                    // The init died of the SIGKILL sent when the grace ran out,
                    // and every process of the VM with it.
                    Err(RelayError::VmGone) if r.killed => Some(Outcome {
                        exit: Exit::Signal(libc::SIGKILL),
                        vm_ended: true,
                        timed_out: false,
                        outside: None,
                        cpu: None,
                    }),
                    other => other?,
                },
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
    /// After a stop signal: SIGKILL to the VM's init once the grace is over.
    fn kill_when_grace_is_over(&mut self) {
        if self.kill_at.is_some_and(|at| Instant::now() >= at) {
            self.kill_at = None;
            self.killed = true;
            let target = nix::unistd::Pid::from_raw(self.target.as_raw_nonzero().get());
            let _ = nix::sys::signal::kill(target, Signal::SIGKILL);
        }
    }

    fn attach_pipes(&mut self, ends: CallerEnds) -> io::Result<()> {
        for (fd, sink) in [(ends.stdout, Sink::Stdout), (ends.stderr, Sink::Stderr)] {
            if let Some(fd) = fd {
                rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK)?;
                self.outputs.push(Output { fd, sink });
            }
        }
        if let Some(fd) = ends.stdin {
            rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK)?;
            self.input = Some(fd);
        }
        Ok(())
    }

    fn attach_pty(&mut self, master: OwnedFd) -> io::Result<()> {
        rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK)?;
        let winsize_to = master.try_clone()?;
        if let Some(ws) = self.caller_winsize() {
            let _ = termios::tcsetwinsize(&winsize_to, ws);
        }
        if self.on_pty[0] {
            self.input = Some(master.try_clone()?);
            self.input_is_pty = true;
            if self.stdin_is_tty {
                self.raw = RawMode::enter();
            }
        }
        let sink = if self.on_pty[1] {
            Sink::Stdout
        } else if self.on_pty[2] {
            Sink::Stderr
        } else {
            Sink::Discard
        };
        self.outputs.push(Output { fd: master, sink });
        self.winsize_to = Some(winsize_to);
        Ok(())
    }

    /// The size of whichever of the caller's streams is a terminal.
    fn caller_winsize(&self) -> Option<termios::Winsize> {
        termios::tcgetwinsize(io::stdin())
            .or_else(|_| termios::tcgetwinsize(io::stdout()))
            .or_else(|_| termios::tcgetwinsize(io::stderr()))
            .ok()
    }

    fn message(&mut self, chan: &Channel) -> Result<Option<Outcome>, RelayError> {
        match chan.recv()? {
            Some((Msg::Pty, Some(fd))) => {
                self.attach_pty(fd)?;
                Ok(None)
            }
            Some((
                Msg::Exited {
                    exit,
                    last,
                    timed_out,
                    outside,
                    cpu_ms,
                },
                _,
            )) => Ok(Some(Outcome {
                exit,
                vm_ended: last,
                timed_out,
                outside,
                cpu: cpu_ms.map(Duration::from_millis),
            })),
            Some((Msg::ExecFailed { program, errno }, _)) => {
                Err(SpawnError::from_errno(program, errno).into())
            }
            Some((Msg::NoUser { user }, _)) => Err(SpawnError::NoUser { user }.into()),
            Some((Msg::Failed { error }, _)) => Err(RelayError::Init(error)),
            Some(_) => Ok(None),
            None => Err(RelayError::VmGone),
        }
    }

    fn signals(&mut self, sigfd: &SignalFd) {
        while let Ok(Some(info)) = sigfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGWINCH => {
                    if let (Some(m), Some(ws)) = (&self.winsize_to, self.caller_winsize()) {
                        let _ = termios::tcsetwinsize(m, ws);
                    }
                }
                // Typed on a pty, ^C and ^\ reach the command as bytes through it.
                Signal::SIGINT | Signal::SIGQUIT if self.raw.is_some() => {}
                sig => {
                    let target = nix::unistd::Pid::from_raw(self.target.as_raw_nonzero().get());
                    let _ = nix::sys::signal::kill(target, sig);
                    if let Some(grace) = self.grace
                        && self.kill_at.is_none()
                        && !self.killed
                        && matches!(
                            sig,
                            Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT
                        )
                    {
                        // (A grace too long to count is no deadline.)
                        self.kill_at = Instant::now().checked_add(grace);
                    }
                    // A command a process of the VM stopped would hold the signal
                    // until someone continues it, and this command would wait.
                    if self.wake_after
                        && matches!(
                            sig,
                            Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT
                        )
                    {
                        let _ = nix::sys::signal::kill(target, Signal::SIGCONT);
                    }
                }
            }
        }
    }

    fn pump_outputs(&mut self, ready: &[bool]) {
        let mut i = 0;
        while i < self.outputs.len() {
            let done = ready.get(i).copied().unwrap_or(false) && !copy_out(&self.outputs[i]);
            if done {
                self.outputs.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn pump_stdin(&mut self) {
        let mut buf = [0u8; 16384];
        match rustix::io::read(io::stdin(), &mut buf) {
            Ok(0) => {
                self.stdin_open = false;
                if self.input_is_pty {
                    // A piped stdin ends: type the terminal's end-of-file character.
                    if !self.stdin_is_tty {
                        self.pending.push(0x04);
                    }
                } else if self.pending.is_empty() {
                    self.input = None;
                }
            }
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => self.stdin_open = false,
        }
        self.flush_pending();
    }

    fn flush_pending(&mut self) {
        let Some(input) = &self.input else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match rustix::io::write(input, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    self.pending.clear();
                    self.input = None;
                    return;
                }
            }
        }
        // All typed input is in; a closed pipe stdin now reaches the command as EOF.
        if !self.stdin_open && !self.input_is_pty {
            self.input = None;
        }
    }

    /// The command has ended: copy what is left. The kernel moves a pty's last
    /// output to the master side asynchronously, and a pipe may still hold data,
    /// so keep reading until each stream ends (EOF, or EIO once every pty slave is
    /// closed) or stays quiet for 50 ms (something else of the VM still holds it).
    fn drain(&mut self) {
        let ts = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        while !self.outputs.is_empty() {
            let mut fds: Vec<PollFd<'_>> = self
                .outputs
                .iter()
                .map(|o| PollFd::new(&o.fd, PollFlags::IN))
                .collect();
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
                Ok(_) => {}
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            self.pump_outputs(&ready);
        }
        self.raw = None;
    }
}

/// Copy what `o` has to its sink; false once it has ended.
fn copy_out(o: &Output) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match rustix::io::read(&o.fd, &mut buf) {
            Ok(0) | Err(rustix::io::Errno::IO) => return false,
            Ok(n) => {
                let written = match o.sink {
                    Sink::Stdout => {
                        let mut out = io::stdout().lock();
                        out.write_all(&buf[..n]).and_then(|()| out.flush())
                    }
                    Sink::Stderr => {
                        let mut err = io::stderr().lock();
                        err.write_all(&buf[..n]).and_then(|()| err.flush())
                    }
                    Sink::Discard => Ok(()),
                };
                // A reader that went away (`| head`): keep draining, drop the data.
                let _ = written;
            }
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return true,
            Err(_) => return false,
        }
    }
}

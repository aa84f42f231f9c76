//! How a command's stdin, stdout and stderr reach the caller's, without ever
//! handing a host terminal to a process in a VM.
//!
//! A terminal fd lets whoever holds it inject keystrokes (TIOCSTI, CVE-2017-5226)
//! and read what is typed later, and a VM process could keep it long after `fvm`
//! exits. So a stream that is a terminal on the caller's side reaches the command
//! through a pty from the VM's own devpts, or, without a pty (`-T`), through a
//! pipe that `fvm` relays. Pipes, sockets and output files the caller
//! redirected pass straight through, so their bytes are never touched.
//!
//! Other host files are not handed over as they are. Any fd a process holds can
//! be opened again through `/proc/self/fd/N`, with whatever access root in the VM
//! has to the file, not the access the fd had: a host file given as stdin (only
//! to be read) could be reopened for writing. So a stdin that is a file or a
//! device (other than the harmless `/dev/null`, `/dev/zero`, `/dev/full`,
//! `/dev/random`, `/dev/urandom`) is relayed through a pipe. A directory (whose
//! fd would open any host path beneath it with `openat`) or an `O_PATH` fd is
//! refused on any of the three.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, OFlags};

/// Whether a command gets a pty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtyMode {
    /// When any of stdin, stdout or stderr is a terminal.
    #[default]
    Auto,
    /// Always; stdin goes through the pty even when it is not a terminal.
    Always,
    /// Never; terminal streams are relayed through pipes.
    Never,
}

/// What the command's fd 0, 1 or 2 is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The caller's own fd (a file or a pipe): passed as it is.
    Inherit,
    /// The pty's slave.
    Pty,
    /// A pipe that fvm relays to the caller's terminal; the command's end is in
    /// [`Pipes`].
    Pipe,
}

/// The command's side of the plan, copied into the processes that start it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdioPlan {
    pub streams: [Stream; 3],
}

impl StdioPlan {
    pub fn pty(&self) -> bool {
        self.streams.contains(&Stream::Pty)
    }

    /// fds 0-2 all the pty's slave (an OCI container with a console socket).
    pub fn all_pty() -> StdioPlan {
        StdioPlan {
            streams: [Stream::Pty; 3],
        }
    }

    /// Everything passed as it is: for a process that must not relay anything.
    pub fn inherit() -> StdioPlan {
        StdioPlan {
            streams: [Stream::Inherit; 3],
        }
    }
}

/// fvm's side: which of its streams are relayed, and the pipe ends it keeps.
#[derive(Debug, Default)]
pub struct CallerEnds {
    /// Caller fds 0..3 that are carried by the pty.
    pub on_pty: [bool; 3],
    /// Write end of the command's stdin pipe.
    pub stdin: Option<OwnedFd>,
    /// Read ends of the command's stdout and stderr pipes.
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The command's ends of the pipes (by its fd 0, 1, 2), held until the
    /// command has them.
    command_ends: [Option<OwnedFd>; 3],
}

/// The command's ends of the relay pipes, by the fd (0, 1, 2) each becomes: for
/// the streams the plan says are [`Stream::Pipe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Pipes<'a>(pub [Option<BorrowedFd<'a>>; 3]);

impl Pipes<'_> {
    /// Copies of the pipe ends that this process owns (a forked process that
    /// must close its copies once the command has them).
    pub fn copies(self) -> io::Result<[Option<OwnedFd>; 3]> {
        let mut out: [Option<OwnedFd>; 3] = Default::default();
        for (o, fd) in out.iter_mut().zip(self.0) {
            *o = fd.map(|fd| fd.try_clone_to_owned()).transpose()?;
        }
        Ok(out)
    }

    /// Borrow pipe ends this process owns.
    pub fn of(owned: &[Option<OwnedFd>; 3]) -> Pipes<'_> {
        Pipes(owned.each_ref().map(|o| o.as_ref().map(AsFd::as_fd)))
    }
}

impl CallerEnds {
    /// The command's pipe ends, for starting it.
    pub fn command_pipes(&self) -> Pipes<'_> {
        Pipes::of(&self.command_ends)
    }

    /// Close fvm's copies of the command's pipe ends (after it has started), so the
    /// relay sees end-of-file when the command closes its own.
    pub fn release_command_ends(&mut self) {
        self.command_ends = Default::default();
    }
}

/// What one of the caller's fds 0, 1, 2 is, as far as handing it to a VM goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Terminal,
    /// Handed over as it is.
    Pass,
    /// Relayed through a pipe (a host file or device as stdin).
    Relay,
}

/// Decide, and make the pipes, from what fds 0, 1 and 2 of this process are.
/// A directory or an `O_PATH` fd among them is refused with one line.
pub fn plan(mode: TtyMode) -> io::Result<(StdioPlan, CallerEnds)> {
    let callers = [
        classify(io::stdin().as_fd(), 0)?,
        classify(io::stdout().as_fd(), 1)?,
        classify(io::stderr().as_fd(), 2)?,
    ];
    decide(mode, callers)
}

/// Check that this process's fds 0-2 can be handed to a VM's process as they
/// are, with nobody left to relay them (an OCI container's, whose runtime
/// exits): pipes, sockets, /dev/null and the like, and files as stdout or
/// stderr. Refused with one line: a directory or an `O_PATH` fd, a terminal
/// (a VM is never handed the caller's terminal), and a host file or device as
/// stdin (a VM could reopen it for writing through /proc).
pub fn check_inherit() -> io::Result<()> {
    for (i, fd) in [
        io::stdin().as_fd(),
        io::stdout().as_fd(),
        io::stderr().as_fd(),
    ]
    .into_iter()
    .enumerate()
    {
        let why = match classify(fd, i)? {
            Caller::Pass => continue,
            Caller::Terminal => "a terminal (give the container a console socket instead)",
            Caller::Relay => "a host file or device (give it a pipe)",
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is {why}: a vm is never handed it", NAMES[i]),
        ));
    }
    Ok(())
}

const NAMES: [&str; 3] = ["stdin", "stdout", "stderr"];

fn classify(fd: BorrowedFd<'_>, i: usize) -> io::Result<Caller> {
    let refuse = |what: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {what}: a vm is never handed a host directory (redirect a file or a pipe instead)",
                NAMES[i]
            ),
        ))
    };
    let stat = match rustix::fs::fstat(fd) {
        Ok(st) => st,
        // Closed: the command gets no such fd either.
        Err(rustix::io::Errno::BADF) => return Ok(Caller::Pass),
        Err(e) => return Err(e.into()),
    };
    if rustix::fs::fcntl_getfl(fd)?.contains(OFlags::PATH) {
        return refuse("an O_PATH descriptor");
    }
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind == FileType::Directory {
        return refuse("a directory");
    }
    if rustix::termios::isatty(fd) {
        return Ok(Caller::Terminal);
    }
    let harmless_device = kind == FileType::CharacterDevice
        && rustix::fs::major(stat.st_rdev) == 1
        && matches!(rustix::fs::minor(stat.st_rdev), 3 | 5 | 7 | 8 | 9);
    let reopenable = matches!(
        kind,
        FileType::RegularFile | FileType::BlockDevice | FileType::CharacterDevice
    );
    Ok(if i == 0 && reopenable && !harmless_device {
        Caller::Relay
    } else {
        Caller::Pass
    })
}

fn decide(mode: TtyMode, callers: [Caller; 3]) -> io::Result<(StdioPlan, CallerEnds)> {
    let terminal = callers.map(|c| c == Caller::Terminal);
    let pty = match mode {
        TtyMode::Always => true,
        TtyMode::Never => false,
        TtyMode::Auto => terminal.contains(&true),
    };
    let mut ends = CallerEnds::default();
    let mut streams = [Stream::Inherit; 3];
    for (i, stream) in streams.iter_mut().enumerate() {
        let forced_stdin = i == 0 && mode == TtyMode::Always;
        if pty && (terminal[i] || forced_stdin) {
            *stream = Stream::Pty;
            ends.on_pty[i] = true;
        } else if callers[i] != Caller::Pass {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let (mine, theirs) = if i == 0 { (write, read) } else { (read, write) };
            *stream = Stream::Pipe;
            match i {
                0 => ends.stdin = Some(mine),
                1 => ends.stdout = Some(mine),
                _ => ends.stderr = Some(mine),
            }
            ends.command_ends[i] = Some(theirs);
        }
    }
    Ok((StdioPlan { streams }, ends))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers(terminal: [bool; 3]) -> [Caller; 3] {
        terminal.map(|t| if t { Caller::Terminal } else { Caller::Pass })
    }

    fn streams(mode: TtyMode, terminal: [bool; 3]) -> [Stream; 3] {
        decide(mode, callers(terminal)).unwrap().0.streams
    }

    #[test]
    fn redirected_streams_pass_through() {
        assert_eq!(streams(TtyMode::Auto, [false; 3]), [Stream::Inherit; 3]);
        let s = streams(TtyMode::Auto, [true, false, true]);
        assert_eq!(s, [Stream::Pty, Stream::Inherit, Stream::Pty]);
    }

    #[test]
    fn a_terminal_never_reaches_the_command() {
        for mode in [TtyMode::Auto, TtyMode::Always, TtyMode::Never] {
            for bits in 0..8u8 {
                let terminal = [bits & 1 != 0, bits & 2 != 0, bits & 4 != 0];
                let s = streams(mode, terminal);
                for i in 0..3 {
                    if terminal[i] {
                        assert_ne!(s[i], Stream::Inherit, "{mode:?} {terminal:?} fd {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn without_a_pty_terminals_go_through_pipes() {
        let (plan, ends) = decide(TtyMode::Never, callers([true, true, false])).unwrap();
        assert!(matches!(plan.streams[0], Stream::Pipe));
        assert!(matches!(plan.streams[1], Stream::Pipe));
        assert_eq!(plan.streams[2], Stream::Inherit);
        assert!(ends.stdin.is_some() && ends.stdout.is_some() && ends.stderr.is_none());
        let pipes = ends.command_pipes().0;
        assert!(pipes[0].is_some() && pipes[1].is_some() && pipes[2].is_none());
        assert!(!plan.pty());
    }

    #[test]
    fn a_host_file_as_stdin_is_relayed_and_a_directory_refused() {
        let file = tempfile::tempfile().unwrap();
        assert_eq!(classify(file.as_fd(), 0).unwrap(), Caller::Relay);
        assert_eq!(classify(file.as_fd(), 1).unwrap(), Caller::Pass);
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(classify(null.as_fd(), 0).unwrap(), Caller::Pass);
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(classify(r.as_fd(), 0).unwrap(), Caller::Pass);
        let dir = std::fs::File::open("/").unwrap();
        for i in 0..3 {
            let e = classify(dir.as_fd(), i).unwrap_err();
            assert!(e.to_string().contains("is a directory"), "{e}");
        }
        let path = rustix::fs::open("/etc", OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let e = classify(path.as_fd(), 1).unwrap_err();
        assert!(e.to_string().contains("O_PATH"), "{e}");
        let (plan, ends) =
            decide(TtyMode::Auto, [Caller::Relay, Caller::Pass, Caller::Pass]).unwrap();
        assert!(matches!(plan.streams[0], Stream::Pipe));
        assert!(ends.stdin.is_some());
    }

    #[test]
    fn always_puts_stdin_on_the_pty() {
        let s = streams(TtyMode::Always, [false, true, false]);
        assert_eq!(s, [Stream::Pty, Stream::Pty, Stream::Inherit]);
    }
}

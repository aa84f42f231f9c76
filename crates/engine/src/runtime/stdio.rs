//! How a command's stdin, stdout and stderr reach the caller's, without ever
//! handing a host terminal to a process in a VM.
//!
//! A terminal fd lets whoever holds it inject keystrokes (TIOCSTI, CVE-2017-5226)
//! and read what is typed later, and a VM process could keep it long after `fvm`
//! exits. So a stream that is a terminal on the caller's side reaches the command
//! through a pty from the VM's own devpts, or, without a pty (`-T`), through a
//! pipe that `fvm` relays. Files and pipes the caller redirected pass straight
//! through, so their bytes are never touched.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

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
    /// This end of a pipe that fvm relays to the caller's terminal.
    Pipe(RawFd),
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

    /// The pipe ends the command needs (to keep open until it is started).
    pub fn pipe_fds(&self) -> Vec<RawFd> {
        self.streams
            .iter()
            .filter_map(|s| match s {
                Stream::Pipe(fd) => Some(*fd),
                _ => None,
            })
            .collect()
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
    /// The command's ends, held until the command has them.
    pub(crate) command_ends: Vec<OwnedFd>,
}

impl CallerEnds {
    /// Close fvm's copies of the command's pipe ends (after it has started), so the
    /// relay sees end-of-file when the command closes its own.
    pub fn release_command_ends(&mut self) {
        self.command_ends.clear();
    }
}

/// Decide, and make the pipes, from what fds 0, 1 and 2 of this process are.
pub fn plan(mode: TtyMode) -> io::Result<(StdioPlan, CallerEnds)> {
    let terminal = [
        rustix::termios::isatty(io::stdin()),
        rustix::termios::isatty(io::stdout()),
        rustix::termios::isatty(io::stderr()),
    ];
    decide(mode, terminal)
}

fn decide(mode: TtyMode, terminal: [bool; 3]) -> io::Result<(StdioPlan, CallerEnds)> {
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
        } else if terminal[i] {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let (mine, theirs) = if i == 0 { (write, read) } else { (read, write) };
            *stream = Stream::Pipe(theirs.as_raw_fd());
            match i {
                0 => ends.stdin = Some(mine),
                1 => ends.stdout = Some(mine),
                _ => ends.stderr = Some(mine),
            }
            ends.command_ends.push(theirs);
        }
    }
    Ok((StdioPlan { streams }, ends))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(mode: TtyMode, terminal: [bool; 3]) -> [Stream; 3] {
        decide(mode, terminal).unwrap().0.streams
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
        let (plan, ends) = decide(TtyMode::Never, [true, true, false]).unwrap();
        assert!(matches!(plan.streams[0], Stream::Pipe(_)));
        assert!(matches!(plan.streams[1], Stream::Pipe(_)));
        assert_eq!(plan.streams[2], Stream::Inherit);
        assert!(ends.stdin.is_some() && ends.stdout.is_some() && ends.stderr.is_none());
        assert_eq!(plan.pipe_fds().len(), 2);
        assert!(!plan.pty());
    }

    #[test]
    fn always_puts_stdin_on_the_pty() {
        let s = streams(TtyMode::Always, [false, true, false]);
        assert_eq!(s, [Stream::Pty, Stream::Pty, Stream::Inherit]);
    }
}

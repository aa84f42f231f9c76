//! Why a command or a VM ended: its exit status, a signal, a limit, `fvm stop`,
//! or something outside fvm. `fvm run` prints it in one line when a limit or fvm
//! ended the command; the last one is kept in the VM's state for `list` and
//! `inspect`.
//!
//! The state file is the host's, but it is read as any file fvm didn't just
//! write: a recorded end that can't be read is ignored with a warning (see
//! [`lenient`]), and every value of one displays as one plain line.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::limits::{Seconds, Size};

/// What ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// It exited with a status of its own.
    Exited,
    /// A signal it got for its own reasons (from a process of the VM, or from
    /// the host by its pid).
    Signal,
    /// The kernel's OOM killer, because the VM reached its `memory` limit.
    Oom,
    /// The policy's `cpu-time` limit (RLIMIT_CPU).
    CpuTime,
    /// The policy's `timeout`, kept by the VM's init.
    Timeout,
    /// `fvm stop`.
    Stop,
    /// The VM's init was signalled or ended from outside fvm: the host shutting
    /// down (or the autostart unit stopping), or someone on the host.
    Outside,
}

/// Whether the end is a command's or the whole VM's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subject {
    Command,
    Vm,
}

/// One end, with what is known of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub cause: Cause,
    pub of: Subject,
    /// When, RFC 3339 in UTC.
    pub at: String,
    /// The exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The limit that was reached: bytes for `oom`, seconds for `cpu-time` and
    /// `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `stop`: how many terminal sessions of the VM were hung up first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hung_up: Option<u32>,
    /// `stop`: whether something was left after the grace time and killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<bool>,
}

/// The longest `at` a recorded end may have (RFC 3339 with nanoseconds is 30).
const MAX_AT: usize = 40;

impl End {
    /// An end of `of` by `cause`, now.
    pub fn now(cause: Cause, of: Subject) -> End {
        End {
            cause,
            of,
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            status: None,
            signal: None,
            limit: None,
            hung_up: None,
            killed: None,
        }
    }

    /// A command's own end: its exit status or the signal that ended it.
    pub fn of_exit(of: Subject, status: Option<i32>, signal: Option<i32>) -> End {
        let cause = if signal.is_some() {
            Cause::Signal
        } else {
            Cause::Exited
        };
        End {
            status,
            signal,
            ..End::now(cause, of)
        }
    }

    /// This end, with the exit status and signal recorded in `own`.
    pub fn with_exit(self, own: &End) -> End {
        End {
            status: own.status,
            signal: own.signal,
            ..self
        }
    }

    /// The same end, said of `of` (a command's end that ended its VM too).
    pub fn said_of(&self, of: Subject) -> End {
        End { of, ..self.clone() }
    }

    /// Whether fvm or a limit ended it, rather than the command itself or a
    /// signal it got for its own reasons: then `fvm run` says so.
    pub fn worth_saying(&self) -> bool {
        !matches!(self.cause, Cause::Exited | Cause::Signal)
    }

    /// A few words for `list`: `exit 3`, `SIGSEGV`, `oom`, `cpu-time`,
    /// `timeout`, `fvm stop`, `outside`.
    pub fn short(&self) -> String {
        match self.cause {
            Cause::Exited => format!("exit {}", self.status.unwrap_or(0)),
            Cause::Signal => signal_name(self.signal.unwrap_or(0)),
            Cause::Oom => "oom".into(),
            Cause::CpuTime => "cpu-time".into(),
            Cause::Timeout => "timeout".into(),
            Cause::Stop => "fvm stop".into(),
            Cause::Outside => "outside".into(),
        }
    }

    /// Whether a value read back from a state file is one fvm could have
    /// written (a time of sane length and characters).
    fn plausible(&self) -> bool {
        self.at.len() <= MAX_AT
            && self
                .at
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'.' | b'+'))
    }
}

/// `SIGSEGV` for 11; `signal 99` for a number that names none.
pub fn signal_name(n: i32) -> String {
    match nix::sys::signal::Signal::try_from(n) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) => format!("signal {n}"),
    }
}

impl fmt::Display for End {
    /// One line, without the `fvm: ` in front: `killed: the vm's memory limit
    /// (100M) was reached`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = |show: fn(u64) -> String| self.limit.map(|l| format!(" ({})", show(l)));
        let size = |l| Size(l).to_string();
        let secs = |l| Seconds(l).to_string();
        match self.cause {
            Cause::Exited => write!(f, "exited with status {}", self.status.unwrap_or(0)),
            Cause::Signal => write!(
                f,
                "ended by {}",
                signal_name(self.signal.unwrap_or(0))
            ),
            Cause::Oom => write!(
                f,
                "killed: the vm's memory limit{} was reached",
                limit(size).unwrap_or_default()
            ),
            Cause::CpuTime => write!(
                f,
                "killed: the vm's cpu-time limit{} was reached",
                limit(secs).unwrap_or_default()
            ),
            Cause::Timeout => write!(
                f,
                "stopped: the vm's timeout{} ran out",
                limit(secs).unwrap_or_default()
            ),
            Cause::Stop => {
                f.write_str("stopped: fvm stop")?;
                match self.hung_up {
                    Some(1) => f.write_str(" (1 terminal session hung up)")?,
                    Some(n) if n > 1 => write!(f, " ({n} terminal sessions hung up)")?,
                    _ => {}
                }
                if self.killed == Some(true) {
                    f.write_str("; what was left after the grace time was killed")?;
                }
                Ok(())
            }
            Cause::Outside => match self.signal {
                Some(s) => write!(
                    f,
                    "stopped: the vm's init got {} from outside fvm (host shutdown?)",
                    signal_name(s)
                ),
                None => f.write_str(
                    "stopped: the vm's init ended without fvm stop (host shutdown, or killed from outside fvm)",
                ),
            },
        }
    }
}

/// Read an end recorded in the state file at `path` leniently: one that isn't
/// an end fvm writes (a value of the wrong shape, an unknown cause, a time of
/// any length) is dropped with a warning (once per file and process), so a
/// damaged record never makes the whole state unreadable.
pub fn read_recorded(value: serde_json::Value, path: &Path) -> Option<End> {
    let problem = match End::deserialize(value) {
        Ok(end) if end.plausible() => return Some(end),
        Ok(_) => "its time is not one fvm writes".to_owned(),
        Err(e) => e.to_string(),
    };
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let first = WARNED
        .lock()
        .map(|mut warned| warned.insert(path.to_owned()))
        .unwrap_or(true);
    if first {
        tracing::warn!(
            "{}: the recorded end can't be read ({}); it is ignored",
            crate::os::quote::line(&path.display().to_string()),
            crate::os::quote::line(&problem)
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(cause: Cause) -> End {
        End::now(cause, Subject::Command)
    }

    #[test]
    fn each_end_is_one_line() {
        let oom = End {
            limit: Some(100 << 20),
            signal: Some(9),
            ..end(Cause::Oom)
        };
        assert_eq!(
            oom.to_string(),
            "killed: the vm's memory limit (100M) was reached"
        );
        let cpu = End {
            limit: Some(10),
            ..end(Cause::CpuTime)
        };
        assert_eq!(
            cpu.to_string(),
            "killed: the vm's cpu-time limit (10s) was reached"
        );
        let timeout = End {
            limit: Some(600),
            ..end(Cause::Timeout)
        };
        assert_eq!(
            timeout.to_string(),
            "stopped: the vm's timeout (10m) ran out"
        );
        let stop = End {
            hung_up: Some(2),
            killed: Some(false),
            ..end(Cause::Stop)
        };
        assert_eq!(
            stop.to_string(),
            "stopped: fvm stop (2 terminal sessions hung up)"
        );
        assert_eq!(
            End::of_exit(Subject::Command, None, Some(11)).to_string(),
            "ended by SIGSEGV"
        );
        assert_eq!(End::of_exit(Subject::Vm, Some(3), None).short(), "exit 3");
        assert!(!End::of_exit(Subject::Vm, Some(3), None).worth_saying());
        assert!(stop.worth_saying());
        // Any value, even one no fvm writes, displays without a panic.
        let odd = End {
            signal: Some(i32::MIN),
            status: Some(i32::MAX),
            limit: Some(u64::MAX),
            hung_up: Some(u32::MAX),
            ..end(Cause::Outside)
        };
        for c in [Cause::Exited, Cause::Signal, Cause::Oom, Cause::Timeout] {
            let line = End {
                cause: c,
                ..odd.clone()
            }
            .to_string();
            assert!(!line.contains('\n'), "{line}");
        }
        assert_eq!(signal_name(i32::MIN), format!("signal {}", i32::MIN));
    }

    fn read(text: &str) -> Option<End> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        read_recorded(v["end"].clone(), Path::new("state.json"))
    }

    #[test]
    fn a_damaged_record_is_dropped_not_fatal() {
        for bad in [
            r#"{"end": {"cause": "meteor", "of": "vm", "at": "x"}}"#,
            r#"{"end": 7}"#,
            r#"{"end": {"cause": "oom", "of": "vm", "at": "2026", "extra": 1}}"#,
            r#"{"end": {"cause": "oom", "of": "vm", "at": "\u001b[2J"}}"#,
            r#"{"end": {"cause": "oom", "of": "vm", "at": 5}}"#,
        ] {
            assert_eq!(read(bad), None, "{bad}");
        }
        let long = format!(
            r#"{{"end": {{"cause": "oom", "of": "vm", "at": "{}"}}}}"#,
            "1".repeat(1000)
        );
        assert_eq!(read(&long), None);
        let good = r#"{"end": {"cause": "oom", "of": "vm", "at": "2026-12-07T04:00:00Z", "limit": 33554432}}"#;
        assert_eq!(read(good).unwrap().limit, Some(32 << 20));
        assert_eq!(read(r#"{"end": null}"#), None);
    }
}

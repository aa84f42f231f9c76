//! Helpers shared by the privileged end-to-end tests.
//!
//! Every test makes its own [`TestStore`] (a temporary store root under /tmp) and
//! its own names, so tests can run in parallel. The store's `Drop` deletes every VM
//! it holds (with `--force`) and runs `doctor --cleanup` even when the test failed;
//! [`TestStore::assert_clean`] does the same and then checks that nothing of the
//! store is left on the host: no cgroup, no mount, no process, no file.

#![allow(dead_code)] // each test binary uses its own subset

mod host;
mod store;

pub use host::*;
#[allow(unused_imports)] // a test binary of containers has no store of its own
pub use store::*;

use std::io::{Read, Seek, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const FVM: &str = env!("CARGO_BIN_EXE_fvm");

/// How long one fvm command may take before the test gives up on it (a hang).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// How long to wait for a condition that should come true soon.
pub const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// root check

/// True when the test process runs with effective uid 0.
/// The python3 run inside VMs and on the host: the distribution's when there is
/// one (a version manager's shim is slower).
pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

/// Call first in every test that needs root. Returns false when the test must be
/// skipped: the skip is printed as `SKIP (needs root): <test>` (uncaptured) and
/// counted under the harness's summary line; with `FVM_MUST_RUN=1` a skip is a
/// failure instead.
pub fn needs_root(test: &str) -> bool {
    is_root() || skip(test, "needs root")
}

/// Like [`needs_root`] for a test that also needs a host tool (e.g. `script`).
pub fn needs_tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    found || skip(test, &format!("needs {tool}"))
}

/// Skip `test` for `reason` visibly (see [`needs_root`]); always false.
pub fn skip(test: &str, reason: &str) -> bool {
    fvm_engine::testing::skip(test, reason)
}

// ---------------------------------------------------------------------------
// running commands

/// How a command ended and what it printed.
#[derive(Debug, Clone)]
pub struct Out {
    /// The exit status, or 128+signal if a signal killed it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Out {
    /// Assert exit status 0 and return self.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "`{}` failed:\n{self}", self.what);
        self
    }

    /// Assert the given exit status and return self.
    #[track_caller]
    pub fn code(self, code: i32) -> Out {
        assert_eq!(
            self.code, code,
            "`{}`: unexpected exit status:\n{self}",
            self.what
        );
        self
    }

    /// stdout, trimmed.
    pub fn out(&self) -> &str {
        self.stdout.trim()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Run `cmd` to completion with `stdin` (or /dev/null), killing it (by its pid)
/// if it takes longer than `timeout`. stdout and stderr go to temporary files, not
/// pipes, so a daemon that keeps them open can't make the test hang.
pub fn try_run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Out, String> {
    let what = format!("{cmd:?}");
    let mut out = tempfile::tempfile().map_err(|e| format!("{what}: {e}"))?;
    let mut err = tempfile::tempfile().map_err(|e| format!("{what}: {e}"))?;
    cmd.stdout(out.try_clone().map_err(|e| e.to_string())?);
    cmd.stderr(err.try_clone().map_err(|e| e.to_string())?);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        // A thread, so that a command that doesn't read can't block the test (it is
        // left to end with EPIPE once the command is gone).
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let status = wait_deadline(&mut child, timeout);
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        let _ = f.rewind();
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        s.push_str(&String::from_utf8_lossy(&bytes));
        s
    };
    let result = Out {
        code: status.map(exit_code).unwrap_or(-1),
        stdout: read(&mut out),
        stderr: read(&mut err),
        what: what.clone(),
    };
    match status {
        Some(_) => Ok(result),
        None => Err(format!(
            "{what} did not finish within {timeout:?}:\n{result}"
        )),
    }
}

/// Like [`try_run`], panicking on a timeout.
#[track_caller]
pub fn run(cmd: Command, stdin: Option<&[u8]>) -> Out {
    try_run(cmd, stdin, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Wait for a child; after `timeout` kill it (SIGKILL to its pid), reap it and
/// return `None`.
pub fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A shell command line, run by `sh -c`.
pub fn sh(script: &str) -> Out {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    run(cmd, None)
}

/// Poll `cond` until it is true; panic with `what` after [`WAIT`].
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A child process started by the test, killed (by its pid) and reaped on drop.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
}

impl Spawned {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Wait for it to end (with a deadline) and return its exit status.
    #[track_caller]
    pub fn wait(&mut self) -> i32 {
        let status = wait_deadline(&mut self.child, COMMAND_TIMEOUT);
        exit_code(status.expect("child did not finish in time (killed)"))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A command running in the background whose output is collected in files.
#[derive(Debug)]
pub struct Background {
    pub proc: Spawned,
    out: std::fs::File,
    err: std::fs::File,
    what: String,
}

impl Background {
    pub fn start(mut cmd: Command) -> Background {
        let what = format!("{cmd:?}");
        let out = tempfile::tempfile().expect("temporary file");
        let err = tempfile::tempfile().expect("temporary file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(err.try_clone().expect("dup"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        Background {
            proc: Spawned { child },
            out,
            err,
            what,
        }
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Whether it has ended (it is reaped then).
    pub fn finished(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(Some(_)))
    }

    /// Wait for it (killing it after [`COMMAND_TIMEOUT`]) and collect its output.
    #[track_caller]
    pub fn finish(mut self) -> Out {
        let status = wait_deadline(&mut self.proc.child, COMMAND_TIMEOUT);
        let read = |f: &mut std::fs::File| {
            let mut bytes = Vec::new();
            let _ = f.rewind();
            let _ = f.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let out = Out {
            code: status.map(exit_code).unwrap_or(-1),
            stdout: read(&mut self.out),
            stderr: read(&mut self.err),
            what: self.what.clone(),
        };
        assert!(
            status.is_some(),
            "{} did not finish in time:\n{out}",
            self.what
        );
        out
    }
}

/// Start a host process with no stdio (e.g. `sleep 1000`).
pub fn spawn_host(argv: &[&str]) -> Spawned {
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    Spawned { child }
}

/// Send SIGKILL to the given pids (processes this test started or its VM's).
pub fn kill9(pids: &[i32]) {
    signal("KILL", pids);
}

/// Send a signal (by name, e.g. "TERM") to the given pids.
pub fn signal(sig: &str, pids: &[i32]) {
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{sig}"))
        .args(pids.iter().map(i32::to_string));
    let _ = run(cmd, None);
}

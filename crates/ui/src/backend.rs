//! What the console needs from a store of VMs, as one trait: the engine's reads
//! (list, changes, processes, usage samples) and the operations, which the real
//! backend runs as `fvm` commands (see [`crate::real`]). The fake backend
//! ([`crate::fake`]) has fixed VMs, for fast and deterministic browser tests.

use std::path::PathBuf;

use fvm_engine::cgroup::Usage;
use fvm_engine::limits::Limits;
use fvm_engine::net::NetPolicy;
use serde::Serialize;

/// One VM as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Vm {
    pub name: String,
    /// running, suspended, stopped or broken
    pub status: String,
    pub error: Option<String>,
    pub description: String,
    pub ip: Option<String>,
    pub started_at: Option<String>,
    pub processes: Option<usize>,
    pub memory: Option<u64>,
    pub disk: u64,
    pub limits: Limits,
    pub network: NetPolicy,
    pub oom_kills: Option<u64>,
}

impl Vm {
    pub fn running(&self) -> bool {
        self.status == "running" || self.status == "suspended"
    }
}

/// One changed path of a VM.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub path: PathBuf,
    /// 'A', 'C' or 'D'
    pub kind: char,
    pub size: u64,
}

/// A host path the host changed after the VM copied it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Conflict {
    pub path: PathBuf,
    pub deleted_on_host: bool,
}

/// What a commit of some paths would do.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CommitPlan {
    /// One line per step, as `fvm commit --dry-run` prints them.
    pub steps: Vec<String>,
    pub conflicts: Vec<Conflict>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// One process of a VM.
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: i32,
    pub host_pid: i32,
    /// Host pid of its parent (0 for the VM's init or an unknown parent).
    pub host_ppid: i32,
    pub user: String,
    pub cpu_percent: f64,
    pub rss: u64,
    /// The command line on one line, quoted where it could mislead.
    pub command: String,
}

/// One service of a VM: what `fvm service VM status` shows, with its policy.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    pub name: String,
    /// running, starting, backoff, stopping, stopped, exited or failed
    pub state: String,
    /// Its main process inside the VM.
    pub pid: Option<i32>,
    pub restarts: u32,
    /// When it entered its state (RFC 3339).
    pub since: Option<String>,
    /// How its process last ended (`exit status 1`, `killed by SIGTERM`), or
    /// why it could not start.
    pub last_end: Option<String>,
    /// Its restart policy: no, on-failure or always.
    pub restart: String,
    /// What it runs (`/bin/sh -c`).
    pub command: String,
}

/// What a running VM uses now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub usage: Usage,
    pub memory_limit: Option<u64>,
    pub processes_limit: Option<u64>,
}

/// A preview of one changed file: the host's and the VM's version.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Preview {
    pub host: Option<Side>,
    pub vm: Option<Side>,
}

/// One version of a path.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Side {
    /// file, directory, symlink, fifo, socket, device
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub target: Option<String>,
    /// The first bytes of a regular file, when it is text.
    pub text: Option<String>,
}

/// A mutating operation: the arguments of the equivalent `fvm` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create {
        name: String,
        args: Vec<String>,
    },
    Start(String),
    Stop(String),
    Suspend(String),
    Resume(String),
    Delete(String),
    Copy {
        src: String,
        dst: String,
    },
    /// Commit these paths (`force`: the VM wins over the host's later changes).
    Commit {
        name: String,
        paths: Vec<PathBuf>,
        force: bool,
    },
    /// Drop the VM's changes at or under these paths (a stopped VM only).
    Discard {
        name: String,
        paths: Vec<PathBuf>,
    },
    /// `fvm service NAME [SERVICE] ACTION`: start, stop or restart one service
    /// of a running VM, or all of them.
    Service {
        name: String,
        service: Option<String>,
        action: String,
    },
    /// `fvm config NAME` with these flags (`--memory`, `512M`, ...).
    Config {
        name: String,
        args: Vec<String>,
    },
}

impl Op {
    /// The `fvm` arguments of this operation.
    pub fn argv(&self) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        match self {
            Op::Create { name, args } => {
                let mut v = s(&["create"]);
                v.extend(args.iter().cloned());
                v.push(name.clone());
                v
            }
            Op::Start(n) => s(&["start", n]),
            Op::Stop(n) => s(&["stop", n]),
            Op::Suspend(n) => s(&["suspend", n]),
            Op::Resume(n) => s(&["resume", n]),
            Op::Delete(n) => s(&["delete", "--force", n]),
            Op::Copy { src, dst } => s(&["copy", src, dst]),
            Op::Commit { name, paths, force } => {
                let mut v = s(&["commit"]);
                if *force {
                    v.push("--force".to_owned());
                }
                v.push(name.clone());
                v.push("--".to_owned());
                v.extend(paths.iter().map(|p| p.to_string_lossy().into_owned()));
                v
            }
            Op::Discard { name, paths } => {
                let mut v = s(&["discard", name, "--"]);
                v.extend(paths.iter().map(|p| p.to_string_lossy().into_owned()));
                v
            }
            Op::Service {
                name,
                service,
                action,
            } => {
                let mut v = s(&["service", name]);
                v.extend(service.iter().cloned());
                v.push(action.clone());
                v
            }
            Op::Config { name, args } => {
                let mut v = s(&["config", name]);
                v.extend(args.iter().cloned());
                v
            }
        }
    }

    /// The command line a user would type, quoted for a shell.
    pub fn command_line(&self) -> String {
        let mut line = String::from("fvm");
        for a in self.argv() {
            line.push(' ');
            line.push_str(&shell_quote(&a));
        }
        line
    }

    /// The VM it acts on (the source of a copy).
    pub fn vm(&self) -> &str {
        match self {
            Op::Create { name, .. }
            | Op::Commit { name, .. }
            | Op::Discard { name, .. }
            | Op::Service { name, .. }
            | Op::Config { name, .. }
            | Op::Start(name)
            | Op::Stop(name)
            | Op::Suspend(name)
            | Op::Resume(name)
            | Op::Delete(name) => name,
            Op::Copy { src, .. } => src,
        }
    }

    /// Refuse an operation whose VM names are not VM names. They come from the
    /// request's URL and form, and go on `fvm`'s command line before any `--`:
    /// a "name" like `--root=/elsewhere` would be read as a flag.
    pub fn check_names(&self) -> Result<()> {
        let check = |n: &str| {
            fvm_engine::store::VmName::new(n)
                .map(drop)
                .map_err(|e| fvm_engine::error_line(&e))
        };
        check(self.vm())?;
        if let Op::Copy { dst, .. } = self {
            check(dst)?;
        }
        Ok(())
    }
}

/// `text` as one shell word.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The program a browser shell runs, on a pty the server holds.
#[derive(Debug, Clone)]
pub struct ShellCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub dir: Option<PathBuf>,
}

pub type Result<T> = std::result::Result<T, String>;

/// A store of VMs. Every method may block (disk, /proc, a child `fvm`): the server
/// calls them on blocking threads.
pub trait Backend: Send + Sync + 'static {
    fn list(&self) -> Result<Vec<Vm>>;
    fn vm(&self, name: &str) -> Result<Vm>;
    fn changes(&self, name: &str) -> Result<Vec<Change>>;
    fn preview(&self, name: &str, path: &std::path::Path) -> Result<Preview>;
    /// What committing `paths` would do (nothing is written).
    fn commit_plan(&self, name: &str, paths: &[PathBuf]) -> Result<CommitPlan>;
    fn processes(&self, name: &str) -> Result<Vec<Process>>;
    /// The VM's services: those of its policy, and their state.
    fn services(&self, name: &str) -> Result<Vec<ServiceRow>>;
    /// The VM's logs (its services' and detached commands' output), to read
    /// and follow.
    fn logs(&self, name: &str) -> Result<fvm_engine::logs::Logs>;
    /// Names of the running VMs and what each uses now.
    fn samples(&self) -> Vec<(String, Sample)>;
    /// Run an operation; Ok holds what it printed.
    fn run(&self, op: &Op) -> Result<String>;
    /// Run an operation that reports how far it got (a commit): `progress` gets
    /// (steps done, steps in all) as they come.
    fn run_progress(&self, op: &Op, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<String> {
        let _ = progress;
        self.run(op)
    }
    /// Send `signal` to host pid `host_pid` if, at that moment, it is a process
    /// of VM `name`.
    fn kill(&self, name: &str, host_pid: i32, signal: i32) -> Result<()>;
    /// How to start a new shell in VM `name`.
    fn shell(&self, name: &str) -> Result<ShellCommand>;
}

/// `bytes` as text, if it is UTF-8 without NULs (a binary file is summarized,
/// not shown).
pub fn as_text(bytes: &[u8]) -> Option<String> {
    if bytes.contains(&0) {
        return None;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s.to_owned()),
        // Cut in the middle of a character at the end of the preview.
        Err(e) if e.error_len().is_none() && e.valid_up_to() + 4 > bytes.len() => {
            Some(String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn names_that_fvm_would_read_as_flags_are_refused() {
        for bad in ["--root=/elsewhere", "-f", "--help", "", "a b", "../x"] {
            assert!(Op::Stop(bad.to_owned()).check_names().is_err(), "{bad:?}");
            let copy = Op::Copy {
                src: "web1".to_owned(),
                dst: bad.to_owned(),
            };
            assert!(copy.check_names().is_err(), "copy to {bad:?}");
        }
        assert!(Op::Stop("web1".to_owned()).check_names().is_ok());
        let copy = Op::Copy {
            src: "web1".to_owned(),
            dst: "web1.b".to_owned(),
        };
        assert!(copy.check_names().is_ok());
    }
}

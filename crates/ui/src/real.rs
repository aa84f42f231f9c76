//! The backend on a real store. Reads call the engine in this process (on the
//! server's blocking threads): they only read files, /proc and cgroupfs. Every
//! operation that forks (start, stop, copy, commit, config, a shell) runs as a
//! child `fvm` command, exactly what a user would type: the server is
//! multi-threaded, and the engine's forked children (a VM's init, its commands)
//! must start from a single-threaded process (see docs/ui.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use fvm_engine::Engine;
use fvm_engine::store::{Store, VmName};

use crate::backend::{
    Backend, Change, CommitPlan, Op, Preview, Process, Result, Sample, ServiceRow, ShellCommand,
    Side, Vm,
};

#[derive(Debug)]
pub struct RealBackend {
    engine: Engine,
    root: PathBuf,
    /// The fvm binary the operations run.
    exe: PathBuf,
}

impl RealBackend {
    /// The backend on the store at `root`, running operations with the fvm binary
    /// `exe`.
    pub fn open(root: &Path, exe: PathBuf) -> anyhow::Result<RealBackend> {
        let store = Store::open(root)?;
        Ok(RealBackend {
            engine: Engine::new(store),
            root: root.to_owned(),
            exe,
        })
    }

    fn fvm(&self, args: &[String]) -> Result<String> {
        let out = Command::new(&self.exe)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(format!("{stdout}{stderr}"))
        } else {
            let line = stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(line.map_or_else(|| format!("fvm failed: {}", out.status), str::to_owned))
        }
    }
}

impl RealBackend {
    /// Whether the VM's layers are a disk image: reading them mounts it in a
    /// private mount namespace, which only a single-threaded process may enter,
    /// so its reads run in a child `fvm`.
    fn in_image(&self, n: &VmName) -> bool {
        self.engine
            .store()
            .vm(n)
            .is_ok_and(|vm| vm.image_path().exists())
    }

    /// `fvm --json diff NAME` of a VM whose layers are an image.
    fn changes_of_image(&self, n: &VmName) -> Result<Vec<Change>> {
        #[derive(serde::Deserialize)]
        struct Listed {
            path: String,
            path_hex: Option<String>,
            kind: char,
            size: u64,
        }
        let out = self.fvm(&["--json".to_owned(), "diff".to_owned(), n.to_string()])?;
        let listed: Vec<Listed> =
            serde_json::from_str(&out).map_err(|e| format!("unreadable diff: {e}"))?;
        Ok(listed
            .into_iter()
            .map(|c| Change {
                path: c
                    .path_hex
                    .as_deref()
                    .and_then(unhex)
                    .unwrap_or_else(|| c.path.into()),
                kind: c.kind,
                size: c.size,
            })
            .collect())
    }
}

/// The last `DONE/ALL` of a `committing` progress bar in `out`.
fn bar_counts(out: &[u8]) -> Option<(usize, usize)> {
    let text = String::from_utf8_lossy(out);
    let at = text.rfind("committing")?;
    text[at..]
        .split(|c: char| c.is_whitespace() || c == '\x1b')
        .find_map(|w| {
            let (d, a) = w.split_once('/')?;
            Some((d.parse().ok()?, a.parse().ok()?))
        })
}

/// What a command printed on a pty, as lines: escape sequences and carriage
/// returns (the progress bar's redraws) dropped.
fn plain_text(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte; other escapes: one more char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => plain.push(c),
        }
    }
    // A carriage return redraws its line: what follows the last one stays.
    plain
        .split('\n')
        .filter_map(|l| l.split('\r').rfind(|s| !s.trim().is_empty()))
        .filter(|l| !l.trim_start().starts_with("committing"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The bytes of a path from hex (`path_hex` of `fvm diff --json`).
fn unhex(hex: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// A changed path's two versions, from the engine.
fn preview(
    engine: &Engine,
    n: &VmName,
    path: &Path,
) -> std::result::Result<Preview, fvm_engine::VmError> {
    let v = engine.versions(n, path)?;
    Ok(Preview {
        host: v.host.map(side),
        vm: v.vm.map(side),
    })
}

/// `fvm ui --preview NAME -- PATH`: a changed path's two versions, as JSON on
/// stdout (for a VM whose layers are an image; see [`RealBackend::in_image`]).
pub fn preview_json(engine: &Engine, n: &str, path: &Path) -> anyhow::Result<String> {
    let n = VmName::new(n)?;
    Ok(serde_json::to_string(&preview(engine, &n, path)?)?)
}

fn name(n: &str) -> Result<VmName> {
    VmName::new(n).map_err(|e| fvm_engine::error_line(&e))
}

fn err(e: fvm_engine::VmError) -> String {
    fvm_engine::error_line(&e)
}

fn vm_of(info: fvm_engine::vm::VmInfo, network: fvm_engine::net::NetPolicy) -> Vm {
    Vm {
        name: info.name.to_string(),
        status: info.status.as_str().to_owned(),
        error: info.error,
        description: info.description,
        ip: info.ip,
        started_at: info.started_at,
        processes: info.processes,
        memory: info.memory,
        disk: info.disk,
        limits: info.limits,
        network,
        oom_kills: info.usage.and_then(|u| u.oom_kills),
    }
}

fn side(v: fvm_engine::vm::Version) -> Side {
    Side {
        kind: v.kind.to_owned(),
        mode: v.mode,
        uid: v.uid,
        gid: v.gid,
        size: v.size,
        target: v.target.map(|t| t.to_string_lossy().into_owned()),
        text: v.head.and_then(|h| crate::backend::as_text(&h)),
    }
}

impl Backend for RealBackend {
    fn list(&self) -> Result<Vec<Vm>> {
        let list = self.engine.list().map_err(err)?;
        Ok(list
            .into_iter()
            .map(|info| {
                let net = self
                    .engine
                    .policy_of(&info.name)
                    .map(|p| p.network)
                    .unwrap_or_default();
                vm_of(info, net)
            })
            .collect())
    }

    fn vm(&self, n: &str) -> Result<Vm> {
        let n = name(n)?;
        let info = self.engine.info(&n).map_err(err)?;
        let net = self
            .engine
            .policy_of(&n)
            .map(|p| p.network)
            .unwrap_or_default();
        Ok(vm_of(info, net))
    }

    fn changes(&self, n: &str) -> Result<Vec<Change>> {
        let n = name(n)?;
        if self.in_image(&n) {
            return self.changes_of_image(&n);
        }
        Ok(self
            .engine
            .diff(
                &n,
                &fvm_engine::vm::Selection::paths(&[]),
                false,
                &mut |_| {},
            )
            .map_err(err)?
            .into_iter()
            .map(|c| Change {
                path: c.path,
                kind: c.kind.letter(),
                size: c.size,
            })
            .collect())
    }

    fn preview(&self, n: &str, path: &Path) -> Result<Preview> {
        let n = name(n)?;
        if self.in_image(&n) {
            let out = self.fvm(&[
                "ui".to_owned(),
                "--preview".to_owned(),
                n.to_string(),
                "--".to_owned(),
                path.to_string_lossy().into_owned(),
            ])?;
            return serde_json::from_str(&out).map_err(|e| format!("unreadable preview: {e}"));
        }
        preview(&self.engine, &n, path).map_err(err)
    }

    fn commit_plan(&self, n: &str, paths: &[PathBuf]) -> Result<CommitPlan> {
        let mut args = vec!["ui".to_owned(), "--commit-plan".to_owned(), n.to_owned()];
        args.push("--".to_owned());
        args.extend(paths.iter().map(|p| p.to_string_lossy().into_owned()));
        let out = self.fvm(&args)?;
        serde_json::from_str(&out).map_err(|e| format!("unreadable commit plan: {e}"))
    }

    fn processes(&self, n: &str) -> Result<Vec<Process>> {
        let procs = self.engine.processes(&name(n)?).map_err(err)?;
        Ok(procs
            .into_iter()
            .map(|p| Process {
                pid: p.pid,
                host_pid: p.host_pid,
                host_ppid: crate::procs::parent(p.host_pid).unwrap_or(0),
                user: p.user.clone(),
                cpu_percent: p.cpu_percent,
                rss: p.rss,
                command: p.shown_command(),
            })
            .collect())
    }

    /// The state comes from `fvm --json service NAME status` in a child (asking
    /// the VM's init takes its lock and may settle a stopped VM's leftovers,
    /// which forks); the restart policy and command from the policy.
    fn services(&self, n: &str) -> Result<Vec<ServiceRow>> {
        let vm = name(n)?;
        let policy = self.engine.policy_of(&vm).map_err(err)?;
        let out = self.fvm(&[
            "--json".to_owned(),
            "service".to_owned(),
            vm.to_string(),
            "status".to_owned(),
        ])?;
        let status: Vec<fvm_engine::vm::ServiceStatus> =
            serde_json::from_str(&out).map_err(|e| format!("unreadable service status: {e}"))?;
        Ok(status
            .into_iter()
            .map(|s| {
                let def = policy.services.iter().find(|d| d.name.as_str() == s.name);
                ServiceRow {
                    state: s.state.as_str().to_owned(),
                    pid: s.pid,
                    restarts: s.restarts,
                    since: s.since,
                    last_end: s
                        .error
                        .or_else(|| s.last_exit.map(|x| fvm_engine::vm::describe(Some(x)))),
                    restart: def.map_or("-", |d| d.restart.as_str()).to_owned(),
                    command: def.map(|d| d.command.clone()).unwrap_or_default(),
                    name: s.name,
                }
            })
            .collect())
    }

    fn logs(&self, n: &str) -> Result<fvm_engine::logs::Logs> {
        self.engine.logs(&name(n)?).map_err(err)
    }

    fn samples(&self) -> Vec<(String, Sample)> {
        let Ok(names) = self.engine.store().names() else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|n| {
                let (usage, limits) = self.engine.sample(n).ok()??;
                Some((
                    n.to_string(),
                    Sample {
                        usage,
                        memory_limit: limits.memory.map(|m| m.0),
                        processes_limit: limits.processes,
                    },
                ))
            })
            .collect()
    }

    fn run(&self, op: &Op) -> Result<String> {
        self.fvm(&op.argv())
    }

    /// A commit runs on a pty, where `fvm commit` draws its progress bar
    /// (`committing [bar] DONE/ALL`) for large commits; the counts are read off
    /// it.
    fn run_progress(&self, op: &Op, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<String> {
        if !matches!(op, Op::Commit { .. }) {
            return self.run(op);
        }
        let (mut pty, pts) =
            pty_process::blocking::open().map_err(|e| format!("cannot open a pty: {e}"))?;
        let _ = pty.resize(pty_process::Size::new(24, 200));
        let mut child = pty_process::blocking::Command::new(&self.exe)
            .arg("--root")
            .arg(&self.root)
            .args(op.argv())
            .spawn(pts)
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut pty, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    text.extend_from_slice(&buf[..n]);
                    if let Some((done, all)) = bar_counts(&text) {
                        progress(done, all);
                    }
                }
            }
        }
        let status = child.wait().map_err(|e| format!("fvm commit: {e}"))?;
        let out = plain_text(&text);
        if status.success() {
            Ok(out)
        } else {
            let line = out.lines().rev().find(|l| !l.trim().is_empty());
            Err(line.map_or_else(|| format!("fvm failed: {status}"), str::to_owned))
        }
    }

    fn kill(&self, n: &str, host_pid: i32, signal: i32) -> Result<()> {
        let n = name(n)?;
        let info = self.engine.info(&n).map_err(err)?;
        crate::procs::kill_in_cgroup(host_pid, signal, &info.cgroup)
    }

    fn shell(&self, n: &str) -> Result<ShellCommand> {
        let n = name(n)?;
        Ok(ShellCommand {
            program: self.exe.clone(),
            args: vec![
                "--root".to_owned(),
                self.root.to_string_lossy().into_owned(),
                "shell".to_owned(),
                n.to_string(),
            ],
            dir: None,
        })
    }
}

/// `fvm ui --commit-plan NAME -- PATHS`: what committing PATHS would do, as JSON
/// on stdout. Run by the server as a child (a commit's dry run takes the VM's
/// lock and may settle a stopped VM's leftovers, which forks).
pub fn commit_plan(engine: &Engine, n: &str, paths: &[PathBuf]) -> anyhow::Result<String> {
    let n = VmName::new(n)?;
    let opts = fvm_engine::changes::commit::Options {
        dry_run: true,
        force: false,
        running: false,
        all: false,
    };
    let outcome = engine.commit(
        &n,
        &fvm_engine::vm::Selection::paths(paths),
        opts,
        &mut |_, _| {},
    )?;
    let plan = CommitPlan {
        steps: outcome
            .steps
            .iter()
            .map(|s| s.describe(&outcome.steps))
            .collect(),
        conflicts: outcome
            .conflicts
            .iter()
            .map(|c| crate::backend::Conflict {
                path: c.path.clone(),
                deleted_on_host: c.deleted_on_host,
            })
            .collect(),
        skipped: outcome
            .skipped
            .iter()
            .map(|(p, why)| (p.clone(), (*why).to_owned()))
            .collect(),
    };
    Ok(serde_json::to_string(&plan)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_paths() {
        use std::os::unix::ffi::OsStrExt;
        let p = super::unhex("2f61ff").unwrap();
        assert_eq!(p.as_os_str().as_bytes(), b"/a\xff");
        assert_eq!(super::unhex("2f6"), None);
        assert_eq!(super::unhex("zz"), None);
    }

    #[test]
    fn progress_bar_counts_and_plain_output() {
        let out = b"\x1b[2Kcommitting \xe2\x96\x88\xe2\x96\x88   12/600 00:00:01\r\x1b[2Kcommitting \xe2\x96\x88 600/600 00:00:02\r\x1b[2K\rcommitted 600 changes\r\n";
        assert_eq!(super::bar_counts(out), Some((600, 600)));
        assert_eq!(super::plain_text(out), "committed 600 changes");
        assert_eq!(super::bar_counts(b"/etc/1/2 committed"), None);
    }
}

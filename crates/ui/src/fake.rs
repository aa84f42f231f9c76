//! A deterministic backend for the browser tests and demos: fixed VMs, changes
//! (among them a file named like HTML, and a conflict), processes and usage that
//! follow a fixed pattern, and a shell that is /bin/sh on the host in a scratch
//! directory. Its "host" is a directory: a commit writes the selected files
//! there, so a test can check exactly what was committed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fvm_engine::cgroup::Usage;
use fvm_engine::limits::{Key, Limits};
use fvm_engine::logs::{Entry, Stream};
use fvm_engine::net::{NetKey, NetPolicy};

use crate::backend::{
    Backend, Change, CommitPlan, Conflict, Op, Preview, Process, Result, Sample, ServiceRow,
    ShellCommand, Side, Vm,
};

/// The file name the tests use to check that VM data is shown as text.
pub const HOSTILE_NAME: &str = "/tmp/<img src=x onerror=alert(1)>";

#[derive(Debug)]
pub struct FakeBackend {
    vms: Mutex<Vec<FakeVm>>,
    /// Where commits land, and the shells run.
    dir: PathBuf,
    tick: AtomicU64,
}

#[derive(Debug, Clone)]
struct FakeVm {
    vm: Vm,
    changes: Vec<Change>,
    processes: Vec<Process>,
    services: Vec<ServiceRow>,
}

fn service(name: &str, state: &str, restart: &str, command: &str) -> ServiceRow {
    ServiceRow {
        name: name.to_owned(),
        state: state.to_owned(),
        pid: (state == "running").then_some(7),
        restarts: 0,
        since: Some("2026-01-01T00:00:00Z".to_owned()),
        last_end: None,
        restart: restart.to_owned(),
        command: command.to_owned(),
    }
}

fn change(path: &str, kind: char, size: u64) -> Change {
    Change {
        path: PathBuf::from(path),
        kind,
        size,
    }
}

fn vm(name: &str, status: &str, ip: Option<&str>) -> Vm {
    Vm {
        name: name.to_owned(),
        status: status.to_owned(),
        error: None,
        description: String::new(),
        ip: ip.map(str::to_owned),
        started_at: (status == "running").then(|| "2026-01-01T00:00:00Z".to_owned()),
        processes: None,
        memory: None,
        disk: 4096,
        limits: Limits::default(),
        network: NetPolicy::default(),
        oom_kills: None,
    }
}

fn process(pid: i32, host_pid: i32, ppid: i32, command: &str) -> Process {
    Process {
        pid,
        host_pid,
        host_ppid: ppid,
        user: "root".to_owned(),
        cpu_percent: 0.0,
        rss: 4 << 20,
        command: command.to_owned(),
    }
}

impl FakeBackend {
    /// The fake store, committing into and running shells in `dir`.
    pub fn new(dir: &Path) -> FakeBackend {
        let mut web = vm("web1", "running", Some("10.77.0.2"));
        web.limits.set(Key::Memory, "512M").expect("a valid size");
        web.limits
            .set(Key::Processes, "200")
            .expect("a valid count");
        web.network.set(NetKey::Net, "bridge").expect("a mode");
        web.network.set(NetKey::Publish, "8080:80").expect("a port");
        let web = FakeVm {
            vm: web,
            changes: vec![
                change("/etc/hosts", 'C', 40),
                change("/etc/nginx", 'A', 0),
                change("/etc/nginx/nginx.conf", 'A', 120),
                change("/etc/old.conf", 'D', 0),
                change(HOSTILE_NAME, 'A', 5),
                change("/usr/bin/tool", 'A', 9000),
            ],
            processes: vec![
                process(1, 5001, 0, "fvm-init"),
                process(7, 5007, 5001, "nginx: master process"),
                process(8, 5008, 5007, "nginx: worker process"),
                process(9, 5009, 5007, "nginx: worker process"),
            ],
            services: vec![
                service("web", "running", "always", "nginx -g 'daemon off;'"),
                ServiceRow {
                    restarts: 3,
                    last_end: Some("exit status 1".to_owned()),
                    ..service("worker", "failed", "on-failure", "./worker --queue jobs")
                },
            ],
        };
        let db = FakeVm {
            vm: vm("db", "stopped", None),
            changes: vec![
                change("/etc/db.conf", 'C', 30),
                change("/var/lib/db/data", 'A', 100),
                change("/var/lib/db/wal", 'A', 50),
            ],
            processes: Vec::new(),
            services: Vec::new(),
        };
        let fake = FakeBackend {
            vms: Mutex::new(vec![db, web]),
            dir: dir.to_owned(),
            tick: AtomicU64::new(0),
        };
        for (line, stream) in [
            ("listening on 0.0.0.0:80", Stream::Stdout),
            ("GET / 200", Stream::Stdout),
            ("worker: no such queue", Stream::Stderr),
        ] {
            let source = if line.starts_with("worker") {
                "worker"
            } else {
                "web"
            };
            fake.log("web1", source, stream, line);
        }
        fake
    }

    /// Where VM `name`'s logs are: `logs/NAME/` in the directory, in the
    /// engine's format (a test appends to them to see them followed).
    pub fn logs_dir(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(name)
    }

    /// Append a line to a service's log.
    fn log(&self, vm: &str, source: &str, stream: Stream, line: &str) {
        use std::io::Write;
        let dir = self.logs_dir(vm);
        let _ = std::fs::create_dir_all(&dir);
        let entry = Entry::now(source, Some(7), stream, line.as_bytes());
        let Ok(mut text) = serde_json::to_string(&entry) else {
            return;
        };
        text.push('\n');
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{source}.log")));
        if let Ok(mut f) = file {
            let _ = f.write_all(text.as_bytes());
        }
    }

    /// Where commits write the VM's files: `host/` in the directory.
    pub fn host_dir(&self) -> PathBuf {
        self.dir.join("host")
    }

    fn with<T>(&self, name: &str, f: impl FnOnce(&mut FakeVm) -> Result<T>) -> Result<T> {
        let mut vms = self.vms.lock().map_err(|_| "poisoned".to_owned())?;
        let v = vms
            .iter_mut()
            .find(|v| v.vm.name == name)
            .ok_or_else(|| format!("no such vm {name:?}"))?;
        f(v)
    }

    fn set_status(&self, name: &str, from: &[&str], to: &str) -> Result<String> {
        self.with(name, |v| {
            if !from.contains(&v.vm.status.as_str()) {
                return Err(format!("vm {name:?} is {}", v.vm.status));
            }
            v.vm.status = to.to_owned();
            if to == "stopped" {
                v.processes.clear();
                for s in &mut v.services {
                    if s.state == "running" {
                        s.state = "stopped".to_owned();
                        s.pid = None;
                    }
                }
            } else if v.processes.is_empty() {
                v.processes.push(process(1, 6001, 0, "fvm-init"));
            }
            Ok(String::new())
        })
    }
}

impl Backend for FakeBackend {
    fn list(&self) -> Result<Vec<Vm>> {
        let vms = self.vms.lock().map_err(|_| "poisoned".to_owned())?;
        let mut out: Vec<Vm> = vms
            .iter()
            .map(|v| {
                let mut vm = v.vm.clone();
                vm.processes = vm.running().then_some(v.processes.len());
                vm.memory = vm.running().then_some(64 << 20);
                vm
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn vm(&self, name: &str) -> Result<Vm> {
        self.list()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| format!("no such vm {name:?}"))
    }

    fn changes(&self, name: &str) -> Result<Vec<Change>> {
        self.with(name, |v| Ok(v.changes.clone()))
    }

    fn preview(&self, name: &str, path: &Path) -> Result<Preview> {
        let kind = self.with(name, |v| {
            v.changes
                .iter()
                .find(|c| c.path == path)
                .map(|c| c.kind)
                .ok_or_else(|| format!("{} is not a change of {name}", path.display()))
        })?;
        let file = |text: &str, mode: u32| Side {
            kind: "file".to_owned(),
            mode,
            size: text.len() as u64,
            text: Some(text.to_owned()),
            ..Side::default()
        };
        let binary = Side {
            kind: "file".to_owned(),
            mode: 0o755,
            size: 9000,
            ..Side::default()
        };
        let p = path.to_string_lossy();
        Ok(match (kind, p.as_ref()) {
            ('C', _) => Preview {
                host: Some(file("127.0.0.1 localhost\n", 0o644)),
                vm: Some(file("127.0.0.1 localhost\n10.77.0.1 gateway\n", 0o600)),
            },
            ('D', _) => Preview {
                host: Some(file("old=1\n", 0o644)),
                vm: None,
            },
            (_, "/usr/bin/tool") => Preview {
                host: None,
                vm: Some(binary),
            },
            (_, "/etc/nginx") => Preview {
                host: None,
                vm: Some(Side {
                    kind: "directory".to_owned(),
                    mode: 0o755,
                    ..Side::default()
                }),
            },
            _ => Preview {
                host: None,
                vm: Some(file("<script>alert(2)</script>\n", 0o644)),
            },
        })
    }

    fn commit_plan(&self, name: &str, paths: &[PathBuf]) -> Result<CommitPlan> {
        let changes = self.changes(name)?;
        let selected: Vec<&Change> = changes
            .iter()
            .filter(|c| paths.iter().any(|p| c.path.starts_with(p)))
            .collect();
        Ok(CommitPlan {
            steps: selected
                .iter()
                .map(|c| {
                    let what = match c.kind {
                        'D' => "remove",
                        _ => "put",
                    };
                    format!("{what} {}", fvm_engine::os::quote::path(&c.path))
                })
                .collect(),
            conflicts: selected
                .iter()
                .filter(|c| c.path == Path::new("/etc/hosts"))
                .map(|c| Conflict {
                    path: c.path.clone(),
                    deleted_on_host: false,
                })
                .collect(),
            skipped: Vec::new(),
        })
    }

    fn processes(&self, name: &str) -> Result<Vec<Process>> {
        self.with(name, |v| Ok(v.processes.clone()))
    }

    fn services(&self, name: &str) -> Result<Vec<ServiceRow>> {
        self.with(name, |v| Ok(v.services.clone()))
    }

    fn logs(&self, name: &str) -> Result<fvm_engine::logs::Logs> {
        self.with(name, |_| Ok(()))?;
        let dir = self.logs_dir(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(fvm_engine::logs::Logs::new(dir))
    }

    fn samples(&self) -> Vec<(String, Sample)> {
        let t = self.tick.fetch_add(1, Ordering::Relaxed);
        let Ok(vms) = self.vms.lock() else {
            return Vec::new();
        };
        vms.iter()
            .filter(|v| v.vm.running())
            .map(|v| {
                let wave = t % 20;
                (
                    v.vm.name.clone(),
                    Sample {
                        usage: Usage {
                            cpu_ns: Some(t * 200_000_000 + wave * 10_000_000),
                            memory: Some((64 + wave * 4) << 20),
                            memory_peak: Some(200 << 20),
                            processes: Some(v.processes.len() as u64),
                            io_read: Some(t * 4096),
                            io_write: Some(t * 8192),
                            oom_kills: Some(0),
                        },
                        memory_limit: v.vm.limits.memory.map(|m| m.0),
                        processes_limit: v.vm.limits.processes,
                    },
                )
            })
            .collect()
    }

    fn run(&self, op: &Op) -> Result<String> {
        match op {
            Op::Start(n) => self.set_status(n, &["stopped"], "running"),
            Op::Stop(n) => self.set_status(n, &["running", "suspended"], "stopped"),
            Op::Suspend(n) => self.set_status(n, &["running"], "suspended"),
            Op::Resume(n) => self.set_status(n, &["suspended"], "running"),
            Op::Delete(n) => {
                let mut vms = self.vms.lock().map_err(|_| "poisoned".to_owned())?;
                let before = vms.len();
                vms.retain(|v| v.vm.name != *n);
                if vms.len() == before {
                    return Err(format!("no such vm {n:?}"));
                }
                Ok(String::new())
            }
            Op::Create { name, .. } => {
                fvm_engine::store::VmName::new(name).map_err(|e| e.to_string())?;
                let mut vms = self.vms.lock().map_err(|_| "poisoned".to_owned())?;
                if vms.iter().any(|v| v.vm.name == *name) {
                    return Err(format!("vm {name:?} already exists"));
                }
                vms.push(FakeVm {
                    vm: vm(name, "stopped", None),
                    changes: Vec::new(),
                    processes: Vec::new(),
                    services: Vec::new(),
                });
                Ok(String::new())
            }
            Op::Copy { src, dst } => {
                fvm_engine::store::VmName::new(dst).map_err(|e| e.to_string())?;
                let mut copy = self.with(src, |v| Ok(v.clone()))?;
                if copy.vm.running() {
                    return Err(format!("cannot copy vm {src:?}: it is running"));
                }
                copy.vm.name = dst.clone();
                self.vms
                    .lock()
                    .map_err(|_| "poisoned".to_owned())?
                    .push(copy);
                Ok(String::new())
            }
            Op::Commit { name, paths, force } => {
                let plan = self.commit_plan(name, paths)?;
                if !plan.conflicts.is_empty() && !force {
                    return Err(format!(
                        "vm {name:?}: {} path(s) changed on the host after the vm copied them; nothing was committed (--force lets the vm win)",
                        plan.conflicts.len()
                    ));
                }
                let changes = self.changes(name)?;
                let host = self.host_dir();
                let mut done = 0;
                for c in changes
                    .iter()
                    .filter(|c| paths.iter().any(|p| c.path.starts_with(p)))
                {
                    // The path as one flat file name in the fake host directory.
                    let flat = c.path.to_string_lossy().replace('/', "%");
                    let target = host.join(flat);
                    std::fs::create_dir_all(&host).map_err(|e| e.to_string())?;
                    let written = match c.kind {
                        'D' => std::fs::write(&target, b"deleted"),
                        _ => std::fs::write(&target, b"committed"),
                    };
                    written.map_err(|e| e.to_string())?;
                    done += 1;
                }
                self.with(name, |v| {
                    v.changes
                        .retain(|c| !paths.iter().any(|p| c.path.starts_with(p)));
                    Ok(())
                })?;
                Ok(format!("committed {done} changes\n"))
            }
            Op::Discard { name, paths } => {
                let dropped = self.with(name, |v| {
                    if v.vm.running() {
                        return Err(format!(
                            "cannot discard changes of vm {name:?} while it runs or is suspended (overlayfs doesn't support changing a mounted layer): stop it first"
                        ));
                    }
                    let before = v.changes.len();
                    v.changes
                        .retain(|c| !paths.iter().any(|p| c.path.starts_with(p)));
                    Ok(before - v.changes.len())
                })?;
                Ok(format!(
                    "discarded {dropped} change(s) of vm {name:?}: it sees the host's version there again\n"
                ))
            }
            Op::Service {
                name,
                service,
                action,
            } => {
                let (state, note) = match action.as_str() {
                    "start" => ("running", "started"),
                    "stop" => ("stopped", "stopped by fvm"),
                    "restart" => ("running", "restarted"),
                    _ => return Err(format!("unknown action {action}")),
                };
                let touched = self.with(name, |v| {
                    if !v.vm.running() {
                        return Err(format!("vm {name:?} is not running"));
                    }
                    let mut touched = Vec::new();
                    for s in &mut v.services {
                        if service.as_ref().is_some_and(|n| *n != s.name) {
                            continue;
                        }
                        if s.state == "running" && state == "stopped" {
                            s.last_end = Some("killed by SIGTERM".to_owned());
                        }
                        s.state = state.to_owned();
                        s.pid = (state == "running").then_some(7);
                        touched.push(s.name.clone());
                    }
                    if touched.is_empty() {
                        return Err(format!(
                            "vm {name:?} has no service {}",
                            service.as_deref().unwrap_or("")
                        ));
                    }
                    Ok(touched)
                })?;
                for s in &touched {
                    self.log(name, s, Stream::Fvm, note);
                }
                Ok(String::new())
            }
            Op::Config { name, args } => {
                let mut limits = self.with(name, |v| Ok(v.vm.limits.clone()))?;
                let mut net = self.with(name, |v| Ok(v.vm.network.clone()))?;
                crate::policy::apply_args(args, &mut limits, &mut net)?;
                self.with(name, |v| {
                    v.vm.limits = limits;
                    v.vm.network = net;
                    Ok(String::new())
                })
            }
        }
    }

    /// A commit reports each of its changes, a fifth of a second apart.
    fn run_progress(&self, op: &Op, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<String> {
        if let Op::Commit { name, paths, .. } = op {
            let n = self
                .changes(name)?
                .iter()
                .filter(|c| paths.iter().any(|p| c.path.starts_with(p)))
                .count();
            for i in 0..n {
                progress(i, n);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        self.run(op)
    }

    fn kill(&self, name: &str, host_pid: i32, signal: i32) -> Result<()> {
        if !crate::procs::SIGNALS.iter().any(|(s, _)| *s == signal) {
            return Err(format!("signal {signal} is not one the console sends"));
        }
        self.with(name, |v| {
            let before = v.processes.len();
            v.processes.retain(|p| p.host_pid != host_pid);
            if v.processes.len() == before {
                return Err(format!("process {host_pid} is not a process of this vm"));
            }
            Ok(())
        })
    }

    fn shell(&self, name: &str) -> Result<ShellCommand> {
        self.with(name, |v| {
            if !v.vm.running() {
                return Err(format!("vm {name:?} is not running"));
            }
            Ok(())
        })?;
        let dir = self.dir.join("shell");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(ShellCommand {
            program: PathBuf::from("/bin/sh"),
            args: Vec::new(),
            dir: Some(dir),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(b: &FakeBackend) -> Vec<String> {
        b.samples().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn only_running_vms_are_sampled() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let b = FakeBackend::new(dir.path());
        assert_eq!(sampled(&b), ["web1"]);
        b.run(&Op::Stop("web1".to_owned())).expect("stop");
        assert!(sampled(&b).is_empty());
        b.run(&Op::Start("db".to_owned())).expect("start");
        assert_eq!(sampled(&b), ["db"]);
    }
}

//! A temporary store root, fvm on it, and the checks that nothing is left.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    Background, FVM, Out, Spawned, WAIT, cgroup_dirs_matching, live_comm, pids_in_cgroups_matching,
    run, try_run,
};

/// A temporary store root with cleanup on drop.
#[derive(Debug)]
pub struct TestStore {
    pub root: PathBuf,
    /// Cgroup dirs `inspect` reported for this store's VMs.
    cgroups: Mutex<BTreeSet<PathBuf>>,
    /// The store's id as seen in cgroup names (`fvm-<id>-<vm>`).
    id: Mutex<Option<String>>,
    dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub fn new(tag: &str) -> TestStore {
        TestStore::in_dir(Path::new("/tmp"), tag)
    }

    /// A temporary store root in `parent` (e.g. on a filesystem the test made).
    pub fn in_dir(parent: &Path, tag: &str) -> TestStore {
        let dir = tempfile::Builder::new()
            .prefix(&format!("fvm-store-{tag}-"))
            .tempdir_in(parent)
            .expect("create a temporary store");
        let root = dir.path().canonicalize().expect("canonical store path");
        TestStore {
            root,
            cgroups: Mutex::new(BTreeSet::new()),
            id: Mutex::new(None),
            dir: Some(dir),
        }
    }

    /// A store whose root is the existing empty directory `root` (e.g. a
    /// filesystem the test mounted there), which the caller removes.
    pub fn at(root: &Path) -> TestStore {
        TestStore {
            root: root.canonicalize().expect("canonical store path"),
            cgroups: Mutex::new(BTreeSet::new()),
            id: Mutex::new(None),
            dir: None,
        }
    }

    /// A `Command` for fvm on this store.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(FVM);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd.env_remove("FVM_ROOT");
        cmd
    }

    /// Run fvm on this store: (status, stdout, stderr).
    pub fn fvm(&self, args: &[&str]) -> Out {
        run(self.command(args), None)
    }

    /// Run fvm on this store with `input` on its stdin (a pipe).
    pub fn fvm_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        run(self.command(args), Some(input))
    }

    /// Start fvm in the background (stdio to /dev/null).
    pub fn spawn(&self, args: &[&str]) -> Spawned {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fvm");
        Spawned { child }
    }

    /// fvm in the background, its output collected for [`Background::finish`].
    pub fn background(&self, args: &[&str]) -> Background {
        Background::start(self.command(args))
    }

    /// `fvm run NAME -- sh -c SCRIPT`.
    pub fn sh(&self, name: &str, script: &str) -> Out {
        self.fvm(&["run", name, "--", "sh", "-c", script])
    }

    /// `fvm run --rm -- sh -c SCRIPT` (a throw-away VM).
    pub fn sh_rm(&self, script: &str) -> Out {
        self.fvm(&["run", "--rm", "--", "sh", "-c", script])
    }

    /// `fvm create NAME`, asserting success, and note its cgroups.
    #[track_caller]
    pub fn create(&self, name: &str) {
        self.create_with(name, &[]);
    }

    /// `fvm create NAME FLAGS…`, asserting success, and note its cgroups so the
    /// cleanup checks cover them.
    #[track_caller]
    pub fn create_with(&self, name: &str, flags: &[&str]) {
        let mut args = vec!["create", name];
        args.extend_from_slice(flags);
        let out = self.fvm(&args).ok();
        assert_eq!(out.out(), name, "{out}");
        self.inspect(name);
    }

    #[track_caller]
    pub fn start(&self, name: &str) {
        self.fvm(&["start", name]).ok();
        // The VM's init writes its first services status (`logs/services.json`,
        // by a temp and a rename) just after `start` returns: give it up to 2 s,
        // so that a snapshot taken next doesn't catch the temp.
        let logs = self.root.join("vms").join(name).join("logs");
        for _ in 0..200 {
            if logs.join("services.json").exists() && !logs.join(".services.json.tmp").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[track_caller]
    pub fn stop(&self, name: &str) {
        self.fvm(&["stop", name]).ok();
    }

    /// `fvm inspect NAME` as JSON (asserting success); notes the VM's cgroups.
    #[track_caller]
    pub fn inspect(&self, name: &str) -> Value {
        let out = self.fvm(&["inspect", name]).ok();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("inspect {name}: not JSON ({e}):\n{out}"));
        self.note_cgroups(&v);
        v
    }

    fn note_cgroups(&self, v: &Value) {
        let Some(dirs) = v["cgroup"].as_array() else {
            return;
        };
        let name = v["name"].as_str().unwrap_or_default();
        let mut seen = self.cgroups.lock().unwrap_or_else(|e| e.into_inner());
        for d in dirs.iter().filter_map(Value::as_str) {
            let path = PathBuf::from(d);
            let leaf = path
                .file_name()
                .and_then(|l| l.to_str())
                .unwrap_or_default();
            if let Some(id) = leaf
                .strip_prefix("fvm-")
                .and_then(|rest| rest.strip_suffix(&format!("-{name}")))
            {
                *self.id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_owned());
            }
            seen.insert(path);
        }
    }

    /// `fvm list --json`.
    #[track_caller]
    pub fn list(&self) -> Vec<Value> {
        let out = self.fvm(&["list", "--json"]).ok();
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("list --json: not JSON ({e}):\n{out}"));
        for vm in v.as_array().into_iter().flatten() {
            self.note_cgroups(vm);
        }
        v.as_array().cloned().unwrap_or_default()
    }

    /// The VM's status as `list` shows it.
    #[track_caller]
    pub fn status(&self, name: &str) -> String {
        self.list()
            .iter()
            .find(|vm| vm["name"] == name)
            .and_then(|vm| vm["status"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("vm {name} is not in the list"))
    }

    /// The host pid of the VM's init, from `inspect`.
    #[track_caller]
    pub fn init_pid(&self, name: &str) -> Option<i32> {
        self.inspect(name)["init"]["pid"]
            .as_i64()
            .map(|p| i32::try_from(p).expect("pid fits i32"))
    }

    /// The VM's cgroup dir of one controller (e.g. "pids"), from `inspect`.
    #[track_caller]
    pub fn cgroup_dir(&self, name: &str, controller: &str) -> PathBuf {
        let v = self.inspect(name);
        v["cgroup"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(PathBuf::from)
            .find(|p| {
                p.parent().and_then(Path::file_name).is_some_and(|c| {
                    c.to_str()
                        .is_some_and(|c| c.split(',').any(|c| c == controller))
                })
            })
            .or_else(|| {
                // cgroup v2: one unified dir.
                v["cgroup"][0].as_str().map(PathBuf::from)
            })
            .unwrap_or_else(|| panic!("inspect {name} names no cgroup dir:\n{v:#}"))
    }

    /// Host pids in the VM's cgroup.
    #[track_caller]
    pub fn vm_pids(&self, name: &str) -> Vec<i32> {
        let procs = self.cgroup_dir(name, "pids").join("cgroup.procs");
        std::fs::read_to_string(&procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The pid in STORE/watch.pid, if it names a live `fvm-watch`.
    pub fn watcher_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.root.join("watch.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .filter(|p| super::is_alive_as(*p, "fvm-watch"))
    }

    /// The store's id in cgroup names, once a VM was inspected.
    pub fn id(&self) -> Option<String> {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Names of the VM directories in the store.
    pub fn vm_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("vms"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every path under the store root with its kind, mode, size and (for small
    /// regular files) content: to check that a failed command changed nothing.
    /// Lock files are left out: fvm makes them on first use, and they hold nothing.
    /// Taken once no VM's lock is held (a cold `fvm run` returns while its VM's
    /// stop is still recorded).
    pub fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        self.wait_for_vm_locks(Duration::from_secs(60));
        fn walk(root: &Path, dir: &Path, map: &mut BTreeMap<PathBuf, String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                // Locks, and the files of the store's watcher, which comes and goes
                // with its running VMs on its own time.
                let name = e.file_name();
                if ["lock", "watch.lock", "watch.pid", "net.lock"]
                    .iter()
                    .any(|n| name == *n)
                {
                    continue;
                }
                let path = e.path();
                let Ok(m) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let rel = path.strip_prefix(root).unwrap_or(&path).to_owned();
                let mode = m.permissions().mode();
                let desc = if m.is_dir() {
                    walk(root, &path, map);
                    format!("dir {mode:o}")
                } else if m.is_file() && m.len() < 64 * 1024 {
                    let content = std::fs::read(&path).unwrap_or_default();
                    format!(
                        "file {mode:o} {} uid {} {:?}",
                        m.len(),
                        m.uid(),
                        String::from_utf8_lossy(&content)
                    )
                } else {
                    format!("other {mode:o} {}", m.len())
                };
                map.insert(rel, desc);
            }
        }
        let mut map = BTreeMap::new();
        walk(&self.root, &self.root, &mut map);
        map
    }

    /// Delete every VM (`delete --force`) and run `doctor --cleanup`. Never panics;
    /// returns what went wrong.
    pub fn delete_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let timeout = Duration::from_secs(60);
        self.wait_for_vm_locks(timeout);
        for name in self.vm_dirs() {
            if name.starts_with('.') {
                continue;
            }
            match try_run(self.command(&["delete", "--force", &name]), None, timeout) {
                Ok(out) if out.code == 0 => {}
                Ok(out) => problems.push(format!("delete --force {name}: {out}")),
                Err(e) => problems.push(e),
            }
        }
        match try_run(self.command(&["doctor", "--cleanup"]), None, timeout) {
            Ok(_) => {} // doctor's own verdict on the host is not this test's business
            Err(e) => problems.push(e),
        }
        problems
    }

    /// Wait (up to `timeout`) until nobody holds the lock of any directory in
    /// `vms/`: a cold `fvm run` returns while a process of its own still cleans
    /// up after the VM (and deletes a throw-away one) under the VM's lock.
    pub fn wait_for_vm_locks(&self, timeout: Duration) {
        let start = Instant::now();
        let Ok(entries) = std::fs::read_dir(self.root.join("vms")) else {
            return;
        };
        for e in entries.flatten() {
            let lock = e.path().join("lock");
            while super::is_locked(&lock) && start.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// What of this store is still on the host (empty when clean).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for d in self
            .cgroups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if d.exists() {
                left.push(format!("cgroup dir {}", d.display()));
            }
        }
        if let Some(id) = self.id() {
            let needle = format!("fvm-{id}-");
            left.extend(
                cgroup_dirs_matching(&needle)
                    .into_iter()
                    .map(|d| format!("cgroup dir {}", d.display())),
            );
            left.extend(
                pids_in_cgroups_matching(&needle)
                    .into_iter()
                    .map(|p| format!("process {p} ({:?}) in a cgroup of the store", live_comm(p))),
            );
        }
        let root = self.root.to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        left.extend(
            mountinfo
                .lines()
                .filter(|l| l.contains(&root))
                .map(|l| format!("mount: {l}")),
        );
        left.extend(
            self.vm_dirs()
                .into_iter()
                .map(|n| format!("store entry vms/{n}")),
        );
        left
    }

    /// Delete everything and assert that nothing of the store is left on the host:
    /// no cgroup, process or mount of it, and an empty `vms/`.
    #[track_caller]
    pub fn assert_clean(&self) {
        let problems = self.delete_all();
        assert!(
            problems.is_empty(),
            "cleanup failed:\n{}",
            problems.join("\n")
        );
        let start = Instant::now();
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "left behind after deleting every vm:\n{}",
                left.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let problems = self.delete_all();
        if !problems.is_empty() {
            eprintln!(
                "cleanup of {}: {}",
                self.root.display(),
                problems.join("\n")
            );
        }
        drop(self.dir.take());
    }
}

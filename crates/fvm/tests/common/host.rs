//! The host side: processes, cgroups, and the mounts and files tests make.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::{run, try_run};

/// The command name of a live (not zombie) process, or None when it is gone.
pub fn live_comm(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let state = stat[close + 1..].split_whitespace().next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    Some(stat[open + 1..close].to_owned())
}

/// True while `pid` is a live process named `comm`.
pub fn is_alive_as(pid: i32, comm: &str) -> bool {
    live_comm(pid).as_deref() == Some(comm)
}

/// Live host pids whose cgroup path contains `needle`.
pub fn pids_in_cgroups_matching(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cg.contains(needle) && live_comm(pid).is_some() {
            pids.push(pid);
        }
    }
    pids
}

/// Number of live processes the host's /proc shows.
pub fn host_process_count() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|s| s.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// host objects the tests make

/// A temporary directory under /tmp whose name carries "fvm".
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("fvm-test-{tag}-"))
        .tempdir_in("/tmp")
        .expect("create a temporary directory in /tmp")
}

/// A tmpfs the test mounts on the host at `<tmp>/fvm-test-…/mnt`; unmounted
/// (lazily) and removed on drop.
#[derive(Debug)]
pub struct TmpfsMount {
    pub path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl TmpfsMount {
    #[track_caller]
    pub fn new(tag: &str) -> TmpfsMount {
        TmpfsMount::with_size(tag, "16m")
    }

    /// A tmpfs of `size` (as `mount -o size=` takes it).
    #[track_caller]
    pub fn with_size(tag: &str, size: &str) -> TmpfsMount {
        let dir = temp_dir(tag);
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("create the mount point");
        let mut cmd = Command::new("mount");
        cmd.args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "fvm-test-tmpfs",
        ])
        .arg(&path);
        run(cmd, None).ok();
        TmpfsMount {
            path,
            dir: Some(dir),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let mut cmd = Command::new("umount");
        cmd.arg("-l").arg(&self.path);
        let _ = try_run(cmd, None, Duration::from_secs(30));
        drop(self.dir.take());
    }
}

/// A host file the test creates (e.g. in /run or /etc), removed on drop.
#[derive(Debug)]
pub struct HostFile(pub PathBuf);

impl Drop for HostFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A unique name with "fvm" in it, for host-side files a test makes.
pub fn unique(tag: &str) -> String {
    static N: Mutex<u32> = Mutex::new(0);
    let mut n = N.lock().unwrap_or_else(|e| e.into_inner());
    *n += 1;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("fvm-test-{tag}-{}-{}-{nanos}", std::process::id(), *n)
}

/// Directories directly under each cgroup hierarchy root (and the unified root)
/// whose name contains `needle`.
pub fn cgroup_dirs_matching(needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let base = Path::new("/sys/fs/cgroup");
    let mut roots = vec![base.to_owned()];
    if let Ok(entries) = std::fs::read_dir(base) {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for r in roots {
        if let Ok(entries) = std::fs::read_dir(&r) {
            found.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().contains(needle))
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// Whether someone holds an flock on the file `path` (false if it is missing).
pub use fvm_engine::os::files::is_locked;

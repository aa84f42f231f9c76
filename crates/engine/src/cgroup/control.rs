//! Reading and writing cgroupfs control files, shared by the v1 and v2 backends.
//!
//! cgroupfs looks like a filesystem but behaves like an API: a write is one
//! command, `cgroup.procs` may list a pid twice (v1), directories can't be
//! removed while a task is still exiting, and a cgroup can vanish between two
//! calls when another `fvm` cleans it up. These helpers encode those rules once.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use rustix::process::{Pid, Signal};

use super::{CgroupError, procs_file};

/// How long `kill_all` waits for the processes to disappear.
pub(super) const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `remove` retries a cgroup that is busy with exiting tasks.
pub(super) const REMOVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Polls with a growing delay until a deadline.
#[derive(Debug)]
pub(super) struct Retry {
    deadline: Instant,
    delay: Duration,
}

impl Retry {
    pub(super) fn new(timeout: Duration) -> Retry {
        Retry {
            deadline: Instant::now() + timeout,
            delay: Duration::from_millis(2),
        }
    }

    /// Sleeps before the next attempt; false once the deadline has passed.
    pub(super) fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        thread::sleep(self.delay.min(self.deadline - now));
        self.delay = (self.delay * 2).min(Duration::from_millis(50));
        true
    }
}

pub(super) fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path)
}

/// Writes `value` to an existing control file, as one buffer: the kernel
/// parses each `write(2)` as one command.
///
/// Never creates the file: a missing control file means a missing controller
/// or cgroup, and on a real cgroupfs creating files isn't possible anyway.
pub(super) fn write(path: &Path, value: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value)
}

pub(super) fn open_write(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `mkdir` with mode 0755; an existing directory is fine so create is idempotent.
pub(super) fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => Ok(()),
        // A control file with the leaf's name (say "tasks") must not pass for a cgroup.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Pids listed in one `cgroup.procs` file, sorted and without duplicates.
/// A missing file (the cgroup is gone) lists nothing.
pub(super) fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    let text = match read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut pids = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        // Only positive pids: kill(0) or kill(-n) would signal whole process groups.
        match line.parse::<i32>() {
            Ok(pid) if pid > 0 => pids.push(pid),
            _ => {
                return Err(CgroupError::Parse {
                    path: path.to_owned(),
                    text: line.to_owned(),
                });
            }
        }
    }
    // v1 documents that cgroup.procs may be unsorted and repeat a pid.
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Pids of the processes in `dir` and every cgroup below it, sorted.
pub(super) fn pids_under(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    for cgroup in subtree(dir)? {
        pids.extend(read_pids(&procs_file(&cgroup))?);
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// `dir` and the cgroups nested in it, deepest first (the order rmdir needs).
///
/// The VM normally can't create sub-cgroups, but a cgroup namespace with a
/// writable cgroupfs would let it, and their processes are still the VM's.
/// A missing `dir` yields nothing.
pub(super) fn subtree(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = Vec::new();
    collect_subtree(dir, &mut out)?;
    Ok(out)
}

fn collect_subtree(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })?;
        // file_type() doesn't follow symlinks, so the walk stays inside cgroupfs.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_subtree(&entry.path(), out)?;
        }
    }
    out.push(dir.to_owned());
    Ok(())
}

/// Sends SIGKILL to each pid read from the cgroup at `dir`.
///
/// A pid that is already gone is fine. Host init and the caller are never
/// signalled: killing pid 1 panics the host, and killing ourselves would stop
/// the cleanup half-way. They stay in the cgroup and surface as
/// [`CgroupError::StillPopulated`].
pub(super) fn sigkill(dir: &Path, pids: &[i32]) -> Result<(), CgroupError> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    for &pid in pids {
        if pid == 1 || pid == me {
            tracing::warn!(pid, dir = %dir.display(), "refusing to kill this process in a vm cgroup");
            continue;
        }
        let Some(target) = Pid::from_raw(pid) else {
            continue;
        };
        match rustix::process::kill_process(target, Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(err) => {
                return Err(CgroupError::Signal {
                    path: dir.to_owned(),
                    pid,
                    source: err.into(),
                });
            }
        }
    }
    Ok(())
}

/// Removes `dir` and its sub-cgroups, retrying while the kernel reports them busy.
pub(super) fn remove_tree(dir: &Path, retry: &mut Retry) -> Result<(), CgroupError> {
    for cgroup in subtree(dir)? {
        loop {
            match fs::remove_dir(&cgroup) {
                Ok(()) => break,
                Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                // EBUSY: a killed task has left cgroup.procs but not yet the
                // cgroup's accounting; it clears within milliseconds.
                Err(err) if err.kind() == io::ErrorKind::ResourceBusy && retry.wait() => {}
                Err(source) => {
                    return Err(CgroupError::Remove {
                        path: cgroup,
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}

//! The cgroup v2 backend: a VM is one directory in the unified hierarchy.
//!
//! v2 gives the two things a clean stop needs directly: `cgroup.kill` (Linux
//! 5.14) kills every process of the cgroup and its descendants atomically,
//! forks included, and one `cgroup.procs` lists the whole VM. On older kernels
//! the fallback is a kill loop over `cgroup.procs`.

use std::io;
use std::path::{Path, PathBuf};

use super::CgroupError;
use super::control::{self, KILL_TIMEOUT, Retry};

/// One VM's cgroup in the unified hierarchy.
#[derive(Debug, Clone)]
pub(super) struct V2Cgroup {
    dir: PathBuf,
}

impl V2Cgroup {
    pub(super) fn new(dir: PathBuf) -> V2Cgroup {
        V2Cgroup { dir }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn dirs(&self) -> &[PathBuf] {
        std::slice::from_ref(&self.dir)
    }

    pub(super) fn memory_current_file(&self) -> PathBuf {
        self.dir.join("memory.current")
    }

    /// Kills everything in the cgroup, then waits for `cgroup.procs` to empty.
    /// Freeze every process (cgroup.freeze) and wait for `frozen 1` in cgroup.events.
    pub(super) fn freeze(&self, timeout: std::time::Duration) -> Result<(), CgroupError> {
        let file = self.dir.join("cgroup.freeze");
        control::write(&file, b"1").map_err(|source| CgroupError::Freeze {
            path: self.dir.clone(),
            source,
        })?;
        let events = self.dir.join("cgroup.events");
        let mut retry = control::Retry::new(timeout);
        loop {
            let text = control::read(&events).map_err(|source| CgroupError::Read {
                path: events.clone(),
                source,
            })?;
            if text.lines().any(|l| l.trim() == "frozen 1") {
                return Ok(());
            }
            if !retry.wait() {
                let _ = self.thaw();
                return Err(CgroupError::FreezeTimeout {
                    path: self.dir.clone(),
                });
            }
        }
    }

    pub(super) fn thaw(&self) -> Result<(), CgroupError> {
        match control::write(&self.dir.join("cgroup.freeze"), b"0") {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(CgroupError::Thaw {
                    path: self.dir.clone(),
                    source,
                })
            }
            _ => Ok(()),
        }
    }

    pub(super) fn kill_all(&self) -> Result<(), CgroupError> {
        let mut retry = Retry::new(KILL_TIMEOUT);
        let kill_file = self.dir.join("cgroup.kill");
        let atomic = kill_file.exists();
        if atomic {
            match control::write(&kill_file, b"1") {
                Ok(()) => {}
                // Removed under us by a concurrent cleanup: nothing left to kill.
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(CgroupError::Kill {
                        path: self.dir.clone(),
                        source,
                    });
                }
            }
        }
        loop {
            let pids = control::pids_under(&self.dir)?;
            if pids.is_empty() {
                return Ok(());
            }
            // cgroup.kill also stops new forks, so one write is enough. Without
            // it a process can fork between our read and our kill, hence the loop.
            if !atomic {
                control::sigkill(&self.dir, &pids)?;
            }
            if !retry.wait() {
                return Err(CgroupError::StillPopulated {
                    path: self.dir.clone(),
                    pids,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::procs_file;
    use super::*;

    #[test]
    fn kill_all_without_cgroup_kill_on_an_empty_cgroup_finishes() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = V2Cgroup::new(tmp.path().to_owned());
        std::fs::write(procs_file(tmp.path()), "").unwrap();
        cgroup.kill_all().unwrap();
    }

    #[test]
    fn kill_all_gives_up_when_processes_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = V2Cgroup::new(tmp.path().to_owned());
        std::fs::write(tmp.path().join("cgroup.kill"), "").unwrap();
        // Pid 1 is listed but never signalled, so the fake cgroup never empties.
        std::fs::write(procs_file(tmp.path()), "1\n").unwrap();
        let err = cgroup.kill_all().unwrap_err();
        assert!(
            matches!(&err, CgroupError::StillPopulated { pids, .. } if pids == &[1]),
            "{err:?}"
        );
    }
}

//! The cgroup v2 backend: a VM is one directory in the unified hierarchy.
//!
//! v2 gives the two things a clean stop needs directly: `cgroup.kill` (Linux
//! 5.14) kills every process of the cgroup and its descendants atomically,
//! forks included, and one `cgroup.procs` lists the whole VM. On older kernels
//! the fallback is a kill loop over `cgroup.procs`.

use std::io;
use std::path::{Path, PathBuf};

use super::control::{self, KILL_TIMEOUT, Retry};
use super::limits::{self, LimitWrite};
use super::{Backend, CgroupError, Usage, Version, usage};
use crate::limits::Limits;

/// Controllers a VM's cgroup gets when the parent offers them: what limits and
/// `stats` read. Without them in the parent's `cgroup.subtree_control`, the
/// VM's directory has none of their files.
const WANTED: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// One VM's cgroup in the unified hierarchy.
#[derive(Debug, Clone)]
pub(super) struct V2Cgroup {
    dir: PathBuf,
}

impl V2Cgroup {
    pub(super) fn new(dir: PathBuf) -> V2Cgroup {
        V2Cgroup { dir }
    }

    /// Enable the [`WANTED`] controllers the parent has but doesn't hand down.
    /// Only missing ones are written (a write to `cgroup.subtree_control` is
    /// not free), and a failure is left for the limit that needs it to report.
    fn enable_controllers(&self) {
        let Some(parent) = self.dir.parent() else {
            return;
        };
        let offered = control::read(&parent.join("cgroup.controllers")).unwrap_or_default();
        let enabled = control::read(&parent.join("cgroup.subtree_control")).unwrap_or_default();
        let missing: Vec<String> = WANTED
            .iter()
            .filter(|c| offered.split_whitespace().any(|o| o == **c))
            .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return;
        }
        let path = parent.join("cgroup.subtree_control");
        if let Err(err) = control::write(&path, missing.join(" ").as_bytes()) {
            tracing::debug!(path = %path.display(), %err, missing = %missing.join(" "), "cannot enable controllers");
        }
    }

    /// Freeze every process (cgroup.freeze) and wait for `frozen 1` in cgroup.events.
    fn freeze_all(&self, timeout: std::time::Duration) -> Result<(), CgroupError> {
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
                let _ = self.thaw_all();
                return Err(CgroupError::FreezeTimeout {
                    path: self.dir.clone(),
                });
            }
        }
    }

    fn thaw_all(&self) -> Result<(), CgroupError> {
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

    /// Kills everything in the cgroup, then waits for `cgroup.procs` to empty.
    fn kill_everything(&self) -> Result<(), CgroupError> {
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

impl Backend for V2Cgroup {
    fn version(&self) -> Version {
        Version::V2
    }

    fn dirs(&self) -> &[PathBuf] {
        std::slice::from_ref(&self.dir)
    }

    fn dir_of(&self, _controller: &str) -> Option<&Path> {
        Some(&self.dir)
    }

    fn procs_dir(&self) -> &Path {
        &self.dir
    }

    fn after_create(&self) -> Result<(), CgroupError> {
        self.enable_controllers();
        Ok(())
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        self.kill_everything()
    }

    fn freeze(&self, timeout: std::time::Duration) -> Result<(), CgroupError> {
        self.freeze_all(timeout)
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.thaw_all()
    }

    fn frozen(&self) -> bool {
        control::read(&self.dir.join("cgroup.freeze")).is_ok_and(|t| t.trim() == "1")
    }

    fn usage(&self) -> Usage {
        usage::v2(&self.dir)
    }

    fn oom_kills(&self) -> Option<u64> {
        usage::oom_kills_v2(&self.dir)
    }

    fn memory_current(&self) -> Option<u64> {
        control::read(&self.dir.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn limit_writes(&self, limits: &Limits, all: bool) -> Vec<LimitWrite> {
        limits::v2(limits, all)
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
        cgroup.kill_everything().unwrap();
    }

    #[test]
    fn kill_all_gives_up_when_processes_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = V2Cgroup::new(tmp.path().to_owned());
        std::fs::write(tmp.path().join("cgroup.kill"), "").unwrap();
        // Pid 1 is listed but never signalled, so the fake cgroup never empties.
        std::fs::write(procs_file(tmp.path()), "1\n").unwrap();
        let err = cgroup.kill_everything().unwrap_err();
        assert!(
            matches!(&err, CgroupError::StillPopulated { pids, .. } if pids == &[1]),
            "{err:?}"
        );
    }
}

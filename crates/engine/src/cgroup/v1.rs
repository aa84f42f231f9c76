//! The cgroup v1 backend: a VM is one directory, of the same name, in each
//! controller hierarchy we use.
//!
//! v1 has no `cgroup.kill`, so stopping a VM is a loop: read the pids, SIGKILL
//! them, repeat until none is left. The freezer hierarchy, when mounted, makes
//! that loop sound: once the cgroup is FROZEN nothing in it can fork a child
//! we haven't seen, and nothing can exit, so a pid we read can't be reaped and
//! reused by an unrelated host process before we signal it. Without a freezer
//! that small window remains.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::control::{self, KILL_TIMEOUT, Retry};
use super::detect::Hierarchy;
use super::limits::{self, LimitWrite};
use super::{Backend, CgroupError, Usage, Version, usage};
use crate::limits::Limits;

/// How long to wait for FREEZING to become FROZEN before killing anyway.
/// A task in uninterruptible sleep can hold off the freeze indefinitely.
const FREEZE_TIMEOUT: Duration = Duration::from_millis(200);

/// One VM's cgroup: `dirs[i]` lives in the hierarchy with `controllers[i]`.
#[derive(Debug, Clone)]
pub(super) struct V1Cgroup {
    dirs: Vec<PathBuf>,
    controllers: Vec<Vec<String>>,
}

impl V1Cgroup {
    pub(super) fn new(hierarchies: &[Hierarchy], leaf: &str) -> V1Cgroup {
        V1Cgroup {
            dirs: hierarchies.iter().map(|h| h.root.join(leaf)).collect(),
            controllers: hierarchies.iter().map(|h| h.controllers.clone()).collect(),
        }
    }

    /// The VM's directory in the hierarchy that has `controller`.
    fn dir_with(&self, controller: &str) -> Option<&Path> {
        self.controllers
            .iter()
            .position(|list| list.iter().any(|c| c == controller))
            .map(|i| self.dirs[i].as_path())
    }

    /// Fixes up a new cgroup so that tasks can join it.
    ///
    /// Detection skips cpuset, but a hierarchy that co-mounts it with a used
    /// controller still gets a directory, and a new cpuset cgroup starts with no
    /// CPUs and no memory nodes: joining it fails with ENOSPC. Inherit the
    /// parent's sets, as `cgroup.clone_children` would.
    fn inherit_cpuset(&self) -> Result<(), CgroupError> {
        let Some(dir) = self.dir_with("cpuset") else {
            return Ok(());
        };
        let Some(parent) = dir.parent() else {
            return Ok(());
        };
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = dir.join(file);
            let empty = control::read(&current)
                .map(|text| text.trim().is_empty())
                .unwrap_or(false);
            if !empty {
                continue;
            }
            let inherited = parent.join(file);
            let value = control::read(&inherited).map_err(|source| CgroupError::Read {
                path: inherited,
                source,
            })?;
            control::write(&current, value.trim().as_bytes()).map_err(|source| {
                CgroupError::Create {
                    path: current.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Kills everything in every hierarchy's directory, frozen if possible.
    fn kill_everything(&self) -> Result<(), CgroupError> {
        // Freezing flips kernel static keys (IPIs to every CPU): only do it when
        // there is something to kill. The common case, after the VM's init took
        // everything down with it, is an empty cgroup.
        if self.all_pids()?.1.is_empty() {
            return Ok(());
        }
        let mut retry = Retry::new(KILL_TIMEOUT);
        let freezer = self.dir_with("freezer").filter(|dir| dir.is_dir());
        loop {
            if let Some(dir) = freezer {
                freeze(dir)?;
            }
            let round = self.all_pids().and_then(|(dir, pids)| {
                control::sigkill(dir, &pids)?;
                Ok((dir, pids))
            });
            // Thaw even if listing or killing failed: a VM left frozen is worse
            // than one left running, and SIGKILL only takes effect once thawed.
            if let Some(dir) = freezer {
                thaw(dir)?;
            }
            let (dir, pids) = round?;
            if pids.is_empty() {
                return Ok(());
            }
            if !retry.wait() {
                return Err(CgroupError::StillPopulated {
                    path: dir.to_owned(),
                    pids,
                });
            }
        }
    }

    /// Pids in any of the VM's directories, and the first directory that has some.
    ///
    /// A child whose `join_self` failed half-way sits in only some hierarchies,
    /// and any populated directory would make `remove` fail, so look in all.
    fn all_pids(&self) -> Result<(&Path, Vec<i32>), CgroupError> {
        let mut all = Vec::new();
        let mut first = self.procs_dir();
        for dir in &self.dirs {
            let pids = control::pids_under(dir)?;
            if all.is_empty() && !pids.is_empty() {
                first = dir;
            }
            all.extend(pids);
        }
        all.sort_unstable();
        all.dedup();
        Ok((first, all))
    }
}

impl V1Cgroup {
    /// Freeze every process of the VM and wait until the kernel reports FROZEN.
    fn freeze_strict(&self, timeout: Duration) -> Result<(), CgroupError> {
        let dir = self.dir_with("freezer").ok_or(CgroupError::NoFreezer)?;
        let state = dir.join("freezer.state");
        control::write(&state, b"FROZEN").map_err(|source| CgroupError::Freeze {
            path: dir.to_owned(),
            source,
        })?;
        let mut retry = Retry::new(timeout);
        loop {
            let now = control::read(&state).map_err(|source| CgroupError::Read {
                path: state.clone(),
                source,
            })?;
            if now.trim() == "FROZEN" {
                return Ok(());
            }
            if !retry.wait() {
                let _ = thaw(dir);
                return Err(CgroupError::FreezeTimeout {
                    path: dir.to_owned(),
                });
            }
        }
    }

    /// Whether raising the memory limit: then memory+swap must grow first.
    fn raising_memory(&self, limits: &Limits) -> bool {
        let current = self
            .dir_with("memory")
            .and_then(|d| control::read(&d.join("memory.limit_in_bytes")).ok())
            .and_then(|t| t.trim().parse::<u64>().ok());
        current.is_some_and(|c| limits.memory.map_or(u64::MAX, |m| m.0) > c)
    }
}

impl Backend for V1Cgroup {
    fn version(&self) -> Version {
        Version::V1
    }

    fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.dir_with(controller)
    }

    /// Every hierarchy holds every task of the VM, so any would do; pids is
    /// preferred because `pids.max` counts exactly these tasks. Never empty:
    /// `Cgroups::vm` refuses a layout without hierarchies.
    fn procs_dir(&self) -> &Path {
        self.dir_with("pids").unwrap_or(&self.dirs[0])
    }

    fn after_create(&self) -> Result<(), CgroupError> {
        self.inherit_cpuset()
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        self.kill_everything()
    }

    fn freeze(&self, timeout: Duration) -> Result<(), CgroupError> {
        self.freeze_strict(timeout)
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        match self.dir_with("freezer") {
            Some(dir) => thaw(dir),
            None => Ok(()),
        }
    }

    /// FREEZING counts: a freeze is under way.
    fn frozen(&self) -> bool {
        self.dir_with("freezer").is_some_and(|d| {
            control::read(&d.join("freezer.state"))
                .is_ok_and(|t| matches!(t.trim(), "FROZEN" | "FREEZING"))
        })
    }

    fn usage(&self) -> Usage {
        usage::v1(|c| self.dir_with(c).map(Path::to_path_buf))
    }

    fn oom_kills(&self) -> Option<u64> {
        usage::oom_kills_v1(self.dir_with("memory")?)
    }

    fn memory_current(&self) -> Option<u64> {
        let dir = self.dir_with("memory")?;
        control::read(&dir.join("memory.usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn limit_writes(&self, limits: &Limits, all: bool) -> Vec<LimitWrite> {
        // The order of the memory writes matters only if there are any.
        let memory = all || limits.memory.is_some();
        limits::v1(limits, all, memory && self.raising_memory(limits))
    }
}

/// Sets `freezer.state` to FROZEN and waits briefly for the kernel to get there.
fn freeze(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    match control::write(&state, b"FROZEN") {
        Ok(()) => {}
        // Removed by a concurrent cleanup: nothing left to freeze.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Freeze {
                path: dir.to_owned(),
                source,
            });
        }
    }
    let mut retry = Retry::new(FREEZE_TIMEOUT);
    loop {
        match control::read(&state) {
            Ok(text) if text.trim() == "FROZEN" => return Ok(()),
            Ok(_) if retry.wait() => {}
            Ok(_) => {
                tracing::debug!(dir = %dir.display(), "cgroup not frozen in time, killing anyway");
                return Ok(());
            }
            Err(source) => {
                return Err(CgroupError::Freeze {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
}

fn thaw(dir: &Path) -> Result<(), CgroupError> {
    match control::write(&dir.join("freezer.state"), b"THAWED") {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(CgroupError::Thaw {
            path: dir.to_owned(),
            source: err,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::procs_file;
    use super::*;

    fn fake(root: &Path, names: &[&[&str]]) -> V1Cgroup {
        let hierarchies: Vec<Hierarchy> = names
            .iter()
            .map(|controllers| Hierarchy {
                controllers: controllers.iter().map(|c| c.to_string()).collect(),
                root: root.join(controllers.join(",")),
            })
            .collect();
        for h in &hierarchies {
            std::fs::create_dir_all(h.root.join("vm")).unwrap();
            std::fs::write(procs_file(&h.root.join("vm")), "").unwrap();
        }
        V1Cgroup::new(&hierarchies, "vm")
    }

    #[test]
    fn pids_come_from_the_pids_hierarchy_else_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = fake(tmp.path(), &[&["cpu", "cpuacct"], &["pids"]]);
        assert_eq!(cgroup.procs_dir(), tmp.path().join("pids/vm"));
        let cgroup = fake(tmp.path(), &[&["cpu", "cpuacct"], &["memory"]]);
        assert_eq!(cgroup.procs_dir(), tmp.path().join("cpu,cpuacct/vm"));
    }

    #[test]
    fn kill_all_of_an_empty_cgroup_leaves_the_freezer_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = fake(tmp.path(), &[&["freezer"], &["pids"]]);
        let state = tmp.path().join("freezer/vm/freezer.state");
        std::fs::write(&state, "").unwrap();
        cgroup.kill_all().unwrap();
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "");
    }

    #[test]
    fn kill_all_freezes_and_always_thaws() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = fake(tmp.path(), &[&["freezer"], &["pids"]]);
        let state = tmp.path().join("freezer/vm/freezer.state");
        std::fs::write(&state, "").unwrap();
        // Pid 1 is never signalled, so it stays and the kill gives up.
        std::fs::write(tmp.path().join("pids/vm/cgroup.procs"), "1\n").unwrap();
        assert!(cgroup.kill_all().is_err());
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "THAWED");
    }

    #[test]
    fn kill_all_looks_in_every_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = fake(tmp.path(), &[&["pids"], &["memory"]]);
        // Pid 1 is never signalled, so it stays and names the hierarchy it was found in.
        std::fs::write(tmp.path().join("memory/vm/cgroup.procs"), "1\n").unwrap();
        let err = cgroup.kill_all().unwrap_err();
        match err {
            CgroupError::StillPopulated { path, pids } => {
                assert_eq!(path, tmp.path().join("memory/vm"));
                assert_eq!(pids, vec![1]);
            }
            other => panic!("unexpected error: {other:?}"),
        }
    }

    #[test]
    fn after_create_copies_cpuset_from_the_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let cgroup = fake(tmp.path(), &[&["cpuset", "memory"]]);
        let root = tmp.path().join("cpuset,memory");
        std::fs::write(root.join("cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(root.join("cpuset.mems"), "0\n").unwrap();
        std::fs::write(root.join("vm/cpuset.cpus"), "\n").unwrap();
        std::fs::write(root.join("vm/cpuset.mems"), "\n").unwrap();
        cgroup.after_create().unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("vm/cpuset.cpus")).unwrap(),
            "0-3"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("vm/cpuset.mems")).unwrap(),
            "0"
        );
    }
}

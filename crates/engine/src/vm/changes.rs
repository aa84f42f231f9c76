//! `diff` and `commit`: a VM's changes, read and written back.

use std::path::{Component, PathBuf};

use super::{Engine, VmError};
use crate::changes::commit::{self, Aborted, Files, Options, Outcome};
use crate::changes::diff::{self, Change, Filter};
use crate::changes::discard;
use crate::changes::scan;
use crate::changes::show::{self, Detail};
use crate::layers::{self, Layer};
use crate::store::{VmDir, VmName};

/// The paths a verb on a VM's changes takes: those at or under `paths` (all if
/// empty), less those at or under `exclude`. Each must match a change.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub paths: Vec<PathBuf>,
    pub exclude: Vec<PathBuf>,
}

impl Selection {
    pub fn paths(paths: &[PathBuf]) -> Selection {
        Selection {
            paths: paths.to_vec(),
            exclude: Vec::new(),
        }
    }

    fn filter(&self) -> Result<Filter, VmError> {
        Ok(Filter::new(vm_paths(&self.paths)?).excluding(vm_paths(&self.exclude)?))
    }
}

impl Engine {
    /// What VM `name` changed in `sel`, sorted by path; copy-ups that changed
    /// nothing only with `all`. A running VM can be diffed; its layers are read
    /// as they are. `progress` gets the number of layer entries read so far, now
    /// and then.
    pub fn diff(
        &self,
        name: &VmName,
        sel: &Selection,
        all: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<Change>, VmError> {
        let vm = self.vm(name)?;
        let filter = sel.filter()?;
        let _image = self.layers_image(&vm)?;
        let layers = self.layers(&vm)?;
        let committed =
            commit::committed(&files(&vm)).map_err(|e| changes_error(name, e.into()))?;
        let found = diff::diff(&layers, &filter, &committed, all, progress)
            .map_err(|e| changes_error(name, e.into()))?;
        match found.unmatched {
            Some(path) => Err(no_match(name, path)),
            None => Ok(found.changes),
        }
    }

    /// Both sides of each change [`Engine::diff`] lists, for `diff -u`, given
    /// to `each` one at a time (an error from it stops the reading and is
    /// returned as it is).
    pub fn diff_details(
        &self,
        name: &VmName,
        sel: &Selection,
        all: bool,
        each: &mut dyn FnMut(Detail) -> std::io::Result<()>,
    ) -> Result<(), VmError> {
        let vm = self.vm(name)?;
        let filter = sel.filter()?;
        let _image = self.layers_image(&vm)?;
        let layers = self.layers(&vm)?;
        let committed =
            commit::committed(&files(&vm)).map_err(|e| changes_error(name, e.into()))?;
        let items =
            scan::scan(&layers, &filter, &committed).map_err(|e| changes_error(name, e.into()))?;
        if let Some(path) = filter.unmatched(&items) {
            return Err(no_match(name, path.to_owned()));
        }
        let items: Vec<_> = items
            .into_iter()
            .filter(|i| filter.selects(&i.path) && (all || !i.same))
            .collect();
        show::details(&layers, &items, each).map_err(|e| changes_error(name, e.into()))
    }

    /// Drop VM `name`'s changes at or under `paths`, so that it sees the host's
    /// version there again (see [`discard::discard`]). The VM must not be
    /// running: overlayfs doesn't support changing the upper layer of a mounted
    /// overlay, and a suspended VM still has it mounted.
    pub fn discard(
        &self,
        name: &VmName,
        paths: &[PathBuf],
        dry_run: bool,
    ) -> Result<Vec<Change>, VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        let filter = Filter::new(vm_paths(paths)?);
        let state = self.reconcile(&vm)?;
        if state.live_init(&self.cgroup_leaf(name)).is_some() && !dry_run {
            return Err(VmError::DiscardRunning {
                name: name.to_string(),
            });
        }
        let files = files(&vm);
        if files.journal.exists() {
            return Err(VmError::DiscardUnfinishedCommit {
                name: name.to_string(),
            });
        }
        let _image = self.layers_image(&vm)?;
        if !dry_run {
            let policy = self.policy(&vm)?;
            self.check_layers_trusted(&vm, &vm.layers_path(&policy))?;
        }
        let layers = self.layers(&vm)?;
        if !dry_run {
            // Entries committed while the VM ran go first (as a commit of the
            // stopped VM does), so that their record names no discarded entry.
            commit::deferred::settle(&files.committed)
                .map_err(|e| changes_error(name, e.into()))?;
        }
        let committed = commit::committed(&files).map_err(|e| changes_error(name, e.into()))?;
        let done = discard::discard(&layers, &filter, &committed, dry_run)
            .map_err(|e| changes_error(name, e.into()))?;
        match done.unmatched {
            Some(path) => Err(no_match(name, path)),
            None => Ok(done.changes),
        }
    }

    /// VM `name`'s layers (one per host mount it changed), to read its files
    /// by; the VM should be stopped.
    pub fn layers_of(&self, name: &VmName) -> Result<Vec<Layer>, VmError> {
        let vm = self.vm(name)?;
        self.layers(&vm)
    }

    /// Write VM `name`'s changes under `paths` (all if empty) back to the host. A
    /// running VM is frozen while it happens. With conflicts, nothing is written
    /// and the outcome lists them.
    pub fn commit(
        &self,
        name: &VmName,
        sel: &Selection,
        opts: Options,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Outcome, VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        let filter = sel.filter()?;
        let state = self.reconcile(&vm)?;
        let running = state.live_init(&self.cgroup_leaf(name)).is_some();
        let _image = self.layers_image(&vm)?;
        if !running {
            let policy = self.policy(&vm)?;
            self.check_layers_trusted(&vm, &vm.layers_path(&policy))?;
        }
        let layers = self.layers(&vm)?;
        let files = files(&vm);
        if !running {
            // Entries committed while the VM ran can go now that nothing uses them.
            commit::deferred::settle(&files.committed)
                .map_err(|e| changes_error(name, e.into()))?;
        }
        let cgroup = self.cgroup(name)?;
        // A suspended VM is frozen already, and stays so afterwards (a freeze
        // left by a commit that died was thawed by `reconcile`).
        let suspended = running && cgroup.frozen();
        if running && !suspended {
            self.freeze_own(&vm, &cgroup)?;
        }
        let opts = Options { running, ..opts };
        let result = commit::commit(&layers, &filter, opts, &files, progress);
        if running && !suspended {
            self.thaw_own(&vm, &cgroup)?;
        } else {
            // Directories recorded earlier may have just become empty.
            commit::deferred::settle(&files.committed)
                .map_err(|e| changes_error(name, e.into()))?;
        }
        let outcome = result.map_err(|e| changes_error(name, e.into()))?;
        match outcome.unmatched {
            Some(path) => Err(no_match(name, path)),
            None => Ok(outcome),
        }
    }

    /// Drop VM `name`'s interrupted commit (see [`commit::abort`]).
    pub fn commit_abort(&self, name: &VmName) -> Result<Aborted, VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        let state = self.reconcile(&vm)?;
        let running = state.live_init(&self.cgroup_leaf(name)).is_some();
        let _image = self.layers_image(&vm)?;
        // Without the VM's layers (an unreadable policy) nothing in the journal
        // can be checked, so nothing it names is touched.
        let layers = self.layers(&vm).unwrap_or_default();
        commit::abort(&files(&vm), &layers, running).map_err(|e| changes_error(name, e.into()))
    }

    /// With the VM's lock held: finish or drop an unfinished commit (see
    /// [`commit::settle_unfinished`]), before the VM's files go (`delete`) or in
    /// `doctor --cleanup`. `running`: the VM runs.
    pub(super) fn settle_unfinished_commit(
        &self,
        vm: &VmDir,
        running: bool,
    ) -> Result<Option<String>, VmError> {
        let files = files(vm);
        if !files.journal.exists() {
            return Ok(None);
        }
        // (An image that can't be mounted leaves no layers to check: the journal
        // is then dropped without touching the host.)
        let _image = self.layers_image(vm).ok().flatten();
        let layers = self.layers(vm).unwrap_or_default();
        commit::settle_unfinished(&files, &layers, running)
            .map_err(|e| changes_error(vm.name(), e.into()))
    }

    fn layers(&self, vm: &VmDir) -> Result<Vec<Layer>, VmError> {
        let policy = self.policy(vm)?;
        layers::layers(&vm.layers_path(&policy)).map_err(|e| changes_error(vm.name(), e.into()))
    }

    /// Before a VM starts: finish the layer's cleanup of a commit killed during
    /// it (the VM would see its layer half-way), and drop the layer entries
    /// committed while it last ran.
    pub(super) fn settle_commits(&self, vm: &VmDir) -> Result<(), VmError> {
        let files = files(vm);
        if files.journal.exists() {
            let layers = self.layers(vm)?;
            commit::finish_cleanup(&files, &layers)
                .map_err(|e| changes_error(vm.name(), e.into()))?;
        }
        commit::deferred::settle(&files.committed)
            .map(drop)
            .map_err(|e| changes_error(vm.name(), e.into()))
    }
}

pub(super) fn files(vm: &VmDir) -> Files {
    Files {
        journal: vm.path().join("commit.journal"),
        committed: vm.path().join("committed.json"),
        deleted: vm.path().join("commit-deleted.json"),
    }
}

fn changes_error(name: &VmName, source: super::ChangesError) -> VmError {
    VmError::changes(name)(source)
}

fn no_match(name: &VmName, path: PathBuf) -> VmError {
    VmError::NoMatch {
        name: name.to_string(),
        path,
    }
}

/// Paths as the VM sees them: absolute (a relative one is taken from `/`; the
/// command line makes them absolute from its working directory first), with
/// `.` and `..` resolved by name alone (never through a symlink, on the host or
/// in the VM), and no trailing slash. A path that leads above `/` is an error.
pub fn vm_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VmError> {
    paths
        .iter()
        .map(|p| {
            let mut clean = PathBuf::from("/");
            for c in p.components() {
                match c {
                    Component::Normal(n) => clean.push(n),
                    Component::RootDir | Component::CurDir => {}
                    Component::ParentDir if clean.pop() => {}
                    Component::ParentDir | Component::Prefix(_) => {
                        return Err(VmError::BadPath { path: p.clone() });
                    }
                }
            }
            Ok(clean)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn paths_are_made_absolute_and_clean() {
        let got = vm_paths(&["etc/".into(), "/usr/./bin".into()]).unwrap();
        assert_eq!(got, [Path::new("/etc"), Path::new("/usr/bin")]);
        let got = vm_paths(&["/etc/../root".into(), "/a/./b/../c/".into()]).unwrap();
        assert_eq!(got, [Path::new("/root"), Path::new("/a/c")]);
        assert!(vm_paths(&["/etc/../..".into()]).is_err());
        assert!(vm_paths(&["/..".into()]).is_err());
    }
}

//! Making a VM directory: atomically, by `rename` of a complete temp directory.
//!
//! `rename(RENAME_NOREPLACE)` is the one step that makes a VM appear, so a crash
//! at any point before it leaves only a `.new-*` directory that `sweep` removes,
//! and two creates of one name can't both win. A VM's `--dir` is claimed first,
//! with an owner mark, because fvm deletes that directory with the VM.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::{HIDE_PENDING, Lock, OWNER_MARK, Policy, Store, StoreError, VmDir, VmName, files};

impl Store {
    /// Create a VM with its policy, atomically. Takes the store lock.
    pub fn create_vm(&self, policy: &Policy) -> Result<VmDir, StoreError> {
        self.create_vm_with(policy, |_| Ok(()))
    }

    /// Create a VM atomically once `fill` has put its content (the layers of a
    /// copy) into the VM's temporary directory: nothing of the name appears in
    /// the store until everything is there, and on an error nothing is left.
    ///
    /// The store lock is held while the name is checked and the temporary
    /// directory made, and again for the rename into place, but not during
    /// `fill`, which may take minutes. Meanwhile the temporary directory's lock
    /// file, which becomes the VM's lock, is held, so that [`Store::sweep`] leaves
    /// the directory alone until its maker is gone.
    pub fn create_vm_with(
        &self,
        policy: &Policy,
        fill: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<VmDir, StoreError> {
        let name = &policy.name;
        let path = self.vms().join(name.as_str());
        let fail = |source| StoreError::Create {
            name: name.to_string(),
            path: path.clone(),
            source,
        };
        let (tmp, vm_lock) = {
            let _lock = self.lock()?;
            if path.exists() {
                return Err(StoreError::Exists {
                    name: name.to_string(),
                });
            }
            if let Some(dir) = &policy.dir {
                self.claim_dir(dir, name)?;
                // In the index before the VM can exist: every VM that starts from
                // now on covers it (and `Engine::create` covers it in those
                // already running before the VM may start).
                if let Err(e) = self.set_dirs(|dirs| {
                    if !dirs.contains(dir) {
                        dirs.push(dir.clone());
                    }
                }) {
                    let _ = self.release_dir(dir);
                    return Err(fail(e));
                }
            }
            let tmp = self.vms().join(format!(
                ".new-{name}-{}-{}",
                std::process::id(),
                NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            match make_vm_dir(&tmp, policy) {
                Ok(lock) => (tmp, lock),
                Err(e) => {
                    self.undo_create(&tmp, policy);
                    return Err(fail(e));
                }
            }
        };
        let filled = fill(&tmp);
        let _lock = match self.lock() {
            Ok(lock) => lock,
            Err(e) => {
                self.undo_create(&tmp, policy);
                return Err(e);
            }
        };
        let made = filled.and_then(|()| {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &tmp,
                rustix::fs::CWD,
                &path,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(io::Error::from)
        });
        if let Err(e) = made {
            self.undo_create(&tmp, policy);
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                StoreError::Exists {
                    name: name.to_string(),
                }
            } else {
                fail(e)
            });
        }
        drop(vm_lock);
        Ok(VmDir {
            name: name.clone(),
            path,
        })
    }

    /// Remove what a failed create made (best effort: `sweep` finds the rest).
    fn undo_create(&self, tmp: &Path, policy: &Policy) {
        let _ = files::remove_tree(tmp);
        if let Some(dir) = &policy.dir {
            let _ = self.release_dir(dir);
            let _ = self.set_dirs(|dirs| dirs.retain(|d| d != dir));
        }
    }

    /// `--dir` must be a new or empty directory outside the store: fvm deletes it with
    /// the VM, so it must never adopt a directory that holds someone's data.
    fn claim_dir(&self, dir: &Path, name: &VmName) -> Result<(), StoreError> {
        if dir.starts_with(&self.root) {
            return Err(StoreError::DirInStore {
                path: dir.to_owned(),
            });
        }
        self.new_or_empty_dir(dir)?;
        files::write_atomic(
            &dir.join(OWNER_MARK),
            self.owner_mark(name).as_bytes(),
            0o600,
        )
        .map_err(|source| StoreError::Open {
            path: dir.join(OWNER_MARK),
            source,
        })
    }

    /// Give VM `name`'s `--dir` a new inode, once every running VM covers its
    /// path and before the VM first starts: a process of a VM that opened the
    /// directory before it was covered (as its working directory, say; it may have
    /// existed empty before the create) still reaches the old inode, and through
    /// it whatever is made in it. The old one is removed in place and a new one
    /// made at the path, with the owner mark. Refused unless the directory holds
    /// nothing but the VM's owner mark.
    ///
    /// Never renamed aside first: a second name for the covered inode would let a
    /// VM move its cover. The kernel keeps one dentry per directory inode, so a
    /// VM's lookup of the other name moves the dentry the cover is mounted on
    /// there, and the path is left uncovered over the new directory.
    pub fn renew_dir(&self, dir: &Path, name: &VmName) -> Result<(), StoreError> {
        let fail = |source| StoreError::Open {
            path: dir.to_owned(),
            source,
        };
        let only_mark = std::fs::read_dir(dir)
            .map_err(fail)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(fail)?
            == [OWNER_MARK];
        if !only_mark || !self.owns_dir(dir, name) {
            return Err(StoreError::DirInUse {
                path: dir.to_owned(),
            });
        }
        let (Some(parent), Some(leaf)) = (dir.parent(), dir.file_name()) else {
            return Err(fail(io::ErrorKind::InvalidInput.into()));
        };
        // A VM that starts checks its covers under the store lock (see
        // `Engine::launch`): it never sees the path between the rename and the
        // new directory.
        let _lock = self.lock()?;
        let removed = || -> io::Result<()> {
            use rustix::fs::{AtFlags, Mode, OFlags};
            let parent_fd = rustix::fs::open(
                parent,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let old = rustix::fs::openat(
                &parent_fd,
                leaf,
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            rustix::fs::unlinkat(&old, OWNER_MARK, AtFlags::empty())?;
            // Fails (ENOTEMPTY) if anything was put in it since the check.
            rustix::fs::unlinkat(&parent_fd, leaf, AtFlags::REMOVEDIR)?;
            Ok(())
        };
        removed().map_err(|source| StoreError::Delete {
            path: dir.to_owned(),
            source,
        })?;
        self.claim_dir(dir, name)
    }

    /// What a VM's `--dir` holds to prove it is fvm's to delete.
    pub(super) fn owner_mark(&self, name: &VmName) -> String {
        format!(
            "layers of fvm vm {name:?} in store {}\n",
            self.root.display()
        )
    }

    fn new_or_empty_dir(&self, dir: &Path) -> Result<(), StoreError> {
        match std::fs::read_dir(dir).map(|mut entries| entries.next().is_none()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::DirInUse {
                path: dir.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Open {
                    path: dir.to_owned(),
                    source,
                }),
            Err(_) => Err(StoreError::DirInUse {
                path: dir.to_owned(),
            }),
        }
    }
}

/// Tells apart the temporary directories of creates in one process.
static NEXT_TMP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A new VM directory at `tmp` with its policy, and its lock, held.
fn make_vm_dir(tmp: &Path, policy: &Policy) -> io::Result<Lock> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(tmp.parent().unwrap_or(tmp))?;
    std::fs::DirBuilder::new().mode(0o700).create(tmp)?;
    let lock = Lock::exclusive(&tmp.join("lock"))?;
    files::write_atomic(&tmp.join("vm.toml"), policy.to_toml().as_bytes(), 0o644)?;
    if policy.dir.is_some() {
        // Until the VMs that already run cover the `--dir`, the VM must not start
        // (see `Engine::create`).
        files::write_atomic(&tmp.join(HIDE_PENDING), b"", 0o600)?;
    }
    Ok(lock)
}

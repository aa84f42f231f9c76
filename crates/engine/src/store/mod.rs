//! The VM store: one directory per VM under a store root.
//!
//! ```text
//! <root>/lock            store-wide lock: create, delete and the dirs index
//! <root>/dirs            VM layer directories kept outside the store (`--dir`)
//! <root>/vms/<name>/     vm.toml (policy), state.json, lock, root/ (mount point
//!                        of the VM's root while it starts), layers/<mount>/{upper,work},
//!                        hide-pending (a `--dir` VM not yet covered in every running VM),
//!                        logs/ (its services' and detached commands' output)
//! ```
//!
//! A VM directory appears by `rename` of a complete temp directory and disappears by
//! `rename` into the trash first, so a crash never leaves a half-made VM in `list`.

mod create;
pub mod end;
mod name;
mod policy;
pub mod service;
mod state;

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::os::files;
pub use crate::os::files::Lock;
pub use end::{Cause, End, Subject};
pub use name::{NameError, VmName};
pub use policy::{Policy, PolicyError};
pub use state::{StartMode, State, StateError, Status};

/// The file in a VM's `--dir` that marks it as that VM's.
pub(crate) const OWNER_MARK: &str = ".fvm-owner";

/// In a VM's directory: its `--dir` is not known to be covered in every VM that
/// ran before it was made.
const HIDE_PENDING: &str = "hide-pending";

/// How a deleted VM's directory is renamed in `vms/` until it is removed.
const TRASH: &str = ".trash-";

/// The default store root.
pub const DEFAULT_ROOT: &str = "/var/lib/fvm";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path} does not exist")]
    Missing { path: PathBuf },
    #[error("store {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot open store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vm {name:?} does not exist")]
    NoSuchVm { name: String },
    #[error("vm {name:?} already exists")]
    Exists { name: String },
    #[error("cannot create vm {name:?} at {path}")]
    Create {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot use {path} as the vm's dir: it exists and is not an empty directory")]
    DirInUse { path: PathBuf },
    #[error("cannot use {path} as the vm's dir: it is inside the store")]
    DirInStore { path: PathBuf },
    #[error("cannot delete {path}")]
    Delete {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An opened store root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    id: String,
}

impl Store {
    /// Open an existing store root. An empty directory is a valid, empty store.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let canonical = match std::fs::canonicalize(root) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    path: root.to_owned(),
                });
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: root.to_owned(),
                    source,
                });
            }
        };
        if !canonical.is_dir() {
            return Err(StoreError::NotADirectory { path: canonical });
        }
        Ok(Store {
            id: store_id(&canonical),
            root: canonical,
        })
    }

    /// Open the store, creating the root directory (mode 0700) if it is missing.
    pub fn open_or_create(root: &Path) -> Result<Store, StoreError> {
        if !root.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|source| StoreError::Open {
                    path: root.to_owned(),
                    source,
                })?;
        }
        Self::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A short id for this store, used to keep host-side names (cgroups) of VMs in
    /// different stores apart.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn vms(&self) -> PathBuf {
        self.root.join("vms")
    }

    /// Take the store-wide lock (create, delete).
    pub fn lock(&self) -> Result<Lock, StoreError> {
        let path = self.root.join("lock");
        Lock::exclusive(&path).map_err(|source| StoreError::Lock { path, source })
    }

    /// Names of all VMs, sorted.
    pub fn names(&self) -> Result<Vec<VmName>, StoreError> {
        let dir = match std::fs::read_dir(self.vms()) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Open {
                    path: self.vms(),
                    source,
                });
            }
        };
        let mut names: Vec<VmName> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| VmName::new(e.file_name().to_str()?).ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The directory of an existing VM.
    pub fn vm(&self, name: &VmName) -> Result<VmDir, StoreError> {
        let path = self.vms().join(name.as_str());
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Ok(VmDir {
                name: name.clone(),
                path,
            }),
            _ => Err(StoreError::NoSuchVm {
                name: name.to_string(),
            }),
        }
    }

    /// Remove a VM's `--dir`, its owner mark last: a delete killed half-way
    /// leaves the mark, so the next command can still tell the rest is the VM's
    /// and finish the job.
    fn release_dir(&self, dir: &Path) -> io::Result<()> {
        files::remove_tree_last(dir, OWNER_MARK)
    }

    /// Whether `dir` carries VM `name`'s owner mark (false if it is gone).
    pub fn owns_dir(&self, dir: &Path, name: &VmName) -> bool {
        files::read_regular(&dir.join(OWNER_MARK)).is_ok_and(|mark| mark == self.owner_mark(name))
    }

    /// Delete a VM's `--dir`, but only if it carries this VM's owner mark: a policy
    /// edited (or planted) to name another directory must not make fvm delete it.
    fn release_owned_dir(&self, dir: &Path, name: &VmName) -> io::Result<()> {
        match files::read_regular(&dir.join(OWNER_MARK)) {
            Ok(mark) if mark == self.owner_mark(name) => self.release_dir(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => Ok(()),
            _ => {
                tracing::warn!(
                    "vm {:?}: not deleting {}: it lacks the vm's owner mark ({OWNER_MARK})",
                    name.as_str(),
                    dir.display()
                );
                Ok(())
            }
        }
    }

    /// Delete a stopped VM and its layers, here and now (see [`Store::trash_vm`]
    /// and [`Store::empty_trash`]).
    pub fn delete_vm(&self, vm: &VmDir) -> Result<(), StoreError> {
        let trash = self.trash_vm(vm)?;
        self.empty_trash(&trash)
    }

    /// Take a stopped VM out of the store at once: its directory is renamed into
    /// the store's trash (`.trash-NAME-PID`) under the store lock. The VM is
    /// gone (its name free again) when this returns; its layers, in the store
    /// or in its `--dir`, go with [`Store::empty_trash`], by the caller, which
    /// should hold the VM's lock meanwhile (it moved with the directory): a
    /// trash whose lock is held is left alone by [`Store::finish_deletes`] and
    /// `sweep`, and one whose holder died is emptied by them.
    pub fn trash_vm(&self, vm: &VmDir) -> Result<PathBuf, StoreError> {
        let _lock = self.lock()?;
        let trash = self
            .vms()
            .join(format!("{TRASH}{}-{}", vm.name, std::process::id()));
        std::fs::rename(&vm.path, &trash).map_err(|source| StoreError::Delete {
            path: vm.path.clone(),
            source,
        })?;
        Ok(trash)
    }

    /// Remove a deleted VM's layers: its `--dir` first (named by the policy in
    /// the trash, and only if it carries the VM's owner mark), then the trash,
    /// its lock file last. The long part, the layers, is removed without the
    /// store lock; the `--dir`'s owner mark, the directory itself and its line
    /// in the index go under it, so a create can't claim the path in between.
    /// Killed at any point, what is left is a trash holding the policy (and the
    /// `--dir` its owner mark), which the next command finishes.
    pub fn empty_trash(&self, trash: &Path) -> Result<(), StoreError> {
        self.release_dir_of_trash(trash, false)?;
        remove_trash(trash)
    }

    /// Have a process of its own (`fvm-delete`, detached) empty `trash` (see
    /// [`Store::empty_trash`]) once it has the VM's lock, which moved into the
    /// trash with its directory: the caller, if it holds that lock, lets go of
    /// it when it is done. An error if the process can't be started.
    pub fn empty_trash_in_background(&self, trash: &Path) -> io::Result<()> {
        let (store, trash) = (self.clone(), trash.to_owned());
        crate::os::detach::spawn_detached(c"fvm-delete", move || {
            match Lock::exclusive(&trash.join("lock")) {
                Ok(_lock) => i32::from(store.empty_trash(&trash).is_err()),
                // Removed by someone else meanwhile.
                Err(_) => 0,
            }
        })
    }

    /// Remove what crashed creates and deletes left behind (`.new-*`, `.trash-*`).
    /// Takes the store lock, so it never races a create or delete in progress.
    pub fn sweep(&self) -> Result<Vec<PathBuf>, StoreError> {
        let _lock = self.lock()?;
        self.remove_leftovers(false)
    }

    /// Finish deletes that were interrupted (killed, or the machine went down):
    /// each left a `.trash-*` directory holding the VM's layers, which a process
    /// of its own removes (a large one would hold up the command for seconds;
    /// here, if no process can be started); and remove what creates and copies
    /// that were killed left (a `.new-*` directory whose lock nobody holds).
    /// Every command on the store calls this first. It does nothing while
    /// another command holds the store lock.
    pub fn finish_deletes(&self) -> Result<Vec<PathBuf>, StoreError> {
        // Trash, and the half-made directories of creates and copies that were
        // killed (one still at work holds its directory's lock, and is left alone).
        let leftover = |n: &std::ffi::OsStr| {
            n.as_bytes().starts_with(TRASH.as_bytes()) || n.as_bytes().starts_with(b".new-")
        };
        let any = std::fs::read_dir(self.vms())
            .map(|d| d.filter_map(Result::ok).any(|e| leftover(&e.file_name())))
            .unwrap_or(false);
        if !any {
            return Ok(Vec::new());
        }
        let path = self.root.join("lock");
        match Lock::try_exclusive(&path) {
            Ok(Some(_lock)) => self.remove_leftovers(true),
            Ok(None) => Ok(Vec::new()),
            Err(source) => Err(StoreError::Lock { path, source }),
        }
    }

    /// Remove the `.new-*` directories whose create is gone and the `.trash-*`
    /// ones nobody is emptying: here, or with `background` by a process of
    /// their own; the caller holds the store lock.
    fn remove_leftovers(&self, background: bool) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.vms()) else {
            return Ok(removed);
        };
        for e in entries.filter_map(Result::ok) {
            let n = e.file_name();
            let n = n.as_bytes();
            let new = n.starts_with(b".new-");
            // A create (or copy) still filling its directory holds its lock.
            if new && matches!(Lock::try_exclusive(&e.path().join("lock")), Ok(None)) {
                continue;
            }
            if new {
                self.release_dir_of_crashed_create(&e.path(), &e.file_name().to_string_lossy());
            }
            let trash = !new && n.starts_with(TRASH.as_bytes());
            // A delete still removing its trash holds the VM's lock in it. (A
            // sweep gives one a moment: the remover a command just started for
            // a small trash is done by then.)
            let lock = e.path().join("lock");
            let held = || files::is_locked(&lock);
            if trash && held() && (background || !released_soon(held)) {
                continue;
            }
            if trash && background && self.empty_trash_in_background(&e.path()).is_ok() {
                removed.push(e.path());
                continue;
            }
            if new || trash {
                if !new {
                    self.release_dir_of_trash(&e.path(), true)?;
                }
                files::remove_tree(&e.path()).map_err(|source| StoreError::Delete {
                    path: e.path(),
                    source,
                })?;
                removed.push(e.path());
            }
        }
        Ok(removed)
    }

    /// A create that died before its VM appeared (`.new-NAME-PID-N`) leaves the
    /// `--dir` it claimed, marked as NAME's and in the index: both go.
    fn release_dir_of_crashed_create(&self, tmp: &Path, entry: &str) {
        let Some(name) = entry
            .strip_prefix(".new-")
            .and_then(|rest| rest.rsplitn(3, '-').nth(2))
            .and_then(|n| VmName::new(n).ok())
        else {
            return;
        };
        let Ok(policy) = Policy::load(&tmp.join("vm.toml"), &name) else {
            return;
        };
        if let Some(dir) = &policy.dir
            && self.owns_dir(dir, &name)
            && self.release_dir(dir).is_ok()
        {
            let _ = self.set_dirs(|dirs| dirs.retain(|d| d != dir));
        }
    }

    /// The `--dir` of a deleted VM (named by the policy in its trash,
    /// `.trash-NAME-PID`), released: removed if it carries the VM's owner mark,
    /// and taken out of the index. `locked`: the caller holds the store lock;
    /// else it is taken for the last step only.
    fn release_dir_of_trash(&self, trash: &Path, locked: bool) -> Result<(), StoreError> {
        let name = trash
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(TRASH))
            .and_then(|n| n.rsplit_once('-'))
            .and_then(|(name, _pid)| VmName::new(name).ok());
        let Some(name) = name else {
            return Ok(());
        };
        // Gone with the first files removed (the dir was released before that).
        let Ok(policy) = Policy::load(&trash.join("vm.toml"), &name) else {
            return Ok(());
        };
        let Some(dir) = policy.dir else {
            return Ok(());
        };
        let fail = |source| StoreError::Delete {
            path: dir.clone(),
            source,
        };
        if self.owns_dir(&dir, &name) {
            // Its layers, all but the owner mark, which keeps telling the rest
            // is the VM's if this is cut short.
            files::remove_all_but(&dir, OWNER_MARK).map_err(fail)?;
        }
        let _lock = if locked { None } else { Some(self.lock()?) };
        self.release_owned_dir(&dir, &name).map_err(fail)?;
        self.set_dirs(|dirs| dirs.retain(|d| *d != dir))
            .map_err(|source| StoreError::Delete {
                path: self.root.join("dirs"),
                source,
            })
    }

    /// Every host path where VM layers live: the store root and all `--dir`s. These
    /// are hidden inside every VM.
    pub fn private_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.root.clone()];
        paths.extend(self.dirs());
        paths
    }

    /// The index of the store's `--dir`s.
    pub fn dirs(&self) -> Vec<PathBuf> {
        files::read_regular(&self.root.join("dirs"))
            .map(|t| {
                t.lines()
                    .filter(|l| l.starts_with('/'))
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_dirs(&self, change: impl FnOnce(&mut Vec<PathBuf>)) -> io::Result<()> {
        let mut dirs = self.dirs();
        change(&mut dirs);
        let mut text = String::new();
        for d in &dirs {
            text.push_str(&d.to_string_lossy());
            text.push('\n');
        }
        files::write_atomic(&self.root.join("dirs"), text.as_bytes(), 0o600)
    }
}

/// Whether `held()` turns false within a second.
fn released_soon(held: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if !held() {
            return true;
        }
    }
    false
}

/// FNV-1a of the canonical root path, as 8 hex digits.
fn store_id(root: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u32 = 0x811c_9dc5;
    for b in root.as_os_str().as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// One VM's directory in the store.
#[derive(Debug, Clone)]
pub struct VmDir {
    name: VmName,
    path: PathBuf,
}

impl VmDir {
    pub fn name(&self) -> &VmName {
        &self.name
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn policy_path(&self) -> PathBuf {
        self.path.join("vm.toml")
    }
    pub fn state_path(&self) -> PathBuf {
        self.path.join("state.json")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.path.join("lock")
    }
    /// The boot of the host in which the VM last started with volatile layers.
    pub fn volatile_boot_path(&self) -> PathBuf {
        self.path.join("volatile-boot")
    }
    /// Present while the VM's `--dir` may still be visible in a VM that ran
    /// before it was made: the VM can't start until it is gone.
    pub fn hide_pending_path(&self) -> PathBuf {
        self.path.join(HIDE_PENDING)
    }
    /// Where the VM's root is assembled (inside its own mount namespace) at start.
    /// The project id of the VM's layers, for its `disk` and `inodes` limits
    /// (see `mounts::disk`).
    pub fn project_path(&self) -> PathBuf {
        self.path.join("project")
    }

    /// The filesystem image holding the VM's layers, on a host without project
    /// quotas (see `mounts::disk`).
    pub fn image_path(&self) -> PathBuf {
        self.path.join("disk.img")
    }

    pub fn staging_path(&self) -> PathBuf {
        self.path.join("root")
    }

    /// The VM's logs (see [`crate::logs`]): in the store, never in its layers.
    pub fn logs_path(&self) -> PathBuf {
        self.path.join("logs")
    }
    /// Where the VM's layers live: its `dir` if set, else inside the store.
    pub fn layers_path(&self, policy: &Policy) -> PathBuf {
        policy
            .dir
            .clone()
            .unwrap_or_else(|| self.path.join("layers"))
    }

    pub fn load_policy(&self) -> Result<Policy, PolicyError> {
        Policy::load(&self.policy_path(), &self.name)
    }
    pub fn load_state(&self) -> Result<State, StateError> {
        State::load(&self.state_path())
    }
    pub fn save_state(&self, state: &State) -> Result<(), StateError> {
        state.save(&self.state_path())
    }
    pub fn save_policy(&self, policy: &Policy) -> Result<(), PolicyError> {
        let path = self.policy_path();
        // Check that what we write reads back as the same policy.
        let text = policy.to_toml();
        Policy::parse(&text, &path, &self.name)?;
        files::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|source| PolicyError::Write { path, source })
    }

    /// Block until this process holds the VM's lock. If the VM was deleted while
    /// we waited, it no longer exists (even if a new VM of the same name does).
    pub fn lock(&self) -> Result<Lock, StoreError> {
        let path = self.lock_path();
        let lock = match Lock::exclusive(&path) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchVm {
                    name: self.name.to_string(),
                });
            }
            Err(source) => return Err(StoreError::Lock { path, source }),
        };
        self.check_lock(lock, &path)
    }

    /// Hold the VM's lock if nobody else does.
    pub fn try_lock(&self) -> Result<Option<Lock>, StoreError> {
        let path = self.lock_path();
        match Lock::try_exclusive(&path) {
            Ok(Some(lock)) => self.check_lock(lock, &path).map(Some),
            Ok(None) => Ok(None),
            Err(source) => Err(StoreError::Lock { path, source }),
        }
    }

    fn check_lock(&self, lock: Lock, path: &Path) -> Result<Lock, StoreError> {
        if lock.is_at(path) {
            Ok(lock)
        } else {
            Err(StoreError::NoSuchVm {
                name: self.name.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests;

/// Remove a VM's trash (see [`Store::trash_vm`]), its lock file last, so that
/// whoever holds that lock keeps the trash to itself until it is empty.
pub fn remove_trash(trash: &Path) -> Result<(), StoreError> {
    files::remove_tree_last(trash, "lock").map_err(|source| StoreError::Delete {
        path: trash.to_owned(),
        source,
    })
}

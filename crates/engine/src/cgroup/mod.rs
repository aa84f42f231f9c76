//! Control groups: one cgroup per VM, on cgroup v2 and on cgroup v1.
//!
//! A VM's processes can double-fork, daemonize and change their session, so the
//! process tree can't be trusted to find them again. The kernel's cgroup
//! membership can: every child of a member is a member, and with `/sys`
//! read-only nothing inside the VM can leave. `fvm` uses that to list (`ps`,
//! `stats`), account (`list`), stop (`kill_all`) and clean up every process of
//! a VM, also after a crash of `fvm` itself.
//!
//! Both layouts are supported. On cgroup v2 a VM is one directory under the
//! unified hierarchy. On cgroup v1 (and the "hybrid" layout, whose cgroup2 mount
//! has no controllers) a VM is one directory per controller hierarchy we use, all
//! with the same name. The version-specific work lives behind the [`Backend`]
//! trait, in `v1.rs` and `v2.rs`; mountinfo parsing lives in `detect.rs`, and
//! the table of limit files in `limits.rs`.

mod control;
mod detect;
pub mod limits;
/// Directories for a log line: space-separated paths.
fn shown(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
mod usage;
mod v1;
mod v2;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use detect::{Hierarchy, Layout};
use limits::LimitWrite;
pub use usage::Usage;

use crate::limits::{Key, Limits};

/// Where the kernel lists mounts of the calling process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The cgroup version in use on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// Errors from detecting, creating, joining, killing or removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read mount table {}", .path.display())]
    Detect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no usable cgroup hierarchy is mounted (need cgroup2, or cgroup v1 with pids, memory, cpu, cpuacct, blkio or freezer)"
    )]
    NoHierarchy,
    #[error("invalid cgroup name {name:?}: must be a single path component")]
    BadName { name: String },
    #[error(
        "invalid cgroup parent {given:?}: {why} (give a cgroup's path from the root of the cgroup hierarchy, e.g. /slurm/uid_0/job_1/step_0)"
    )]
    BadParent { given: String, why: &'static str },
    #[error("cgroup parent {parent} does not exist: no {}", .path.display())]
    NoParent { parent: String, path: PathBuf },
    #[error("cannot create cgroup {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected line {text:?} in {}", .path.display())]
    Parse { path: PathBuf, text: String },
    #[error("cannot move pid {pid} into cgroup {}", .path.display())]
    AddPid {
        path: PathBuf,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot freeze cgroup {}", .path.display())]
    Freeze {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {} did not freeze in time", .path.display())]
    FreezeTimeout { path: PathBuf },
    #[error("no cgroup freezer is mounted, so a running vm can't be frozen")]
    NoFreezer,
    #[error("cannot thaw cgroup {}", .path.display())]
    Thaw {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot kill processes in cgroup {}", .path.display())]
    Kill {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot send sigkill to pid {pid} of cgroup {}", .path.display())]
    Signal {
        path: PathBuf,
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error(
        "cgroup {} still has processes after sigkill: {}",
        .path.display(),
        .pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
    )]
    StillPopulated { path: PathBuf, pids: Vec<i32> },
    #[error("cannot remove cgroup {}", .path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the {key} limit can't be enforced on this host: it needs the cgroup {controller} controller, which is not {}",
        if *.v2 { "enabled" } else { "mounted" }
    )]
    MissingController {
        key: Key,
        controller: &'static str,
        v2: bool,
    },
    #[error("the {key} limit can't be enforced on this host: it has no {}{hint}", .path.display())]
    MissingFile {
        key: Key,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("cannot set the {key} limit: writing {value:?} to {}{hint}", .path.display())]
    Limit {
        key: Key,
        path: PathBuf,
        value: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The host's cgroup layout, detected once per command.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
}

impl Cgroups {
    /// Detects the layout from `/proc/self/mountinfo`.
    ///
    /// On v1 or hybrid hosts this uses the hierarchies that carry pids, memory,
    /// cpu, cpuacct, blkio or freezer; on pure v2 hosts the cgroup2 mount.
    pub fn detect() -> Result<Cgroups, CgroupError> {
        let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Detect {
            path: PathBuf::from(MOUNTINFO),
            source,
        })?;
        let cgroups = Self::from_mountinfo(&text)?;
        tracing::debug!(version = %cgroups.version(), roots = %shown(&cgroups.roots()), "detected cgroups");
        Ok(cgroups)
    }

    /// Detects the layout from mountinfo text in the format of `proc_pid_mountinfo(5)`.
    pub fn from_mountinfo(text: &str) -> Result<Cgroups, CgroupError> {
        detect::parse(text).map(|layout| Cgroups { layout })
    }

    /// A v2 layout rooted at `root`, for tests against a fake cgroupfs.
    pub fn v2_at(root: PathBuf) -> Cgroups {
        Cgroups {
            layout: Layout::V2(root),
        }
    }

    /// A v1 layout with the given `(controllers, mount point)` hierarchies, all used.
    pub fn v1_at(hierarchies: Vec<(Vec<String>, PathBuf)>) -> Cgroups {
        let hierarchies = hierarchies
            .into_iter()
            .map(|(controllers, root)| Hierarchy { controllers, root })
            .collect();
        Cgroups {
            layout: Layout::V1(hierarchies),
        }
    }

    pub fn version(&self) -> Version {
        match self.layout {
            Layout::V1(_) => Version::V1,
            Layout::V2(_) => Version::V2,
        }
    }

    /// Controllers available to VM cgroups.
    ///
    /// v2: the root's `cgroup.controllers`; v1: the controllers of the hierarchies in use.
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        match &self.layout {
            Layout::V2(root) => {
                let path = root.join("cgroup.controllers");
                let text = control::read(&path).map_err(|source| CgroupError::Read {
                    path: path.clone(),
                    source,
                })?;
                Ok(text.split_whitespace().map(str::to_owned).collect())
            }
            Layout::V1(hierarchies) => {
                let mut all: Vec<String> = Vec::new();
                for controller in hierarchies.iter().flat_map(|h| &h.controllers) {
                    if !all.contains(controller) {
                        all.push(controller.clone());
                    }
                }
                Ok(all)
            }
        }
    }

    /// Root directories in use, one per hierarchy.
    pub fn roots(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2(root) => vec![root.clone()],
            Layout::V1(hierarchies) => hierarchies.iter().map(|h| h.root.clone()).collect(),
        }
    }

    /// Names of cgroups directly under any root that start with `prefix` (used to
    /// find leftovers of VMs), sorted and deduplicated.
    pub fn leaves_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut leaves: Vec<String> = self
            .roots()
            .iter()
            .filter_map(|r| std::fs::read_dir(r).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        leaves.sort();
        leaves.dedup();
        leaves
    }

    /// The cgroup of one VM: a directory named `leaf` under each root, or under
    /// a parent cgroup (`parent/leaf`, the parent as [`parent_path`] gives it).
    ///
    /// Each component becomes a directory name in privileged code, so `..`, `.`
    /// or an empty one would let a caller escape the hierarchy: refused.
    pub fn vm(&self, leaf: &str) -> Result<VmCgroup, CgroupError> {
        if leaf
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'))
        {
            return Err(CgroupError::BadName {
                name: leaf.to_owned(),
            });
        }
        let backend: Arc<dyn Backend> = match &self.layout {
            Layout::V2(root) => Arc::new(v2::V2Cgroup::new(root.join(leaf))),
            Layout::V1(hierarchies) if hierarchies.is_empty() => {
                return Err(CgroupError::NoHierarchy);
            }
            Layout::V1(hierarchies) => Arc::new(v1::V1Cgroup::new(hierarchies, leaf)),
        };
        Ok(VmCgroup { backend })
    }

    /// Check that this host can enforce `limits`: every controller they need is
    /// there (mounted on v1, available on v2), and on v1 the files that depend on
    /// kernel options (swap accounting, CFS bandwidth control). Called before a VM
    /// is created, configured or started, so that a limit is never silently ignored.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        let available = self.controllers()?;
        let (writes, v2) = match &self.layout {
            Layout::V1(_) => (limits::v1(limits, false, false), false),
            Layout::V2(_) => (limits::v2(limits, false), true),
        };
        for w in writes.iter().filter(|w| w.required) {
            if !available.iter().any(|c| c == w.controller) {
                return Err(CgroupError::MissingController {
                    key: w.key,
                    controller: w.controller,
                    v2,
                });
            }
            // A v1 root cgroup has the same files as a VM's would (pids.max aside).
            if let Layout::V1(hierarchies) = &self.layout
                && w.file != "pids.max"
                && let Some(h) = hierarchies
                    .iter()
                    .find(|h| h.controllers.iter().any(|c| c == w.controller))
            {
                let path = h.root.join(w.file);
                if !path.exists() {
                    return Err(CgroupError::MissingFile {
                        key: w.key,
                        path,
                        hint: missing_hint(w.file),
                    });
                }
            }
        }
        Ok(())
    }

    /// Check that the parent cgroup `parent` (from [`parent_path`]) exists in
    /// every hierarchy in use: a VM's cgroup is made in it, never the parent
    /// itself (it belongs to whoever asked: a batch scheduler, a systemd scope).
    pub fn check_parent(&self, parent: &str) -> Result<(), CgroupError> {
        for root in self.roots() {
            let path = root.join(parent);
            if !path.is_dir() {
                return Err(CgroupError::NoParent {
                    parent: format!("/{parent}"),
                    path,
                });
            }
        }
        Ok(())
    }

    /// Make the parent cgroup `parent` (from [`parent_path`]) where it is
    /// missing, in every hierarchy in use (an OCI container's `cgroupsPath`).
    pub fn make_parent(&self, parent: &str) -> Result<(), CgroupError> {
        for root in self.roots() {
            let mut dir = root.clone();
            for part in parent.split('/') {
                dir.push(part);
                control::make_dir(&dir)?;
            }
        }
        Ok(())
    }

    /// How a VM sees its cgroup: what to mount under its `/sys/fs/cgroup`.
    pub fn view(&self) -> CgroupView {
        match &self.layout {
            Layout::V2(_) => CgroupView::V2,
            Layout::V1(hierarchies) => {
                CgroupView::V1(hierarchies.iter().map(|h| h.controllers.clone()).collect())
            }
        }
    }
}

/// A parent cgroup as the user gives it (`/a/b` or `a/b`: a path from the root
/// of the cgroup hierarchy, as /proc/PID/cgroup shows it), cleaned to `a/b`.
/// Every component must be a plain name: the result is joined to each
/// hierarchy's root in privileged code and must stay inside it.
pub fn parent_path(given: &str) -> Result<String, CgroupError> {
    let bad = |why| CgroupError::BadParent {
        given: given.to_owned(),
        why,
    };
    if given.len() > 1024 {
        return Err(bad("longer than 1024 bytes"));
    }
    let parts: Vec<&str> = given
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    if parts.iter().all(|p| p.is_empty()) {
        return Err(bad("it names the root cgroup"));
    }
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." {
            return Err(bad("it has an empty, `.` or `..` component"));
        }
        if p.chars().any(char::is_control) {
            return Err(bad("it has a control character"));
        }
    }
    Ok(parts.join("/"))
}

/// What a VM mounts at `/sys/fs/cgroup`, read-only, inside its cgroup namespace
/// (where the root of every hierarchy is the VM's own cgroup).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CgroupView {
    /// Nothing (no cgroup hierarchy the VM is in).
    #[default]
    None,
    /// One cgroup2 mount.
    V2,
    /// A tmpfs with one v1 mount per hierarchy, named by its controllers joined
    /// with commas (`cpu,cpuacct`, with `cpu` and `cpuacct` symlinks to it).
    V1(Vec<Vec<String>>),
}

/// Why a limit file may be missing on an otherwise working cgroup.
fn missing_hint(file: &str) -> &'static str {
    match file {
        f if f.contains("swap") || f.contains("memsw") => {
            " (the kernel's swap accounting is off: boot with swapaccount=1)"
        }
        limits::V1_TCP => {
            " (this kernel can't charge a cgroup v1 for its sockets' buffers, which would escape the limit)"
        }
        f if f.starts_with("cpu.cfs") || f == "cpu.max" => {
            " (the kernel was built without CFS bandwidth control)"
        }
        _ => "",
    }
}

/// The cgroup of one VM, in every hierarchy in use.
#[derive(Debug, Clone)]
pub struct VmCgroup {
    backend: Arc<dyn Backend>,
}

/// The version-specific half of a VM's cgroup: v1 (a directory per controller
/// hierarchy) or v2 (one directory in the unified hierarchy).
trait Backend: std::fmt::Debug + Send + Sync {
    fn version(&self) -> Version;
    /// The VM's directories: one on v2, one per used hierarchy on v1.
    fn dirs(&self) -> &[PathBuf];
    /// The directory holding `controller`'s files, if it is in use.
    fn dir_of(&self, controller: &str) -> Option<&Path>;
    /// Where to list the VM's processes.
    fn procs_dir(&self) -> &Path;
    /// Fix up a just-made cgroup so that tasks can join it and limits work.
    fn after_create(&self) -> Result<(), CgroupError>;
    fn kill_all(&self) -> Result<(), CgroupError>;
    fn freeze(&self, timeout: Duration) -> Result<(), CgroupError>;
    fn thaw(&self) -> Result<(), CgroupError>;
    fn frozen(&self) -> bool;
    fn usage(&self) -> Usage;
    fn memory_current(&self) -> Option<u64>;
    /// Processes the OOM killer ended in the cgroup so far.
    fn oom_kills(&self) -> Option<u64>;
    /// The writes that enforce `limits` (see `limits.rs`); `all` resets unset keys.
    fn limit_writes(&self, limits: &Limits, all: bool) -> Vec<LimitWrite>;
}

impl VmCgroup {
    pub fn version(&self) -> Version {
        self.backend.version()
    }

    /// The VM's cgroup directories: one on v2, one per used hierarchy on v1.
    pub fn dirs(&self) -> &[PathBuf] {
        self.backend.dirs()
    }

    /// Creates the directory in every hierarchy. Existing directories are kept.
    pub fn create(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            control::make_dir(dir)?;
        }
        self.backend.after_create()?;
        tracing::debug!(dirs = %shown(self.dirs()), "created cgroup");
        Ok(())
    }

    /// Enforce `limits`. `all` also resets the keys `limits` leaves unset (for a
    /// live change of a running VM); without it only set keys are written (for a
    /// new cgroup). Stops at the first failure: the caller puts the old limits back.
    pub fn set_limits(&self, limits: &Limits, all: bool) -> Result<(), CgroupError> {
        for w in self.backend.limit_writes(limits, all) {
            let Some(dir) = self.backend.dir_of(w.controller) else {
                if w.required {
                    return Err(CgroupError::MissingController {
                        key: w.key,
                        controller: w.controller,
                        v2: self.version() == Version::V2,
                    });
                }
                continue;
            };
            let path = dir.join(w.file);
            match control::write(&path, w.value.as_bytes()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && !w.required => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(CgroupError::MissingFile {
                        key: w.key,
                        hint: missing_hint(w.file),
                        path,
                    });
                }
                Err(source) => {
                    let hint = match source.raw_os_error() {
                        Some(libc::EBUSY) => {
                            " (the vm uses more than that now, and it can't be reclaimed)"
                        }
                        _ => "",
                    };
                    return Err(CgroupError::Limit {
                        key: w.key,
                        path,
                        value: w.value,
                        hint,
                        source,
                    });
                }
            }
        }
        tracing::debug!(dirs = %shown(self.dirs()), %limits, all, "limits set");
        Ok(())
    }

    /// True if the directory exists in any hierarchy, so a half-made or
    /// half-removed cgroup still counts as something to clean up.
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|dir| dir.is_dir())
    }

    /// What a new process of the VM needs to start inside this cgroup; opened in
    /// the parent, so the child only has to use it. See [`Entry`].
    pub fn entry(&self) -> Result<Entry, CgroupError> {
        match self.version() {
            Version::V2 => {
                let dir = &self.dirs()[0];
                rustix::fs::open(
                    dir,
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map(Entry::CloneInto)
                .map_err(|e| CgroupError::Open {
                    path: dir.clone(),
                    source: e.into(),
                })
            }
            Version::V1 => self
                .dirs()
                .iter()
                .map(|dir| {
                    let path = dir.join("tasks");
                    control::open_write(&path).map_err(|source| CgroupError::Open { path, source })
                })
                .collect::<Result<_, _>>()
                .map(Entry::Tasks),
        }
    }

    /// Moves the process `pid` (all its threads) into the cgroup in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            let path = procs_file(dir);
            control::write(&path, pid.to_string().as_bytes()).map_err(|source| {
                CgroupError::AddPid {
                    path: dir.clone(),
                    pid,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Host pids of every process in the cgroup and its sub-cgroups, sorted.
    /// Empty if the cgroup does not exist.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        control::pids_under(self.backend.procs_dir())
    }

    /// SIGKILLs every process in the cgroup and waits until none is left.
    ///
    /// Gives up with [`CgroupError::StillPopulated`] after about two seconds
    /// (a task stuck in uninterruptible sleep can't die sooner). Only pids read
    /// from this cgroup's own `cgroup.procs` files are signalled. A cgroup that
    /// doesn't exist is already empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if !self.exists() {
            return Ok(());
        }
        self.backend.kill_all()?;
        tracing::debug!(dirs = %shown(self.dirs()), "killed every process in cgroup");
        Ok(())
    }

    /// Removes the cgroup (and any sub-cgroups) from every hierarchy.
    ///
    /// Missing directories are fine, so this also cleans up after a crash
    /// between create and remove. The processes must be gone already
    /// ([`VmCgroup::kill_all`]); a cgroup that stays busy for about a second is an error.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut retry = control::Retry::new(control::REMOVE_TIMEOUT);
        let mut first_error = None;
        // Try every hierarchy even after a failure, so that one stuck
        // directory doesn't leave the others behind.
        for dir in self.dirs() {
            if let Err(err) = control::remove_tree(dir, &mut retry) {
                tracing::debug!(dir = %dir.display(), %err, "cannot remove cgroup");
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Freeze every process of the VM (cgroup freezer) and wait until they are; on
    /// failure nothing stays frozen. Undo with [`VmCgroup::thaw`].
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.backend.freeze(Duration::from_secs(5))
    }

    /// Whether the VM's processes are frozen (or being frozen): what `suspend`
    /// leaves and `resume` undoes. A missing cgroup or freezer is not frozen.
    pub fn frozen(&self) -> bool {
        self.backend.frozen()
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.backend.thaw()
    }

    /// Remove the cgroup if it is empty (no process, no sub-cgroup), without
    /// listing anything: one rmdir per hierarchy. Returns whether it is gone; if
    /// not, use [`VmCgroup::kill_all`] and [`VmCgroup::remove`].
    pub fn remove_if_empty(&self) -> Result<bool, CgroupError> {
        let mut gone = true;
        for dir in self.dirs() {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ResourceBusy | io::ErrorKind::DirectoryNotEmpty
                    ) =>
                {
                    gone = false;
                }
                Err(source) => {
                    return Err(CgroupError::Remove {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        Ok(gone)
    }

    /// What the VM has used (CPU, memory, processes, block I/O), as far as this
    /// host's cgroups report it.
    pub fn usage(&self) -> Usage {
        self.backend.usage()
    }

    /// Memory in use by the cgroup in bytes, if the memory controller reports it.
    pub fn memory_current(&self) -> Option<u64> {
        self.backend.memory_current()
    }

    /// How many processes of the VM the kernel's OOM killer has ended since the
    /// cgroup was made (v2 `memory.events`, v1 `memory.oom_control`), if the
    /// memory controller reports it. Compared before and after a command, it
    /// tells an OOM kill from a SIGKILL someone sent.
    pub fn oom_kills(&self) -> Option<u64> {
        self.backend.oom_kills()
    }
}

/// How a new process gets into a VM's cgroup.
///
/// Moving a whole process between cgroups (`cgroup.procs`) takes the kernel's
/// global threadgroup lock, whose first taker waits for an RCU grace period:
/// about 8 ms on a quiet machine, more than the rest of a VM start. Both ways
/// here avoid it.
#[derive(Debug)]
pub enum Entry {
    /// cgroup v2: the cgroup directory, for `clone3(CLONE_INTO_CGROUP)`, which
    /// creates the child inside the cgroup in the first place.
    CloneInto(OwnedFd),
    /// cgroup v1: every hierarchy's `tasks` file. A child that is still
    /// single-threaded writes "0" to move its only thread, which needs no
    /// threadgroup lock.
    Tasks(Vec<OwnedFd>),
}

impl Entry {
    /// The cgroup directory to pass to `clone3`, on v2.
    pub fn clone_into(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Entry::CloneInto(fd) => Some(std::os::fd::AsFd::as_fd(fd)),
            Entry::Tasks(_) => None,
        }
    }

    /// In the new, single-threaded child: move into the cgroup (v1). On v2 the
    /// child was created inside and there is nothing to do. Neither allocates.
    pub fn join_self(&self) -> io::Result<()> {
        if let Entry::Tasks(files) = self {
            for fd in files {
                // "0" names the writer itself, so the child needn't know its own
                // pid (which differs inside a new pid namespace).
                rustix::io::write(fd, b"0")?;
            }
        }
        Ok(())
    }

    /// The fds this holds, so a child that closes everything else keeps them.
    pub fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self {
            Entry::CloneInto(fd) => vec![fd.as_fd()],
            Entry::Tasks(files) => files.iter().map(|f| f.as_fd()).collect(),
        }
    }
}

/// The `cgroup.procs` file of a cgroup directory.
fn procs_file(dir: &Path) -> PathBuf {
    dir.join("cgroup.procs")
}

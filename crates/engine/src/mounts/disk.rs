//! The `disk` and `inodes` limits: what holds a VM's layers to them, enforced by
//! the kernel as the VM writes (never polled).
//!
//! - A throw-away VM (`run --rm`) keeps its layers on a tmpfs of its own: the
//!   limits are that tmpfs's `size=` and `nr_inodes=` ([`tmpfs_options`]).
//! - Otherwise the layers' filesystem must have project quotas enforced (xfs
//!   mounted with `prjquota`, ext4 made with `-O quota,project` and mounted with
//!   `prjquota`). The VM gets a project id of its own, recorded in its directory
//!   (`vms/NAME/project`); its layer directories carry it with
//!   `FS_XFLAG_PROJINHERIT`, so everything made in them is counted against it,
//!   and the limits are that project's hard limits (`quotactl_fd`). The VM sees
//!   EDQUOT when it reaches them; the rest of the filesystem is untouched.
//!
//! An id is picked at random among the high half of the 32-bit ids (admins number
//! their own projects from 1) and taken only if the filesystem has no use and no
//! limit recorded for it, so it collides neither with another VM nor with another
//! store on the same filesystem. Deleting the VM clears its limits; with its files
//! gone the kernel forgets the id.
//!
//! Elsewhere the limits can't be enforced, and a VM asking for them is refused
//! (see [`check`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use crate::changes::layer::{Descend, walk};
use crate::limits::{Key, Limits};
use crate::sys::{self, ProjectQuota};

/// The lowest project id fvm picks; ids below are left to the host's admins.
const FIRST_ID: u32 = 1 << 31;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "the {key} limit can't be enforced for {}: {why} (use xfs mounted with prjquota, or ext4 made with -O quota,project and mounted with prjquota; `run --rm` works anywhere)",
        .path.display()
    )]
    NoQuota {
        key: Key,
        path: PathBuf,
        why: &'static str,
    },
    #[error("cannot {what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no free project id on the filesystem of {}", .path.display())]
    NoFreeId { path: PathBuf },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_owned();
    move |source| DiskError::Io { what, path, source }
}

/// The extra tmpfs options that hold a throw-away VM's layers to `limits`.
pub fn tmpfs_options(limits: &Limits) -> String {
    let mut out = String::new();
    if let Some(d) = limits.disk {
        out.push_str(&format!(",size={}", d.0));
    }
    if let Some(n) = limits.inodes {
        out.push_str(&format!(",nr_inodes={n}"));
    }
    out
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// The deepest existing directory at or above `path` (a VM's layers may not exist
/// yet; they will be made on that filesystem).
fn existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"))
}

/// Check that layers at `layers` can be held to `limits`' `disk` and `inodes`:
/// their filesystem enforces project quotas. Nothing to check without them.
pub fn check(layers: &Path, limits: &Limits) -> Result<(), DiskError> {
    let key = match (limits.disk, limits.inodes) {
        (Some(_), _) => Key::Disk,
        (None, Some(_)) => Key::Inodes,
        (None, None) => return Ok(()),
    };
    let dir = existing(layers);
    let fd = open_dir(dir).map_err(io_err("open", dir))?;
    let no = |why| DiskError::NoQuota {
        key,
        path: dir.to_owned(),
        why,
    };
    match sys::project_quota_state(fd.as_fd()) {
        Ok((_, true)) => Ok(()),
        Ok((true, false)) => Err(no(
            "its filesystem counts project quotas but doesn't enforce them",
        )),
        Ok((false, false)) | Err(_) => Err(no("its filesystem has no project quotas")),
    }
}

/// Run `mount` (of an overlay) with CAP_SYS_RESOURCE out of the effective set.
///
/// overlayfs writes to its upper layer with the credentials of whoever mounted
/// it, for every process of the VM; ext4 lets a writer with CAP_SYS_RESOURCE
/// past a quota's hard limit. Mounted without it, the VM's writes are held to
/// its `disk` and `inodes`. The capability stays permitted and comes back to the
/// effective set afterwards.
pub fn mount_without_sys_resource<T, E>(
    mount: impl FnOnce() -> Result<T, E>,
    fail: impl Fn(io::Error) -> E,
) -> Result<T, E> {
    use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
    let caps = capabilities(None).map_err(|e| fail(e.into()))?;
    if !caps.effective.contains(CapabilitySet::SYS_RESOURCE) {
        return mount();
    }
    let mut less = caps;
    less.effective.remove(CapabilitySet::SYS_RESOURCE);
    set_capabilities(None, less).map_err(|e| fail(e.into()))?;
    let result = mount();
    set_capabilities(None, caps).map_err(|e| fail(e.into()))?;
    result
}

/// The project id recorded in `file`, if any.
pub fn recorded_id(file: &Path) -> Option<u32> {
    crate::store::files::read_regular(file)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|id| *id >= FIRST_ID)
}

/// Pick a project id unused on the filesystem of `layers` and record it in
/// `file` (written whole, then renamed into place).
pub fn new_id(layers: &Path, file: &Path) -> Result<u32, DiskError> {
    let fd = open_dir(layers).map_err(io_err("open", layers))?;
    for _ in 0..64 {
        let mut bytes = [0u8; 4];
        rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
            .map_err(|e| io_err("pick a project id for", layers)(e.into()))?;
        let id = u32::from_ne_bytes(bytes) | FIRST_ID;
        if id == u32::MAX {
            continue;
        }
        let q = sys::project_quota(fd.as_fd(), id).map_err(io_err("read the quota of", layers))?;
        if q == ProjectQuota::default() {
            crate::store::files::write_durable(file, format!("{id}\n").as_bytes(), 0o600)
                .map_err(io_err("write", file))?;
            return Ok(id);
        }
    }
    Err(DiskError::NoFreeId {
        path: layers.to_owned(),
    })
}

/// Give everything under `layers` (directories and regular files; the VM's to
/// write, so walked without following symlinks) the project id `id`, and every
/// directory FS_XFLAG_PROJINHERIT. Symlinks and special files keep theirs: they
/// can't be opened to be labeled, and hold no data blocks. What is made in the
/// layers later gets `id` from its directory.
pub fn label(layers: &Path, id: u32) -> Result<(), DiskError> {
    let mut failed = None;
    walk(
        layers,
        &mut |e| {
            let kind = e.file_type();
            if kind != FileType::Directory && kind != FileType::RegularFile {
                return Ok(Descend::No);
            }
            let fd = e.open()?;
            let dir = kind == FileType::Directory;
            if let Err(err) = sys::set_project(fd.as_fd(), id, dir) {
                failed.get_or_insert((layers.join(e.rel), err));
                return Ok(Descend::No);
            }
            Ok(Descend::Yes)
        },
        &mut |_| Ok(()),
    )
    .map_err(io_err("label the layers in", layers))?;
    match failed {
        Some((path, source)) => Err(DiskError::Io {
            what: "set the project id of",
            path,
            source,
        }),
        None => Ok(()),
    }
}

/// Set project `id`'s limits on the filesystem of `layers` to `limits`' `disk`
/// and `inodes` (unset: none).
pub fn set_limits(layers: &Path, id: u32, limits: &Limits) -> Result<(), DiskError> {
    let fd = open_dir(existing(layers)).map_err(io_err("open", layers))?;
    sys::set_project_quota(
        fd.as_fd(),
        id,
        limits.disk.map_or(0, |d| d.0),
        limits.inodes.unwrap_or(0),
    )
    .map_err(io_err("set the disk limits of the project of", layers))
}

/// How much of its limits a VM's layers use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskUse {
    pub bytes: u64,
    /// None: no limit.
    pub bytes_limit: Option<u64>,
    pub inodes: u64,
    pub inodes_limit: Option<u64>,
}

/// Project `id`'s use and limits on the filesystem of `layers`.
pub fn project_use(layers: &Path, id: u32) -> Option<DiskUse> {
    let fd = open_dir(layers).ok()?;
    let q = sys::project_quota(fd.as_fd(), id).ok()?;
    let some = |n: u64| (n > 0).then_some(n);
    Some(DiskUse {
        bytes: q.bytes_used,
        bytes_limit: some(q.bytes_limit),
        inodes: q.inodes_used,
        inodes_limit: some(q.inodes_limit),
    })
}

/// A throw-away VM's use of its tmpfs, through the root of its init
/// (`/proc/PID/root`: overlayfs reports its upper filesystem's numbers). Only
/// what `limits` limits has a limit.
pub fn tmpfs_use(init_pid: i32, limits: &Limits) -> Option<DiskUse> {
    let st = rustix::fs::statfs(format!("/proc/{init_pid}/root").as_str()).ok()?;
    let block = st.f_bsize as u64;
    let blocks = st.f_blocks as u64;
    let files = st.f_files as u64;
    Some(DiskUse {
        bytes: blocks.saturating_sub(st.f_bfree as u64) * block,
        bytes_limit: limits.disk.map(|_| blocks * block),
        inodes: files.saturating_sub(st.f_ffree as u64),
        inodes_limit: limits.inodes.map(|_| files),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_options_carry_the_limits() {
        let mut l = Limits::default();
        assert_eq!(tmpfs_options(&l), "");
        l.set(Key::Disk, "64M").unwrap();
        assert_eq!(tmpfs_options(&l), ",size=67108864");
        l.set(Key::Inodes, "5000").unwrap();
        assert_eq!(tmpfs_options(&l), ",size=67108864,nr_inodes=5000");
    }

    #[test]
    fn a_filesystem_without_project_quotas_is_refused_in_one_line() {
        let tmp = tempfile::tempdir().unwrap();
        let mut l = Limits::default();
        check(tmp.path(), &l).unwrap();
        l.set(Key::Inodes, "5000").unwrap();
        // /tmp of a test host is a tmpfs or a filesystem without project quotas.
        if let Err(e) = check(&tmp.path().join("vms/a/layers"), &l) {
            let msg = e.to_string();
            assert!(
                msg.starts_with("the inodes limit can't be enforced for "),
                "{msg}"
            );
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn recorded_ids_are_fvms_own() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("project");
        assert_eq!(recorded_id(&file), None);
        std::fs::write(&file, "7\n").unwrap();
        assert_eq!(recorded_id(&file), None, "an admin's id is never used");
        std::fs::write(&file, format!("{}\n", FIRST_ID + 5)).unwrap();
        assert_eq!(recorded_id(&file), Some(FIRST_ID + 5));
    }
}

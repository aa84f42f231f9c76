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
//! - On any other host the VM's layers live in a filesystem image of their own
//!   (`vms/NAME/disk.img`: a sparse file of `disk` bytes, ext4 with `inodes`
//!   inodes, made once), on a loop device that detaches itself when its last user
//!   goes (LO_FLAGS_AUTOCLEAR). It is mounted only in private mount namespaces: fvm
//!   enters one of its own ([`ImageMount`]), mounts the image on the layers
//!   directory, and works there as on any layers (preparing them, starting the VM,
//!   diff, commit, copy); the VM's mount namespace, cloned from it, keeps the mount
//!   while the VM runs. The host's mount table never shows it, and once the VM and
//!   the fvm command are gone so are the mount and the loop device. A full image
//!   gives the VM ENOSPC. Its size and inode count are fixed when it is made; new
//!   limits on a stopped VM copy its layers into a new image (see
//!   `vm::limits`).
//!
//! Where none of these works (no loop devices, no `mkfs.ext4`), a VM asking for
//! the limits is refused (see [`backing`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use crate::layers::{Descend, walk};
use crate::limits::{Key, Limits};
use crate::os::sys::{self, ProjectQuota};

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

/// How a VM's layers are held to their `disk` and `inodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Project quotas on the layers' filesystem.
    Quota,
    /// A filesystem image of their own.
    Image,
}

/// Whether the filesystem of `layers` (or of its nearest existing parent)
/// enforces project quotas.
pub fn has_project_quotas(layers: &Path) -> bool {
    open_dir(existing(layers))
        .ok()
        .and_then(|fd| sys::project_quota_state(fd.as_fd()).ok())
        .is_some_and(|(_, enforced)| enforced)
}

/// How layers at `layers` will be held to `limits` (None: no such limit), given
/// whether the VM has an image already: a VM with an image keeps it; otherwise
/// project quotas where the filesystem enforces them, else an image if this host
/// can make and attach one. An error says why neither works.
pub fn backing(layers: &Path, limits: &Limits, image: bool) -> Result<Option<Backing>, DiskError> {
    if image {
        return Ok(Some(Backing::Image));
    }
    let key = match (limits.disk, limits.inodes) {
        (Some(_), _) => Key::Disk,
        (None, Some(_)) => Key::Inodes,
        (None, None) => return Ok(None),
    };
    if has_project_quotas(layers) {
        return Ok(Some(Backing::Quota));
    }
    let no = |why| DiskError::NoQuota {
        key,
        path: existing(layers).to_owned(),
        why,
    };
    if !Path::new("/dev/loop-control").exists() {
        return Err(no(
            "its filesystem has no project quotas, and this host has no loop devices for an image",
        ));
    }
    if find_program(MKFS).is_none() {
        return Err(no(
            "its filesystem has no project quotas, and mkfs.ext4 (e2fsprogs) isn't installed to make an image",
        ));
    }
    Ok(Some(Backing::Image))
}

/// The tool that formats a VM's image.
const MKFS: &str = "mkfs.ext4";

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Make a VM's layer image at `image`: a sparse file of `limits.disk` bytes (else
/// the free space of its filesystem), formatted ext4 with no blocks reserved for
/// root and `limits.inodes` inodes (ext4 rounds that up to fill its block
/// groups). Made under a temporary name and renamed into place when complete.
pub fn make_image(image: &Path, limits: &Limits) -> Result<(), DiskError> {
    let parent = image.parent().unwrap_or(Path::new("/"));
    let size = match limits.disk {
        Some(d) => d.0,
        None => {
            let st = rustix::fs::statvfs(parent).map_err(|e| io_err("stat", parent)(e.into()))?;
            st.f_bavail.saturating_mul(st.f_frsize)
        }
    };
    let tmp = image.with_extension("img.new");
    let _ = std::fs::remove_file(&tmp);
    let made = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.set_len(size).map_err(io_err("size", &tmp))?;
        drop(file);
        let mkfs = find_program(MKFS).unwrap_or_else(|| PathBuf::from(MKFS));
        let mut cmd = std::process::Command::new(&mkfs);
        cmd.args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0"]);
        if let Some(n) = limits.inodes {
            cmd.args(["-N", &n.to_string()]);
        }
        let out = cmd
            .arg(&tmp)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io_err("run mkfs.ext4 on", &tmp))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why.lines().next().unwrap_or("failed").trim();
            return Err(io_err("format", &tmp)(io::Error::other(format!(
                "mkfs.ext4: {why}"
            ))));
        }
        std::fs::rename(&tmp, image).map_err(io_err("rename into place", image))
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// A VM's image mounted on its layers directory in a private mount namespace of
/// this process; dropping it returns the process to the mount namespace it was
/// in, and the private one (with its mount) goes. Processes cloned meanwhile
/// with a mount namespace of their own (a VM's init) keep a copy of the mount.
#[derive(Debug)]
pub struct ImageMount {
    previous: OwnedFd,
}

impl ImageMount {
    /// Enter a private mount namespace and mount `image` on `layers` there:
    /// through the loop device already attached to it (a running VM's), else a
    /// new one. The process must be single-threaded.
    pub fn enter(image: &Path, layers: &Path) -> Result<ImageMount, DiskError> {
        use rustix::mount::{MountFlags, MountPropagationFlags};
        let previous = rustix::fs::open(
            "/proc/self/ns/mnt",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open the mount namespace of", Path::new("/proc/self"))(e.into()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(io_err("open", image))?;
        // One attach per image: two loop devices on one file would be two ext4
        // instances writing the same blocks. Whoever holds this lock attaches (or
        // finds the device attached) and mounts; the mount then keeps the device.
        // Taken on an open of its own: the loop device keeps `file`'s open file,
        // and the lock with it, for as long as it is attached.
        let lock = std::fs::File::open(image).map_err(io_err("open", image))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", image)(e.into()))?;
        let meta = rustix::fs::fstat(&file).map_err(|e| io_err("stat", image)(e.into()))?;
        let (number, device) = match attached(meta.st_dev, meta.st_ino) {
            Some(found) => found,
            None => {
                sys::loop_attach(file.as_fd()).map_err(io_err("attach a loop device to", image))?
            }
        };
        sys::unshare(sys::ns::MOUNT)
            .map_err(io_err("enter a private mount namespace for", image))?;
        let mounted = ImageMount { previous };
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .map_err(|e| io_err("make private the mounts of", Path::new("/"))(e.into()))?;
        {
            use std::os::unix::fs::DirBuilderExt;
            if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(layers)
                && e.kind() != io::ErrorKind::AlreadyExists
            {
                return Err(io_err("create", layers)(e));
            }
        }
        rustix::mount::mount(
            format!("/dev/loop{number}").as_str(),
            layers,
            "ext4",
            MountFlags::NOSUID | MountFlags::NODEV,
            None,
        )
        .map_err(|e| io_err("mount the image of", layers)(e.into()))?;
        // As the layers directory it stands for: fvm's only.
        rustix::fs::chmod(layers, Mode::from_raw_mode(0o700))
            .map_err(|e| io_err("set the mode of", layers)(e.into()))?;
        // The mount holds the device now; with this last fd closed, the device
        // goes with the last mount.
        drop(device);
        drop(lock);
        Ok(mounted)
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        if let Err(e) = rustix::thread::move_into_link_name_space(
            self.previous.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Mount),
        ) {
            tracing::warn!("cannot return to the host's mount namespace: {e}");
        }
    }
}

/// The loop device attached to the file (dev, ino), if one is: its number and an
/// open fd (which keeps it from detaching until closed).
fn attached(dev: u64, ino: u64) -> Option<(u32, OwnedFd)> {
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !entry.path().join("loop/backing_file").exists() {
            continue;
        }
        let Ok(fd) = rustix::fs::open(
            format!("/dev/loop{number}").as_str(),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        // Checked on the open device: it can't be detached while this is open.
        if sys::loop_backing(fd.as_fd()).is_ok_and(|b| b == (dev, ino)) {
            return Some((number, fd));
        }
    }
    None
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

/// Record the VM's project id in `file` (written whole and synced, then renamed
/// into place): once its layers carry it and its limits are set. Until then a
/// crash leaves layers labeled with an id nothing names, and the next start picks
/// another (the first is in use, by those files) and labels them again.
pub fn record_id(file: &Path, id: u32) -> Result<(), DiskError> {
    crate::os::files::write_durable(file, format!("{id}\n").as_bytes(), 0o600)
        .map_err(io_err("write", file))
}

/// The project id recorded in `file`, if any.
pub fn recorded_id(file: &Path) -> Option<u32> {
    crate::os::files::read_regular(file)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|id| *id >= FIRST_ID)
}

/// Pick a project id unused on the filesystem of `layers`: one it has neither
/// use nor limits for.
pub fn new_id(layers: &Path) -> Result<u32, DiskError> {
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
    /// None: not known (a stopped VM's image isn't mounted to count them).
    pub inodes: Option<u64>,
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
        inodes: Some(q.inodes_used),
        inodes_limit: some(q.inodes_limit),
    })
}

/// A stopped VM's image: the bytes it takes on the host, of its size.
pub fn image_use(image: &Path) -> Option<DiskUse> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(image).ok()?;
    Some(DiskUse {
        bytes: meta.blocks() * 512,
        bytes_limit: Some(meta.len()),
        inodes: None,
        inodes_limit: None,
    })
}

/// A running VM's use of the filesystem of its layers (a tmpfs or an image),
/// through the root of its init (`/proc/PID/root`: overlayfs reports its upper
/// filesystem's numbers). With `all` (an image) both limits are the filesystem's
/// size; else only what `limits` limits has a limit.
pub fn mounted_use(init_pid: i32, limits: &Limits, all: bool) -> Option<DiskUse> {
    let st = rustix::fs::statfs(format!("/proc/{init_pid}/root").as_str()).ok()?;
    let block = st.f_bsize as u64;
    let blocks = st.f_blocks as u64;
    let files = st.f_files as u64;
    Some(DiskUse {
        bytes: blocks.saturating_sub(st.f_bfree as u64) * block,
        bytes_limit: (all || limits.disk.is_some()).then_some(blocks * block),
        inodes: Some(files.saturating_sub(st.f_ffree as u64)),
        inodes_limit: (all || limits.inodes.is_some()).then_some(files),
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
    fn no_limit_needs_no_backing_and_an_image_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let mut l = Limits::default();
        assert_eq!(backing(tmp.path(), &l, false).unwrap(), None);
        assert_eq!(backing(tmp.path(), &l, true).unwrap(), Some(Backing::Image));
        l.set(Key::Inodes, "5000").unwrap();
        match backing(&tmp.path().join("vms/a/layers"), &l, false) {
            Ok(b) => assert!(b.is_some()),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("the inodes limit can't be enforced for "),
                    "{msg}"
                );
                assert!(!msg.contains('\n'));
            }
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

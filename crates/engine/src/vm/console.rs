//! Reads for the web console (`fvm ui`): a running VM's counters without the
//! disk walk of `info`, and one changed path's two versions for the commit
//! picker's preview. Both only read; neither takes the VM's lock.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use super::{Engine, VmError};
use crate::cgroup::Usage;
use crate::limits::Limits;
use crate::store::VmName;

/// The most of a file a preview reads.
pub const PREVIEW_BYTES: usize = 64 * 1024;

/// One version of a path: the host's or the VM's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// A symlink's target.
    pub target: Option<PathBuf>,
    /// A regular file's first [`PREVIEW_BYTES`] bytes.
    pub head: Option<Vec<u8>>,
}

/// A changed path as the host has it and as the VM has it (`None`: absent, or
/// deleted by the VM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions {
    pub host: Option<Version>,
    pub vm: Option<Version>,
}

impl Engine {
    /// What running VM `name` uses now, and its limits; `None` when it is not
    /// running. Cheap enough to call every second for every VM.
    pub fn sample(&self, name: &VmName) -> Result<Option<(Usage, Limits)>, VmError> {
        let vm = self.vm(name)?;
        let Ok(state) = vm.load_state() else {
            return Ok(None);
        };
        if state.live_init(&self.cgroup_leaf(name)).is_none() {
            return Ok(None);
        }
        let limits = vm.load_policy().map(|p| p.limits).unwrap_or_default();
        Ok(Some((self.cgroup(name)?.usage(), limits)))
    }

    /// The host's and VM `name`'s version of `path` (as the VM sees it). The
    /// VM's side is read from its upper layer one directory at a time without
    /// following symlinks, so a layer the VM rigged can't lead the read outside.
    pub fn versions(&self, name: &VmName, path: &Path) -> Result<Versions, VmError> {
        let path = super::changes::vm_paths(&[path.to_owned()])?
            .pop()
            .unwrap_or_else(|| PathBuf::from("/"));
        let vm = self.vm(name)?;
        let _image = self.layers_image(&vm)?;
        let policy = self.policy(&vm)?;
        let layers = crate::layers::layers(&vm.layers_path(&policy))
            .map_err(|e| VmError::changes(name)(e.into()))?;
        let layer = layers
            .iter()
            .filter(|l| path.starts_with(&l.mount_point))
            .max_by_key(|l| l.mount_point.as_os_str().len());
        let in_vm = match layer {
            Some(l) => {
                let rel = path.strip_prefix(&l.mount_point).unwrap_or(Path::new(""));
                read_in_layer(&l.upper(), rel).unwrap_or(None)
            }
            None => None,
        };
        let host = read_version(None, &path).ok();
        let vm_side = match in_vm {
            // A whiteout: the VM deleted it.
            Some(v) if v.kind == "device" && v.size == 0 => None,
            Some(v) => Some(v),
            None => host.clone(),
        };
        Ok(Versions { host, vm: vm_side })
    }
}

/// `rel` below `upper`, if the layer has an entry for it.
fn read_in_layer(upper: &Path, rel: &Path) -> std::io::Result<Option<Version>> {
    let root = rustix::fs::open(
        upper,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let Some(leaf) = rel.file_name() else {
        return Ok(None);
    };
    let parent = rel.parent().unwrap_or(Path::new(""));
    let dir = match crate::os::dirchain::open_beneath(&root, parent) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let leaf = CString::new(leaf.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    match read_version(
        Some(&dir),
        Path::new(std::ffi::OsStr::from_bytes(leaf.as_bytes())),
    ) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entry `path` (relative to `dir`, or absolute), never following a symlink
/// at its last component, and never blocking on a fifo.
fn read_version(dir: Option<&std::os::fd::OwnedFd>, path: &Path) -> std::io::Result<Version> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match dir {
        Some(d) => rustix::fs::openat(d, path, flags, Mode::empty())?,
        None => rustix::fs::open(path, flags, Mode::empty())?,
    };
    let st = rustix::fs::fstat(&fd)?;
    let kind = FileType::from_raw_mode(st.st_mode);
    let mut v = Version {
        kind: match kind {
            FileType::RegularFile => "file",
            FileType::Directory => "directory",
            FileType::Symlink => "symlink",
            FileType::Fifo => "fifo",
            FileType::Socket => "socket",
            _ => "device",
        },
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == FileType::CharacterDevice {
            st.st_rdev
        } else {
            st.st_size as u64
        },
        target: None,
        head: None,
    };
    match kind {
        FileType::Symlink => {
            let t = rustix::fs::readlinkat(&fd, c"", Vec::new())?;
            v.target = Some(PathBuf::from(std::ffi::OsStr::from_bytes(t.as_bytes())));
        }
        FileType::RegularFile => {
            // Reopened through the O_PATH fd: the same file, now readable.
            let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            let file = rustix::fs::open(
                proc_path.as_str(),
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )?;
            let mut head = Vec::with_capacity(PREVIEW_BYTES.min(v.size as usize));
            std::fs::File::from(file)
                .take(PREVIEW_BYTES as u64)
                .read_to_end(&mut head)?;
            v.head = Some(head);
        }
        _ => {}
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_entry_is_read_without_following_symlinks() {
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir(upper.path().join("etc")).unwrap();
        std::fs::write(upper.path().join("etc/motd"), b"hello\n").unwrap();
        std::os::unix::fs::symlink("/etc", upper.path().join("link")).unwrap();
        let v = read_in_layer(upper.path(), Path::new("etc/motd"))
            .unwrap()
            .unwrap();
        assert_eq!((v.kind, v.head.as_deref()), ("file", Some(&b"hello\n"[..])));
        let l = read_in_layer(upper.path(), Path::new("link"))
            .unwrap()
            .unwrap();
        assert_eq!((l.kind, l.target), ("symlink", Some(PathBuf::from("/etc"))));
        // Through the symlink: refused, not read from the host's /etc.
        assert!(read_in_layer(upper.path(), Path::new("link/passwd")).is_err());
        assert_eq!(
            read_in_layer(upper.path(), Path::new("etc/none")).unwrap(),
            None
        );
    }
}

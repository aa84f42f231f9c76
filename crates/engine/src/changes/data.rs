//! Extended attributes as commit copies them: all of them except overlayfs's own
//! (`trusted.overlay.*`), which describe the layer, not the file. (File data is
//! copied by `content`.)

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{Gid, Stat, Timespec, Timestamps, Uid};

/// Overlayfs's private attributes: never copied out of a layer.
pub const OVERLAY_XATTRS: &str = "trusted.overlay.";

/// Extended attributes: names and values.
pub type Xattrs = Vec<(CString, Vec<u8>)>;

/// Read a list or a value into a growing buffer (the kernel says ERANGE when it
/// is too small).
pub(super) fn grow(
    mut read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

fn names(list: Vec<u8>) -> Vec<CString> {
    all_names(&list)
        .into_iter()
        .filter(|n| !n.to_bytes().starts_with(OVERLAY_XATTRS.as_bytes()))
        .collect()
}

/// Every name in an xattr list (NUL-separated, as the kernel gives it).
pub(super) fn all_names(list: &[u8]) -> Vec<CString> {
    list.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect()
}

/// An xattr's value, read into a growing buffer; `None` if the file has no
/// attribute of that name (or it was removed after it was listed).
pub(super) fn value(
    read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Option<Vec<u8>>> {
    match grow(read) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The extended attributes of an open file or directory, overlayfs's own left out.
pub fn fd_xattrs(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let mut out = Vec::new();
    for name in names(grow(|b| rustix::fs::flistxattr(fd, b))?) {
        if let Some(v) = value(|b| rustix::fs::fgetxattr(fd, name.as_c_str(), b))? {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// Give `fd` exactly the attributes `want` (overlayfs's own untouched). A file
/// just created (`fresh`) has none to remove.
pub fn set_fd_xattrs(fd: BorrowedFd<'_>, want: &Xattrs, fresh: bool) -> io::Result<()> {
    if !fresh {
        for name in names(grow(|b| rustix::fs::flistxattr(fd, b))?) {
            if !want.iter().any(|(n, _)| n == &name) {
                rustix::fs::fremovexattr(fd, name.as_c_str())?;
            }
        }
    }
    for (name, value) in want {
        rustix::fs::fsetxattr(fd, name.as_c_str(), value, rustix::fs::XattrFlags::empty())?;
    }
    Ok(())
}

/// The same for something that can't be opened (a symlink, a fifo), by a path
/// whose last component is not followed (see [`at_path`]).
pub fn path_xattrs(path: &Path) -> io::Result<Xattrs> {
    let mut out = Vec::new();
    for name in names(grow(|b| rustix::fs::llistxattr(path, b))?) {
        if let Some(v) = value(|b| rustix::fs::lgetxattr(path, name.as_c_str(), b))? {
            out.push((name, v));
        }
    }
    Ok(out)
}

pub fn set_path_xattrs(path: &Path, want: &Xattrs) -> io::Result<()> {
    for (name, value) in want {
        rustix::fs::lsetxattr(
            path,
            name.as_c_str(),
            value,
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    Ok(())
}

/// `/proc/self/fd/N/name`: a path to `name` in an open directory, for the calls
/// that only take paths.
pub fn at_path(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    Path::new(&format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()))
        .join(std::ffi::OsStr::from_bytes(name.to_bytes()))
}

/// The owner, group and times of `st`, to give a copy of the entry.
pub(crate) fn uid_of(st: &Stat) -> Uid {
    Uid::from_raw(st.st_uid)
}

pub(crate) fn gid_of(st: &Stat) -> Gid {
    Gid::from_raw(st.st_gid)
}

pub(crate) fn times_of(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// The value of an xattr of an open file or directory, if it has it.
pub fn fd_xattr(fd: &std::os::fd::OwnedFd, name: &str) -> io::Result<Option<Vec<u8>>> {
    value(|b| rustix::fs::fgetxattr(fd, name, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::fs::File;

    #[test]
    fn user_xattrs_copy_and_overlay_ones_do_not() {
        let d = tempfile::tempdir().unwrap();
        let src_path = d.path().join("src");
        std::fs::write(&src_path, "").unwrap();
        let set = |name: &CStr, v: &[u8]| {
            rustix::fs::lsetxattr(&src_path, name, v, rustix::fs::XattrFlags::empty()).unwrap()
        };
        set(c"user.fvm", b"v");
        // trusted.* needs root; as root, overlayfs's own must not be copied.
        let root = rustix::process::geteuid().is_root();
        if root {
            set(c"trusted.overlay.opaque", b"y");
        }
        let src = File::open(&src_path).unwrap();
        let dst = File::create(d.path().join("dst")).unwrap();
        let attrs = fd_xattrs(src.as_fd()).unwrap();
        set_fd_xattrs(dst.as_fd(), &attrs, true).unwrap();
        assert_eq!(fd_xattrs(dst.as_fd()).unwrap(), attrs);
        assert_eq!(attrs.len(), 1, "{attrs:?}");
        assert_eq!(attrs[0].0.as_bytes(), b"user.fvm");
    }
}

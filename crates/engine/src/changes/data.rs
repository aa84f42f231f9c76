//! Copying one file's data and extended attributes, as commit needs them.
//!
//! Data moves with `copy_file_range` (in-kernel, and a reflink where the
//! filesystem can), one data extent at a time found with SEEK_DATA/SEEK_HOLE, so
//! sparse files stay sparse. Extended attributes are copied except overlayfs's own
//! (`trusted.overlay.*`), which describe the layer, not the file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::SeekFrom;

/// Overlayfs's private attributes: never copied out of a layer.
pub const OVERLAY_XATTRS: &str = "trusted.overlay.";

/// Copy all of `src`'s data to `dst` (a new, empty file), keeping holes.
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    blocks: u64,
) -> io::Result<u64> {
    if blocks * 512 >= size {
        // Not sparse: one run of copy_file_range, no extent search.
        return copy_range(src, dst, 0, size);
    }
    let mut copied = 0;
    let mut pos: u64 = 0;
    while pos < size {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(p) => p,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: treat the whole file as data.
            Err(rustix::io::Errno::INVAL) => pos,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(p) => p.min(size),
            Err(_) => size,
        };
        copied += copy_range(src, dst, start, end)?;
        pos = end;
    }
    // Trailing holes (and a file that is all hole) get their length.
    rustix::fs::ftruncate(dst, size)?;
    Ok(copied)
}

/// Copy bytes `start..end` to the same offsets.
fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, start: u64, end: u64) -> io::Result<u64> {
    let mut off_in = start;
    let mut off_out = start;
    while off_in < end {
        let want = (end - off_in) as usize;
        let n = rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want)?;
        if n == 0 {
            // The source got shorter than planned: keep the planned length.
            rustix::fs::ftruncate(dst, end)?;
            break;
        }
    }
    Ok(off_in - start)
}

/// Extended attributes: names and values.
pub type Xattrs = Vec<(CString, Vec<u8>)>;

/// Read a list or a value into a growing buffer (the kernel says ERANGE when it
/// is too small).
fn grow(mut read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
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
    list.split(|b| *b == 0)
        .filter(|n| !n.is_empty() && !n.starts_with(OVERLAY_XATTRS.as_bytes()))
        .filter_map(|n| CString::new(n).ok())
        .collect()
}

/// The extended attributes of an open file or directory, overlayfs's own left out.
pub fn fd_xattrs(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let mut out = Vec::new();
    for name in names(grow(|b| rustix::fs::flistxattr(fd, b))?) {
        match grow(|b| rustix::fs::fgetxattr(fd, name.as_c_str(), b)) {
            Ok(v) => out.push((name, v)),
            // Removed between the list and the read.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
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
        match grow(|b| rustix::fs::lgetxattr(path, name.as_c_str(), b)) {
            Ok(v) => out.push((name, v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_files_stay_sparse_and_equal() {
        let d = tempfile::tempdir().unwrap();
        let src_path = d.path().join("src");
        let mut src = File::create(&src_path).unwrap();
        src.write_all(b"head").unwrap();
        src.seek(std::io::SeekFrom::Start(64 << 20)).unwrap();
        src.write_all(b"tail").unwrap();
        src.set_len((128 << 20) + 3).unwrap();
        drop(src);
        let src = File::open(&src_path).unwrap();
        let dst_path = d.path().join("dst");
        let dst = File::create(&dst_path).unwrap();
        let size = src.metadata().unwrap().len();
        let blocks = src.metadata().unwrap().blocks();
        copy_data(src.as_fd(), dst.as_fd(), size, blocks).unwrap();
        let (a, b) = (
            std::fs::read(&src_path).unwrap(),
            std::fs::read(&dst_path).unwrap(),
        );
        assert_eq!(a, b);
        let blocks = dst.metadata().unwrap().blocks();
        assert!(
            blocks * 512 < 1 << 20,
            "copy is not sparse: {blocks} blocks"
        );
    }

    #[test]
    fn empty_files_and_user_xattrs_copy() {
        let d = tempfile::tempdir().unwrap();
        let src_path = d.path().join("src");
        std::fs::write(&src_path, "").unwrap();
        xattr::set(&src_path, "user.fvm", b"v").unwrap();
        let src = File::open(&src_path).unwrap();
        let dst = File::create(d.path().join("dst")).unwrap();
        copy_data(src.as_fd(), dst.as_fd(), 0, 0).unwrap();
        let attrs = fd_xattrs(src.as_fd()).unwrap();
        set_fd_xattrs(dst.as_fd(), &attrs, true).unwrap();
        assert_eq!(fd_xattrs(dst.as_fd()).unwrap(), attrs);
        assert_eq!(dst.metadata().unwrap().len(), 0);
    }
}

//! Copying one file's data and extended attributes, as commit needs them.
//!
//! Data moves with `copy_file_range` (in-kernel, and a reflink where the
//! filesystem can), one data extent at a time found with SEEK_DATA/SEEK_HOLE, so
//! sparse files stay sparse. Extended attributes are copied except overlayfs's own
//! (`trusted.overlay.*`), which describe the layer, not the file.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::SeekFrom;

/// Overlayfs's private attributes: never copied out of a layer.
pub const OVERLAY_XATTRS: &str = "trusted.overlay.";

/// Copy all of `src`'s data to `dst` (a new, empty file), keeping holes.
pub fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> io::Result<u64> {
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
        let mut off_in = start;
        let mut off_out = start;
        while off_in < end {
            let want = (end - off_in) as usize;
            let n =
                rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
        }
        pos = end;
    }
    // Trailing holes (and a file that is all hole) get their length.
    rustix::fs::ftruncate(dst, size)?;
    Ok(copied)
}

fn file(fd: BorrowedFd<'_>) -> io::Result<File> {
    Ok(File::from(fd.try_clone_to_owned()?))
}

/// The extended attributes of an open file or directory, overlayfs's own left out.
pub fn fd_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(std::ffi::OsString, Vec<u8>)>> {
    let f = file(fd)?;
    let mut out = Vec::new();
    for name in xattr::FileExt::list_xattr(&f)? {
        if name.to_string_lossy().starts_with(OVERLAY_XATTRS) {
            continue;
        }
        if let Some(v) = xattr::FileExt::get_xattr(&f, &name)? {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// Make `fd`'s extended attributes exactly `want` (overlayfs's own untouched).
pub fn set_fd_xattrs(fd: BorrowedFd<'_>, want: &[(std::ffi::OsString, Vec<u8>)]) -> io::Result<()> {
    let f = file(fd)?;
    for name in xattr::FileExt::list_xattr(&f)? {
        let keep = name.to_string_lossy().starts_with(OVERLAY_XATTRS)
            || want.iter().any(|(n, _)| n == &name);
        if !keep {
            xattr::FileExt::remove_xattr(&f, &name)?;
        }
    }
    for (name, value) in want {
        xattr::FileExt::set_xattr(&f, name, value)?;
    }
    Ok(())
}

/// The same for something that can't be opened (a symlink, a fifo), by path. The
/// path must not contain a symlink the VM controls except as its last component,
/// which is not followed (`/proc/self/fd/N/name` with N a directory we opened).
pub fn path_xattrs(path: &Path) -> io::Result<Vec<(std::ffi::OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in xattr::list(path)? {
        if name.to_string_lossy().starts_with(OVERLAY_XATTRS) {
            continue;
        }
        if let Some(v) = xattr::get(path, &name)? {
            out.push((name, v));
        }
    }
    Ok(out)
}

pub fn set_path_xattrs(path: &Path, want: &[(std::ffi::OsString, Vec<u8>)]) -> io::Result<()> {
    for (name, value) in want {
        xattr::set(path, name, value)?;
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
        copy_data(src.as_fd(), dst.as_fd(), size).unwrap();
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
        copy_data(src.as_fd(), dst.as_fd(), 0).unwrap();
        let attrs = fd_xattrs(src.as_fd()).unwrap();
        set_fd_xattrs(dst.as_fd(), &attrs).unwrap();
        assert_eq!(fd_xattrs(dst.as_fd()).unwrap(), attrs);
        assert_eq!(dst.metadata().unwrap().len(), 0);
    }
}

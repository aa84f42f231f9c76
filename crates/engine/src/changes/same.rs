//! Whether a VM's upper entry is only a copy-up of the host's: the same content,
//! mode, owner, mtime and xattrs (a `chmod` to the same mode, a program that
//! rewrites a file with what it had, `apt` fetching the same lists again), or for
//! a directory, the same mode, owner and xattrs (it is in the layer only because
//! something in it changed). `diff` hides these by default, and `commit` leaves
//! them out: they change nothing on the host.
//!
//! Cheap first: the stats decide most entries, and content is read only when
//! type, size, mode, owner and mtime all match, both sides from fds opened
//! without following symlinks and checked to be regular files, in fixed-size
//! chunks (a huge file costs time, never memory). The VM's side is hostile: a
//! file that changes while it is read compares as whatever was read, which only
//! decides what is shown; a commit freezes a running VM before it scans.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, Stat};

use super::data;

/// Bytes compared at a time.
const CHUNK: usize = 64 << 10;

/// The same type, mode, owner, size and mtime (the stat part of a file's
/// sameness; a directory's mtime and size follow its entries, so they don't
/// count).
fn stats_match(vm: &Stat, host: &Stat) -> bool {
    let dir = FileType::from_raw_mode(vm.st_mode) == FileType::Directory;
    vm.st_mode == host.st_mode
        && vm.st_uid == host.st_uid
        && vm.st_gid == host.st_gid
        && (dir
            || (vm.st_size == host.st_size
                && vm.st_mtime == host.st_mtime
                && vm.st_mtime_nsec == host.st_mtime_nsec))
}

/// A regular file or a directory of the VM's upper layer (`vm`, open, as `vm_st`)
/// against the host's entry `name` in `host_dir` (`host_st`): the same but for
/// where it lives. Any error reading either side counts as a difference.
pub fn same(vm: &OwnedFd, vm_st: &Stat, host_dir: &OwnedFd, name: &CStr, host_st: &Stat) -> bool {
    if !stats_match(vm_st, host_st) {
        return false;
    }
    let kind = FileType::from_raw_mode(vm_st.st_mode);
    if !matches!(kind, FileType::RegularFile | FileType::Directory) {
        return false;
    }
    let Ok(host) = crate::layers::open_same(host_dir, name, host_st) else {
        return false;
    };
    let (Ok(a), Ok(b)) = (data::fd_xattrs(vm.as_fd()), data::fd_xattrs(host.as_fd())) else {
        return false;
    };
    if sorted(a) != sorted(b) {
        return false;
    }
    kind == FileType::Directory || same_content(vm, &host, vm_st.st_size as u64).unwrap_or(false)
}

/// Two symlinks with the same target, owner and mtime.
pub fn same_link(
    vm_dir: &OwnedFd,
    vm_name: &CStr,
    vm_st: &Stat,
    host_dir: &OwnedFd,
    host_name: &CStr,
    host_st: &Stat,
) -> bool {
    let link = |s: &Stat| FileType::from_raw_mode(s.st_mode) == FileType::Symlink;
    if !(link(vm_st) && link(host_st))
        || vm_st.st_uid != host_st.st_uid
        || vm_st.st_gid != host_st.st_gid
        || vm_st.st_size != host_st.st_size
        || (vm_st.st_mtime, vm_st.st_mtime_nsec) != (host_st.st_mtime, host_st.st_mtime_nsec)
    {
        return false;
    }
    match (
        rustix::fs::readlinkat(vm_dir, vm_name, Vec::new()),
        rustix::fs::readlinkat(host_dir, host_name, Vec::new()),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn sorted(mut x: data::Xattrs) -> data::Xattrs {
    x.sort();
    x
}

/// Whether two regular files hold the same `size` bytes, and no more. Both are
/// open on the inodes whose stat said regular file of `size` bytes (see
/// [`crate::layers::open_same`]).
///
/// One `pread` per chunk and side, the last asking for a byte more than is left,
/// so that a file that has grown since it was looked at shows without a read of
/// its own; a short read counts as a difference (it only ever makes a copy-up
/// that changed nothing show). The buffers are as big as the file, up to
/// [`CHUNK`]: most files in a layer are small, and zeroing two chunks for each
/// cost more than comparing them.
fn same_content(a: &OwnedFd, b: &OwnedFd, size: u64) -> io::Result<bool> {
    let len = size.min(CHUNK as u64) as usize + 1;
    let mut x = vec![0u8; len];
    let mut y = vec![0u8; len];
    let mut off = 0u64;
    loop {
        let left = size - off;
        let want = left.min(CHUNK as u64) as usize;
        let last = left <= CHUNK as u64;
        let ask = if last { want + 1 } else { want };
        if read_once(a, &mut x[..ask], off)? != want
            || read_once(b, &mut y[..ask], off)? != want
            || x[..want] != y[..want]
        {
            return Ok(false);
        }
        if last {
            return Ok(true);
        }
        off += want as u64;
    }
}

/// One `pread` at `off` (again if a signal interrupted it).
fn read_once(fd: &OwnedFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    loop {
        match rustix::io::pread(fd, &mut *buf, off) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};

    fn open(dir: &std::path::Path, name: &str) -> (OwnedFd, Stat) {
        let fd = rustix::fs::open(
            dir.join(name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let st = rustix::fs::fstat(&fd).unwrap();
        (fd, st)
    }

    #[test]
    fn same_needs_content_mode_and_mtime() {
        let vm = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        for (name, a, b) in [
            ("same", &big[..], &big[..]),
            ("empty", &b""[..], &b""[..]),
            (
                "last",
                &big[..],
                &[&big[..big.len() - 1], b"x"].concat()[..],
            ),
        ] {
            std::fs::write(vm.path().join(name), a).unwrap();
            std::fs::write(host.path().join(name), b).unwrap();
        }
        let host_dir = rustix::fs::open(host.path(), OFlags::RDONLY, Mode::empty()).unwrap();
        let check = |name: &str| {
            // Same mtime on both sides, as a copy-up keeps it.
            let t = std::fs::File::open(host.path().join(name))
                .unwrap()
                .metadata()
                .unwrap()
                .modified()
                .unwrap();
            std::fs::File::options()
                .write(true)
                .open(vm.path().join(name))
                .unwrap()
                .set_modified(t)
                .unwrap();
            let (v, vs) = open(vm.path(), name);
            let (_, hs) = open(host.path(), name);
            let c = std::ffi::CString::new(name).unwrap();
            same(&v, &vs, &host_dir, &c, &hs)
        };
        assert!(check("same"));
        assert!(check("empty"));
        assert!(!check("last"));
        // Whole chunks, and a file longer than its stat said (it grew).
        let exact = &big[..CHUNK * 2];
        std::fs::write(vm.path().join("exact"), exact).unwrap();
        std::fs::write(host.path().join("exact"), exact).unwrap();
        assert!(check("exact"));
        let (a, _) = open(vm.path(), "exact");
        let (b, _) = open(host.path(), "exact");
        assert!(same_content(&a, &b, exact.len() as u64).unwrap());
        assert!(!same_content(&a, &b, exact.len() as u64 - 1).unwrap());
        assert!(!same_content(&a, &b, 10).unwrap());
        std::fs::set_permissions(
            vm.path().join("same"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(
            host.path().join("same"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        assert!(!check("same"));
        // A fifo is never read.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            vm.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let st = rustix::fs::lstat(vm.path().join("fifo")).unwrap();
        let fd = rustix::fs::open(
            vm.path().join("fifo"),
            OFlags::RDONLY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .unwrap();
        assert!(!same(&fd, &st, &host_dir, c"fifo", &st));
    }
}

//! Small file primitives for the store: atomic replace, no-follow reads, flock.
//!
//! Store files are read and written by root. Reads refuse symlinks and non-regular
//! files, so a file planted in the store can't redirect fvm to somewhere else on the
//! host. Writes go to a temp file in the same directory and are renamed over the
//! target, so a reader (or a crash) sees the old or the new content, never a mix.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};

use crate::os::dirchain::DirChain;

/// The largest store file fvm reads; anything bigger is not ours.
const MAX_FILE: u64 = 1 << 20;

/// The largest file fvm writes for itself (a commit's journal of a big commit).
pub const MAX_RECORD: u64 = 1 << 30;

/// Read a small regular file without following a symlink at its last component.
pub fn read_regular(path: &Path) -> io::Result<String> {
    read_regular_max(path, MAX_FILE)
}

/// The same, for files of up to `max` bytes.
pub fn read_regular_max(path: &Path, max: u64) -> io::Result<String> {
    let (file, st) = open_regular(path)?;
    read_max(file, &st, max)
}

/// Open a regular file for reading without following a symlink at its last
/// component (nor hanging on a fifo planted in its place); anything else is
/// `InvalidData`. Also its `fstat`.
pub fn open_regular(path: &Path) -> io::Result<(File, rustix::fs::Stat)> {
    let fd = rustix::fs::open(
        path,
        // NONBLOCK: opening a fifo planted in place of the file must not hang.
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    regular(fd)
}

/// The same, for `rel` inside the tree at `root` (a VM's root directory): every
/// symlink on the way resolves inside that tree (`RESOLVE_IN_ROOT`), never to the
/// host's files, and none at the last component is followed.
pub fn read_regular_in(root: BorrowedFd<'_>, rel: &Path, max: u64) -> io::Result<String> {
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
    )?;
    let (file, st) = regular(fd)?;
    read_max(file, &st, max)
}

/// `fd` as a file, with its `fstat`, if it is a regular file.
fn regular(fd: OwnedFd) -> io::Result<(File, rustix::fs::Stat)> {
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok((File::from(fd), st))
}

/// All of `file` (whose `fstat` is `st`) as text, if it has at most `max` bytes.
fn read_max(file: File, st: &rustix::fs::Stat, max: u64) -> io::Result<String> {
    if st.st_size as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file is too large",
        ));
    }
    // Sized from fstat (plus one byte to see the end), so a small file takes two
    // reads, not one per doubling of a buffer that starts at 32 bytes.
    let mut s = String::with_capacity((st.st_size as usize).saturating_add(1));
    file.take(max).read_to_string(&mut s)?;
    Ok(s)
}

/// Replace `path` with `data` atomically (write a temp file beside it, rename over).
///
/// No fsync: store files describe VMs whose processes die with the machine, and a
/// stale `state.json` after power loss is detected by its boot id. Skipping the
/// journal commit keeps `create` and `start` in the low milliseconds.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    replace(path, data, mode, false)
}

/// Like [`write_atomic`], but on disk before it returns: the file is fsynced before
/// the rename and its directory after. For files whose loss after a power cut
/// would leave the host half-changed (a commit's journal).
pub fn write_durable(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    replace(path, data, mode, true)
}

/// Write `data` to a temp file beside `path` and rename it over `path`; the temp
/// is removed on failure.
fn replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let fd = rustix::fs::open(
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    let mut f = File::from(fd);
    let res = f
        .write_all(data)
        .and_then(|()| if durable { f.sync_all() } else { Ok(()) })
        .and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, path)
        });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// An flock on a lock file, released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// The lock's file: an flock belongs to the open file, so a process forked
/// with this fd kept open holds the lock too, until every copy is closed.
impl AsFd for Lock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self._file.as_fd()
    }
}

/// A lock's file, open but not locked (see [`Lock::unlock`]).
#[derive(Debug)]
pub struct Unlocked {
    file: File,
}

impl Unlocked {
    /// Block until we hold the lock again.
    pub fn lock(self) -> io::Result<Lock> {
        rustix::fs::flock(self.file.as_fd(), FlockOperation::LockExclusive)?;
        Ok(Lock { _file: self.file })
    }
}

impl Lock {
    /// Block until we hold `path` exclusively.
    pub fn exclusive(path: &Path) -> io::Result<Lock> {
        Self::take(path, FlockOperation::LockExclusive)
    }

    /// Hold `path` exclusively if nobody else does; `None` if it is taken.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<Lock>> {
        match Self::take(path, FlockOperation::NonBlockingLockExclusive) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `path` still names the file this lock is on (a VM deleted while we
    /// waited for its lock has had its directory renamed away).
    pub fn is_at(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._file.metadata(), std::fs::symlink_metadata(path)) {
            (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
            _ => false,
        }
    }

    /// Let go of the lock but keep its file open, to take it again later from
    /// where its path can't be reached (inside a VM's mount namespace).
    pub fn unlock(self) -> io::Result<Unlocked> {
        rustix::fs::flock(self._file.as_fd(), FlockOperation::Unlock)?;
        Ok(Unlocked { file: self._file })
    }

    fn take(path: &Path, op: FlockOperation) -> io::Result<Lock> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        rustix::fs::flock(fd.as_fd(), op)?;
        Ok(Lock {
            _file: File::from(fd),
        })
    }
}

/// Whether someone holds the lock file `path` (which is not created if missing).
pub fn is_locked(path: &Path) -> bool {
    let Ok(fd) = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    rustix::fs::flock(fd.as_fd(), FlockOperation::NonBlockingLockShared)
        == Err(rustix::io::Errno::WOULDBLOCK)
}

/// Delete a directory tree that a VM may have filled with hostile content.
/// See [`remove_tree_at`]; `path`'s last component is not followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = match rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_tree_at(parent.as_fd(), &name)
}

/// Delete the directory `path` like [`remove_tree`], its entry `last` only after
/// everything else in it.
pub fn remove_tree_last(path: &Path, last: &str) -> io::Result<()> {
    remove_all_but(path, last)?;
    remove_tree(path)
}

/// Delete everything in the directory `path` (as [`remove_tree`] does) but its
/// entry `keep`; fine if `path` is gone. Not followed if `path` is a symlink.
pub fn remove_all_but(path: &Path, keep: &str) -> io::Result<()> {
    let Some(dir) = open_dir(rustix::fs::CWD, path)? else {
        return Ok(());
    };
    for name in crate::os::dirchain::names(&dir)? {
        if name.as_bytes() != keep.as_bytes() {
            remove_tree_at(dir.as_fd(), &name)?;
        }
    }
    Ok(())
}

/// Delete `name` in `parent` and, if it is a directory, everything below it.
/// Fine if it is gone already.
///
/// Nothing is followed: entries are removed by name under their directory's fd,
/// and directories are entered with `O_NOFOLLOW` through a [`DirChain`], so a
/// symlink to `/etc` planted in a layer is removed, not followed, and no depth
/// exhausts the stack or the fd limit (the tree is removed bottom-up by a loop,
/// holding the names of the directories still to enter on the current path).
/// Mounts below it are not entered. Root in a VM with `CAP_LINUX_IMMUTABLE`
/// could mark entries immutable or append-only (`chattr +i`), which makes even
/// root's unlink fail: those flags are cleared and the removal tried again.
pub fn remove_tree_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match unlink(parent, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(top) = open_dir(parent, name)? else {
        return Ok(());
    };
    let mut chain = DirChain::new(top)?;
    // The subdirectories still to remove in each directory of the chain.
    let mut todo = vec![empty_files(chain.root())?.into_iter()];
    while let Some(subdirs) = todo.last_mut() {
        if let Some(sub) = subdirs.next() {
            match chain.enter(&sub) {
                Ok(()) => {
                    let dir = chain.top().expect("just entered");
                    todo.push(empty_files(dir)?.into_iter());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        todo.pop();
        let Some(done) = chain.names().last().map(CStr::to_owned) else {
            break;
        };
        chain.pop();
        let dir = chain
            .top()
            .ok_or_else(|| io::Error::other("a directory moved while it was removed"))?;
        match unlink(dir.as_fd(), &done, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(chain);
    match unlink(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Open the directory `name` under `dir` without following a symlink; `None` if
/// it is gone.
fn open_dir(dir: impl AsFd, name: impl rustix::path::Arg) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Unlink everything in `dir` that is not a directory; the names of the
/// directories in it are returned.
fn empty_files(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut subdirs = Vec::new();
    for name in crate::os::dirchain::names(dir)? {
        match unlink(dir.as_fd(), &name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::ISDIR) => subdirs.push(name),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(subdirs)
}

/// `unlinkat`; refused for an immutable or append-only entry (or one in such a
/// directory), those flags are cleared and it is tried once more.
fn unlink(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(dir, name, flags) {
        Err(rustix::io::Errno::PERM) => {
            clear_flags(dir);
            if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                // Only files and directories have inode flags (and opening a
                // device or fifo could do something).
                let ft = FileType::from_raw_mode(st.st_mode);
                if matches!(ft, FileType::RegularFile | FileType::Directory)
                    && let Ok(fd) = rustix::fs::openat(
                        dir,
                        name,
                        OFlags::RDONLY
                            | OFlags::NOFOLLOW
                            | OFlags::NONBLOCK
                            | OFlags::NOCTTY
                            | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                {
                    clear_flags(fd.as_fd());
                }
            }
            rustix::fs::unlinkat(dir, name, flags)
        }
        other => other,
    }
}

/// Clear the immutable and append-only flags (best effort: a filesystem without
/// inode flags can't have them, and the retried unlink reports what is left).
fn clear_flags(fd: BorrowedFd<'_>) {
    if let Err(err) = crate::os::sys::clear_undeletable_flags(fd) {
        tracing::debug!(%err, "cannot clear inode flags");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(read_regular(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn read_refuses_symlinks_and_dirs() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("t");
        std::fs::write(&target, "x").unwrap();
        let link = d.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read_regular(&link).is_err());
        assert!(read_regular(d.path()).is_err());
    }

    #[test]
    fn remove_tree_goes_deeper_than_the_fd_limit_and_follows_nothing() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "k").unwrap();
        std::fs::create_dir(d.path().join("t")).unwrap();
        // Paths longer than PATH_MAX, more levels than the fd window, a symlink
        // out, and directories nobody may write to or enter.
        let mut c = DirChain::open(&d.path().join("t")).unwrap();
        let name = CString::new("n".repeat(200)).unwrap();
        for i in 0..crate::os::dirchain::WINDOW * 3 {
            let top = c.top().unwrap();
            rustix::fs::mkdirat(top, &name, Mode::RWXU).unwrap();
            rustix::fs::symlinkat(outside.path(), top, c"out").unwrap();
            let f = rustix::fs::openat(
                top,
                c"f",
                OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::RUSR,
            )
            .unwrap();
            rustix::io::write(&f, b"x").unwrap();
            for j in 0..3 {
                let sib = CString::new(format!("s{j}")).unwrap();
                rustix::fs::mkdirat(top, &sib, Mode::empty()).unwrap();
            }
            if i % 7 == 0 && crate::running_as_root() {
                rustix::fs::fchmod(top, Mode::empty()).unwrap();
            }
            c.enter(&name).unwrap();
        }
        drop(c);
        remove_tree(&d.path().join("t")).unwrap();
        assert!(!d.path().join("t").exists());
        assert!(outside.path().join("keep").exists());
        // Gone already, or not a directory: fine.
        remove_tree(&d.path().join("t")).unwrap();
        std::fs::write(d.path().join("file"), "").unwrap();
        remove_tree(&d.path().join("file")).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn try_lock_sees_a_held_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let held = Lock::exclusive(&p).unwrap();
        assert!(Lock::try_exclusive(&p).unwrap().is_none());
        drop(held);
        assert!(Lock::try_exclusive(&p).unwrap().is_some());
    }
}

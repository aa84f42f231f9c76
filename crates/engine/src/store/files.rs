//! Small file primitives for the store: atomic replace, no-follow reads, flock.
//!
//! Store files are read and written by root. Reads refuse symlinks and non-regular
//! files, so a file planted in the store can't redirect fvm to somewhere else on the
//! host. Writes go to a temp file in the same directory and are renamed over the
//! target, so a reader (or a crash) sees the old or the new content, never a mix.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};

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
    let fd = rustix::fs::open(
        path,
        // NONBLOCK: opening a fifo planted in place of the file must not hang.
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if st.st_size as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file is too large",
        ));
    }
    // Sized from fstat (plus one byte to see the end), so a small file takes two
    // reads, not one per doubling of a buffer that starts at 32 bytes.
    let mut s = String::with_capacity((st.st_size as usize).saturating_add(1));
    File::from(fd).take(max).read_to_string(&mut s)?;
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

/// Delete a directory tree that a VM may have filled with hostile content.
///
/// `std::fs::remove_dir_all` never follows symlinks (it works relative to directory
/// fds), so a symlink to `/etc` planted in a layer is removed, not followed. Root in
/// a VM can also mark files immutable or append-only (`chattr +i`), which makes
/// even root's unlink fail; in that case clear those flags and try again.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            clear_flags_below(path)?;
            std::fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn clear_flags_below(dir: &Path) -> io::Result<()> {
    clear_flags(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            clear_flags_below(&entry.path())?;
        } else if ft.is_file() {
            clear_flags(&entry.path())?;
        }
    }
    Ok(())
}

fn clear_flags(path: &Path) -> io::Result<()> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match crate::sys::clear_undeletable_flags(fd.as_fd()) {
        // Filesystems without inode flags (tmpfs before 6.0, fuse) can't have them set.
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => Ok(()),
        other => other.map(drop),
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
    fn try_lock_sees_a_held_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let held = Lock::exclusive(&p).unwrap();
        assert!(Lock::try_exclusive(&p).unwrap().is_none());
        drop(held);
        assert!(Lock::try_exclusive(&p).unwrap().is_some());
    }
}

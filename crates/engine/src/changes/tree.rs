//! A directory tree reached only through `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` from its root: a host mount (commit
//! writes there) or a VM's upper layer (commit reads there).
//!
//! No path is ever resolved by string joining: a symlink or a rename planted in a
//! layer (or on the host) can make an operation fail, but never redirect it
//! outside the tree or into another mount.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    root_fd: OwnedFd,
    /// Directories opened so far, by path relative to the root.
    dirs: HashMap<PathBuf, OwnedFd>,
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

impl Tree {
    pub fn open(root: &Path) -> io::Result<Tree> {
        let root_fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Tree {
            root: root.to_owned(),
            root_fd,
            dirs: HashMap::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory at `rel` ("" is the root), opened beneath the root.
    pub fn dir(&mut self, rel: &Path) -> io::Result<&OwnedFd> {
        if rel.as_os_str().is_empty() {
            return Ok(&self.root_fd);
        }
        if !self.dirs.contains_key(rel) {
            let fd = rustix::fs::openat2(
                &self.root_fd,
                rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                BENEATH,
            )?;
            self.dirs.insert(rel.to_owned(), fd);
        }
        Ok(&self.dirs[rel])
    }

    /// Forget opened directories at or under `rel` (it was removed or replaced).
    pub fn forget(&mut self, rel: &Path) {
        self.dirs.retain(|p, _| !p.starts_with(rel));
    }

    /// The directory holding `rel`, and its last component.
    pub fn parent(&mut self, rel: &Path) -> io::Result<(&OwnedFd, CString)> {
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let name = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.dir(parent)?, name))
    }

    /// lstat of `rel`; `None` if it (or a directory above it) doesn't exist.
    pub fn lstat(&mut self, rel: &Path) -> io::Result<Option<Stat>> {
        let (dir, name) = match self.parent(rel) {
            Ok(p) => p,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Open the regular file `rel` for reading (never a symlink, fifo or device).
    pub fn open_file(&mut self, rel: &Path) -> io::Result<OwnedFd> {
        let fd = rustix::fs::openat2(
            &self.root_fd,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        Ok(fd)
    }

    /// The target of the symlink `rel`.
    pub fn readlink(&mut self, rel: &Path) -> io::Result<CString> {
        let (dir, name) = self.parent(rel)?;
        Ok(rustix::fs::readlinkat(dir, &name, Vec::new())?)
    }

    /// Make `rel` a directory: keep one that is there, replace anything else.
    pub fn ensure_dir(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
        match self.lstat(rel)? {
            Some(s) if FileType::from_raw_mode(s.st_mode) == FileType::Directory => return Ok(()),
            Some(_) => self.remove(rel)?,
            None => {}
        }
        let (dir, name) = self.parent(rel)?;
        match rustix::fs::mkdirat(dir, &name, Mode::from_raw_mode(mode & 0o7777)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove `rel` and everything below it; fine if it is gone already.
    pub fn remove(&mut self, rel: &Path) -> io::Result<()> {
        let Some(st) = self.lstat(rel)? else {
            return Ok(());
        };
        self.forget(rel);
        let (dir, name) = self.parent(rel)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            // remove_tree works relative to directory fds and never follows links.
            crate::store::files::remove_tree(&super::data::at_path(dir.as_fd(), &name))
        } else {
            match rustix::fs::unlinkat(dir, &name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }

    /// Rename `temp` (in the directory of `rel`) to `rel`, replacing what is there;
    /// a directory in the way is removed first (looked for only if `check`).
    pub fn rename_into(&mut self, temp: &CStr, rel: &Path, check: bool) -> io::Result<()> {
        if check
            && let Some(s) = self.lstat(rel)?
            && FileType::from_raw_mode(s.st_mode) == FileType::Directory
        {
            self.remove(rel)?;
        }
        let (dir, name) = self.parent(rel)?;
        rustix::fs::renameat(dir, temp, dir, &name)?;
        Ok(())
    }

    /// Flush everything written to this tree's filesystem to disk.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&self.root_fd)?)
    }
}

/// A temp name for `rel`'s new version, beside it.
pub fn temp_name(id: &str, index: usize) -> CString {
    CString::new(format!(".fvm-commit-{id}-{index}")).expect("no NUL")
}

/// The path of `rel`'s directory relative to the tree, and its file name.
pub fn split(rel: &Path) -> (&Path, &OsStr) {
    (
        rel.parent().unwrap_or(Path::new("")),
        rel.file_name().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_resolves_through_a_symlink_or_outside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let mut t = Tree::open(d.path()).unwrap();
        assert!(t.dir(Path::new("link")).is_err());
        assert!(t.open_file(Path::new("link/secret")).is_err());
        assert!(t.dir(Path::new("../")).is_err());
        assert!(
            t.lstat(Path::new("link/secret")).is_err()
                || t.lstat(Path::new("link/secret")).unwrap().is_none()
        );
        // Removing the symlink removes the symlink, not what it points to.
        t.remove(Path::new("link")).unwrap();
        assert!(outside.path().join("secret").exists());
        t.ensure_dir(Path::new("real/sub"), 0o755).unwrap();
        assert!(d.path().join("real/sub").is_dir());
    }
}

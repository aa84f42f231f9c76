//! A directory tree reached only through `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` from its root: a host mount (commit
//! writes there) or a VM's upper layer (commit reads there).
//!
//! No path is ever resolved by string joining: a symlink or a rename planted in a
//! layer (or on the host) can make an operation fail, but never redirect it
//! outside the tree or into another mount.
//!
//! Directories are opened one component at a time from the directories of the
//! path looked up last, which a [`DirChain`] holds with a bounded number of fds:
//! a commit goes through its paths in order, so each lookup opens only what
//! differs from the one before, and a tree of any depth (paths far beyond
//! `PATH_MAX`) needs a few dozen fds.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

use crate::os::dirchain::DirChain;

#[derive(Debug)]
pub struct Tree {
    root: PathBuf,
    /// The directories of the path looked up last, from the root down...
    chain: DirChain,
    /// ... and that path, relative to the root (`/`-separated names).
    at: Vec<u8>,
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
            chain: DirChain::new(root_fd)?,
            at: Vec::new(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory at `rel` ("" is the root), opened beneath the root.
    pub fn dir(&mut self, rel: &Path) -> io::Result<&OwnedFd> {
        let want = rel.as_os_str().as_bytes();
        if want.is_empty() {
            return Ok(self.chain.root());
        }
        if want.starts_with(b"/") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a relative path",
            ));
        }
        // Keep the directories `rel` shares with the path looked up last.
        let keep = shared_prefix(&self.at, want);
        self.up_to(keep);
        while self.chain.top().is_none() {
            // Moved meanwhile: look it up again from above.
            let parent = self.at.iter().rposition(|&b| b == b'/').unwrap_or(0);
            self.up_to(parent);
        }
        let rest = &want[self.at.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        for name in rest.split(|&b| b == b'/').filter(|_| !rest.is_empty()) {
            if name.is_empty() || name == b"." || name == b".." {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a clean relative path",
                ));
            }
            let name = CString::new(name)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
            let top = self.chain.top().expect("checked above");
            let fd = rustix::fs::openat2(
                top,
                &name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                BENEATH,
            )?;
            self.chain.push(&name, fd)?;
            if !self.at.is_empty() {
                self.at.push(b'/');
            }
            self.at.extend_from_slice(name.as_bytes());
        }
        Ok(self.chain.top().expect("just opened"))
    }

    /// Go up to the first `len` bytes of the current path (a whole number of
    /// names).
    fn up_to(&mut self, len: usize) {
        if len == self.at.len() {
            return;
        }
        let depth = match len {
            0 => 0,
            n => self.at[..n].iter().filter(|&&b| b == b'/').count() + 1,
        };
        self.chain.truncate(depth);
        self.at.truncate(len);
    }

    /// Forget opened directories at or under `rel` (it was removed or replaced).
    pub fn forget(&mut self, rel: &Path) {
        let r = rel.as_os_str().as_bytes();
        if r.is_empty() {
            self.up_to(0);
        } else if self.at.starts_with(r) && matches!(self.at.get(r.len()), None | Some(b'/')) {
            let parent = r.iter().rposition(|&b| b == b'/').unwrap_or(0);
            self.up_to(parent);
        }
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
        let (dir, name) = self.parent(rel)?;
        let fd = rustix::fs::openat2(
            dir,
            &name,
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
            // remove_tree_at works relative to directory fds and never follows links.
            crate::os::files::remove_tree_at(dir.as_fd(), &name)
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
        Ok(rustix::fs::syncfs(self.chain.root())?)
    }
}

/// The length of the longest prefix of `a` and `b` that is a whole number of
/// `/`-separated names of both.
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if long.starts_with(short) && matches!(long.get(short.len()), None | Some(b'/')) {
        return short.len();
    }
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    a[..n].iter().rposition(|&c| c == b'/').unwrap_or(0)
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
    fn paths_longer_than_path_max_and_the_fd_window_resolve_in_any_order() {
        let d = tempfile::tempdir().unwrap();
        let name = "n".repeat(100);
        let depth = crate::os::dirchain::WINDOW * 2 + libc::PATH_MAX as usize / 100;
        let mut t = Tree::open(d.path()).unwrap();
        let mut rel = PathBuf::new();
        let mut paths = Vec::new();
        for _ in 0..depth {
            rel.push(&name);
            t.ensure_dir(&rel, 0o755).unwrap();
            paths.push(rel.clone());
        }
        let file = rel.join("f");
        let (dir, n) = t.parent(&file).unwrap();
        rustix::fs::openat(dir, &n, OFlags::CREATE | OFlags::WRONLY, Mode::RUSR).unwrap();
        assert!(t.open_file(&file).is_ok());
        // Deepest first, then every other one from the top, then a jump.
        for p in paths.iter().rev().chain(paths.iter().step_by(2)) {
            let st = t.lstat(p).unwrap().unwrap();
            assert_eq!(FileType::from_raw_mode(st.st_mode), FileType::Directory);
        }
        assert!(t.lstat(&paths[5].join("none")).unwrap().is_none());
        assert!(t.dir(Path::new("a/../b")).is_err());
        assert!(t.dir(Path::new("/etc")).is_err());
        // Removing a directory on the current path, then looking below it.
        t.dir(&rel).unwrap();
        t.remove(&paths[3]).unwrap();
        assert!(t.lstat(&file).unwrap().is_none());
        assert!(t.lstat(&paths[2]).unwrap().is_some());
        assert_eq!(shared_prefix(b"ab/c", b"ab/d"), 2);
        assert_eq!(shared_prefix(b"a/b", b"a/bc"), 1);
        assert_eq!(shared_prefix(b"ab", b"abc"), 0);
        assert_eq!(shared_prefix(b"a/b/c", b"a/b"), 3);
    }

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

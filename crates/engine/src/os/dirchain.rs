//! The directories from the root of a host-side walk down to where it is, held
//! with a bounded number of open fds whatever the depth.
//!
//! Every host-side walk of a VM's layer (diff, commit, copy, delete, disk usage)
//! goes down a tree the VM shaped: it can be as deep as the kernel allows (tens of
//! thousands of levels), far beyond the fd limit and `PATH_MAX`. A [`DirChain`]
//! keeps the root's fd and those of the deepest [`WINDOW`] levels only. Going back
//! up to a level whose fd was closed opens `..` of the level just left and checks
//! it is the directory seen on the way down (same device and inode); if it is not
//! (the directory was moved meanwhile), the level is opened again by name from the
//! nearest open ancestor, one component at a time with `O_NOFOLLOW |
//! O_DIRECTORY`, each checked the same way. A level that can't be found again is
//! *lost*: the walk skips what is left of it. No syscall ever gets a path of more
//! than one component, and nothing is followed.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Stat};

/// How many of the deepest levels keep their fd open (the root's is always open).
pub const WINDOW: usize = 16;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

#[derive(Debug)]
struct Level {
    /// The name in the level above ("" for the root).
    name: CString,
    dev: u64,
    ino: u64,
    fd: Option<OwnedFd>,
    /// Moved or removed since it was entered: can't be opened again.
    lost: bool,
}

/// A root directory and the chain of subdirectories entered below it.
#[derive(Debug)]
pub struct DirChain {
    levels: Vec<Level>,
    window: usize,
}

impl DirChain {
    /// A chain holding only `root`.
    pub fn new(root: OwnedFd) -> io::Result<DirChain> {
        Self::with_window(root, WINDOW)
    }

    /// Open `path` (not following a symlink at its last component) as the root.
    pub fn open(path: &std::path::Path) -> io::Result<DirChain> {
        Self::new(rustix::fs::open(path, DIR_FLAGS, Mode::empty())?)
    }

    fn with_window(root: OwnedFd, window: usize) -> io::Result<DirChain> {
        let st = rustix::fs::fstat(&root)?;
        Ok(DirChain {
            levels: vec![Level {
                name: CString::default(),
                dev: st.st_dev,
                ino: st.st_ino,
                fd: Some(root),
                lost: false,
            }],
            window: window.max(1),
        })
    }

    /// Levels entered below the root.
    pub fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// The names of the levels below the root, from the top down.
    pub fn names(&self) -> impl Iterator<Item = &CStr> {
        self.levels[1..].iter().map(|l| l.name.as_c_str())
    }

    pub fn root(&self) -> &OwnedFd {
        self.levels[0].fd.as_ref().expect("the root stays open")
    }

    /// The deepest level's fd; `None` if it was lost.
    pub fn top(&self) -> Option<&OwnedFd> {
        self.levels.last().and_then(|l| l.fd.as_ref())
    }

    /// The device and inode of the deepest level, as seen when it was entered.
    pub fn top_id(&self) -> (u64, u64) {
        let l = self.levels.last().expect("the root is always there");
        (l.dev, l.ino)
    }

    /// Enter `name`, a directory the caller opened (and checked) under the top.
    pub fn push(&mut self, name: &CStr, fd: OwnedFd) -> io::Result<()> {
        let st = rustix::fs::fstat(&fd)?;
        self.push_seen(name, fd, &st);
        Ok(())
    }

    /// The same, with the directory's stat at hand.
    pub fn push_seen(&mut self, name: &CStr, fd: OwnedFd, st: &Stat) {
        self.levels.push(Level {
            name: name.to_owned(),
            dev: st.st_dev,
            ino: st.st_ino,
            fd: Some(fd),
            lost: false,
        });
        let past = self.levels.len().checked_sub(self.window + 1);
        if let Some(i) = past.filter(|&i| i > 0) {
            self.levels[i].fd = None;
        }
    }

    /// Open `name` under the top as a directory and enter it: never through a
    /// symlink, and only on the top's filesystem.
    pub fn enter(&mut self, name: &CStr) -> io::Result<()> {
        let n = name.to_bytes();
        if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a name in a directory",
            ));
        }
        let top = self.top().ok_or_else(lost)?;
        let fd = rustix::fs::openat(top, name, DIR_FLAGS, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        if st.st_dev != self.levels.last().expect("root").dev {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        self.push_seen(name, fd, &st);
        Ok(())
    }

    /// Leave the deepest level (never the root). The level above gets its fd
    /// again if it had closed it; if it can't be found again it is lost (see
    /// [`DirChain::top`]).
    pub fn pop(&mut self) {
        if self.levels.len() < 2 {
            return;
        }
        let child = self.levels.pop().expect("checked");
        let t = self.levels.len() - 1;
        if self.levels[t].fd.is_some() || self.levels[t].lost {
            return;
        }
        if let Some(fd) = &child.fd
            && let Ok(up) = open_checked(fd, c"..", &self.levels[t])
        {
            self.levels[t].fd = Some(up);
            return;
        }
        self.reopen();
    }

    /// Leave levels until `depth` are left.
    pub fn truncate(&mut self, depth: usize) {
        while self.depth() > depth {
            self.pop();
        }
    }

    /// Open the top again by name from the nearest open ancestor.
    fn reopen(&mut self) {
        let t = self.levels.len() - 1;
        let i = (0..t)
            .rev()
            .find(|&i| self.levels[i].fd.is_some() || self.levels[i].lost)
            .expect("the root stays open");
        if self.levels[i].lost {
            self.levels[t].lost = true;
            return;
        }
        for j in i + 1..=t {
            let parent = self.levels[j - 1].fd.as_ref().expect("opened just before");
            match open_checked(parent, &self.levels[j].name, &self.levels[j]) {
                Ok(fd) => self.levels[j].fd = Some(fd),
                Err(err) => {
                    tracing::debug!(%err, "a directory moved during a walk; what is left of it is skipped");
                    for l in &mut self.levels[j..] {
                        l.lost = true;
                        l.fd = None;
                    }
                    return;
                }
            }
            // Keep only the window's fds.
            if j - 1 > 0 && j - 1 + self.window <= t {
                self.levels[j - 1].fd = None;
            }
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "the directory moved while it was read",
    )
}

/// Open `name` under `parent` as a directory and check it is `seen`.
fn open_checked(parent: &OwnedFd, name: &CStr, seen: &Level) -> io::Result<OwnedFd> {
    let fd = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_dev != seen.dev || st.st_ino != seen.ino {
        return Err(lost());
    }
    Ok(fd)
}

/// Open the directory `rel` below `root` one component at a time, with
/// `O_NOFOLLOW | O_DIRECTORY` and on `root`'s filesystem only; `..` is refused.
/// Holds two fds at most, and works for paths of any length.
pub fn open_beneath(root: &OwnedFd, rel: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let dev = rustix::fs::fstat(root)?.st_dev;
    let mut fd = root.try_clone()?;
    for c in rel.components() {
        let std::path::Component::Normal(name) = c else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a path below the directory",
            ));
        };
        let name = CString::new(name.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        let next = rustix::fs::openat(&fd, &name, DIR_FLAGS, Mode::empty())?;
        if rustix::fs::fstat(&next)?.st_dev != dev {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        fd = next;
    }
    Ok(fd)
}

/// The names in a directory, without `.` and `..`, sorted.
pub fn names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut v = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name();
        if n != c"." && n != c".." {
            v.push(n.to_owned());
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Whether an error means the entry is no longer what the walk saw there: gone,
/// replaced by something else, or moved (the VM changed its layer meanwhile).
pub fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ESTALE)
        )
}

/// lstat of `name` in `dir`.
pub fn lstat_at(dir: impl AsFd, name: &CStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn open(p: &Path) -> OwnedFd {
        rustix::fs::open(p, DIR_FLAGS, Mode::empty()).unwrap()
    }

    impl DirChain {
        fn open_fds(&self) -> usize {
            self.levels.iter().filter(|l| l.fd.is_some()).count()
        }
    }

    /// A chain `d/d/...` of `depth` directories under a temp dir.
    fn deep(depth: usize) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let mut c = DirChain::new(open(t.path())).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(c.top().unwrap(), c"d", Mode::RWXU).unwrap();
            c.enter(c"d").unwrap();
        }
        t
    }

    #[test]
    fn deep_chains_keep_a_window_of_fds_and_come_back_up() {
        let t = deep(300);
        let mut c = DirChain::with_window(open(t.path()), 8).unwrap();
        let mut ids = vec![c.top_id()];
        for _ in 0..300 {
            c.enter(c"d").unwrap();
            ids.push(c.top_id());
            assert!(c.open_fds() <= 9);
        }
        for depth in (0..300).rev() {
            c.pop();
            assert_eq!(c.depth(), depth);
            assert_eq!(c.top_id(), ids[depth]);
            let st = rustix::fs::fstat(c.top().unwrap()).unwrap();
            assert_eq!((st.st_dev, st.st_ino), ids[depth]);
            assert!(c.open_fds() <= 9);
        }
    }

    #[test]
    fn a_moved_level_is_found_again_by_name_or_lost() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b/c/d/e")).unwrap();
        std::fs::create_dir_all(t.path().join("z")).unwrap();
        let mut c = DirChain::with_window(open(t.path()), 1).unwrap();
        for n in [c"a", c"b", c"c", c"d", c"e"] {
            c.enter(n).unwrap();
        }
        // `d` (with `e` in it) moves elsewhere: `..` of `e` is still `d`, but `..`
        // of `d` is now `z`, so `c` is opened again by name from the root.
        std::fs::rename(t.path().join("a/b/c/d"), t.path().join("z/d")).unwrap();
        c.pop();
        assert!(c.top().is_some());
        c.pop();
        let st = rustix::fs::fstat(c.top().unwrap()).unwrap();
        let want = std::fs::symlink_metadata(t.path().join("a/b/c")).unwrap();
        assert_eq!(st.st_ino, std::os::unix::fs::MetadataExt::ino(&want));
        // `c` moves out of `b`, and `b` is replaced by another directory of the
        // same name: `..` of `c` is not `b`, and `b` by name is another one.
        let mut c2 = DirChain::with_window(open(t.path()), 1).unwrap();
        for n in [c"z", c"d", c"e"] {
            c2.enter(n).unwrap();
        }
        std::fs::rename(t.path().join("z/d/e"), t.path().join("e")).unwrap();
        std::fs::rename(t.path().join("z/d"), t.path().join("y")).unwrap();
        std::fs::create_dir(t.path().join("z/d")).unwrap();
        c2.pop();
        assert!(c2.top().is_none());
        c2.pop();
        assert!(c2.top().is_some());
        assert_eq!(c2.depth(), 1);
    }

    #[test]
    fn nothing_is_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("link")).unwrap();
        let mut c = DirChain::new(open(t.path())).unwrap();
        assert!(c.enter(c"link").is_err());
        assert!(c.enter(c"..").is_err());
        assert!(c.enter(c"a/b").is_err());
        assert_eq!(c.depth(), 0);
    }
}

//! A VM's layers on disk, and a walk over one that a hostile VM can't steer.
//!
//! Each overlaid host mount has a layer directory `<layers>/<key>` with `upper/`
//! (what the VM changed, in overlayfs's format), `work/` (overlayfs's scratch
//! space) and `mount-point` (the host mount point, as text). The upper directory
//! is the single source of truth for what the VM changed (docs/commit.md).
//!
//! Everything in an upper directory was written by the VM, so it is read like
//! hostile input: the walk goes by directory fd ([`DirChain`]) and opens the next
//! level with `O_NOFOLLOW | O_DIRECTORY`, checking it is the inode it saw, so a
//! symlink (or one swapped in while a VM runs) can never take it outside the
//! layer; and it is a loop with a bounded number of open fds, so no depth the VM
//! makes can exhaust fvm's stack or fd limit.

mod kind;
mod name;

pub use kind::Layers;
pub use name::layer_key;

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, Stat};

use crate::os::dirchain::{self, DirChain};

/// The file in a layer directory that names its host mount point.
pub const MOUNT_POINT_FILE: &str = "mount-point";

/// One overlaid host mount's layer of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The host mount point: where this layer's paths are, on the host and in the VM.
    pub mount_point: PathBuf,
    pub dir: PathBuf,
}

impl Layer {
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// The path a VM sees for a path relative to this layer's upper directory.
    pub fn vm_path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rel)
        }
    }
}

/// Record a layer's mount point next to it (done when the layer is made).
pub fn record_mount_point(dir: &Path, mount_point: &Path) -> io::Result<()> {
    let dir = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    record_mount_point_at(&dir, mount_point)
}

/// [`record_mount_point`] in the layer directory `dir`; an existing record is
/// left as it is, and nothing is written through a symlink.
pub fn record_mount_point_at(dir: &OwnedFd, mount_point: &Path) -> io::Result<()> {
    let file = match rustix::fs::openat(
        dir,
        MOUNT_POINT_FILE,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::EXIST) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut text = mount_point.as_os_str().as_bytes().to_vec();
    text.push(b'\n');
    std::io::Write::write_all(&mut std::fs::File::from(file), &text)
}

/// Every layer in a VM's layers directory, sorted by mount point. A layer whose
/// recorded mount point doesn't match its directory name is skipped: its name is
/// derived from the mount point, so a mismatch means a planted or damaged file.
pub fn layers(layers_dir: &Path) -> io::Result<Vec<Layer>> {
    let entries = match std::fs::read_dir(layers_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.path();
        let Ok(text) = crate::os::files::read_regular(&dir.join(MOUNT_POINT_FILE)) else {
            continue;
        };
        let mount_point = PathBuf::from(OsStr::from_bytes(text.trim_end_matches('\n').as_bytes()));
        if !mount_point.is_absolute()
            || layer_key(&mount_point).as_bytes() != entry.file_name().as_bytes()
        {
            tracing::warn!(layer = %crate::os::quote::path(&dir), "layer's mount point does not match its name; skipped");
            continue;
        }
        out.push(Layer { mount_point, dir });
    }
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    Ok(out)
}

/// What the walk found at one path of an upper directory.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Relative to the upper directory ("" for the upper directory itself).
    pub rel: &'a Path,
    /// How many names `rel` has (0 for the upper directory itself).
    pub depth: usize,
    /// The directory holding it, and its name there (for the upper directory
    /// itself: the upper directory and ".").
    pub parent: &'a OwnedFd,
    pub name: &'a CStr,
    /// lstat of the entry.
    pub stat: Stat,
}

impl Entry<'_> {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    /// An overlayfs whiteout: a character device 0/0, meaning "deleted".
    pub fn is_whiteout(&self) -> bool {
        self.file_type() == FileType::CharacterDevice && self.stat.st_rdev == 0
    }

    /// Open the entry for reading without following a symlink, checking it is
    /// still the inode the walk saw.
    pub fn open(&self) -> io::Result<OwnedFd> {
        open_same(self.parent, self.name, &self.stat)
    }
}

/// Open `name` under `parent` read-only, not following symlinks and not blocking
/// (a fifo), and check it is the inode `seen` describes. An entry that is no
/// longer that inode is an error of kind `NotFound` (see [`dirchain::vanished`]).
pub fn open_same(parent: &OwnedFd, name: &CStr, seen: &Stat) -> io::Result<OwnedFd> {
    let mut flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if FileType::from_raw_mode(seen.st_mode) == FileType::Directory {
        flags |= OFlags::DIRECTORY;
    }
    let fd = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    let now = rustix::fs::fstat(&fd)?;
    if now.st_ino != seen.st_ino || now.st_dev != seen.st_dev {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the entry changed while it was read",
        ));
    }
    Ok(fd)
}

/// What to do after visiting a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descend {
    Yes,
    No,
}

/// Walk an upper directory depth-first, parents before children, entries of a
/// directory in name order. `visit` sees every entry (the root first, with an
/// empty `rel`) and decides whether to descend into directories; `leave` is
/// called after a directory's children, for every directory `visit` said to
/// descend into (also when it could not be entered). Stays on the upper's
/// filesystem and never follows a symlink.
///
/// The walk is a loop over a [`DirChain`], not a recursion: its stack, its open
/// fds and its memory stay bounded at any depth (the names of the directories on
/// the current path, and the names left to visit in each of them). Entries that
/// vanish or change while the walk runs (a running VM) are skipped, and so is
/// what is left of a directory that moved.
pub fn walk(
    upper: &Path,
    visit: &mut dyn FnMut(&Entry<'_>) -> io::Result<Descend>,
    leave: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut chain = DirChain::open(upper)?;
    let stat = rustix::fs::fstat(chain.root())?;
    let root = Entry {
        rel: Path::new(""),
        depth: 0,
        parent: chain.root(),
        name: c".",
        stat,
    };
    if visit(&root)? == Descend::No {
        return Ok(());
    }
    let dev = stat.st_dev;
    let mut rel = PathBuf::new();
    // The names still to visit in each directory of the chain.
    let mut todo: Vec<std::vec::IntoIter<CString>> =
        vec![dirchain::names(chain.root())?.into_iter()];
    while let Some(names) = todo.last_mut() {
        let next = match chain.top() {
            Some(dir) => names.next().map(|n| (dir, n)),
            // Moved while we were below it: what is left of it can't be reached.
            None => None,
        };
        let Some((dir, name)) = next else {
            todo.pop();
            if todo.is_empty() {
                break;
            }
            chain.pop();
            leave(&rel)?;
            rel.pop();
            continue;
        };
        let stat = match dirchain::lstat_at(dir, &name) {
            Ok(s) => s,
            // Removed meanwhile (a running VM): nothing to report.
            Err(e) if dirchain::vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        rel.push(OsStr::from_bytes(name.to_bytes()));
        let entry = Entry {
            rel: &rel,
            depth: chain.depth() + 1,
            parent: dir,
            name: &name,
            stat,
        };
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        if visit(&entry)? == Descend::No || !is_dir {
            rel.pop();
            continue;
        }
        let sub = if stat.st_dev == dev {
            match open_same(dir, &name, &stat).and_then(|fd| Ok((dirchain::names(&fd)?, fd))) {
                Ok(s) => Some(s),
                Err(e) if dirchain::vanished(&e) => {
                    tracing::debug!(path = %rel.display(), "changed during the walk; skipped");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        match sub {
            Some((names, fd)) => {
                chain.push_seen(&name, fd, &stat);
                todo.push(names.into_iter());
            }
            // Left at once: another filesystem, or gone.
            None => {
                leave(&rel)?;
                rel.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_in_order_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        std::fs::create_dir_all(upper.join("b/c")).unwrap();
        std::fs::write(upper.join("b/c/f"), "x").unwrap();
        std::fs::write(upper.join("a"), "y").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), upper.join("link")).unwrap();
        let (seen, left) = walk_all(&upper, |_| {});
        assert_eq!(seen, ["", "a", "b", "b/c", "b/c/f", "link"]);
        assert_eq!(left, ["b/c", "b"]);
    }

    /// A directory name of 60 bytes.
    const X: &CStr = c"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

    /// `a/X/X/.../X` (`depth` levels of `X`) with a file `f` at the bottom, then
    /// `a/zz` and `b`.
    fn deep_layer(depth: usize) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let mut c = DirChain::open(d.path()).unwrap();
        for name in std::iter::once(c"a").chain(std::iter::repeat_n(X, depth)) {
            rustix::fs::mkdirat(c.top().unwrap(), name, Mode::RWXU).unwrap();
            c.enter(name).unwrap();
        }
        rustix::fs::openat(
            c.top().unwrap(),
            c"f",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::RUSR,
        )
        .unwrap();
        std::fs::write(d.path().join("a/zz"), "").unwrap();
        std::fs::write(d.path().join("b"), "").unwrap();
        d
    }

    fn walk_all(upper: &Path, mut on: impl FnMut(&Entry<'_>)) -> (Vec<String>, Vec<String>) {
        let (mut seen, mut left) = (Vec::new(), Vec::new());
        walk(
            upper,
            &mut |e| {
                on(e);
                seen.push(e.rel.display().to_string());
                Ok(Descend::Yes)
            },
            &mut |rel| {
                left.push(rel.display().to_string());
                Ok(())
            },
        )
        .unwrap();
        (seen, left)
    }

    #[test]
    fn walks_deeper_than_the_fd_window_and_path_max() {
        // Deeper than the window of open fds, and its paths longer than PATH_MAX.
        let depth = dirchain::WINDOW * 2 + libc::PATH_MAX as usize / X.count_bytes();
        assert!(depth * X.count_bytes() > libc::PATH_MAX as usize);
        let d = deep_layer(depth);
        let (seen, left) = walk_all(d.path(), |e| {
            // Each entry's parent is the directory it is in.
            let parent = rustix::fs::fstat(e.parent).unwrap();
            let st = dirchain::lstat_at(e.parent, e.name).unwrap();
            assert_eq!(st.st_ino, e.stat.st_ino);
            assert_eq!(parent.st_dev, e.stat.st_dev);
        });
        assert_eq!(seen.len(), 1 + 1 + depth + 1 + 2);
        let deepest = format!("a{}/f", format!("/{}", X.to_str().unwrap()).repeat(depth));
        assert_eq!(seen[depth + 2], deepest);
        assert_eq!(seen[depth + 3], "a/zz");
        assert_eq!(seen[depth + 4], "b");
        assert_eq!(left.len(), depth + 1);
        assert_eq!(left.last().unwrap(), "a");
    }

    #[test]
    fn a_directory_moved_during_the_walk_is_skipped_and_the_walk_goes_on() {
        let depth = dirchain::WINDOW + 8;
        let d = deep_layer(depth);
        let root = d.path().to_owned();
        let deepest = format!("a{}/f", format!("/{}", X.to_str().unwrap()).repeat(depth));
        let (seen, left) = walk_all(d.path(), |e| {
            if e.rel == Path::new(&deepest) {
                // Moved out from under the walk: `a/x/x` leaves `a/x`, and `a` is
                // replaced by a directory of the same name.
                let x = X.to_str().unwrap();
                std::fs::rename(root.join(format!("a/{x}/{x}")), root.join("y")).unwrap();
                std::fs::rename(root.join("a"), root.join("a2")).unwrap();
                std::fs::create_dir(root.join("a")).unwrap();
                std::fs::write(root.join("a/zz"), "").unwrap();
            }
        });
        // Everything seen before the move is reported; `a/zz` was in the `a` that
        // moved, and the new `a` is not the one the walk entered; `b` comes after.
        assert!(seen.contains(&deepest));
        assert!(!seen.iter().any(|s| s == "a/zz"));
        assert_eq!(seen.last().unwrap(), "b");
        assert!(!seen.iter().any(|s| s == "y" || s.starts_with("a2")));
        assert_eq!(left.len(), depth + 1);
    }

    #[test]
    fn layers_are_found_by_their_recorded_mount_point() {
        let d = tempfile::tempdir().unwrap();
        for mp in ["/", "/home", "/var/lib"] {
            let dir = d.path().join(layer_key(Path::new(mp)));
            std::fs::create_dir_all(dir.join("upper")).unwrap();
            record_mount_point(&dir, Path::new(mp)).unwrap();
        }
        // A planted layer claiming another mount point is ignored.
        let fake = d.path().join("home2");
        std::fs::create_dir_all(&fake).unwrap();
        std::fs::write(fake.join(MOUNT_POINT_FILE), "/etc\n").unwrap();
        let found: Vec<_> = layers(d.path())
            .unwrap()
            .into_iter()
            .map(|l| l.mount_point.display().to_string())
            .collect();
        assert_eq!(found, ["/", "/home", "/var/lib"]);
        let home = &layers(d.path()).unwrap()[1];
        assert_eq!(home.vm_path(Path::new("a/b")), Path::new("/home/a/b"));
    }
}

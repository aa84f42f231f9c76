//! A VM's layers on disk, and a walk over one that a hostile VM can't steer.
//!
//! Each overlaid host mount has a layer directory `<layers>/<key>` with `upper/`
//! (what the VM changed, in overlayfs's format), `work/` (overlayfs's scratch
//! space) and `mount-point` (the host mount point, as text). The upper directory
//! is the single source of truth for what the VM changed (docs/commit.md).
//!
//! Everything in an upper directory was written by the VM, so it is read like
//! hostile input: the walk holds a directory fd for each level and opens the next
//! with `O_NOFOLLOW | O_DIRECTORY`, so a symlink (or one swapped in while a VM
//! runs) can never take it outside the layer.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::mounts::plan::layer_key;

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
        let Ok(text) = crate::store::files::read_regular(&dir.join(MOUNT_POINT_FILE)) else {
            continue;
        };
        let mount_point = PathBuf::from(OsStr::from_bytes(text.trim_end_matches('\n').as_bytes()));
        if !mount_point.is_absolute()
            || layer_key(&mount_point).as_bytes() != entry.file_name().as_bytes()
        {
            tracing::warn!(layer = %crate::quote::path(&dir), "layer's mount point does not match its name; skipped");
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
/// (a fifo), and check it is the inode `seen` describes.
pub fn open_same(parent: &OwnedFd, name: &CStr, seen: &Stat) -> io::Result<OwnedFd> {
    let mut flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if FileType::from_raw_mode(seen.st_mode) == FileType::Directory {
        flags |= OFlags::DIRECTORY;
    }
    let fd = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    let now = rustix::fs::fstat(&fd)?;
    if now.st_ino != seen.st_ino || now.st_dev != seen.st_dev {
        return Err(io::Error::other("the entry changed while it was read"));
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
/// called after a directory's children. Stays on the upper's filesystem and never
/// follows a symlink.
pub fn walk(
    upper: &Path,
    visit: &mut dyn FnMut(&Entry<'_>) -> io::Result<Descend>,
    leave: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let root = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&root)?;
    let dot = CString::new(".").expect("no NUL");
    let entry = Entry {
        rel: Path::new(""),
        parent: &root,
        name: &dot,
        stat,
    };
    if visit(&entry)? == Descend::Yes {
        walk_dir(&root, PathBuf::new(), stat.st_dev, visit, leave)?;
    }
    Ok(())
}

fn walk_dir(
    dir: &OwnedFd,
    rel: PathBuf,
    dev: u64,
    visit: &mut dyn FnMut(&Entry<'_>) -> io::Result<Descend>,
    leave: &mut dyn FnMut(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut names: Vec<CString> = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    names.sort();
    for name in names {
        let stat = match rustix::fs::statat(dir, &*name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            // Removed meanwhile (a running VM): nothing to report.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let child_rel = rel.join(OsStr::from_bytes(name.to_bytes()));
        let entry = Entry {
            rel: &child_rel,
            parent: dir,
            name: &name,
            stat,
        };
        let descend = visit(&entry)?;
        if descend == Descend::Yes
            && FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            && stat.st_dev == dev
        {
            let sub = match open_same(dir, &name, &stat) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            walk_dir(&sub, child_rel.clone(), dev, visit, leave)?;
            leave(&child_rel)?;
        }
    }
    Ok(())
}

/// The value of an xattr of an open file or directory, if it has it.
pub fn fd_xattr(fd: &OwnedFd, name: &str) -> io::Result<Option<Vec<u8>>> {
    super::data::value(|b| rustix::fs::fgetxattr(fd, name, b))
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
        let mut seen = Vec::new();
        let mut left = Vec::new();
        walk(
            &upper,
            &mut |e| {
                seen.push(e.rel.display().to_string());
                Ok(Descend::Yes)
            },
            &mut |rel| {
                left.push(rel.display().to_string());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, ["", "a", "b", "b/c", "b/c/f", "link"]);
        assert_eq!(left, ["b/c", "b"]);
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

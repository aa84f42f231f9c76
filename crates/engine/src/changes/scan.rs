//! Read a VM's upper layers against the host as it is now: every path the VM
//! changed, what the VM has there and what the host has. `diff` prints these;
//! `commit` plans from them.
//!
//! For each entry of an upper directory:
//! - a whiteout (char device 0/0) is a deletion: `D` if the host has the path;
//! - anything else is `C` if the host has the path, `A` if not (a chmod or an
//!   xattr change copies a file up, so it shows as `C`; a directory is in the
//!   layer when the VM changed something in it). An entry that is only a copy-up
//!   of the host's (see `same`) is marked, for `diff` to hide and `commit` to
//!   leave out;
//! - a directory that hides the host's one (overlayfs marks it opaque) also yields
//!   every host entry in it that the VM no longer has, as `D`.
//!
//! Host paths are looked up beneath the host mount with directory fds and
//! `AT_SYMLINK_NOFOLLOW`, never crossing into another mount, which is how overlayfs
//! sees the lower layer. The upper layer is walked with `layer::walk`.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use serde::Serialize;

use super::record::Committed;
use super::same;
use crate::layers::{self as layer, Descend, Entry, Layer};
use crate::os::dirchain::{self, DirChain};

/// The xattr overlayfs puts on a directory that replaces the lower one.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Kind {
    #[serde(rename = "A")]
    Added,
    #[serde(rename = "C")]
    Changed,
    #[serde(rename = "D")]
    Deleted,
}

impl Kind {
    pub fn letter(self) -> char {
        match self {
            Kind::Added => 'A',
            Kind::Changed => 'C',
            Kind::Deleted => 'D',
        }
    }
}

/// What the VM has at a changed path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEntry {
    /// Deleted (a whiteout in the upper layer).
    Whiteout,
    /// A host entry the VM no longer sees, because a directory above it replaced
    /// the host's one; nothing in the upper layer.
    Hidden,
    Dir {
        opaque: bool,
    },
    File,
    Symlink,
    Fifo,
    Socket,
    /// A character or block device the VM made (never committed to the host).
    Device,
}

/// One changed path.
#[derive(Debug, Clone)]
pub struct Item {
    /// As the VM (and the host) name it.
    pub path: PathBuf,
    pub kind: Kind,
    /// Index of its layer in the list scanned.
    pub layer: usize,
    /// Relative to the layer's upper directory.
    pub rel: PathBuf,
    pub vm: VmEntry,
    /// lstat of the upper entry (`None` for `Hidden`).
    pub upper: Option<Stat>,
    /// lstat of the host path, if it exists.
    pub host: Option<Stat>,
    /// The directory that hides the host's entry at its path and contains this
    /// path (itself included): it can only be committed as a whole.
    pub unit: Option<PathBuf>,
    /// Only a copy-up of what the host has (see `same`): no change to show or
    /// commit.
    pub same: bool,
}

/// Which paths to look at: all, or those at or under any of these; less those
/// at or under an excluded path.
///
/// Exclusions only select: a scan still reads what is under them (a directory
/// the VM replaced commits as a whole, so a plan must see all of it).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    paths: Vec<PathBuf>,
    exclude: Vec<PathBuf>,
}

impl Filter {
    pub fn new(paths: Vec<PathBuf>) -> Filter {
        Filter {
            paths,
            exclude: Vec::new(),
        }
    }

    /// The same, less what is at or under `exclude`.
    pub fn excluding(self, exclude: Vec<PathBuf>) -> Filter {
        Filter { exclude, ..self }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn excluded_paths(&self) -> &[PathBuf] {
        &self.exclude
    }

    /// `path` is at or under an excluded path.
    pub fn excludes(&self, path: &Path) -> bool {
        self.exclude.iter().any(|x| path.starts_with(x))
    }

    /// `path` is selected (at or under a filter path, and not excluded).
    pub fn selects(&self, path: &Path) -> bool {
        (self.paths.is_empty() || self.paths.iter().any(|f| path.starts_with(f)))
            && !self.excludes(path)
    }

    /// Something at or under `path` may be selected (exclusions aside).
    pub fn reaches(&self, path: &Path) -> bool {
        self.paths.is_empty()
            || self
                .paths
                .iter()
                .any(|f| path.starts_with(f) || f.starts_with(path))
    }

    /// The first filter or excluded path that matches nothing: no item is at
    /// or under it (the items sorted by path, as `scan` returns them) and the
    /// host has nothing there either (an unchanged path is no error, as in git;
    /// a typo is).
    pub fn unmatched<'a>(&'a self, items: &[Item]) -> Option<&'a Path> {
        let matched = |f: &Path| {
            let bytes = f.as_os_str().as_bytes();
            let at = items.partition_point(|i| i.path.as_os_str().as_bytes() < bytes);
            // Sorted by bytes: what is under `f` follows it, though other names
            // with `f` as a prefix of bytes (`/etc-x` for `/etc`) may come between.
            items[at..]
                .iter()
                .take_while(|i| i.path.as_os_str().as_bytes().starts_with(bytes))
                .any(|i| i.path.starts_with(f))
        };
        self.paths
            .iter()
            .chain(&self.exclude)
            .map(PathBuf::as_path)
            .find(|f| !matched(f) && std::fs::symlink_metadata(f).is_err())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", crate::os::quote::path(.path))]
pub struct ScanError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The items of `layers` that the filter reaches (and whole replaced directories
/// it reaches into), sorted by path.
/// Entries in `committed` (written back while the VM ran, unchanged since) are
/// not changes any more.
pub fn scan(
    layers: &[Layer],
    filter: &Filter,
    committed: &Committed,
) -> Result<Vec<Item>, ScanError> {
    scan_with_progress(layers, filter, committed, &mut |_| {})
}

/// [`scan`], telling `progress` how many layer entries it has read so far
/// (every [`PROGRESS_EVERY`] entries), for a progress display on a large layer.
pub fn scan_with_progress(
    layers: &[Layer],
    filter: &Filter,
    committed: &Committed,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<Item>, ScanError> {
    let mut out = Vec::new();
    let mut seen = 0u64;
    for (i, l) in layers.iter().enumerate() {
        if filter.reaches(&l.mount_point) {
            scan_layer(i, l, filter, committed, &mut out, &mut seen, progress)?;
        }
    }
    out.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    // The paths are clean (made by joining names): equal bytes are equal paths, and
    // comparing bytes doesn't parse two long paths from the end for each pair.
    out.dedup_by(|a, b| a.path.as_os_str() == b.path.as_os_str());
    Ok(out)
}

/// How often (in layer entries read) a scan reports its progress.
pub const PROGRESS_EVERY: u64 = 4096;

/// The host side of a directory being walked.
struct Level {
    /// The host has a real directory at the same path: it is the top of the
    /// walk's host chain while this level is the deepest.
    host: bool,
    /// The host's entries show through in the VM (not hidden).
    merged: bool,
    unit: Option<PathBuf>,
    /// Inside a replaced directory the filter reaches: take everything.
    everything: bool,
    /// This directory was committed while the VM ran and is unchanged: its item
    /// (at this index of the output) stays only if something below it changed.
    committed_item: Option<usize>,
}

fn scan_layer(
    idx: usize,
    l: &Layer,
    filter: &Filter,
    committed: &Committed,
    out: &mut Vec<Item>,
    seen: &mut u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ScanError> {
    // The host directories at the paths being walked, as deep as the host has
    // them, with a bounded number of fds (see `DirChain`).
    let hosts = RefCell::new(
        open_host_dir(None, &l.mount_point)
            .and_then(DirChain::new)
            .ok(),
    );
    let stack: RefCell<Vec<Level>> = RefCell::new(Vec::new());
    let out = RefCell::new(out);
    let mut visit = |e: &Entry<'_>| -> io::Result<Descend> {
        *seen += 1;
        if seen.is_multiple_of(PROGRESS_EVERY) {
            progress(*seen);
        }
        let mut stack = stack.borrow_mut();
        let mut out = out.borrow_mut();
        let mut hosts = hosts.borrow_mut();
        if e.rel.as_os_str().is_empty() {
            stack.push(Level {
                host: hosts.is_some(),
                merged: true,
                unit: None,
                everything: false,
                committed_item: None,
            });
            return Ok(Descend::Yes);
        }
        let path = l.vm_path(e.rel);
        let parent = stack.last().expect("the root is pushed first");
        if !parent.everything && !filter.reaches(&path) {
            return Ok(Descend::No);
        }
        // The host's directory here (`None` if it has none, or it moved).
        let host_dir = match hosts.as_ref() {
            Some(h) if parent.host => h.top(),
            _ => None,
        };
        let host = host_dir.and_then(|d| host_stat(d, e.name));
        let done = committed.contains(&l.dir, e.rel, &e.stat);
        if done && e.file_type() != FileType::Directory {
            return Ok(Descend::No);
        }
        let item = |kind, vm, unit: Option<PathBuf>, same| Item {
            path: path.clone(),
            kind,
            layer: idx,
            rel: e.rel.to_owned(),
            vm,
            upper: Some(e.stat),
            host,
            unit,
            same,
        };
        let vm = match e.file_type() {
            _ if e.is_whiteout() => VmEntry::Whiteout,
            FileType::Directory => match is_opaque(e) {
                Ok(opaque) => VmEntry::Dir { opaque },
                // Gone or moved since the walk saw it (a running VM).
                Err(e) if dirchain::vanished(&e) => return Ok(Descend::No),
                Err(e) => return Err(e),
            },
            FileType::RegularFile => VmEntry::File,
            FileType::Symlink => VmEntry::Symlink,
            FileType::Fifo => VmEntry::Fifo,
            FileType::Socket => VmEntry::Socket,
            _ => VmEntry::Device,
        };
        let kind = match (vm, host.is_some()) {
            (VmEntry::Whiteout, true) => Kind::Deleted,
            (VmEntry::Whiteout, false) => return Ok(Descend::No),
            (_, true) => Kind::Changed,
            (_, false) => Kind::Added,
        };
        let VmEntry::Dir { opaque } = vm else {
            // Inside a replaced directory every entry commits with it.
            let same = kind == Kind::Changed
                && parent.unit.is_none()
                && host_dir.zip(host.as_ref()).is_some_and(|(d, h)| match vm {
                    // (A file with other names commits with them.)
                    VmEntry::File if e.stat.st_nlink == 1 => e
                        .open()
                        .is_ok_and(|fd| same::same(&fd, &e.stat, d, e.name, h)),
                    VmEntry::Symlink => same::same_link(e.parent, e.name, &e.stat, d, e.name, h),
                    _ => false,
                });
            out.push(item(kind, vm, parent.unit.clone(), same));
            return Ok(Descend::No);
        };
        let host_is_dir =
            host.is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
        let host_fd = if host_is_dir {
            host_dir.and_then(|d| {
                open_host_dir(Some(d), Path::new(OsStr::from_bytes(e.name.to_bytes()))).ok()
            })
        } else {
            None
        };
        // A directory committed while the VM ran is as the host has it now.
        let merged = parent.merged && host_is_dir && (!opaque || done);
        // A directory that hides what the host has there (an opaque one, or one in
        // place of a file) is a unit: committing part of it would leave the rest
        // of it hiding what the commit put on the host.
        let hides = (opaque && !done) || (host.is_some() && !host_is_dir);
        let unit = match (&parent.unit, hides || (!merged && host_fd.is_some())) {
            (Some(u), _) => Some(u.clone()),
            (None, true) => Some(path.clone()),
            (None, false) => None,
        };
        let everything = parent.everything || (unit.is_some() && filter.reaches(&path));
        let committed_item = done.then_some(out.len());
        // In the layer only because something in it changed.
        let same = kind == Kind::Changed
            && !opaque
            && unit.is_none()
            && host_dir.zip(host.as_ref()).is_some_and(|(d, h)| {
                e.open()
                    .is_ok_and(|fd| same::same(&fd, &e.stat, d, e.name, h))
            });
        out.push(item(kind, vm, unit.clone(), same));
        if !merged && let Some(hfd) = &host_fd {
            match hidden_entries(hfd, e, idx, &path, unit.as_ref(), &mut out) {
                Err(e) if dirchain::vanished(&e) => {}
                other => other?,
            }
        }
        let has_host = host_fd.is_some();
        if let (Some(h), Some(fd)) = (hosts.as_mut(), host_fd) {
            h.push(e.name, fd)?;
        }
        stack.push(Level {
            host: has_host,
            merged,
            unit,
            everything,
            committed_item,
        });
        Ok(Descend::Yes)
    };
    let mut leave = |_: &Path| -> io::Result<()> {
        let level = stack.borrow_mut().pop();
        if level.as_ref().is_some_and(|l| l.host)
            && let Some(h) = hosts.borrow_mut().as_mut()
        {
            h.pop();
        }
        let mut out = out.borrow_mut();
        if let Some(Level {
            committed_item: Some(i),
            ..
        }) = level
            && out.len() == i + 1
        {
            out.pop();
        }
        Ok(())
    };
    match layer::walk(&l.upper(), &mut visit, &mut leave) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ScanError {
            path: l.mount_point.clone(),
            source,
        }),
    }
}

/// The host's entries of a directory the VM replaced: each one the VM doesn't
/// have is deleted in its view.
fn hidden_entries(
    host: &OwnedFd,
    e: &Entry<'_>,
    layer: usize,
    path: &Path,
    unit: Option<&PathBuf>,
    out: &mut Vec<Item>,
) -> io::Result<()> {
    let ours: BTreeSet<CString> = {
        let dir = e.open()?;
        dirchain::names(&dir)?.into_iter().collect()
    };
    for name in dirchain::names(host)? {
        if ours.contains(&name) {
            continue;
        }
        let n = OsStr::from_bytes(name.to_bytes());
        out.push(Item {
            path: path.join(n),
            kind: Kind::Deleted,
            layer,
            rel: e.rel.join(n),
            vm: VmEntry::Hidden,
            upper: None,
            host: host_stat(host, &name),
            unit: unit.cloned(),
            same: false,
        });
    }
    Ok(())
}

fn is_opaque(e: &Entry<'_>) -> io::Result<bool> {
    let fd = e.open()?;
    Ok(super::data::fd_xattr(&fd, OPAQUE_XATTR)?.is_some_and(|v| v == b"y"))
}

/// lstat of `name` in a host directory; `None` if it doesn't exist.
fn host_stat(dir: &OwnedFd, name: &CStr) -> Option<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
}

/// Open a host directory (absolute path, or a name under `parent`) without
/// following a symlink at the last component or crossing into another mount.
pub fn open_host_dir(parent: Option<&OwnedFd>, path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match parent {
        None => rustix::fs::open(path, flags, Mode::empty())?,
        Some(p) => {
            let fd = rustix::fs::openat(p, path, flags, Mode::empty())?;
            // Overlayfs's lower layer is one mount: don't look into mounts below it.
            if rustix::fs::fstat(&fd)?.st_dev != rustix::fs::fstat(p)?.st_dev {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
            fd
        }
    };
    Ok(fd)
}

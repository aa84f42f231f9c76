//! `diff`: what a VM changed, relative to the host as it is now, read from the
//! VM's upper layers directly (never by mounting them: an upper in use by a running
//! VM must not be mounted twice).
//!
//! For each entry of an upper directory:
//! - a whiteout (char device 0/0) is a deletion: `D` if the host has the path;
//! - anything else is `C` if the host has the path, `A` if not (a chmod or an
//!   xattr change copies a file up, so it shows as `C`; a directory is `C` when the
//!   VM changed something in it, as in `podman diff`);
//! - a directory that hides the host's one (marked opaque, or replacing a
//!   non-directory) also reports every host entry in it that the VM no longer has
//!   as `D`.
//!
//! Host paths are looked up beneath the host mount with directory fds and
//! `AT_SYMLINK_NOFOLLOW`, never crossing into another mount, which is how overlayfs
//! sees the lower layer.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use serde::Serialize;

use super::layer::{self, Descend, Entry, Layer};

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

/// One changed path, as the VM sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    pub kind: Kind,
    /// Size of the VM's version (files and symlinks), 0 otherwise.
    pub size: u64,
}

/// Paths that aren't UTF-8 are shown with replacement characters in JSON.
fn lossy<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}")]
pub struct DiffError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Which paths to look at: all, or those at or under any of these.
#[derive(Debug, Clone, Default)]
pub struct Filter(Vec<PathBuf>);

impl Filter {
    pub fn new(paths: Vec<PathBuf>) -> Filter {
        Filter(paths)
    }

    /// `path` is selected (at or under a filter path).
    pub fn selects(&self, path: &Path) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| path.starts_with(f))
    }

    /// Something at or under `path` may be selected.
    pub fn reaches(&self, path: &Path) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|f| path.starts_with(f) || f.starts_with(path))
    }
}

/// Every change in `layers`, sorted by path.
pub fn diff(layers: &[Layer], filter: &Filter) -> Result<Vec<Change>, DiffError> {
    let mut out = Vec::new();
    for l in layers {
        if filter.reaches(&l.mount_point) {
            diff_layer(l, filter, &mut out)?;
        }
    }
    out.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// The host side of a directory being walked.
struct HostDir {
    /// The host directory at the same path, if it is a real directory.
    fd: Option<OwnedFd>,
    /// The host's entries show through in the VM (not hidden by an opaque dir).
    merged: bool,
}

fn diff_layer(l: &Layer, filter: &Filter, out: &mut Vec<Change>) -> Result<(), DiffError> {
    let host_root = open_host_dir(None, &l.mount_point);
    let stack: std::cell::RefCell<Vec<HostDir>> = std::cell::RefCell::new(Vec::new());
    let upper = l.upper();
    let fail = |rel: &Path, source: io::Error| DiffError {
        path: l.vm_path(rel),
        source,
    };
    let mut visit = |e: &Entry<'_>| -> io::Result<Descend> {
        let mut stack = stack.borrow_mut();
        if e.rel.as_os_str().is_empty() {
            stack.push(HostDir {
                fd: host_root.as_ref().ok().and_then(|f| f.try_clone().ok()),
                merged: true,
            });
            return Ok(Descend::Yes);
        }
        let path = l.vm_path(e.rel);
        let parent = stack.last().expect("the root is pushed first");
        if !filter.reaches(&path) {
            return Ok(Descend::No);
        }
        let host = parent.fd.as_ref().and_then(|d| host_stat(d, e.name));
        let selected = filter.selects(&path);
        if e.is_whiteout() {
            if host.is_some() && selected {
                out.push(Change {
                    path,
                    kind: Kind::Deleted,
                    size: 0,
                });
            }
            return Ok(Descend::No);
        }
        if selected {
            let kind = if host.is_some() {
                Kind::Changed
            } else {
                Kind::Added
            };
            let size = match e.file_type() {
                FileType::RegularFile | FileType::Symlink => e.stat.st_size as u64,
                _ => 0,
            };
            out.push(Change {
                path: path.clone(),
                kind,
                size,
            });
        }
        if e.file_type() != FileType::Directory {
            return Ok(Descend::No);
        }
        let host_is_dir =
            host.is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
        let host_fd = if host_is_dir {
            parent.fd.as_ref().and_then(|d| {
                open_host_dir(Some(d), Path::new(OsStr::from_bytes(e.name.to_bytes()))).ok()
            })
        } else {
            None
        };
        let opaque = is_opaque(e)?;
        let merged = parent.merged && host_is_dir && !opaque;
        if !merged && let Some(hfd) = &host_fd {
            report_hidden(hfd, e, &path, filter, out)?;
        }
        stack.push(HostDir {
            fd: host_fd,
            merged,
        });
        Ok(Descend::Yes)
    };
    let mut leave = |_: &Path| -> io::Result<()> {
        stack.borrow_mut().pop();
        Ok(())
    };
    match layer::walk(&upper, &mut visit, &mut leave) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(Path::new(""), e)),
    }
}

/// The host's entries of a directory the VM replaced: each one the VM doesn't
/// have is deleted in its view.
fn report_hidden(
    host: &OwnedFd,
    e: &Entry<'_>,
    path: &Path,
    filter: &Filter,
    out: &mut Vec<Change>,
) -> io::Result<()> {
    let ours: BTreeSet<CString> = {
        let dir = e.open()?;
        names(&dir)?.into_iter().collect()
    };
    for name in names(host)? {
        if ours.contains(&name) {
            continue;
        }
        let p = path.join(OsStr::from_bytes(name.to_bytes()));
        if filter.selects(&p) {
            out.push(Change {
                path: p,
                kind: Kind::Deleted,
                size: 0,
            });
        }
    }
    Ok(())
}

fn names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut v = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            v.push(n.to_owned());
        }
    }
    Ok(v)
}

fn is_opaque(e: &Entry<'_>) -> io::Result<bool> {
    let fd = e.open()?;
    Ok(layer::fd_xattr(&fd, OPAQUE_XATTR)?.is_some_and(|v| v == b"y"))
}

/// lstat of `name` in a host directory; `None` if it doesn't exist.
fn host_stat(dir: &OwnedFd, name: &std::ffi::CStr) -> Option<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
}

/// Open a host directory (absolute path, or a name under `parent`) without
/// following a symlink at the last component or crossing into another mount.
fn open_host_dir(parent: Option<&OwnedFd>, path: &Path) -> io::Result<OwnedFd> {
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

//! Clone an upper directory exactly: the layer half of `fvm copy`.
//!
//! The source is a VM's upper layer, read with the fd-based [`layer::walk`] (it
//! never follows a symlink, and files are opened with [`Entry::open`], which
//! checks the inode is the one the walk saw). The destination is a directory fvm
//! makes itself; entries are created relative to the fd of their parent
//! (`mkdirat`, `mknodat`, `symlinkat`, `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`,
//! `linkat`), so nothing is followed there either.
//!
//! This is a clone, not a commit: every overlayfs marker is kept as it is.
//! Whiteouts (char 0/0) are recreated with `mknodat`, opaque dirs keep their
//! `trusted.overlay.opaque` xattr, and all other xattrs (ACLs, capabilities, user
//! attributes) are copied too. Sockets are recreated with `mknodat(S_IFSOCK)`: an
//! inode with nothing bound to it, which is exactly what an upper layer holds.
//!
//! Metadata is applied in the order the kernel needs: content first (a write
//! clears setuid and file capabilities), then owner (chown clears setuid and
//! `security.capability`), then xattrs (setting an ACL rewrites the group bits),
//! then mode, then times. Directories get their mode and times after their
//! children, since creating a child changes the parent's mtime.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use super::content;
use super::data;
use crate::layers::{self as layer, Descend, Entry};
use crate::os::dirchain::{self, DirChain};

/// What a copy made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files with their own inode (a hard link to one already copied is
    /// counted in `hard_links` instead).
    pub files: u64,
    pub dirs: u64,
    /// Symlinks, fifos, sockets and devices (whiteouts included).
    pub others: u64,
    pub hard_links: u64,
    /// File content copied, in bytes (holes of sparse files not included).
    pub bytes: u64,
    /// Whether any file's content was shared by a reflink rather than copied.
    pub reflinked: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot read {}", crate::os::quote::path(.path))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {}", crate::os::quote::path(.path))]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy the content of {}", crate::os::quote::path(.path))]
    Content {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy the owner, mode, xattrs or times of {}", crate::os::quote::path(.path))]
    Metadata {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot copy a file of unknown type", crate::os::quote::path(.path))]
    UnknownType { path: PathBuf },
}

/// Copy the upper directory `src_upper` to `dst_upper`, which must not exist yet.
/// `progress` is called with the number of content bytes copied since its last
/// call, as the copy goes.
pub fn copy_tree(
    src_upper: &Path,
    dst_upper: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<CopyStats, CopyError> {
    let copier = RefCell::new(Copier {
        src: src_upper,
        dst: dst_upper,
        dirs: Vec::new(),
        chain: None,
        linked: HashMap::new(),
        stats: CopyStats::default(),
        content: content::Copier::default(),
        progress,
        failed: None,
    });
    let walked = layer::walk(
        src_upper,
        &mut |e| copier.borrow_mut().visit(e),
        &mut |rel| copier.borrow_mut().leave(rel),
    );
    let mut copier = copier.into_inner();
    if let Some(e) = copier.failed.take() {
        return Err(e);
    }
    if let Err(source) = walked {
        return Err(CopyError::Read {
            path: copier.open_path(src_upper),
            source,
        });
    }
    copier.unwind_to(0)?;
    Ok(copier.stats)
}

/// A destination directory whose mode and times are set once its children are in.
struct Dir {
    stat: Stat,
    default_acl: Option<Vec<u8>>,
}

struct Copier<'a> {
    src: &'a Path,
    dst: &'a Path,
    /// The destination directories from the root down to the current one...
    dirs: Vec<Dir>,
    /// ... and their fds (a bounded number of them open; see `DirChain`).
    chain: Option<DirChain>,
    /// Where the first copy of each multiply-linked inode went (relative path).
    linked: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
    content: content::Copier,
    progress: &'a mut dyn FnMut(u64),
    /// The real error behind the placeholder returned to the walk.
    failed: Option<CopyError>,
}

impl Copier<'_> {
    fn visit(&mut self, e: &Entry<'_>) -> io::Result<Descend> {
        self.copy_entry(e).map_err(|err| {
            self.failed = Some(err);
            io::Error::other("copy failed")
        })
    }

    fn leave(&mut self, rel: &Path) -> io::Result<()> {
        self.unwind_to(rel.components().count()).map_err(|err| {
            self.failed = Some(err);
            io::Error::other("copy failed")
        })
    }

    /// The path below `base` of the deepest open destination directory.
    fn open_path(&self, base: &Path) -> PathBuf {
        let mut p = base.to_owned();
        if let Some(c) = &self.chain {
            p.extend(c.names().map(|n| OsStr::from_bytes(n.to_bytes())));
        }
        p
    }

    /// The deepest open destination directory.
    fn top(&self) -> Result<&OwnedFd, CopyError> {
        self.chain
            .as_ref()
            .and_then(DirChain::top)
            .ok_or_else(|| CopyError::Create {
                path: self.open_path(self.dst),
                source: io::Error::other("the copy's directory moved"),
            })
    }

    /// Finish every open directory deeper than `depth` (the root has depth 0).
    fn unwind_to(&mut self, depth: usize) -> Result<(), CopyError> {
        while self.dirs.len() > depth {
            let dir = self.dirs.pop().expect("not empty");
            let fd = self.top()?;
            let fail = |source| CopyError::Metadata {
                path: self.open_path(self.dst),
                source,
            };
            if let Some(acl) = &dir.default_acl {
                let file = File::from(fd.try_clone().map_err(fail)?);
                let rel = self.open_path(Path::new(""));
                set_xattr(&Xattrs::Fd(&file), DEFAULT_ACL, acl)
                    .map_err(|e| self.xattr_error(&rel, e))?;
            }
            rustix::fs::fchmod(fd, mode_of(&dir.stat)).map_err(|e| fail(e.into()))?;
            rustix::fs::futimens(fd, &data::times_of(&dir.stat)).map_err(|e| fail(e.into()))?;
            if let Some(c) = &mut self.chain {
                c.pop();
            }
        }
        Ok(())
    }

    fn copy_entry(&mut self, e: &Entry<'_>) -> Result<Descend, CopyError> {
        if e.rel.as_os_str().is_empty() {
            self.copy_root(e)?;
            return Ok(Descend::Yes);
        }
        // Directories the walk did not come back from (gone meanwhile) are
        // finished here, before a sibling or an uncle is made.
        self.unwind_to(e.depth)?;
        let src_path = || self.src.join(e.rel);
        let dst_path = || self.dst.join(e.rel);
        let ft = e.file_type();
        if ft != FileType::Directory && e.stat.st_nlink > 1 {
            let key = (e.stat.st_dev, e.stat.st_ino);
            if let Some(first) = self.linked.get(&key) {
                let parent = self.top()?;
                // By the first copy's directory: its path may be longer than PATH_MAX.
                let (dir, name) = super::tree::split(first);
                let root = self.chain.as_ref().expect("the root is made first").root();
                dirchain::open_beneath(root, dir)
                    .and_then(|from| {
                        Ok(rustix::fs::linkat(
                            &from,
                            name,
                            parent,
                            e.name,
                            AtFlags::empty(),
                        )?)
                    })
                    .map_err(|source| CopyError::Create {
                        path: dst_path(),
                        source,
                    })?;
                self.stats.hard_links += 1;
                return Ok(Descend::No);
            }
            self.linked.insert(key, e.rel.to_owned());
        }
        let parent = self.top()?;
        let create = |err: rustix::io::Errno| CopyError::Create {
            path: dst_path(),
            source: err.into(),
        };
        match ft {
            FileType::Directory => {
                rustix::fs::mkdirat(parent, e.name, Mode::RWXU).map_err(create)?;
                let fd = open_dir_at(parent, e.name).map_err(create)?;
                let src = File::from(e.open().map_err(|source| CopyError::Read {
                    path: src_path(),
                    source,
                })?);
                self.start_dir(fd, Some(e.name), e.rel, e.stat, &Xattrs::Fd(&src))?;
                self.stats.dirs += 1;
                Ok(Descend::Yes)
            }
            FileType::RegularFile => {
                self.copy_file(e)?;
                self.stats.files += 1;
                Ok(Descend::No)
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(e.parent, e.name, Vec::new()).map_err(|err| {
                        CopyError::Read {
                            path: src_path(),
                            source: err.into(),
                        }
                    })?;
                rustix::fs::symlinkat(target.as_c_str(), parent, e.name).map_err(create)?;
                self.finish_at(e)?;
                self.stats.others += 1;
                Ok(Descend::No)
            }
            FileType::Fifo
            | FileType::Socket
            | FileType::CharacterDevice
            | FileType::BlockDevice => {
                let rdev = e.stat.st_rdev;
                rustix::fs::mknodat(parent, e.name, ft, Mode::RUSR | Mode::WUSR, rdev)
                    .map_err(create)?;
                self.finish_at(e)?;
                self.stats.others += 1;
                Ok(Descend::No)
            }
            FileType::Unknown => Err(CopyError::UnknownType { path: src_path() }),
        }
    }

    fn copy_root(&mut self, e: &Entry<'_>) -> Result<(), CopyError> {
        let create = |err: rustix::io::Errno| CopyError::Create {
            path: self.dst.to_owned(),
            source: err.into(),
        };
        rustix::fs::mkdir(self.dst, Mode::RWXU).map_err(create)?;
        let fd = open_dir_at(rustix::fs::CWD, self.dst).map_err(create)?;
        let src = File::from(e.open().map_err(|source| CopyError::Read {
            path: self.src.to_owned(),
            source,
        })?);
        self.start_dir(fd, None, Path::new(""), e.stat, &Xattrs::Fd(&src))
    }

    /// Owner and xattrs of a new directory now (the opaque marker before anything
    /// goes in); mode and times in [`Self::unwind_to`].
    fn start_dir(
        &mut self,
        fd: OwnedFd,
        name: Option<&CStr>,
        rel: &Path,
        stat: Stat,
        src: &Xattrs<'_>,
    ) -> Result<(), CopyError> {
        let fd = File::from(fd);
        let fail = |source| CopyError::Metadata {
            path: self.dst.join(rel),
            source,
        };
        rustix::fs::fchown(&fd, Some(data::uid_of(&stat)), Some(data::gid_of(&stat)))
            .map_err(|e| fail(e.into()))?;
        let default_acl =
            copy_xattrs(src, &Xattrs::Fd(&fd)).map_err(|e| self.xattr_error(rel, e))?;
        let fd = OwnedFd::from(fd);
        match (&mut self.chain, name) {
            (Some(c), Some(name)) => c.push(name, fd).map_err(fail)?,
            _ => self.chain = Some(DirChain::new(fd).map_err(fail)?),
        }
        self.dirs.push(Dir { stat, default_acl });
        Ok(())
    }

    fn copy_file(&mut self, e: &Entry<'_>) -> Result<(), CopyError> {
        let src = File::from(e.open().map_err(|source| CopyError::Read {
            path: self.src.join(e.rel),
            source,
        })?);
        let parent = self.top()?;
        let dst = rustix::fs::openat(
            parent,
            e.name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|err| CopyError::Create {
            path: self.dst.join(e.rel),
            source: err.into(),
        })?;
        let dst = File::from(dst);
        let size = u64::try_from(e.stat.st_size).unwrap_or(0);
        let copied = self
            .content
            .copy(&src, &dst, size, &mut *self.progress)
            .map_err(|source| CopyError::Content {
                path: self.dst.join(e.rel),
                source,
            })?;
        self.stats.bytes += copied.bytes;
        self.stats.reflinked |= copied.reflinked;
        let fail = |source| CopyError::Metadata {
            path: self.dst.join(e.rel),
            source,
        };
        let st = &e.stat;
        rustix::fs::fchown(&dst, Some(data::uid_of(st)), Some(data::gid_of(st)))
            .map_err(|e| fail(e.into()))?;
        copy_xattrs(&Xattrs::Fd(&src), &Xattrs::Fd(&dst))
            .map_err(|err| self.xattr_error(e.rel, err))?;
        rustix::fs::fchmod(&dst, mode_of(st)).map_err(|e| fail(e.into()))?;
        rustix::fs::futimens(&dst, &data::times_of(st)).map_err(|e| fail(e.into()))
    }

    /// Owner, xattrs, mode and times of a new entry that can't be opened (symlink,
    /// fifo, socket, device), by name under its parent's fd.
    fn finish_at(&self, e: &Entry<'_>) -> Result<(), CopyError> {
        let parent = self.top()?;
        let fail = |source: rustix::io::Errno| CopyError::Metadata {
            path: self.dst.join(e.rel),
            source: source.into(),
        };
        let st = &e.stat;
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        rustix::fs::chownat(
            parent,
            e.name,
            Some(data::uid_of(st)),
            Some(data::gid_of(st)),
            nofollow,
        )
        .map_err(fail)?;
        copy_xattrs(
            &Xattrs::At(e.parent.as_fd(), e.name),
            &Xattrs::At(parent.as_fd(), e.name),
        )
        .map_err(|err| self.xattr_error(e.rel, err))?;
        // A symlink has no mode of its own (Linux ignores it and refuses to set it).
        if e.file_type() != FileType::Symlink {
            // Not a symlink, and made by us a moment ago: following is moot.
            rustix::fs::chmodat(parent, e.name, mode_of(st), AtFlags::empty()).map_err(fail)?;
        }
        rustix::fs::utimensat(parent, e.name, &data::times_of(st), nofollow).map_err(fail)
    }

    fn xattr_error(&self, rel: &Path, e: XattrError) -> CopyError {
        match e {
            XattrError::Read(source) => CopyError::Read {
                path: self.src.join(rel),
                source,
            },
            XattrError::Write(source) => CopyError::Metadata {
                path: self.dst.join(rel),
                source,
            },
        }
    }
}

fn open_dir_at(dir: impl AsFd, name: impl rustix::path::Arg) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Where an entry's xattrs are read or written: an open file or directory, or a
/// name under a directory fd for what can't be opened. The latter goes through
/// `/proc/self/fd/N/NAME` with the `l*xattr` calls: the directory is pinned by
/// its fd and the last component is never followed.
enum Xattrs<'a> {
    Fd(&'a File),
    At(std::os::fd::BorrowedFd<'a>, &'a CStr),
}

enum XattrError {
    Read(io::Error),
    Write(io::Error),
}

impl Xattrs<'_> {
    fn list(&self) -> io::Result<Vec<CString>> {
        let list = match self {
            Xattrs::Fd(f) => data::grow(|b| rustix::fs::flistxattr(f, b)),
            Xattrs::At(d, n) => data::grow(|b| rustix::fs::llistxattr(data::at_path(*d, n), b)),
        }?;
        Ok(data::all_names(&list))
    }

    fn get(&self, name: &CStr) -> io::Result<Option<Vec<u8>>> {
        match self {
            Xattrs::Fd(f) => data::value(|b| rustix::fs::fgetxattr(f, name, b)),
            Xattrs::At(d, n) => {
                data::value(|b| rustix::fs::lgetxattr(data::at_path(*d, n), name, b))
            }
        }
    }

    fn set(&self, name: &CStr, value: &[u8]) -> io::Result<()> {
        let flags = rustix::fs::XattrFlags::empty();
        match self {
            Xattrs::Fd(f) => rustix::fs::fsetxattr(f, name, value, flags),
            Xattrs::At(d, n) => rustix::fs::lsetxattr(data::at_path(*d, n), name, value, flags),
        }
        .map_err(Into::into)
    }
}

/// A directory's default ACL is inherited by every entry made in it: set on the
/// copy before its children, it would give each of them an ACL it doesn't have.
const DEFAULT_ACL: &CStr = c"system.posix_acl_default";

/// Copy every xattr `src` lists, except a default ACL, which is returned so that
/// it can be set once the directory is filled. As root that includes `trusted.*`
/// (the overlay markers) and `security.*`; ACLs are copied as their raw values.
fn copy_xattrs(src: &Xattrs<'_>, dst: &Xattrs<'_>) -> Result<Option<Vec<u8>>, XattrError> {
    let mut deferred = None;
    for name in src.list().map_err(XattrError::Read)? {
        // Listed but gone (or not readable as a value): nothing to copy.
        let Some(value) = src.get(&name).map_err(XattrError::Read)? else {
            continue;
        };
        if name.as_c_str() == DEFAULT_ACL {
            deferred = Some(value);
            continue;
        }
        set_xattr(dst, &name, &value)?;
    }
    Ok(deferred)
}

fn set_xattr(dst: &Xattrs<'_>, name: &CStr, value: &[u8]) -> Result<(), XattrError> {
    dst.set(name, value).map_err(|e| {
        XattrError::Write(io::Error::new(
            e.kind(),
            format!("xattr {}: {e}", name.to_string_lossy()),
        ))
    })
}

fn mode_of(st: &Stat) -> Mode {
    Mode::from_raw_mode(st.st_mode & 0o7777)
}

#[cfg(test)]
mod tests;

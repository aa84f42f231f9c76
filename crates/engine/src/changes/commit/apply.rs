//! Carrying out a commit plan on the host, in phases that can be repeated after a
//! crash (the journal says which phase was reached):
//!
//! 1. **write**: new directories are made; every file, symlink, fifo or socket is
//!    written to a temp name beside its target with the VM's owner, mode, xattrs
//!    and times; hard links are linked between temps. Then `syncfs`, so every
//!    temp is on disk before any of them is renamed.
//! 2. **rename**: deletions, and each temp renamed over its target (an atomic
//!    replace: a host path is always the old or the new version, never partial);
//!    directories get their metadata, deepest first. Then `syncfs`.
//! 3. **cleanup**: the committed entries leave the VM's layer, so the VM sees the
//!    host's (now equal) version.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use super::plan::{Action, Step};
use crate::changes::content::Copier;
use crate::changes::data;
use crate::changes::tree::{Tree, temp_name};

/// Progress: steps done so far and in all.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", crate::os::quote::path(.path))]
pub struct ApplyError {
    pub what: &'static str,
    pub path: std::path::PathBuf,
    #[source]
    pub source: io::Error,
}

fn fail<'a>(what: &'static str, s: &'a Step) -> impl FnOnce(io::Error) -> ApplyError + 'a {
    move |source| ApplyError {
        what,
        path: s.path.clone(),
        source,
    }
}

/// Phase 1. Repeatable: a temp left by an interrupted run is replaced.
pub fn write(
    id: &str,
    steps: &[Step],
    hosts: &mut [Tree],
    uppers: &mut [Tree],
    progress: Progress<'_>,
) -> Result<(), ApplyError> {
    let mut copier = Copier::default();
    for (i, s) in steps.iter().enumerate() {
        progress(i, steps.len() * 2);
        let (host, upper) = (&mut hosts[s.layer], &mut uppers[s.layer]);
        match s.action {
            Action::Dir => {
                let st = upper_stat(upper, &s.rel).map_err(fail("read", s))?;
                host.ensure_dir(&s.rel, st.st_mode)
                    .map_err(fail("create directory", s))?;
            }
            Action::Put => {
                put_temp(id, i, s, host, upper, &mut copier).map_err(fail("write", s))?
            }
            Action::Link { of } => {
                let src = &steps[of];
                let (from_dir, _) = host.parent(&src.rel).map_err(fail("link", s))?;
                let from_dir = from_dir.try_clone().map_err(fail("link", s))?;
                let (to_dir, _) = host.parent(&s.rel).map_err(fail("link", s))?;
                let temp = temp_name(id, i);
                retry_exists(to_dir, &temp, || {
                    rustix::fs::linkat(
                        &from_dir,
                        temp_name(id, of),
                        to_dir,
                        &temp,
                        AtFlags::empty(),
                    )
                })
                .map_err(fail("link", s))?;
            }
            Action::Remove => {}
        }
    }
    sync(hosts)
}

/// The file handles of the host entries the commit will delete or replace. A copy
/// the VM made of one of them (a hard link, a rename) names it as its origin,
/// and its absence afterwards is no host change.
pub fn doomed(steps: &[Step], hosts: &mut [Tree]) -> Vec<(i32, Vec<u8>)> {
    let mut out = Vec::new();
    for s in steps.iter().filter(|s| s.host_had) {
        let host = &mut hosts[s.layer];
        let Ok(Some(st)) = host.lstat(&s.rel) else {
            continue;
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if s.action == Action::Dir && is_dir {
            continue;
        }
        if let Ok((dir, name)) = host.parent(&s.rel) {
            if let Ok(handle) = crate::os::sys::file_handle(dir.as_fd(), &name) {
                out.push(handle);
            }
            // A directory goes with everything in it, and the VM may have renamed
            // or linked any of those files elsewhere before deleting the rest.
            if is_dir {
                handles_under(dir.as_fd(), &name, &mut out);
            }
        }
    }
    out
}

/// The file handles of everything under directory `name` in `parent`, without
/// following symlinks; entries that can't be read are skipped.
fn handles_under(
    parent: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    out: &mut Vec<(i32, Vec<u8>)>,
) {
    let open = |at: std::os::fd::BorrowedFd<'_>, name: &std::ffi::CStr| {
        rustix::fs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let Ok(top) = open(parent, name) else {
        return;
    };
    let mut todo: Vec<OwnedFd> = vec![top];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = rustix::fs::Dir::read_from(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = entry.file_name();
            if child == c"." || child == c".." {
                continue;
            }
            if let Ok(handle) = crate::os::sys::file_handle(dir.as_fd(), child) {
                out.push(handle);
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&dir, child, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                _ => false,
            };
            if is_dir && let Ok(fd) = open(dir.as_fd(), child) {
                todo.push(fd);
            }
        }
    }
}

/// Phase 2. Repeatable: a step whose temp is gone was renamed already.
pub fn rename(
    id: &str,
    steps: &[Step],
    hosts: &mut [Tree],
    uppers: &mut [Tree],
    resuming: bool,
    progress: Progress<'_>,
) -> Result<(), ApplyError> {
    for (i, s) in steps.iter().enumerate() {
        progress(steps.len() + i, steps.len() * 2);
        let host = &mut hosts[s.layer];
        match s.action {
            Action::Remove => host.remove(&s.rel).map_err(fail("delete", s))?,
            Action::Put | Action::Link { .. } => {
                let temp = temp_name(id, i);
                if resuming {
                    // Renamed already by the run that was interrupted.
                    let (dir, _) = host.parent(&s.rel).map_err(fail("replace", s))?;
                    if rustix::fs::statat(dir, &temp, AtFlags::SYMLINK_NOFOLLOW).is_err() {
                        continue;
                    }
                }
                // Only a host that had something there can have a directory in the way.
                host.rename_into(&temp, &s.rel, resuming || s.host_had)
                    .map_err(fail("replace", s))?;
            }
            Action::Dir => {}
        }
    }
    // Renames change directories' times: give directories theirs last, deepest first.
    for s in steps.iter().rev().filter(|s| s.action == Action::Dir) {
        dir_metadata(s, &mut hosts[s.layer], &mut uppers[s.layer])
            .map_err(fail("set metadata of", s))?;
    }
    sync(hosts)
}

/// Phase 3 for a stopped VM: remove the committed entries from its layer, the
/// deepest first; a directory stays while it still holds uncommitted changes.
///
/// Files the VM hard-linked stay in the layer (they are returned, to be recorded
/// as committed): with overlayfs's `index=off`, the host's copy would show in the
/// VM as separate files, and the VM would lose the link.
pub fn cleanup(
    steps: &[Step],
    hosts: &mut [Tree],
    uppers: &mut [Tree],
) -> Result<Vec<Step>, ApplyError> {
    let mut kept = Vec::new();
    for s in steps.iter().rev().filter(|s| s.in_layer) {
        if s.action != Action::Dir
            && let Ok(Some(st)) = uppers[s.layer].lstat(&s.rel)
            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_nlink > 1
        {
            kept.push(s.clone());
            continue;
        }
        let upper = &mut uppers[s.layer];
        let (dir, name) = match upper.parent(&s.rel) {
            Ok(p) => p,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(fail("clean up the layer at", s)(e)),
        };
        let flags = if s.action == Action::Dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(dir, &name, flags) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            // A directory that keeps entries stays; removing the others moved its
            // times, which the VM sees: give it the host's (now the same) again.
            Err(rustix::io::Errno::NOTEMPTY) => {
                kept.push(s.clone());
                // The host now has everything the directory holds: an opaque one
                // must merge with it, or it would hide what was just committed.
                if let Ok(d) = upper.dir(&s.rel) {
                    match rustix::fs::fremovexattr(d, c"trusted.overlay.opaque") {
                        Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                        Err(e) => return Err(fail("clean up the layer at", s)(e.into())),
                    }
                }
                if let Ok(Some(h)) = hosts[s.layer].lstat(&s.rel) {
                    let (dir, name) = upper
                        .parent(&s.rel)
                        .map_err(fail("clean up the layer at", s))?;
                    rustix::fs::utimensat(
                        dir,
                        &name,
                        &data::times_of(&h),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| fail("clean up the layer at", s)(e.into()))?;
                }
            }
            Err(e) => return Err(fail("clean up the layer at", s)(e.into())),
        }
        if s.action == Action::Dir {
            upper.forget(&s.rel);
        }
    }
    Ok(kept)
}

fn sync(hosts: &[Tree]) -> Result<(), ApplyError> {
    for h in hosts {
        h.sync().map_err(|source| ApplyError {
            what: "flush",
            path: h.root().to_owned(),
            source,
        })?;
    }
    Ok(())
}

fn upper_stat(upper: &mut Tree, rel: &Path) -> io::Result<Stat> {
    upper
        .lstat(rel)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "gone from the vm's layer"))
}

/// Write the VM's version of `s` to its temp name, with all its metadata.
fn put_temp(
    id: &str,
    index: usize,
    s: &Step,
    host: &mut Tree,
    upper: &mut Tree,
    copier: &mut Copier,
) -> io::Result<()> {
    let st = upper_stat(upper, &s.rel)?;
    let temp = temp_name(id, index);
    let (dir, _) = host.parent(&s.rel)?;
    let times = data::times_of(&st);
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            let src = std::fs::File::from(upper.open_file(&s.rel)?);
            let dst = std::fs::File::from(create_temp(dir, &temp)?);
            copier.copy(&src, &dst, st.st_size as u64, &mut |_| {})?;
            set_owner(&dst, &st)?;
            rustix::fs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o7777))?;
            data::set_fd_xattrs(dst.as_fd(), &data::fd_xattrs(src.as_fd())?, true)?;
            rustix::fs::futimens(&dst, &times)?;
        }
        FileType::Symlink => {
            let target = upper.readlink(&s.rel)?;
            retry_exists(dir, &temp, || {
                rustix::fs::symlinkat(target.as_c_str(), dir, &temp)
            })?;
            special_metadata(dir, &temp, &st, upper, &s.rel)?;
        }
        t @ (FileType::Fifo | FileType::Socket) => {
            let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
            retry_exists(dir, &temp, || rustix::fs::mknodat(dir, &temp, t, mode, 0))?;
            special_metadata(dir, &temp, &st, upper, &s.rel)?;
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected file type in the layer",
            ));
        }
    }
    Ok(())
}

/// A new file for the temp name; one left by an interrupted commit is replaced.
fn create_temp(dir: &OwnedFd, temp: &CString) -> io::Result<OwnedFd> {
    let create = || {
        rustix::fs::openat(
            dir,
            temp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
    };
    match create() {
        Err(rustix::io::Errno::EXIST) => {
            rustix::fs::unlinkat(dir, temp, AtFlags::empty())?;
            Ok(create()?)
        }
        other => Ok(other?),
    }
}

/// Make a temp entry; one left by an interrupted commit is replaced.
fn retry_exists(
    dir: &OwnedFd,
    temp: &CString,
    make: impl Fn() -> rustix::io::Result<()>,
) -> io::Result<()> {
    match make() {
        Err(rustix::io::Errno::EXIST) => {
            rustix::fs::unlinkat(dir, temp, AtFlags::empty())?;
            Ok(make()?)
        }
        other => Ok(other?),
    }
}

/// chown, unless the new file has that owner already (we are root, and a file we
/// create is ours).
fn set_owner(fd: impl AsFd, st: &Stat) -> io::Result<()> {
    static ME: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let &(me, my_group) = ME.get_or_init(|| {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    });
    if st.st_uid != me || st.st_gid != my_group {
        // Owner before mode: chown clears setuid/setgid bits.
        rustix::fs::fchown(fd, Some(data::uid_of(st)), Some(data::gid_of(st)))?;
    }
    Ok(())
}

/// Owner, mode (not for symlinks), xattrs and times of something that can't be
/// opened, set through its directory.
fn special_metadata(
    dir: &OwnedFd,
    temp: &CString,
    st: &Stat,
    upper: &mut Tree,
    rel: &Path,
) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        temp,
        Some(data::uid_of(st)),
        Some(data::gid_of(st)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    let is_link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
    if !is_link {
        rustix::fs::chmodat(
            dir,
            temp,
            Mode::from_raw_mode(st.st_mode & 0o7777),
            AtFlags::empty(),
        )?;
    }
    let (udir, uname) = upper.parent(rel)?;
    let attrs = data::path_xattrs(&data::at_path(udir.as_fd(), &uname))?;
    data::set_path_xattrs(&data::at_path(dir.as_fd(), temp), &attrs)?;
    rustix::fs::utimensat(dir, temp, &data::times_of(st), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn dir_metadata(s: &Step, host: &mut Tree, upper: &mut Tree) -> io::Result<()> {
    let st = upper_stat(upper, &s.rel)?;
    let vm = upper.dir(&s.rel)?.try_clone()?;
    let attrs = data::fd_xattrs(vm.as_fd())?;
    let h = host.dir(&s.rel)?;
    rustix::fs::fchown(h, Some(data::uid_of(&st)), Some(data::gid_of(&st)))?;
    rustix::fs::fchmod(h, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    data::set_fd_xattrs(h.as_fd(), &attrs, false)?;
    rustix::fs::futimens(h, &data::times_of(&st))?;
    Ok(())
}

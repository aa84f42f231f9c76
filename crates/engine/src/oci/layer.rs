//! A container's changes as an OCI image layer: a tar of what it added and
//! changed, read from its VM's layers, and an empty `.wh.NAME` for each path it
//! deleted (the image spec's whiteouts).
//!
//! The VM's files are hostile: every file is opened beneath its layer without
//! following a symlink on the way (a symlink is archived as a symlink), and
//! only regular files, directories and symlinks are archived.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::changes::diff::Change;
use crate::changes::scan::Kind;
use crate::layers::Layer;

/// Write the layer of `changes` (sorted by path, as a diff gives them) to
/// `out`: a temporary file beside it, synced, renamed over it.
pub fn write(out: &Path, changes: &[Change], layers: &[Layer]) -> io::Result<()> {
    let dir = out.parent().unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp);
    let written = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut tar = tar::Builder::new(file);
        for c in changes {
            append(&mut tar, c, layers)?;
        }
        let mut file = tar.into_inner()?;
        file.flush()?;
        file.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The layer a VM path is in: the one of the longest mount point above it.
fn layer_of<'a>(layers: &'a [Layer], path: &Path) -> Option<(&'a Layer, PathBuf)> {
    layers
        .iter()
        .filter(|l| path.starts_with(&l.mount_point))
        .max_by_key(|l| l.mount_point.as_os_str().len())
        .map(|l| {
            let rel = path.strip_prefix(&l.mount_point).unwrap_or(Path::new(""));
            (l, rel.to_owned())
        })
}

fn append(tar: &mut tar::Builder<std::fs::File>, c: &Change, layers: &[Layer]) -> io::Result<()> {
    let in_tar = c.path.strip_prefix("/").unwrap_or(&c.path);
    if in_tar.as_os_str().is_empty() {
        return Ok(());
    }
    if c.kind == Kind::Deleted {
        let (Some(parent), Some(name)) = (in_tar.parent(), in_tar.file_name()) else {
            return Ok(());
        };
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        return tar.append_data(&mut h, parent.join(wh), io::empty());
    }
    let Some((layer, rel)) = layer_of(layers, &c.path) else {
        return Ok(());
    };
    let upper = rustix::fs::open(
        layer.upper(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // The parent beneath the layer, no symlink on the way; then the entry
    // itself, not followed.
    let (parent, name): (OwnedFd, OsString) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => {
            let p = if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            };
            match rustix::fs::openat2(
                &upper,
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => (fd, n.to_owned()),
                // Under a symlink or a file: not an entry of the layer (its
                // parent is archived as what it is).
                Err(
                    rustix::io::Errno::LOOP
                    | rustix::io::Errno::NOTDIR
                    | rustix::io::Errno::XDEV
                    | rustix::io::Errno::NOENT,
                ) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        // The layer's own root (a changed mount point).
        _ => (upper, OsString::from(".")),
    };
    let st = match rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        // Gone since the diff (it can't be while the VM is stopped): nothing.
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, in_tar, io::empty())
        }
        FileType::RegularFile => {
            let fd = rustix::fs::openat(
                &parent,
                &name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let file = std::fs::File::from(fd);
            let len = file.metadata()?.len();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(len);
            // Exactly the size in the header, whatever the file does meanwhile.
            tar.append_data(&mut h, in_tar, io::Read::take(file, len))
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(&parent, &name, Vec::new())?;
            let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, in_tar, target)
        }
        // Devices, fifos, sockets: not part of a layer fvm exports.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str, kind: Kind) -> Change {
        Change {
            path: path.into(),
            path_hex: None,
            kind,
            size: 0,
            same_as_host: false,
        }
    }

    #[test]
    fn a_layer_has_files_symlinks_and_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("layer/upper");
        std::fs::create_dir_all(upper.join("etc/new")).unwrap();
        std::fs::write(upper.join("etc/new/file"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", upper.join("etc/link")).unwrap();
        // A symlinked directory in the layer: its "children" are never read
        // through it.
        std::os::unix::fs::symlink("/etc", upper.join("etc/dirlink")).unwrap();
        let layers = [Layer {
            mount_point: "/".into(),
            dir: tmp.path().join("layer"),
        }];
        let changes = [
            change("/etc", Kind::Changed),
            change("/etc/dirlink", Kind::Added),
            change("/etc/dirlink/passwd", Kind::Added),
            change("/etc/gone", Kind::Deleted),
            change("/etc/link", Kind::Added),
            change("/etc/new", Kind::Added),
            change("/etc/new/file", Kind::Added),
        ];
        let out = tmp.path().join("layer.tar");
        // Nothing is read through the symlinked directory: /etc/dirlink/passwd
        // is not in the layer (the host's /etc/passwd would have been).
        write(&out, &changes, &layers).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut e = entry.unwrap();
            let path = e.path().unwrap().into_owned();
            let kind = e.header().entry_type();
            let link = e.link_name().unwrap().map(|l| l.into_owned());
            let mut body = String::new();
            io::Read::read_to_string(&mut e, &mut body).unwrap();
            seen.push((path, kind, link, body));
        }
        let names: Vec<String> = seen
            .iter()
            .map(|(p, _, _, _)| p.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/dirlink",
                "etc/.wh.gone",
                "etc/link",
                "etc/new",
                "etc/new/file"
            ]
        );
        assert_eq!(seen[1].1, tar::EntryType::Symlink);
        assert_eq!(seen[3].2.as_deref(), Some(Path::new("/etc/shadow")));
        assert_eq!(seen[5].3, "hello");
    }
}

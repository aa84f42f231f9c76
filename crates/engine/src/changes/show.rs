//! `diff -u`: both versions of each changed path, the host's and the VM's, with
//! what a reviewer needs to compare them: metadata (type, mode, owner, xattrs,
//! a symlink's target) and, for regular files, the content if it is small text,
//! else its size and sha256.
//!
//! Both sides are read beneath their roots without following symlinks (see
//! `tree`): the VM's from its upper layer, the host's from beneath its mount.
//! The VM's side is hostile: a file is read only up to the size it had when it
//! was opened, so one that grows while it is read can't make this run forever,
//! and at most [`TEXT_MAX`] bytes of it are held in memory.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};
use sha2::{Digest, Sha256};

use super::data;
use super::scan::{Item, Kind, VmEntry};
use super::tree::Tree;
use crate::layers::Layer;

/// Files up to this size that hold no NUL byte and are UTF-8 are shown as text.
pub const TEXT_MAX: u64 = 4 << 20;

/// One side of a changed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub kind: &'static str,
    /// Permission bits (and setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub xattrs: data::Xattrs,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Not a regular file.
    None,
    Text(String),
    /// Binary, or too big to show: its sha256 in hex.
    Digest(String),
    /// It could not be read (it changed or vanished meanwhile).
    Unreadable(String),
}

/// A changed path, both ways.
#[derive(Debug, Clone)]
pub struct Detail {
    pub path: PathBuf,
    pub kind: Kind,
    pub host: Option<Side>,
    pub vm: Option<Side>,
}

/// Read both sides of `items` (changes of `layers`), one change at a time: each
/// goes to `each` before the next is read, so at most one file's text (two
/// sides of [`TEXT_MAX`]) is held however many changes there are.
pub fn details(
    layers: &[Layer],
    items: &[Item],
    each: &mut dyn FnMut(Detail) -> io::Result<()>,
) -> io::Result<()> {
    let mut uppers: Vec<Option<Tree>> = layers.iter().map(|_| None).collect();
    let mut hosts: Vec<Option<Tree>> = layers.iter().map(|_| None).collect();
    for it in items {
        let l = &layers[it.layer];
        let vm = match it.vm {
            VmEntry::Whiteout | VmEntry::Hidden => None,
            _ => {
                let t = tree(&mut uppers[it.layer], &l.upper())?;
                side(t, &it.rel)?
            }
        };
        let host = match it.host {
            Some(_) => {
                let t = tree(&mut hosts[it.layer], &l.mount_point)?;
                side(t, &it.rel)?
            }
            None => None,
        };
        each(Detail {
            path: it.path.clone(),
            kind: it.kind,
            host,
            vm,
        })?;
    }
    Ok(())
}

fn tree<'a>(slot: &'a mut Option<Tree>, root: &Path) -> io::Result<&'a mut Tree> {
    if slot.is_none() {
        *slot = Some(Tree::open(root)?);
    }
    Ok(slot.as_mut().expect("just opened"))
}

/// The entry at `rel` in `t`, or `None` if it is gone.
fn side(t: &mut Tree, rel: &Path) -> io::Result<Option<Side>> {
    let Some(st) = t.lstat(rel)? else {
        return Ok(None);
    };
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice if st.st_rdev == 0 => "whiteout",
        _ => "device",
    };
    let mut side = Side {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        xattrs: Vec::new(),
        target: None,
        content: Content::None,
    };
    match kind {
        "file" => match t.open_file(rel) {
            Ok(fd) => {
                side.xattrs = data::fd_xattrs(fd.as_fd()).unwrap_or_default();
                side.content = content(&fd).unwrap_or_else(|e| Content::Unreadable(e.to_string()));
            }
            Err(e) => side.content = Content::Unreadable(e.to_string()),
        },
        "directory" => {
            if let Ok(fd) = t.dir(rel) {
                side.xattrs = data::fd_xattrs(fd.as_fd()).unwrap_or_default();
            }
        }
        "symlink" => {
            side.target = t.readlink(rel).ok().map(|c| c.into_bytes());
            if let Ok((dir, name)) = t.parent(rel) {
                side.xattrs =
                    data::path_xattrs(&data::at_path(dir.as_fd(), &name)).unwrap_or_default();
            }
        }
        _ => {}
    }
    side.xattrs.sort();
    Ok(Some(side))
}

/// Small text as it is, anything else as its sha256; never more than the size
/// the file had when opened.
fn content(fd: &OwnedFd) -> io::Result<Content> {
    let st: Stat = rustix::fs::fstat(fd)?;
    let size = st.st_size as u64;
    let mut hash = Sha256::new();
    let mut text: Option<Vec<u8>> = (size <= TEXT_MAX).then(Vec::new);
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0u64;
    while off < size {
        let want = (size - off).min(buf.len() as u64) as usize;
        let n = match rustix::io::pread(fd, &mut buf[..want], off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        hash.update(&buf[..n]);
        if let Some(t) = &mut text {
            t.extend_from_slice(&buf[..n]);
        }
        off += n as u64;
    }
    let digest = || {
        use std::fmt::Write as _;
        hash.clone()
            .finalize()
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    };
    Ok(match text {
        Some(t) if !t.contains(&0) => match String::from_utf8(t) {
            Ok(s) => Content::Text(s),
            Err(_) => Content::Digest(digest()),
        },
        _ => Content::Digest(digest()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_binary_and_symlinks_are_read_beneath_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t"), "a\nb\n").unwrap();
        std::fs::write(d.path().join("b"), b"\0\x01").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("l")).unwrap();
        let mut t = Tree::open(d.path()).unwrap();
        let text = side(&mut t, Path::new("t")).unwrap().unwrap();
        assert_eq!(text.content, Content::Text("a\nb\n".into()));
        let bin = side(&mut t, Path::new("b")).unwrap().unwrap();
        // sha256 of the bytes 00 01.
        assert_eq!(
            bin.content,
            Content::Digest(
                "b413f47d13ee2fe6c845b2ee141af81de858df4ec549a58b7970bb96645bc8d2".into()
            )
        );
        let link = side(&mut t, Path::new("l")).unwrap().unwrap();
        assert_eq!(link.kind, "symlink");
        assert_eq!(link.target.as_deref(), Some(&b"/etc/passwd"[..]));
        assert_eq!(link.content, Content::None);
        assert!(side(&mut t, Path::new("none")).unwrap().is_none());
    }
}

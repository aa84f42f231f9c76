//! `copy_tree` on temp dirs: every entry type and every piece of metadata, with
//! the overlayfs markers and foreign owners (root only) in a test of their own.

use super::*;
use crate::testing::require_root;
use rustix::fs::{Timespec, Timestamps, Uid};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Set an xattr on `path` (a symlink itself, not what it points at).
fn set_xattr(path: impl AsRef<Path>, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path.as_ref(), name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// An xattr of `path` (not following a symlink), if it has it.
fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    data::value(|b| rustix::fs::lgetxattr(path, name, b)).unwrap()
}

fn name(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

/// Everything a clone must keep about each path under `root` (atime only for
/// what the copy never reads: reading a file, a dir or a symlink may update it).
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let m = std::fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let list = data::grow(|b| rustix::fs::llistxattr(&path, b)).unwrap();
            let mut xattrs: Vec<String> = data::all_names(&list)
                .into_iter()
                .map(|n| {
                    let v = data::value(|b| rustix::fs::lgetxattr(&path, n.as_c_str(), b))
                        .unwrap()
                        .unwrap_or_default();
                    format!("{}={v:?}", n.to_string_lossy())
                })
                .collect();
            xattrs.sort();
            let mut d = format!(
                "mode {:o} uid {} gid {} nlink {} mtime {}.{} xattrs {xattrs:?}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.nlink(),
                m.mtime(),
                m.mtime_nsec()
            );
            if ft.is_file() {
                let content = std::fs::read(&path).unwrap();
                let hash = content.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
                });
                d += &format!(" size {} fnv {hash:x}", content.len());
            } else if ft.is_symlink() {
                d += &format!(" -> {:?}", std::fs::read_link(&path).unwrap());
            } else if !ft.is_dir() {
                d += &format!(" rdev {} atime {}.{}", m.rdev(), m.atime(), m.atime_nsec());
            }
            out.insert(path.strip_prefix(root).unwrap().to_owned(), d);
            if ft.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let m = std::fs::symlink_metadata(root).unwrap();
    out.insert(
        PathBuf::new(),
        format!("mode {:o} mtime {}", m.mode(), m.mtime()),
    );
    walk(root, root, &mut out);
    out
}

/// Give every path below `root` (and `root`) its own times, children first so
/// that a directory's times are not changed by setting its children's.
fn stamp_times(root: &Path) {
    let mut paths: Vec<PathBuf> = vec![root.to_owned()];
    let mut i = 0;
    while i < paths.len() {
        let p = paths[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                paths.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    for (n, p) in paths.iter().enumerate().rev() {
        let n = n as i64;
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 1_000_000_000 + n,
                tv_nsec: 111 * n,
            },
            last_modification: Timespec {
                tv_sec: 1_100_000_000 + n,
                tv_nsec: 222 * n,
            },
        };
        rustix::fs::utimensat(rustix::fs::CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }
}

fn copy(src: &Path, dst: &Path) -> (CopyStats, u64) {
    let mut reported = 0;
    let stats = copy_tree(src, dst, &mut |n| reported += n).unwrap();
    (stats, reported)
}

#[test]
fn every_entry_type_and_its_metadata_is_cloned() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("upper");
    std::fs::create_dir_all(src.join("dir/sub")).unwrap();
    std::fs::write(src.join("dir/sub/deep"), "deep\n").unwrap();
    std::fs::write(src.join("file"), "hello\n").unwrap();
    set_xattr(src.join("file"), "user.note", b"a note");
    set_xattr(src.join("dir"), "user.dir", b"\x00\xffbinary");
    std::fs::write(src.join("empty"), "").unwrap();
    std::fs::write(src.join("setuid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("setuid"), PermissionsExt::from_mode(0o4755)).unwrap();
    for (dir, mode) in [("sticky", 0o1777), ("setgid", 0o2750), ("readonly", 0o555)] {
        std::fs::create_dir(src.join(dir)).unwrap();
        std::fs::write(src.join(dir).join("in"), dir).unwrap();
        std::fs::set_permissions(src.join(dir), PermissionsExt::from_mode(mode)).unwrap();
    }
    for odd in [&b"with space"[..], b"new\nline", b"bad\xffbyte", b"-dash"] {
        std::fs::write(src.join(name(odd)), odd).unwrap();
    }
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
    std::os::unix::fs::symlink(name(b"../bad\xffbyte"), src.join("dir/odd-link")).unwrap();
    std::os::unix::fs::symlink(&src, src.join("loop")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("sock"),
        FileType::Socket,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::fs::write(src.join("hard1"), "linked\n").unwrap();
    std::fs::hard_link(src.join("hard1"), src.join("dir/hard2")).unwrap();
    std::fs::hard_link(src.join("hard1"), src.join("dir/sub/hard3")).unwrap();
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    rustix::io::pwrite(&sparse, b"start", 0).unwrap();
    rustix::io::pwrite(&sparse, b"end", (64 << 20) - 3).unwrap();
    drop(sparse);
    std::fs::set_permissions(&src, PermissionsExt::from_mode(0o751)).unwrap();
    stamp_times(&src);
    let before = describe(&src);

    let dst = d.path().join("clone");
    let (stats, reported) = copy(&src, &dst);
    assert_eq!(describe(&dst), before);
    assert_eq!(describe(&src), before, "the source changed");

    let ino = |p: &str| std::fs::metadata(dst.join(p)).unwrap().ino();
    assert_eq!(ino("hard1"), ino("dir/hard2"));
    assert_eq!(ino("hard1"), ino("dir/sub/hard3"));
    assert_ne!(ino("hard1"), ino("file"));
    let sparse = std::fs::metadata(dst.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(
        sparse.blocks() * 512 <= 256 << 10,
        "not sparse: {} blocks",
        sparse.blocks()
    );
    assert_eq!(stats.hard_links, 2);
    assert_eq!(stats.dirs, 5);
    assert_eq!(stats.others, 5, "{stats:?}");
    assert_eq!(stats.bytes, reported);
    assert!(stats.bytes < 1 << 20, "holes were copied: {stats:?}");
}

#[test]
fn an_existing_destination_is_refused_and_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("upper");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let dst = d.path().join("taken");
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("mine"), "keep").unwrap();
    let e = copy_tree(&src, &dst, &mut |_| {}).unwrap_err();
    assert!(matches!(e, CopyError::Create { .. }), "{e}");
    assert_eq!(std::fs::read_to_string(dst.join("mine")).unwrap(), "keep");
    assert!(!dst.join("f").exists());
    let e = copy_tree(
        &d.path().join("missing"),
        &d.path().join("new"),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, CopyError::Read { .. }), "{e}");
}

#[test]
fn a_symlinked_upper_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, d.path().join("upper")).unwrap();
    assert!(
        copy_tree(
            &d.path().join("upper"),
            &d.path().join("clone"),
            &mut |_| {}
        )
        .is_err()
    );
}

/// The overlayfs markers (whiteouts, opaque dirs), foreign owners with setuid,
/// devices, ACLs and file capabilities: all need root to make.
#[test]
fn overlay_markers_owners_acls_and_capabilities_are_cloned() {
    if !require_root("overlay_markers_owners_acls_and_capabilities_are_cloned") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("upper");
    std::fs::create_dir_all(src.join("opaque/inner")).unwrap();
    set_xattr(src.join("opaque"), "trusted.overlay.opaque", b"y");
    std::fs::write(src.join("opaque/inner/new"), "new\n").unwrap();
    let at = |p: &str| src.join(p);
    let mknod = |p: &str, ft, dev| {
        rustix::fs::mknodat(rustix::fs::CWD, at(p), ft, Mode::from_raw_mode(0o600), dev).unwrap()
    };
    mknod("whiteout", FileType::CharacterDevice, 0);
    mknod("opaque/gone", FileType::CharacterDevice, 0);
    mknod("null", FileType::CharacterDevice, rustix::fs::makedev(1, 3));
    mknod("loop", FileType::BlockDevice, rustix::fs::makedev(7, 0));
    set_xattr(at("whiteout"), "trusted.fvm-test", b"on a device");
    std::os::unix::fs::symlink("target", at("link")).unwrap();
    set_xattr(at("link"), "trusted.overlay.fvm-test", b"on a symlink");
    rustix::fs::chownat(
        rustix::fs::CWD,
        at("link"),
        Some(Uid::from_raw(4321)),
        None,
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();

    std::fs::write(at("suid"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(at("suid"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(at("suid"), PermissionsExt::from_mode(0o6755)).unwrap();
    std::fs::write(at("cap"), "binary").unwrap();
    std::os::unix::fs::chown(at("cap"), Some(1234), Some(1234)).unwrap();
    // VFS_CAP_REVISION_2 with the effective flag, permitted = CAP_NET_BIND_SERVICE.
    let mut cap = vec![0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00];
    cap.resize(20, 0);
    set_xattr(at("cap"), "security.capability", &cap);
    // An access ACL (user 1000 r--, mask r--) and a default ACL on a directory.
    let acl = |entries: &[(u16, u16, u32)]| {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    };
    let full = acl(&[
        (1, 6, !0),
        (2, 4, 1000),
        (4, 4, !0),
        (0x10, 4, !0),
        (0x20, 0, !0),
    ]);
    std::fs::write(at("acl"), "acl").unwrap();
    set_xattr(at("acl"), "system.posix_acl_access", &full);
    set_xattr(at("opaque"), "system.posix_acl_default", &full);
    std::fs::set_permissions(&src, PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&src, Some(0), Some(0)).unwrap();
    stamp_times(&src);
    let before = describe(&src);
    assert!(
        before[Path::new("cap")].contains("security.capability"),
        "{before:?}"
    );

    let dst = d.path().join("clone");
    let (stats, _) = copy(&src, &dst);
    assert_eq!(describe(&dst), before);
    let opaque = get_xattr(&dst.join("opaque"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    let wh = std::fs::symlink_metadata(dst.join("opaque/gone")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()) && wh.rdev() == 0);
    let suid = std::fs::metadata(dst.join("suid")).unwrap();
    assert_eq!(
        (suid.mode() & 0o7777, suid.uid(), suid.gid()),
        (0o6755, 1234, 5678)
    );
    assert_eq!(stats.others, 5, "{stats:?}");
}

/// `rel`, mode, link count and mtime of every entry, by the fd walk (paths can
/// be longer than PATH_MAX).
fn describe_deep(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    layer::walk(
        root,
        &mut |e| {
            out.push(format!(
                "{} {:o} {} {}",
                e.rel.display(),
                e.stat.st_mode,
                e.stat.st_nlink,
                e.stat.st_mtime
            ));
            Ok(Descend::Yes)
        },
        &mut |_| Ok(()),
    )
    .unwrap();
    out
}

#[test]
fn trees_deeper_than_the_fd_window_and_path_max_are_cloned_with_their_links() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("top"), "linked").unwrap();
    let name = std::ffi::CString::new("n".repeat(100)).unwrap();
    let depth = dirchain::WINDOW * 2 + libc::PATH_MAX as usize / 100;
    let mut c = DirChain::open(&src).unwrap();
    for _ in 0..depth {
        rustix::fs::mkdirat(c.top().unwrap(), &name, Mode::from_raw_mode(0o751)).unwrap();
        c.enter(&name).unwrap();
    }
    // A hard link at the bottom to a file at the top, and one the other way.
    let top = rustix::fs::open(&src, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    rustix::fs::linkat(&top, c"top", c.top().unwrap(), c"bottom", AtFlags::empty()).unwrap();
    drop(c);
    let (stats, _) = copy(&src, &d.path().join("dst"));
    assert_eq!(stats.dirs, depth as u64);
    assert_eq!((stats.files, stats.hard_links), (1, 1));
    assert_eq!(describe_deep(&src), describe_deep(&d.path().join("dst")));
}

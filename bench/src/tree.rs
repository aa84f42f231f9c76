//! Trees of small files copied from /usr, and tarballs of them: what the host
//! workload of the host-changes section and the I/O section untar.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::measure::check_output;

/// The tree's files are at most this big: many small files, metadata-heavy.
pub const TREE_FILE_MAX: u64 = 32 << 10;

/// The tree the workload untars: paths relative to `base`.
#[derive(Debug, Default)]
struct Tree {
    paths: Vec<PathBuf>,
    files: usize,
    bytes: u64,
}

/// Directories, symlinks and regular files of at most [`TREE_FILE_MAX`] under
/// each of `roots` (relative to `base`) in turn, in path order (bytewise), until
/// the files hold `want` bytes.
fn pick_tree(base: &Path, roots: &[&str], want: u64) -> Tree {
    let mut t = Tree::default();
    walk_sorted(base, roots, |rel, meta| {
        let kind = meta.file_type();
        if kind.is_dir() || kind.is_symlink() {
            t.paths.push(rel);
        } else if kind.is_file() && meta.len() <= TREE_FILE_MAX {
            t.paths.push(rel);
            t.files += 1;
            t.bytes += meta.len();
        }
        t.bytes < want
    });
    t
}

/// Every entry under each of `roots` (relative to `base`) in turn, in path order
/// (bytewise), without following symlinks: `visit` gets its path relative to
/// `base` and its metadata, and returns whether to go on. Unreadable entries are
/// skipped.
pub fn walk_sorted(
    base: &Path,
    roots: &[&str],
    mut visit: impl FnMut(PathBuf, &fs::Metadata) -> bool,
) {
    for root in roots {
        let mut stack = vec![PathBuf::from(root)];
        while let Some(rel) = stack.pop() {
            let path = base.join(&rel);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir()
                && let Ok(entries) = fs::read_dir(&path)
            {
                let mut names: Vec<OsString> =
                    entries.filter_map(|e| Some(e.ok()?.file_name())).collect();
                names.sort();
                stack.extend(names.into_iter().rev().map(|n| rel.join(n)));
            }
            if !visit(rel, &meta) {
                return;
            }
        }
    }
}

/// A tarball of small files copied from /usr/share (then /usr/lib), in `dir`.
pub struct Tarball {
    pub path: PathBuf,
    /// Directories, symlinks and files in it.
    pub entries: usize,
    pub files: usize,
    /// Bytes of file content, and of the tarball.
    pub file_bytes: u64,
    pub tar_bytes: u64,
}

/// Write `dir/tree.tar`: a tree of files of at most [`TREE_FILE_MAX`] bytes, holding
/// `mib` MiB, picked from /usr/share and then /usr/lib in path order.
pub fn make_tarball(dir: &Path, mib: usize) -> Result<Tarball> {
    let tree = pick_tree(Path::new("/usr"), &["share", "lib"], mib as u64 * (1 << 20));
    if tree.files == 0 {
        bail!("found no files of at most {TREE_FILE_MAX} bytes under /usr/share or /usr/lib");
    }
    let list = dir.join("tree.list");
    let mut names = Vec::new();
    for path in &tree.paths {
        names.extend_from_slice(path.as_os_str().as_bytes());
        names.push(0);
    }
    fs::write(&list, names).with_context(|| format!("writing {}", list.display()))?;
    let tar = dir.join("tree.tar");
    check_output(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .args(["--null", "--no-recursion", "-C", "/usr", "-T"])
            .arg(&list),
    )?;
    Ok(Tarball {
        tar_bytes: fs::metadata(&tar)?.len(),
        path: tar,
        entries: tree.paths.len(),
        files: tree.files,
        file_bytes: tree.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_takes_small_files_in_path_order_up_to_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("share");
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("a"), vec![0u8; 100]).unwrap();
        fs::write(root.join("b/big"), vec![0u8; TREE_FILE_MAX as usize + 1]).unwrap();
        fs::write(root.join("b/c/d"), vec![0u8; 100]).unwrap();
        fs::write(root.join("e"), vec![0u8; 100]).unwrap();
        std::os::unix::fs::symlink("a", root.join("b/link")).unwrap();
        let t = pick_tree(dir.path(), &["share", "missing"], 200);
        let names: Vec<String> = t.paths.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            ["share", "share/a", "share/b", "share/b/c", "share/b/c/d"]
        );
        assert_eq!((t.files, t.bytes), (2, 200));
        let all = pick_tree(dir.path(), &["share"], u64::MAX);
        assert_eq!(all.files, 3);
        assert!(all.paths.iter().any(|p| p.ends_with("link")));
    }
}

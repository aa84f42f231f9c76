//! A throw-away fvm store for the benchmark, and the guard that empties it.
//!
//! Everything the benchmark creates lives in one temporary store. On drop (also when a
//! measurement fails half-way) the guard stops the VMs it started, force-deletes every
//! VM it created or finds in the store, and removes the directory, but only when no
//! mount is left under it: removing files through a leftover mount could reach the host.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::measure::check_output;

#[derive(Debug)]
pub struct Store {
    fvm: PathBuf,
    root: PathBuf,
    /// VMs this benchmark created and has not deleted yet.
    created: RefCell<BTreeSet<String>>,
    /// VMs this benchmark started and has not stopped yet.
    started: RefCell<BTreeSet<String>>,
}

impl Store {
    /// Makes an empty store in a new temporary directory under `parent`.
    pub fn new(fvm: &Path, parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fvm-bench-")
            .tempdir_in(parent)
            .with_context(|| format!("creating a temporary store under {}", parent.display()))?;
        // We remove it ourselves, after checking that nothing is mounted below it.
        let root = dir.keep();
        let root = fs::canonicalize(&root)
            .with_context(|| format!("resolving store path {}", root.display()))?;
        Ok(Self {
            fvm: fvm.to_path_buf(),
            root,
            created: RefCell::default(),
            started: RefCell::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's id, as fvm names its host-side objects (cgroups
    /// `fvm-<id>-VM`, nft tables `fvm-<id>`): the FNV-1a hash (32 bits) of the
    /// store's canonical path, as the engine's `store_id` computes it.
    pub fn id(&self) -> String {
        id_of(&self.root)
    }

    /// The fvm binary measured.
    pub fn fvm_binary(&self) -> &Path {
        &self.fvm
    }

    /// `fvm --root DIR`, ready for a verb.
    pub fn fvm(&self) -> Command {
        let mut cmd = Command::new(&self.fvm);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.root.join("vms").join(name)
    }

    /// `fvm create NAME`, for the timed subject. The name is recorded before the
    /// command runs, so a half-finished create is still cleaned up.
    pub fn create_command(&self, name: &str) -> Command {
        self.created.borrow_mut().insert(name.to_owned());
        let mut cmd = self.fvm();
        cmd.args(["create", name]);
        cmd
    }

    pub fn create(&self, name: &str) -> Result<()> {
        check_output(&mut self.create_command(name))
    }

    pub fn start(&self, name: &str) -> Result<()> {
        self.started.borrow_mut().insert(name.to_owned());
        check_output(self.fvm().args(["start", name]))
    }

    pub fn stop(&self, name: &str) -> Result<()> {
        check_output(self.fvm().args(["stop", name]))?;
        self.started.borrow_mut().remove(name);
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        check_output(self.fvm().args(["delete", name]))?;
        self.created.borrow_mut().remove(name);
        Ok(())
    }

    /// VM names present in the store directory, whoever made them (`run --rm` included).
    /// Names starting with `.` are fvm's own (a deleted VM's layers waiting in the
    /// trash, a create in progress), never VMs.
    pub fn listed(&self) -> BTreeSet<String> {
        let Ok(entries) = fs::read_dir(self.root.join("vms")) else {
            return BTreeSet::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let started = self.started.take();
        for name in started {
            if let Err(err) = self.stop(&name) {
                eprintln!("fvm-bench: cleanup: stopping VM {name}: {err:#}");
            }
        }
        let mut names = self.created.take();
        names.extend(self.listed());
        for name in names {
            let res = check_output(self.fvm().args(["delete", "--force", &name]));
            if let Err(err) = res
                && self.vm_dir(&name).exists()
            {
                eprintln!("fvm-bench: cleanup: deleting VM {name}: {err:#}");
            }
        }
        match mounts_under(&self.root) {
            Ok(mounts) if mounts.is_empty() => {
                if let Err(err) = fs::remove_dir_all(&self.root) {
                    eprintln!(
                        "fvm-bench: cleanup: removing {}: {err}",
                        self.root.display()
                    );
                }
            }
            Ok(mounts) => eprintln!(
                "fvm-bench: cleanup: leaving {} in place, still mounted below it: {}",
                self.root.display(),
                mounts.join(", ")
            ),
            Err(err) => eprintln!(
                "fvm-bench: cleanup: leaving {} in place, cannot read the mount table: {err:#}",
                self.root.display()
            ),
        }
    }
}

/// Mount points at or below `dir` in this process's mount namespace.
fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let table = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(mount_points(&table)
        .into_iter()
        .filter(|m| Path::new(m).starts_with(dir))
        .collect())
}

/// The filesystem type of the mount that holds `path`, for the report.
pub fn fs_type(path: &Path) -> Result<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    table
        .lines()
        .filter_map(|line| {
            let point = unescape_octal(line.split(' ').nth(4)?);
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
            Some((point, fstype.to_owned()))
        })
        .filter(|(point, _)| path.starts_with(point))
        // Later lines are mounted on top of earlier ones at the same point.
        .max_by_key(|(point, _)| point.len())
        .map(|(_, fstype)| fstype)
        .with_context(|| format!("no mount holds {}", path.display()))
}

/// The mount point field (the fifth) of each mountinfo line, with octal escapes undone.
fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mount paths as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escape {
            Some(d) => {
                let code = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(code).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Allocated bytes (st_blocks × 512) of `path` and everything below it, symlinks not
/// followed. A mount point inside the tree is an error: its blocks belong elsewhere.
pub fn disk_usage(path: &Path) -> Result<u64> {
    let top = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let top_dev = top.dev();
    let mut total = 0;
    let mut pending = vec![(path.to_path_buf(), top)];
    while let Some((p, meta)) = pending.pop() {
        if meta.dev() != top_dev {
            bail!("{} is a mount point; disk use would be wrong", p.display());
        }
        total += meta.blocks() * 512;
        if meta.is_dir() {
            for entry in fs::read_dir(&p).with_context(|| format!("listing {}", p.display()))? {
                let entry = entry.with_context(|| format!("listing {}", p.display()))?;
                let child = entry.path();
                let meta = fs::symlink_metadata(&child)
                    .with_context(|| format!("stat {}", child.display()))?;
                pending.push((child, meta));
            }
        }
    }
    Ok(total)
}

fn id_of(root: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u32 = 0x811c_9dc5;
    for b in root.as_os_str().as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// What a benchmark section leaves on the host, found and removed by `sweep`
/// (one line per thing left behind).
pub trait Sweep {
    fn sweep(&self) -> Vec<String>;
}

/// Sweeps up after a section: [`Swept::finish`] after a successful run, where
/// anything left behind is an error; on drop (the section failed) it sweeps and
/// reports what it found.
pub struct Swept<S: Sweep> {
    pub inner: S,
    armed: bool,
}

impl<S: Sweep> Swept<S> {
    pub fn new(inner: S) -> Self {
        Swept { inner, armed: true }
    }

    pub fn finish(mut self) -> Result<()> {
        self.armed = false;
        let left = self.inner.sweep();
        if !left.is_empty() {
            bail!(
                "after deleting every VM, fvm left behind: {}",
                left.join("; ")
            );
        }
        Ok(())
    }
}

impl<S: Sweep> Drop for Swept<S> {
    fn drop(&mut self) {
        if self.armed {
            for problem in self.inner.sweep() {
                eprintln!("fvm-bench: cleanup: {problem}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_mount_points_are_unescaped() {
        let table = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 0:50 / /tmp/with\\040space rw shared:40 - tmpfs tmpfs rw
99 22 0:51 / /tmp/back\\134slash rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points(table),
            vec!["/", "/tmp/with space", "/tmp/back\\slash"]
        );
        assert_eq!(unescape_octal("a\\01"), "a\\01");
    }

    #[test]
    fn disk_usage_counts_files_and_dirs_but_not_symlink_targets() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_usage(dir.path()).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        fs::write(outside.path(), vec![1u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let with_link = disk_usage(dir.path()).unwrap();
        assert!(with_link < empty + 64 * 1024, "{empty} -> {with_link}");

        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/data"), vec![1u8; 100_000]).unwrap();
        let with_data = disk_usage(dir.path()).unwrap();
        assert!(
            with_data >= with_link + 100_000,
            "{with_link} -> {with_data}"
        );
    }

    #[test]
    fn disk_usage_of_missing_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(disk_usage(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn ids_follow_the_engine() {
        // FNV-1a of "" is the offset basis.
        assert_eq!(id_of(Path::new("")), "811c9dc5");
        assert_eq!(id_of(Path::new("/tmp/x")).len(), 8);
    }
}

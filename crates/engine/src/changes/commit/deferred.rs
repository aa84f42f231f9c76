//! Layer entries committed while their VM ran.
//!
//! A running VM's overlay keeps references to the entries of its upper layer:
//! unlinking one under it would leave a process that has the file open (or a
//! cached lookup of it) writing into a file nobody will ever see. So a commit of
//! a running VM leaves its layer alone and records what it committed here, with
//! each entry's inode and ctime. `diff` skips recorded entries that are unchanged
//! since, and the next start of the VM (when nothing has them open) removes them.
//! An entry the VM changed after the commit no longer matches and stays.

use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType};

use super::plan::Step;
use crate::changes::record::{Committed, Deleted, Record};
use crate::changes::tree::Tree;
use crate::layers::Layer;

pub fn load(path: &Path) -> io::Result<Committed> {
    Ok(Committed(
        read(path)?
            .into_iter()
            .map(|r| ((r.layer.clone(), r.rel.clone()), r))
            .collect(),
    ))
}

fn read(path: &Path) -> io::Result<Vec<Record>> {
    match crate::os::files::read_regular_max(path, crate::os::files::MAX_RECORD) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn write(path: &Path, records: &[Record]) -> io::Result<()> {
    if records.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let text = serde_json::to_vec(records).expect("records always serialize");
    crate::os::files::write_durable(path, &text, 0o600)
}

/// Add the layer entries of `steps` (committed just now) to the record.
pub fn record(
    path: &Path,
    steps: &[Step],
    layers: &[Layer],
    uppers: &mut [Tree],
) -> io::Result<()> {
    record_as(path, steps, layers, uppers, false)
}

/// Date the host's versions of `steps`, which fvm wrote for a commit dropped
/// half-way, without counting the entries as committed (see [`Record::dated_only`]).
pub fn record_dated(
    path: &Path,
    steps: &[Step],
    layers: &[Layer],
    uppers: &mut [Tree],
) -> io::Result<()> {
    record_as(path, steps, layers, uppers, true)
}

fn record_as(
    path: &Path,
    steps: &[Step],
    layers: &[Layer],
    uppers: &mut [Tree],
    dated_only: bool,
) -> io::Result<()> {
    if steps.is_empty() {
        return Ok(());
    }
    let mut all: std::collections::HashMap<(PathBuf, PathBuf), Record> = read(path)?
        .into_iter()
        .map(|r| ((r.layer.clone(), r.rel.clone()), r))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let committed = (now.as_secs() as i64, i64::from(now.subsec_nanos()));
    for s in steps.iter().filter(|s| s.in_layer) {
        if let Some(st) = uppers[s.layer].lstat(&s.rel)? {
            let layer = layers[s.layer].dir.clone();
            all.insert(
                (layer.clone(), s.rel.clone()),
                Record {
                    layer,
                    rel: s.rel.clone(),
                    ino: st.st_ino,
                    ctime: (st.st_ctime, st.st_ctime_nsec as i64),
                    dir: FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                    committed,
                    dated_only,
                },
            );
        }
    }
    let mut all: Vec<Record> = all.into_values().collect();
    all.sort_by(|a, b| (&a.layer, &a.rel).cmp(&(&b.layer, &b.rel)));
    write(path, &all)
}

/// With the VM stopped: remove the recorded entries that are still as committed
/// (deepest first; a directory only once empty). Entries the VM changed since stay,
/// and so do their records, which still date the host's version for conflicts.
pub fn settle(path: &Path) -> io::Result<usize> {
    let mut records = read(path)?;
    if records.is_empty() {
        return Ok(0);
    }
    records.sort_by(|a, b| (&b.layer, &b.rel).cmp(&(&a.layer, &a.rel)));
    let mut removed = 0;
    let mut kept = Vec::new();
    let mut trees: Vec<(PathBuf, Tree)> = Vec::new();
    for r in records {
        if !trees.iter().any(|(l, _)| l == &r.layer) {
            match Tree::open(&r.layer.join("upper")) {
                Ok(t) => trees.push((r.layer.clone(), t)),
                Err(_) => continue,
            }
        }
        let tree = &mut trees
            .iter_mut()
            .find(|(l, _)| l == &r.layer)
            .expect("just added")
            .1;
        let Some(st) = tree.lstat(&r.rel)? else {
            continue;
        };
        if st.st_ino != r.ino {
            continue;
        }
        if r.dated_only {
            kept.push(r);
            continue;
        }
        // Hard-linked files stay: removing one name would split it from the others
        // in the VM (overlayfs runs with index=off). Their record keeps them out of
        // diff while unchanged.
        if !r.dir && st.st_nlink > 1 {
            kept.push(r);
            continue;
        }
        let unchanged = r.dir || (st.st_ctime, st.st_ctime_nsec as i64) == r.ctime;
        let gone = unchanged && {
            let (dir, name) = tree.parent(&r.rel)?;
            let flags = if r.dir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            match rustix::fs::unlinkat(dir, &name, flags) {
                Ok(()) => true,
                Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTEMPTY) => false,
                Err(e) => return Err(e.into()),
            }
        };
        if gone {
            removed += 1;
        } else {
            kept.push(r);
        }
    }
    write(path, &kept)?;
    Ok(removed)
}

pub fn load_deleted(path: &Path) -> io::Result<Deleted> {
    match crate::os::files::read_regular_max(path, crate::os::files::MAX_RECORD) {
        Ok(text) => serde_json::from_str::<Vec<(i32, Vec<u8>)>>(&text)
            .map(|v| v.into_iter().collect())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Deleted::new()),
        Err(e) => Err(e),
    }
}

pub fn record_deleted(path: &Path, more: Vec<(i32, Vec<u8>)>) -> io::Result<()> {
    if more.is_empty() {
        return Ok(());
    }
    let mut all: Vec<(i32, Vec<u8>)> = load_deleted(path)?.into_iter().collect();
    all.extend(more);
    all.sort();
    all.dedup();
    let text = serde_json::to_vec(&all).expect("handles always serialize");
    crate::os::files::write_durable(path, &text, 0o600)
}

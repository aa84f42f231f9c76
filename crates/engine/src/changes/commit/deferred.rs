//! Layer entries committed while their VM ran.
//!
//! A running VM's overlay keeps references to the entries of its upper layer:
//! unlinking one under it would leave a process that has the file open (or a
//! cached lookup of it) writing into a file nobody will ever see. So a commit of
//! a running VM leaves its layer alone and records what it committed here, with
//! each entry's inode and ctime. `diff` skips recorded entries that are unchanged
//! since, and the next start of the VM (when nothing has them open) removes them.
//! An entry the VM changed after the commit no longer matches and stays.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Stat};
use serde::{Deserialize, Serialize};

use super::plan::Step;
use crate::changes::layer::Layer;
use crate::changes::tree::Tree;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    pub layer: PathBuf,
    pub rel: PathBuf,
    pub ino: u64,
    pub ctime: (i64, i64),
}

/// The recorded entries, for lookups while scanning.
#[derive(Debug, Clone, Default)]
pub struct Committed(HashSet<Record>);

impl Committed {
    /// Whether the entry at `rel` of `layer`, as it is now (`st`), was committed.
    pub fn contains(&self, layer: &Path, rel: &Path, st: &Stat) -> bool {
        !self.0.is_empty()
            && self.0.contains(&Record {
                layer: layer.to_owned(),
                rel: rel.to_owned(),
                ino: st.st_ino,
                ctime: (st.st_ctime, st.st_ctime_nsec as i64),
            })
    }
}

pub fn load(path: &Path) -> io::Result<Committed> {
    Ok(Committed(read(path)?.into_iter().collect()))
}

fn read(path: &Path) -> io::Result<Vec<Record>> {
    match crate::store::files::read_regular(path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Add the layer entries of `steps` (committed just now) to the record.
pub fn record(
    path: &Path,
    steps: &[Step],
    layers: &[Layer],
    uppers: &mut [Tree],
) -> io::Result<()> {
    let mut all = read(path)?;
    for s in steps.iter().filter(|s| s.in_layer) {
        if let Some(st) = uppers[s.layer].lstat(&s.rel)? {
            all.push(Record {
                layer: layers[s.layer].dir.clone(),
                rel: s.rel.clone(),
                ino: st.st_ino,
                ctime: (st.st_ctime, st.st_ctime_nsec as i64),
            });
        }
    }
    let text = serde_json::to_vec(&all).expect("records always serialize");
    crate::store::files::write_durable(path, &text, 0o600)
}

/// With the VM stopped: remove the recorded entries that are still as committed
/// (deepest first; a directory only once empty), then forget the record.
pub fn settle(path: &Path) -> io::Result<usize> {
    let mut records = read(path)?;
    if records.is_empty() {
        return Ok(0);
    }
    records.sort_by(|a, b| (&b.layer, &b.rel).cmp(&(&a.layer, &a.rel)));
    let mut removed = 0;
    let mut trees: Vec<(PathBuf, Tree)> = Vec::new();
    for r in &records {
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
        if st.st_ino != r.ino || (st.st_ctime, st.st_ctime_nsec as i64) != r.ctime {
            continue;
        }
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        let (dir, name) = tree.parent(&r.rel)?;
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(dir, &name, flags) {
            Ok(()) => removed += 1,
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTEMPTY) => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::remove_file(path)?;
    Ok(removed)
}

//! What a commit recorded: the layer entries committed while their VM ran
//! ([`Committed`], persisted by `commit::deferred`) and the host entries a
//! commit deleted ([`Deleted`]). Scanning, planning and the record itself all
//! read these, so they live here, below all three.

use std::path::{Path, PathBuf};

use rustix::fs::Stat;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub layer: PathBuf,
    pub rel: PathBuf,
    pub ino: u64,
    /// The entry's ctime when committed (a directory's moves with its entries, so
    /// only its inode counts).
    pub ctime: (i64, i64),
    pub dir: bool,
    /// When the host got this version: the host's own ctime for the path is at
    /// most this, and a later one is a host change (a conflict).
    pub committed: (i64, i64),
    /// Only dates the host's version (fvm wrote it, by a commit that was then
    /// dropped half-way): the entry is still a change of the VM, and stays in its
    /// layer, but the host's ctime up to `committed` is no host change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dated_only: bool,
}

/// The recorded entries, for lookups while scanning and planning.
#[derive(Debug, Clone, Default)]
pub struct Committed(pub(crate) std::collections::HashMap<(PathBuf, PathBuf), Record>);

impl Committed {
    fn find(&self, layer: &Path, rel: &Path, ino: u64) -> Option<&Record> {
        if self.0.is_empty() {
            return None;
        }
        self.0
            .get(&(layer.to_owned(), rel.to_owned()))
            .filter(|r| r.ino == ino)
    }

    /// Whether the entry at `rel` of `layer`, as it is now (`st`), is what was
    /// committed (so it is no change any more).
    pub fn contains(&self, layer: &Path, rel: &Path, st: &Stat) -> bool {
        self.find(layer, rel, st.st_ino).is_some_and(|r| {
            !r.dated_only && (r.dir || r.ctime == (st.st_ctime, st.st_ctime_nsec as i64))
        })
    }

    /// When an earlier commit wrote this entry to the host, if one did: the base
    /// for conflicts, since the host's ctime is ours from then on.
    pub fn committed_at(&self, layer: &Path, rel: &Path, ino: u64) -> Option<(i64, i64)> {
        self.find(layer, rel, ino).map(|r| r.committed)
    }
}

/// Host files that commits of this VM deleted, by file handle (type, bytes).
pub type Deleted = std::collections::HashSet<(i32, Vec<u8>)>;

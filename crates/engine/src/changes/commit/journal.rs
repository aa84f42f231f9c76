//! The commit journal: the plan and how far it got, on disk before the host is
//! touched, so that a commit killed at any moment is finished by the next
//! `fvm commit` of the VM (every phase can be repeated safely).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::Step;
use crate::changes::layer::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Write,
    Rename,
    Cleanup,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRef {
    pub mount_point: PathBuf,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Names the temp files of this commit.
    pub id: String,
    pub phase: Phase,
    pub layers: Vec<LayerRef>,
    pub steps: Vec<Step>,
    /// The VM was running: its layer is cleaned up at its next start instead.
    pub running: bool,
}

impl Journal {
    pub fn layers(&self) -> Vec<Layer> {
        self.layers
            .iter()
            .map(|l| Layer {
                mount_point: l.mount_point.clone(),
                dir: l.dir.clone(),
            })
            .collect()
    }

    pub fn load(path: &Path) -> io::Result<Option<Journal>> {
        match crate::store::files::read_regular_max(path, crate::store::files::MAX_RECORD) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        let text = serde_json::to_vec(self).expect("a journal always serializes");
        crate::store::files::write_durable(path, &text, 0o600)
    }
}

//! The commit journal: the plan and how far it got, on disk before the host is
//! touched, so that a commit killed at any moment is finished by the next
//! `fvm commit` of the VM (every phase can be repeated safely).

use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::{Action, Step};
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

    /// Check what can be checked without the host: the journal is input (a file
    /// anyone with access to the store could have written), and nothing in it is
    /// acted on unless it names the VM's own layers (`layers`, from the store),
    /// paths beneath their mount points without `..`, temp names of the expected
    /// form, and links to earlier steps. Returns why not.
    pub fn validate(&self, layers: &[Layer]) -> Result<(), String> {
        if self.id.len() != 8 || !self.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{:?} is not a commit id", self.id));
        }
        for l in &self.layers {
            if !layers
                .iter()
                .any(|v| v.mount_point == l.mount_point && v.dir == l.dir)
            {
                return Err(format!(
                    "the vm has no layer {} for mount point {}",
                    l.dir.display(),
                    l.mount_point.display()
                ));
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            let Some(l) = self.layers.get(s.layer) else {
                return Err(format!("step {i} names no layer of the journal"));
            };
            let clean = s.rel.components().count() > 0
                && s.rel
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !clean {
                return Err(format!("{:?} is not a path beneath a mount point", s.rel));
            }
            if s.path != l.mount_point.join(&s.rel) {
                return Err(format!(
                    "{} is not {} beneath {}",
                    s.path.display(),
                    s.rel.display(),
                    l.mount_point.display()
                ));
            }
            if let Action::Link { of } = s.action
                && (of >= i
                    || self.steps[of].action != Action::Put
                    || self.steps[of].layer != s.layer)
            {
                return Err(format!(
                    "step {i} links to a step that is no file before it"
                ));
            }
        }
        Ok(())
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

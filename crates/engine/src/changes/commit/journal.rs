//! The commit journal: the plan and how far it got, on disk before the host is
//! touched, so that a commit killed at any moment is finished by the next
//! `fvm commit` of the VM (every phase can be repeated safely).

use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::{Action, Step};
use crate::layers::Layer;

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
        match crate::os::files::read_regular_max(path, crate::os::files::MAX_RECORD) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        let text = serde_json::to_vec(self).expect("a journal always serializes");
        crate::os::files::write_durable(path, &text, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> Layer {
        Layer {
            mount_point: "/srv".into(),
            dir: "/store/vms/a/layers/srv".into(),
        }
    }

    fn step(rel: &str, action: Action) -> Step {
        Step {
            layer: 0,
            rel: rel.into(),
            path: Path::new("/srv").join(rel),
            action,
            in_layer: true,
            host_had: false,
            same: false,
        }
    }

    fn journal(steps: Vec<Step>) -> Journal {
        Journal {
            id: "0123abcd".into(),
            phase: Phase::Rename,
            layers: vec![LayerRef {
                mount_point: "/srv".into(),
                dir: "/store/vms/a/layers/srv".into(),
            }],
            steps,
            running: false,
        }
    }

    #[test]
    fn a_journal_of_the_vms_own_layers_and_clean_paths_is_accepted() {
        let j = journal(vec![
            step("d", Action::Dir),
            step("d/f", Action::Put),
            step("d/g", Action::Link { of: 1 }),
            step("old", Action::Remove),
        ]);
        assert_eq!(j.validate(&[layer()]), Ok(()));
    }

    #[test]
    fn anything_else_in_a_journal_is_refused() {
        let ok = journal(vec![step("f", Action::Put)]);
        // A layer the VM doesn't have (a decoy mount point).
        let mut decoy = ok.clone();
        decoy.layers[0].mount_point = "/tmp/decoy".into();
        decoy.steps[0].path = "/tmp/decoy/f".into();
        // Paths that leave the mount point, or aren't beneath it.
        let mut up = ok.clone();
        up.steps[0].rel = "d/../../etc/shadow".into();
        up.steps[0].path = "/srv/d/../../etc/shadow".into();
        let mut absolute = ok.clone();
        absolute.steps[0].rel = "/etc/shadow".into();
        let mut elsewhere = ok.clone();
        elsewhere.steps[0].path = "/etc/f".into();
        let mut empty = ok.clone();
        empty.steps[0].rel = "".into();
        empty.steps[0].path = "/srv".into();
        // Temp names are built from the id.
        let mut id = ok.clone();
        id.id = "../../x".into();
        // Links only to an earlier file.
        let forward = journal(vec![
            step("a", Action::Link { of: 1 }),
            step("b", Action::Put),
        ]);
        let to_dir = journal(vec![
            step("a", Action::Dir),
            step("b", Action::Link { of: 0 }),
        ]);
        let mut no_layer = ok.clone();
        no_layer.steps[0].layer = 3;
        for (what, j) in [
            ("decoy", decoy),
            ("up", up),
            ("absolute", absolute),
            ("elsewhere", elsewhere),
            ("empty", empty),
            ("id", id),
            ("forward", forward),
            ("to_dir", to_dir),
            ("no_layer", no_layer),
        ] {
            assert!(j.validate(&[layer()]).is_err(), "{what} was accepted");
        }
        assert_eq!(ok.validate(&[layer()]), Ok(()));
    }
}

//! `diff`: what a VM changed, relative to the host as it is now (see `scan`),
//! as `A`/`C`/`D` lines or JSON.
//!
//! Read from the upper layers directly, never by mounting them: an upper layer in
//! use by a running VM must not be mounted twice, so a running VM can be diffed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::commit::deferred::Committed;
use super::layer::Layer;
use super::scan::{self, VmEntry};
pub use super::scan::{Filter, Kind, ScanError};

/// One changed path, as the VM sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    pub kind: Kind,
    /// Size of the VM's version (files and symlinks), 0 otherwise.
    pub size: u64,
}

/// Paths that aren't UTF-8 are shown with replacement characters in JSON.
fn lossy<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// Every change in `layers` that the filter selects, sorted by path.
pub fn diff(
    layers: &[Layer],
    filter: &Filter,
    committed: &Committed,
) -> Result<Vec<Change>, ScanError> {
    Ok(scan::scan(layers, filter, committed)?
        .into_iter()
        .filter(|i| filter.selects(&i.path))
        .map(|i| Change {
            size: match (i.vm, i.upper) {
                (VmEntry::File | VmEntry::Symlink, Some(st)) => st.st_size as u64,
                _ => 0,
            },
            path: i.path,
            kind: i.kind,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_upper_has_no_changes() {
        let d = tempfile::tempdir().unwrap();
        let layer = Layer {
            mount_point: "/".into(),
            dir: d.path().join("nothing"),
        };
        assert!(
            diff(&[layer], &Filter::default(), &Committed::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn files_are_added_or_changed_against_the_host() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("old"), "h").unwrap();
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("l/upper");
        std::fs::create_dir_all(upper.join("newdir")).unwrap();
        std::fs::write(upper.join("old"), "vm").unwrap();
        std::fs::write(upper.join("newdir/f"), "vm!").unwrap();
        let layer = Layer {
            mount_point: host.path().to_owned(),
            dir: d.path().join("l"),
        };
        let got: Vec<(char, String, u64)> = diff(
            std::slice::from_ref(&layer),
            &Filter::default(),
            &Committed::default(),
        )
        .unwrap()
        .into_iter()
        .map(|c| {
            let rel = c
                .path
                .strip_prefix(host.path())
                .unwrap()
                .display()
                .to_string();
            (c.kind.letter(), rel, c.size)
        })
        .collect();
        assert_eq!(
            got,
            [
                ('A', "newdir".to_owned(), 0),
                ('A', "newdir/f".to_owned(), 3),
                ('C', "old".to_owned(), 2)
            ]
        );
        let only = Filter::new(vec![host.path().join("newdir")]);
        assert_eq!(
            diff(&[layer], &only, &Committed::default()).unwrap().len(),
            2
        );
    }
}

//! `discard`: drop a VM's changes at or under some paths, so that it sees the
//! host's version there again. The upper layer's entries under each path go
//! (files, whiteouts, directories with their opaque marker and all they hold);
//! the directories above a path stay.
//!
//! Only for a VM that is not running: overlayfs doesn't support changes to the
//! upper layer of a mounted overlay (the caller checks). Entries are removed
//! beneath the layer with directory fds, never following a symlink (see `tree`).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::diff::Change;
use super::record::Committed;
use super::scan::{self, Filter, ScanError};
use super::tree::Tree;
use crate::layers::Layer;

/// What `discard` dropped (or would drop).
#[derive(Debug, Default)]
pub struct Discarded {
    /// The changes that are gone from the VM, sorted by path.
    pub changes: Vec<Change>,
    /// A path that matches no change: nothing was touched.
    pub unmatched: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(
        "cannot discard {} alone: the vm replaced {} as a whole (discard that instead); nothing was discarded",
        crate::os::quote::path(.path),
        crate::os::quote::path(.unit)
    )]
    InsideUnit { path: PathBuf, unit: PathBuf },
    #[error("cannot remove {} from the vm's layer", crate::os::quote::path(.path))]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Drop the changes at or under the filter's paths (at least one), or with
/// `dry_run` only say which.
pub fn discard(
    layers: &[Layer],
    filter: &Filter,
    committed: &Committed,
    dry_run: bool,
) -> Result<Discarded, DiscardError> {
    let items = scan::scan(layers, filter, committed)?;
    if let Some(p) = filter.unmatched(&items) {
        return Ok(Discarded {
            changes: Vec::new(),
            unmatched: Some(p.to_owned()),
        });
    }
    // Inside a directory that hides the host's, dropping an entry would not show
    // the host's one: the directory above still hides it.
    for f in filter.paths() {
        if let Some(unit) = items
            .iter()
            .filter(|i| i.path.starts_with(f))
            .find_map(|i| i.unit.as_ref().filter(|u| !u.starts_with(f)))
        {
            return Err(DiscardError::InsideUnit {
                path: f.clone(),
                unit: unit.clone(),
            });
        }
    }
    let changes = super::diff::changes(
        items
            .into_iter()
            .filter(|i| filter.selects(&i.path))
            .collect(),
    );
    if !dry_run {
        for f in filter.paths() {
            remove(layers, f)?;
        }
    }
    Ok(Discarded {
        changes,
        unmatched: None,
    })
}

/// Remove what the layers hold at or under `path`: in the layer of the deepest
/// mount that holds `path`, and all of every layer mounted below `path`.
fn remove(layers: &[Layer], path: &Path) -> Result<(), DiscardError> {
    let owner = layers
        .iter()
        .filter(|l| path.starts_with(&l.mount_point))
        .max_by_key(|l| l.mount_point.as_os_str().len());
    for l in layers {
        let rel = if owner.is_some_and(|o| std::ptr::eq(o, l)) {
            path.strip_prefix(&l.mount_point).expect("a prefix")
        } else if l.mount_point.starts_with(path) {
            Path::new("")
        } else {
            continue;
        };
        let fail = |source| DiscardError::Remove {
            path: path.to_owned(),
            source,
        };
        let mut upper = match Tree::open(&l.upper()) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(e)),
        };
        if rel.as_os_str().is_empty() {
            let names = crate::os::dirchain::names(upper.dir(rel).map_err(fail)?).map_err(fail)?;
            for n in names {
                let n = Path::new(std::ffi::OsStr::from_bytes(n.to_bytes()));
                upper.remove(n).map_err(fail)?;
            }
        } else {
            upper.remove(rel).map_err(fail)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discard_drops_the_layer_entries_under_a_path_and_keeps_those_above() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("etc")).unwrap();
        std::fs::write(host.path().join("etc/keep"), "h").unwrap();
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("l/upper");
        std::fs::create_dir_all(upper.join("etc/new/deep")).unwrap();
        std::fs::write(upper.join("etc/keep"), "vm").unwrap();
        std::fs::write(upper.join("etc/new/deep/f"), "vm").unwrap();
        std::fs::write(upper.join("other"), "vm").unwrap();
        let layer = Layer {
            mount_point: host.path().to_owned(),
            dir: d.path().join("l"),
        };
        let layers = [layer];
        let f = Filter::new(vec![host.path().join("etc/new")]);
        let dry = discard(&layers, &f, &Committed::default(), true).unwrap();
        assert_eq!(dry.changes.len(), 3);
        assert!(upper.join("etc/new").exists());
        discard(&layers, &f, &Committed::default(), false).unwrap();
        assert!(!upper.join("etc/new").exists());
        assert!(upper.join("etc/keep").exists());
        let nope = Filter::new(vec![host.path().join("etc/nope")]);
        let r = discard(&layers, &nope, &Committed::default(), false).unwrap();
        assert_eq!(r.unmatched, Some(host.path().join("etc/nope")));
        assert!(upper.join("etc/keep").exists());
    }
}

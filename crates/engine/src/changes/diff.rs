//! `diff`: what a VM changed, relative to the host as it is now (see `scan`),
//! as `A`/`C`/`D` lines or JSON.
//!
//! Read from the upper layers directly, never by mounting them: an upper layer in
//! use by a running VM must not be mounted twice, so a running VM can be diffed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::record::Committed;
use super::scan::{self, Item, VmEntry};
pub use super::scan::{Filter, Kind, ScanError};
use crate::layers::Layer;

/// One changed path, as the VM sees it.
///
/// In JSON, `path` is the path as text (JSON's own escapes make control
/// characters exact); a path that is not UTF-8 can't be a JSON string, so it also
/// has `path_hex`, its bytes in hex, and `path` shows U+FFFD for the bad bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub kind: Kind,
    /// Size of the VM's version (files and symlinks), 0 otherwise.
    pub size: u64,
    /// Only a copy-up of the host's entry (shown with `--all`): the same content
    /// and metadata, or a directory whose own metadata didn't change.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub same_as_host: bool,
}

fn lossy<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The bytes of a path that is not UTF-8, in hex (for JSON, beside the path as
/// text with U+FFFD for the bad bytes).
pub fn hex_unless_utf8(p: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    bytes_hex_unless_utf8(p.as_os_str().as_bytes())
}

/// [`hex_unless_utf8`] for any bytes a VM chose (a symlink's target).
pub fn bytes_hex_unless_utf8(bytes: &[u8]) -> Option<String> {
    use std::fmt::Write as _;
    std::str::from_utf8(bytes).is_err().then(|| {
        bytes
            .iter()
            .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    })
}

/// What `diff` found.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    pub changes: Vec<Change>,
    /// A filter path that nothing changed is at or under (an error for callers
    /// that take paths: it is most likely a typo).
    pub unmatched: Option<PathBuf>,
}

/// Every change in `layers` that the filter selects, sorted by path; copy-ups
/// that changed nothing only with `all`.
pub fn diff(
    layers: &[Layer],
    filter: &Filter,
    committed: &Committed,
    all: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<Diff, ScanError> {
    let items = scan::scan_with_progress(layers, filter, committed, progress)?;
    let unmatched = filter.unmatched(&items).map(Path::to_owned);
    let changes = changes(
        items
            .into_iter()
            .filter(|i| filter.selects(&i.path) && (all || !i.same))
            .collect(),
    );
    Ok(Diff { changes, unmatched })
}

/// Scanned items as changes.
pub fn changes(items: Vec<Item>) -> Vec<Change> {
    items
        .into_iter()
        .map(|i| Change {
            size: match (i.vm, i.upper) {
                (VmEntry::File | VmEntry::Symlink, Some(st)) => st.st_size as u64,
                _ => 0,
            },
            path_hex: hex_unless_utf8(&i.path),
            path: i.path,
            kind: i.kind,
            same_as_host: i.same,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_exact_for_any_name() {
        use std::os::unix::ffi::OsStrExt;
        let change = |bytes: &[u8]| {
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(bytes));
            serde_json::to_value(Change {
                path_hex: hex_unless_utf8(&path),
                path,
                kind: Kind::Added,
                size: 0,
                same_as_host: false,
            })
            .unwrap()
        };
        let v = change(b"/a\x1b[2K\nb");
        assert_eq!(v["path"], "/a\u{1b}[2K\nb");
        assert!(v.get("path_hex").is_none());
        let v = change(b"/bad\xff");
        assert_eq!(v["path_hex"], "2f626164ff");
    }

    #[test]
    fn a_missing_upper_has_no_changes() {
        let d = tempfile::tempdir().unwrap();
        let layer = Layer {
            mount_point: "/".into(),
            dir: d.path().join("nothing"),
        };
        assert!(
            diff(
                &[layer],
                &Filter::default(),
                &Committed::default(),
                false,
                &mut |_| {}
            )
            .unwrap()
            .changes
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
            false,
            &mut |_| {},
        )
        .unwrap()
        .changes
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
            diff(&[layer], &only, &Committed::default(), false, &mut |_| {})
                .unwrap()
                .changes
                .len(),
            2
        );
    }
}

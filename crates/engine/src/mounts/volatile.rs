//! How durable a VM's layers are: `disk` (the default) or `volatile`.
//!
//! A volatile VM's overlays are mounted with overlayfs's `volatile` option: the
//! kernel skips every sync of the upper layer, so `fsync` in the VM returns at once
//! and a copy-up is not flushed. Overlayfs marks such a layer with the directory
//! `WORK/work/incompat/volatile` and refuses to mount it again while the marker is
//! there, because after a host crash the layer may be missing writes the VM saw
//! succeed.
//!
//! fvm settles that on the host side. Before a volatile VM's overlays are mounted it
//! records the host's boot id ([`record_boot`]). Markers found while the VM is not
//! running, in the same boot, are that run's, and every write of it is still in the
//! page cache: [`settle`] syncs the layers' filesystem and removes them, after which
//! the layers are as durable as a disk VM's (a detached process does it after a
//! stop; a command that needs the layers sooner does it itself). Markers from an
//! earlier boot mean the host went down while the VM ran, and start, commit and
//! copy refuse the layers.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::os::procid::boot_id;

/// Where overlayfs marks a volatile layer (`dir` holds `upper` and `work`).
fn marker(layer: &Path) -> PathBuf {
    layer.join("work/work/incompat/volatile")
}

/// The markers under a VM's layers directory (one `<key>/{upper,work}` per overlay).
pub fn markers(layers: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(layers) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let m = marker(&entry.path());
        if std::fs::symlink_metadata(&m).is_ok() {
            found.push(m);
        }
    }
    found.sort();
    Ok(found)
}

/// After a volatile VM stopped, with the host up since it started: flush the
/// filesystem that holds its layers, then remove the markers. Returns how many
/// markers were removed.
pub fn settle(layers: &Path) -> io::Result<usize> {
    let found = markers(layers)?;
    if found.is_empty() {
        return Ok(0);
    }
    let dir = std::fs::File::open(layers)?;
    rustix::fs::syncfs(dir.as_fd())?;
    for m in &found {
        // The marker is a directory holding at most overlayfs's empty `dirty` file;
        // anything else there is not ours to remove, and makes `remove_dir` fail.
        match std::fs::remove_file(m.join("dirty")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::remove_dir(m)?;
    }
    // The removals themselves must reach the disk too, or a crash now would bring
    // a marker back over layers that are complete.
    rustix::fs::syncfs(dir.as_fd())?;
    Ok(found.len())
}

/// Record, in the file `path`, that a volatile VM is being started in this boot of
/// the host: markers found later in the same boot are this run's, whose writes
/// are all still in the page cache.
pub fn record_boot(path: &Path) -> io::Result<()> {
    let mut id = boot_id()?;
    id.push('\n');
    crate::os::files::write_atomic(path, id.as_bytes(), 0o600)
}

/// Whether the file `path` names this boot of the host (a missing or damaged
/// file does not).
pub fn recorded_this_boot(path: &Path) -> io::Result<bool> {
    match crate::os::files::read_regular_max(path, 128) {
        Ok(text) => Ok(text.trim() == boot_id()?),
        Err(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_settles_markers_only() {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path();
        assert!(markers(&layers.join("missing")).unwrap().is_empty());
        for key in ["root", "home"] {
            std::fs::create_dir_all(layers.join(key).join("upper")).unwrap();
            std::fs::create_dir_all(layers.join(key).join("work/work")).unwrap();
        }
        std::fs::write(layers.join("stray-file"), b"").unwrap();
        assert!(markers(layers).unwrap().is_empty());
        assert_eq!(settle(layers).unwrap(), 0);
        std::fs::create_dir_all(marker(&layers.join("home"))).unwrap();
        std::fs::write(marker(&layers.join("home")).join("dirty"), b"").unwrap();
        assert_eq!(markers(layers).unwrap(), vec![marker(&layers.join("home"))]);
        assert_eq!(settle(layers).unwrap(), 1);
        assert!(markers(layers).unwrap().is_empty());
        assert!(layers.join("home/work/work/incompat").is_dir());
        assert!(layers.join("root/upper").is_dir());
    }

    #[test]
    fn a_marker_with_content_is_left_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let m = marker(&dir.path().join("root"));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("x"), b"").unwrap();
        assert!(settle(dir.path()).is_err());
        assert_eq!(markers(dir.path()).unwrap(), vec![m]);
    }

    #[test]
    fn only_a_record_of_this_boot_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("volatile-boot");
        assert!(!recorded_this_boot(&p).unwrap());
        record_boot(&p).unwrap();
        assert!(recorded_this_boot(&p).unwrap());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap().trim(),
            boot_id().unwrap()
        );
        std::fs::write(&p, "00000000-0000-4000-8000-000000000000\n").unwrap();
        assert!(!recorded_this_boot(&p).unwrap());
        std::fs::write(&p, vec![b'x'; 4096]).unwrap();
        assert!(!recorded_this_boot(&p).unwrap());
    }
}

//! `fvm copy SRC DST`: a new VM with SRC's policy and a clone of its layers.
//!
//! SRC must be stopped or suspended (a running one is refused): its upper layers
//! are read directly (docs/commit.md), and an upper that overlayfs is writing to
//! would be copied half-changed; a suspended VM's frozen processes write nothing. SRC's lock is
//! held throughout, so it can't be started, changed or deleted meanwhile. Each
//! upper is cloned with [`copy_tree`] (reflinks where the filesystem has them,
//! whiteouts, opaque dirs, xattrs, owners, modes, times and hard links kept),
//! with a fresh `work/` beside it: overlayfs's scratch space holds nothing that
//! belongs to the VM. The clone is built in the store's temporary directory and
//! renamed into place ([`crate::store::Store::create_vm_with`]), so DST appears
//! complete or not at all. A SRC whose layers live in a filesystem image (see
//! `crate::mounts::disk`) is read with its image mounted, and DST gets an image of
//! its own, made for the same limits, that the layers are copied into.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::{Engine, VmError};
use crate::changes::copy::{CopyError, CopyStats, copy_tree};
use crate::layers::{self, Descend, Layer};
use crate::store::{StoreError, VmDir, VmName};

/// How far a copy has got, in bytes of file content (holes not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyProgress {
    pub copied: u64,
    /// An estimate from a first pass over the layers (it only stats them).
    pub total: u64,
}

/// Why a VM's layers could not be cloned.
#[derive(Debug, thiserror::Error)]
pub enum CopyVmError {
    #[error("cannot read the layers in {path}")]
    Layers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tree(#[from] CopyError),
    #[error("cannot copy {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] crate::mounts::disk::DiskError),
}

impl Engine {
    /// Clone the stopped VM `src` into a new VM `dst`.
    pub fn copy(&self, src: &VmName, dst: &VmName) -> Result<VmDir, VmError> {
        self.copy_with_progress(src, dst, None)
    }

    /// [`Engine::copy`], telling `progress` how far it has got. Only with
    /// `progress` are the layers sized first, by a walk that stats every entry.
    pub fn copy_with_progress(
        &self,
        src: &VmName,
        dst: &VmName,
        mut progress: Option<&mut dyn FnMut(CopyProgress)>,
    ) -> Result<VmDir, VmError> {
        let vm = self.vm(src)?;
        let _lock = vm.lock()?;
        // A suspended VM can't change its layers: it is copied as it stands.
        let running = self
            .reconcile(&vm)?
            .live_init(&self.cgroup_leaf(src))
            .is_some();
        if running && !self.cgroup(src)?.frozen() {
            return Err(VmError::CopyRunning {
                name: src.to_string(),
            });
        }
        let policy = self.policy(&vm)?;
        let src_image = self.layers_image(&vm)?;
        if !running {
            self.check_layers_trusted(&vm, &vm.layers_path(&policy))?;
        }
        let fail = |source| VmError::Copy {
            src: src.to_string(),
            dst: dst.to_string(),
            source,
        };
        let layers_dir = vm.layers_path(&policy);
        let layers = layers::layers(&layers_dir).map_err(|source| {
            fail(CopyVmError::Layers {
                path: layers_dir.clone(),
                source,
            })
        })?;
        // Everything the user asked for is kept, except what names SRC's own
        // places: the clone's layers live in the store.
        let mut clone = policy.clone();
        clone.name = dst.clone();
        clone.created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        clone.dir = None;
        // Its own address (given at its first start) and no published ports: those
        // are SRC's.
        clone.network.ip = None;
        clone.network.publish.clear();

        let mut failed = None;
        let mut stats = CopyStats::default();
        let made = self.store.create_vm_with(&clone, |tmp| {
            // SRC's image is mounted in this process's mount namespace; DST's
            // goes in a namespace within it, left when this closure ends.
            let _dst_image = match &src_image {
                Some(_) => {
                    let image = tmp.join(vm.image_path().file_name().expect("a file name"));
                    crate::mounts::disk::make_image(&image, &clone.limits)
                        .and_then(|()| {
                            crate::mounts::disk::ImageMount::enter(&image, &tmp.join("layers"))
                        })
                        .map(Some)
                        .map_err(|e| stash(&mut failed, e.into()))?
                }
                None => None,
            };
            let total = match progress.as_mut() {
                Some(report) => {
                    let total = content_size(&layers).map_err(|e| stash(&mut failed, e))?;
                    report(CopyProgress { copied: 0, total });
                    total
                }
                None => 0,
            };
            let mut copied = 0;
            let mut step = |n: u64| {
                copied += n;
                if let Some(report) = progress.as_mut() {
                    report(CopyProgress { copied, total });
                }
            };
            stats = copy_layers(&layers, &tmp.join("layers"), &mut step)
                .map_err(|e| stash(&mut failed, e))?;
            // The layers' copy-ups still name the host files they came from; which
            // of those SRC's commits deleted stays known (see `commit::deferred`).
            let from = super::changes::files(&vm).deleted;
            let to = tmp.join(from.file_name().expect("a file name"));
            crate::changes::commit::deferred::load_deleted(&from)
                .and_then(|d| {
                    crate::changes::commit::deferred::record_deleted(&to, d.into_iter().collect())
                })
                .map_err(|source| stash(&mut failed, CopyVmError::Record { path: from, source }))?;
            Ok(())
        });
        match (made, failed) {
            (Ok(new), _) => {
                tracing::info!(
                    src = %src, dst = %dst, files = stats.files, dirs = stats.dirs,
                    others = stats.others, hard_links = stats.hard_links,
                    bytes = stats.bytes, reflinked = stats.reflinked, "vm copied"
                );
                Ok(new)
            }
            (Err(StoreError::Create { .. }), Some(e)) => Err(fail(e)),
            (Err(e), _) => Err(e.into()),
        }
    }
}

/// Keep the real error for the caller; the store only needs to know it failed.
fn stash(slot: &mut Option<CopyVmError>, e: CopyVmError) -> io::Error {
    let placeholder = io::Error::other(e.to_string());
    *slot = Some(e);
    placeholder
}

/// Clone every layer into `dst` (the new VM's layers directory), which a VM
/// that never ran (no layers) doesn't get, like a new VM.
pub(super) fn copy_layers(
    layers: &[Layer],
    dst: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<CopyStats, CopyVmError> {
    let mut total = CopyStats::default();
    if layers.is_empty() {
        return Ok(total);
    }
    // An image mounted there (see `copy_with_progress`) made it already.
    if !dst.is_dir() {
        make_dir(dst)?;
    }
    for l in layers {
        let key = l.dir.file_name().expect("a layer dir has a name");
        let dir = dst.join(key);
        make_dir(&dir)?;
        let s = copy_tree(&l.upper(), &dir.join("upper"), progress)?;
        total.files += s.files;
        total.dirs += s.dirs;
        total.others += s.others;
        total.hard_links += s.hard_links;
        total.bytes += s.bytes;
        total.reflinked |= s.reflinked;
        make_dir(&dir.join("work"))?;
        layers::record_mount_point(&dir, &l.mount_point).map_err(|source| CopyVmError::Dir {
            path: dir.join(layers::MOUNT_POINT_FILE),
            source,
        })?;
    }
    Ok(total)
}

fn make_dir(path: &Path) -> Result<(), CopyVmError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| CopyVmError::Dir {
            path: path.to_owned(),
            source,
        })
}

/// The content the copy will move: each regular file's data once (a hard link
/// adds nothing, and a sparse file counts its allocated blocks, not its holes).
fn content_size(layers: &[Layer]) -> Result<u64, CopyVmError> {
    let mut total = 0;
    let mut seen = HashSet::new();
    for l in layers {
        let upper = l.upper();
        layers::walk(
            &upper,
            &mut |e| {
                let st = &e.stat;
                if e.file_type() == FileType::RegularFile
                    && (st.st_nlink < 2 || seen.insert((st.st_dev, st.st_ino)))
                {
                    let size = u64::try_from(st.st_size).unwrap_or(0);
                    total += size.min(u64::try_from(st.st_blocks).unwrap_or(0) * 512);
                }
                Ok(Descend::Yes)
            },
            &mut |_| Ok(()),
        )
        .map_err(|source| CopyVmError::Layers {
            path: upper.clone(),
            source,
        })?;
    }
    Ok(total)
}

//! `commit`: write what a VM changed back to the host, so that a user can trust it
//! with `/etc` and `/usr` (DESIGN §4):
//!
//! - **conflicts** (a host path changed after the VM took its copy) are all listed
//!   and nothing is written, unless forced;
//! - **no partial files**: every file lands by temp + sync + rename, and a journal
//!   on disk before the first host write lets the next commit finish an
//!   interrupted one;
//! - **no escapes**: host paths are resolved beneath their mount without following
//!   symlinks, layer paths beneath the layer;
//! - **afterwards** the VM's layer no longer holds what was committed.
//!
//! The caller freezes a running VM around the whole of it.

pub mod apply;
pub mod deferred;
pub mod journal;
pub mod plan;

use std::io;
use std::path::{Path, PathBuf};

use apply::{ApplyError, Progress};
use deferred::Committed;
use journal::{Journal, LayerRef, Phase};
pub use plan::{Action, Conflict, Step};

use super::layer::Layer;
use super::scan::{self, Filter, ScanError, VmEntry};
use super::tree::{self, Tree};

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Only say what would happen.
    pub dry_run: bool,
    /// The VM wins conflicts.
    pub force: bool,
    /// The VM is running (and frozen): leave its layer alone for now.
    pub running: bool,
}

/// What a commit did, or would do.
#[derive(Debug, Default)]
pub struct Outcome {
    pub steps: Vec<Step>,
    /// Non-empty means nothing was written.
    pub conflicts: Vec<Conflict>,
    pub skipped: Vec<(PathBuf, &'static str)>,
    /// Steps of an interrupted commit that this one finished first.
    pub resumed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("cannot {what} {}", crate::quote::path(.path))]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CommitError + 'a {
    move |source| CommitError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Where a VM keeps its commit journal and its record of entries committed while
/// it ran.
#[derive(Debug, Clone)]
pub struct Files {
    pub journal: PathBuf,
    pub committed: PathBuf,
    /// File handles of host files that commits deleted (see `deferred::Deleted`).
    pub deleted: PathBuf,
}

/// Finish an interrupted commit, then commit what `filter` selects.
pub fn commit(
    layers: &[Layer],
    filter: &Filter,
    opts: Options,
    files: &Files,
    progress: Progress<'_>,
) -> Result<Outcome, CommitError> {
    let resumed = if opts.dry_run {
        0
    } else {
        resume(files, progress)?
    };
    let committed = deferred::load(&files.committed).map_err(io_err("read", &files.committed))?;
    let mut items = scan::scan(layers, filter, &committed)?;
    // A file the VM hard-linked commits with all its names, which may lie outside
    // the selected paths: then the whole layer is looked at.
    if items
        .iter()
        .any(|it| it.vm == VmEntry::File && it.upper.is_some_and(|st| st.st_nlink > 1))
    {
        items = scan::scan(layers, &Filter::new(Vec::new()), &committed)?;
    }
    let mut plan = plan::plan(&items, layers, filter);
    // Only the layers with something to do, re-indexed.
    let used: Vec<usize> = {
        let mut u: Vec<usize> = plan.steps.iter().map(|s| s.layer).collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    let layers: Vec<Layer> = used.iter().map(|&i| layers[i].clone()).collect();
    for st in &mut plan.steps {
        st.layer = used.binary_search(&st.layer).expect("a used layer");
    }
    let items: Vec<_> = items
        .into_iter()
        .filter_map(|mut it| {
            it.layer = used.binary_search(&it.layer).ok()?;
            Some(it)
        })
        .collect();
    let mut uppers = open_trees(&layers, true)?;
    let mut outcome = Outcome {
        resumed,
        skipped: std::mem::take(&mut plan.skipped),
        ..Outcome::default()
    };
    if !opts.force {
        let deleted =
            deferred::load_deleted(&files.deleted).map_err(io_err("read", &files.deleted))?;
        outcome.conflicts =
            plan::conflicts(&items, &plan, &layers, &mut uppers, &committed, &deleted)
                .map_err(io_err("read", Path::new("the vm's layer")))?;
    }
    outcome.steps = plan.steps;
    if !outcome.conflicts.is_empty() || opts.dry_run || outcome.steps.is_empty() {
        return Ok(outcome);
    }
    let mut journal = Journal {
        id: random_id(),
        phase: Phase::Write,
        layers: layers
            .iter()
            .map(|l| LayerRef {
                mount_point: l.mount_point.clone(),
                dir: l.dir.clone(),
            })
            .collect(),
        steps: outcome.steps.clone(),
        running: opts.running,
    };
    journal
        .save(&files.journal)
        .map_err(io_err("write", &files.journal))?;
    run(&mut journal, files, &mut uppers, false, progress)?;
    Ok(outcome)
}

/// Carry a journaled commit from its phase to the end, then drop the journal.
fn run(
    journal: &mut Journal,
    files: &Files,
    uppers: &mut [Tree],
    resuming: bool,
    progress: Progress<'_>,
) -> Result<(), CommitError> {
    let layers = journal.layers();
    let mut hosts = open_trees(&layers, false)?;
    if journal.phase == Phase::Write {
        let doomed = apply::doomed(&journal.steps, &mut hosts);
        deferred::record_deleted(&files.deleted, doomed)
            .map_err(io_err("write", &files.deleted))?;
        apply::write(&journal.id, &journal.steps, &mut hosts, uppers, progress)?;
        journal.phase = Phase::Rename;
        journal
            .save(&files.journal)
            .map_err(io_err("write", &files.journal))?;
    }
    if journal.phase == Phase::Rename {
        apply::rename(
            &journal.id,
            &journal.steps,
            &mut hosts,
            uppers,
            resuming,
            progress,
        )?;
        journal.phase = Phase::Cleanup;
        journal
            .save(&files.journal)
            .map_err(io_err("write", &files.journal))?;
    }
    let kept = if journal.running {
        journal.steps.clone()
    } else {
        apply::cleanup(&journal.steps, &mut hosts, uppers)?
    };
    if !kept.is_empty() {
        deferred::record(&files.committed, &kept, &layers, uppers)
            .map_err(io_err("write", &files.committed))?;
    }
    std::fs::remove_file(&files.journal).map_err(io_err("remove", &files.journal))
}

/// Drop an interrupted commit that can't be finished (its layer or the host
/// changed under it): remove the temp files it left and its journal. Host paths
/// it had already replaced keep the VM's version; the VM's layer is untouched.
/// Returns how many steps the dropped commit had, if there was one.
pub fn abort(files: &Files) -> Result<Option<usize>, CommitError> {
    let Some(journal) = Journal::load(&files.journal).map_err(io_err("read", &files.journal))?
    else {
        return Ok(None);
    };
    let layers = journal.layers();
    for (i, s) in journal.steps.iter().enumerate() {
        if !matches!(s.action, Action::Put | Action::Link { .. }) {
            continue;
        }
        let Some(l) = layers.get(s.layer) else {
            continue;
        };
        let Ok(mut host) = Tree::open(&l.mount_point) else {
            continue;
        };
        if let Ok((dir, _)) = host.parent(&s.rel) {
            let _ = rustix::fs::unlinkat(
                dir,
                tree::temp_name(&journal.id, i),
                rustix::fs::AtFlags::empty(),
            );
        }
    }
    std::fs::remove_file(&files.journal).map_err(io_err("remove", &files.journal))?;
    Ok(Some(journal.steps.len()))
}

/// Finish the commit an interrupted `fvm commit` left in the journal, if any.
/// Returns how many steps it had.
pub fn resume(files: &Files, progress: Progress<'_>) -> Result<usize, CommitError> {
    let Some(mut journal) =
        Journal::load(&files.journal).map_err(io_err("read", &files.journal))?
    else {
        return Ok(0);
    };
    let mut uppers = open_trees(&journal.layers(), true)?;
    run(&mut journal, files, &mut uppers, true, progress)?;
    Ok(journal.steps.len())
}

fn open_trees(layers: &[Layer], upper: bool) -> Result<Vec<Tree>, CommitError> {
    layers
        .iter()
        .map(|l| {
            let root = if upper {
                l.upper()
            } else {
                l.mount_point.clone()
            };
            Tree::open(&root).map_err(|source| CommitError::Io {
                what: "open",
                path: root.clone(),
                source,
            })
        })
        .collect()
}

fn random_id() -> String {
    let mut b = [0u8; 4];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    format!("{:08x}", u32::from_ne_bytes(b))
}

/// Committed entries of a VM that ran; see [`deferred`].
pub fn committed(files: &Files) -> io::Result<Committed> {
    deferred::load(&files.committed)
}

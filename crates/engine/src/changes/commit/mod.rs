//! `commit`: write what a VM changed back to the host, so that a user can trust it
//! with `/etc` and `/usr` (docs/commit.md):
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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::changes::record::Committed;
use apply::{ApplyError, Progress};
use journal::{Journal, LayerRef, Phase};
pub use plan::{Action, Conflict, Step};

use super::scan::{self, Filter, ScanError, VmEntry};
use super::tree::{self, Tree};
use crate::layers::Layer;

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Only say what would happen.
    pub dry_run: bool,
    /// The VM wins conflicts.
    pub force: bool,
    /// The VM is running (and frozen): leave its layer alone for now.
    pub running: bool,
    /// Also commit the copy-ups that changed nothing (see `scan::Item::same`),
    /// which drops them from the layer; otherwise they are left out.
    pub all: bool,
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
    /// A filter path that matches no change: nothing was planned or written.
    pub unmatched: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(
        "cannot leave out {}: {} commits with the rest (it is in a directory the vm made or replaced as a whole, or another name of a file the vm hard-linked); nothing was committed",
        crate::os::quote::path(.excluded),
        crate::os::quote::path(.path)
    )]
    Excluded { excluded: PathBuf, path: PathBuf },
    #[error(
        "the commit journal {} can't be used ({why}); `fvm commit --abort` drops it without touching the host",
        .path.display()
    )]
    BadJournal { path: PathBuf, why: String },
    /// The write phase failed: the host has none of the commit.
    #[error("nothing was committed ({cleanup})")]
    RolledBack {
        cleanup: String,
        #[source]
        source: ApplyError,
    },
    /// The rename phase failed: the host has part of the commit.
    #[error(
        "the commit stopped half-way, its temp files (.fvm-commit-{id}-*) beside their targets: `fvm commit` finishes it, `fvm commit --abort` removes them"
    )]
    HalfWay {
        id: String,
        #[source]
        source: ApplyError,
    },
    #[error(
        "{left} temp file(s) or new directories of the dropped commit could not be removed (the first: {}): the journal is kept for another `fvm commit --abort`",
        crate::os::quote::path(.first)
    )]
    Leftovers {
        left: usize,
        first: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {}", crate::os::quote::path(.path))]
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

impl Outcome {
    /// The steps that change something (not only a directory's times).
    pub fn changes(&self) -> usize {
        self.steps.iter().filter(|s| !s.same).count()
    }
}

/// Where a VM keeps its commit journal and its record of entries committed while
/// it ran.
#[derive(Debug, Clone)]
pub struct Files {
    pub journal: PathBuf,
    pub committed: PathBuf,
    /// File handles of host files that commits deleted (see `record::Deleted`).
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
        resume(files, layers, opts.running, progress)?
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
    if let Some(path) = filter.unmatched(&items) {
        return Ok(Outcome {
            resumed,
            unmatched: Some(path.to_owned()),
            ..Outcome::default()
        });
    }
    if opts.all {
        for it in &mut items {
            it.same = false;
        }
    } else {
        // The host has these files already. A directory stays, unlisted and
        // uncounted: its step gives the host's directory the VM's times (which
        // its entries' changes moved), so that the host ends as the VM saw it.
        items.retain(|it| !it.same || matches!(it.vm, VmEntry::Dir { .. }));
    }
    let mut plan = plan::plan(&items, layers, filter);
    if let Some(step) = plan.steps.iter().find(|s| filter.excludes(&s.path)) {
        let excluded = filter
            .excluded_paths()
            .iter()
            .find(|x| step.path.starts_with(x))
            .expect("excluded")
            .clone();
        return Err(CommitError::Excluded {
            excluded,
            path: step.path.clone(),
        });
    }
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
///
/// A failure while writing (a full disk, a name too long) takes everything back:
/// the host has none of the commit, and none of its temp files or new
/// directories. A failure while renaming keeps the journal and says how to finish
/// or drop the commit.
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
        if let Err(source) = apply::write(&journal.id, &journal.steps, &mut hosts, uppers, progress)
        {
            let cleanup = match undo(journal, files, &mut hosts, uppers) {
                Ok(()) => "its temp files and new directories were removed".to_owned(),
                Err(e) => format!(
                    "{}; `fvm commit --abort` removes the rest",
                    crate::error_line(&e)
                ),
            };
            return Err(CommitError::RolledBack { cleanup, source });
        }
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
        )
        .map_err(|source| CommitError::HalfWay {
            id: journal.id.clone(),
            source,
        })?;
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

/// Take back what an unfinished commit did to the host as far as it can be,
/// then drop its journal: its temp files go, and so do the directories it made
/// that are empty again. Host paths it had already replaced (it was renaming)
/// keep the VM's version; the host's versions of those and of the directories
/// it touched are dated as fvm's, so the next commit doesn't take fvm's own
/// writes for host changes (it commits them again, with the rest). The VM's
/// layer is left alone. If something can't be removed, the journal stays and
/// the error says what.
fn undo(
    journal: &Journal,
    files: &Files,
    hosts: &mut [Tree],
    uppers: &mut [Tree],
) -> Result<(), CommitError> {
    let layers = journal.layers();
    let mut left: Option<(usize, PathBuf, io::Error)> = None;
    let mut note = |path: PathBuf, e: io::Error| match &mut left {
        Some((n, ..)) => *n += 1,
        None => left = Some((1, path, e)),
    };
    let mut renamed = Vec::new();
    for (i, s) in journal.steps.iter().enumerate() {
        if !matches!(s.action, Action::Put | Action::Link { .. }) {
            continue;
        }
        let temp = tree::temp_name(&journal.id, i);
        let gone = match hosts[s.layer].parent(&s.rel) {
            Ok((dir, _)) => match rustix::fs::unlinkat(dir, &temp, rustix::fs::AtFlags::empty()) {
                Ok(()) => false,
                Err(rustix::io::Errno::NOENT) => true,
                Err(e) => {
                    note(temp_path(s, &temp), e.into());
                    false
                }
            },
            // Its directory isn't there (or can't be reached: fvm never could
            // have written there either): nor is the temp.
            Err(e) if unreachable(&e) => true,
            Err(e) => {
                note(temp_path(s, &temp), e);
                false
            }
        };
        // Once renaming began, a temp that is gone was renamed into place.
        if gone
            && journal.phase >= Phase::Rename
            && hosts[s.layer].lstat(&s.rel).ok().flatten().is_some()
        {
            renamed.push(s.clone());
        }
    }
    // The directories this commit made, deepest first, if nothing is in them.
    let mut touched = Vec::new();
    for s in journal
        .steps
        .iter()
        .rev()
        .filter(|s| s.action == Action::Dir)
    {
        if !s.host_had {
            match hosts[s.layer].parent(&s.rel) {
                Ok((dir, name)) => {
                    match rustix::fs::unlinkat(dir, &name, rustix::fs::AtFlags::REMOVEDIR) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {
                            hosts[s.layer].forget(&s.rel);
                            continue;
                        }
                        Err(rustix::io::Errno::NOTEMPTY) | Err(rustix::io::Errno::NOTDIR) => {}
                        Err(e) => note(s.path.clone(), e.into()),
                    }
                }
                Err(e) if unreachable(&e) => continue,
                Err(e) => note(s.path.clone(), e),
            }
        }
        touched.push(s.clone());
    }
    if let Some((left, first, source)) = left {
        return Err(CommitError::Leftovers {
            left,
            first,
            source,
        });
    }
    if journal.phase >= Phase::Rename {
        renamed.extend(touched);
        deferred::record_dated(&files.committed, &renamed, &layers, uppers)
            .map_err(io_err("write", &files.committed))?;
    }
    std::fs::remove_file(&files.journal).map_err(io_err("remove", &files.journal))
}

/// A path that isn't there, or that no commit could have reached (through a
/// non-directory, or too long to open).
fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG)
    )
}

/// The host path of step `s`'s temp file, for messages.
fn temp_path(s: &Step, temp: &std::ffi::CStr) -> PathBuf {
    let name = std::ffi::OsStr::from_bytes(temp.to_bytes());
    s.path.parent().unwrap_or(Path::new("/")).join(name)
}

/// What [`abort`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aborted {
    /// There was no unfinished commit.
    Nothing,
    /// The unfinished commit of this many steps was dropped (see [`undo`]).
    Dropped(usize),
    /// The unfinished commit of this many steps was on the host in full; the
    /// cleanup of the VM's layer was finished.
    Finished(usize),
    /// The journal couldn't be read or didn't match the VM (why): it was
    /// removed, and nothing it names was touched.
    Untrusted(String),
}

impl Aborted {
    /// One line for people, if something was done.
    pub fn describe(&self) -> Option<String> {
        match self {
            Aborted::Nothing => None,
            Aborted::Dropped(n) => Some(format!("dropped an interrupted commit of {n} changes")),
            Aborted::Finished(n) => Some(format!(
                "an interrupted commit of {n} changes was on the host in full: finished it"
            )),
            Aborted::Untrusted(why) => Some(format!(
                "dropped a commit journal that can't be used ({why}); nothing on the host was touched"
            )),
        }
    }
}

/// Drop an interrupted commit that can't be finished (its layer or the host
/// changed under it), as [`undo`] says. `layers` are the VM's own (from the
/// store): a journal that can't be read or names anything else is removed
/// without touching the host.
///
/// A commit killed while it cleaned the VM's layer is on the host in full, and
/// the layer is half-way (an opaque directory may have lost part of its
/// entries, hiding the host's versions from the VM): that cleanup is finished
/// instead (`running`: the VM runs, and its layer is left alone).
pub fn abort(files: &Files, layers: &[Layer], running: bool) -> Result<Aborted, CommitError> {
    let journal = match Journal::load(&files.journal) {
        Ok(None) => return Ok(Aborted::Nothing),
        Ok(Some(j)) => j.validate(layers).map(|()| j),
        Err(e) => Err(e.to_string()),
    };
    let checked = journal.and_then(|j| {
        let mut uppers = open_trees(&j.layers(), true).map_err(|e| crate::error_line(&e))?;
        if j.phase < Phase::Cleanup {
            check_layer(&j, &mut uppers)?;
        }
        Ok((j, uppers))
    });
    let (journal, mut uppers) = match checked {
        Ok(j) => j,
        Err(why) => {
            remove_journal(files)?;
            return Ok(Aborted::Untrusted(why));
        }
    };
    if journal.phase == Phase::Cleanup {
        let mut journal = journal;
        journal.running |= running;
        run(&mut journal, files, &mut uppers, true, &mut |_, _| {})?;
        return Ok(Aborted::Finished(journal.steps.len()));
    }
    let mut hosts = open_trees(&journal.layers(), false)?;
    undo(&journal, files, &mut hosts, &mut uppers)?;
    Ok(Aborted::Dropped(journal.steps.len()))
}

/// Before a stopped VM starts: a commit killed while it cleaned the layer left
/// the VM's view half-changed; finish it (see [`abort`]). Returns how many steps
/// it had, 0 if there was none.
pub fn finish_cleanup(files: &Files, layers: &[Layer]) -> Result<usize, CommitError> {
    match Journal::load(&files.journal) {
        Ok(Some(j)) if j.phase == Phase::Cleanup => resume(files, layers, false, &mut |_, _| {}),
        _ => Ok(0),
    }
}

fn remove_journal(files: &Files) -> Result<(), CommitError> {
    match std::fs::remove_file(&files.journal) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &files.journal)(e)),
        _ => Ok(()),
    }
}

/// Finish the commit an interrupted `fvm commit` left in the journal, if any.
/// Returns how many steps it had. The journal must match the VM (`layers`, see
/// [`Journal::validate`]) and, until its renames are done, the VM's layer must
/// still hold what each step writes. `running`: the VM runs now (it may have
/// been stopped when the commit began): then its layer is left alone.
pub fn resume(
    files: &Files,
    layers: &[Layer],
    running: bool,
    progress: Progress<'_>,
) -> Result<usize, CommitError> {
    let bad = |why: String| CommitError::BadJournal {
        path: files.journal.clone(),
        why,
    };
    let mut journal = match Journal::load(&files.journal) {
        Ok(None) => return Ok(0),
        Ok(Some(j)) => j,
        Err(e) => return Err(bad(e.to_string())),
    };
    journal.validate(layers).map_err(bad)?;
    let mut uppers = open_trees(&journal.layers(), true)?;
    if journal.phase < Phase::Cleanup {
        check_layer(&journal, &mut uppers).map_err(bad)?;
    }
    journal.running |= running;
    run(&mut journal, files, &mut uppers, true, progress)?;
    // (Directories only given their times back are no change to count.)
    Ok(journal.steps.iter().filter(|s| !s.same).count())
}

/// Before a VM's files go (`delete`) or in `doctor --cleanup`: finish an
/// unfinished commit that was renaming (the host has part of it already), drop
/// one that was still writing (the host has none of it), and drop one that can't
/// be finished. Neither reads the VM's files while it could be writing them, so
/// a running VM (`running`) needn't be frozen; its layer is left alone. Returns
/// one line saying what was done, if there was anything.
pub fn settle_unfinished(
    files: &Files,
    layers: &[Layer],
    running: bool,
) -> Result<Option<String>, CommitError> {
    let renaming = match Journal::load(&files.journal) {
        Ok(None) => return Ok(None),
        Ok(Some(j)) => j.phase >= Phase::Rename,
        Err(_) => false,
    };
    if renaming {
        match resume(files, layers, running, &mut |_, _| {}) {
            Ok(n) => {
                return Ok(Some(format!(
                    "finished an interrupted commit of {n} changes"
                )));
            }
            Err(e) => tracing::warn!(
                "an interrupted commit can't be finished ({}); dropping it",
                crate::error_line(&e)
            ),
        }
    }
    Ok(abort(files, layers, running)?.describe())
}

/// The layer still holds what each step of a journal that hasn't finished
/// renaming writes: a directory for a directory, something else for a file,
/// and for a deletion a whiteout or a directory above that hides the host's.
fn check_layer(journal: &Journal, uppers: &mut [Tree]) -> Result<(), String> {
    for s in &journal.steps {
        let upper = &mut uppers[s.layer];
        let st = upper
            .lstat(&s.rel)
            .map_err(|e| format!("{}: {e}", s.path.display()))?;
        let kind = st.map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode));
        let ok = match s.action {
            Action::Dir => kind == Some(rustix::fs::FileType::Directory),
            Action::Put | Action::Link { .. } => {
                kind.is_some_and(|k| k != rustix::fs::FileType::Directory)
            }
            Action::Remove => {
                st.is_some_and(|st| {
                    kind == Some(rustix::fs::FileType::CharacterDevice) && st.st_rdev == 0
                }) || hidden_by_layer(upper, &s.rel)
            }
        };
        if !ok {
            return Err(format!(
                "the vm's layer has nothing that makes {} {}",
                s.path.display(),
                match s.action {
                    Action::Dir => "a directory",
                    Action::Put | Action::Link { .. } => "a file",
                    Action::Remove => "deleted",
                }
            ));
        }
    }
    Ok(())
}

/// A directory above `rel` in the layer hides the host's (overlayfs's opaque mark).
fn hidden_by_layer(upper: &mut Tree, rel: &Path) -> bool {
    rel.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .any(|a| {
            upper.dir(a).is_ok_and(|d| {
                let mut v = [0u8; 2];
                rustix::fs::fgetxattr(d, scan::OPAQUE_XATTR, &mut v).is_ok_and(|n| &v[..n] == b"y")
            })
        })
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

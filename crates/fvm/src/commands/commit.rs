//! `fvm commit`: conflicts and skipped paths on stderr, the plan on stdout with
//! `--dry-run`, a progress bar on a terminal for large commits.

use std::io::IsTerminal;

use anyhow::{Result, bail};
use fvm_engine::changes::commit::Options;
use indicatif::{ProgressBar, ProgressStyle};

use super::diff::vm_path_args;
use super::{Context, vm_name};
use crate::cli::CommitArgs;
use crate::output;
use fvm_engine::vm::Selection;

/// Commits with fewer steps than this finish too fast for a progress bar (unless
/// they have taken half a second already).
const BAR_FROM: usize = 500;

pub fn run(ctx: &Context<'_>, args: &CommitArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let engine = ctx.engine_for(&name)?;
    if args.abort {
        let text = match engine.commit_abort(&name)?.describe() {
            Some(line) => format!("{line}\n"),
            None => "no interrupted commit to drop\n".to_owned(),
        };
        output::print(&text)?;
        return Ok(0);
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::hidden();
        b.set_style(
            ProgressStyle::with_template("committing {bar:40} {pos}/{len} {elapsed}")
                .expect("a valid template"),
        );
        b
    });
    let started = std::time::Instant::now();
    let mut progress = |done: usize, total: usize| {
        if let Some(b) = &bar
            && (total >= BAR_FROM || started.elapsed() >= output::PROGRESS_AFTER)
        {
            if b.is_hidden() {
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    };
    let opts = Options {
        dry_run: args.dry_run,
        force: args.force,
        running: false,
        all: args.all,
    };
    let sel = Selection {
        paths: vm_path_args(&args.paths)?,
        exclude: vm_path_args(&args.exclude)?,
    };
    let outcome = engine.commit(&name, &sel, opts, &mut progress)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for (path, why) in &outcome.skipped {
        eprintln!("fvm: skipped {}: {why}", fvm_engine::os::quote::path(path));
    }
    if outcome.resumed > 0 {
        eprintln!(
            "fvm: finished an interrupted commit of {} changes first",
            outcome.resumed
        );
    }
    if !outcome.conflicts.is_empty() {
        for c in &outcome.conflicts {
            let what = if c.deleted_on_host {
                "was deleted"
            } else {
                "changed"
            };
            eprintln!(
                "conflict: {} {what} on the host after the vm copied it",
                fvm_engine::os::quote::path(&c.path)
            );
        }
        bail!(
            "vm {:?}: {} path(s) changed on the host after the vm copied them; nothing was committed (--force lets the vm win)",
            name.as_str(),
            outcome.conflicts.len()
        );
    }
    if ctx.json() {
        output::print_json(&serde_json::json!({
            "dry_run": args.dry_run,
            "steps": outcome.steps,
        }))?;
        return Ok(0);
    }
    let mut text = String::new();
    if outcome.changes() == 0 {
        // Exit status 0: the host has what the selection holds already.
        text.push_str(&format!("nothing to commit in vm {:?}\n", name.as_str()));
    } else if args.dry_run {
        // (Directories only restored to the VM's times are no change to show.)
        for s in outcome.steps.iter().filter(|s| !s.same) {
            text.push_str(&s.describe(&outcome.steps));
            text.push('\n');
        }
    } else {
        text.push_str(&format!("committed {} changes\n", outcome.changes()));
    }
    output::print(&text)?;
    Ok(0)
}

use anyhow::Result;
use fvm_engine::doctor::{self, Level};
use fvm_engine::vm::WatcherHealth;

use super::Context;
use crate::cli::DoctorArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &DoctorArgs) -> Result<u8> {
    let root = fvm_engine::running_as_root();
    if args.cleanup && !root {
        anyhow::bail!("fvm doctor --cleanup needs root (try sudo)");
    }
    // The store is root's: without root it is not opened (nor its watcher started).
    let engine = ctx.engine_if_any().ok().flatten().filter(|_| root);
    let mut checks = doctor::run(engine.as_ref().map(|e| e.store()), &ctx_root(ctx));
    if let Some(engine) = &engine {
        checks.push(watcher_check(engine));
    }
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    let mut cleaned = Vec::new();
    if args.cleanup
        && let Some(engine) = &engine
    {
        cleaned = engine.cleanup()?;
    }
    if ctx.json() {
        output::print_json(&serde_json::json!({ "checks": checks, "cleanup": cleaned }))?;
    } else {
        let rows = checks
            .iter()
            .map(|c| {
                let level = match c.level {
                    Level::Ok => "ok",
                    Level::Warn => "warn",
                    Level::Fail => "FAIL",
                };
                vec![c.name.to_owned(), level.to_owned(), c.detail.clone()]
            })
            .collect();
        let mut text = output::table(&["check", "result", "detail"], rows);
        if args.cleanup {
            if cleaned.is_empty() {
                text.push_str("\ncleanup: nothing to do\n");
            }
            for line in &cleaned {
                text.push_str(&format!("cleanup: {line}\n"));
            }
        }
        output::print(&text)?;
    }
    Ok(if failed { 125 } else { 0 })
}

/// Whether host changes reach the running VMs: their watcher runs (a missing
/// one is started again, and reported).
fn watcher_check(engine: &fvm_engine::vm::Engine) -> doctor::Check {
    let (level, detail) = match engine.watcher_health() {
        WatcherHealth::Idle => (Level::Ok, "no vm runs, none needed".to_owned()),
        WatcherHealth::Running { pid } => (
            Level::Ok,
            pid.map_or_else(|| "running".to_owned(), |p| format!("running (pid {p})")),
        ),
        WatcherHealth::Restarted { vms } => (
            Level::Warn,
            format!(
                "was not running while {vms} vm(s) ran, so host changes did not reach them: restarted it"
            ),
        ),
        WatcherHealth::Failed(e) => (
            Level::Fail,
            format!("not running while vms run, and cannot be started: {e}"),
        ),
    };
    doctor::Check {
        name: "watcher",
        level,
        detail,
    }
}

fn ctx_root(ctx: &Context<'_>) -> std::path::PathBuf {
    ctx.cli
        .root
        .clone()
        .unwrap_or_else(|| fvm_engine::store::DEFAULT_ROOT.into())
}

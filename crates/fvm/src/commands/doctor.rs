use anyhow::Result;
use fvm_engine::doctor::{self, Level};

use super::Context;
use crate::cli::DoctorArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &DoctorArgs) -> Result<u8> {
    let engine = ctx.engine_if_any().ok().flatten();
    let checks = doctor::run(engine.as_ref().map(|e| e.store()), &ctx_root(ctx));
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

fn ctx_root(ctx: &Context<'_>) -> std::path::PathBuf {
    ctx.cli
        .root
        .clone()
        .unwrap_or_else(|| fvm_engine::store::DEFAULT_ROOT.into())
}

use anyhow::Result;
use fvm_engine::VmError;

use super::{Context, for_each_vm, note_already};
use crate::cli::StartArgs;
use crate::output;

/// Start each VM (or every VM marked autostart); one that already runs gets a
/// note, and counts as started.
pub fn run(ctx: &Context<'_>, args: &StartArgs) -> Result<u8> {
    if args.autostart {
        return autostart(ctx);
    }
    for_each_vm(ctx, &args.names, |name| {
        match ctx.engine_for(name)?.start(name) {
            Ok(_) => {}
            Err(VmError::AlreadyRunning { .. }) => note_already(name, "running"),
            Err(e) => return Err(e.into()),
        }
        output::print(&format!("{name}\n"))
    })
}

/// Start every VM marked autostart; report each, and fail (1) if any failed.
fn autostart(ctx: &Context<'_>) -> Result<u8> {
    let Some(engine) = ctx.engine_if_any()? else {
        return Ok(0);
    };
    let mut failed = 0;
    let mut json = Vec::new();
    for done in engine.start_autostart()? {
        let (status, error) = match &done.result {
            Ok(true) => ("started", None),
            Ok(false) => ("running", None),
            Err(e) => {
                failed += 1;
                ("failed", Some(fvm_engine::error_line(e)))
            }
        };
        if ctx.json() {
            json.push(serde_json::json!({"name": done.name, "status": status, "error": error}));
        } else if let Some(e) = &error {
            eprintln!("fvm: {e}");
        } else {
            output::print(&format!("{} {status}\n", done.name))?;
        }
    }
    if ctx.json() {
        output::print_json(&json)?;
    }
    Ok(u8::from(failed > 0))
}

use anyhow::Result;

use super::{Context, vm_name};
use crate::cli::StartArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &StartArgs) -> Result<u8> {
    if args.autostart {
        return autostart(ctx);
    }
    let name = vm_name(args.name.as_deref().unwrap_or_default())?;
    ctx.engine_for(&name)?.start(&name)?;
    output::print(&format!("{name}\n"))?;
    Ok(0)
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

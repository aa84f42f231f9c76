use std::time::Duration;

use anyhow::Result;
use fvm_engine::vm::Stopped;

use super::{Context, for_each_vm, note_already};
use crate::cli::StopArgs;
use crate::output;

/// Stop each VM; one that isn't running gets a note, and counts as stopped.
pub fn run(ctx: &Context<'_>, args: &StopArgs) -> Result<u8> {
    if args.autostart {
        return autostart(ctx, args);
    }
    for_each_vm(ctx, &args.names, |name| {
        let engine = ctx.engine_for(name)?;
        match engine.stop(name, Duration::from_secs(args.time))? {
            Stopped::NotRunning => note_already(name, "stopped"),
            Stopped::Killed if args.time > 0 => eprintln!(
                "fvm: vm {name} did not stop within {}s and was killed",
                args.time
            ),
            _ => {}
        }
        output::print(&format!("{name}\n"))
    })
}

/// Stop every running VM marked autostart (at host shutdown).
fn autostart(ctx: &Context<'_>, args: &StopArgs) -> Result<u8> {
    let Some(engine) = ctx.engine_if_any()? else {
        return Ok(0);
    };
    let mut failed = false;
    for done in engine.stop_autostart(Duration::from_secs(args.time))? {
        match done.result {
            Ok(true) => output::print(&format!("{}\n", done.name))?,
            Ok(false) => {}
            Err(e) => {
                failed = true;
                eprintln!("fvm: {}", fvm_engine::error_line(&e));
            }
        }
    }
    Ok(u8::from(failed))
}

use std::time::Duration;

use anyhow::Result;
use fvm_engine::vm::Stopped;

use super::{Context, vm_name};
use crate::cli::StopArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &StopArgs) -> Result<u8> {
    if args.autostart {
        return autostart(ctx, args);
    }
    let name = vm_name(args.name.as_deref().unwrap_or_default())?;
    let engine = ctx.engine_for(&name)?;
    match engine.stop(&name, Duration::from_secs(args.time))? {
        Stopped::NotRunning => eprintln!("fvm: vm {:?} is not running", name.as_str()),
        Stopped::Killed if args.time > 0 => {
            eprintln!(
                "fvm: vm {:?} did not stop within {}s and was killed",
                name.as_str(),
                args.time
            );
            output::print(&format!("{name}\n"))?;
        }
        _ => output::print(&format!("{name}\n"))?,
    }
    Ok(0)
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

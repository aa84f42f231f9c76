use std::time::Duration;

use anyhow::Result;
use fvm_engine::vm::Stopped;

use super::{Context, vm_name};
use crate::cli::StopArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &StopArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
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

use anyhow::Result;

use super::{Context, vm_name};
use crate::cli::CopyArgs;
use crate::output::{self, Progress};

pub fn run(ctx: &Context<'_>, args: &CopyArgs) -> Result<u8> {
    let src = vm_name(&args.src)?;
    let dst = vm_name(&args.dst)?;
    let engine = ctx.engine_for(&src)?;
    match Progress::on_terminal("copying") {
        Some(mut bar) => {
            engine.copy_with_progress(&src, &dst, Some(&mut |p| bar.set(p.copied, p.total)))?;
        }
        None => {
            engine.copy(&src, &dst)?;
        }
    }
    output::print(&format!("{dst}\n"))?;
    Ok(0)
}

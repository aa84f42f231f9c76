use anyhow::Result;

use super::{Context, vm_name};
use crate::cli::NameArg;
use crate::output;

pub fn suspend(ctx: &Context<'_>, args: &NameArg) -> Result<u8> {
    let name = vm_name(&args.name)?;
    ctx.engine_for(&name)?.suspend(&name)?;
    output::print(&format!("{name}\n"))?;
    Ok(0)
}

pub fn resume(ctx: &Context<'_>, args: &NameArg) -> Result<u8> {
    let name = vm_name(&args.name)?;
    ctx.engine_for(&name)?.resume(&name)?;
    output::print(&format!("{name}\n"))?;
    Ok(0)
}

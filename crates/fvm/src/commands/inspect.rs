use anyhow::Result;

use super::{Context, vm_name};
use crate::cli::NameArg;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &NameArg) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let info = ctx.engine_for(&name)?.info(&name)?;
    output::print_json(&info)?;
    Ok(0)
}

use anyhow::Result;

use super::{Context, vm_name};
use crate::cli::DeleteArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &DeleteArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    ctx.engine_for(&name)?.delete(&name, args.force)?;
    output::print(&format!("{name}\n"))?;
    Ok(0)
}

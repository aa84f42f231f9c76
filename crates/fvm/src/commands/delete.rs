use anyhow::Result;

use super::{Context, for_each_vm};
use crate::cli::DeleteArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &DeleteArgs) -> Result<u8> {
    for_each_vm(ctx, &args.names, |name| {
        ctx.engine_for(name)?.delete(name, args.force)?;
        tracing::info!("deleted vm {name}");
        output::print(&format!("{name}\n"))
    })
}

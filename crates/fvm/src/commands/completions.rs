use anyhow::Result;

use super::Context;
use crate::cli::CompletionsArgs;
use crate::output;

pub fn run(_ctx: &Context<'_>, args: &CompletionsArgs) -> Result<u8> {
    let mut script = Vec::new();
    crate::complete::script(&args.shell, &mut script)?;
    output::print_bytes(&script)?;
    Ok(0)
}

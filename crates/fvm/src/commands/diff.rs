use anyhow::Result;

use super::{Context, vm_name};
use crate::cli::DiffArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &DiffArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let changes = ctx.engine_for(&name)?.diff(&name, &args.paths)?;
    if ctx.json() {
        output::print_json(&changes)?;
        return Ok(0);
    }
    // A VM may create any name: each is quoted where it could mislead (see
    // fvm_engine::os::quote), so every change is exactly one line.
    let mut text = String::new();
    for c in &changes {
        text.push(c.kind.letter());
        text.push(' ');
        text.push_str(&fvm_engine::os::quote::path(&c.path));
        text.push('\n');
    }
    output::print(&text)?;
    Ok(0)
}

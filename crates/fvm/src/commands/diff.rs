use std::os::unix::ffi::OsStrExt;

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
    // Paths are printed as the bytes they are (a VM may create any name).
    let mut text = Vec::new();
    for c in &changes {
        text.push(c.kind.letter() as u8);
        text.push(b' ');
        text.extend_from_slice(c.path.as_os_str().as_bytes());
        text.push(b'\n');
    }
    output::print_bytes(&text)?;
    Ok(0)
}

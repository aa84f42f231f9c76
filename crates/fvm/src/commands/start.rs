use anyhow::Result;
use fvm_engine::VmError;

use super::{Context, for_each_vm, note_already};
use crate::cli::NamesArg;
use crate::output;

/// Start each VM; one that already runs gets a note, and counts as started.
pub fn run(ctx: &Context<'_>, args: &NamesArg) -> Result<u8> {
    for_each_vm(ctx, &args.names, |name| {
        match ctx.engine_for(name)?.start(name) {
            Ok(_) => {}
            Err(VmError::AlreadyRunning { .. }) => note_already(name, "running"),
            Err(e) => return Err(e.into()),
        }
        output::print(&format!("{name}\n"))
    })
}

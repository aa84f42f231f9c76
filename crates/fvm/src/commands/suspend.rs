use anyhow::Result;
use fvm_engine::vm::VmStatus;

use super::{Context, for_each_vm, note_already};
use crate::cli::NamesArg;
use crate::output;

/// Suspend each VM; one that already is gets a note (a stopped one is an error).
pub fn suspend(ctx: &Context<'_>, args: &NamesArg) -> Result<u8> {
    for_each_vm(ctx, &args.names, |name| {
        let engine = ctx.engine_for(name)?;
        let was = engine.info(name).map(|i| i.status).ok();
        engine.suspend(name)?;
        if was == Some(VmStatus::Suspended) {
            note_already(name, "suspended");
        }
        output::print(&format!("{name}\n"))
    })
}

/// Resume each VM; one that already runs gets a note (a stopped one is an error).
pub fn resume(ctx: &Context<'_>, args: &NamesArg) -> Result<u8> {
    for_each_vm(ctx, &args.names, |name| {
        let engine = ctx.engine_for(name)?;
        let was = engine.info(name).map(|i| i.status).ok();
        engine.resume(name)?;
        if was == Some(VmStatus::Running) {
            note_already(name, "running");
        }
        output::print(&format!("{name}\n"))
    })
}

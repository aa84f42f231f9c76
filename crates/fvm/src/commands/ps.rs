use anyhow::Result;
use fvm_engine::vm::VmProcess;

use super::{Context, vm_name};
use crate::cli::NameArg;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &NameArg) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let procs = ctx.engine_for(&name)?.processes(&name)?;
    if ctx.json() {
        output::print_json(&procs)?;
        return Ok(0);
    }
    let rows = procs.iter().map(row).collect();
    output::print(&output::table(
        &[
            "pid", "host-pid", "user", "%cpu", "rss", "started", "command",
        ],
        rows,
    ))?;
    Ok(0)
}

fn row(p: &VmProcess) -> Vec<String> {
    vec![
        p.pid.to_string(),
        p.host_pid.to_string(),
        fvm_engine::os::quote::text(&p.user).into_owned(),
        format!("{:.1}", p.cpu_percent),
        output::size(p.rss),
        p.started.clone(),
        // One line per process, whatever the command line holds.
        p.shown_command(),
    ]
}

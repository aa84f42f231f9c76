use anyhow::Result;
use fvm_engine::vm::VmInfo;

use super::Context;
use crate::output;

pub fn run(ctx: &Context<'_>) -> Result<u8> {
    let vms = match ctx.engine_if_any()? {
        Some(engine) => {
            engine.keep_watcher();
            engine.list()?
        }
        None => Vec::new(),
    };
    if ctx.json() {
        output::print_json(&vms)?;
        return Ok(0);
    }
    let rows = vms.iter().map(row).collect();
    output::print(&output::table(
        &[
            "name",
            "status",
            "ip",
            "processes",
            "memory",
            "disk",
            "created",
        ],
        rows,
    ))?;
    Ok(0)
}

fn row(vm: &VmInfo) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        vm.name.to_string(),
        status(vm),
        vm.ip.clone().unwrap_or_else(dash),
        vm.processes.map_or_else(dash, |p| p.to_string()),
        vm.memory.map_or_else(dash, output::size),
        output::disk(vm),
        vm.created.clone().unwrap_or_else(dash),
    ]
}

/// The status, with the processes the OOM killer ended in a running VM (the VM
/// itself goes on; its memory limit is what ended them), or how a stopped VM
/// ended (`stopped (oom)`, `stopped (fvm stop)`).
fn status(vm: &VmInfo) -> String {
    match vm.usage.and_then(|u| u.oom_kills) {
        Some(1) => format!("{} (1 oom kill)", vm.status.as_str()),
        Some(n) if n > 1 => format!("{} ({n} oom kills)", vm.status.as_str()),
        _ => match (&vm.end, vm.status) {
            (Some(end), fvm_engine::vm::VmStatus::Stopped) => {
                format!("{} ({})", vm.status.as_str(), end.short())
            }
            _ => vm.status.as_str().to_owned(),
        },
    }
}

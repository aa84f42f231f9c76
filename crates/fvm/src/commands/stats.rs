use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fvm_engine::vm::VmInfo;

use super::{Context, vm_name};
use crate::cli::StatsArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &StatsArgs) -> Result<u8> {
    let names = args
        .names
        .iter()
        .map(|n| vm_name(n))
        .collect::<Result<Vec<_>>>()?;
    let engine = match (ctx.engine_if_any()?, names.first()) {
        (Some(e), _) => Some(e),
        (None, Some(n)) => Some(ctx.engine_for(n)?),
        (None, None) => None,
    };
    if let Some(engine) = &engine {
        engine.keep_watcher();
    }
    let sample = || -> Result<Vec<VmInfo>> {
        let Some(engine) = &engine else {
            return Ok(Vec::new());
        };
        Ok(if names.is_empty() {
            engine.list()?
        } else {
            names
                .iter()
                .map(|n| engine.info(n))
                .collect::<Result<_, _>>()?
        })
    };
    let Some(every) = args.watch else {
        let vms = sample()?;
        if ctx.json() {
            output::print_json(&vms)?;
        } else {
            output::print(&render(&vms, None))?;
        }
        return Ok(0);
    };
    if !every.is_finite() || every < 0.1 {
        bail!("--watch interval must be at least 0.1 seconds, got {every}");
    }
    let every = Duration::from_secs_f64(every);
    watch(ctx, &sample, every, args.count)
}

/// Print a fresh table every `every` until interrupted (or `count` samples), with
/// each VM's CPU use over the last interval. With --json, one line per sample: the
/// VMs as `stats --json` shows them, each with its `cpu_percent` (null in the
/// first sample, which has no interval before it).
fn watch(
    ctx: &Context<'_>,
    sample: &dyn Fn() -> Result<Vec<VmInfo>>,
    every: Duration,
    count: Option<u64>,
) -> Result<u8> {
    let clear = std::io::stdout().is_terminal() && !ctx.json();
    let mut before: Option<(Instant, HashMap<String, u64>)> = None;
    let mut taken = 0u64;
    loop {
        let now = Instant::now();
        let vms = sample()?;
        let cpu: HashMap<String, u64> = vms
            .iter()
            .filter_map(|v| Some((v.name.to_string(), v.usage?.cpu_ns?)))
            .collect();
        let percent = before.as_ref().map(|(t, prev)| {
            let wall = now.duration_since(*t).as_nanos().max(1) as f64;
            cpu.iter()
                .filter_map(|(n, ns)| {
                    let was = prev.get(n)?;
                    Some((n.clone(), ns.saturating_sub(*was) as f64 / wall * 100.0))
                })
                .collect::<HashMap<_, _>>()
        });
        if ctx.json() {
            output::print(&json_line(&vms, percent.as_ref())?)?;
        } else {
            let table = render(&vms, Some(percent.as_ref().unwrap_or(&HashMap::new())));
            if clear {
                output::print(&format!("\x1b[H\x1b[2J{table}"))?;
            } else {
                output::print(&format!("{table}\n"))?;
            }
        }
        before = Some((now, cpu));
        taken += 1;
        if count.is_some_and(|c| taken >= c) {
            return Ok(0);
        }
        std::thread::sleep(every);
    }
}

/// One sample of `watch --json`: the VMs, each with its `cpu_percent`.
fn json_line(vms: &[VmInfo], percent: Option<&HashMap<String, f64>>) -> Result<String> {
    let mut out = Vec::with_capacity(vms.len());
    for vm in vms {
        let mut value = serde_json::to_value(vm)?;
        let cpu = percent
            .and_then(|p| p.get(vm.name.as_str()))
            .map(|v| (v * 10.0).round() / 10.0);
        if let Some(obj) = value.as_object_mut() {
            obj.insert("cpu_percent".into(), serde_json::json!(cpu));
        }
        out.push(value);
    }
    let mut line = serde_json::to_string(&out)?;
    line.push('\n');
    Ok(line)
}

/// One line per VM; `percent` (watch mode) adds %CPU over the last interval.
fn render(vms: &[VmInfo], percent: Option<&HashMap<String, f64>>) -> String {
    let dash = || "-".to_owned();
    let mut header = vec!["name", "status"];
    if percent.is_some() {
        header.push("%cpu");
    }
    header.extend([
        "cpu time",
        "memory",
        "peak",
        "oom kills",
        "processes",
        "read",
        "written",
        "disk",
        "inodes",
    ]);
    let rows = vms
        .iter()
        .map(|vm| {
            let u = vm.usage.unwrap_or_default();
            let mut row = vec![vm.name.to_string(), vm.status.as_str().to_owned()];
            if let Some(p) = percent {
                row.push(
                    p.get(vm.name.as_str())
                        .map_or_else(dash, |v| format!("{v:.1}")),
                );
            }
            row.extend([
                u.cpu_ns
                    .map_or_else(dash, |ns| format!("{:.2}s", ns as f64 / 1e9)),
                u.memory.map_or_else(dash, output::size),
                u.memory_peak.map_or_else(dash, output::size),
                u.oom_kills.map_or_else(dash, |n| n.to_string()),
                u.processes.map_or_else(dash, |p| p.to_string()),
                u.io_read.map_or_else(dash, output::size),
                u.io_write.map_or_else(dash, output::size),
                output::disk(vm),
                output::inodes(vm),
            ]);
            row
        })
        .collect();
    output::table(&header, rows)
}

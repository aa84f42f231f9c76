//! Fleets of bridged and of host VMs, started one after another and stopped again.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{NetworkBench, create, ms, verb};
use crate::measure::{Stats, check_output};
use crate::store::Store;
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, code, ratio};

/// The prefixes of the fleets' VMs.
pub const FLEET_BRIDGED: &str = "fleet-b";
pub const FLEET_HOSTED: &str = "fleet-h";

/// One fleet: created, started one after another, stopped, deleted.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub create_s: f64,
    pub start_ms: Vec<f64>,
    pub stop_ms: Vec<f64>,
    pub delete_s: f64,
}

/// `n` VMs: created, started one after another, stopped one after another, deleted.
pub(super) fn measure(store: &Store, prefix: &str, bridged: bool, n: usize) -> Result<Fleet> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    let mut f = Fleet::default();
    let t = Instant::now();
    for name in &names {
        check_output(&mut create(store, name, bridged))?;
    }
    f.create_s = t.elapsed().as_secs_f64();
    for name in &names {
        let took =
            ms(&mut verb(store, "start", name)).with_context(|| format!("starting {name}"))?;
        f.start_ms.push(took);
    }
    for name in &names {
        let took =
            ms(&mut verb(store, "stop", name)).with_context(|| format!("stopping {name}"))?;
        f.stop_ms.push(took);
    }
    let t = Instant::now();
    for name in &names {
        store.delete(name)?;
    }
    f.delete_s = t.elapsed().as_secs_f64();
    Ok(f)
}

/// The fleets' table.
pub fn render(s: &mut String, b: &NetworkBench) {
    let k = (b.vms / 10).clamp(1, 10);
    let _ = writeln!(
        s,
        "{} VMs of each kind, one kind after the other (bridged first): all created, then \
         started one after another, then stopped one after another, then deleted. Times \
         of each start and stop, in milliseconds; the first and last {k} of each show how \
         they change with the number of VMs running (none before the first start, all \
         before the first stop).\n",
        b.vms
    );
    let mut table = Table::new(&[
        ("subject", L),
        ("command", L),
        ("total s", R),
        ("median ms", R),
        ("p90 ms", R),
        (&format!("first {k}, median ms"), R),
        (&format!("last {k}, median ms"), R),
        ("vs host (total)", R),
    ]);
    let (fb, fh) = (&b.fleet_bridge, &b.fleet_host);
    for (verb, bridged, hosted) in [
        ("start", &fb.start_ms, &fh.start_ms),
        ("stop", &fb.stop_ms, &fh.stop_ms),
    ] {
        let host_total: f64 = hosted.iter().sum();
        for (label, v) in [("bridged", bridged), ("host", hosted)] {
            let Some(st) = Stats::of(v) else { continue };
            let total: f64 = v.iter().sum();
            let head = Stats::of(&v[..k.min(v.len())]).map_or(f64::NAN, |s| s.median);
            let tail = Stats::of(&v[v.len().saturating_sub(k)..]).map_or(f64::NAN, |s| s.median);
            table.row([
                format!("{verb} {} {label} VMs", v.len()),
                code(&format!("fvm --root DIR {verb} VM-N")),
                format!("{:.2}", total / 1000.0),
                format!("{:.2}", st.median),
                format!("{:.2}", st.p90),
                format!("{head:.2}"),
                format!("{tail:.2}"),
                ratio(total, Some(host_total)),
            ]);
        }
    }
    s.push_str(&table.render());
    let _ = writeln!(
        s,
        "\nCreating them took {:.2} s (bridged: each gets the lowest free address) and \
         {:.2} s (host); deleting them {:.2} s and {:.2} s.",
        fb.create_s, fh.create_s, fb.delete_s, fh.delete_s
    );
}

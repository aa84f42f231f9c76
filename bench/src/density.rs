//! The "Density" section of docs/BENCHMARKS.md: how many idle VMs one machine
//! holds, at what cost in host memory, and how long it takes to bring them up.
//!
//! For each fleet size N (100, 500 and 1000 by default), N host-network VMs are
//! created, then started one after another, each with a `sleep` left running in
//! the background inside it (`fvm run VM -- sh -c 'sleep 1000000 &'`), so every
//! VM holds a process besides its init. Host memory is read from /proc/meminfo
//! (MemAvailable and Slab) after `sync` and a short settle, once before the first
//! start and once after the last; the per-VM cost is the difference over N. The
//! VMs are then stopped one after another and deleted.
//!
//! Every VM is deleted at the end, also on failure; afterwards no `fvm-init` of
//! the store may be left running and no cgroup directory `fvm-<storeid>-*` under
//! /sys/fs/cgroup, or the run fails.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::measure::{Stats, check_output, time_command};
use crate::store::{Store, Sweep, Swept};
use crate::table::Align::Right as R;
use crate::table::Table;

pub const BEGIN: &str = "<!-- bench:density:begin -->";
pub const END: &str = "<!-- bench:density:end -->";

/// The prefix of the fleets' VMs.
const PREFIX: &str = "dens";
/// What each VM runs in the background after its start.
const SLEEP: &str = "sleep 1000000 &";
/// Untimed pause after `sync`, before /proc/meminfo is read.
pub const SETTLE: Duration = Duration::from_secs(3);
/// The targets: VMs on one machine, host memory per idle VM, time to
/// start them all.
const TARGET_VMS: usize = 1000;
const TARGET_KIB_PER_VM: f64 = 2048.0;
const TARGET_START_S: f64 = 30.0;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// Fleet sizes, one fleet after another.
    pub sizes: Vec<usize>,
}

/// The fleet sizes: 100, 500 and 1000 up to `max` (and `max` itself if none
/// of them is); `--quick`: 50 and 100.
pub fn sizes(quick: bool, max: usize) -> Vec<usize> {
    if quick {
        return vec![50, 100];
    }
    let max = max.max(1);
    let mut v: Vec<usize> = [100, 500, 1000].into_iter().filter(|n| *n <= max).collect();
    if v.is_empty() {
        v.push(max);
    }
    v
}

/// One fleet of N VMs.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub vms: usize,
    /// Seconds to create them all (untimed in the verdicts).
    pub create_s: f64,
    /// Seconds to start them all, each with its sleep.
    pub start_s: f64,
    /// Per VM, ms of its start plus its `run` of the sleep.
    pub per_vm_ms: Vec<f64>,
    /// KiB of MemAvailable and of Slab, before the first start and after the last.
    pub avail_kib: (u64, u64),
    pub slab_kib: (u64, u64),
    /// VMs `fvm list --json` showed running after the last start.
    pub running: usize,
    /// Seconds to stop them all, and to delete them all.
    pub stop_s: f64,
    pub delete_s: f64,
}

impl Fleet {
    /// KiB of MemAvailable the host lost per VM.
    pub fn avail_per_vm_kib(&self) -> f64 {
        (self.avail_kib.0 as f64 - self.avail_kib.1 as f64) / self.vms.max(1) as f64
    }

    /// KiB of Slab the host gained per VM.
    pub fn slab_per_vm_kib(&self) -> f64 {
        (self.slab_kib.1 as f64 - self.slab_kib.0 as f64) / self.vms.max(1) as f64
    }
}

#[derive(Debug, Clone, Default)]
pub struct DensityBench {
    pub cpus: usize,
    pub mem_total_kib: u64,
    pub store_id: String,
    pub fleets: Vec<Fleet>,
    /// Wall time of the whole section, cleanup included.
    pub took_s: f64,
}

pub fn measure(store: &Store, p: &Params) -> Result<DensityBench> {
    let began = Instant::now();
    let meminfo = read_meminfo()?;
    let mut b = DensityBench {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_kib: meminfo_kib(&meminfo, "MemTotal").context("MemTotal in /proc/meminfo")?,
        store_id: store.id(),
        fleets: Vec::new(),
        took_s: 0.0,
    };
    for &n in &p.sizes {
        eprintln!("fvm-bench: density: {n} VMs");
        let cleanup = Swept::new(Cleanup {
            store,
            id: b.store_id.clone(),
        });
        let f = fleet(store, n)?;
        cleanup.finish()?;
        eprintln!(
            "fvm-bench: density: {n} VMs started in {:.1} s, {:.0} KiB MemAvailable \
             and {:.0} KiB Slab per VM, {} running, stopped in {:.1} s",
            f.start_s,
            f.avail_per_vm_kib(),
            f.slab_per_vm_kib(),
            f.running,
            f.stop_s
        );
        b.fleets.push(f);
    }
    b.took_s = began.elapsed().as_secs_f64();
    Ok(b)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{PREFIX}-{i:04}")).collect()
}

fn fleet(store: &Store, n: usize) -> Result<Fleet> {
    let names = names(n);
    let mut f = Fleet {
        vms: n,
        ..Fleet::default()
    };
    let t = Instant::now();
    for name in &names {
        check_output(store.fvm().args(["create", name]))
            .with_context(|| format!("creating {name}"))?;
    }
    f.create_s = t.elapsed().as_secs_f64();
    let before = settled_meminfo()?;
    let t = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let one = Instant::now();
        time_command(store.fvm().args(["start", name]))
            .with_context(|| format!("starting {name}"))?;
        time_command(store.fvm().args(["run", name, "--", "sh", "-c", SLEEP]))
            .with_context(|| format!("running the sleep in {name}"))?;
        f.per_vm_ms.push(one.elapsed().as_secs_f64() * 1000.0);
        if (i + 1) % 100 == 0 {
            eprintln!("fvm-bench: density: started {}/{n}", i + 1);
        }
    }
    f.start_s = t.elapsed().as_secs_f64();
    let after = settled_meminfo()?;
    f.avail_kib = (before.0, after.0);
    f.slab_kib = (before.1, after.1);
    f.running = running(store)?;
    let t = Instant::now();
    for name in &names {
        time_command(store.fvm().args(["stop", "-t", "2", name]))
            .with_context(|| format!("stopping {name}"))?;
    }
    f.stop_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for name in &names {
        check_output(store.fvm().args(["delete", "-f", name]))
            .with_context(|| format!("deleting {name}"))?;
    }
    f.delete_s = t.elapsed().as_secs_f64();
    Ok(f)
}

fn read_meminfo() -> Result<String> {
    fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")
}

/// MemAvailable and Slab, in KiB, after `sync` and [`SETTLE`].
pub fn settled_meminfo() -> Result<(u64, u64)> {
    check_output(&mut std::process::Command::new("sync"))?;
    std::thread::sleep(SETTLE);
    let m = read_meminfo()?;
    Ok((
        meminfo_kib(&m, "MemAvailable").context("MemAvailable in /proc/meminfo")?,
        meminfo_kib(&m, "Slab").context("Slab in /proc/meminfo")?,
    ))
}

/// The value of `key` (in kB) in /proc/meminfo's text.
pub fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// VMs that `fvm list --json` shows with status running.
fn running(store: &Store) -> Result<usize> {
    let mut cmd = store.fvm();
    cmd.args(["list", "--json"]);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .context("running fvm list --json")?;
    if !out.status.success() {
        bail!(
            "fvm list --json exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(count_running(&String::from_utf8_lossy(&out.stdout)))
}

/// Entries of `fvm list --json` whose status is running.
pub fn count_running(json: &str) -> usize {
    json.match_indices("\"status\"")
        .filter(|(i, key)| {
            let rest = json[i + key.len()..].trim_start();
            rest.strip_prefix(':')
                .is_some_and(|r| r.trim_start().starts_with("\"running\""))
        })
        .count()
}

/// `fvm-init` processes in one of the store's cgroups (`/fvm-<id>-` in
/// `/proc/PID/cgroup`).
pub fn leftover_inits(id: &str) -> Vec<u32> {
    let needle = format!("/fvm-{id}-");
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "fvm-init")
                && fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .is_ok_and(|c| c.contains(&needle))
        })
        .collect()
}

/// Cgroup directories `fvm-<id>-*` under /sys/fs/cgroup and its hierarchies.
pub fn leftover_cgroups(id: &str) -> Vec<String> {
    let prefix = format!("fvm-{id}-");
    let top = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![top.to_path_buf()];
    if let Ok(entries) = fs::read_dir(top) {
        dirs.extend(
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    let mut left = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                left.push(e.path().display().to_string());
            }
        }
    }
    left
}

/// Force-deletes the benchmark's VMs (when dropped on failure, or by `finish`),
/// then checks that no `fvm-init` and no cgroup of the store is left.
#[derive(Debug)]
struct Cleanup<'a> {
    store: &'a Store,
    id: String,
}

impl Sweep for Cleanup<'_> {
    /// What was left behind.
    fn sweep(&self) -> Vec<String> {
        let mut left = Vec::new();
        let ours = |n: &str| n.starts_with(&format!("{PREFIX}-"));
        for name in self.store.listed().into_iter().filter(|n| ours(n)) {
            if let Err(e) = check_output(self.store.fvm().args(["delete", "-f", &name])) {
                left.push(format!("deleting VM {name}: {e:#}"));
            }
        }
        let inits = leftover_inits(&self.id);
        if !inits.is_empty() {
            let pids: Vec<String> = inits.iter().map(u32::to_string).collect();
            left.push(format!("fvm-init still ran: pid {}", pids.join(", ")));
        }
        let cgroups = leftover_cgroups(&self.id);
        if !cgroups.is_empty() {
            left.push(format!("cgroups still there: {}", cgroups.join(", ")));
        }
        left
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

/// The section, markers included.
pub fn render(b: &DensityBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    let gib = b.mem_total_kib as f64 / f64::from(1u32 << 20);
    let _ = writeln!(s, "{BEGIN}\n## Density\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- CPUs: {}\n- memory: {gib:.1} GiB \
         (MemTotal)\n- store: {store}\n\
         - VMs made by `fvm --root DIR create VM-N` (host network); afterwards every VM \
         was deleted (`fvm --root DIR delete -f VM-N`), and no `fvm-init` of the store \
         and no cgroup `fvm-<storeid>-*` under /sys/fs/cgroup was left (checked)\n\
         - measuring this section took {:.0} s\n",
        b.cpus, b.took_s
    );
    let _ = writeln!(
        s,
        "For each fleet size N: N VMs created, then started one after another, each \
         with a sleep left running in it (`fvm --root DIR start VM-N`, then `fvm --root \
         DIR run VM-N -- sh -c '{SLEEP}'`); then stopped one after another (`fvm --root \
         DIR stop -t 2 VM-N`) and deleted. Host memory is the change of MemAvailable \
         and of Slab in /proc/meminfo from before the first start to after the last, \
         each read after `sync` and a {} s pause, over N. Running: the entries of `fvm \
         --root DIR list --json` with status running, after the last start.\n",
        SETTLE.as_secs()
    );
    let mut table = Table::new(&[
        ("VMs", R),
        ("start all s", R),
        ("median per VM ms", R),
        ("p90 per VM ms", R),
        ("MemAvailable per VM KiB", R),
        ("Slab per VM KiB", R),
        ("running", R),
        ("stop all s", R),
    ]);
    for f in &b.fleets {
        let (median, p90) = Stats::of(&f.per_vm_ms)
            .map_or(("–".to_owned(), "–".to_owned()), |st| {
                (format!("{:.1}", st.median), format!("{:.1}", st.p90))
            });
        table.row([
            f.vms.to_string(),
            format!("{:.2}", f.start_s),
            median,
            p90,
            format!("{:.0}", f.avail_per_vm_kib()),
            format!("{:.0}", f.slab_per_vm_kib()),
            format!("{}/{}", f.running, f.vms),
            format!("{:.2}", f.stop_s),
        ]);
    }
    s.push_str(&table.render());
    let _ = writeln!(s);
    match b.fleets.iter().max_by_key(|f| f.vms) {
        Some(f) => {
            let all = f.running == f.vms && f.vms >= TARGET_VMS;
            let mib = f.avail_per_vm_kib() / 1024.0;
            let _ = writeln!(
                s,
                "Targets, for the largest fleet ({} VMs): {TARGET_VMS} VMs running on this \
                 machine, {} of {} running: {}; host memory per idle VM < {:.0} MiB, \
                 {mib:.2} MiB (MemAvailable): {}; all started in < {TARGET_START_S:.0} s, \
                 {:.1} s: {}.",
                f.vms,
                f.running,
                f.vms,
                verdict(all),
                TARGET_KIB_PER_VM / 1024.0,
                verdict(f.avail_per_vm_kib() < TARGET_KIB_PER_VM),
                f.start_s,
                verdict(f.vms >= TARGET_VMS && f.start_s < TARGET_START_S)
            );
            if f.vms < TARGET_VMS {
                let _ = writeln!(
                    s,
                    "\nThe largest fleet is smaller than the target's {TARGET_VMS} VMs \
                     (`--density-max`, `--quick`), so the count and start-time targets are \
                     missed by construction."
                );
            }
        }
        None => {
            let _ = writeln!(s, "No fleet was measured.");
        }
    }
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_max_and_quick() {
        assert_eq!(sizes(false, 1000), [100, 500, 1000]);
        assert_eq!(sizes(false, 600), [100, 500]);
        assert_eq!(sizes(false, 20), [20]);
        assert_eq!(sizes(true, 1000), [50, 100]);
    }

    #[test]
    fn meminfo_and_list_are_parsed() {
        let m = "MemTotal:       24570000 kB\nMemAvailable:   23000000 kB\nSlab:  120000 kB\n";
        assert_eq!(meminfo_kib(m, "MemAvailable"), Some(23_000_000));
        assert_eq!(meminfo_kib(m, "Slab"), Some(120_000));
        assert_eq!(meminfo_kib(m, "Mem"), None);
        let json = "[\n  {\"name\": \"a\", \"status\": \"running\"},\n  {\"name\": \"b\", \
                    \"status\":\"stopped\"},\n  {\"status\" : \"running\"}\n]";
        assert_eq!(count_running(json), 2);
    }

    #[test]
    fn renders_the_table_and_the_verdicts() {
        let fleet = |vms: usize, start_s: f64| Fleet {
            vms,
            create_s: 1.0,
            start_s,
            per_vm_ms: vec![20.0; vms],
            avail_kib: (20_000_000, 20_000_000 - 1500 * vms as u64),
            slab_kib: (100_000, 100_000 + 300 * vms as u64),
            running: vms,
            stop_s: 5.0,
            delete_s: 2.0,
        };
        let b = DensityBench {
            cpus: 2,
            mem_total_kib: 24 << 20,
            store_id: "1234abcd".into(),
            fleets: vec![fleet(100, 2.0), fleet(1000, 31.0)],
            took_s: 100.0,
        };
        let md = render(&b, "bench/run --density-only", "d", "k", "s");
        assert_eq!(
            md,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/density.md"))
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        for want in [
            "Produced by `bench/run --density-only`.",
            "| 100 | 2.00 | 20.0 | 20.0 | 1500 | 300 | 100/100 | 5.00 |",
            "| 1000 | 31.00 |",
            "1000 of 1000 running: met",
            "1.46 MiB (MemAvailable): met",
            "31.0 s: missed",
            "- memory: 24.0 GiB",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        assert!(!md.contains("smaller than the target"), "{md}");
    }
}

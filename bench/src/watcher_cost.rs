//! What the store's watcher (`fvm-watch`) costs while VMs write their own
//! layers: the untar of a tree of small files in a named VM (its layer in the
//! store, on the host's root filesystem, which the watcher marks) against the
//! same untar on the host, in rounds that run both in alternating order; the
//! watcher's CPU time (utime + stime from `/proc/PID/stat`), its wakeups
//! (voluntary context switches from `/proc/PID/status`) and the events it read
//! (its own counters, `STORE/watch.stats` on SIGUSR1) during each. Then a fleet
//! of VMs untarring at once, and the host's own untar with no VM running, with
//! the fleet running idle and while the fleet untars.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::host_changes::watcher::{Probe, probe, wait_for_watcher};
use crate::io::run_op;
use crate::measure::{Stats, check_output, median_ratio};
use crate::store::Store;
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, factor};
use crate::tree::make_tarball;

pub const BEGIN: &str = "<!-- bench:watcher:begin -->";
pub const END: &str = "<!-- bench:watcher:end -->";

#[derive(Debug, Clone)]
pub struct Params {
    pub rounds: usize,
    /// MiB of file content in the untarred tree.
    pub tree_mib: usize,
    /// VMs untarring at once.
    pub fleet: usize,
}

/// One untar and what the watcher did meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Run {
    pub secs: f64,
    pub watcher: Probe,
}

/// One fvm's VMs and watcher.
#[derive(Debug, Default)]
pub struct Variant {
    /// "this fvm", or the earlier one's path.
    pub label: String,
    /// Whether its watcher counts events (an earlier one may not).
    pub counters: bool,
    pub vm: Vec<Run>,
    /// All the fleet's untars at once: wall time from the first start to the last end.
    pub fleet_run: Run,
}

#[derive(Debug, Default)]
pub struct WatcherCost {
    pub rounds: usize,
    pub tree_files: usize,
    pub tree_bytes: u64,
    pub host: Vec<Run>,
    /// This fvm first, then the earlier one if asked for.
    pub variants: Vec<Variant>,
    pub fleet: usize,
    /// The host's own untar, with no VM running and with the fleet running idle.
    pub host_alone: f64,
    pub host_beside_fleet: f64,
    /// The host's own untar while the fleet untars at once.
    pub host_during_fleet: f64,
    pub took_s: f64,
}

/// Removes the section's VMs and files, even after an error.
struct Scratch<'a> {
    store: &'a Store,
    dir: PathBuf,
    vms: Vec<String>,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for name in &self.vms {
            let _ = check_output(self.store.fvm().args(["delete", "--force", name]));
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("fvm-bench: cleanup: removing {}: {err}", self.dir.display());
        }
    }
}

/// The `io-op` arguments of an untar of `tar` into the new directory `dest`.
fn untar_args(tar: &Path, dest: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["io-op", "--", "sh", "-c"].map(OsString::from).to_vec();
    a.push("mkdir \"$1\" && exec tar -xf \"$2\" -C \"$1\"".into());
    a.push("sh".into());
    a.push(dest.into());
    a.push(tar.into());
    a
}

fn untar_on_host(me: &Path, tar: &Path, dest: &Path) -> Result<f64> {
    check_output(&mut Command::new("sync"))?;
    let secs = run_op(Command::new(me).args(untar_args(tar, dest)), 1)?;
    Ok(secs[0])
}

fn untar_in_vm(store: &Store, vm: &str, me: &Path, tar: &Path, dest: &Path) -> Command {
    let mut c = store.fvm();
    c.args(["run", vm, "--"])
        .arg(me)
        .args(untar_args(tar, dest));
    c
}

/// The watcher's counters after it has been quiet for a moment (its
/// invalidation passes after the last change are over).
fn settled(store: &Store, counters: bool) -> Result<Probe> {
    std::thread::sleep(Duration::from_millis(400));
    probe(store, counters)
}

/// Start `vm` and wait for its store's watcher.
fn start(store: &Store, vm: &str) -> Result<()> {
    store.start(vm)?;
    wait_for_watcher(store, true)
}

/// Stop the store's `vms` and wait until its watcher is gone (so that it doesn't
/// see another store's VMs' writes as host changes).
fn stop_all(store: &Store, vms: &[String]) -> Result<()> {
    for name in vms {
        store.stop(name)?;
    }
    wait_for_watcher(store, false)
}

/// `stores`: this fvm's store, then the earlier fvm's, if any, with its label.
pub fn measure(stores: &[(&Store, String)], p: &Params) -> Result<WatcherCost> {
    let started = Instant::now();
    let me = std::env::current_exe().context("locating fvm-bench")?;
    let dir = tempfile::Builder::new()
        .prefix("fvm-bench-watcher-")
        .tempdir_in("/var/tmp")
        .context("creating a directory under /var/tmp")?
        .keep();
    let mut scratch: Vec<Scratch> = stores
        .iter()
        .map(|(store, _)| Scratch {
            store,
            dir: dir.clone(),
            vms: Vec::new(),
        })
        .collect();
    let tarball = make_tarball(&dir, p.tree_mib)?;
    let mut w = WatcherCost {
        rounds: p.rounds,
        tree_files: tarball.files,
        tree_bytes: tarball.file_bytes,
        fleet: p.fleet,
        variants: stores
            .iter()
            .enumerate()
            .map(|(i, (_, label))| Variant {
                label: label.clone(),
                counters: i == 0,
                ..Variant::default()
            })
            .collect(),
        ..WatcherCost::default()
    };
    // The host's trees under DIR/trees; a VM's under DIR/vm (in its own layer).
    let trees = dir.join("trees");
    let in_vm = dir.join("vm");
    for d in [&trees, &in_vm] {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Each host tree starts in a block group of its own (ext4's TOPDIR): a tree
    // made where many inodes were freed in the last minutes (an earlier run's
    // cleanup) waits for ext4 to skip them, and took twice the VM's time.
    let _ = check_output(Command::new("chattr").arg("+T").arg(&trees));
    let solo = vec!["watch-solo".to_owned()];
    for (i, (store, _)) in stores.iter().enumerate() {
        store.create("watch-solo")?;
        scratch[i].vms.push("watch-solo".into());
    }
    // Per round: the host, then each fvm's VM, rotated round by round. Only one
    // store's VM runs at a time.
    let places = stores.len() + 1;
    for round in 0..p.rounds {
        eprintln!("fvm-bench: watcher: round {}/{}", round + 1, p.rounds);
        for k in 0..places {
            let place = (round + k) % places;
            if place == 0 {
                check_output(&mut Command::new("sync"))?;
                let secs = untar_on_host(&me, &tarball.path, &trees.join(format!("host-{round}")))?;
                w.host.push(Run {
                    secs,
                    watcher: Probe::default(),
                });
                continue;
            }
            let (store, _) = stores[place - 1];
            let counters = place == 1;
            start(store, "watch-solo")?;
            check_output(&mut Command::new("sync"))?;
            let before = settled(store, counters)?;
            let dest = in_vm.join(format!("solo-{place}-{round}"));
            let secs = run_op(
                &mut untar_in_vm(store, "watch-solo", &me, &tarball.path, &dest),
                1,
            )?[0];
            let watcher = settled(store, counters)?.since(&before);
            stop_all(store, &solo)?;
            w.variants[place - 1].vm.push(Run { secs, watcher });
        }
    }
    eprintln!("fvm-bench: watcher: the host's untar with no VM running");
    check_output(&mut Command::new("sync"))?;
    w.host_alone = untar_on_host(&me, &tarball.path, &trees.join("alone"))?;
    let names: Vec<String> = (0..p.fleet).map(|i| format!("watch-{i}")).collect();
    for (i, (store, label)) in stores.iter().enumerate() {
        eprintln!("fvm-bench: watcher: {} VMs of {label}", p.fleet);
        for name in &names {
            store.create(name)?;
            scratch[i].vms.push(name.clone());
            store.start(name)?;
        }
        wait_for_watcher(store, true)?;
        if i == 0 {
            check_output(&mut Command::new("sync"))?;
            w.host_beside_fleet = untar_on_host(&me, &tarball.path, &trees.join("beside"))?;
        }
        eprintln!("fvm-bench: watcher: {} VMs untarring at once", p.fleet);
        check_output(&mut Command::new("sync"))?;
        let counters = i == 0;
        let before = settled(store, counters)?;
        let t = Instant::now();
        let mut children = Vec::new();
        for name in &names {
            let dest = in_vm.join(format!("{i}-{name}"));
            let mut cmd = untar_in_vm(store, name, &me, &tarball.path, &dest);
            cmd.stdout(std::process::Stdio::null());
            children.push((
                name,
                cmd.spawn()
                    .with_context(|| format!("running the untar in {name}"))?,
            ));
        }
        if i == 0 {
            // The host's own untar while every VM untars: what the fleet's
            // writes (and the watcher's work on them) cost a host workload.
            w.host_during_fleet = run_op(
                Command::new(&me).args(untar_args(&tarball.path, &trees.join("during"))),
                1,
            )?[0];
        }
        let mut failed = Vec::new();
        for (name, mut c) in children {
            if !c.wait().is_ok_and(|s| s.success()) {
                failed.push(name.as_str());
            }
        }
        let secs = t.elapsed().as_secs_f64();
        w.variants[i].fleet_run = Run {
            secs,
            watcher: settled(store, counters)?.since(&before),
        };
        if !failed.is_empty() {
            bail!("the untar failed in {}", failed.join(", "));
        }
        stop_all(store, &names)?;
    }
    drop(scratch);
    w.took_s = started.elapsed().as_secs_f64();
    Ok(w)
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    Stats::of(&v).map_or(0.0, |s| s.median)
}

pub fn render(w: &WatcherCost, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{BEGIN}\n## The watcher while VMs write their own layers\n"
    );
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- store: {store}\n- rounds: {}, each an untar \
         on the host and one in a named VM (`fvm run VM -- fvm-bench io-op -- tar …`, into \
         a directory of the VM's own layer), in alternating order, each after `sync`; the \
         section took {:.0} s\n",
        w.rounds, w.took_s
    );
    let _ = writeln!(
        s,
        "The tree holds {} files of at most 32 KiB from /usr ({:.0} MiB). Untar: wall time \
         in seconds measured by the program that ran it (VM startup not in it), median over \
         rounds, and the median of the per-round ratios to the host. Watcher: its CPU time \
         (utime + stime of `/proc/PID/stat`, ms), its wakeups (voluntary context switches \
         of `/proc/PID/status`) and the events it read of the VMs' own directories and of \
         the host (its counters, `STORE/watch.stats`), from 400 ms before to 400 ms after \
         each untar; medians. Host events include every other process's creates on the \
         same filesystem.\n",
        w.tree_files,
        w.tree_bytes as f64 / f64::from(1 << 20)
    );
    let host: Vec<f64> = w.host.iter().map(|r| r.secs).collect();
    let mut t = Table::new(&[
        ("untar", L),
        ("fvm", L),
        ("s", R),
        ("vs host", R),
        ("watcher CPU ms", R),
        ("wakeups", R),
        ("own events", R),
        ("host events", R),
    ]);
    t.row(
        [
            "on the host",
            "",
            &format!("{:.3}", median(host.iter().copied())),
            "1.00×",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain(["", "", "", ""].map(str::to_owned)),
    );
    let count = |counters: bool, v: f64| {
        if counters {
            format!("{v:.0}")
        } else {
            "–".to_owned()
        }
    };
    for v in &w.variants {
        let vm: Vec<f64> = v.vm.iter().map(|r| r.secs).collect();
        let m = |f: fn(&Probe) -> f64| median(v.vm.iter().map(|r| f(&r.watcher)));
        t.row([
            "in a named VM".to_owned(),
            v.label.clone(),
            format!("{:.3}", median(vm.iter().copied())),
            median_ratio(&vm, &host).map_or("–".into(), |r| format!("{r:.2}×")),
            format!("{:.0}", m(|p| p.cpu_ms)),
            format!("{:.0}", m(|p| p.wakeups as f64)),
            count(v.counters, m(|p| p.own_events as f64)),
            count(v.counters, m(|p| p.host_events as f64)),
        ]);
    }
    for v in &w.variants {
        let f = &v.fleet_run;
        t.row([
            format!("in {} VMs at once (all)", w.fleet),
            v.label.clone(),
            format!("{:.3}", f.secs),
            String::new(),
            format!("{:.0}", f.watcher.cpu_ms),
            f.watcher.wakeups.to_string(),
            count(v.counters, f.watcher.own_events as f64),
            count(v.counters, f.watcher.host_events as f64),
        ]);
    }
    s.push_str(&t.render());
    let ours: Vec<f64> = w
        .variants
        .first()
        .map(|v| v.vm.iter().map(|r| r.secs).collect())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "\nThe host's own untar: {:.3} s with no VM running, {:.3} s with the {} VMs \
         running idle ({}), {:.3} s while they untarred at once ({}).\n\nTarget: the untar in a named VM at most 1.2x the host's: {}.",
        w.host_alone,
        w.host_beside_fleet,
        w.fleet,
        factor((w.host_alone > 0.0).then(|| w.host_beside_fleet / w.host_alone)),
        w.host_during_fleet,
        factor((w.host_alone > 0.0).then(|| w.host_during_fleet / w.host_alone)),
        median_ratio(&ours, &host).map_or("–", |r| if r <= 1.2 { "met" } else { "missed" }),
    );
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_rows_and_the_target() {
        let run = |secs, cpu_ms| Run {
            secs,
            watcher: Probe {
                cpu_ms,
                wakeups: 3,
                own_events: 2,
                host_events: 10,
            },
        };
        let w = WatcherCost {
            rounds: 2,
            tree_files: 100,
            tree_bytes: 1 << 20,
            host: vec![run(1.0, 0.0), run(1.0, 0.0)],
            variants: vec![
                Variant {
                    label: "this fvm".into(),
                    counters: true,
                    vm: vec![run(1.1, 10.0), run(1.1, 10.0)],
                    fleet_run: run(9.0, 40.0),
                },
                Variant {
                    label: "old".into(),
                    counters: false,
                    vm: vec![run(1.8, 300.0), run(1.8, 300.0)],
                    fleet_run: run(19.0, 400.0),
                },
            ],
            fleet: 50,
            host_alone: 1.0,
            host_beside_fleet: 1.05,
            host_during_fleet: 3.0,
            took_s: 60.0,
        };
        let md = render(&w, "bench/run --watcher-only", "d", "k", "s");
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        for row in [
            "| in a named VM | this fvm | 1.100 | 1.10× | 10 | 3 | 2 | 10 |",
            "| in a named VM | old | 1.800 | 1.80× | 300 | 3 | – | – |",
            "| in 50 VMs at once (all) | this fvm | 9.000 |  | 40 |",
        ] {
            assert!(md.contains(row), "{row} in:\n{md}");
        }
        assert!(md.contains("(1.05x)"), "{md}");
        assert!(md.contains("1.2x the host's: met"), "{md}");
    }
}

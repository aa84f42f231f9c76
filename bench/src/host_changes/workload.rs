//! The cost half of the section: a metadata-heavy host workload with and without
//! the store's VMs (and so its watcher) running.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Params;
use super::watcher::{
    children_cpu_ticks, clock_ticks, cpu_ticks, other_watchers, wait_for_watcher, watcher_pid,
};
use crate::measure::{Stats, check_output, median_ratio, round_ratios, time_command};
use crate::store::Store;
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, code, factor as x, ratio};
use crate::tree::{TREE_FILE_MAX, make_tarball};

/// The prefix of the idle VMs.
const IDLE: &str = "hc-idle";
/// Untimed pause before each workload run (after `sync`).
const SETTLE: Duration = Duration::from_secs(2);
/// After the untar, until the watcher's last invalidation for it is over
/// (50 ms, then two more 100 ms apart), before its CPU time is read again.
const WATCHER_TAIL: Duration = Duration::from_millis(400);

/// Seconds per run without the store's VMs (idle) and with them (loaded), one
/// of each per round, in round order.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    pub idle: Vec<f64>,
    pub loaded: Vec<f64>,
}

impl Runs {
    /// Per round: loaded / idle.
    pub fn ratios(&self) -> Vec<f64> {
        round_ratios(&self.loaded, &self.idle)
    }

    /// Their median.
    pub fn ratio(&self) -> Option<f64> {
        median_ratio(&self.loaded, &self.idle)
    }

    fn sum(&self, other: &Runs) -> Runs {
        let add = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x + y).collect();
        Runs {
            idle: add(&self.idle, &other.idle),
            loaded: add(&self.loaded, &other.loaded),
        }
    }
}

/// The host workload with and without running VMs.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub rounds: usize,
    pub vms: usize,
    /// The tree: entries (directories, symlinks, files), files, the files'
    /// bytes, the tarball's bytes.
    pub entries: usize,
    pub files: usize,
    pub file_bytes: u64,
    pub tar_bytes: u64,
    /// Whether the trees' parent got ext4's TOPDIR attribute (`chattr +T`).
    pub topdir: bool,
    pub find: Runs,
    pub untar: Runs,
    /// CPU seconds (user + system) of `find` and `tar` together.
    pub cpu: Runs,
    /// CPU seconds (user + system) of the watcher during each timed loaded run.
    pub watcher_cpu: Vec<f64>,
    /// Seconds to start all the VMs, and to stop them, at each switch.
    pub start_s: Vec<f64>,
    pub stop_s: Vec<f64>,
    /// Timed runs during which another store's `fvm-watch` ran, of all timed runs.
    pub foreign: usize,
    pub runs: usize,
}

/// One run of the workload.
#[derive(Debug)]
struct Run {
    find: f64,
    untar: f64,
    /// CPU seconds of `find` and `tar` (user + system).
    cpu: f64,
    watcher_cpu: Option<f64>,
    foreign: bool,
}

/// The workload's rounds, with its files in `dir`.
pub(super) fn measure(store: &Store, dir: &Path, p: &Params) -> Result<Workload> {
    let mut w = Workload {
        rounds: p.rounds,
        vms: p.vms,
        ..Workload::default()
    };
    eprintln!(
        "fvm-bench: host changes: a tarball of {} MiB of small files from /usr/share",
        p.tree_mib
    );
    let tarball = make_tarball(dir, p.tree_mib)?;
    let tar = tarball.path;
    (w.entries, w.files, w.file_bytes, w.tar_bytes) = (
        tarball.entries,
        tarball.files,
        tarball.file_bytes,
        tarball.tar_bytes,
    );
    // Each tree in a block group of its own, away from inodes anyone freed lately.
    let trees = dir.join("trees");
    fs::create_dir(&trees).with_context(|| format!("creating {}", trees.display()))?;
    w.topdir = check_output(Command::new("chattr").arg("+T").arg(&trees)).is_ok();

    let names: Vec<String> = (0..p.vms).map(|i| format!("{IDLE}-{i:02}")).collect();
    for name in &names {
        store.create(name)?;
    }
    let ticks = clock_ticks();
    let mut running = false;
    let mut tree_no = 0;
    // Round 0 is a warm-up. Odd rounds start with the VMs running, even rounds
    // without, so they are started or stopped once per round.
    for round in 0..=p.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for loaded in order {
            if loaded != running {
                switch(store, &names, loaded, &mut w)?;
                running = loaded;
            }
            let run = run_once(store, &trees, &tar, tree_no, loaded, ticks).with_context(|| {
                format!("round {round}, {} VMs", if loaded { p.vms } else { 0 })
            })?;
            tree_no += 1;
            if round == 0 {
                continue;
            }
            let (find, untar, cpu) = if loaded {
                (&mut w.find.loaded, &mut w.untar.loaded, &mut w.cpu.loaded)
            } else {
                (&mut w.find.idle, &mut w.untar.idle, &mut w.cpu.idle)
            };
            find.push(run.find);
            untar.push(run.untar);
            cpu.push(run.cpu);
            w.watcher_cpu.extend(run.watcher_cpu);
            w.foreign += usize::from(run.foreign);
            w.runs += 1;
        }
        eprintln!(
            "fvm-bench: host changes: workload round {round}/{}{}",
            p.rounds,
            if round == 0 { " (warm-up)" } else { "" }
        );
    }
    if running {
        switch(store, &names, false, &mut w)?;
    }
    for name in &names {
        store.delete(name)?;
    }
    Ok(w)
}

/// Start every VM of `names` (`up`) or stop them, timed, then wait until the
/// store's watcher runs, or is gone.
fn switch(store: &Store, names: &[String], up: bool, w: &mut Workload) -> Result<()> {
    let t = Instant::now();
    for name in names {
        if up {
            store.start(name)?;
        } else {
            store.stop(name)?;
        }
    }
    let took = t.elapsed().as_secs_f64();
    if up {
        w.start_s.push(took);
    } else {
        w.stop_s.push(took);
    }
    wait_for_watcher(store, up)
}

fn run_once(
    store: &Store,
    trees: &Path,
    tar: &Path,
    n: usize,
    loaded: bool,
    ticks: f64,
) -> Result<Run> {
    let target = trees.join(format!("x-{n}"));
    fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
    check_output(&mut Command::new("sync"))?;
    std::thread::sleep(SETTLE);
    let watcher = watcher_pid(store);
    if watcher.is_some() != loaded {
        bail!(
            "the store's watcher {} while {} VMs ran",
            if loaded { "was missing" } else { "ran" },
            if loaded { "its" } else { "none of its" }
        );
    }
    let foreign = other_watchers(watcher) > 0;
    let cpu_before = watcher.map(cpu_ticks).transpose()?;
    let own_before = children_cpu_ticks()?;
    let find = time_command(Command::new("find").arg("/usr"))?.as_secs_f64();
    let untar = time_command(
        Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(&target),
    )?
    .as_secs_f64();
    let cpu = children_cpu_ticks()?.saturating_sub(own_before) as f64 / ticks;
    let watcher_cpu = match (watcher, cpu_before) {
        (Some(pid), Some(before)) => {
            std::thread::sleep(WATCHER_TAIL);
            if watcher_pid(store) != Some(pid) {
                bail!("the store's watcher (pid {pid}) exited during the run");
            }
            Some(cpu_ticks(pid)?.saturating_sub(before) as f64 / ticks)
        }
        _ => None,
    };
    Ok(Run {
        find,
        untar,
        cpu,
        watcher_cpu,
        foreign: foreign || other_watchers(watcher) > 0,
    })
}

/// Remove every subdirectory of `dir` (the untarred trees), in parallel: each
/// `rm -rf` of a tree mostly waits for the disk.
pub(super) fn remove_subdirs(dir: &Path) -> Result<()> {
    let subdirs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    std::thread::scope(|s| {
        let jobs: Vec<_> = subdirs
            .iter()
            .map(|d| {
                s.spawn(move || {
                    fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))
                })
            })
            .collect();
        jobs.into_iter().try_for_each(|job| match job.join() {
            Ok(result) => result,
            Err(_) => bail!("a thread removing the trees panicked"),
        })
    })
}

/// The workload's text and table.
pub fn render(s: &mut String, w: &Workload) {
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let _ = writeln!(
        s,
        "\nCost to the host: a metadata-heavy workload, `find /usr` and then the untar of \
         a tree of small files ({} entries: directories, symlinks and {} files of at most \
         {} KiB from /usr/share, {:.0} MiB; a {:.0} MiB tarball made once) into a new \
         directory, with none of the store's VMs running (so no watcher) and with {} idle \
         ones (host network). {} rounds after 1 warm-up; each runs the workload without and \
         with the VMs, in alternating order (0, {} | {}, 0 | ...), so the VMs are started \
         or stopped once per round, between its two runs. Every run starts after `sync` \
         and a {} s pause, untimed. The untarred trees are kept until the end{}. Wall-clock \
         time of each command, in seconds, and the CPU time (user + system) that `find` \
         and `tar` used, from the cutime and cstime of the benchmark's `/proc/self/stat` \
         (it waits for them).\n",
        w.entries,
        w.files,
        TREE_FILE_MAX >> 10,
        mib(w.file_bytes),
        mib(w.tar_bytes),
        w.vms,
        w.rounds,
        w.vms,
        w.vms,
        SETTLE.as_secs(),
        if w.topdir {
            ", and their parent has ext4's TOPDIR attribute (`chattr +T HOSTDIR/trees`), so \
             that each starts in a block group of its own"
        } else {
            " (`chattr +T HOSTDIR/trees` failed, so ext4 placed them as usual)"
        }
    );
    let mut table = Table::new(&[
        ("workload", L),
        ("command", L),
        ("VMs running", R),
        ("median s", R),
        ("p10 s", R),
        ("p90 s", R),
        ("vs 0 VMs", R),
    ]);
    let both = w.find.sum(&w.untar);
    for (name, shown, runs) in [
        ("find", "find /usr > /dev/null", &w.find),
        ("untar", "tar -xf TREE.tar -C HOSTDIR/trees/x-N", &w.untar),
        ("find + untar", "both, one after the other", &both),
        (
            "CPU time of find + untar",
            "both, one after the other",
            &w.cpu,
        ),
    ] {
        let idle = Stats::of(&runs.idle).map(|st| st.median);
        for (vms, v) in [(0, &runs.idle), (w.vms, &runs.loaded)] {
            let Some(st) = Stats::of(v) else { continue };
            table.row([
                name.to_owned(),
                code(shown),
                vms.to_string(),
                format!("{:.3}", st.median),
                format!("{:.3}", st.p10),
                format!("{:.3}", st.p90),
                ratio(st.median, idle),
            ]);
        }
    }
    s.push_str(&table.render());
    let list = |r: &Runs| {
        r.ratios()
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let verdict = match both.ratio() {
        Some(r) if r < 1.05 => "met",
        Some(_) => "missed",
        None => "n/a",
    };
    let _ = writeln!(
        s,
        "\nMedian of the per-round ratios with {} VMs / with none: find + untar {} ({}), \
         target < 1.05x: {verdict}; find {} ({}); untar {} ({}); CPU time of both {} \
         ({}).\n",
        w.vms,
        x(both.ratio()),
        list(&both),
        x(w.find.ratio()),
        list(&w.find),
        x(w.untar.ratio()),
        list(&w.untar),
        x(w.cpu.ratio()),
        list(&w.cpu)
    );
    if let Some(cpu) = Stats::of(&w.watcher_cpu) {
        let shares: Vec<f64> = w
            .watcher_cpu
            .iter()
            .zip(&both.loaded)
            .filter(|(_, t)| **t > 0.0)
            .map(|(c, t)| c / t * 100.0)
            .collect();
        let share = Stats::of(&shares).map_or("–".to_owned(), |st| format!("{:.1} %", st.median));
        let _ = writeln!(
            s,
            "The watcher (`fvm-watch`; user + system time from `/proc/PID/stat`, from just \
             before `find` until {} ms after the untar, when its last invalidation is over) \
             used a median of {:.0} ms of CPU per run with the VMs (p10 {:.0} ms, p90 {:.0} \
             ms), {share} of the run's wall time. fvm keeps no count of its invalidations, so \
             there is none here.\n",
            WATCHER_TAIL.as_millis(),
            cpu.median * 1000.0,
            cpu.p10 * 1000.0,
            cpu.p90 * 1000.0
        );
    }
    let median_s =
        |v: &[f64]| Stats::of(v).map_or("–".to_owned(), |st| format!("{:.2} s", st.median));
    let _ = writeln!(
        s,
        "Starting the {} VMs one after another (`fvm --root DIR start VM-N`) took a median \
         of {} per switch ({} switches), stopping them {} ({}); each switch was followed by \
         waiting until the watcher ran, or was gone, untimed.",
        w.vms,
        median_s(&w.start_s),
        w.start_s.len(),
        median_s(&w.stop_s),
        w.stop_s.len()
    );
    if w.foreign > 0 {
        let _ = writeln!(
            s,
            "\nOther stores' watchers (other fvm users of this machine) ran during {} of the \
             {} timed runs; their fanotify marks on the same filesystem see the untar too.",
            w.foreign, w.runs
        );
    }
}

//! The "Host changes" section of docs/BENCHMARKS.md: how soon a change the host
//! makes shows inside a running VM, and what the store's watcher (`fvm-watch`,
//! which makes it show) costs the host.
//!
//! - Latency. A file in a directory of the benchmark's own under /var/tmp (on the
//!   host's filesystem, which the VMs overlay) is replaced the way dpkg replaces
//!   files, a new file written and renamed over it, with a new value every 150 to
//!   200 ms, at random, so that the changes meet the watcher's schedule (an
//!   invalidation 50 ms after a change, retried 100 ms apart) at random points. Two readers re-read the file every millisecond and
//!   print each new value with the time they read it: one inside a running VM
//!   (`fvm-bench watch-file`, this binary, run through `fvm run` by its host
//!   path), one on the host, which shows what the readers themselves add. Both
//!   clocks are the same kernel's CLOCK_REALTIME.
//! - Cost. A metadata-heavy host workload, `find /usr` and the untar of a tree of
//!   small files copied from /usr/share, with no VM of the store running (so no
//!   watcher) and with 50 idle ones, in rounds that run both, in alternating order
//!   (0, 50 | 50, 0 | ...), so the VMs are started or stopped once per round,
//!   between its two runs, and a slow spell of the machine lands on both. Every
//!   run starts after `sync` and a pause, untimed: no dirty pages, an idle
//!   watcher. The untarred trees are kept until the end, and their parent has
//!   ext4's TOPDIR attribute (`chattr +T`), so that each starts in a block group
//!   of its own: on an ext4 without a journal (this machine's root filesystem) a
//!   new inode skips past every inode freed in the last minute or more
//!   (`recently_deleted`), and an untar into a group where a `rm -rf` (ours
//!   between runs, or anybody's) had just freed inodes took 6 to 15 times longer.
//!   With `discard`, a `rm -rf` itself mostly waits for the disk's discards, which
//!   have nothing to do with fvm, so it is not part of the workload.
//! - The latency is measured first, the workload second: the inodes the
//!   latency's replaced files free are few and in another group than the trees,
//!   and its minutes let whatever freed many inodes before the section (the full
//!   run's diff and commit, a previous run's cleanup) stop counting as recent.
//!
//! Everything the section makes on the host is in one temporary directory under
//! /var/tmp, removed at the end, also on failure; its VMs are in the benchmark's
//! store, whose guard deletes them.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::measure::{SplitMix64, Stats, check_output, describe, percentile, time_command};
use crate::store::Store;
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, code, ratio};

pub const BEGIN: &str = "<!-- bench:host-changes:begin -->";
pub const END: &str = "<!-- bench:host-changes:end -->";

/// Where the section's host files go: the host's own, seen by the VMs.
const HOST_PARENT: &str = "/var/tmp";
/// The VM the latency reader runs in, and the prefix of the idle VMs.
const READER_VM: &str = "hc-reader";
const IDLE: &str = "hc-idle";
/// Gap between two changes, in microseconds, uniform in this range.
const GAP_US: (u64, u64) = (150_000, 200_000);
/// How often the readers re-read the file, in microseconds.
const READ_EVERY_US: u64 = 1000;
/// What the last change writes; a reader exits when it reads it.
const LAST: &str = "stop";
/// How long a reader may take to read the last change.
const LAST_WAIT: Duration = Duration::from_secs(10);
/// The tree's files are at most this big: many small files, metadata-heavy.
const TREE_FILE_MAX: u64 = 32 << 10;
/// Untimed pause before each workload run (after `sync`).
const SETTLE: Duration = Duration::from_secs(2);
/// After the untar, until the watcher's last invalidation for it is over
/// (50 ms, then two more 100 ms apart), before its CPU time is read again.
const WATCHER_TAIL: Duration = Duration::from_millis(400);
/// How long the watcher may take to appear after a start, or to exit after the
/// store's last VM stopped.
const WATCHER_WAIT: Duration = Duration::from_secs(10);

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// Changes of the file the readers watch.
    pub changes: usize,
    /// Timed rounds of the workload, each with a run without VMs and one with.
    pub rounds: usize,
    /// VMs running during the loaded runs.
    pub vms: usize,
    /// MiB of file content in the untarred tree.
    pub tree_mib: usize,
}

/// The readers' view of the changes.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Per change, ms from just before its rename to the reader's first read of
    /// the new value; `None` for a value the reader never read.
    pub vm: Vec<Option<f64>>,
    pub host: Vec<Option<f64>>,
    /// Whether each reader read the last change (within [`LAST_WAIT`]) and exited.
    pub vm_ended: bool,
    pub host_ended: bool,
    /// Checks (one every 10 changes) that found another store's `fvm-watch`
    /// running, of all checks.
    pub foreign: usize,
    pub checks: usize,
}

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
        self.loaded
            .iter()
            .zip(&self.idle)
            .filter(|(_, i)| **i > 0.0)
            .map(|(l, i)| l / i)
            .collect()
    }

    /// Their median.
    pub fn ratio(&self) -> Option<f64> {
        Stats::of(&self.ratios()).map(|s| s.median)
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

#[derive(Debug, Clone, Default)]
pub struct HostChangesBench {
    pub cpus: usize,
    pub changes: usize,
    pub latency: Latency,
    pub workload: Workload,
    /// Filesystem type of the host directory.
    pub host_fs: String,
    /// Seconds to remove the host directory (the trees) at the end.
    pub cleanup_s: f64,
    /// Wall time of the whole section, cleanup included.
    pub took_s: f64,
}

pub fn measure(store: &Store, p: &Params) -> Result<HostChangesBench> {
    let began = Instant::now();
    wait_for_watcher(store, false).context("before the host-changes benchmark")?;
    // Removed when dropped, also on failure; on success below, with its time.
    let dir = tempfile::Builder::new()
        .prefix("fvm-bench-host-")
        .tempdir_in(HOST_PARENT)
        .with_context(|| format!("creating a temporary directory under {HOST_PARENT}"))?;
    eprintln!(
        "fvm-bench: host changes: host files in {}",
        dir.path().display()
    );
    let mut b = HostChangesBench {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        changes: p.changes,
        host_fs: crate::store::fs_type(dir.path()).unwrap_or_default(),
        ..HostChangesBench::default()
    };
    // The latency first (see the module's doc).
    b.latency = latency(store, dir.path(), p.changes)?;
    b.workload = workload(store, dir.path(), p)?;
    eprintln!("fvm-bench: host changes: removing the host files");
    let t = Instant::now();
    let trees = dir.path().join("trees");
    if trees.exists() {
        remove_subdirs(&trees)?;
    }
    let shown = dir.path().display().to_string();
    dir.close().with_context(|| format!("removing {shown}"))?;
    b.cleanup_s = t.elapsed().as_secs_f64();
    wait_for_watcher(store, false).context("after the host-changes benchmark")?;
    b.took_s = began.elapsed().as_secs_f64();
    Ok(b)
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `fvm-bench watch-file`: re-read `file` every `every`, and print its content
/// and the time (ns since the epoch) whenever it differs from the last read,
/// until it reads [`LAST`].
pub fn watch_file(file: &Path, every: Duration, max: Duration) -> Result<()> {
    watch(file, every, max, &mut std::io::stdout().lock())
}

fn watch(file: &Path, every: Duration, max: Duration, out: &mut impl std::io::Write) -> Result<()> {
    let deadline = Instant::now() + max;
    let mut last: Option<Vec<u8>> = None;
    loop {
        // A fresh lookup by path each time, as a program re-reading a config does.
        if let Ok(content) = fs::read(file)
            && last.as_ref() != Some(&content)
        {
            let at = unix_nanos();
            let text = String::from_utf8_lossy(&content);
            let text = text.trim();
            writeln!(out, "{text} {at}").context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
            if text == LAST {
                return Ok(());
            }
            last = Some(content);
        }
        if Instant::now() >= deadline {
            bail!("{} did not read {LAST:?} within {max:?}", file.display());
        }
        std::thread::sleep(every);
    }
}

/// A reader (`fvm-bench watch-file`, perhaps through `fvm run`) whose lines are
/// collected by a thread; killed if dropped before [`Reader::finish`].
#[derive(Debug)]
struct Reader {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    got: Vec<String>,
    shown: String,
}

impl Reader {
    fn spawn(cmd: &mut Command) -> Result<Reader> {
        let shown = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {shown}"))?;
        let out = child.stdout.take().context("the reader's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Reader {
            child: Some(child),
            lines: rx,
            got: Vec::new(),
            shown,
        })
    }

    /// Its first line: the file's content when it started.
    fn first(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.got.push(line.clone());
                Ok(line)
            }
            Err(_) => bail!("{} printed nothing within {timeout:?}", self.shown),
        }
    }

    /// Every line it printed, and whether it read [`LAST`] within `timeout`
    /// (and exited). One that didn't is killed; one that failed is an error.
    fn finish(mut self, timeout: Duration) -> Result<(Vec<String>, bool)> {
        let deadline = Instant::now() + timeout;
        let mut eof = false;
        while !eof {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.got.push(line),
                Err(RecvTimeoutError::Disconnected) => eof = true,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        let mut child = self.child.take().context("reader already finished")?;
        if !eof {
            let _ = child.kill();
        }
        let status = child
            .wait()
            .with_context(|| format!("waiting for {}", self.shown))?;
        while let Ok(line) = self.lines.try_recv() {
            self.got.push(line);
        }
        let ended = self
            .got
            .last()
            .is_some_and(|l| l.split_whitespace().next() == Some(LAST));
        if eof && !status.success() {
            bail!("{} exited with {status}", self.shown);
        }
        Ok((std::mem::take(&mut self.got), ended))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Write `value` to `tmp` and rename it over `file`; the time just before the rename.
fn replace(file: &Path, tmp: &Path, value: &str) -> Result<u128> {
    fs::write(tmp, format!("{value}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    let at = unix_nanos();
    fs::rename(tmp, file).with_context(|| format!("renaming over {}", file.display()))?;
    Ok(at)
}

/// Per change (the value `i + 1` written at `written[i]`), ms until the first of
/// a reader's lines ("VALUE NANOS") with its value.
pub fn latencies(written: &[u128], lines: &[String]) -> Vec<Option<f64>> {
    let mut first: HashMap<usize, u128> = HashMap::new();
    for line in lines {
        let mut words = line.split_whitespace();
        let value = words.next().and_then(|v| v.parse::<usize>().ok());
        let at = words.next().and_then(|t| t.parse::<u128>().ok());
        if let (Some(value), Some(at)) = (value, at) {
            first.entry(value).or_insert(at);
        }
    }
    written
        .iter()
        .enumerate()
        .map(|(i, w)| first.get(&(i + 1)).map(|at| (*at as f64 - *w as f64) / 1e6))
        .collect()
}

fn latency(store: &Store, dir: &Path, changes: usize) -> Result<Latency> {
    let lat = dir.join("lat");
    fs::create_dir(&lat).with_context(|| format!("creating {}", lat.display()))?;
    let (file, tmp) = (lat.join("value"), lat.join("value.tmp"));
    fs::write(&file, "0\n").with_context(|| format!("writing {}", file.display()))?;
    store.create(READER_VM)?;
    store.start(READER_VM)?;
    let exe = std::env::current_exe().context("locating fvm-bench")?;
    // Long enough for every change, and then some; the reader exits earlier.
    let max_secs = (changes as u64 * GAP_US.1).div_ceil(1_000_000) + 300;
    let mut in_vm = store.fvm();
    in_vm
        .args(["run", READER_VM, "--"])
        .arg(&exe)
        .args(reader_args(&file, max_secs));
    let mut on_host = Command::new(&exe);
    on_host.args(reader_args(&file, max_secs));
    let mut vm_reader = Reader::spawn(&mut in_vm)?;
    let mut host_reader = Reader::spawn(&mut on_host)?;
    for (who, r) in [("VM", &mut vm_reader), ("host", &mut host_reader)] {
        let first = r.first(Duration::from_secs(30))?;
        if first.split_whitespace().next() != Some("0") {
            bail!("the {who}'s reader first read {first:?}, not the initial value 0");
        }
    }
    // Past the watcher's invalidation for the newly started VM.
    std::thread::sleep(Duration::from_millis(500));
    eprintln!(
        "fvm-bench: host changes: {changes} changes, {}-{} ms apart",
        GAP_US.0 / 1000,
        GAP_US.1 / 1000
    );
    let mut rng = SplitMix64::from_clock();
    let mut written = Vec::with_capacity(changes);
    let mut next = Instant::now();
    let every = (changes / 10).max(1);
    let (mut foreign, mut checks) = (0, 0);
    for i in 1..=changes {
        next += Duration::from_micros(GAP_US.0 + rng.next() % (GAP_US.1 - GAP_US.0 + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        written.push(replace(&file, &tmp, &i.to_string())?);
        if i % 10 == 1 {
            checks += 1;
            foreign += usize::from(other_watchers(watcher_pid(store)) > 0);
        }
        if i % every == 0 {
            eprintln!("fvm-bench: host changes: {i}/{changes}");
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    replace(&file, &tmp, LAST)?;
    let (vm_lines, vm_ended) = vm_reader.finish(LAST_WAIT)?;
    let (host_lines, host_ended) = host_reader.finish(LAST_WAIT)?;
    store.stop(READER_VM)?;
    store.delete(READER_VM)?;
    Ok(Latency {
        vm: latencies(&written, &vm_lines),
        host: latencies(&written, &host_lines),
        vm_ended,
        host_ended,
        foreign,
        checks,
    })
}

/// The arguments of a reader of `file` (after the program).
fn reader_args(file: &Path, max_secs: u64) -> Vec<PathBuf> {
    [
        "watch-file",
        "--every-us",
        &READ_EVERY_US.to_string(),
        "--max-secs",
        &max_secs.to_string(),
        "--file",
    ]
    .iter()
    .map(PathBuf::from)
    .chain([file.to_path_buf()])
    .collect()
}

/// The tree the workload untars: paths relative to `base`.
#[derive(Debug, Default)]
struct Tree {
    paths: Vec<PathBuf>,
    files: usize,
    bytes: u64,
}

/// Directories, symlinks and regular files of at most [`TREE_FILE_MAX`] under
/// each of `roots` (relative to `base`) in turn, in path order (bytewise), until
/// the files hold `want` bytes.
fn pick_tree(base: &Path, roots: &[&str], want: u64) -> Tree {
    let mut t = Tree::default();
    walk_sorted(base, roots, |rel, meta| {
        let kind = meta.file_type();
        if kind.is_dir() || kind.is_symlink() {
            t.paths.push(rel);
        } else if kind.is_file() && meta.len() <= TREE_FILE_MAX {
            t.paths.push(rel);
            t.files += 1;
            t.bytes += meta.len();
        }
        t.bytes < want
    });
    t
}

/// Every entry under each of `roots` (relative to `base`) in turn, in path order
/// (bytewise), without following symlinks: `visit` gets its path relative to
/// `base` and its metadata, and returns whether to go on. Unreadable entries are
/// skipped.
pub fn walk_sorted(
    base: &Path,
    roots: &[&str],
    mut visit: impl FnMut(PathBuf, &fs::Metadata) -> bool,
) {
    for root in roots {
        let mut stack = vec![PathBuf::from(root)];
        while let Some(rel) = stack.pop() {
            let path = base.join(&rel);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir()
                && let Ok(entries) = fs::read_dir(&path)
            {
                let mut names: Vec<OsString> =
                    entries.filter_map(|e| Some(e.ok()?.file_name())).collect();
                names.sort();
                stack.extend(names.into_iter().rev().map(|n| rel.join(n)));
            }
            if !visit(rel, &meta) {
                return;
            }
        }
    }
}

/// A tarball of small files copied from /usr/share (then /usr/lib), in `dir`.
pub struct Tarball {
    pub path: PathBuf,
    /// Directories, symlinks and files in it.
    pub entries: usize,
    pub files: usize,
    /// Bytes of file content, and of the tarball.
    pub file_bytes: u64,
    pub tar_bytes: u64,
}

/// Write `dir/tree.tar`: a tree of files of at most [`TREE_FILE_MAX`] bytes, holding
/// `mib` MiB, picked from /usr/share and then /usr/lib in path order.
pub fn make_tarball(dir: &Path, mib: usize) -> Result<Tarball> {
    let tree = pick_tree(Path::new("/usr"), &["share", "lib"], mib as u64 * (1 << 20));
    if tree.files == 0 {
        bail!("found no files of at most {TREE_FILE_MAX} bytes under /usr/share or /usr/lib");
    }
    let list = dir.join("tree.list");
    let mut names = Vec::new();
    for path in &tree.paths {
        names.extend_from_slice(path.as_os_str().as_bytes());
        names.push(0);
    }
    fs::write(&list, names).with_context(|| format!("writing {}", list.display()))?;
    let tar = dir.join("tree.tar");
    check_output(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .args(["--null", "--no-recursion", "-C", "/usr", "-T"])
            .arg(&list),
    )?;
    Ok(Tarball {
        tar_bytes: fs::metadata(&tar)?.len(),
        path: tar,
        entries: tree.paths.len(),
        files: tree.files,
        file_bytes: tree.bytes,
    })
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

fn workload(store: &Store, dir: &Path, p: &Params) -> Result<Workload> {
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

/// The pid of the store's watcher, if it runs: `STORE/watch.pid`, checked
/// against the process's name.
fn watcher_pid(store: &Store) -> Option<u32> {
    let pid: u32 = fs::read_to_string(store.root().join("watch.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_watcher(pid).then_some(pid)
}

fn is_watcher(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "fvm-watch")
}

/// Wait until the store's watcher runs (`running`) or is gone.
fn wait_for_watcher(store: &Store, running: bool) -> Result<()> {
    let deadline = Instant::now() + WATCHER_WAIT;
    while watcher_pid(store).is_some() != running {
        if Instant::now() >= deadline {
            if running {
                bail!(
                    "no fvm-watch for the store {WATCHER_WAIT:?} after its VMs started \
                     (STORE/watch.pid names none)"
                );
            }
            bail!("the store's fvm-watch still runs {WATCHER_WAIT:?} after its last VM stopped");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// `fvm-watch` processes other than `ours`: other stores' watchers.
fn other_watchers(ours: Option<u32>) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != ours && is_watcher(*pid))
        .count()
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    stat_ticks(&format!("/proc/{pid}/stat"), UTIME)
}

/// User + system CPU time of this process's waited-for children, in clock ticks.
fn children_cpu_ticks() -> Result<u64> {
    stat_ticks("/proc/self/stat", CUTIME)
}

/// Fields of `/proc/PID/stat` (numbered from 1, as in proc(5)): utime (then
/// stime), cutime (then cstime).
const UTIME: usize = 14;
const CUTIME: usize = 16;

fn stat_ticks(path: &str, field: usize) -> Result<u64> {
    let stat = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse_ticks(&stat, field).with_context(|| format!("parsing {path}"))
}

/// Field `field` plus the next one of a `/proc/PID/stat` line.
fn parse_ticks(stat: &str, field: usize) -> Option<u64> {
    // The name (field 2) is in parentheses and may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3, the state.
    let at = field.checked_sub(3)?;
    Some(fields.get(at)?.parse::<u64>().ok()? + fields.get(at + 1)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if that fails.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Remove every subdirectory of `dir` (the untarred trees), in parallel: each
/// `rm -rf` of a tree mostly waits for the disk.
fn remove_subdirs(dir: &Path) -> Result<()> {
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

/// Median, p90, p99 and max of the values read, and how many were never read.
fn latency_stats(v: &[Option<f64>]) -> Option<([f64; 4], usize)> {
    let mut read: Vec<f64> = v.iter().flatten().copied().collect();
    read.sort_by(f64::total_cmp);
    let missed = v.len() - read.len();
    Some((
        [
            percentile(&read, 50.0)?,
            percentile(&read, 90.0)?,
            percentile(&read, 99.0)?,
            *read.last()?,
        ],
        missed,
    ))
}

/// The section, markers included.
pub fn render(
    b: &HostChangesBench,
    invocation: &str,
    date: &str,
    kernel: &str,
    store: &str,
) -> String {
    let mut s = String::new();
    let (l, w) = (&b.latency, &b.workload);
    let _ = writeln!(s, "{BEGIN}\n## Host changes\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- CPUs: {}\n- store: {store}\n\
         - host files: HOSTDIR, a temporary directory under {HOST_PARENT} ({}) made for \
         this section, outside the store, so the VMs see it as the host's; removed at \
         the end ({:.0} s)\n\
         - VMs made by `fvm --root DIR create VM` (host network); afterwards every VM was \
         deleted and the store's watcher was gone (checked)\n\
         - measuring this section took {:.0} s\n",
        b.cpus, b.host_fs, b.cleanup_s, b.took_s
    );

    let _ = writeln!(
        s,
        "Latency: {} changes of one host file, `HOSTDIR/lat/value`, each a new file written \
         and renamed over it (as dpkg replaces files), {}–{} ms apart at random, so that \
         they meet the watcher's schedule at random points. Two readers re-read the file \
         every {} ms, by path, and print each new value with the time they read it: one in \
         a running VM (`fvm-bench watch-file`, the benchmark's own binary, run inside the \
         VM by its host path), one on the host, which shows what the readers themselves \
         add. Latency is from just before the change's rename to the reader's first read \
         of the new value (CLOCK_REALTIME on both sides, one kernel); a value never read is \
         one the reader still didn't see when the next change replaced it. \
         (`bench/run --host-changes-only` makes 1000 changes, the full `bench/run` 300, to \
         keep its time down, `--quick` 50.)\n",
        b.changes,
        GAP_US.0 / 1000,
        GAP_US.1 / 1000,
        READ_EVERY_US as f64 / 1000.0
    );
    let mut table = Table::new(&[
        ("reader", L),
        ("command", L),
        ("changes", R),
        ("read", R),
        ("never read", R),
        ("median ms", R),
        ("p90 ms", R),
        ("p99 ms", R),
        ("max ms", R),
    ]);
    let args =
        format!("watch-file --every-us {READ_EVERY_US} --max-secs N --file HOSTDIR/lat/value");
    for (who, shown, v) in [
        (
            "in a running VM",
            format!("fvm --root DIR run VM -- fvm-bench {args}"),
            &l.vm,
        ),
        ("on the host", format!("fvm-bench {args}"), &l.host),
    ] {
        let (read, missed, figures) = match latency_stats(v) {
            Some((figures, missed)) => (
                v.len() - missed,
                missed,
                figures.map(|ms| format!("{ms:.1}")),
            ),
            None => (0, v.len(), ["–"; 4].map(str::to_owned)),
        };
        table.row(
            [
                who.to_owned(),
                code(&shown),
                v.len().to_string(),
                read.to_string(),
                missed.to_string(),
            ]
            .into_iter()
            .chain(figures),
        );
    }
    s.push_str(&table.render());
    if l.foreign > 0 {
        let _ = writeln!(
            s,
            "\nOther stores' watchers (other fvm users of this machine) ran during the \
             changes ({} of {} checks, one every 10 changes, found one); their work \
             shares the CPUs with this section's watcher and readers.",
            l.foreign, l.checks
        );
    }
    for (who, ended) in [("VM's", l.vm_ended), ("host's", l.host_ended)] {
        if !ended {
            let _ = writeln!(
                s,
                "\nThe {who} reader had not read the last change {} s after it, and was killed.",
                LAST_WAIT.as_secs()
            );
        }
    }

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
    let x = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}x"));
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
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_take_each_values_first_read() {
        let written = [1_000_000_000u128, 2_000_000_000, 3_000_000_000];
        let lines: Vec<String> = [
            "0 999000000",
            "1 1050000000",
            "1 1060000000",
            "3 3100000000",
            "garbage",
            "stop 4000000000",
        ]
        .iter()
        .map(|l| (*l).to_owned())
        .collect();
        let got = latencies(&written, &lines);
        assert_eq!(got.len(), 3);
        assert!((got[0].unwrap() - 50.0).abs() < 1e-9, "{got:?}");
        assert_eq!(got[1], None);
        assert!((got[2].unwrap() - 100.0).abs() < 1e-9, "{got:?}");
        let ([median, _, p99, max], missed) = latency_stats(&got).unwrap();
        assert_eq!((median, p99, max, missed), (50.0, 100.0, 100.0, 1));
        assert!(latency_stats(&[None]).is_none());
    }

    #[test]
    fn cpu_ticks_come_from_the_numbered_fields() {
        let stat = "4242 (fvm (watch) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 17 5 3 4 20 0 1 0";
        assert_eq!(parse_ticks(stat, UTIME), Some(22));
        assert_eq!(parse_ticks(stat, CUTIME), Some(7));
        assert_eq!(parse_ticks("1 (x) S 1", UTIME), None);
    }

    #[test]
    fn the_tree_takes_small_files_in_path_order_up_to_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("share");
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("a"), vec![0u8; 100]).unwrap();
        fs::write(root.join("b/big"), vec![0u8; TREE_FILE_MAX as usize + 1]).unwrap();
        fs::write(root.join("b/c/d"), vec![0u8; 100]).unwrap();
        fs::write(root.join("e"), vec![0u8; 100]).unwrap();
        std::os::unix::fs::symlink("a", root.join("b/link")).unwrap();
        let t = pick_tree(dir.path(), &["share", "missing"], 200);
        let names: Vec<String> = t.paths.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            ["share", "share/a", "share/b", "share/b/c", "share/b/c/d"]
        );
        assert_eq!((t.files, t.bytes), (2, 200));
        let all = pick_tree(dir.path(), &["share"], u64::MAX);
        assert_eq!(all.files, 3);
        assert!(all.paths.iter().any(|p| p.ends_with("link")));
    }

    #[test]
    fn watching_prints_each_change_until_the_last_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("value");
        let tmp = dir.path().join("value.tmp");
        fs::write(&file, "0\n").unwrap();
        let watched = file.clone();
        let watcher = std::thread::spawn(move || {
            let mut out = Vec::new();
            watch(
                &watched,
                Duration::from_millis(1),
                Duration::from_secs(30),
                &mut out,
            )
            .map(|()| String::from_utf8(out).unwrap())
        });
        std::thread::sleep(Duration::from_millis(50));
        let w1 = replace(&file, &tmp, "1").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        replace(&file, &tmp, LAST).unwrap();
        let out = watcher.join().unwrap().unwrap();
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("0 ") && lines[2].starts_with("stop "),
            "{out}"
        );
        let got = latencies(&[w1], &lines);
        assert!(
            got[0].is_some_and(|ms| (0.0..50.0).contains(&ms)),
            "{got:?}"
        );
        // The file holds the last value already: read at once, before any deadline.
        let again = watch(
            &file,
            Duration::from_millis(1),
            Duration::ZERO,
            &mut Vec::new(),
        );
        assert!(again.is_ok(), "{again:?}");
        fs::write(&file, "1\n").unwrap();
        let late = watch(
            &file,
            Duration::from_millis(1),
            Duration::ZERO,
            &mut Vec::new(),
        );
        assert!(late.is_err());
    }

    #[test]
    fn a_reader_that_never_reads_the_last_value_is_killed() {
        let mut done = Command::new("/bin/sh");
        done.args(["-c", "echo 0 1; echo 1 2; echo stop 3"]);
        let mut r = Reader::spawn(&mut done).unwrap();
        assert_eq!(r.first(Duration::from_secs(10)).unwrap(), "0 1");
        let (lines, ended) = r.finish(Duration::from_secs(10)).unwrap();
        assert_eq!((lines.len(), ended), (3, true), "{lines:?}");

        let mut stuck = Command::new("/bin/sh");
        stuck.args(["-c", "echo 0 1; exec sleep 30"]);
        let r = Reader::spawn(&mut stuck).unwrap();
        let t = Instant::now();
        let (lines, ended) = r.finish(Duration::from_millis(200)).unwrap();
        assert_eq!((lines.len(), ended), (1, false), "{lines:?}");
        assert!(t.elapsed() < Duration::from_secs(10));

        let mut failing = Command::new("/bin/sh");
        failing.args(["-c", "echo 0 1; exit 2"]);
        let r = Reader::spawn(&mut failing).unwrap();
        assert!(r.finish(Duration::from_secs(10)).is_err());
    }

    #[test]
    fn renders_both_tables_and_the_verdict() {
        let runs = |idle: f64, loaded: f64| Runs {
            idle: vec![idle; 3],
            loaded: vec![loaded; 3],
        };
        let b = HostChangesBench {
            cpus: 2,
            changes: 4,
            latency: Latency {
                vm: vec![Some(50.0), Some(60.0), None, Some(150.0)],
                host: vec![Some(0.5); 4],
                vm_ended: false,
                host_ended: true,
                foreign: 2,
                checks: 100,
            },
            workload: Workload {
                rounds: 3,
                vms: 50,
                entries: 10,
                files: 8,
                file_bytes: 100 << 20,
                tar_bytes: 130 << 20,
                topdir: true,
                find: runs(0.25, 0.25),
                untar: runs(1.75, 1.85),
                cpu: runs(1.0, 1.04),
                watcher_cpu: vec![0.1; 3],
                start_s: vec![1.0; 2],
                stop_s: vec![0.5; 2],
                foreign: 1,
                runs: 6,
            },
            host_fs: "ext4".into(),
            cleanup_s: 12.0,
            took_s: 100.0,
        };
        let md = render(&b, "bench/run --host-changes-only", "d", "k", "s");
        assert_eq!(
            md,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/snapshots/host-changes.md"
            ))
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        for want in [
            "Produced by `bench/run --host-changes-only`.",
            "| in a running VM | `fvm --root DIR run VM -- fvm-bench watch-file --every-us 1000 --max-secs N --file HOSTDIR/lat/value` | 4 | 3 | 1 | 60.0 | 150.0 | 150.0 | 150.0 |",
            "| on the host | `fvm-bench watch-file",
            "The VM's reader had not read the last change 10 s after it",
            "| untar | `tar -xf TREE.tar -C HOSTDIR/trees/x-N` | 50 | 1.850 | 1.850 | 1.850 | 1.06× |",
            "| find + untar | `both, one after the other` | 0 | 2.000 |",
            "find + untar 1.05x (1.05, 1.05, 1.05), target < 1.05x: missed; find 1.00x",
            "| CPU time of find + untar | `both, one after the other` | 50 | 1.040 |",
            "CPU time of both 1.04x (1.04, 1.04, 1.04).",
            "a median of 100 ms of CPU per run with the VMs",
            "4.8 % of the run's wall time",
            "took a median of 1.00 s per switch (2 switches), stopping them 0.50 s (2)",
            "ran during 1 of the 6 timed runs",
            "ran during the changes (2 of 100 checks,",
            "measuring this section took 100 s",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        assert!(!md.contains("The host's reader had not"), "{md}");
    }
}

//! The "Scale: 1,000 bridged VMs" section of docs/BENCHMARKS.md: does a store with
//! a thousand bridged VMs running start one more as fast as an empty store does?
//!
//! The store gets a bridge of its own and a subnet no route of the host overlaps,
//! big enough for N VMs (default 1000). N VMs are created `--net bridge`, then:
//!
//! 1. started one after another: `fvm start VM` timed, then `fvm run -d VM --
//!    fvm-bench serve …` (the benchmark's own binary by its host path; a server
//!    that answers every connection with a line naming the VM) timed apart;
//! 2. every VM's server is asked from the host, at the VM's own bridge address;
//! 3. all stopped (8 parallel stoppers), then started again by 8 parallel
//!    starters (threads, each taking the next VM), each start followed by its
//!    `fvm run -d` of the server, and every VM asked again;
//! 4. all stopped (8 parallel stoppers) and deleted (8 parallel deleters).
//!
//! Starts are reported by how many were started before them (buckets of 10), so
//! the last bucket's median over the first's shows what a full store costs a
//! start. Host memory per VM is the change of MemAvailable and Slab over the
//! sequential phase, read as the density section does. Limits of the host that
//! N VMs meet are read (and the benchmark's own open-file limit raised to its
//! hard limit when short); every VM, veth, cgroup, nft table and the bridge are
//! removed at the end, also on failure, and their absence is checked.
//!
//! Not part of a full run (on a store whose firewall is rebuilt whole at every
//! start and stop it takes many minutes): only with `--scale-only`.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::density::{leftover_cgroups, leftover_inits, meminfo_kib, settled_meminfo};
use crate::measure::{Stats, check_output, describe};
use crate::network::{self, choose_subnet, free_bridge_name, nft_table_exists};
use crate::store::{Store, Sweep, Swept};
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, code, factor};

pub const BEGIN: &str = "<!-- bench:scale:begin -->";
pub const END: &str = "<!-- bench:scale:end -->";

/// The prefix of the benchmark's VMs.
const PREFIX: &str = "scale";
/// The port each VM's server listens on, in its own network namespace.
const PORT: u16 = 7077;
/// Parallel starters (and stoppers, deleters) of the parallel phase.
const WORKERS: usize = 8;
/// Parallel askers when every VM's server is asked.
const ASKERS: usize = 16;
/// Tries per VM when asking, this far apart (a detached server may not listen yet).
const TRIES: usize = 3;
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Connect and read timeout of one ask.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// The target: the last bucket's median start within 10% of the first's, at
/// this many VMs.
const TARGET_RATIO: f64 = 1.10;
const TARGET_VMS: usize = 1000;
/// Ports a Linux bridge takes.
const BRIDGE_PORTS: usize = 1024;
/// VMs per bucket.
const BUCKET: usize = 10;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    pub vms: usize,
    /// The bridge's subnet; by default the first free 10.231.x.0 network that
    /// holds them.
    pub subnet: Option<String>,
}

/// One start phase: every VM started, and its server.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Seconds from the first start to the last `run -d` done.
    pub wall_s: f64,
    /// ms of each `fvm start`, in the order the starts were taken.
    pub start_ms: Vec<f64>,
    /// ms of each `fvm run -d` of the server, in the same order.
    pub serve_ms: Vec<f64>,
    /// VMs whose server answered with the right line, and how many of them only
    /// at a later try.
    pub answered: usize,
    pub late: usize,
    /// Times the kernel's IPv4 neighbour table was full while asking.
    pub table_fulls: Option<u64>,
}

/// A limit of the host or of the benchmark's process that N VMs meet.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub name: String,
    pub value: String,
    /// What N VMs need, in words.
    pub need: String,
    /// Whether the value is enough, where that can be told.
    pub enough: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct ScaleBench {
    pub bridge: String,
    pub subnet: String,
    pub cpus: usize,
    pub mem_total_kib: u64,
    pub vms: usize,
    pub create_s: f64,
    pub sequential: Phase,
    pub parallel: Phase,
    /// KiB of MemAvailable and Slab before the first start and after the last
    /// of the sequential phase.
    pub avail_kib: (u64, u64),
    pub slab_kib: (u64, u64),
    /// Host veths of the store's VMs seen after the sequential phase.
    pub veths: usize,
    /// Bytes the VMs' memory cgroups were charged after the sequential phase,
    /// and over how many cgroups.
    pub charged: Option<(u64, usize)>,
    /// Seconds to stop all between the phases, to stop all at the end, to delete all.
    pub restop_s: f64,
    pub stop_s: f64,
    pub delete_s: f64,
    pub limits: Vec<Limit>,
    /// The host's neighbour-table thresholds (gc_thresh2, gc_thresh3) before
    /// and during the run, when they were raised for it.
    pub neighbours_raised: Option<((u64, u64), (u64, u64))>,
    /// Wall time of the whole section, cleanup included.
    pub took_s: f64,
}

impl ScaleBench {
    fn avail_per_vm_kib(&self) -> f64 {
        (self.avail_kib.0 as f64 - self.avail_kib.1 as f64) / self.vms.max(1) as f64
    }

    fn slab_per_vm_kib(&self) -> f64 {
        (self.slab_kib.1 as f64 - self.slab_kib.0 as f64) / self.vms.max(1) as f64
    }
}

/// `fvm-bench serve --listen ADDR --line TEXT`: answer every connection with TEXT
/// and a newline, one connection at a time, until killed. One thread, no buffers:
/// it runs in every VM of the scale benchmark.
pub fn serve(listen: &str, line: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let answer = format!("{line}\n");
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_write_timeout(Some(ASK_TIMEOUT));
                let _ = conn.write_all(answer.as_bytes());
            }
            // Out of descriptors or memory for a moment: don't spin.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The buckets of starts reported, 1-based and inclusive: the first 10, the 10
/// ending at N/10, at N/2 and at N (e.g. 1-10, 91-100, 491-500, 991-1000),
/// without repeats.
pub fn buckets(n: usize) -> Vec<(usize, usize)> {
    if n == 0 {
        return Vec::new();
    }
    let size = BUCKET.min(n);
    let mut v: Vec<(usize, usize)> = Vec::new();
    for end in [size, n / 10, n / 2, n] {
        let end = end.clamp(size, n);
        let b = (end + 1 - size, end);
        if !v.contains(&b) {
            v.push(b);
        }
    }
    v
}

/// The median of samples `from..=to` (1-based) of `v`.
pub fn bucket_median(v: &[f64], (from, to): (usize, usize)) -> Option<f64> {
    let to = to.min(v.len());
    if from == 0 || from > to {
        return None;
    }
    Stats::of(&v[from - 1..to]).map(|s| s.median)
}

/// The last bucket's median over the first's.
pub fn growth(v: &[f64]) -> Option<f64> {
    let b = buckets(v.len());
    let first = bucket_median(v, *b.first()?)?;
    let last = bucket_median(v, *b.last()?)?;
    (first > 0.0).then(|| last / first)
}

/// The VMs' names.
fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{PREFIX}-{i:04}")).collect()
}

/// The line VM `name`'s server answers with.
fn line_of(name: &str) -> String {
    format!("fvm-bench serve {name}")
}

/// What runs the benchmark's commands from several threads: the store's binary
/// and root (the store itself is not shared between threads).
#[derive(Debug, Clone)]
struct Fvm {
    bin: PathBuf,
    root: PathBuf,
}

impl Fvm {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd
    }
}

/// Wall ms of `cmd`, run to its exit; its stderr is the error if it fails.
fn timed_ms(cmd: &mut Command) -> Result<f64> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("spawning {}", describe(cmd)))?;
    let took = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// Runs `job(i)` for i in 0..n on `workers` threads, each taking the next i;
/// the results in order of i. The first error stops the others from taking more.
fn in_parallel<T: Send>(
    n: usize,
    workers: usize,
    job: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.min(n) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = job(i);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(n);
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(r) => out.push(r?),
            None => bail!("item {i} was not run: an earlier one failed"),
        }
    }
    Ok(out)
}

/// Asks every VM's server (at most [`TRIES`] times each): how many answered with
/// their line, and how many of those only at a later try.
fn ask_all(vms: &[(Ipv4Addr, String)]) -> (usize, usize) {
    let tries: Vec<Option<usize>> = in_parallel(vms.len(), ASKERS, |i| {
        let (ip, line) = &vms[i];
        for t in 0..TRIES {
            if t > 0 {
                std::thread::sleep(RETRY_AFTER);
            }
            if ask(SocketAddr::from((*ip, PORT))).is_ok_and(|got| got == *line) {
                return Ok(Some(t));
            }
        }
        Ok(None)
    })
    .unwrap_or_default();
    let answered = tries.iter().flatten().count();
    let late = tries.iter().flatten().filter(|t| **t > 0).count();
    (answered, late)
}

/// How many times the kernel found its IPv4 neighbour table full so far.
fn table_fulls() -> Option<u64> {
    parse_table_fulls(&fs::read_to_string("/proc/net/stat/arp_cache").ok()?)
}

/// The `table_fulls` column of /proc/net/stat/arp_cache (a header line, then a
/// line of hex counters per CPU), summed.
pub fn parse_table_fulls(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    let col = lines
        .next()?
        .split_whitespace()
        .position(|c| c == "table_fulls")?;
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| u64::from_str_radix(l.split_whitespace().nth(col)?, 16).ok())
        .sum()
}

/// The line a server at `addr` answers with.
fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let conn = TcpStream::connect_timeout(&addr, ASK_TIMEOUT)?;
    conn.set_read_timeout(Some(ASK_TIMEOUT))?;
    // At most 256 bytes: the server is the VM's, so hostile.
    let mut line = String::new();
    BufReader::new(conn).take(256).read_line(&mut line)?;
    Ok(line.trim_end_matches('\n').to_owned())
}

/// Host veths of the store's VMs that exist now.
fn veths_present(store_id: &str, names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| {
            Path::new("/sys/class/net")
                .join(veth_name(store_id, n))
                .exists()
        })
        .count()
}

/// The host-side veth of VM `name` of store `store_id`: the engine names it.
pub use fvm_engine::net::veth_name;

/// What the store's VMs' memory cgroups are charged, summed, and how many there
/// are: `memory.usage_in_bytes` (cgroup v1), else `memory.current` (v2).
fn charged(store_id: &str) -> Option<(u64, usize)> {
    let dirs = leftover_cgroups(store_id);
    ["memory.usage_in_bytes", "memory.current"]
        .into_iter()
        .map(|file| {
            let values: Vec<u64> = dirs
                .iter()
                .filter_map(|d| fs::read_to_string(Path::new(d).join(file)).ok())
                .filter_map(|v| v.trim().parse().ok())
                .collect();
            (values.iter().sum(), values.len())
        })
        .find(|(_, n)| *n > 0)
}

/// Soft and hard RLIMIT_NOFILE of a process, from its /proc/PID/limits text.
pub fn nofile(limits: &str) -> Option<(String, String)> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    let mut w = rest.split_whitespace();
    Some((w.next()?.to_owned(), w.next()?.to_owned()))
}

fn sysctl(path: &str) -> Option<u64> {
    fs::read_to_string(Path::new("/proc/sys").join(path))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads the limits N VMs meet; raises this process's soft open-file limit to its
/// hard one when it is short (fvm and its watcher, which holds a pidfd per
/// running VM, inherit it).
fn limits(n: usize) -> Result<Vec<Limit>> {
    let mut v = Vec::new();
    let files_need = n as u64 + 256;
    let read = || -> Result<(String, String)> {
        nofile(&fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?)
            .context("no \"Max open files\" in /proc/self/limits")
    };
    let (soft, hard) = read()?;
    let short = |s: &str| s != "unlimited" && s.parse::<u64>().is_ok_and(|s| s < files_need);
    let mut raised = None;
    if short(&soft) && soft != hard {
        let pid = std::process::id().to_string();
        check_output(Command::new("prlimit").args([
            "--pid",
            &pid,
            &format!("--nofile={hard}:{hard}"),
        ]))
        .context("raising fvm-bench's own open-file limit with prlimit")?;
        raised = Some(soft.clone());
    }
    let (soft, hard) = read()?;
    v.push(Limit {
        name: "open files of fvm-bench (`RLIMIT_NOFILE`, soft/hard), which fvm and the \
               store's watcher inherit"
            .into(),
        value: match raised {
            Some(was) => format!("{soft}/{hard} (raised from {was} for this run)"),
            None => format!("{soft}/{hard}"),
        },
        need: format!("{files_need}: the watcher holds a pidfd per running VM"),
        enough: Some(!short(&soft)),
    });
    let procs = 3 * n as u64 + 1000;
    for (key, need, what) in [
        (
            "kernel/pid_max",
            procs,
            "3 processes a VM (init, starter, server) and the host's",
        ),
        ("kernel/threads-max", procs, "the same"),
        (
            "user/max_net_namespaces",
            n as u64 + 16,
            "a network namespace a VM",
        ),
        (
            "user/max_mnt_namespaces",
            n as u64 + 16,
            "a mount namespace a VM",
        ),
        (
            "net/ipv4/neigh/default/gc_thresh3",
            2 * n as u64 + 16,
            "one IPv4 neighbour table serves every network namespace: the host's \
             entry for each VM it talks to, and each VM's for the host",
        ),
    ] {
        let value = sysctl(key);
        v.push(Limit {
            name: code(&key.replace('/', ".")),
            value: value.map_or("unreadable".into(), |x| x.to_string()),
            need: format!("{need}: {what}"),
            enough: value.map(|x| x >= need),
        });
    }
    for (key, what) in [
        (
            "fs/fanotify/max_user_groups",
            "the store's watcher: a group per host filesystem under the VMs' layers, \
             not per VM",
        ),
        (
            "fs/inotify/max_user_instances",
            "none per VM (only `fvm logs -f` uses inotify)",
        ),
        (
            "net/core/somaxconn",
            "each VM has its own (a network namespace each); a server here takes one \
             connection at a time",
        ),
    ] {
        v.push(Limit {
            name: code(&key.replace('/', ".")),
            value: sysctl(key).map_or("unreadable".into(), |x| x.to_string()),
            need: what.into(),
            enough: None,
        });
    }
    v.push(Limit {
        name: "ports of a Linux bridge".into(),
        value: BRIDGE_PORTS.to_string(),
        need: format!("{n}: a veth a VM"),
        enough: Some(n <= BRIDGE_PORTS),
    });
    Ok(v)
}

/// The host's IPv4 neighbour-table thresholds, raised for the run when N VMs
/// would overflow them (every VM answering needs two entries each), and put
/// back on drop.
struct NeighbourRoom {
    old: (u64, u64),
}

const GC_THRESH2: &str = "net/ipv4/neigh/default/gc_thresh2";
const GC_THRESH3: &str = "net/ipv4/neigh/default/gc_thresh3";

impl NeighbourRoom {
    /// `Ok(None)` when the host has room already.
    fn make(n: usize) -> Result<Option<(NeighbourRoom, (u64, u64))>> {
        let need = 2 * n as u64 + 16;
        let (Some(t2), Some(t3)) = (sysctl(GC_THRESH2), sysctl(GC_THRESH3)) else {
            return Ok(None);
        };
        if t3 >= need {
            return Ok(None);
        }
        let new = (t2.max(need), t3.max(2 * need));
        let room = NeighbourRoom { old: (t2, t3) };
        // thresh3 first, so thresh2 is never above it.
        write_sysctl(GC_THRESH3, new.1)?;
        write_sysctl(GC_THRESH2, new.0)?;
        Ok(Some((room, new)))
    }
}

impl Drop for NeighbourRoom {
    fn drop(&mut self) {
        for (key, value) in [(GC_THRESH2, self.old.0), (GC_THRESH3, self.old.1)] {
            if let Err(e) = write_sysctl(key, value) {
                eprintln!("fvm-bench: scale: cannot put {key} back to {value}: {e:#}");
            }
        }
    }
}

fn write_sysctl(key: &str, value: u64) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    fs::write(&path, value.to_string()).with_context(|| format!("writing {}", path.display()))
}

pub fn measure(store: &Store, p: &Params) -> Result<ScaleBench> {
    let began = Instant::now();
    let n = p.vms;
    if n == 0 || n > BRIDGE_PORTS {
        bail!(
            "--scale-vms {n}: give 1 to {BRIDGE_PORTS} (a Linux bridge takes {BRIDGE_PORTS} ports)"
        );
    }
    let limits = limits(n)?;
    for l in limits.iter().filter(|l| l.enough == Some(false)) {
        eprintln!(
            "fvm-bench: scale: {} is {}, {n} VMs need {}",
            l.name, l.value, l.need
        );
    }
    let room = NeighbourRoom::make(n)?;
    let neighbours_raised = room.as_ref().map(|(r, new)| (r.old, *new));
    if let Some((old, new)) = neighbours_raised {
        eprintln!(
            "fvm-bench: scale: neighbour table thresholds raised for the run from {}/{} to {}/{} (gc_thresh2/3)",
            old.0, old.1, new.0, new.1
        );
    }
    let meminfo = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let bridge = free_bridge_name()?;
    let subnet = choose_subnet(p.subnet.as_deref(), n + 2)?;
    eprintln!("fvm-bench: scale: {n} VMs, bridge {bridge}, subnet {subnet}");
    check_output(store.fvm().args([
        "network",
        "--bridge",
        &bridge,
        "--subnet",
        &subnet.to_string(),
    ]))?;
    let cleanup = Swept::new(Cleanup {
        store,
        bridge: bridge.clone(),
        table: format!("fvm-{}", store.id()),
        id: store.id(),
    });
    let mut b = ScaleBench {
        bridge,
        subnet: subnet.to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_kib: meminfo_kib(&meminfo, "MemTotal").context("MemTotal in /proc/meminfo")?,
        vms: n,
        limits,
        neighbours_raised,
        ..ScaleBench::default()
    };
    let names = names(n);
    let t = Instant::now();
    let mut targets = Vec::with_capacity(n);
    for (i, name) in names.iter().enumerate() {
        check_output(&mut network::create(store, name, true))
            .with_context(|| format!("creating {name}"))?;
        targets.push((network::vm_ip(store, name)?, line_of(name)));
        if (i + 1) % 100 == 0 {
            eprintln!(
                "fvm-bench: scale: created {}/{n} ({:.0} s in)",
                i + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }
    b.create_s = t.elapsed().as_secs_f64();
    let fvm = Fvm {
        bin: store.fvm_binary().to_path_buf(),
        root: store.root().to_path_buf(),
    };
    let exe = std::env::current_exe().context("locating fvm-bench")?;
    let exe = exe.to_str().context("fvm-bench's path is not UTF-8")?;
    let listen = format!("0.0.0.0:{PORT}");
    // Start VM i, then its server; ms of each.
    let start_one = |i: usize| -> Result<(f64, f64)> {
        let name = &names[i];
        let start =
            timed_ms(&mut fvm.cmd(&["start", name])).with_context(|| format!("starting {name}"))?;
        let line = line_of(name);
        let serve = timed_ms(&mut fvm.cmd(&[
            "run", "-d", name, "--", exe, "serve", "--listen", &listen, "--line", &line,
        ]))
        .with_context(|| format!("starting the server in {name}"))?;
        Ok((start, serve))
    };
    let stop_all = |what: &str| -> Result<f64> {
        let t = Instant::now();
        in_parallel(n, WORKERS, |i| {
            timed_ms(&mut fvm.cmd(&["stop", "-t", "2", &names[i]]))
                .with_context(|| format!("stopping {}", names[i]))
        })
        .with_context(|| format!("stopping every VM {what}"))?;
        Ok(t.elapsed().as_secs_f64())
    };

    let before = settled_meminfo()?;
    eprintln!("fvm-bench: scale: starting {n} VMs one after another");
    let t = Instant::now();
    for i in 0..n {
        let (start, serve) = start_one(i)?;
        b.sequential.start_ms.push(start);
        b.sequential.serve_ms.push(serve);
        if (i + 1) % 100 == 0 {
            eprintln!(
                "fvm-bench: scale: started {}/{n} ({:.0} s in)",
                i + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }
    b.sequential.wall_s = t.elapsed().as_secs_f64();
    let after = settled_meminfo()?;
    b.avail_kib = (before.0, after.0);
    b.slab_kib = (before.1, after.1);
    b.veths = veths_present(&store.id(), &names);
    b.charged = charged(&store.id());
    let fulls = table_fulls();
    (b.sequential.answered, b.sequential.late) = ask_all(&targets);
    b.sequential.table_fulls = fulls.zip(table_fulls()).map(|(a, z)| z.saturating_sub(a));
    eprintln!(
        "fvm-bench: scale: {}/{n} answered; stopping them all ({:.0} s in)",
        b.sequential.answered,
        began.elapsed().as_secs_f64()
    );
    b.restop_s = stop_all("between the phases")?;

    eprintln!(
        "fvm-bench: scale: starting {n} VMs with {WORKERS} parallel starters ({:.0} s in)",
        began.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let timings = in_parallel(n, WORKERS, start_one)?;
    b.parallel.wall_s = t.elapsed().as_secs_f64();
    (b.parallel.start_ms, b.parallel.serve_ms) = timings.into_iter().unzip();
    let fulls = table_fulls();
    (b.parallel.answered, b.parallel.late) = ask_all(&targets);
    b.parallel.table_fulls = fulls.zip(table_fulls()).map(|(a, z)| z.saturating_sub(a));
    eprintln!(
        "fvm-bench: scale: {}/{n} answered; stopping and deleting them all ({:.0} s in)",
        b.parallel.answered,
        began.elapsed().as_secs_f64()
    );
    b.stop_s = stop_all("at the end")?;
    let t = Instant::now();
    in_parallel(n, WORKERS, |i| {
        timed_ms(&mut fvm.cmd(&["delete", &names[i]]))
            .with_context(|| format!("deleting {}", names[i]))
    })?;
    b.delete_s = t.elapsed().as_secs_f64();
    cleanup.finish()?;
    b.took_s = began.elapsed().as_secs_f64();
    Ok(b)
}

/// Force-deletes the benchmark's VMs (when dropped on failure, or by `finish`),
/// then checks that no veth, cgroup or init of the store, no nft table of the
/// store and not the bridge is left (removing the bridge and tables, loudly).
#[derive(Debug)]
struct Cleanup<'a> {
    store: &'a Store,
    bridge: String,
    table: String,
    id: String,
}

impl Sweep for Cleanup<'_> {
    fn sweep(&self) -> Vec<String> {
        let mut left = Vec::new();
        let ours: Vec<String> = self
            .store
            .listed()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{PREFIX}-")))
            .collect();
        let fvm = Fvm {
            bin: self.store.fvm_binary().to_path_buf(),
            root: self.store.root().to_path_buf(),
        };
        let failed = in_parallel(ours.len(), WORKERS, |i| {
            let name = &ours[i];
            Ok(check_output(&mut fvm.cmd(&["delete", "--force", name]))
                .err()
                .map(|e| format!("deleting VM {name}: {e:#}")))
        });
        left.extend(failed.unwrap_or_default().into_iter().flatten());
        let veths = veths_present(&self.id, &names(BRIDGE_PORTS));
        if veths > 0 {
            left.push(format!("{veths} veths of the store's VMs"));
        }
        let inits = leftover_inits(&self.id);
        if !inits.is_empty() {
            left.push(format!("{} fvm-init processes of the store", inits.len()));
        }
        let cgroups = leftover_cgroups(&self.id);
        if !cgroups.is_empty() {
            left.push(format!("cgroups still there: {}", cgroups.join(", ")));
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            left.push(format!("bridge {} was still there", self.bridge));
            if let Err(e) = check_output(Command::new("ip").args(["link", "delete", &self.bridge]))
            {
                left.push(format!("removing it: {e:#}"));
            }
        }
        for family in ["inet", "bridge"] {
            if nft_table_exists(family, &self.table) {
                left.push(format!("nft table {family} {} was still there", self.table));
                if let Err(e) =
                    check_output(Command::new("nft").args(["delete", "table", family, &self.table]))
                {
                    left.push(format!("removing it: {e:#}"));
                }
            }
        }
        left
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.1}"))
}

/// The buckets' table of one phase.
fn bucket_table(s: &mut String, phase: &Phase, parallel: bool) {
    let first = buckets(phase.start_ms.len())
        .first()
        .and_then(|b| bucket_median(&phase.start_ms, *b));
    let mut table = Table::new(&[
        (if parallel { "starts taken" } else { "starts" }, L),
        (
            if parallel {
                "taken before"
            } else {
                "started before"
            },
            R,
        ),
        ("`fvm start` median ms", R),
        ("`fvm start` p90 ms", R),
        ("`fvm run -d` median ms", R),
        ("start vs first", R),
    ]);
    for bucket in buckets(phase.start_ms.len()) {
        let (from, to) = bucket;
        let median = bucket_median(&phase.start_ms, bucket);
        let p90 = Stats::of(&phase.start_ms[from - 1..to]).map(|s| s.p90);
        table.row([
            format!("{from}-{to}"),
            format!("{}-{}", from - 1, to - 1),
            ms(median),
            ms(p90),
            ms(bucket_median(&phase.serve_ms, bucket)),
            crate::table::ratio(median.unwrap_or(f64::NAN), first),
        ]);
    }
    s.push_str(&table.render());
}

fn verdict(ratio: Option<f64>, vms: usize) -> String {
    let met = ratio.is_some_and(|r| r <= TARGET_RATIO);
    if vms < TARGET_VMS {
        format!(
            "not measured at the target's size: {vms} VMs, not {TARGET_VMS} (`--scale-vms`); at \
             this size {}",
            if met { "within 10%" } else { "not within 10%" }
        )
    } else if met {
        "met".to_owned()
    } else {
        "missed".to_owned()
    }
}

/// The section, markers included.
pub fn render(b: &ScaleBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    let n = b.vms;
    let gib = b.mem_total_kib as f64 / f64::from(1u32 << 20);
    let _ = writeln!(s, "{BEGIN}\n## Scale: 1,000 bridged VMs\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- CPUs: {}\n- memory: {gib:.1} GiB (MemTotal)\n\
         - store: {store}\n\
         - network: `fvm --root DIR network --bridge {} --subnet {}` (no route of the host \
         overlaps the subnet); {n} VMs made by `fvm --root DIR create VM-N --net bridge`, \
         each serving TCP port {PORT} at its own address on the bridge\n\
         - afterwards every VM was deleted, and no veth of the store's VMs, no cgroup \
         `fvm-<storeid>-*`, no `fvm-init` of the store, no nft table `fvm-<storeid>` and not \
         the bridge was left (checked); {} of {n} veths were there while they ran (checked)\n\
         - only with `--scale-only`: not part of a full run (`--scale-vms N` sets the number \
         of VMs)\n\
         - measuring this section took {:.0} s\n{}",
        b.cpus,
        b.bridge,
        b.subnet,
        b.veths,
        b.took_s,
        b.neighbours_raised
            .map_or(String::new(), |(old, new)| format!(
                "- the host's IPv4 neighbour table was too small for every VM to answer (the \
             limits below): `net.ipv4.neigh.default.gc_thresh2` and `gc_thresh3` were raised \
             for the run from {} and {} to {} and {}, and put back afterwards\n",
                old.0, old.1, new.0, new.1
            ))
    );
    let _ = writeln!(
        s,
        "Each VM's server is the benchmark's own binary run inside the VM by its host path \
         (`fvm --root DIR run -d VM-N -- fvm-bench serve --listen 0.0.0.0:{PORT} --line \
         'fvm-bench serve VM-N'`): one thread that answers every connection with a line \
         naming its VM. Each start is timed alone (`fvm --root DIR start VM-N`, wall time of \
         the command), then the server's `fvm run -d`, apart. First all {n} one after \
         another; then, after all were stopped, all at once by {WORKERS} parallel starters \
         (threads, each taking the next VM; start, then `run -d`). After each phase the \
         benchmark connected from the host to every VM's address and port ({ASKERS} at a \
         time, up to {TRIES} tries {} s apart, {} s timeouts) and counted the answers with \
         the VM's own line.\n",
        RETRY_AFTER.as_secs(),
        ASK_TIMEOUT.as_secs()
    );
    let _ = writeln!(
        s,
        "What serialises the parallel starters: every bridged start takes the store's \
         network lock (`DIR/net.lock`) twice, to connect its VM (the bridge made sure of, \
         the veth pair, the address and route in the VM) and to rewrite the store's \
         firewall (every VM's policy and state read, `nft -f -`), so only one start at a \
         time does either; the rest of a start (its exec, its cgroup, the clone of its \
         init, the VM's mounts) and the `fvm run -d` go on alongside the others, on {} \
         CPUs. A start's time in that phase includes its wait for the lock.\n",
        b.cpus
    );
    let mut table = Table::new(&[
        ("phase", L),
        ("all, s", R),
        ("`fvm start` median ms", R),
        ("`fvm start` p90 ms", R),
        ("`fvm run -d` median ms", R),
        ("answering", R),
        (&*format!("last {k} / first {k}", k = BUCKET.min(n)), R),
    ]);
    for (label, phase) in [
        ("one after another".to_owned(), &b.sequential),
        (
            format!("all at once, {WORKERS} parallel starters"),
            &b.parallel,
        ),
    ] {
        let st = Stats::of(&phase.start_ms);
        table.row([
            label,
            format!("{:.2}", phase.wall_s),
            ms(st.map(|s| s.median)),
            ms(st.map(|s| s.p90)),
            ms(Stats::of(&phase.serve_ms).map(|s| s.median)),
            if phase.late > 0 {
                format!("{}/{n} ({} at a later try)", phase.answered, phase.late)
            } else {
                format!("{}/{n}", phase.answered)
            },
            factor(growth(&phase.start_ms)),
        ]);
    }
    s.push_str(&table.render());
    if let (Some(seq), Some(par)) = (b.sequential.table_fulls, b.parallel.table_fulls) {
        let _ = writeln!(
            s,
            "\nWhile the servers were asked, the kernel's IPv4 neighbour table was full {seq} \
             times (one after another) and {par} times (all at once): `table_fulls` of \
             /proc/net/stat/arp_cache. That table serves every network namespace and holds \
             `net.ipv4.neigh.default.gc_thresh3` entries (below); a connection needs the \
             host's entry for the VM and the VM's for the host, and one that finds no room \
             for either gets no answer until older entries are freed."
        );
    }
    let ratio = growth(&b.sequential.start_ms);
    let _ = writeln!(
        s,
        "\nTarget: a store with {TARGET_VMS} bridged VMs running starts one more within 10% \
         of the time an empty store takes (median of starts {}, over starts 1-{}, one after \
         another): {}, {}.\n",
        buckets(n)
            .last()
            .map_or("–".into(), |(a, b)| format!("{a}-{b}")),
        BUCKET.min(n),
        factor(ratio),
        verdict(ratio, n)
    );
    let _ = writeln!(
        s,
        "One after another, by how many VMs were running before the start (starts 1-10: \
         the store empty, or nearly):\n"
    );
    bucket_table(&mut s, &b.sequential, false);
    let _ = writeln!(
        s,
        "\n{WORKERS} parallel starters, by the order in which the starts were taken (up to \
         {} more were starting at the same time):\n",
        WORKERS - 1
    );
    bucket_table(&mut s, &b.parallel, true);
    let _ = writeln!(
        s,
        "\nHost memory per VM, the change over the sequential phase (before its first start, \
         after its last, each read after `sync` and a {} s pause), over {n}: MemAvailable \
         {:.0} KiB, Slab {:.0} KiB; each VM holds its init and its server. These are the \
         whole host's: other work on the machine in the meantime moves them (a negative \
         figure means it freed more than the VMs took). {}\n",
        crate::density::SETTLE.as_secs(),
        b.avail_per_vm_kib(),
        b.slab_per_vm_kib(),
        match b.charged {
            Some((bytes, cgroups)) => format!(
                "The VMs' own memory cgroups, which other work doesn't touch, were charged \
                 {:.0} KiB per VM after the last start ({cgroups} cgroups; all they are \
                 charged: their processes' memory, page cache they first brought in, \
                 kernel memory the cgroups account).",
                bytes as f64 / 1024.0 / cgroups.max(1) as f64
            ),
            None => "The VMs' memory cgroups could not be read.".to_owned(),
        }
    );
    let _ = writeln!(
        s,
        "Creating the {n} VMs took {:.2} s (one after another); stopping them all \
         (`fvm --root DIR stop -t 2 VM-N`, {WORKERS} parallel stoppers) took {:.2} s between \
         the phases and {:.2} s at the end; deleting them all (`fvm --root DIR delete VM-N`, \
         {WORKERS} parallel) {:.2} s.\n",
        b.create_s, b.restop_s, b.stop_s, b.delete_s
    );
    let _ = writeln!(
        s,
        "Limits that {n} VMs meet, read before the first start (a limit that was short is \
         said so on fvm-bench's stderr too):\n"
    );
    let mut table = Table::new(&[("limit", L), ("value", R), ("needed", L), ("enough", L)]);
    for l in &b.limits {
        table.row([
            l.name.clone(),
            l.value.clone(),
            l.need.clone(),
            match l.enough {
                Some(true) => "yes".into(),
                Some(false) => "**no**".into(),
                None => "–".into(),
            },
        ]);
    }
    s.push_str(&table.render());
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_fleet_size() {
        assert_eq!(buckets(1000), [(1, 10), (91, 100), (491, 500), (991, 1000)]);
        assert_eq!(buckets(100), [(1, 10), (41, 50), (91, 100)]);
        assert_eq!(buckets(20), [(1, 10), (11, 20)]);
        assert_eq!(buckets(5), [(1, 5)]);
        assert_eq!(buckets(0), []);
        assert_eq!(
            buckets(1023),
            [(1, 10), (93, 102), (502, 511), (1014, 1023)]
        );
    }

    #[test]
    fn growth_is_last_bucket_over_first() {
        let mut v: Vec<f64> = vec![10.0; 100];
        v[90..].fill(11.0);
        assert_eq!(bucket_median(&v, (91, 100)), Some(11.0));
        assert_eq!(bucket_median(&v, (0, 10)), None);
        assert_eq!(bucket_median(&v, (95, 120)), Some(11.0));
        let g = growth(&v).unwrap();
        assert!((g - 1.1).abs() < 1e-9, "{g}");
        assert_eq!(growth(&[]), None);
        assert_eq!(growth(&[0.0; 10]), None);
    }

    #[test]
    fn limits_and_names_are_parsed() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             96367                96367                processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(nofile(limits), Some(("1024".into(), "524288".into())));
        assert_eq!(nofile("Max open"), None);
        let arp = "entries  allocs   table_fulls\n00000000 0000161e 0000010d\n\
                   00000000 00001a25 000000ee\n";
        assert_eq!(parse_table_fulls(arp), Some(0x10d + 0xee));
        assert_eq!(parse_table_fulls("entries allocs\n0 0\n"), None);
        assert_eq!(parse_table_fulls("table_fulls\nzz\n"), None);
        let a = veth_name("1a2b3c4d", "web1");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("fvm"));
        assert_ne!(a, veth_name("1a2b3c4d", "web2"));
    }

    #[test]
    fn parallel_runs_every_item_once_in_order() {
        let out = in_parallel(50, 8, |i| Ok(i * 2)).unwrap();
        assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        let err = in_parallel(50, 8, |i| if i == 7 { bail!("no") } else { Ok(i) });
        assert!(err.is_err());
    }

    #[test]
    fn servers_answer_their_line_and_hostile_ones_are_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let listen = addr.to_string();
        std::thread::spawn(move || serve(&listen, "fvm-bench serve scale-0001"));
        let mut got = None;
        for _ in 0..100 {
            if let Ok(line) = ask(addr) {
                got = Some(line);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(got.as_deref(), Some("fvm-bench serve scale-0001"));

        let flood = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = flood.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = flood.accept() {
                let _ = c.write_all(&[b'a'; 100_000]);
            }
        });
        assert_eq!(ask(addr).unwrap().len(), 256);
    }

    #[test]
    fn renders_the_phases_buckets_and_the_verdict() {
        let phase = |base: f64, wall_s: f64, late: usize| Phase {
            wall_s,
            start_ms: (0..1000).map(|i| base + f64::from(i / 100)).collect(),
            serve_ms: vec![3.0; 1000],
            answered: 1000,
            late,
            table_fulls: Some(late as u64 * 10),
        };
        let b = ScaleBench {
            bridge: "fvmbench0".into(),
            subnet: "10.231.0.0/22".into(),
            cpus: 2,
            mem_total_kib: 24 << 20,
            vms: 1000,
            create_s: 4.0,
            sequential: phase(20.0, 30.0, 0),
            parallel: phase(40.0, 20.0, 2),
            avail_kib: (20_000_000, 20_000_000 - 1_200_000),
            slab_kib: (100_000, 100_000 + 500_000),
            veths: 1000,
            charged: Some((1000 << 20, 1000)),
            restop_s: 9.0,
            stop_s: 8.0,
            delete_s: 7.0,
            limits: vec![
                Limit {
                    name: "`kernel.pid_max`".into(),
                    value: "32768".into(),
                    need: "4000: processes".into(),
                    enough: Some(true),
                },
                Limit {
                    name: "`net.core.somaxconn`".into(),
                    value: "4096".into(),
                    need: "per VM".into(),
                    enough: None,
                },
            ],
            neighbours_raised: None,
            took_s: 300.0,
        };
        let md = render(&b, "bench/run --scale-only", "d", "k", "s");
        assert_eq!(
            md,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/scale.md"))
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        for want in [
            "Produced by `bench/run --scale-only`.",
            "| one after another | 30.00 | 24.0 | 28.0 | 3.0 | 1000/1000 | 1.45x |",
            "| 1000/1000 (2 at a later try) |",
            "| 991-1000 | 990-999 | 29.0 | 29.0 | 3.0 | 1.45× |",
            "(median of starts 991-1000, over starts 1-10, one after another): 1.45x, missed.",
            "MemAvailable 1200 KiB, Slab 500 KiB",
            "| `kernel.pid_max` | 32768 | 4000: processes | yes |",
            "1000 of 1000 veths were there while they ran (checked)",
            "charged 1024 KiB per VM after the last start (1000 cgroups;",
            "neighbour table was full 0 times (one after another) and 20 times (all at once)",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        let small = ScaleBench {
            vms: 20,
            sequential: Phase {
                start_ms: vec![10.0; 20],
                ..Phase::default()
            },
            ..b
        };
        let md = render(&small, "x", "d", "k", "s");
        assert!(
            md.contains("1.00x, not measured at the target's size: 20 VMs, not 1000"),
            "{md}"
        );
    }
}

//! The "Network" section of docs/BENCHMARKS.md: what a VM with a network of its own
//! (`--net bridge`: a network namespace, a veth to the store's bridge, an address, a
//! default route, the store's nft tables rebuilt on every start and stop) costs next
//! to a VM on the host's network (the default), measured in the same run.
//!
//! - start and stop latency of one VM of each, in interleaved rounds, and where a
//!   bridged start's and stop's time goes, from fvm's own `-vv` timing events;
//! - TCP throughput from the host into a bridged VM, through its veth and the bridge,
//!   next to the same over loopback on the host;
//! - a fleet of bridged VMs (100) started one after another and stopped again, next
//!   to a fleet of host VMs.
//!
//! The store gets a bridge of its own (`fvmbenchN`, a name no link has) and a subnet
//! that no route of the host overlaps. Traffic goes only to loopback and to the
//! benchmark's own VMs. Every VM is deleted at the end, also on failure; fvm removes
//! the bridge and the store's nft tables with the last bridged VM, and this module
//! checks that they are gone (and removes them, loudly, if not).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::measure::{Stats, Subject, check_output, run_interleaved, time_command};
use crate::store::{Store, Sweep, Swept};
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, code, ratio};
use crate::throughput::{self, Receiver};

pub const BEGIN: &str = "<!-- bench:network:begin -->";
pub const END: &str = "<!-- bench:network:end -->";

/// The VMs timed one at a time, and the prefixes of the fleets' VMs.
const BRIDGED: &str = "net-bridge";
const HOSTED: &str = "net-host";
const FLEET_BRIDGED: &str = "fleet-b";
const FLEET_HOSTED: &str = "fleet-h";

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// Timed start/stop rounds (and as many `-vv` runs for the breakdown).
    pub rounds: usize,
    pub warmup: usize,
    /// MiB per transfer, and timed transfers over each path.
    pub mib: usize,
    pub transfers: usize,
    /// VMs in each fleet.
    pub vms: usize,
    /// The bridge's subnet; by default the first free 10.231.x.0/22 (or larger).
    pub subnet: Option<String>,
}

/// Samples of a bridged VM and a host VM, taken in the same rounds, in round order.
#[derive(Debug, Clone, Default)]
pub struct Pair {
    pub bridge: Vec<f64>,
    pub host: Vec<f64>,
}

impl Pair {
    /// The per-round ratios bridge / host.
    pub fn ratios(&self) -> Vec<f64> {
        self.bridge
            .iter()
            .zip(&self.host)
            .filter(|(_, h)| **h > 0.0)
            .map(|(b, h)| b / h)
            .collect()
    }

    /// Their median.
    pub fn ratio(&self) -> Option<f64> {
        Stats::of(&self.ratios()).map(|s| s.median)
    }
}

/// Where the time of one command goes: the median gap before each of fvm's events.
#[derive(Debug, Clone, Default)]
pub struct Steps {
    /// Runs made, and runs whose events came in the usual order (the ones used).
    pub runs: usize,
    pub used: usize,
    /// (event, median ms, p90 ms) of the gap from the event before.
    pub steps: Vec<(String, f64, f64)>,
    /// Wall time after the last event (and before fvm's `main`), and in all.
    pub rest: (f64, f64),
    pub total: (f64, f64),
}

/// One fleet: created, started one after another, stopped, deleted.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub create_s: f64,
    pub start_ms: Vec<f64>,
    pub stop_ms: Vec<f64>,
    pub delete_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct NetworkBench {
    pub bridge: String,
    pub subnet: String,
    pub rounds: usize,
    pub warmup: usize,
    pub cpus: usize,
    /// ms, per round.
    pub start: Pair,
    pub stop: Pair,
    pub start_steps: Steps,
    pub stop_steps: Steps,
    /// Medians, ms since fvm started: when the init was cloned (start) and when it
    /// was gone (stop), bridged and host.
    pub cloned_at: (Option<f64>, Option<f64>),
    pub gone_at: (Option<f64>, Option<f64>),
    pub mib: usize,
    pub transfers: usize,
    pub vm_ip: String,
    /// GiB/s per round: into the VM (bridge) and over loopback (host).
    pub rates: Pair,
    pub vms: usize,
    pub fleet_bridge: Fleet,
    pub fleet_host: Fleet,
    /// Wall time of the whole measurement, cleanup included.
    pub took_s: f64,
}

pub fn measure(store: &Store, p: &Params) -> Result<NetworkBench> {
    let began = Instant::now();
    let bridge = free_bridge_name()?;
    let subnet = choose_subnet(p.subnet.as_deref(), p.vms + 2)?;
    eprintln!("fvm-bench: network: bridge {bridge}, subnet {subnet}");
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
    });
    let mut b = NetworkBench {
        bridge,
        subnet: subnet.to_string(),
        rounds: p.rounds,
        warmup: p.warmup,
        mib: p.mib,
        transfers: p.transfers,
        vms: p.vms,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..NetworkBench::default()
    };
    check_output(&mut create(store, BRIDGED, true))?;
    check_output(&mut create(store, HOSTED, false))?;
    b.vm_ip = vm_ip(store, BRIDGED)?.to_string();

    latency(store, p, &mut b)?;
    breakdown(store, p.rounds, &cleanup.inner.table, &mut b)?;
    transfer(store, p, &mut b)?;
    eprintln!("fvm-bench: network: {} bridged VMs", p.vms);
    b.fleet_bridge = fleet(store, FLEET_BRIDGED, true, p.vms)?;
    eprintln!("fvm-bench: network: {} host VMs", p.vms);
    b.fleet_host = fleet(store, FLEET_HOSTED, false, p.vms)?;

    store.delete(BRIDGED)?;
    store.delete(HOSTED)?;
    cleanup.finish()?;
    b.took_s = began.elapsed().as_secs_f64();
    Ok(b)
}

/// `fvm create NAME [--net bridge]`.
fn create(store: &Store, name: &str, bridged: bool) -> Command {
    let mut cmd = store.create_command(name);
    if bridged {
        cmd.args(["--net", "bridge"]);
    }
    cmd
}

fn verb(store: &Store, verb: &str, name: &str) -> Command {
    let mut cmd = store.fvm();
    cmd.args([verb, name]);
    cmd
}

fn ms(cmd: &mut Command) -> Result<f64> {
    Ok(time_command(cmd)?.as_secs_f64() * 1000.0)
}

/// Start/stop rounds: each round starts and stops each VM once, in a new random
/// order (the stop runs right after its start, timed by the subject's after-hook).
fn latency(store: &Store, p: &Params, b: &mut NetworkBench) -> Result<()> {
    let stops = [RefCell::new(Vec::new()), RefCell::new(Vec::new())];
    let warmup = p.warmup;
    let make = |label: &str, vm: &'static str, i: usize| {
        let stops = &stops[i];
        Subject::new(
            format!("start, {label}"),
            "fvm --root DIR start VM",
            move |_| verb(store, "start", vm),
        )
        .after(move |round| {
            let took = ms(&mut verb(store, "stop", vm)).context("timing stop")?;
            if round >= warmup {
                stops.borrow_mut().push(took);
            }
            Ok(())
        })
    };
    let mut subjects = vec![make("bridge", BRIDGED, 0), make("host", HOSTED, 1)];
    eprintln!(
        "fvm-bench: network: start/stop, {} warm-up + {} timed rounds",
        p.warmup, p.rounds
    );
    let samples = run_interleaved(&mut subjects, p.warmup, p.rounds)?;
    drop(subjects);
    let [bridge_stops, host_stops] = stops;
    b.start = Pair {
        bridge: samples[0].ms.clone(),
        host: samples[1].ms.clone(),
    };
    b.stop = Pair {
        bridge: bridge_stops.into_inner(),
        host: host_stops.into_inner(),
    };
    Ok(())
}

/// One `fvm -vv` run: wall time in ms and fvm's events.
type Run = (f64, Vec<(f64, String)>);

/// `fvm -vv start` and `fvm -vv stop` of both VMs, `runs` times each.
fn breakdown(store: &Store, runs: usize, table: &str, b: &mut NetworkBench) -> Result<()> {
    eprintln!("fvm-bench: network: {runs} runs of fvm -vv start and stop of each VM");
    let (mut b_start, mut b_stop, mut h_start, mut h_stop) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..runs {
        b_start.push(verbose(store, "start", BRIDGED)?);
        if round == 0 && !nft_table_exists("inet", table) {
            // The cleanup check below would look for the wrong tables.
            bail!(
                "a bridged VM runs but there is no nft table inet {table}; fvm names its \
                 tables differently now, update Store::id in bench/src/store.rs"
            );
        }
        b_stop.push(verbose(store, "stop", BRIDGED)?);
        h_start.push(verbose(store, "start", HOSTED)?);
        h_stop.push(verbose(store, "stop", HOSTED)?);
    }
    b.start_steps = steps(&b_start)?;
    b.stop_steps = steps(&b_stop)?;
    let cloned = "init cloned and recorded";
    let gone = "cleaning up after a vm that is gone";
    b.cloned_at = (event_at(&b_start, cloned), event_at(&h_start, cloned));
    b.gone_at = (event_at(&b_stop, gone), event_at(&h_stop, gone));
    Ok(())
}

fn verbose(store: &Store, verb: &str, name: &str) -> Result<Run> {
    let mut cmd = store.fvm();
    cmd.args(["-vv", verb, name])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running fvm -vv {verb} {name}"))?;
    let wall = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "fvm -vv {verb} {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((wall, events(&String::from_utf8_lossy(&out.stderr))))
}

/// fvm's own timing events in one `-vv` stderr, as (ms since fvm started, message
/// without its `key=value` fields), in time order. The init's events ("init: …") are
/// left out: it assembles the VM while fvm connects it, off fvm's path.
pub fn events(stderr: &str) -> Vec<(f64, String)> {
    let mut out: Vec<(f64, String)> = stderr
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let secs = words.next()?.strip_suffix('s')?.parse::<f64>().ok()?;
            let _level = words.next()?;
            let message: Vec<&str> = words.take_while(|w| !w.contains('=')).collect();
            Some((secs * 1000.0, message.join(" ")))
        })
        .filter(|(_, m)| !m.is_empty() && !m.starts_with("init:"))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The events' names, numbered (`nft -f - #2`) when one occurs more than once.
fn keys(events: &[(f64, String)]) -> Vec<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, m) in events {
        *count.entry(m).or_default() += 1;
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    events
        .iter()
        .map(|(_, m)| {
            let n = seen.entry(m).or_default();
            *n += 1;
            if count[m.as_str()] > 1 {
                format!("{m} #{n}")
            } else {
                m.clone()
            }
        })
        .collect()
}

/// Median and p90 of each step of the runs whose events came in the most common order.
pub fn steps(runs: &[Run]) -> Result<Steps> {
    let mut orders: Vec<(Vec<String>, usize)> = Vec::new();
    for (_, ev) in runs {
        let k = keys(ev);
        match orders.iter_mut().find(|(o, _)| *o == k) {
            Some((_, n)) => *n += 1,
            None => orders.push((k, 1)),
        }
    }
    let Some((order, _)) = orders.into_iter().max_by_key(|(_, n)| *n) else {
        bail!("no fvm -vv runs");
    };
    let mut gaps: Vec<Vec<f64>> = vec![Vec::new(); order.len()];
    let (mut rest, mut total) = (Vec::new(), Vec::new());
    for (wall, ev) in runs.iter().filter(|(_, ev)| keys(ev) == order) {
        let mut prev = 0.0;
        for (i, (t, _)) in ev.iter().enumerate() {
            gaps[i].push(t - prev);
            prev = *t;
        }
        rest.push(wall - prev);
        total.push(*wall);
    }
    let stat = |v: &[f64]| {
        Stats::of(v)
            .map(|s| (s.median, s.p90))
            .context("no samples")
    };
    Ok(Steps {
        runs: runs.len(),
        used: total.len(),
        steps: order
            .into_iter()
            .zip(&gaps)
            .map(|(k, g)| Ok((k, stat(g)?.0, stat(g)?.1)))
            .collect::<Result<_>>()?,
        rest: stat(&rest)?,
        total: stat(&total)?,
    })
}

/// Median time, in ms since fvm started, of the first event whose message starts
/// with `event`.
fn event_at(runs: &[Run], event: &str) -> Option<f64> {
    let times: Vec<f64> = runs
        .iter()
        .filter_map(|(_, ev)| ev.iter().find(|(_, m)| m.starts_with(event)).map(|e| e.0))
        .collect();
    Stats::of(&times).map(|s| s.median)
}

/// Throughput: the VM runs a receiver per transfer (through `fvm run`, which execs
/// into the running VM), the host another; the paths take turns going first.
fn transfer(store: &Store, p: &Params, b: &mut NetworkBench) -> Result<()> {
    let bytes = p.mib as u64 * (1 << 20);
    let gib = bytes as f64 / f64::from(1u32 << 30);
    let exe = std::env::current_exe().context("locating fvm-bench")?;
    let ip: Ipv4Addr = b.vm_ip.parse().context("the VM's address")?;
    store.start(BRIDGED).context("starting the bridged VM")?;
    let into_vm = || -> Result<f64> {
        let mut cmd = store.fvm();
        cmd.args(["run", BRIDGED, "--"])
            .arg(&exe)
            .args(["recv", "--listen", &format!("{ip}:0")]);
        let receiver = Receiver::spawn(&mut cmd)?;
        let took = throughput::send(SocketAddr::from((ip, receiver.port)), bytes)?;
        receiver.finish()?;
        Ok(gib / took.as_secs_f64())
    };
    let over_lo = || -> Result<f64> {
        let mut cmd = Command::new(&exe);
        cmd.args(["recv", "--listen", "127.0.0.1:0"]);
        let receiver = Receiver::spawn(&mut cmd)?;
        let took = throughput::send(SocketAddr::from(([127, 0, 0, 1], receiver.port)), bytes)?;
        receiver.finish()?;
        Ok(gib / took.as_secs_f64())
    };
    eprintln!(
        "fvm-bench: network: throughput, 1 warm-up + {} timed transfers of {} MiB each way",
        p.transfers, p.mib
    );
    for round in 0..=p.transfers {
        let (veth, lo) = if round % 2 == 0 {
            let v = into_vm().context("sending into the VM")?;
            (v, over_lo().context("sending over loopback")?)
        } else {
            let l = over_lo().context("sending over loopback")?;
            (into_vm().context("sending into the VM")?, l)
        };
        if round > 0 {
            b.rates.bridge.push(veth);
            b.rates.host.push(lo);
        }
    }
    store.stop(BRIDGED).context("stopping the bridged VM")?;
    Ok(())
}

/// `n` VMs: created, started one after another, stopped one after another, deleted.
fn fleet(store: &Store, prefix: &str, bridged: bool, n: usize) -> Result<Fleet> {
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

/// Deletes the benchmark's VMs (when dropped on failure, or by `finish`), then
/// makes sure the bridge and the store's nft tables went with them.
#[derive(Debug)]
struct Cleanup<'a> {
    store: &'a Store,
    bridge: String,
    table: String,
}

impl Sweep for Cleanup<'_> {
    /// What was left behind, removed now.
    fn sweep(&self) -> Vec<String> {
        let mut left = Vec::new();
        let ours = |n: &str| {
            n == BRIDGED
                || n == HOSTED
                || n.starts_with(FLEET_BRIDGED)
                || n.starts_with(FLEET_HOSTED)
        };
        for name in self.store.listed().into_iter().filter(|n| ours(n)) {
            if let Err(e) = check_output(self.store.fvm().args(["delete", "--force", &name])) {
                left.push(format!("deleting VM {name}: {e:#}"));
            }
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
                let mut cmd = Command::new("nft");
                cmd.args(["delete", "table", family, &self.table]);
                if let Err(e) = check_output(&mut cmd) {
                    left.push(format!("removing it: {e:#}"));
                }
            }
        }
        left
    }
}

fn nft_table_exists(family: &str, table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `fvmbench0`, or the next such name that no link has.
fn free_bridge_name() -> Result<String> {
    (0..100)
        .map(|i| format!("fvmbench{i}"))
        .find(|n| !Path::new("/sys/class/net").join(n).exists())
        .context("fvmbench0 to fvmbench99 are all taken")
}

/// The address `fvm inspect` shows for a bridged VM.
fn vm_ip(store: &Store, name: &str) -> Result<Ipv4Addr> {
    let out = store
        .fvm()
        .args(["inspect", name])
        .output()
        .context("running fvm inspect")?;
    if !out.status.success() {
        bail!(
            "fvm inspect {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ip(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("no \"ip\" in fvm inspect {name}"))
}

/// The first `"ip": "A.B.C.D[/N]"` of a JSON text, without the prefix.
fn parse_ip(json: &str) -> Option<Ipv4Addr> {
    json.match_indices("\"ip\": \"").find_map(|(i, key)| {
        let value = json[i + key.len()..].split('"').next()?;
        value.split('/').next()?.parse().ok()
    })
}

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: u32,
    prefix: u32,
}

impl Cidr {
    /// `A.B.C.D/N`, or `A.B.C.D` for a single address.
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse().ok()?),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().ok()?;
        (prefix <= 32).then_some(Cidr {
            addr: u32::from(addr),
            prefix,
        })
    }

    fn mask(self) -> u32 {
        u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0)
    }

    fn overlaps(self, other: Cidr) -> bool {
        let shorter = if self.prefix < other.prefix {
            self
        } else {
            other
        };
        (self.addr ^ other.addr) & shorter.mask() == 0
    }

    /// Addresses that are neither the network's nor its broadcast address.
    fn hosts(self) -> u64 {
        (1u64 << (32 - self.prefix)).saturating_sub(2)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.prefix)
    }
}

/// The destination of each route of `ip -4 route show table all` (default routes
/// left out: they overlap everything).
fn route_destinations(routes: &str) -> Vec<Cidr> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "throw",
        "unreachable",
        "prohibit",
        "blackhole",
        "nat",
        "anycast",
    ];
    routes
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let first = words.next()?;
            let dest = if TYPES.contains(&first) {
                words.next()?
            } else {
                first
            };
            Cidr::parse(dest)
        })
        .collect()
}

/// The bridge's subnet: `given`, or the first 10.231.x.0 network from /22 up that
/// holds `vms` VMs and its gateway; either way one that no route of the host overlaps.
fn choose_subnet(given: Option<&str>, vms: usize) -> Result<Cidr> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .context("running ip -4 route")?;
    if !out.status.success() {
        bail!(
            "ip -4 route failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let routes = route_destinations(&String::from_utf8_lossy(&out.stdout));
    pick_subnet(given, vms, &routes)
}

fn pick_subnet(given: Option<&str>, vms: usize, routes: &[Cidr]) -> Result<Cidr> {
    let need = vms as u64 + 1;
    let clash = |net: Cidr| routes.iter().copied().find(|r| r.overlaps(net));
    if let Some(text) = given {
        let net =
            Cidr::parse(text).with_context(|| format!("--net-subnet {text:?} is not A.B.C.D/N"))?;
        if net.addr & !net.mask() != 0 || !(8..=29).contains(&net.prefix) {
            bail!("--net-subnet {net}: host bits set, or a prefix outside 8 to 29");
        }
        if net.hosts() < need {
            bail!(
                "--net-subnet {net} has room for {} VMs, {vms} are needed",
                net.hosts() - 1
            );
        }
        if let Some(r) = clash(net) {
            bail!("--net-subnet {net} overlaps the host's route to {r}");
        }
        return Ok(net);
    }
    let prefix = (8..=22)
        .rev()
        .find(|&p| Cidr { addr: 0, prefix: p }.hosts() >= need)
        .context("too many VMs for one subnet")?;
    let size = 1u32 << (32 - prefix);
    let first = u32::from(Ipv4Addr::new(10, 231, 0, 0)) & !(size - 1);
    let end = u32::from(Ipv4Addr::new(11, 0, 0, 0));
    (first..end)
        .step_by(size as usize)
        .map(|addr| Cidr { addr, prefix })
        .find(|&net| clash(net).is_none())
        .context("no free subnet in 10.231.0.0 to 10.255.255.255")
}

/// What happens before each of fvm's events, for the breakdown table.
fn step_meaning(command: &str, key: &str) -> &'static str {
    let start = [
        (
            "mount plan built",
            "exec of fvm; it locks the VM, reads its policy, its state and the host's mount table, and plans the mounts",
        ),
        ("created cgroup", "the VM's cgroup made"),
        ("limits set", "its limits written"),
        ("layers and cgroup ready", "its layers checked"),
        (
            "init cloned and recorded",
            "clone3 into new mount, pid, IPC, UTS and network namespaces; the init's pid saved",
        ),
        (
            "vm connected to bridge",
            "under the store's network lock: the bridge found; a veth pair made in one request, its host end on the bridge, the VM's end created inside the VM's namespace as eth0; lo, the address and the default route set there (rtnetlink)",
        ),
        (
            "nft -f -",
            "the network lock again; every VM's policy and state read to list the running bridged VMs",
        ),
        (
            "vm assembled",
            "`nft -f -` replaces the store's tables (deletes and re-adds them in one transaction); the init is told to go and reports ready",
        ),
    ];
    let stop = [
        (
            "cleaning up after a vm that is gone",
            "exec of fvm; it locks the VM, reads its state, sends SIGTERM to the init and waits for it to exit",
        ),
        (
            "nft -f - #1",
            "the VM's cgroup removed and its state saved; every VM's policy and state read",
        ),
        (
            "nft -f - #2",
            "`nft -f -` rebuilds the tables without the VM; then `stop` reads the policies again for a second rebuild",
        ),
        (
            "nft -f -",
            "the VM's cgroup removed and its state saved; every VM's policy and state read",
        ),
    ];
    let table: &[(&str, &str)] = if command == "start" { &start } else { &stop };
    table
        .iter()
        .find(|(event, _)| key.starts_with(event))
        .map_or("", |(_, meaning)| meaning)
}

/// The section, markers included.
pub fn render(b: &NetworkBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    // Ratios: "x" in sentences, "×" in tables, as the other sections write them.
    let x = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}x"));
    let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2} ms"));
    let _ = writeln!(s, "{BEGIN}\n## Network\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- CPUs: {}\n- store: {store}\n\
         - network: `fvm --root DIR network --bridge {} --subnet {}` (no route of the host \
         overlaps the subnet); bridged VMs made by `fvm --root DIR create VM --net bridge`, \
         host VMs by `fvm --root DIR create VM`\n\
         - afterwards every VM was deleted, and the bridge and the store's nft tables were \
         gone (checked)\n- measuring this section took {:.0} s\n",
        b.cpus, b.bridge, b.subnet, b.took_s
    );

    let _ = writeln!(
        s,
        "Start and stop of one bridged VM and one host VM, {} rounds after {} warm-up; \
         each round starts and stops both (each stop right after its start), in a new \
         random order. Wall-clock time of the whole command, in milliseconds.\n",
        b.rounds, b.warmup
    );
    let mut table = Table::new(&[
        ("subject", L),
        ("command", L),
        ("median ms", R),
        ("p10 ms", R),
        ("p90 ms", R),
        ("vs host", R),
    ]);
    for (verb, pair) in [("start", &b.start), ("stop", &b.stop)] {
        let host = Stats::of(&pair.host).map(|st| st.median);
        for (label, samples) in [("bridge", &pair.bridge), ("host", &pair.host)] {
            let Some(st) = Stats::of(samples) else {
                continue;
            };
            table.row([
                format!("{verb}, {label}"),
                code(&format!("fvm --root DIR {verb} VM")),
                format!("{:.2}", st.median),
                format!("{:.2}", st.p10),
                format!("{:.2}", st.p90),
                ratio(st.median, host),
            ]);
        }
    }
    s.push_str(&table.render());
    let _ = writeln!(
        s,
        "\nMedian of the per-round ratios bridge / host: start {}, stop {}.\n",
        x(b.start.ratio()),
        x(b.stop.ratio())
    );

    let (st, sp) = (&b.start_steps, &b.stop_steps);
    let _ = writeln!(
        s,
        "Where a bridged VM's time goes: {} runs each of `fvm --root DIR -vv start VM` and \
         `fvm --root DIR -vv stop VM`, after the timed rounds ({} and {} of them had the \
         usual events, in the usual order, and are counted). Each step is the median gap \
         between two of fvm's own timing events; the VM's init logs too, but it assembles \
         the VM while fvm connects it, so its events are left out. The init had been cloned \
         (\"init cloned and recorded\") after a median of {} for the bridged VM, {} for \
         the host VM; a stop found the init gone (\"cleaning up after a vm that is gone\") \
         after {} and {}.\n",
        st.runs,
        st.used,
        sp.used,
        ms(b.cloned_at.0),
        ms(b.cloned_at.1),
        ms(b.gone_at.0),
        ms(b.gone_at.1)
    );
    let mut table = Table::new(&[
        ("command", L),
        ("until", L),
        ("what happens", L),
        ("median ms", R),
        ("p90 ms", R),
    ]);
    for (command, steps, rest) in [
        ("start", st, "exec of fvm before `main`, exit"),
        (
            "stop",
            sp,
            "`nft -f -` rebuilds the tables without the VM (the store's watcher, which saw the init go, may rebuild them too); exec of fvm before `main`, exit",
        ),
    ] {
        for (key, median, p90) in &steps.steps {
            table.row([
                command.to_owned(),
                format!("\"{key}\""),
                step_meaning(command, key).to_owned(),
                format!("{median:.2}"),
                format!("{p90:.2}"),
            ]);
        }
        table.row([
            command.to_owned(),
            "the rest".to_owned(),
            rest.to_owned(),
            format!("{:.2}", steps.rest.0),
            format!("{:.2}", steps.rest.1),
        ]);
        table.row([
            command.to_owned(),
            "**total**".to_owned(),
            "wall time of the command".to_owned(),
            format!("**{:.2}**", steps.total.0),
            format!("{:.2}", steps.total.1),
        ]);
    }
    s.push_str(&table.render());

    let size = if b.mib.is_multiple_of(1024) {
        format!("{} GiB", b.mib / 1024)
    } else {
        format!("{} MiB", b.mib)
    };
    let _ = writeln!(
        s,
        "\nThroughput: {size} over one TCP connection per transfer, from the benchmark on \
         the host to a receiver that reads and discards (`fvm-bench recv`, the benchmark's \
         own binary, run inside the VM by its host path); {} transfers on each path after 1 \
         warm-up, the two paths taking turns going first. Time from connect until the \
         receiver has acknowledged the last byte.\n",
        b.transfers
    );
    let mut table = Table::new(&[
        ("path", L),
        ("receiver", L),
        ("median GiB/s", R),
        ("p10 GiB/s", R),
        ("p90 GiB/s", R),
        ("vs loopback", R),
    ]);
    let lo = Stats::of(&b.rates.host).map(|st| st.median);
    for (path, receiver, rates) in [
        (
            "host → bridged VM (veth, bridge)",
            format!(
                "fvm --root DIR run VM -- fvm-bench recv --listen {}:0",
                b.vm_ip
            ),
            &b.rates.bridge,
        ),
        (
            "loopback on the host",
            "fvm-bench recv --listen 127.0.0.1:0".to_owned(),
            &b.rates.host,
        ),
    ] {
        let Some(st) = Stats::of(rates) else {
            continue;
        };
        table.row([
            path.to_owned(),
            code(&receiver),
            format!("{:.2}", st.median),
            format!("{:.2}", st.p10),
            format!("{:.2}", st.p90),
            ratio(st.median, lo),
        ]);
    }
    s.push_str(&table.render());
    let _ = writeln!(
        s,
        "\nMedian of the per-round ratios into the VM / loopback: {} ({}).\n",
        x(b.rates.ratio()),
        b.rates
            .ratios()
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

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
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "   0.000602516s DEBUG mount plan built vm=b overlays=2
   0.000944004s DEBUG layers and cgroup ready vm=b
   0.001887356s DEBUG init: in the vm's cgroup
   0.002546636s DEBUG init cloned and recorded vm=b pid=24334
   0.006333918s DEBUG init: root assembled
   0.025457231s DEBUG vm connected to bridge fvmbench0 vm=b ip=10.231.0.2/22 veth=\"fvm9d\"
   0.025945427s DEBUG nft -f - script=table inet fvm-eee0af39
delete table inet fvm-eee0af39
  chain input {
    type filter hook input priority filter - 1; policy accept;
}
   0.049571525s DEBUG vm assembled vm=b
";

    const STOP: &str = "   0.003622606s DEBUG cleaning up after a vm that is gone vm=b
   0.004741289s DEBUG nft -f - script=table inet fvm-eee0af39
   0.026473387s DEBUG nft -f - script=table inet fvm-eee0af39
";

    #[test]
    fn events_leave_out_fields_script_lines_and_the_init() {
        let ev = events(START);
        let names: Vec<&str> = ev.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            names,
            [
                "mount plan built",
                "layers and cgroup ready",
                "init cloned and recorded",
                "vm connected to bridge fvmbench0",
                "nft -f -",
                "vm assembled"
            ]
        );
        assert!((ev[2].0 - 2.546636).abs() < 1e-6, "{ev:?}");
        assert_eq!(keys(&events(STOP))[1..], ["nft -f - #1", "nft -f - #2"]);
    }

    #[test]
    fn steps_are_medians_of_the_gaps_of_runs_in_the_usual_order() {
        let stop = events(STOP);
        let mut odd = stop.clone();
        odd.push((30.0, "enabled net.ipv4.ip_forward".into()));
        let runs = vec![(50.0, stop.clone()), (60.0, stop.clone()), (70.0, odd)];
        let st = steps(&runs).unwrap();
        assert_eq!((st.runs, st.used), (3, 2));
        assert_eq!(st.steps.len(), 3);
        assert_eq!(st.steps[2].0, "nft -f - #2");
        assert!((st.steps[1].1 - 1.118683).abs() < 1e-6, "{st:?}");
        // Nearest rank: the median of two samples is the lower one.
        assert!((st.rest.0 - (50.0 - 26.473387)).abs() < 1e-6, "{st:?}");
        assert_eq!(st.total, (50.0, 60.0));
        assert_eq!(event_at(&runs, "cleaning up"), Some(stop[0].0));
        assert!(step_meaning("stop", "nft -f - #2").contains("second"));
        assert!(step_meaning("start", "vm connected to bridge fvmbench0").contains("veth"));
        assert_eq!(step_meaning("start", "something new"), "");
    }

    #[test]
    fn the_address_comes_from_inspect() {
        let json = "{\n  \"name\": \"b\",\n  \"ip\": \"10.231.0.2\",\n  \"network\": {\n    \"ip\": \"10.231.0.2/22\"\n  }\n}";
        assert_eq!(parse_ip(json), Some(Ipv4Addr::new(10, 231, 0, 2)));
        assert_eq!(parse_ip("{\"ip\": null}"), None);
    }

    #[test]
    fn subnets_avoid_host_routes() {
        let routes = route_destinations(
            "default via 192.0.2.1 dev eth0\n\
             192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2\n\
             10.231.0.0/23 dev br0\n\
             local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1\n\
             broadcast 10.231.5.255 dev br1 table local\n",
        );
        assert_eq!(routes.len(), 4, "{routes:?}");
        let net = pick_subnet(None, 100, &routes).unwrap();
        // 10.231.0.0/22 overlaps the /23, 10.231.4.0/22 the broadcast address.
        assert_eq!(net.to_string(), "10.231.8.0/22");
        assert_eq!(
            pick_subnet(None, 2000, &[]).unwrap().to_string(),
            "10.231.0.0/21"
        );
        assert!(pick_subnet(Some("10.231.1.0/24"), 10, &routes).is_err());
        assert!(pick_subnet(Some("10.9.9.0/28"), 100, &routes).is_err());
        assert!(pick_subnet(Some("10.9.9.1/24"), 10, &routes).is_err());
        assert_eq!(
            pick_subnet(Some("10.9.9.0/24"), 100, &routes)
                .unwrap()
                .to_string(),
            "10.9.9.0/24"
        );
    }

    #[test]
    fn renders_every_table_with_ratios() {
        let pair = |b: f64, h: f64| Pair {
            bridge: vec![b; 3],
            host: vec![h; 3],
        };
        let runs = vec![(50.0, events(START))];
        let stops = vec![(50.0, events(STOP))];
        let fleet = |ms: f64| Fleet {
            create_s: 1.0,
            start_ms: vec![ms; 20],
            stop_ms: vec![ms / 2.0; 20],
            delete_s: 2.0,
        };
        let b = NetworkBench {
            bridge: "fvmbench0".into(),
            subnet: "10.231.0.0/22".into(),
            rounds: 3,
            warmup: 1,
            cpus: 2,
            start: pair(40.0, 5.0),
            stop: pair(45.0, 4.5),
            start_steps: steps(&runs).unwrap(),
            stop_steps: steps(&stops).unwrap(),
            cloned_at: (Some(2.5), Some(2.0)),
            gone_at: (Some(3.6), Some(3.0)),
            mib: 1024,
            transfers: 3,
            vm_ip: "10.231.0.2".into(),
            rates: pair(2.0, 4.0),
            vms: 20,
            fleet_bridge: fleet(60.0),
            fleet_host: fleet(6.0),
            took_s: 42.0,
        };
        let md = render(&b, "bench/run --network-only", "d", "k", "s");
        assert_eq!(
            md,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/network.md"))
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        for want in [
            "Produced by `bench/run --network-only`.",
            "`fvm --root DIR network --bridge fvmbench0 --subnet 10.231.0.0/22`",
            "| start, bridge | `fvm --root DIR start VM` | 40.00 | 40.00 | 40.00 | 8.00× |",
            "| stop, host | `fvm --root DIR stop VM` | 4.50 | 4.50 | 4.50 | 1.00× |",
            "bridge / host: start 8.00x, stop 10.00x.",
            "| start | \"vm connected to bridge fvmbench0\" |",
            "| stop | \"nft -f - #2\" |",
            "1 GiB over one TCP connection",
            "| loopback on the host | `fvm-bench recv --listen 127.0.0.1:0` | 4.00 | 4.00 | 4.00 | 1.00× |",
            "into the VM / loopback: 0.50x (0.50, 0.50, 0.50).",
            "| start 20 bridged VMs | `fvm --root DIR start VM-N` | 1.20 | 60.00 | 60.00 | 60.00 | 60.00 | 10.00× |",
            "first 2, median ms",
            "measuring this section took 42 s",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
    }
}

//! The "Network" section of docs/BENCHMARKS.md: what a VM with a network of its own
//! (`--net bridge`: a network namespace, a veth to the store's bridge, an address, a
//! default route, the VM's own rules in the store's nft tables) costs next
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

mod fleet;
mod startstop;
mod subnet;
mod transfer;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::measure::{check_output, median_ratio, round_ratios, time_command};
use crate::store::{Store, Sweep, Swept};
use fleet::{FLEET_BRIDGED, FLEET_HOSTED, Fleet};
use startstop::Steps;
pub use subnet::choose_subnet;

pub const BEGIN: &str = "<!-- bench:network:begin -->";
pub const END: &str = "<!-- bench:network:end -->";

/// The VMs timed one at a time.
const BRIDGED: &str = "net-bridge";
const HOSTED: &str = "net-host";

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
        round_ratios(&self.bridge, &self.host)
    }

    /// Their median.
    pub fn ratio(&self) -> Option<f64> {
        median_ratio(&self.bridge, &self.host)
    }
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

    startstop::latency(store, p, &mut b)?;
    startstop::breakdown(store, p.rounds, &cleanup.inner.table, &mut b)?;
    transfer::measure(store, p, &mut b)?;
    eprintln!("fvm-bench: network: {} bridged VMs", p.vms);
    b.fleet_bridge = fleet::measure(store, FLEET_BRIDGED, true, p.vms)?;
    eprintln!("fvm-bench: network: {} host VMs", p.vms);
    b.fleet_host = fleet::measure(store, FLEET_HOSTED, false, p.vms)?;

    store.delete(BRIDGED)?;
    store.delete(HOSTED)?;
    cleanup.finish()?;
    b.took_s = began.elapsed().as_secs_f64();
    Ok(b)
}

/// `fvm create NAME [--net bridge]`.
pub(crate) fn create(store: &Store, name: &str, bridged: bool) -> Command {
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

pub(crate) fn nft_table_exists(family: &str, table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `fvmbench0`, or the next such name that no link has.
pub fn free_bridge_name() -> Result<String> {
    (0..100)
        .map(|i| format!("fvmbench{i}"))
        .find(|n| !Path::new("/sys/class/net").join(n).exists())
        .context("fvmbench0 to fvmbench99 are all taken")
}

/// The address `fvm inspect` shows for a bridged VM.
pub(crate) fn vm_ip(store: &Store, name: &str) -> Result<Ipv4Addr> {
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

/// The section, markers included.
pub fn render(b: &NetworkBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
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
    startstop::render(&mut s, b);
    transfer::render(&mut s, b);
    fleet::render(&mut s, b);
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::startstop::{START, STOP, events, steps};
    use super::*;

    #[test]
    fn the_address_comes_from_inspect() {
        let json = "{\n  \"name\": \"b\",\n  \"ip\": \"10.231.0.2\",\n  \"network\": {\n    \"ip\": \"10.231.0.2/22\"\n  }\n}";
        assert_eq!(parse_ip(json), Some(Ipv4Addr::new(10, 231, 0, 2)));
        assert_eq!(parse_ip("{\"ip\": null}"), None);
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

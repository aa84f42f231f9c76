//! The store's watcher (`fvm-watch`), other stores' watchers, and the CPU time
//! of processes, from /proc.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::store::Store;

/// How long the watcher may take to appear after a start, or to exit after the
/// store's last VM stopped.
const WATCHER_WAIT: Duration = Duration::from_secs(10);

/// The pid of the store's watcher, if it runs: `STORE/watch.pid`, checked
/// against the process's name.
pub(super) fn watcher_pid(store: &Store) -> Option<u32> {
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
pub(crate) fn wait_for_watcher(store: &Store, running: bool) -> Result<()> {
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
pub(super) fn other_watchers(ours: Option<u32>) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != ours && is_watcher(*pid))
        .count()
}

/// User + system CPU time of a process, in clock ticks.
pub(super) fn cpu_ticks(pid: u32) -> Result<u64> {
    stat_ticks(&format!("/proc/{pid}/stat"), UTIME)
}

/// User + system CPU time of this process's waited-for children, in clock ticks.
pub(super) fn children_cpu_ticks() -> Result<u64> {
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

/// What the store's watcher did: CPU time, wakeups, and the events it read
/// (its own counters, which it writes to `STORE/watch.stats` on SIGUSR1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Probe {
    pub cpu_ms: f64,
    /// Voluntary context switches (`/proc/PID/status`): one per sleep.
    pub wakeups: u64,
    pub own_events: u64,
    pub host_events: u64,
}

impl Probe {
    /// What happened between `before` and this.
    pub(crate) fn since(&self, before: &Probe) -> Probe {
        Probe {
            cpu_ms: self.cpu_ms - before.cpu_ms,
            wakeups: self.wakeups.saturating_sub(before.wakeups),
            own_events: self.own_events.saturating_sub(before.own_events),
            host_events: self.host_events.saturating_sub(before.host_events),
        }
    }
}

/// The store's watcher's counters now (it must run); `counters`: ask it for its
/// event counts too (a watcher of an fvm before them would die of the SIGUSR1).
pub(crate) fn probe(store: &Store, counters: bool) -> Result<Probe> {
    let pid = watcher_pid(store).context("the store's watcher does not run")?;
    let cpu_ms = cpu_ticks(pid)? as f64 * 1000.0 / clock_ticks();
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let wakeups = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    if !counters {
        return Ok(Probe {
            cpu_ms,
            wakeups,
            ..Probe::default()
        });
    }
    let stats_path = store.root().join("watch.stats");
    let _ = fs::remove_file(&stats_path);
    crate::measure::check_output(Command::new("kill").arg("-USR1").arg(pid.to_string()))
        .context("signalling the watcher")?;
    let deadline = Instant::now() + WATCHER_WAIT;
    let stats = loop {
        if let Ok(text) = fs::read_to_string(&stats_path) {
            break text;
        }
        if Instant::now() >= deadline {
            bail!(
                "the watcher wrote no {} after SIGUSR1",
                stats_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let field = |key: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let wakeups = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Ok(Probe {
        cpu_ms: cpu_ticks(pid)? as f64 * 1000.0 / clock_ticks(),
        wakeups,
        own_events: field("own_events "),
        host_events: field("host_events "),
    })
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
pub(super) fn clock_ticks() -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_come_from_the_numbered_fields() {
        let stat = "4242 (fvm (watch) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 17 5 3 4 20 0 1 0";
        assert_eq!(parse_ticks(stat, UTIME), Some(22));
        assert_eq!(parse_ticks(stat, CUTIME), Some(7));
        assert_eq!(parse_ticks("1 (x) S 1", UTIME), None);
    }
}

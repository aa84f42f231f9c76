//! The "Services and logs" section of docs/BENCHMARKS.md: what the logging path
//! costs (a detached command writing N MiB of lines through the VM's logs,
//! against the same command writing to /dev/null), and what services add to a
//! VM's start (a VM with 5 services against one without), measured in the same
//! run, alternating the subjects round by round.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, Result};

use crate::measure::{Stats, Subject, run_interleaved};
use crate::store::Store;
use crate::table::Align::Right as R;
use crate::table::{Table, ratio};

pub const BEGIN: &str = "<!-- bench:services:begin -->";
pub const END: &str = "<!-- bench:services:end -->";

/// The VM the detached commands run in.
const LOGGER: &str = "logger";
/// The VMs whose start is timed.
const WITH: &str = "svc5";
const WITHOUT: &str = "svc0";
const SERVICES: usize = 5;

#[derive(Debug, Clone)]
pub struct Params {
    pub rounds: usize,
    /// MiB of output per detached command.
    pub log_mib: usize,
}

/// What the section measured: (subject, command as shown, seconds) per part.
#[derive(Debug)]
pub struct ServicesBench {
    pub params: Params,
    pub logging: Vec<(String, String, Stats)>,
    pub start: Vec<(String, String, Stats)>,
}

/// A shell command: `fvm run -d` of `script` in the logger VM, then wait (polling
/// the end of its log every 2 ms, the same for both subjects) until the init has
/// noted the command's end, which it does after its last line.
fn detached(store: &Store, script: &str) -> Command {
    let fvm_line = fvm_line(store);
    let log = store.vm_dir(LOGGER).join("logs/run.log");
    let wait = format!(
        "out=$({fvm_line} run -d {LOGGER} -- sh -c \"{script}\"); pid=${{out##* }}; \
         while ! tail -c 4096 '{}' | grep -qF \"\\\"pid\\\":$pid,\\\"stream\\\":\\\"fvm\\\",\\\"line\\\":\\\"ended\"; \
         do sleep 0.002; done",
        log.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-ec", &wait]);
    cmd
}

/// `fvm start VM`, then `fvm service VM status`, which the init answers once it
/// has started every service.
fn start(store: &Store, vm: &str) -> Command {
    let mut cmd = Command::new("sh");
    let fvm_line = fvm_line(store);
    cmd.args([
        "-ec",
        &format!("{fvm_line} start {vm} >/dev/null && {fvm_line} service {vm} status >/dev/null"),
    ]);
    cmd
}

/// The store's fvm command as a shell would take it.
fn fvm_line(store: &Store) -> String {
    let fvm = store.fvm();
    std::iter::once(fvm.get_program())
        .chain(fvm.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn stats(samples: Vec<crate::measure::Samples>) -> Result<Vec<(String, String, Stats)>> {
    samples
        .into_iter()
        .map(|s| {
            let secs: Vec<f64> = s.ms.iter().map(|ms| ms / 1000.0).collect();
            let st = Stats::of(&secs).with_context(|| format!("no samples for {}", s.name))?;
            Ok((s.name, s.shown, st))
        })
        .collect()
}

pub fn measure(store: &Store, p: &Params) -> Result<ServicesBench> {
    let rounds = p.rounds.max(1);
    // The logging path.
    store.create(LOGGER)?;
    store.start(LOGGER)?;
    // 100-byte lines.
    let lines = format!("yes {} | head -c {}M", "x".repeat(99), p.log_mib);
    let shown = format!("yes x…x | head -c {}M", p.log_mib);
    let logged = Subject::new(
        "to the logs",
        format!("fvm run -d VM -- sh -c '{shown}' (until its end is logged)"),
        |_| detached(store, &lines),
    );
    let null_gen = format!("{lines} > /dev/null");
    let nulled = Subject::new(
        "to /dev/null",
        format!("fvm run -d VM -- sh -c '{shown} > /dev/null' (until its end is logged)"),
        |_| detached(store, &null_gen),
    );
    eprintln!(
        "fvm-bench: services: logging {} MiB, 1 warm-up + {rounds} rounds",
        p.log_mib
    );
    let logging = stats(run_interleaved(&mut [logged, nulled], 1, rounds)?)?;
    store.stop(LOGGER)?;
    store.delete(LOGGER)?;

    // The start of a VM with services.
    store.create(WITH)?;
    store.create(WITHOUT)?;
    let mut config = store.fvm();
    config.args(["config", WITH]);
    for i in 0..SERVICES {
        config.args(["--service", &format!("s{i}=exec sleep 100000")]);
    }
    crate::measure::check_output(&mut config)?;
    let with = Subject::new(
        format!("{SERVICES} services"),
        "fvm start VM && fvm service VM status".to_owned(),
        |_| start(store, WITH),
    )
    .after(|_| store.stop(WITH));
    let without = Subject::new(
        "no services",
        "fvm start VM && fvm service VM status".to_owned(),
        |_| start(store, WITHOUT),
    )
    .after(|_| store.stop(WITHOUT));
    eprintln!("fvm-bench: services: start, 1 warm-up + {rounds} rounds");
    let start = stats(run_interleaved(&mut [with, without], 1, rounds)?)?;
    store.delete(WITH)?;
    store.delete(WITHOUT)?;
    Ok(ServicesBench {
        params: p.clone(),
        logging,
        start,
    })
}

/// The section, markers included.
pub fn render(
    b: &ServicesBench,
    invocation: &str,
    date: &str,
    kernel: &str,
    store: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n## Services and logs\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- store: {store}\n- rounds: {} timed, after 1 \
         warm-up; each round runs both subjects of a table once, in a new random order\n",
        b.params.rounds
    );
    let _ = writeln!(
        s,
        "The logging path: a detached command writes {} MiB of 100-byte lines; the time \
         is from `fvm run -d` until the VM's init has logged the command's end (after \
         its last line), polled every 2 ms. The baseline writes the same lines to \
         /dev/null, so the difference is what the init's reading, splitting, \
         time-stamping and writing (with rotation at 2 MiB) costs. Seconds.\n",
        b.params.log_mib
    );
    let mut table = Table::of_stats("s", &[("MiB/s (median)", R), ("vs /dev/null", R)]);
    let base = b
        .logging
        .iter()
        .find(|(n, _, _)| n.contains("null"))
        .map(|(_, _, st)| st.median);
    for (name, shown, st) in &b.logging {
        table.stats_row(
            name,
            shown,
            st,
            3,
            [
                format!("{:.1}", b.params.log_mib as f64 / st.median),
                ratio(st.median, base),
            ],
        );
    }
    s.push_str(&table.render());
    let _ = writeln!(
        s,
        "\nThe start of a VM: `fvm start`, then `fvm service VM status`, which the \
         init answers once it has started every service (each `exec sleep`). Seconds.\n"
    );
    let mut table = Table::of_stats("s", &[("vs none", R)]);
    let base = b
        .start
        .iter()
        .find(|(n, _, _)| n.starts_with("no"))
        .map(|(_, _, st)| st.median);
    for (name, shown, st) in &b.start {
        table.stats_row(name, shown, st, 3, [ratio(st.median, base)]);
    }
    s.push_str(&table.render());
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_tables_with_ratios_to_their_baselines() {
        let st = |m: f64| Stats {
            median: m,
            p10: m,
            p90: m,
        };
        let b = ServicesBench {
            params: Params {
                rounds: 3,
                log_mib: 8,
            },
            logging: vec![
                ("to the logs".into(), "fvm run -d".into(), st(2.0)),
                ("to /dev/null".into(), "fvm run -d".into(), st(1.0)),
            ],
            start: vec![
                ("5 services".into(), "fvm start".into(), st(0.3)),
                ("no services".into(), "fvm start".into(), st(0.2)),
            ],
        };
        let md = render(&b, "bench/run", "2000-01-01", "6.0", "/tmp (ext4)");
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        assert!(md.contains("| 4.0 | 2.00× |"), "{md}");
        assert!(md.contains("| 1.50× |"), "{md}");
    }
}

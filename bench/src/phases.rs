//! Where the time of a cold `fvm run` goes, from fvm's own timing events.
//!
//! `fvm -vv` logs a debug event, with the time since fvm started, at each step of a
//! VM start (the VM's init logs too, with the same clock). Running a cold
//! `fvm -vv run VM -- /bin/true` many times and taking the median gap between
//! consecutive events splits the whole command into its phases; what is left of
//! the wall time is process start-up before fvm's `main` and its exit.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::measure::percentile;
use crate::table::Align::{Left as L, Right as R};
use crate::table::Table;

pub const BEGIN: &str = "<!-- bench:phases:begin -->";
pub const END: &str = "<!-- bench:phases:end -->";

/// The events, in order, and what happens between the previous one and it.
pub const PHASES: [(&str, &str); 7] = [
    (
        "mount plan built",
        "fvm parses its arguments, takes the VM's lock, reads policy and state, reads the host mount table and builds the mount plan",
    ),
    (
        "layers and cgroup ready",
        "layer directories checked, the VM's cgroup created",
    ),
    (
        "init: in the vm's cgroup",
        "clone3 into new mount/pid/IPC/UTS namespaces; the init closes inherited files and joins the cgroup",
    ),
    (
        "init: root assembled",
        "one overlay per host mount, pivot_root, fresh /proc, /sys, /dev, /run",
    ),
    ("vm assembled", "the init reports ready to fvm"),
    (
        "command ended",
        "the init forks and execs /bin/true, which runs and exits; the exit is reported",
    ),
    (
        "teardown handed off",
        "fvm takes the VM's lock, records how the VM is ending and forks the process that waits for the init and cleans up after it (`fvm-teardown`), without waiting for it",
    ),
];

/// Median and p90 of each phase, in milliseconds, plus the rest of the wall time.
#[derive(Debug)]
pub struct Phases {
    pub rounds: usize,
    /// Runs left out: they lacked one of the usual events.
    pub other: usize,
    pub phases: Vec<(f64, f64)>,
    pub rest: (f64, f64),
    pub total: (f64, f64),
}

/// Times of the events in one `fvm -vv` stderr, in seconds since fvm started.
pub fn parse(stderr: &str) -> Result<Vec<f64>> {
    PHASES
        .iter()
        .map(|(event, _)| {
            stderr
                .lines()
                .find(|l| l.contains(event))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|t| t.strip_suffix('s'))
                .and_then(|t| t.parse::<f64>().ok())
                .with_context(|| format!("no {event:?} event in fvm's -vv output"))
        })
        .collect()
}

pub fn measure(fvm: &Path, root: &Path, vm: &str, rounds: usize) -> Result<Phases> {
    let mut per_phase: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    let (mut rest, mut total) = (Vec::new(), Vec::new());
    let mut other = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let out = Command::new(fvm)
            .arg("-vv")
            .arg("--root")
            .arg(root)
            .args(["run", vm, "--", "/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .context("running fvm -vv run")?;
        let wall = start.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!(
                "fvm -vv run failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // A run whose VM the store's watcher cleaned up first (it found the
        // init gone in the moment before `fvm run` took the VM's lock) cleans
        // up itself instead of handing the teardown off: not counted.
        let Ok(times) = parse(&String::from_utf8_lossy(&out.stderr)) else {
            other += 1;
            continue;
        };
        let mut prev = 0.0;
        for (i, t) in times.iter().enumerate() {
            per_phase[i].push((t - prev) * 1000.0);
            prev = *t;
        }
        rest.push(wall - prev * 1000.0);
        total.push(wall);
    }
    let stat = |mut v: Vec<f64>| -> Result<(f64, f64)> {
        v.sort_by(f64::total_cmp);
        match (percentile(&v, 50.0), percentile(&v, 90.0)) {
            (Some(m), Some(p90)) => Ok((m, p90)),
            _ => bail!("no samples"),
        }
    };
    if other * 2 > rounds {
        bail!("{other} of {rounds} cold runs lacked one of the usual -vv events");
    }
    Ok(Phases {
        rounds,
        other,
        phases: per_phase.into_iter().map(stat).collect::<Result<_>>()?,
        rest: stat(rest)?,
        total: stat(total)?,
    })
}

pub fn render(p: &Phases, invocation: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n## Where a cold run's time goes\n");
    let _ = writeln!(
        s,
        "Produced by `{invocation}`: {} cold runs of `fvm -vv run VM -- /bin/true`, \
         after the startup rounds. Each phase is the median gap between two of fvm's own \
         timing events (`-vv` prints them); medians don't add up exactly to the median total. \
         {} of them had every event and are counted (a run whose VM the store's watcher \
         cleaned up first cleans up itself and has no \"teardown handed off\").\n",
        p.rounds,
        p.rounds - p.other
    );
    let mut table = Table::new(&[
        ("phase", L),
        ("what happens", L),
        ("median ms", R),
        ("p90 ms", R),
    ]);
    for ((event, what), (median, p90)) in PHASES.iter().zip(&p.phases) {
        table.row([
            format!("until \"{event}\""),
            (*what).to_owned(),
            format!("{median:.2}"),
            format!("{p90:.2}"),
        ]);
    }
    table.row([
        "the rest".to_owned(),
        "exec of fvm and its libraries before `main`, exit".to_owned(),
        format!("{:.2}", p.rest.0),
        format!("{:.2}", p.rest.1),
    ]);
    table.row([
        "**total**".to_owned(),
        "wall time of the command".to_owned(),
        format!("**{:.2}**", p.total.0),
        format!("{:.2}", p.total.1),
    ]);
    s.push_str(&table.render());
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "  0.000300000s DEBUG mount plan built vm=c overlays=2
  0.000500000s DEBUG layers and cgroup ready vm=c
  0.001300000s DEBUG init cloned and recorded vm=c pid=7
  0.001200000s DEBUG init: in the vm's cgroup
  0.002000000s DEBUG init: root assembled
  0.002100000s DEBUG vm assembled vm=c
  0.003100000s DEBUG command ended vm=c result=Ok(..)
  0.003400000s DEBUG teardown handed off vm=c
";

    #[test]
    fn parses_the_events_in_phase_order() {
        let t = parse(SAMPLE).unwrap();
        assert_eq!(t.len(), PHASES.len());
        assert!((t[2] - 0.0012).abs() < 1e-9, "{t:?}");
        assert!((t[6] - 0.0034).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn a_missing_event_is_an_error() {
        let e = parse("  0.1s DEBUG mount plan built\n").unwrap_err();
        assert!(e.to_string().contains("layers and cgroup ready"), "{e}");
    }

    #[test]
    fn renders_a_section_with_markers() {
        let p = Phases {
            rounds: 3,
            other: 0,
            phases: vec![(0.1, 0.2); PHASES.len()],
            rest: (0.5, 0.6),
            total: (1.3, 1.5),
        };
        let s = render(&p, "bench/run");
        assert_eq!(
            s,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/phases.md"))
        );
        assert!(s.starts_with(BEGIN) && s.trim_end().ends_with(END));
        assert!(s.contains("| **total** |"));
    }
}

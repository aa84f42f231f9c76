//! Start and stop of one bridged and one host VM, and where a bridged start's and
//! stop's time goes, from fvm's own `-vv` timing events.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{BRIDGED, HOSTED, NetworkBench, Pair, Params, ms, nft_table_exists, verb};
use crate::measure::{Stats, Subject, run_interleaved};
use crate::store::Store;
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, factor as x, ratio};

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

/// Start/stop rounds: each round starts and stops each VM once, in a new random
/// order (the stop runs right after its start, timed by the subject's after-hook).
pub(super) fn latency(store: &Store, p: &Params, b: &mut NetworkBench) -> Result<()> {
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
pub(super) fn breakdown(
    store: &Store,
    runs: usize,
    table: &str,
    b: &mut NetworkBench,
) -> Result<()> {
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
            "under the store's network lock: the bridge found; a veth pair made in one request, its host end on the bridge, the VM's end created inside the VM's namespace as eth0; lo, the address and the default route set there (netlink)",
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

/// The start/stop table and the breakdown table.
pub fn render(s: &mut String, b: &NetworkBench) {
    let at = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2} ms"));

    let _ = writeln!(
        s,
        "Start and stop of one bridged VM and one host VM, {} rounds after {} warm-up; \
         each round starts and stops both (each stop right after its start), in a new \
         random order. Wall-clock time of the whole command, in milliseconds.\n",
        b.rounds, b.warmup
    );
    let mut table = Table::of_stats("ms", &[("vs host", R)]);
    for (verb, pair) in [("start", &b.start), ("stop", &b.stop)] {
        let host = Stats::of(&pair.host).map(|st| st.median);
        for (label, samples) in [("bridge", &pair.bridge), ("host", &pair.host)] {
            let Some(st) = Stats::of(samples) else {
                continue;
            };
            table.stats_row(
                &format!("{verb}, {label}"),
                &format!("fvm --root DIR {verb} VM"),
                &st,
                2,
                [ratio(st.median, host)],
            );
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
        at(b.cloned_at.0),
        at(b.cloned_at.1),
        at(b.gone_at.0),
        at(b.gone_at.1)
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
}

/// A bridged VM's `fvm -vv start` stderr.
#[cfg(test)]
pub(super) const START: &str = "   0.000602516s DEBUG mount plan built vm=b overlays=2
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

/// A bridged VM's `fvm -vv stop` stderr.
#[cfg(test)]
pub(super) const STOP: &str = "   0.003622606s DEBUG cleaning up after a vm that is gone vm=b
   0.004741289s DEBUG nft -f - script=table inet fvm-eee0af39
   0.026473387s DEBUG nft -f - script=table inet fvm-eee0af39
";

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! The latency half of the section: how soon a running VM's reader sees a host
//! file replaced, next to a reader on the host.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::watcher::{other_watchers, watcher_pid};
use crate::measure::{SplitMix64, describe, percentile};
use crate::store::Store;
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, code};

/// The VM the latency reader runs in.
const READER_VM: &str = "hc-reader";
/// Gap between two changes, in microseconds, uniform in this range.
const GAP_US: (u64, u64) = (150_000, 200_000);
/// How often the readers re-read the file, in microseconds.
const READ_EVERY_US: u64 = 1000;
/// What the last change writes; a reader exits when it reads it.
const LAST: &str = "stop";
/// How long a reader may take to read the last change.
const LAST_WAIT: Duration = Duration::from_secs(10);

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

/// The readers' view of `changes` changes of a file in `dir`.
pub(super) fn measure(store: &Store, dir: &Path, changes: usize) -> Result<Latency> {
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

/// The latency's text and table.
pub fn render(s: &mut String, changes: usize, l: &Latency) {
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
        changes,
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
}

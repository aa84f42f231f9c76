//! Interleaved wall-clock timing of whole commands, and nearest-rank statistics.
//!
//! Every round runs every subject once, in a freshly shuffled order, so that machine
//! noise (frequency scaling, page-cache churn, a neighbour's compile) lands on all
//! subjects alike instead of on whichever subject happened to run during the spike.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Builds the command a subject runs in a given round.
type MakeCommand<'a> = Box<dyn FnMut(usize) -> Command + 'a>;
/// Work after a timed run (cleanup, disk accounting), outside the timed section.
type AfterRun<'a> = Box<dyn FnMut(usize) -> Result<()> + 'a>;

/// One thing being timed: a command line, rebuilt per round so it can use unique names.
pub struct Subject<'a> {
    pub name: String,
    /// The command as shown in the report.
    pub shown: String,
    make: MakeCommand<'a>,
    after: Option<AfterRun<'a>>,
}

impl std::fmt::Debug for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject")
            .field("name", &self.name)
            .field("shown", &self.shown)
            .finish_non_exhaustive()
    }
}

impl<'a> Subject<'a> {
    pub fn new(
        name: impl Into<String>,
        shown: impl Into<String>,
        make: impl FnMut(usize) -> Command + 'a,
    ) -> Self {
        Self {
            name: name.into(),
            shown: shown.into(),
            make: Box::new(make),
            after: None,
        }
    }

    /// Runs `after(round)` once the timed command has exited, outside the timing.
    pub fn after(mut self, after: impl FnMut(usize) -> Result<()> + 'a) -> Self {
        self.after = Some(Box::new(after));
        self
    }
}

/// Samples of one subject, in milliseconds, in the order they were taken.
#[derive(Debug, Clone)]
pub struct Samples {
    pub name: String,
    pub shown: String,
    pub ms: Vec<f64>,
}

/// Runs `warmup` untimed rounds, then `runs` timed rounds, each subject once per round.
pub fn run_interleaved(
    subjects: &mut [Subject<'_>],
    warmup: usize,
    runs: usize,
) -> Result<Vec<Samples>> {
    let mut out: Vec<Samples> = subjects
        .iter()
        .map(|s| Samples {
            name: s.name.clone(),
            shown: s.shown.clone(),
            ms: Vec::with_capacity(runs),
        })
        .collect();
    let mut rng = SplitMix64::from_clock();
    let mut order: Vec<usize> = (0..subjects.len()).collect();
    let total = warmup + runs;
    let progress_every = (total / 10).max(1);
    for round in 0..total {
        rng.shuffle(&mut order);
        let timed = round >= warmup;
        for &i in &order {
            let subject = &mut subjects[i];
            let mut cmd = (subject.make)(round);
            if timed {
                let took = time_command(&mut cmd)
                    .with_context(|| format!("{} (round {round})", subject.name))?;
                out[i].ms.push(took.as_secs_f64() * 1000.0);
            } else {
                // Warm-up is untimed, so keep stderr: most failures show up here first.
                check_output(&mut cmd)
                    .with_context(|| format!("{} (warm-up round {round})", subject.name))?;
            }
            if let Some(after) = subject.after.as_mut() {
                after(round).with_context(|| format!("after {} (round {round})", subject.name))?;
            }
        }
        if (round + 1) % progress_every == 0 || round + 1 == total {
            eprintln!("fvm-bench: round {}/{total}", round + 1);
        }
    }
    Ok(out)
}

/// Wall-clock time from spawn to reaped exit; a non-zero status is an error.
pub fn time_command(cmd: &mut Command) -> Result<Duration> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", describe(cmd)))?;
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", describe(cmd)))?;
    let took = start.elapsed();
    if !status.success() {
        bail!(
            "{} exited with {status} (stderr is discarded in timed rounds; run it by hand to see why)",
            describe(cmd)
        );
    }
    Ok(took)
}

/// Runs a command to completion, failing with its stderr if it does not exit 0.
pub fn check_output(cmd: &mut Command) -> Result<()> {
    stdout_of(cmd).map(drop)
}

/// Runs a command to completion and returns its stdout, failing with its stderr
/// if it does not exit 0.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("spawning {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line as a shell user would type it, for error messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Median, p10 and p90 of one subject's samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
}

impl Stats {
    /// `None` for an empty sample set.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            median: percentile(&sorted, 50.0)?,
            p10: percentile(&sorted, 10.0)?,
            p90: percentile(&sorted, 90.0)?,
        })
    }
}

/// Per round, `num[i] / den[i]`, leaving out the rounds whose `den` is not positive.
pub fn round_ratios(num: &[f64], den: &[f64]) -> Vec<f64> {
    num.iter()
        .zip(den)
        .filter(|(_, d)| **d > 0.0)
        .map(|(n, d)| n / d)
        .collect()
}

/// The median of the per-round ratios ([`round_ratios`]).
pub fn median_ratio(num: &[f64], den: &[f64]) -> Option<f64> {
    Stats::of(&round_ratios(num, den)).map(|s| s.median)
}

/// Nearest-rank percentile of already sorted samples: the smallest sample such that at
/// least `p` percent of the samples are less than or equal to it.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A tiny PRNG for shuffling the run order (and jittering the host-changes
/// benchmark's schedule); statistical quality is irrelevant here.
#[derive(Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn from_clock() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(nanos ^ u64::from(std::process::id()))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher–Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_per_round() {
        assert_eq!(round_ratios(&[2.0, 9.0, 3.0], &[1.0, 0.0, 1.0]), [2.0, 3.0]);
        assert_eq!(median_ratio(&[2.0, 9.0, 3.0], &[1.0, 3.0, 1.0]), Some(3.0));
        assert_eq!(median_ratio(&[], &[]), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 10.0), Some(1.0));
        assert_eq!(percentile(&sorted, 50.0), Some(5.0));
        assert_eq!(percentile(&sorted, 90.0), Some(9.0));
        assert_eq!(percentile(&sorted, 100.0), Some(10.0));
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
    }

    #[test]
    fn stats_sort_their_input() {
        let stats = Stats::of(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            stats,
            Stats {
                median: 3.0,
                p10: 1.0,
                p90: 5.0
            }
        );
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = SplitMix64(42);
        let mut v: Vec<usize> = (0..20).collect();
        rng.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn interleaved_rounds_time_every_subject() {
        let mut afters = Vec::new();
        let mut subjects = vec![
            Subject::new("true", "/bin/true", |_| Command::new("/bin/true")),
            Subject::new("sh", "sh -c :", |_| {
                let mut c = Command::new("/bin/sh");
                c.args(["-c", ":"]);
                c
            })
            .after(|round| {
                afters.push(round);
                Ok(())
            }),
        ];
        let samples = run_interleaved(&mut subjects, 2, 3).unwrap();
        drop(subjects);
        assert_eq!(samples.len(), 2);
        assert!(samples.iter().all(|s| s.ms.len() == 3));
        assert_eq!(afters, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn failing_subject_is_an_error() {
        let mut subjects = vec![Subject::new("false", "/bin/false", |_| {
            Command::new("/bin/false")
        })];
        let err = run_interleaved(&mut subjects, 0, 1).unwrap_err();
        assert!(format!("{err:#}").contains("exited with"), "{err:#}");
    }
}

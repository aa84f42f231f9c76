//! Skipping tests visibly, for the tests of this workspace (the engine's unit
//! tests and fvm's end-to-end tests). Not part of fvm's interface.
//!
//! A test that cannot run here (no root, a missing tool) returns early and so is
//! reported as passed. To keep that from passing unnoticed, [`skip`]:
//! - with `FVM_MUST_RUN=1` fails the test instead;
//! - otherwise records it, and when the test binary exits writes to stderr, under
//!   the harness's `test result:` line, how many of the tests it counted as passed
//!   did not run, one `SKIP (reason): test` line each. Written at exit and not by
//!   the test: the harness captures a passing test's output (and would interleave
//!   an uncaptured line with its own).

use std::io::Write;
use std::sync::Mutex;

/// The skips of this process so far: (kind, reason, test); kind is `SKIP` or
/// `PART SKIPPED`.
static SKIPPED: Mutex<Vec<(&str, String, String)>> = Mutex::new(Vec::new());

/// Whether `FVM_MUST_RUN=1` is set: every skip is then a failure.
pub fn must_run() -> bool {
    std::env::var_os("FVM_MUST_RUN").is_some_and(|v| v == "1")
}

/// Record that `test` does not run here because of `reason` (e.g. "needs root").
/// Panics under `FVM_MUST_RUN=1`; otherwise prints and counts the skip. Returns
/// false, so a test can say `if !ready() { return skip(..) }`-style checks.
#[track_caller]
pub fn skip(test: &str, reason: &str) -> bool {
    assert!(
        !must_run(),
        "{test} was not run ({reason}), and FVM_MUST_RUN=1 makes a skipped test a failure"
    );
    record("SKIP", test, reason);
    false
}

/// Record that a part of `test` does not run here because of `reason`, where
/// nothing on this host can make it run (e.g. the kernel lacks the feature) and
/// the rest of the test covers the fallback. Listed in the summary like a skip,
/// and not a failure under `FVM_MUST_RUN=1`.
pub fn part_skipped(test: &str, reason: &str) {
    record("PART SKIPPED", test, reason);
}

fn record(kind: &'static str, test: &str, reason: &str) {
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() {
        // Best effort: without the summary, the test still passes or fails as it
        // would have.
        let _ = crate::os::sys::at_exit(print_summary);
    }
    skipped.push((kind, reason.to_owned(), test.to_owned()));
}

/// True if running as root; otherwise [`skip`]s `test`.
#[track_caller]
pub fn require_root(test: &str) -> bool {
    rustix::process::geteuid().is_root() || skip(test, "needs root")
}

/// Run at exit: the count of skipped tests, after the harness's summary line.
extern "C" fn print_summary() {
    // try_lock: a test thread still running at exit must not block the exit.
    let Ok(skipped) = SKIPPED.try_lock() else {
        return;
    };
    let whole = skipped.iter().filter(|(kind, ..)| *kind == "SKIP").count();
    let mut text = format!(
        "\nSKIPPED: {whole} of the tests counted as passed above did not run \
         (FVM_MUST_RUN=1 makes each a failure), and {} ran only in part:\n",
        skipped.len() - whole
    );
    for (kind, reason, test) in skipped.iter() {
        text.push_str(&format!("  {kind} ({reason}): {test}\n"));
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Property tests: run `check` on `count` cases, each from its own seeded random
/// generator. The seeds are fixed (the same cases on every run, so a run can't
/// pass by luck) unless `FVM_TEST_SEED` gives another base. A failing case names
/// its seed, and `FVM_TEST_SEED=<seed>` with count 1 replays it first.
///
/// A seeded loop rather than a property-testing framework: the generators here are
/// a few lines each, the cases are reproducible from one number, and every run is
/// bounded by `count`.
#[cfg(test)]
#[track_caller]
pub fn cases(name: &str, count: u64, mut check: impl FnMut(&mut fastrand::Rng)) {
    let base = std::env::var("FVM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x00f0_0d5e_ed00);
    for i in 0..count {
        let seed = base.wrapping_add(i);
        let mut rng = fastrand::Rng::with_seed(seed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mut rng)));
        if let Err(panic) = result {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("{name}: case {i} failed (replay with FVM_TEST_SEED={seed}): {why}");
        }
    }
}

/// Up to `max` random bytes, weighted towards the ones parsers treat specially.
#[cfg(test)]
pub fn bytes(rng: &mut fastrand::Rng, max: usize, special: &[u8]) -> Vec<u8> {
    let len = rng.usize(..=max);
    (0..len)
        .map(|_| {
            if !special.is_empty() && rng.u8(..) < 160 {
                special[rng.usize(..special.len())]
            } else {
                rng.u8(..)
            }
        })
        .collect()
}

/// A random egress rule, as `--allow`/`--deny` could give it.
#[cfg(test)]
pub fn rule(rng: &mut fastrand::Rng) -> crate::net::Rule {
    use crate::net::{Ipv4Net, Proto, Rule};
    let net = Ipv4Net {
        addr: std::net::Ipv4Addr::from(rng.u32(..)),
        prefix: rng.u8(..=32),
    };
    let port = rng.bool().then(|| rng.u16(1..));
    let proto = port.and_then(|_| [Some(Proto::Tcp), Some(Proto::Udp), None][rng.usize(..3)]);
    Rule {
        net: net.trunc(),
        port,
        proto,
    }
}

/// A random published port, as `--publish` could give it.
#[cfg(test)]
pub fn publish(rng: &mut fastrand::Rng) -> crate::net::Publish {
    use crate::net::{Proto, Publish};
    Publish {
        host_port: rng.u16(1..),
        vm_port: rng.u16(1..),
        proto: if rng.bool() { Proto::Tcp } else { Proto::Udp },
    }
}

/// A random string of any characters, weighted towards the ones that need
/// quoting (quotes, backslashes, newlines, control and multi-byte characters).
#[cfg(test)]
pub fn text(rng: &mut fastrand::Rng, max: usize) -> String {
    const SPECIAL: &[char] = &[
        '"',
        '\'',
        '\\',
        '\n',
        '\r',
        '\t',
        '\0',
        '\u{7f}',
        '#',
        '=',
        '[',
        ']',
        '{',
        '}',
        'é',
        '…',
        '\u{feff}',
        '\u{10ffff}',
        ' ',
    ];
    (0..rng.usize(..=max))
        .map(|_| {
            if rng.bool() {
                SPECIAL[rng.usize(..SPECIAL.len())]
            } else {
                rng.char(..)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    /// Turns `skipping_child` into a test that skips.
    const CHILD_ENV: &str = "FVM_TESTING_SKIP_CHILD";

    /// Not a test by itself: without the variable it does nothing. The test
    /// below runs the test binary again with only this test selected.
    #[test]
    fn skipping_child() {
        if std::env::var_os(CHILD_ENV).is_some() {
            super::skip("the_skipping_child", "needs something");
            super::part_skipped("the_partly_skipping_child", "lacks a part");
        }
    }

    /// Run `skipping_child` in its own test process; (exit code, stdout + stderr).
    fn run_child(must_run: bool) -> (Option<i32>, String) {
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([&format!("{module}::skipping_child"), "--exact"])
            .env(CHILD_ENV, "1")
            .env_remove("FVM_MUST_RUN")
            .stdin(Stdio::null());
        if must_run {
            cmd.env("FVM_MUST_RUN", "1");
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    }

    #[test]
    fn a_skip_is_listed_after_the_summary_and_fails_under_must_run() {
        let (code, text) = run_child(false);
        assert_eq!(code, Some(0), "{text}");
        let result = text.find("test result: ok. 1 passed").expect(&text);
        let listed = text
            .find("SKIPPED: 1 of the tests counted as passed above did not run")
            .expect(&text);
        assert!(listed > result, "the skips come after the summary:\n{text}");
        assert!(
            text.contains("  SKIP (needs something): the_skipping_child\n"),
            "{text}"
        );
        assert!(
            text.contains("  PART SKIPPED (lacks a part): the_partly_skipping_child\n"),
            "{text}"
        );

        let (code, text) = run_child(true);
        assert_eq!(code, Some(101), "{text}");
        assert!(
            text.contains(
                "the_skipping_child was not run (needs something), and FVM_MUST_RUN=1 \
                 makes a skipped test a failure"
            ),
            "{text}"
        );
    }
}

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

/// The skips of this process so far: (reason, test).
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

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
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() {
        // The summary is best effort: without it each skip was still printed.
        let _ = crate::sys::at_exit(print_summary);
    }
    skipped.push((reason.to_owned(), test.to_owned()));
    false
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
    let mut text = format!(
        "\nSKIPPED: {} of the tests counted as passed above did not run \
         (FVM_MUST_RUN=1 makes each a failure):\n",
        skipped.len()
    );
    for (reason, test) in skipped.iter() {
        text.push_str(&format!("  SKIP ({reason}): {test}\n"));
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
}

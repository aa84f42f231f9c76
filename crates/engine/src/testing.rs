//! Helpers for the engine's unit tests.

/// True if running as root. Otherwise prints the skip, or fails under FVM_MUST_RUN=1.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("FVM_MUST_RUN").is_none_or(|v| v != "1"),
        "FVM_MUST_RUN=1 but {test} needs root"
    );
    println!("SKIP (needs root): {test}");
    false
}

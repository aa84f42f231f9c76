//! `fvm suspend` / `fvm resume`: a suspended VM's processes make no progress and
//! carry on after resume; `list` says "suspended"; nothing can enter a suspended
//! VM; it can be copied, committed and stopped.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestStore, needs_root, spawn_host};

/// The counter's file as the VM's layer holds it (readable while the VM is frozen).
fn layer_file(store: &TestStore, vm: &str, rel: &str) -> Option<PathBuf> {
    let layers = store.root.join("vms").join(vm).join("layers");
    std::fs::read_dir(layers)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("upper").join(rel))
        .find(|p| p.exists())
}

/// The counter's value, read from the layer; retried over a rewrite in progress.
fn count(path: &Path) -> u64 {
    for _ in 0..50 {
        if let Some(n) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no count in {}", path.display());
}

/// A shell loop that counts in `dir/count`, one step every 50 ms (each value
/// renamed into place whole). No single quotes: it goes inside them.
fn counter(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "i=0; while :; do i=$((i+1)); echo $i > {d}/count.new; mv {d}/count.new {d}/count; \
         sleep 0.05; done"
    )
}

/// Wait until `f` holds, for at most 10 s.
#[track_caller]
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_suspended_vm_makes_no_progress_until_resumed() {
    if !needs_root("a_suspended_vm_makes_no_progress_until_resumed") {
        return;
    }
    let store = TestStore::new("suspend");
    store.create("sus");
    store.start("sus");
    let rel = "var/tmp/fvm-test-suspend/count";
    store
        .sh(
            "sus",
            &format!(
                "mkdir -p /var/tmp/fvm-test-suspend && nohup sh -c '{}' >/dev/null 2>&1 &",
                counter(Path::new("/var/tmp/fvm-test-suspend"))
            ),
        )
        .ok();
    let mut file = None;
    wait_for("the counter's first values", || {
        file = layer_file(&store, "sus", rel);
        file.as_deref().is_some_and(|f| count(f) >= 3)
    });
    let file = file.unwrap();

    assert_eq!(store.fvm(&["suspend", "sus"]).ok().out(), "sus");
    assert_eq!(store.status("sus"), "suspended");
    // Suspending again is no error and changes nothing.
    store.fvm(&["suspend", "sus"]).ok();
    let frozen_at = count(&file);
    // As long as the same counter outside the VM takes to count 10 (which load
    // slows as much as the VM's), the VM's counts nothing.
    let outside = tempfile::tempdir().unwrap();
    let outside_file = outside.path().join("count");
    let outside_counter = spawn_host(&["sh", "-c", &counter(outside.path()), "fvm-test-counter"]);
    wait_for("the counter outside the vm to count 10", || {
        outside_file.exists() && count(&outside_file) >= 10
    });
    assert_eq!(count(&file), frozen_at, "the counter ran while suspended");
    drop(outside_counter);

    // Nothing enters a frozen VM (it would freeze on the spot).
    let out = store.fvm(&["run", "sus", "--", "true"]).code(125);
    assert_eq!(
        out.stderr.trim(),
        "fvm: vm \"sus\" is suspended (fvm resume sus first)"
    );
    // A suspended VM is copied as it stands, and committing leaves it suspended.
    store.fvm(&["copy", "sus", "clone"]).ok();
    let out = store.sh("clone", &format!("cat /{rel}")).ok();
    assert_eq!(out.out(), frozen_at.to_string());
    store
        .fvm(&["commit", "sus", "--dry-run", "/var/tmp/fvm-test-suspend"])
        .ok();
    assert_eq!(store.status("sus"), "suspended");

    assert_eq!(store.fvm(&["resume", "sus"]).ok().out(), "sus");
    assert_eq!(store.status("sus"), "running");
    wait_for("the counter to go on after resume", || {
        count(&file) > frozen_at
    });
    store.fvm(&["resume", "sus"]).ok();

    // A suspended VM is resumed to take the SIGTERM: it ends by it, not killed
    // after the grace time (which fvm would report).
    store.fvm(&["suspend", "sus"]).ok();
    let out = store.fvm(&["stop", "--time", "30", "sus"]).ok();
    assert_eq!((out.out(), out.stderr.as_str()), ("sus", ""), "{out}");
    assert_eq!(store.status("sus"), "stopped");

    // delete --force of a suspended VM kills it (a frozen process takes no signal
    // until thawed).
    store.fvm(&["suspend", "clone"]).code(125);
    store.start("clone");
    store.fvm(&["suspend", "clone"]).ok();
    store.fvm(&["delete", "--force", "clone"]).ok();
    assert!(!store.vm_dirs().contains(&"clone".to_owned()));

    for verb in ["suspend", "resume"] {
        let out = store.fvm(&[verb, "sus"]).code(125);
        assert_eq!(out.stderr.trim(), "fvm: vm \"sus\" is not running");
        let out = store.fvm(&[verb, "nope"]).code(125);
        assert_eq!(out.stderr.trim(), "fvm: vm \"nope\" does not exist");
    }
    store.assert_clean();
}

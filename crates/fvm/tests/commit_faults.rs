//! `fvm commit` under faults: a new directory of 100,000 files planned and
//! committed under a memory cap, commits SIGKILLed at random points of stopped and
//! running VMs, a full commit target, forged and unreadable journals, and what
//! `delete`, `--abort` and `doctor --cleanup` do with an unfinished commit.

mod changes_support;
mod common;

use std::path::Path;
use std::process::Command;

use changes_support::{commit_temps, journal, parse_plan, vm_python};
use common::{TestStore, needs_root, needs_tool, run, temp_dir};

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// `fvm ARGS` on `store` with its address space capped at `bytes` (`prlimit`).
fn fvm_capped(store: &TestStore, bytes: u64, args: &[&str]) -> common::Out {
    let inner = store.command(args);
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={bytes}"))
        .arg(inner.get_program())
        .args(inner.get_args());
    cmd.env_remove("FVM_ROOT");
    run(cmd, None)
}

const MAKE_MANY: &str = r#"
import os, sys
d = os.path.join(sys.argv[1], "many")
os.mkdir(d)
for i in range(int(sys.argv[2])):
    open(os.path.join(d, "f%06d" % i), "w").close()
"#;

/// A directory of 100,000 new files is planned and committed in memory linear in
/// its size: both fit under a 1 GiB address space (a plan that added the whole
/// directory again for each of its files needed tens of GB for this).
#[test]
fn a_new_directory_of_100k_files_commits_under_a_memory_cap() {
    let test = "a_new_directory_of_100k_files_commits_under_a_memory_cap";
    if !needs_root(test) || !needs_tool(test, "prlimit") {
        return;
    }
    const N: usize = 100_000;
    const CAP: u64 = 1 << 30;
    let store = TestStore::new("many");
    let dir = temp_dir("many");
    let h = dir.path();
    store.create("many");
    vm_python(&store, "many", MAKE_MANY, &[s(h), &N.to_string()]).ok();
    let dry = fvm_capped(&store, CAP, &["commit", "many", s(h), "--dry-run"]).ok();
    let plan = parse_plan(&dry);
    // The directory, its files, and H itself (it holds a change).
    assert_eq!(plan.len(), N + 2, "{}", &dry.stderr);
    fvm_capped(&store, CAP, &["commit", "many", s(h)]).ok();
    assert_eq!(std::fs::read_dir(h.join("many")).unwrap().count(), N);
    assert_eq!(commit_temps(h), Vec::<String>::new());
    assert!(!journal(&store, "many").exists());
    store.assert_clean();
}

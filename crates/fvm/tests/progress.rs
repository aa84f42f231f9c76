//! Long operations: a progress bar on a terminal and nothing on a pipe (commit,
//! copy), and a `delete` that takes the VM out of the store at once and removes
//! its layers afterwards, with a delete cut short finished by the next command
//! or `doctor --cleanup`.

mod common;

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use common::{Out, TestStore, needs_root, needs_tool, run, temp_dir, wait_until};

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// `fvm ARGS` on `store` under a pseudo-terminal (`script`): what a terminal
/// shows, stdout and stderr together.
fn fvm_on_tty(store: &TestStore, args: &[&str]) -> Out {
    let mut line = format!("{} --root {}", common::FVM, store.root.display());
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    run(cmd, None)
}

/// The store's `.trash-*` entries.
fn trash(store: &TestStore) -> Vec<String> {
    store
        .vm_dirs()
        .into_iter()
        .filter(|n| n.starts_with(".trash-"))
        .collect()
}

#[test]
fn commit_and_copy_show_progress_on_a_terminal_and_none_on_a_pipe() {
    if !needs_root("commit_and_copy_show_progress_on_a_terminal_and_none_on_a_pipe")
        || !needs_tool(
            "commit_and_copy_show_progress_on_a_terminal_and_none_on_a_pipe",
            "script",
        )
    {
        return;
    }
    let store = TestStore::new("pg");
    let dir = temp_dir("pg");
    let h = dir.path();
    let script = format!(
        "set -e; cd {h}; for d in a b; do mkdir $d; i=0; while [ $i -lt 600 ]; do : > $d/f$i; i=$((i+1)); done; done; head -c 70000000 /dev/zero > big",
        h = s(h)
    );
    store.create("pg");
    store.sh("pg", &script).ok();
    // A copy of 70 MB: a bar on a terminal, nothing on a pipe.
    let tty = fvm_on_tty(&store, &["copy", "pg", "pg2"]).ok();
    assert!(tty.stdout.contains("copying"), "{tty}");
    let piped = store.fvm(&["copy", "pg", "pg3"]).ok();
    assert_eq!(piped.stderr, "", "{piped}");
    // A commit of 600 changes: the same.
    let tty = fvm_on_tty(&store, &["commit", "pg", s(&h.join("a"))]).ok();
    assert!(tty.stdout.contains("committing"), "{tty}");
    let piped = store.fvm(&["commit", "pg", s(&h.join("b"))]).ok();
    assert_eq!(piped.stderr, "", "{piped}");
    assert_eq!(piped.out(), "committed 601 changes", "{piped}");
}

/// `delete` takes the VM out of the store before its layers are gone: the name
/// is free at once, and the layers are removed in the background.
#[test]
fn delete_frees_the_name_at_once_and_removes_the_layers_after() {
    if !needs_root("delete_frees_the_name_at_once_and_removes_the_layers_after") {
        return;
    }
    let store = TestStore::new("del");
    store.create("dl");
    store
        .sh(
            "dl",
            "mkdir -p /root/fvm-del && i=0; while [ $i -lt 2000 ]; do echo $i > /root/fvm-del/f$i; i=$((i+1)); done",
        )
        .ok();
    let out = store.fvm(&["delete", "dl"]).ok();
    assert_eq!(out.out(), "dl");
    assert!(!store.vm_dirs().contains(&"dl".to_owned()));
    assert!(store.list().is_empty());
    // The name is free again at once.
    store.create("dl");
    wait_until("the deleted vm's trash is removed", || {
        trash(&store).is_empty()
    });
    store.fvm(&["delete", "dl"]).ok();
    wait_until("the second trash is removed", || trash(&store).is_empty());
    store.assert_clean();
}

/// A delete cut short (its trash left, nobody holding its lock) is finished by
/// the next command on the store, or by `doctor --cleanup`; a trash whose delete
/// is still at work (its lock held) is left to it.
#[test]
fn a_delete_cut_short_is_finished_and_one_at_work_is_left_alone() {
    if !needs_root("a_delete_cut_short_is_finished_and_one_at_work_is_left_alone") {
        return;
    }
    let store = TestStore::new("delcrash");
    let vms = store.root.join("vms");
    for name in ["c1", "c2", "c3"] {
        store.create(name);
        store
            .sh(name, "mkdir -p /root/fvm-cut && echo x > /root/fvm-cut/f")
            .ok();
    }
    // As if killed after the rename into the trash: c1 is finished by the
    // next command, c2 by `doctor --cleanup`.
    std::fs::rename(vms.join("c1"), vms.join(".trash-c1-999999")).unwrap();
    store.fvm(&["list"]).ok();
    assert_eq!(trash(&store), Vec::<String>::new());
    std::fs::rename(vms.join("c2"), vms.join(".trash-c2-999998")).unwrap();
    std::fs::rename(vms.join("c3"), vms.join(".trash-c3-999997")).unwrap();
    // c3's delete is still at work: it holds the lock that moved with the dir.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vms.join(".trash-c3-999997/lock"))
        .unwrap();
    rustix::fs::flock(held.as_fd(), rustix::fs::FlockOperation::LockExclusive).unwrap();
    store.fvm(&["doctor", "--cleanup"]).ok();
    assert_eq!(trash(&store), [".trash-c3-999997"], "c2 finished, c3 left");
    store.fvm(&["list"]).ok();
    assert_eq!(trash(&store), [".trash-c3-999997"], "c3 left");
    drop(held);
    store.fvm(&["list"]).ok();
    assert_eq!(trash(&store), Vec::<String>::new());
    store.assert_clean();
}

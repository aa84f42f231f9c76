//! Long operations: a progress bar on a terminal and nothing on a pipe (commit,
//! copy), and a `delete` that takes the VM out of the store at once and removes
//! its layers afterwards, with a delete cut short finished by the next command
//! (by a process of its own) or `doctor --cleanup` (before it returns).

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
    // (It hands the removal to a process of its own, and doesn't wait for it.)
    wait_until("the next command finishes the delete", || {
        trash(&store).is_empty()
    });
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
    wait_until("the next command finishes c3", || trash(&store).is_empty());
    store.assert_clean();
}

/// The pids of the processes named `fvm-delete` that have a file of `store`
/// open: the removers this test's deletes started, and no one else's.
fn removers(store: &TestStore) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if common::live_comm(pid).as_deref() != Some("fvm-delete") {
            continue;
        }
        let ours = std::fs::read_dir(e.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(&store.root)));
        if ours {
            pids.push(pid);
        }
    }
    pids
}

/// A VM whose layers are in a directory of the user's choice (`--dir`), with
/// 299,000 files: `diff` counts the entries it reads on a terminal and says
/// nothing through a pipe; `delete` returns while its layers are still there
/// (the VM gone from the store, its dir still hidden in VMs until it is gone);
/// its remover killed half-way, the next command finishes the job. Symlinks the
/// VM planted in its layer are removed, never followed.
#[test]
fn a_large_dir_vm_shows_diff_progress_and_its_delete_returns_at_once_and_survives_a_kill() {
    let test =
        "a_large_dir_vm_shows_diff_progress_and_its_delete_returns_at_once_and_survives_a_kill";
    if !needs_root(test) || !needs_tool(test, "script") {
        return;
    }
    let store = TestStore::new("pgdir");
    let outside = temp_dir("pgdir");
    let vmdir = outside.path().join("vm-layers");
    let precious = outside.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("keep"), "keep me\n").unwrap();
    let h = temp_dir("pgdir-h");
    store.create_with("big", &["--dir", s(&vmdir)]);
    let script = format!(
        "set -e; mkdir {h}/d0; : > {h}/d0/f; ln -s {p} {h}/to-dir; ln -s {f} {h}/d0/to-file",
        h = s(h.path()),
        p = s(&precious),
        f = s(&precious.join("keep")),
    );
    store.sh("big", &script).ok();
    // The bulk is written straight into the stopped VM's layer (as the VM's
    // writes would land there), as hard links: making an inode costs this host
    // about 0.3 ms, a link a tenth of that, and each link is an entry of the
    // layer all the same.
    let upper = vmdir
        .join("-/upper")
        .join(h.path().strip_prefix("/").unwrap());
    assert!(
        upper.join("d0/f").exists(),
        "the layer is not where expected"
    );
    for d in 1..300 {
        let sub = upper.join(format!("d{d}"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::File::create(sub.join("f0")).unwrap();
        for i in 1..1000 {
            std::fs::hard_link(sub.join("f0"), sub.join(format!("f{i}"))).unwrap();
        }
    }

    // diff: a count of the entries read on a terminal, nothing through a pipe.
    let tty = fvm_on_tty(&store, &["diff", "big", s(h.path()), "--stat"]).ok();
    assert!(tty.stdout.contains("reading the vm's layers"), "{tty}");
    let piped = store.fvm(&["diff", "big", s(h.path()), "--stat"]).ok();
    assert_eq!(piped.stderr, "", "{piped}");
    assert!(piped.stdout.contains(" 299303 "), "{piped}");

    // delete: back at once, with nothing to draw; the layers go after.
    let del = fvm_on_tty(&store, &["delete", "big"]).ok();
    assert_eq!(del.out(), "big", "{del}");
    assert!(store.list().is_empty());
    assert!(!store.vm_dirs().contains(&"big".to_owned()));
    // (Beside the layers, the dir holds its owner mark, which goes last.)
    let layers = || {
        std::fs::read_dir(&vmdir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name() != ".fvm-owner")
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        layers() > 0,
        "the delete returned after its layers were gone"
    );
    let index = std::fs::read_to_string(store.root.join("dirs")).unwrap_or_default();
    assert!(
        index.lines().any(|l| Path::new(l) == vmdir),
        "the dir stays hidden in VMs until it is gone: {index:?}"
    );
    // Its remover killed half-way: what is left is finished by the next command.
    let mut pids = Vec::new();
    wait_until("the deleted vm's remover runs", || {
        pids = removers(&store);
        !pids.is_empty()
    });
    common::kill9(&pids);
    wait_until("the remover is gone", || {
        pids.iter().all(|p| !common::is_alive_as(*p, "fvm-delete"))
    });
    assert!(
        !trash(&store).is_empty() && layers() > 0,
        "the remover was killed half-way: {:?}",
        trash(&store)
    );
    store.fvm(&["list"]).ok();
    // It doesn't wait for that many files to go: a remover of its own does.
    assert!(
        layers() > 0,
        "the next command held everything up until the layers were gone"
    );
    wait_until("the next command finishes the delete", || {
        trash(&store).is_empty()
    });
    assert!(!vmdir.exists(), "the dir is removed");
    let index = std::fs::read_to_string(store.root.join("dirs")).unwrap_or_default();
    assert!(!index.contains(s(&vmdir)), "{index:?}");
    assert_eq!(
        std::fs::read_to_string(precious.join("keep")).unwrap(),
        "keep me\n",
        "a symlink in the layer was followed"
    );
    store.assert_clean();
}

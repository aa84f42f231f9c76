//! Several fvm commands on one VM at once: they must not disturb each other.

mod common;

use common::{TestStore, needs_root, wait_until};

/// A command waits in the VM until a file shows up in the VM's private /run.
fn wait_for(file: &str) -> String {
    format!("while [ ! -e /run/{file} ]; do sleep 0.05; done")
}

#[test]
fn a_command_entering_a_vm_started_by_a_cold_run_outlives_that_run() {
    if !needs_root("a_command_entering_a_vm_started_by_a_cold_run_outlives_that_run") {
        return;
    }
    let store = TestStore::new("outlive");
    store.create("share");
    // `first` starts the stopped VM for its command, which ends once `second` has
    // joined the VM.
    let first = store.background(&[
        "run",
        "share",
        "--",
        "sh",
        "-c",
        &format!("{}; echo first", wait_for("fvm-go1")),
    ]);
    wait_until("the vm runs", || store.status("share") == "running");
    let second = store.background(&[
        "run",
        "share",
        "--",
        "sh",
        "-c",
        &format!("touch /run/fvm-go1; {}; echo second", wait_for("fvm-go2")),
    ]);
    let first = first.finish();
    assert_eq!((first.code, first.out()), (0, "first"), "{first}");

    // `second` still runs in the VM: let it finish.
    store
        .fvm(&["run", "share", "--", "touch", "/run/fvm-go2"])
        .ok();
    let second = second.finish();
    assert_eq!(
        (second.code, second.out()),
        (0, "second"),
        "a command in the vm was killed when the `run` that started the vm ended:\n{second}"
    );
    // Its last process has exited: the VM stops.
    wait_until("the vm has stopped", || store.status("share") == "stopped");
    store.assert_clean();
}

#[test]
fn parallel_runs_on_a_stopped_vm_all_complete() {
    if !needs_root("parallel_runs_on_a_stopped_vm_all_complete") {
        return;
    }
    let store = TestStore::new("parallel");
    store.create("par");
    let runs: Vec<_> = (0..6)
        .map(|i| {
            store.background(&[
                "run",
                "par",
                "--",
                "sh",
                "-c",
                &format!("sleep 0.3; echo ok-{i}"),
            ])
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let out = r.finish();
        assert_eq!(out.code, 0, "run {i} of 6 on the same vm failed:\n{out}");
        assert_eq!(out.out(), format!("ok-{i}"), "{out}");
    }
    wait_until("the vm has stopped", || store.status("par") == "stopped");
    store.assert_clean();
}

#[test]
fn parallel_starts_start_the_vm_once() {
    if !needs_root("parallel_starts_start_the_vm_once") {
        return;
    }
    let store = TestStore::new("starts");
    store.create("once");
    let starts: Vec<_> = (0..4)
        .map(|_| store.background(&["start", "once"]))
        .collect();
    let outs: Vec<_> = starts.into_iter().map(|s| s.finish()).collect();
    let won = outs.iter().filter(|o| o.code == 0).count();
    assert_eq!(won, 1, "exactly one start succeeds: {outs:#?}");
    for o in outs.iter().filter(|o| o.code != 0) {
        assert_eq!(o.code, 125, "{o}");
        assert!(o.stderr.contains("already running"), "{o}");
    }
    assert_eq!(store.status("once"), "running");
    let pids = store.vm_pids("once");
    let inits = pids
        .iter()
        .filter(|&&p| common::is_alive_as(p, "fvm-init"))
        .count();
    assert_eq!(inits, 1, "one init in the vm's cgroup: {pids:?}");
    store.assert_clean();
}

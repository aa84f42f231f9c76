//! Crashes: a VM whose init was SIGKILLed, or whose whole `fvm run` process tree
//! was, is seen as stopped, works again, and leaves nothing behind.

mod common;

use std::path::PathBuf;

use common::{TestStore, is_alive_as, kill9, needs_root, wait_until};

/// The VM's cgroup dirs as `inspect` names them.
fn cgroup_dirs(store: &TestStore, name: &str) -> Vec<PathBuf> {
    store.inspect(name)["cgroup"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(PathBuf::from))
        .collect()
}

#[track_caller]
fn assert_no_cgroup(store: &TestStore, name: &str) {
    let dirs = cgroup_dirs(store, name);
    assert!(!dirs.is_empty(), "inspect {name} names no cgroup dirs");
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroup dirs left after stop: {left:?}");
}

#[test]
fn a_vm_whose_init_was_killed_is_stopped_and_works_again() {
    if !needs_root("a_vm_whose_init_was_killed_is_stopped_and_works_again") {
        return;
    }
    let store = TestStore::new("killinit");
    store.create("k1");
    store.start("k1");
    let init = store.init_pid("k1").expect("a started vm has an init");
    assert!(is_alive_as(init, "fvm-init"));

    kill9(&[init]);
    wait_until("the init is gone", || !is_alive_as(init, "fvm-init"));
    assert_eq!(store.status("k1"), "stopped");
    assert!(store.inspect("k1")["init"].is_null());

    // start works, and so does a command in the restarted VM.
    store.start("k1");
    let new_init = store.init_pid("k1").expect("restarted vm has an init");
    assert!(is_alive_as(new_init, "fvm-init"));
    let out = store.sh("k1", "cat /proc/1/comm").ok();
    assert_eq!(out.out(), "fvm-init");
    store.stop("k1");
    assert_eq!(store.status("k1"), "stopped");
    assert_no_cgroup(&store, "k1");

    // Killed again: a cold run works too, and stops the VM afterwards.
    store.start("k1");
    let init = store.init_pid("k1").unwrap();
    kill9(&[init]);
    wait_until("the init is gone", || !is_alive_as(init, "fvm-init"));
    let out = store.sh("k1", "echo alive").ok();
    assert_eq!(out.out(), "alive");
    assert_eq!(store.status("k1"), "stopped");
    assert_no_cgroup(&store, "k1");
    store.assert_clean();
}

#[test]
fn doctor_cleanup_removes_the_cgroup_of_a_crashed_vm() {
    if !needs_root("doctor_cleanup_removes_the_cgroup_of_a_crashed_vm") {
        return;
    }
    let store = TestStore::new("doctor");
    store.create("k3");
    store.start("k3");
    let init = store.init_pid("k3").unwrap();
    let dirs = cgroup_dirs(&store, "k3");
    assert!(
        dirs.iter().all(|d| d.exists()),
        "a running vm has its cgroup"
    );
    kill9(&[init]);
    wait_until("the init is gone", || !is_alive_as(init, "fvm-init"));

    store.fvm(&["doctor", "--cleanup"]);
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "doctor --cleanup left {left:?}");
    assert_eq!(store.status("k3"), "stopped");
    // The VM itself is kept: it was not a throw-away one.
    store.sh("k3", "true").ok();
    store.assert_clean();
}

#[test]
fn a_killed_run_process_tree_leaves_a_stopped_vm() {
    if !needs_root("a_killed_run_process_tree_leaves_a_stopped_vm") {
        return;
    }
    let store = TestStore::new("killrun");
    store.create("k2");
    // A cold run: this fvm process started the VM for its command.
    let mut fvm = store.spawn(&["run", "k2", "--", "sleep", "100"]);
    let mut init = None;
    let mut sleep = None;
    wait_until("the vm runs its command", || {
        let v = store.inspect("k2");
        init = v["init"]["pid"].as_i64().map(|p| p as i32);
        if init.is_none() {
            return false;
        }
        sleep = store
            .vm_pids("k2")
            .into_iter()
            .find(|&p| is_alive_as(p, "sleep"));
        sleep.is_some()
    });
    let (init, sleep) = (init.unwrap(), sleep.unwrap());
    assert!(is_alive_as(init, "fvm-init"));

    kill9(&[fvm.pid(), init]);
    assert_eq!(fvm.wait(), 128 + 9, "fvm was killed by SIGKILL");
    wait_until("the init and the command are gone", || {
        !is_alive_as(init, "fvm-init") && !is_alive_as(sleep, "sleep")
    });

    assert_eq!(store.status("k2"), "stopped");
    store.start("k2");
    let out = store.sh("k2", "echo $FVM_NAME").ok();
    assert_eq!(out.out(), "k2");
    store.stop("k2");
    assert_no_cgroup(&store, "k2");
    let dirs = cgroup_dirs(&store, "k2");
    store.fvm(&["delete", "k2"]).ok();
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroup dirs left after delete: {left:?}");
    assert!(store.list().is_empty());
    store.assert_clean();
}

#[test]
fn leftovers_of_crashed_commands_are_cleaned_up() {
    if !needs_root("leftovers_of_crashed_commands_are_cleaned_up") {
        return;
    }
    let store = TestStore::new("halfmade");
    store.create("ok1");
    store.create("bad-state");
    // What a create or delete killed halfway leaves in the store.
    let vms = store.root.join("vms");
    for leftover in [".new-half-4242", ".trash-gone-4242"] {
        std::fs::create_dir(vms.join(leftover)).unwrap();
        std::fs::write(vms.join(leftover).join("vm.toml"), "name = \"x\"\n").unwrap();
    }
    // A state file cut short.
    std::fs::write(vms.join("bad-state/state.json"), "{\"status\": \"runn").unwrap();

    let names: Vec<String> = store
        .list()
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["bad-state", "ok1"], "half-made vms are not listed");
    store.fvm(&["doctor", "--cleanup"]);
    assert!(!vms.join(".new-half-4242").exists());
    assert!(!vms.join(".trash-gone-4242").exists());
    // A VM with a broken state file runs no process: it can be deleted.
    store.fvm(&["delete", "bad-state"]).ok();
    store.sh("ok1", "true").ok();
    store.assert_clean();
}

/// A state file planted to name a process that is not the VM's init (here the
/// host's own PID 1, with its real start time and boot id) must not make fvm
/// signal or enter that process: the VM counts as stopped, `stop` leaves the host
/// process alone, and `run` starts the VM's own init.
#[test]
fn a_planted_state_naming_a_host_process_is_not_believed() {
    if !needs_root("a_planted_state_naming_a_host_process_is_not_believed") {
        return;
    }
    let store = TestStore::new("planted");
    store.create("p1");
    let stat = std::fs::read_to_string("/proc/1/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    let start_time: u64 = after.split_whitespace().nth(19).unwrap().parse().unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let planted = serde_json::json!({
        "status": "running",
        "init": {"pid": 1, "start_time": start_time, "boot_id": boot_id.trim()},
        "mode": "background",
    });
    std::fs::write(
        store.root.join("vms/p1/state.json"),
        serde_json::to_string(&planted).unwrap(),
    )
    .unwrap();

    assert_eq!(store.status("p1"), "stopped");
    let out = store.fvm(&["stop", "p1"]).ok();
    assert!(out.stderr.contains("already stopped"), "{}", out.stderr);
    let host_init = std::fs::read_to_string("/proc/1/stat").unwrap();
    assert!(
        host_init.contains(&format!(" {start_time} ")),
        "host pid 1 changed"
    );
    let out = store.sh("p1", "cat /proc/1/comm").ok();
    assert_eq!(out.out(), "fvm-init");
    assert_eq!(store.status("p1"), "stopped");
}

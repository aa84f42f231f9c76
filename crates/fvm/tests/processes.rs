//! What runs in a VM: fvm's init as PID 1, only the VM's own processes, the VM's
//! identity, and nothing of it after `stop` (double-forked daemons included).

mod common;

use std::collections::BTreeMap;

use common::{TestStore, host_process_count, is_alive_as, needs_root, spawn_host, wait_until};

/// `comm` of every process the VM's /proc shows, by pid.
const LIST_PROCESSES: &str =
    "for p in /proc/[0-9]*; do printf '%s %s\\n' \"${p#/proc/}\" \"$(cat $p/comm)\"; done";

fn parse_processes(text: &str) -> BTreeMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let (pid, comm) = l.split_once(' ')?;
            Some((pid.parse().ok()?, comm.to_owned()))
        })
        .collect()
}

#[test]
fn init_identity_and_process_list() {
    if !needs_root("init_identity_and_process_list") {
        return;
    }
    let store = TestStore::new("ident");
    store.create("ident1");
    // A host process the VM must not see.
    let host_sleep = spawn_host(&["sleep", "1000"]);
    assert!(is_alive_as(host_sleep.pid(), "sleep"));

    // Cold run: the command starts the VM.
    let out = store
        .sh(
            "ident1",
            "cat /proc/1/comm; hostname; echo \"$FVM_NAME\"; cat /proc/sys/kernel/hostname",
        )
        .ok();
    assert_eq!(out.out(), "fvm-init\nident1\nident1\nident1", "{out}");

    // Started VM: the same from a command that enters it.
    store.start("ident1");
    let out = store
        .sh("ident1", "cat /proc/1/comm; hostname; echo \"$FVM_NAME\"")
        .ok();
    assert_eq!(out.out(), "fvm-init\nident1\nident1", "{out}");

    let listing = store.sh("ident1", LIST_PROCESSES).ok();
    let procs = parse_processes(&listing.stdout);
    assert_eq!(
        procs.get(&1).map(String::as_str),
        Some("fvm-init"),
        "{listing}"
    );
    assert!(
        !procs.values().any(|c| c == "sleep"),
        "the vm sees a host process:\n{listing}"
    );
    // init, the shell, and the odd `cat` it forks: a handful, not the host's many.
    assert!(
        procs.len() <= 5,
        "the vm sees too many processes:\n{listing}"
    );
    assert!(
        procs.len() < host_process_count(),
        "the vm sees as many processes as the host:\n{listing}"
    );

    // Its own pid, mount, uts, ipc and cgroup namespaces; its cgroup is its root.
    let kinds = ["pid", "mnt", "uts", "ipc", "cgroup"];
    let script: String = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}; "))
        .collect();
    let out = store
        .sh("ident1", &format!("{script} cat /proc/self/cgroup"))
        .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    for (i, kind) in kinds.iter().enumerate() {
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        assert_ne!(
            lines[i],
            host.to_str().unwrap(),
            "the vm shares the host's {kind} namespace"
        );
    }
    for l in &lines[kinds.len()..] {
        assert!(
            l.ends_with(":/"),
            "the vm sees a host cgroup path: {l}\n{out}"
        );
    }

    // The host's hostname is untouched.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "ident1");
    drop(host_sleep);
    store.assert_clean();
}

#[test]
fn vms_do_not_see_each_others_processes() {
    if !needs_root("vms_do_not_see_each_others_processes") {
        return;
    }
    let store = TestStore::new("peers");
    store.create("left");
    store.create("right");
    store.start("left");
    store.start("right");
    store
        .sh(
            "left",
            "(setsid sleep 1001 </dev/null >/dev/null 2>&1 &) ; exit 0",
        )
        .ok();
    wait_until("the sleep runs in vm left", || {
        store
            .vm_pids("left")
            .iter()
            .any(|&p| is_alive_as(p, "sleep"))
    });
    let left = parse_processes(&store.sh("left", LIST_PROCESSES).ok().stdout);
    assert!(left.values().any(|c| c == "sleep"), "{left:?}");
    let right = parse_processes(&store.sh("right", LIST_PROCESSES).ok().stdout);
    assert!(
        !right.values().any(|c| c == "sleep"),
        "vm right sees vm left's process: {right:?}"
    );
    store.assert_clean();
}

#[test]
fn stop_ends_a_double_forked_daemon() {
    if !needs_root("stop_ends_a_double_forked_daemon") {
        return;
    }
    let store = TestStore::new("daemon");
    store.create("d1");
    store.start("d1");
    store
        .sh(
            "d1",
            "(setsid sleep 1000 </dev/null >/dev/null 2>&1 &) ; exit 0",
        )
        .ok();
    let mut sleeps = Vec::new();
    wait_until("the daemon shows up in the vm's cgroup", || {
        sleeps = store
            .vm_pids("d1")
            .into_iter()
            .filter(|&p| is_alive_as(p, "sleep"))
            .collect();
        !sleeps.is_empty()
    });
    assert_eq!(store.status("d1"), "running");

    store.stop("d1");
    for &pid in &sleeps {
        assert!(
            !is_alive_as(pid, "sleep"),
            "the vm's daemon (host pid {pid}) survived `stop`"
        );
    }
    assert_eq!(store.status("d1"), "stopped");
    store.assert_clean();
}

#[test]
fn a_daemon_left_by_a_cold_run_keeps_the_vm_running_until_stop() {
    if !needs_root("a_daemon_left_by_a_cold_run_keeps_the_vm_running_until_stop") {
        return;
    }
    let store = TestStore::new("colddaemon");
    store.create("c1");
    // The VM is stopped: `run` starts it for the command. The command exits at once
    // but leaves a daemon behind.
    store
        .sh(
            "c1",
            "(setsid sleep 1000 </dev/null >/dev/null 2>&1 &) ; exit 0",
        )
        .ok();
    assert_eq!(store.status("c1"), "running");
    let init = store.init_pid("c1").expect("a running vm has an init");
    let mut sleeps = Vec::new();
    wait_until("the daemon shows up in the vm's cgroup", || {
        sleeps = store
            .vm_pids("c1")
            .into_iter()
            .filter(|&p| is_alive_as(p, "sleep"))
            .collect();
        !sleeps.is_empty()
    });
    assert_eq!(sleeps.len(), 1, "one daemon in the vm's cgroup");

    store.stop("c1");
    assert!(
        !is_alive_as(sleeps[0], "sleep"),
        "the daemon survived `stop`"
    );
    assert!(!is_alive_as(init, "fvm-init"), "the init survived `stop`");
    assert_eq!(store.status("c1"), "stopped");
    store.assert_clean();
}

#[test]
fn a_cold_run_stops_the_vm_when_its_last_process_exits() {
    if !needs_root("a_cold_run_stops_the_vm_when_its_last_process_exits") {
        return;
    }
    let store = TestStore::new("coldstop");
    store.create("s1");
    store.sh("s1", "echo hello").ok();
    assert_eq!(store.status("s1"), "stopped");
    let v = store.inspect("s1");
    assert!(v["init"].is_null(), "{v:#}");
    for dir in v["cgroup"].as_array().into_iter().flatten() {
        let dir = dir.as_str().unwrap();
        assert!(
            !std::path::Path::new(dir).exists(),
            "a stopped vm keeps its cgroup {dir}"
        );
    }
    store.assert_clean();
}

#[test]
fn stop_kills_what_ignores_sigterm_after_the_grace_time() {
    if !needs_root("stop_kills_what_ignores_sigterm_after_the_grace_time") {
        return;
    }
    let store = TestStore::new("stubborn");
    store.create("st");
    store.start("st");
    store
        .sh(
            "st",
            "(setsid sh -c 'trap \"\" TERM; while :; do sleep 0.2; done' \
             </dev/null >/dev/null 2>&1 &); exit 0",
        )
        .ok();
    let init = store.init_pid("st").unwrap();
    let pids = store.vm_pids("st");
    assert!(pids.len() >= 2, "the stubborn daemon runs: {pids:?}");
    let comms: Vec<(i32, String)> = pids
        .iter()
        .filter_map(|&p| Some((p, common::live_comm(p)?)))
        .collect();

    let out = store.fvm(&["stop", "--time", "1", "st"]).ok();
    assert!(out.stderr.contains("killed"), "{out}");
    for (pid, comm) in &comms {
        assert!(!is_alive_as(*pid, comm), "{comm} (pid {pid}) survived stop");
    }
    assert!(!is_alive_as(init, "fvm-init"));
    assert_eq!(store.status("st"), "stopped");
    store.assert_clean();
}

#[test]
fn a_signal_to_fvm_run_reaches_the_command() {
    if !needs_root("a_signal_to_fvm_run_reaches_the_command") {
        return;
    }
    let store = TestStore::new("signal");
    store.create("sg");
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("sg");
        }
        let run = store.background(&["run", "sg", "--", "sleep", "100"]);
        let mut sleep = None;
        wait_until("the command runs in the vm", || {
            sleep = store
                .vm_pids("sg")
                .into_iter()
                .find(|&p| is_alive_as(p, "sleep"));
            sleep.is_some()
        });
        common::signal("TERM", &[run.pid()]);
        let out = run.finish();
        assert_eq!(out.code, 128 + 15, "{phase}: {out}");
        assert!(!is_alive_as(sleep.unwrap(), "sleep"), "{phase}");
    }
    // The started VM keeps running; the cold one stopped with its command.
    assert_eq!(store.status("sg"), "running");
    store.stop("sg");
    store.assert_clean();
}

#[test]
fn stop_ends_a_command_that_is_running_in_the_vm() {
    if !needs_root("stop_ends_a_command_that_is_running_in_the_vm") {
        return;
    }
    let store = TestStore::new("stoprun");
    store.create("sr");
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("sr");
        }
        let run = store.background(&["run", "sr", "--", "sleep", "100"]);
        wait_until("the command runs in the vm", || {
            store
                .vm_pids("sr")
                .into_iter()
                .any(|p| is_alive_as(p, "sleep"))
        });
        store.stop("sr");
        let out = run.finish();
        assert_eq!(out.code, 128 + 15, "{phase}: {out}");
        assert_eq!(store.status("sr"), "stopped", "{phase}");
    }
    store.assert_clean();
}

/// The VM's init is a copy of the `fvm` command that started it; nothing of how
/// that command was run (its arguments, the caller's environment, which may hold
/// secrets) can be read from inside the VM.
#[test]
fn the_init_shows_nothing_of_the_callers_environment() {
    if !needs_root("the_init_shows_nothing_of_the_callers_environment") {
        return;
    }
    let store = TestStore::new("environ");
    store.create("e1");
    let mut start = store.command(&["start", "e1"]);
    start.env("FVM_TEST_SECRET", "hunter2-fvm");
    common::run(start, None).ok();
    let out = store
        .sh(
            "e1",
            "cat /proc/1/environ /proc/1/cmdline | tr '\\0' '\\n' | grep -v '^$'",
        )
        .out()
        .to_owned();
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!out.contains("--root") && !out.contains("start"), "{out}");
    store.stop("e1");
    store.assert_clean();
}

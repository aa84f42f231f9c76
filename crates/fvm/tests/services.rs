//! Services: started with the VM, restarted as their policy says, stopped in
//! reverse order; forking daemons; `fvm service`; `fvm run -d`; autostart.

mod common;

use common::{TestStore, needs_root, wait_until};
use serde_json::Value;

/// `fvm service VM status --json`, by service name.
fn status(store: &TestStore, vm: &str) -> Vec<Value> {
    let out = store.fvm(&["--json", "service", vm, "status"]).ok();
    serde_json::from_str::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn service<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {all:?}"))
}

fn state(store: &TestStore, vm: &str, name: &str) -> String {
    service(&status(store, vm), name)["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The command lines of the VM's processes (`fvm ps`), or nothing if it is stopped.
fn processes(store: &TestStore, vm: &str) -> String {
    store.fvm(&["ps", vm]).stdout
}

/// A service that writes its name to `file` when SIGTERM reaches it, then exits.
fn recorder(name: &str, file: &str) -> String {
    format!("{name}=trap 'echo {name} >> {file}; exit 0' TERM; while :; do sleep 0.1; done")
}

#[test]
fn services_start_with_the_vm_and_stop_in_reverse_order() {
    if !needs_root("services_start_with_the_vm_and_stop_in_reverse_order") {
        return;
    }
    let store = TestStore::new("svc-order");
    store.create("order1");
    let file = "/tmp/fvm-stop-order";
    let mut args = vec!["config", "order1"];
    let specs: Vec<String> = ["first", "second", "third"]
        .iter()
        .map(|n| recorder(n, file))
        .collect();
    for s in &specs {
        args.extend(["--service", s.as_str()]);
    }
    let shown = store.fvm(&args).ok();
    assert!(
        shown.stdout.contains("service first: none → trap"),
        "{shown}"
    );
    // With no flags, config shows the policy with its services.
    let policy = store.fvm(&["config", "order1"]).ok();
    assert!(policy.stdout.contains("\n[[service]]"), "{policy}");
    // The policy and inspect show them.
    let info = store.inspect("order1");
    assert_eq!(
        info["services"].as_array().map(Vec::len),
        Some(3),
        "{info:#}"
    );
    store.start("order1");
    wait_until("every service runs", || {
        status(&store, "order1")
            .iter()
            .all(|s| s["state"] == "running" && s["pid"].as_i64().is_some())
    });
    store.stop("order1");
    // Read back from the VM's layer, in a one-command run (which starts no service).
    let order = store.sh("order1", &format!("cat {file}")).ok();
    assert_eq!(order.out(), "third\nsecond\nfirst", "{order}");
    // Status on a stopped VM: the last known, every one stopped by SIGTERM's trap.
    for s in status(&store, "order1") {
        assert_eq!(s["state"], "stopped", "{s}");
        assert_eq!(s["last_exit"]["code"], 0, "{s}");
    }
    store.assert_clean();
}

#[test]
fn a_service_that_ignores_sigterm_does_not_hold_up_the_others() {
    if !needs_root("a_service_that_ignores_sigterm_does_not_hold_up_the_others") {
        return;
    }
    let store = TestStore::new("svc-stubborn");
    store.create("stub1");
    let file = "/tmp/fvm-stop-order";
    let polite = recorder("polite", file);
    store
        .fvm(&[
            "config",
            "stub1",
            "--service",
            &polite,
            "--service",
            "stubborn=trap '' TERM; exec sleep 1000",
        ])
        .ok();
    store.start("stub1");
    wait_until("both run", || {
        status(&store, "stub1")
            .iter()
            .all(|s| s["state"] == "running")
    });
    // The stubborn one is stopped first and gets SIGKILL when its share of the
    // grace time is over; the polite one still gets its SIGTERM in time.
    store.fvm(&["stop", "stub1", "--time", "3"]).ok();
    let order = store.sh("stub1", &format!("cat {file}")).ok();
    assert_eq!(order.out(), "polite", "{order}");
    let all = status(&store, "stub1");
    assert_eq!(
        service(&all, "stubborn")["last_exit"]["signal"],
        9,
        "{all:?}"
    );
    store.assert_clean();
}

#[test]
fn services_are_restarted_as_their_policy_says() {
    if !needs_root("services_are_restarted_as_their_policy_says") {
        return;
    }
    let store = TestStore::new("svc-restart");
    store.create("restart1");
    store
        .fvm(&[
            "config",
            "restart1",
            "--service",
            "never=exit 1",
            "--service",
            "onfail=exit 3",
            "--service",
            "onfail.restart=on-failure",
            "--service",
            "clean=exit 0",
            "--service",
            "clean.restart=on-failure",
            "--service",
            "always=exit 0",
            "--service",
            "always.restart=always",
        ])
        .ok();
    store.start("restart1");
    // Back-off is counted, not timed: 100 ms, 200 ms, ... between restarts.
    wait_until("the restarting services have restarted twice", || {
        let all = status(&store, "restart1");
        ["onfail", "always"]
            .iter()
            .all(|n| service(&all, n)["restarts"].as_u64() >= Some(2))
    });
    let all = status(&store, "restart1");
    assert_eq!(service(&all, "never")["state"], "failed");
    assert_eq!(service(&all, "never")["restarts"], 0);
    assert_eq!(service(&all, "never")["last_exit"]["code"], 1);
    assert_eq!(service(&all, "clean")["state"], "exited");
    assert_eq!(service(&all, "clean")["restarts"], 0);
    assert_eq!(service(&all, "onfail")["last_exit"]["code"], 3);
    // Their ends are in the logs too.
    let logs = store.fvm(&["logs", "restart1", "onfail"]).ok();
    assert!(
        logs.stdout.contains("exit status 3; restarting in"),
        "{logs}"
    );
    store.stop("restart1");
    store.assert_clean();
}

#[test]
fn a_forking_daemon_is_tracked_by_its_pidfile_and_stopped() {
    if !needs_root("a_forking_daemon_is_tracked_by_its_pidfile_and_stopped") {
        return;
    }
    let store = TestStore::new("svc-fork");
    store.create("fork1");
    store
        .fvm(&[
            "config",
            "fork1",
            "--service",
            "daemon=setsid sleep 1000 & echo $! > /tmp/fvm-daemon.pid",
            "--service",
            "daemon.pidfile=/tmp/fvm-daemon.pid",
        ])
        .ok();
    store.start("fork1");
    wait_until("the daemon is found by its pidfile", || {
        let all = status(&store, "fork1");
        service(&all, "daemon")["state"] == "running"
            && service(&all, "daemon")["pid"].as_i64().is_some()
    });
    // Its command has exited; the daemon it left runs on.
    assert!(processes(&store, "fork1").contains("sleep 1000"));
    let stopped = store.fvm(&["service", "fork1", "daemon", "stop"]).ok();
    assert!(stopped.stdout.contains("stopped"), "{stopped}");
    assert_eq!(state(&store, "fork1", "daemon"), "stopped");
    assert!(
        !processes(&store, "fork1").contains("sleep 1000"),
        "{}",
        processes(&store, "fork1")
    );
    store.stop("fork1");
    store.assert_clean();
}

#[test]
fn fvm_service_starts_stops_restarts_and_shows_services() {
    if !needs_root("fvm_service_starts_stops_restarts_and_shows_services") {
        return;
    }
    let store = TestStore::new("svc-cmd");
    store.create("cmd1");
    store
        .fvm(&[
            "config",
            "cmd1",
            "--service",
            "one=exec sleep 1001",
            "--service",
            "two=exec sleep 1002",
        ])
        .ok();
    // Not running: start/stop/restart refuse in one line; status shows the policy.
    let e = store.fvm(&["service", "cmd1", "one", "start"]).code(125);
    assert!(
        e.stderr.contains("not running") && e.stderr.trim().lines().count() == 1,
        "{e}"
    );
    assert_eq!(state(&store, "cmd1", "one"), "stopped");
    store.start("cmd1");
    wait_until("both run", || {
        status(&store, "cmd1")
            .iter()
            .all(|s| s["state"] == "running")
    });
    let before = service(&status(&store, "cmd1"), "one")["pid"].clone();
    store.fvm(&["service", "cmd1", "one", "stop"]).ok();
    let all = status(&store, "cmd1");
    assert_eq!(service(&all, "one")["state"], "stopped");
    assert_eq!(service(&all, "two")["state"], "running");
    assert!(!processes(&store, "cmd1").contains("sleep 1001"));
    store.fvm(&["service", "cmd1", "one", "start"]).ok();
    assert_eq!(state(&store, "cmd1", "one"), "running");
    store.fvm(&["service", "cmd1", "one", "restart"]).ok();
    let after = service(&status(&store, "cmd1"), "one")["pid"].clone();
    assert_ne!(before, after);
    assert_eq!(state(&store, "cmd1", "one"), "running");
    // All at once.
    store.fvm(&["service", "cmd1", "stop"]).ok();
    assert!(
        status(&store, "cmd1")
            .iter()
            .all(|s| s["state"] == "stopped")
    );
    store.fvm(&["service", "cmd1", "start"]).ok();
    assert!(
        status(&store, "cmd1")
            .iter()
            .all(|s| s["state"] == "running")
    );
    // A table for people too.
    let table = store.fvm(&["service", "cmd1", "status"]).ok();
    assert!(table.stdout.starts_with("SERVICE"), "{table}");
    // Unknown services and actions: one line each.
    for bad in [
        vec!["service", "cmd1", "nosuch", "start"],
        vec!["service", "cmd1", "one", "jump"],
        vec!["service", "cmd1", "Bad/Name", "stop"],
    ] {
        let e = store.fvm(&bad);
        assert_ne!(e.code, 0, "{e}");
        assert_eq!(e.stderr.trim().lines().count(), 1, "{e}");
    }
    store.stop("cmd1");
    store.assert_clean();
}

#[test]
fn config_validates_services_in_one_line_and_keeps_the_policy() {
    if !needs_root("config_validates_services_in_one_line_and_keeps_the_policy") {
        return;
    }
    let store = TestStore::new("svc-cfg");
    store.create("cfg1");
    store.fvm(&["config", "cfg1", "--service", "web=true"]).ok();
    let before = store.fvm(&["config", "cfg1"]).ok().stdout;
    for bad in [
        "web.restart=sometimes",
        "web.workdir=relative",
        "nosuch.user=root",
        "a/b=true",
        "web.colour=red",
        "novalue",
    ] {
        let e = store.fvm(&["config", "cfg1", "--service", bad]).code(125);
        assert_eq!(e.stderr.trim().lines().count(), 1, "{bad}: {e}");
        assert_eq!(store.fvm(&["config", "cfg1"]).ok().stdout, before, "{bad}");
    }
    store.fvm(&["config", "cfg1", "--no-service", "web"]).ok();
    assert!(
        !store
            .fvm(&["config", "cfg1"])
            .ok()
            .stdout
            .contains("\n[[service]]")
    );
    store.assert_clean();
}

#[test]
fn run_detached_returns_while_the_command_runs_and_logs_its_output() {
    if !needs_root("run_detached_returns_while_the_command_runs_and_logs_its_output") {
        return;
    }
    let store = TestStore::new("svc-detach");
    store.create("det1");
    // On a stopped VM: it is started, and left running.
    let out = store
        .fvm(&[
            "--json",
            "run",
            "-d",
            "det1",
            "--",
            "sh",
            "-c",
            "echo detached-marker; echo to-stderr >&2; exec sleep 1000",
        ])
        .ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["pid"].as_i64().is_some_and(|p| p > 1), "{v}");
    assert_eq!(v["started_vm"], true);
    // It returned while its command still runs.
    assert_eq!(store.status("det1"), "running");
    assert!(processes(&store, "det1").contains("sleep 1000"));
    wait_until("its output is in the logs", || {
        let logs = store.fvm(&["logs", "det1", "run"]).stdout;
        logs.contains("out: detached-marker") && logs.contains("err: to-stderr")
    });
    // A second one in the running VM.
    let again = store
        .fvm(&["run", "-d", "det1", "--", "echo", "second"])
        .ok();
    assert!(again.stdout.starts_with("det1 "), "{again}");
    store.stop("det1");
    // The logs outlive the VM.
    let logs = store.fvm(&["logs", "det1"]).ok();
    assert!(logs.stdout.contains("detached-marker"), "{logs}");
    assert!(logs.stdout.contains("ended: killed by SIGTERM"), "{logs}");
    store.assert_clean();
}

#[test]
fn autostart_starts_only_the_marked_vms_and_reports_failures() {
    if !needs_root("autostart_starts_only_the_marked_vms_and_reports_failures") {
        return;
    }
    let store = TestStore::new("svc-auto");
    store.create("auto-on");
    store.create("auto-off");
    let gone = store.root.with_extension("gone-dir");
    store.create_with("auto-broken", &["--dir", gone.to_str().unwrap()]);
    store
        .fvm(&[
            "config",
            "auto-on",
            "--autostart",
            "true",
            "--service",
            "svc=exec sleep 1003",
        ])
        .ok();
    store
        .fvm(&["config", "auto-broken", "--autostart", "true"])
        .ok();
    assert_eq!(store.inspect("auto-on")["autostart"], true);
    // The broken one's directory is gone: it can't start.
    std::fs::remove_dir_all(&gone).unwrap();
    let out = store.fvm(&["start", "--autostart"]).code(1);
    assert!(out.stdout.contains("auto-on started"), "{out}");
    assert!(out.stderr.contains("auto-broken"), "{out}");
    assert_eq!(store.status("auto-on"), "running");
    assert_eq!(store.status("auto-off"), "stopped");
    wait_until("the autostarted vm's service runs", || {
        state(&store, "auto-on", "svc") == "running"
    });
    // Again: nothing to do for the running one.
    let again = store.fvm(&["start", "--autostart"]).code(1);
    assert!(again.stdout.contains("auto-on running"), "{again}");
    let stopped = store.fvm(&["stop", "--autostart"]).ok();
    assert_eq!(stopped.out(), "auto-on", "{stopped}");
    assert_eq!(store.status("auto-on"), "stopped");
    store.fvm(&["delete", "auto-broken"]).ok();
    store.assert_clean();
}

#[test]
fn root_in_the_vm_cannot_reach_into_the_service_starter() {
    if !needs_root("root_in_the_vm_cannot_reach_into_the_service_starter") {
        return;
    }
    let store = TestStore::new("svc-starter");
    store.create("starter1");
    store.start("starter1");
    // The starter keeps the capabilities to confine what it starts: the VM can
    // see it (and, as root, list its fd numbers, as for its init), but neither
    // follow its root, fds or memory nor read its environment.
    let script = "for p in /proc/[0-9]*; do \
                    [ \"$(cat $p/comm)\" = fvm-starter ] && s=${p#/proc/}; done; \
                  [ -n \"$s\" ] || { echo no-starter; exit 1; }; \
                  ls /proc/$s/root/ >/dev/null 2>&1 && echo root-open; \
                  for f in /proc/$s/fd/*; do \
                    readlink $f >/dev/null 2>&1 && echo fd-link-read; \
                    head -c0 $f >/dev/null 2>&1 && echo fd-opened; done; \
                  head -c1 /proc/$s/mem >/dev/null 2>&1 && echo mem-open; \
                  cat /proc/$s/environ >/dev/null 2>&1 && echo environ-open; \
                  echo checked";
    let out = store.sh("starter1", script).ok();
    assert_eq!(out.out(), "checked", "{out}");
    store.stop("starter1");
    store.assert_clean();
}

#[test]
fn a_vm_with_restarting_services_still_ends_at_its_timeout() {
    if !needs_root("a_vm_with_restarting_services_still_ends_at_its_timeout") {
        return;
    }
    let store = TestStore::new("svc-timeout");
    store.create_with("tmo1", &["--timeout", "2s"]);
    store
        .fvm(&[
            "config",
            "tmo1",
            "--service",
            "loop=exec sleep 1000",
            "--service",
            "loop.restart=always",
        ])
        .ok();
    store.start("tmo1");
    // Killed by the timeout, it is not restarted, and the VM ends.
    wait_until("the vm has stopped at its timeout", || {
        store.status("tmo1") == "stopped"
    });
    let all = status(&store, "tmo1");
    assert_eq!(service(&all, "loop")["state"], "stopped", "{all:?}");
    assert_eq!(service(&all, "loop")["restarts"], 0, "{all:?}");
    store.assert_clean();
}

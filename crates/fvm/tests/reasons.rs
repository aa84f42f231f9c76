//! Why a command or a VM ended: `fvm run` says so in one line on stderr when a
//! limit or fvm ended the command, and `list` and `inspect` keep the last end.
//! And `fvm stop` of a VM with a shell open hangs the shell up at once.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{FVM, TestStore, needs_root, needs_tool, python, wait_until};
use serde_json::Value;

/// The VM's recorded end, from `inspect`.
#[track_caller]
fn end_of(store: &TestStore, name: &str) -> Value {
    let v = store.inspect(name);
    assert!(v["end"].is_object(), "no end recorded for {name}:\n{v:#}");
    v["end"].clone()
}

/// The status column of `list` (the table) for `name`.
#[track_caller]
fn list_status(store: &TestStore, name: &str) -> String {
    let out = store.fvm(&["list"]).ok();
    let line = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not listed:\n{out}"));
    // The status is the second column; it may be two words ("stopped (oom)").
    let rest = line[name.len()..].trim_start();
    let end = rest.find("  ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The lines fvm printed itself (`fvm: ...`).
fn fvm_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("fvm: ")).collect()
}

/// The host pid of the VM's process whose command line starts with `argv0`.
#[track_caller]
fn wait_for_process(store: &TestStore, vm: &str, argv0: &str) -> i32 {
    let mut found = None;
    wait_until(&format!("{argv0} runs in {vm}"), || {
        found = store.vm_pids(vm).into_iter().find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).next() == Some(argv0.as_bytes()))
        });
        found.is_some()
    });
    found.unwrap()
}

/// A python program that allocates a MiB at a time until something stops it.
const ALLOCATE: &str = "x = []\nwhile True: x.append(bytearray(1 << 20))";

#[test]
fn the_memory_limit_is_named_when_the_oom_killer_ends_the_command() {
    if !needs_root("the_memory_limit_is_named_when_the_oom_killer_ends_the_command") {
        return;
    }
    let store = TestStore::new("why-oom");
    store.create_with("oom", &["--memory", "32M"]);
    let out = store
        .fvm(&["run", "oom", "--", python(), "-c", ALLOCATE])
        .code(137);
    assert_eq!(
        fvm_lines(&out.stderr),
        ["fvm: killed: the vm's memory limit (32M) was reached"],
        "{out}"
    );
    let end = end_of(&store, "oom");
    assert_eq!(end["cause"], "oom", "{end}");
    assert_eq!(end["limit"], 32 << 20, "{end}");
    assert_eq!(end["signal"], 9, "{end}");
    assert_eq!(list_status(&store, "oom"), "stopped (oom)");
    // `stats` counts OOM kills of a running VM (the VM goes on).
    store.start("oom");
    store
        .fvm(&["run", "oom", "--", python(), "-c", ALLOCATE])
        .code(137);
    let stats = store.fvm(&["--json", "stats"]).ok();
    let vms: Vec<Value> = serde_json::from_str(&stats.stdout).unwrap();
    let oom = vms.iter().find(|v| v["name"] == "oom").unwrap();
    assert!(
        oom["usage"]["oom_kills"].as_u64().is_some_and(|n| n >= 1),
        "{stats}"
    );
    assert_eq!(end_of(&store, "oom")["cause"], "oom");
    store.stop("oom");
    store.assert_clean();
}

#[test]
fn a_sigkill_from_the_host_is_not_blamed_on_the_memory_limit() {
    if !needs_root("a_sigkill_from_the_host_is_not_blamed_on_the_memory_limit") {
        return;
    }
    let store = TestStore::new("why-kill");
    store.create_with("killed", &["--memory", "64M", "--cpu-time", "1h"]);
    for (signal, number) in [("KILL", 9), ("SEGV", 11), ("TERM", 15)] {
        let bg = store.background(&["run", "killed", "--", "sleep", "1000"]);
        let pid = wait_for_process(&store, "killed", "sleep");
        common::signal(signal, &[pid]);
        let out = bg.finish().code(128 + number);
        // A signal the command got for its own reasons: nothing more to say.
        assert!(fvm_lines(&out.stderr).is_empty(), "SIG{signal}: {out}");
        let end = end_of(&store, "killed");
        assert_eq!(end["cause"], "signal", "SIG{signal}: {end}");
        assert_eq!(end["signal"], number, "SIG{signal}: {end}");
        assert_eq!(
            list_status(&store, "killed"),
            format!("stopped (SIG{signal})")
        );
    }
    store.assert_clean();
}

#[test]
fn the_cpu_time_limit_is_named_when_it_ends_the_command() {
    if !needs_root("the_cpu_time_limit_is_named_when_it_ends_the_command") {
        return;
    }
    let store = TestStore::new("why-cpu");
    store.create_with("busy", &["--cpu-time", "1s"]);
    let out = store.fvm(&["run", "busy", "--", "sh", "-c", "while :; do :; done"]);
    // SIGXCPU at the limit (its default action ends the process), or the
    // SIGKILL a second later for one that ignores it.
    assert!(out.code == 128 + 24 || out.code == 137, "{out}");
    assert_eq!(
        fvm_lines(&out.stderr),
        ["fvm: killed: the vm's cpu-time limit (1s) was reached"],
        "{out}"
    );
    let end = end_of(&store, "busy");
    assert_eq!(end["cause"], "cpu-time", "{end}");
    assert_eq!(end["limit"], 1, "{end}");
    assert_eq!(list_status(&store, "busy"), "stopped (cpu-time)");
    store.assert_clean();
}

#[test]
fn the_timeout_is_named_when_it_stops_the_vm() {
    if !needs_root("the_timeout_is_named_when_it_stops_the_vm") {
        return;
    }
    let store = TestStore::new("why-timeout");
    store.create_with("brief", &["--timeout", "2s"]);
    // Started for the command (the init says the timeout ran out), and started
    // before it (the VM's end is worked out from its start and its timeout).
    for phase in ["cold", "started"] {
        if phase == "started" {
            store.start("brief");
        }
        let out = store.fvm(&["run", "brief", "--", "sleep", "1000"]);
        assert!(out.code == 143 || out.code == 137, "{phase}: {out}");
        assert_eq!(
            fvm_lines(&out.stderr),
            ["fvm: stopped: the vm's timeout (2s) ran out"],
            "{phase}: {out}"
        );
        let end = end_of(&store, "brief");
        assert_eq!(end["cause"], "timeout", "{phase}: {end}");
        assert_eq!(end["limit"], 2, "{phase}: {end}");
        assert_eq!(list_status(&store, "brief"), "stopped (timeout)", "{phase}");
    }
    store.assert_clean();
}

#[test]
fn fvm_stop_is_named_when_it_ends_a_command() {
    if !needs_root("fvm_stop_is_named_when_it_ends_a_command") {
        return;
    }
    let store = TestStore::new("why-stop");
    store.create("halted");
    for phase in ["cold", "started"] {
        if phase == "started" {
            store.start("halted");
        }
        let bg = store.background(&["run", "halted", "--", "sleep", "1000"]);
        wait_for_process(&store, "halted", "sleep");
        store.fvm(&["stop", "halted"]).ok();
        let out = bg.finish();
        assert_eq!(out.code, 143, "{phase}: {out}");
        assert_eq!(
            fvm_lines(&out.stderr),
            ["fvm: stopped: fvm stop"],
            "{phase}: {out}"
        );
        let end = end_of(&store, "halted");
        assert_eq!(end["cause"], "stop", "{phase}: {end}");
        assert_eq!(end["killed"], false, "{phase}: {end}");
        assert_eq!(
            list_status(&store, "halted"),
            "stopped (fvm stop)",
            "{phase}"
        );
    }
    store.assert_clean();
}

#[test]
fn a_signal_to_the_init_from_outside_fvm_is_a_host_shutdown() {
    if !needs_root("a_signal_to_the_init_from_outside_fvm_is_a_host_shutdown") {
        return;
    }
    let store = TestStore::new("why-outside");
    store.create("edge");
    // SIGTERM to the init from the host, as a shutdown sends it.
    let bg = store.background(&["run", "edge", "--", "sleep", "1000"]);
    wait_for_process(&store, "edge", "sleep");
    let init = store.init_pid("edge").expect("the vm runs");
    common::signal("TERM", &[init]);
    let out = bg.finish().code(143);
    assert_eq!(
        fvm_lines(&out.stderr),
        ["fvm: stopped: the vm's init got SIGTERM from outside fvm (host shutdown?)"],
        "{out}"
    );
    let end = end_of(&store, "edge");
    assert_eq!(end["cause"], "outside", "{end}");
    assert_eq!(end["signal"], 15, "{end}");
    assert_eq!(list_status(&store, "edge"), "stopped (outside)");
    // The same signal from inside the VM is the command's own business, and a
    // process of the VM that queues it with a forged sender pid of 0 (as the
    // kernel shows a sender outside the VM) fools nobody.
    for (how, script) in [
        ("kill", "import os, time\nos.kill(1, 15)\ntime.sleep(100)"),
        (
            "rt_sigqueueinfo",
            "import ctypes, struct, time\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             info = ctypes.create_string_buffer(struct.pack('iiiiii', 15, 0, -1, 0, 0, 0) + bytes(104))\n\
             assert libc.syscall(129, 1, 15, info) == 0, ctypes.get_errno()\n\
             time.sleep(100)",
        ),
    ] {
        let out = store
            .fvm(&["run", "edge", "--", python(), "-c", script])
            .code(143);
        assert!(fvm_lines(&out.stderr).is_empty(), "{how}: {out}");
        let end = end_of(&store, "edge");
        assert_eq!(end["cause"], "signal", "{how}: {end}");
    }
    // A VM started in the background whose init is killed from the host: the
    // next look at it says so.
    store.start("edge");
    let init = store.init_pid("edge").expect("the vm runs");
    common::kill9(&[init]);
    wait_until("the vm is seen stopped", || {
        store.status("edge") == "stopped"
    });
    assert_eq!(list_status(&store, "edge"), "stopped (outside)");
    assert_eq!(end_of(&store, "edge")["cause"], "outside");
    store.assert_clean();
}

#[test]
fn a_plain_exit_status_is_kept_and_says_nothing_more() {
    if !needs_root("a_plain_exit_status_is_kept_and_says_nothing_more") {
        return;
    }
    let store = TestStore::new("why-exit");
    store.create("plain");
    let out = store
        .fvm(&["run", "plain", "--", "sh", "-c", "exit 3"])
        .code(3);
    assert!(fvm_lines(&out.stderr).is_empty(), "{out}");
    let end = end_of(&store, "plain");
    assert_eq!(end["cause"], "exited", "{end}");
    assert_eq!(end["status"], 3, "{end}");
    assert_eq!(end["of"], "vm", "{end}");
    assert_eq!(list_status(&store, "plain"), "stopped (exit 3)");
    // A command that isn't there: its status is the VM's end too.
    store
        .fvm(&["run", "plain", "--", "/nonexistent-fvm-test"])
        .code(127);
    assert_eq!(list_status(&store, "plain"), "stopped (exit 127)");
    // In a running VM the command's end is recorded; the VM runs on.
    store.start("plain");
    store.fvm(&["run", "plain", "--", "true"]).ok();
    let v = store.inspect("plain");
    assert_eq!(v["status"], "running");
    assert_eq!(v["end"]["of"], "command", "{v:#}");
    assert_eq!(v["end"]["status"], 0, "{v:#}");
    assert_eq!(list_status(&store, "plain"), "running");
    store.stop("plain");
    store.assert_clean();
}

#[test]
fn a_hostile_recorded_end_is_ignored_or_shown_plainly() {
    if !needs_root("a_hostile_recorded_end_is_ignored_or_shown_plainly") {
        return;
    }
    let store = TestStore::new("why-hostile");
    store.create("odd");
    let state = PathBuf::from(store.inspect("odd")["paths"]["state"].as_str().unwrap());
    for (text, status) in [
        // Not an end fvm writes: dropped, the rest of the state stands.
        (
            r#"{"status": "stopped", "end": {"cause": "meteor", "of": "vm", "at": "x"}}"#,
            "stopped",
        ),
        (
            r#"{"status": "stopped", "end": {"cause": "oom", "of": "vm", "at": "\u001b]0;owned\u0007"}}"#,
            "stopped",
        ),
        (r#"{"status": "stopped", "end": [1, 2, 3]}"#, "stopped"),
        // An end of the right shape with absurd values: shown as numbers.
        (
            r#"{"status": "stopped", "end": {"cause": "signal", "of": "vm", "at": "2026-01-01T00:00:00Z", "signal": -2147483648, "limit": 18446744073709551615}}"#,
            "stopped (signal -2147483648)",
        ),
    ] {
        std::fs::write(&state, text).unwrap();
        assert_eq!(list_status(&store, "odd"), status, "{text}");
        let out = store.fvm(&["list"]).ok();
        assert!(!out.stdout.contains('\u{1b}'), "{out}");
        assert!(!out.stderr.contains('\u{1b}'), "{out}");
        assert!(
            out.stderr.lines().count() <= 1,
            "one line of warning at most:\n{out}"
        );
        store.inspect("odd");
        // The VM still runs commands, and records their end over the bad one.
        store.fvm(&["run", "odd", "--", "true"]).ok();
        assert_eq!(end_of(&store, "odd")["cause"], "exited", "{text}");
    }
    store.assert_clean();
}

/// A tmux server of the test's own (its own socket), killed with it.
struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn new() -> Tmux {
        let dir = tempfile::Builder::new()
            .prefix("fvm-test-tmux-")
            .tempdir()
            .unwrap();
        Tmux {
            socket: dir.path().join("sock"),
            _dir: dir,
        }
    }

    fn cmd(&self, args: &[&str]) -> common::Out {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket).args(args);
        common::run(cmd, None)
    }

    fn pane(&self, session: &str) -> String {
        self.cmd(&["capture-pane", "-p", "-t", session]).stdout
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn a_shell_in_tmux_ends_when_the_vm_is_stopped() {
    if !needs_root("a_shell_in_tmux_ends_when_the_vm_is_stopped")
        || !needs_tool("a_shell_in_tmux_ends_when_the_vm_is_stopped", "tmux")
    {
        return;
    }
    let store = TestStore::new("why-shell");
    store.create("desk");
    // The VM started before the shell (the shell joins it), and started by it.
    for phase in ["started", "cold"] {
        if phase == "started" {
            store.start("desk");
        }
        let tmux = Tmux::new();
        let session = format!("fvm-test-{}-{phase}", std::process::id());
        let shell = format!(
            "{FVM} --root {} shell desk; echo fvm-shell-exit=$?; sleep 600",
            store.root.display()
        );
        tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "40",
            &shell,
        ])
        .ok();
        let pid = wait_for_process(&store, "desk", "-bash");
        wait_until("the shell's prompt", || {
            tmux.pane(&session).contains("@desk")
        });
        // A grace time far longer than the test waits: the stop must not need it.
        let started = Instant::now();
        store.fvm(&["stop", "desk", "--time", "30"]).ok();
        println!("{phase}: fvm stop took {:?}", started.elapsed());
        let mut pane = String::new();
        let said = Instant::now();
        // The count of sessions is in the stop's intent too: a shell that
        // started the VM itself, and finds the intent first, says it as well.
        while !(pane.contains("fvm: stopped: fvm stop (1 terminal session hung up)")
            && pane.contains("fvm-shell-exit=129"))
        {
            assert!(
                said.elapsed() < Duration::from_secs(30),
                "{phase}: the shell did not say why it ended:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(50));
            pane = tmux.pane(&session);
        }
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{phase}: the shell's process is still there"
        );
        let end = end_of(&store, "desk");
        assert_eq!(end["cause"], "stop", "{phase}: {end}");
        assert_eq!(end["hung_up"], 1, "{phase}: {end}");
        assert_eq!(
            end["killed"], false,
            "{phase}: the stop needed SIGKILL: {end}"
        );
    }
    store.assert_clean();
}

//! A cold `fvm run` (and `run --rm`) returns the command's status as soon as the
//! command has ended; a process of its own cleans up after the VM, holding the
//! VM's lock. Held back here by the debug build's `FVM_DEBUG_TEARDOWN_HOLD`
//! (a directory: the teardown writes `teardown.pid` there and waits for `go`):
//! the caller's pipes reach their end meanwhile, reads show the right thing,
//! later commands wait for it, and a SIGKILL of it is cleaned up like any crash.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Background, TestStore, is_alive_as, kill9, needs_root, temp_dir, wait_until};
use serde_json::Value;

/// A directory to hold teardowns back in; lets them go when dropped (a failed
/// test mustn't leave one waiting).
struct Hold(tempfile::TempDir);

impl Hold {
    fn new() -> Hold {
        Hold(temp_dir("teardown-hold"))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.path().join("go"), "");
    }
}

/// The pid of the held-back teardown, once it has written it.
fn teardown_pid(hold: &Path) -> i32 {
    let file = hold.join("teardown.pid");
    let mut pid = None;
    wait_until("the teardown writes its pid", || {
        pid = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        pid.is_some()
    });
    pid.expect("a pid")
}

/// Let the held-back teardown go on, and wait until it is gone.
fn release(hold: &Path, pid: i32) {
    std::fs::write(hold.join("go"), "").unwrap();
    wait_until("the teardown is done", || !is_alive_as(pid, "fvm-teardown"));
}

/// `fvm run ARGS` with the teardown held back in `hold`, its stdout and stderr
/// pipes read to their end (as `$(fvm run …)` does): (status, stdout, stderr).
fn run_piped(store: &TestStore, hold: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = store.command(args);
    cmd.env("FVM_DEBUG_TEARDOWN_HOLD", hold)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start fvm");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    // The output reaches its end while the teardown is still held back (for two
    // minutes): nothing of the caller's is kept open by it.
    let received = rx.recv_timeout(Duration::from_secs(60));
    if received.is_err() {
        let _ = std::fs::write(hold.join("go"), "");
    }
    let (o, e) = received.expect("fvm's output ends while its teardown is held back");
    let status = child.wait().expect("wait for fvm");
    (status.code().unwrap_or(-1), o, e)
}

fn vm_in_list<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|v| v["name"] == name)
}

#[test]
fn a_cold_run_returns_before_its_teardown_and_later_commands_wait_for_it() {
    let test = "a_cold_run_returns_before_its_teardown_and_later_commands_wait_for_it";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("teardown");
    store.create("td");
    let hold = Hold::new();
    let (code, out, err) = run_piped(
        &store,
        hold.path(),
        &[
            "run",
            "td",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    );
    assert_eq!((code, out.trim()), (7, "out"), "stderr: {err}");
    assert!(err.contains("err"), "{err}");
    let pid = teardown_pid(hold.path());
    assert!(is_alive_as(pid, "fvm-teardown"), "the teardown runs on");

    // It keeps nothing of the caller's: not its working directory, nor its
    // session (a ^C in the terminal doesn't reach it).
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    let session = |p: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        after.split(' ').nth(3).unwrap().to_owned()
    };
    assert_ne!(session(pid), session(std::process::id() as i32));

    // Reads don't lock: they show the VM stopped, with the command's end.
    let list = store.list();
    let vm = vm_in_list(&list, "td").expect("td is listed");
    assert_eq!(vm["status"], "stopped", "{vm:#}");
    assert_eq!(
        (&vm["end"]["cause"], &vm["end"]["status"]),
        (&Value::from("exited"), &Value::from(7)),
        "{vm:#}"
    );
    let inspect = store.inspect("td");
    assert_eq!(inspect["status"], "stopped");
    assert_eq!(inspect["end"]["status"], 7);

    // The next command on the VM waits for the teardown, then finds it stopped
    // and cleaned up.
    let mut again = Background::start(store.command(&["run", "td", "--", "echo", "again"]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!again.finished(), "a later run waits for the teardown");
    release(hold.path(), pid);
    let again = again.finish();
    assert_eq!((again.code, again.out()), (0, "again"), "{again}");
    wait_until("the second run's teardown is done", || {
        !common::is_locked(&store.root.join("vms/td/lock"))
    });
    let inspect = store.inspect("td");
    assert_eq!(inspect["status"], "stopped");
    assert_eq!(inspect["end"]["status"], 0, "{inspect:#}");
    assert!(
        inspect["cgroup"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .all(|d| !Path::new(d).exists()),
        "its cgroup is removed: {inspect:#}"
    );
    store.assert_clean();
}

#[test]
fn a_throw_away_vm_being_torn_down_is_not_listed_and_then_gone() {
    let test = "a_throw_away_vm_being_torn_down_is_not_listed_and_then_gone";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("teardown-rm");
    let hold = Hold::new();
    let (code, out, err) = run_piped(
        &store,
        hold.path(),
        &["run", "--rm", "rmtd", "--", "sh", "-c", "echo hi; exit 2"],
    );
    assert_eq!((code, out.trim()), (2, "hi"), "stderr: {err}");
    let pid = teardown_pid(hold.path());
    assert!(store.vm_dirs().contains(&"rmtd".to_owned()), "still held");
    assert!(
        store.list().is_empty(),
        "a throw-away vm being deleted is not listed"
    );
    release(hold.path(), pid);
    wait_until("the throw-away vm is deleted", || {
        store.vm_dirs().iter().all(|n| n != "rmtd")
    });
    store.assert_clean();
}

#[test]
fn a_killed_teardown_is_cleaned_up_by_the_next_command() {
    let test = "a_killed_teardown_is_cleaned_up_by_the_next_command";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("teardown-kill");
    store.create("tk");
    let hold = Hold::new();
    let (code, _, err) = run_piped(
        &store,
        hold.path(),
        &["run", "tk", "--", "sh", "-c", "exit 3"],
    );
    assert_eq!(code, 3, "{err}");
    let pid = teardown_pid(hold.path());
    kill9(&[pid]);
    wait_until("the teardown is gone", || !is_alive_as(pid, "fvm-teardown"));
    // Left running in its state, with its init gone: seen as stopped, with the
    // end the command had; the next command cleans up after it.
    let list = store.list();
    let vm = vm_in_list(&list, "tk").expect("tk is listed");
    assert_eq!(
        (&vm["status"], &vm["end"]["status"]),
        (&Value::from("stopped"), &Value::from(3)),
        "{vm:#}"
    );
    let out = store.fvm(&["run", "tk", "--", "echo", "next"]).ok();
    assert_eq!(out.out(), "next");
    wait_until("the second run's teardown is done", || {
        !common::is_locked(&store.root.join("vms/tk/lock"))
    });
    assert_eq!(store.inspect("tk")["end"]["status"], 0);

    // A throw-away VM whose teardown died: listed as stopped once nobody holds
    // it, deleted by `doctor --cleanup`.
    let hold = Hold::new();
    let (code, _, err) = run_piped(&store, hold.path(), &["run", "--rm", "rmtk", "--", "true"]);
    assert_eq!(code, 0, "{err}");
    let pid = teardown_pid(hold.path());
    kill9(&[pid]);
    wait_until("the teardown is gone", || !is_alive_as(pid, "fvm-teardown"));
    let list = store.list();
    let vm = vm_in_list(&list, "rmtk").expect("rmtk is listed once its teardown died");
    assert_eq!(
        (&vm["status"], &vm["temporary"]),
        (&Value::from("stopped"), &Value::from(true))
    );
    let mut cleanup = Command::new(common::FVM);
    cleanup
        .arg("--root")
        .arg(&store.root)
        .args(["doctor", "--cleanup"]);
    let out = common::run(cleanup, None);
    assert!(out.stdout.contains("deleted throw-away vm rmtk"), "{out}");
    assert!(vm_in_list(&store.list(), "rmtk").is_none());
    store.assert_clean();
}

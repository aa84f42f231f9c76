//! `fvm logs`: following, rotation within the size bound, hostile output on a
//! terminal, `--since` and `--tail`.

mod common;

use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestStore, WAIT, needs_root, needs_tool, run, wait_until};

/// The log files' total size (the status file aside).
fn logs_size(store: &TestStore, vm: &str) -> u64 {
    std::fs::read_dir(store.root.join("vms").join(vm).join("logs"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn follow_prints_lines_as_the_vm_writes_them() {
    if !needs_root("follow_prints_lines_as_the_vm_writes_them") {
        return;
    }
    let store = TestStore::new("logs-follow");
    store.create("follow1");
    store
        .fvm(&["config", "follow1", "--service", "tick=exec sleep 1000"])
        .ok();
    store.start("follow1");
    let mut out = tempfile::tempfile().unwrap();
    let mut follower = store
        .command(&["logs", "-f", "follow1"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read = |out: &mut std::fs::File| {
        let mut s = String::new();
        out.rewind().unwrap();
        out.read_to_string(&mut s).unwrap();
        s
    };
    // What was there is printed first.
    wait_until("the follower prints the log so far", || {
        read(&mut out).contains("tick[")
    });
    store
        .fvm(&["run", "-d", "follow1", "--", "echo", "followed-marker"])
        .ok();
    wait_until("the follower prints the new line", || {
        read(&mut out).contains("out: followed-marker")
    });
    // It ends by itself once the VM stops.
    store.stop("follow1");
    let start = Instant::now();
    let ended = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > WAIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    if ended.is_none() {
        let _ = follower.kill();
        let _ = follower.wait();
        panic!("fvm logs -f did not end when the vm stopped");
    }
    assert!(ended.unwrap().success());
    store.assert_clean();
}

#[test]
fn rotation_keeps_a_vms_logs_within_their_bound() {
    if !needs_root("rotation_keeps_a_vms_logs_within_their_bound") {
        return;
    }
    let store = TestStore::new("logs-rotate");
    store.create("rot1");
    // 12 MB of 1000-byte lines, through one detached command.
    store
        .fvm(&[
            "run",
            "-d",
            "rot1",
            "--",
            "sh",
            "-c",
            "head -c 12000000 /dev/zero | tr '\\0' x | fold -w 999; echo; echo done-marker",
        ])
        .ok();
    wait_until("the writer has ended", || {
        store
            .fvm(&["logs", "rot1", "run", "--tail", "1"])
            .stdout
            .contains("ended: exit status 0")
    });
    let end = store.fvm(&["logs", "rot1", "run", "--tail", "2"]).ok();
    assert!(end.stdout.contains("out: done-marker"), "{end}");
    // Two files of at most 2 MiB (and a line) each.
    let total = logs_size(&store, "rot1");
    assert!(total <= 2 * (2 << 20) + 4096, "{total} bytes of logs");
    assert!(total >= 2 << 20, "{total} bytes of logs: nothing rotated?");
    // The newest lines are kept.
    let last = store.fvm(&["logs", "rot1", "--tail", "2"]).ok();
    assert_eq!(last.stdout.lines().count(), 2, "{last}");
    store.stop("rot1");
    store.assert_clean();
}

#[test]
fn hostile_output_is_escaped_on_a_terminal_and_kept_in_json() {
    let test = "hostile_output_is_escaped_on_a_terminal_and_kept_in_json";
    if !needs_root(test) || !needs_tool(test, "script") {
        return;
    }
    let store = TestStore::new("logs-hostile");
    store.create("hostile1");
    store
        .fvm(&[
            "run",
            "-d",
            "hostile1",
            "--",
            "printf",
            "\\033]0;owned\\007\\033[2Jclear\\r\\n",
        ])
        .ok();
    wait_until("the output is logged", || {
        store.fvm(&["logs", "hostile1"]).stdout.contains("clear")
    });
    let cmd = format!(
        "{} --root {} logs hostile1 run",
        common::FVM,
        store.root.display()
    );
    let mut script = Command::new("script");
    script.args(["-qec", &cmd, "/dev/null"]);
    script.env_remove("FVM_ROOT");
    let shown = run(script, None).ok();
    assert!(shown.stdout.contains("clear"), "{shown}");
    assert!(!shown.stdout.contains('\x1b'), "{:?}", shown.stdout);
    assert!(shown.stdout.contains("\\x1b"), "{:?}", shown.stdout);
    // JSON keeps the bytes, escaped by JSON itself.
    let json = store.fvm(&["--json", "logs", "hostile1", "run"]).ok();
    let line = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["stream"] == "stdout")
        .unwrap();
    assert!(
        line["line"].as_str().unwrap().starts_with("\x1b]0;owned"),
        "{line}"
    );
    assert!(!json.stdout.contains('\x1b'));
    store.stop("hostile1");
    store.assert_clean();
}

#[test]
fn since_and_tail_pick_lines() {
    if !needs_root("since_and_tail_pick_lines") {
        return;
    }
    let store = TestStore::new("logs-since");
    store.create("since1");
    store
        .fvm(&[
            "run",
            "-d",
            "since1",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo line-$i; done",
        ])
        .ok();
    wait_until("the lines are logged", || {
        store.fvm(&["logs", "since1"]).stdout.contains("line-5")
    });
    let tail = store.fvm(&["logs", "since1", "run", "--tail", "2"]).ok();
    assert_eq!(tail.stdout.lines().count(), 2, "{tail}");
    let all = store.fvm(&["logs", "since1", "--since", "1h"]).ok();
    assert!(
        all.stdout.contains("line-1") && all.stdout.contains("line-5"),
        "{all}"
    );
    let none = store
        .fvm(&["logs", "since1", "--since", "2999-01-01T00:00:00Z"])
        .ok();
    assert_eq!(none.stdout, "", "{none}");
    let bad = store.fvm(&["logs", "since1", "--since", "yesterday"]);
    assert_ne!(bad.code, 0);
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{bad}");
    store.stop("since1");
    store.assert_clean();
}

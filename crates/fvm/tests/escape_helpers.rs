//! The escape suite, part two: what fvm runs for the host next to a hostile VM.
//!
//! Root in a VM sees, signals and traces only the processes of its own pid
//! namespace. Nothing fvm runs for the host (the helper that covers a new
//! `--dir` in running VMs, the store's watcher, the volatile-layer settler) may
//! be among them, and every host command must finish while a VM stops and kills
//! everything it can see. The design fails closed: a `--dir` VM whose directory
//! is not covered in every running VM can't start, and an interrupted create is
//! finished by the next command. A VM whose `--dir` was deleted is refused, not
//! given a new empty one, and a killed watcher is started again by the next
//! command that finds VMs running.

mod common;
mod escape_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    COMMAND_TIMEOUT, Out, TestStore, is_alive_as, kill9, needs_root, needs_tool, try_run, unique,
    wait_until,
};
use escape_support::var_tmp_dir;

/// How long any one host command may take while the attacker runs: far more
/// than it needs, far less than "hangs for ever".
const DEADLINE: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// fvm on `store`, failing the test if it doesn't finish within [`DEADLINE`].
#[track_caller]
fn fvm_within(store: &TestStore, args: &[&str]) -> Out {
    try_run(store.command(args), None, DEADLINE).unwrap_or_else(|e| panic!("hung: {e}"))
}

#[track_caller]
fn ok_within(store: &TestStore, args: &[&str]) -> Out {
    let out = fvm_within(store, args);
    assert_eq!(out.code, 0, "{out}");
    out
}

/// Two processes: one stops (SIGSTOP), then kills (SIGKILL) every process it
/// can see but the two of them and their init, and the next pids its pid
/// namespace will hand out, over and over, as fast as it can (for the few
/// seconds of the test), or only stops them with argv[2] "stop-only"; the other
/// reads every file under argv[1], noting in /root/fvm-leak (its own layer) each
/// one that holds "fvm-tok".
const ATTACKER: &str = r#"
import os, signal, sys, time
walker = os.getpid()
signals = [signal.SIGSTOP] + ([] if sys.argv[2:] == ["stop-only"] else [signal.SIGKILL])
if os.fork() == 0:
    spare = {os.getpid(), walker, 1}
    while True:
        seen = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        # And the next pids the VM's pid namespace hands out, before they exist.
        top = max(seen)
        targets = [p for p in seen if p not in spare] + list(range(top + 1, top + 32))
        for sig in signals:
            for p in targets:
                try:
                    os.kill(p, sig)
                except OSError:
                    pass
watch = sys.argv[1]
leak = open("/root/fvm-leak", "a")
seen = set()
while True:
    for root, dirs, files in os.walk(watch):
        for f in files:
            path = os.path.join(root, f)
            try:
                with open(path, "rb") as fh:
                    data = fh.read(4096)
            except OSError:
                continue
            if b"fvm-tok" in data and path not in seen:
                seen.add(path)
                leak.write(path + " " + data.decode(errors="replace").strip() + "\n")
                leak.flush()
    time.sleep(0.01)
"#;

/// Start the attacker (script `script`) in running VM `name`, reading under
/// `dirs`; `mode` is "" or "stop-only". Returns once both of its processes run.
#[track_caller]
fn start_attacker(store: &TestStore, name: &str, script: &Path, dirs: &Path, mode: &str) {
    // Started from a shell that the loop itself stops or kills at once: no wait
    // for it.
    let _ = try_run(
        store.command(&[
            "run",
            name,
            "--",
            "sh",
            "-c",
            &format!(
                "setsid python3 {} {} {mode} </dev/null >/dev/null 2>&1 &",
                s(script),
                s(dirs)
            ),
        ]),
        None,
        Duration::from_secs(5),
    );
    wait_until("both processes of the attacker run", || {
        store
            .vm_pids(name)
            .iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.contains("attack.py"))
            })
            .count()
            == 2
    });
}

/// The host pid of the VM's init.
#[track_caller]
fn init_of(store: &TestStore, name: &str) -> i32 {
    store
        .init_pid(name)
        .unwrap_or_else(|| panic!("vm {name} has no init"))
}

/// Whether the running VM sees `dir` covered: an empty tmpfs mounted right there
/// in its mount table (read from the host).
fn covered_in(init: i32, dir: &Path) -> bool {
    std::fs::read_to_string(format!("/proc/{init}/mountinfo")).is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&s(dir)) && l.contains(" - tmpfs ")
        })
    })
}

/// What the attacker noted, from its layer (it is stopped by then).
fn leaked(store: &TestStore, name: &str) -> String {
    std::fs::read_to_string(
        store
            .root
            .join(format!("vms/{name}/layers/-/upper/root/fvm-leak")),
    )
    .unwrap_or_default()
}

/// A VM that stops and kills everything it sees, in a loop, while the host makes
/// `--dir` VMs, starts, stops, runs, commits and copies: every host command
/// finishes, and the attacker reads none of the new VMs' files (but does read a
/// plain host file next to them, so it really was looking).
#[test]
fn host_commands_finish_while_a_vm_stops_and_kills_all_it_sees() {
    let test = "host_commands_finish_while_a_vm_stops_and_kills_all_it_sees";
    if !needs_root(test) || !needs_tool(test, "python3") {
        return;
    }
    let store = TestStore::new("esch-attack");
    let outside = var_tmp_dir("esch-attack");
    let dirs = outside.path().join("dirs");
    std::fs::create_dir(&dirs).expect("mkdir");
    let control = unique("fvm-tok-control");
    std::fs::write(dirs.join("control.txt"), &control).expect("write");
    let script = outside.path().join("attack.py");
    std::fs::write(&script, ATTACKER).expect("write the attacker");
    let committed = var_tmp_dir("esch-commit");

    store.create("att");
    store.start("att");
    start_attacker(&store, "att", &script, &dirs, "");
    let att = init_of(&store, "att");

    let secret = unique("fvm-tok-secret");
    for name in ["d0", "d1", "d2"] {
        let dir = dirs.join(name);
        ok_within(&store, &["create", name, "--dir", s(&dir)]);
        assert!(
            covered_in(att, &dir),
            "{} is not covered in the running vm att",
            s(&dir)
        );
    }
    ok_within(&store, &["start", "d0"]);
    ok_within(
        &store,
        &[
            "run",
            "d0",
            "--",
            "sh",
            "-c",
            &format!("echo {secret} > /root/s0"),
        ],
    );
    ok_within(&store, &["stop", "d0"]);
    ok_within(
        &store,
        &[
            "run",
            "d1",
            "--",
            "sh",
            "-c",
            &format!(
                "echo {secret} > /root/s1; echo committed > {}/file",
                s(committed.path())
            ),
        ],
    );
    ok_within(&store, &["commit", "d1", s(committed.path())]);
    assert_eq!(
        std::fs::read_to_string(committed.path().join("file")).unwrap_or_default(),
        "committed\n"
    );
    ok_within(&store, &["copy", "d1", "d1c"]);
    ok_within(
        &store,
        &[
            "run",
            "d2",
            "--",
            "sh",
            "-c",
            &format!("echo {secret} > /root/s2"),
        ],
    );
    // A command that enters the attacker is stopped and killed by it: it ends,
    // and it is the only one that suffers.
    let _ = fvm_within(&store, &["run", "att", "--", "sleep", "1"]);
    ok_within(&store, &["list"]);
    // Time for the attacker to look at all of it.
    std::thread::sleep(Duration::from_secs(1));
    ok_within(&store, &["stop", "att"]);

    let seen = leaked(&store, "att");
    assert!(
        seen.contains(&control),
        "the attacker never read the plain host file next to the vm dirs:\n{seen}"
    );
    assert!(
        !seen.contains(&secret),
        "the attacker read a --dir vm's files:\n{seen}"
    );
    store.assert_clean();
}

/// `fvm run` into a VM that stops every process it can see (and the next pids of
/// its namespace) hurts only that command: it ends on SIGINT, or gives up on a
/// command that never reaches exec, and the store stays usable meanwhile.
#[test]
fn a_command_the_vm_stops_ends_on_sigint_and_blocks_nothing() {
    let test = "a_command_the_vm_stops_ends_on_sigint_and_blocks_nothing";
    if !needs_root(test) || !needs_tool(test, "python3") {
        return;
    }
    let store = TestStore::new("esch-stopped");
    let outside = var_tmp_dir("esch-stopped");
    let script = outside.path().join("attack.py");
    std::fs::write(&script, ATTACKER).expect("write the attacker");
    store.create("att");
    store.start("att");
    start_attacker(&store, "att", &script, outside.path(), "stop-only");
    let mut run = store.background(&["run", "att", "--", "sleep", "1000"]);
    std::thread::sleep(Duration::from_secs(1));
    // Meanwhile the store and the VM answer.
    ok_within(&store, &["list"]);
    ok_within(&store, &["create", "other"]);
    assert!(!run.finished(), "the command ended by itself");
    common::signal("INT", &[run.pid()]);
    let out = run.finish();
    assert_ne!(out.code, 0, "{out}");
    ok_within(&store, &["stop", "att"]);
    store.assert_clean();
}

/// Holds a lock file of the store (as a host command does) until dropped.
struct Held(std::fs::File);

impl Held {
    /// `rel`: "lock" for the store's, "vms/NAME/lock" for a VM's.
    fn lock(store: &TestStore, rel: &str) -> Held {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(store.root.join(rel))
            .expect("open the lock file");
        f.lock().expect("flock");
        Held(f)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// A `create --dir` killed while it covers the dir in a running VM leaves a VM
/// that can't start while that VM isn't covered (one line why), and whose next
/// start covers it first.
#[test]
fn an_interrupted_dir_create_leaves_a_vm_that_starts_only_once_hidden_everywhere() {
    let test = "an_interrupted_dir_create_leaves_a_vm_that_starts_only_once_hidden_everywhere";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esch-interrupt");
    let outside = var_tmp_dir("esch-interrupt");
    let dir = outside.path().join("x");
    store.create("early");
    store.start("early");
    let early = init_of(&store, "early");
    // While the VM is busy (its lock held), the create waits to cover it.
    let held = Held::lock(&store, "vms/early/lock");
    let create = store.background(&["create", "x", "--dir", s(&dir)]);
    let pending = store.root.join("vms/x/hide-pending");
    wait_until("vm x exists, marked as not yet hidden", || pending.exists());
    kill9(&[create.pid()]);
    let _ = create.finish();
    assert!(!covered_in(early, &dir));

    let out = fvm_within(&store, &["start", "x"]);
    assert_eq!(
        out.code, 125,
        "vm x started while early doesn't cover its dir:\n{out}"
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(
        out.stderr.contains("cannot hide") && out.stderr.contains("\"early\""),
        "{out}"
    );
    assert_eq!(store.status("x"), "stopped");

    drop(held);
    ok_within(&store, &["start", "x"]);
    assert!(!pending.exists());
    assert!(
        covered_in(early, &dir),
        "{} is not covered in vm early",
        s(&dir)
    );
    let secret = unique("fvm-tok-secret");
    ok_within(
        &store,
        &[
            "run",
            "x",
            "--",
            "sh",
            "-c",
            &format!("echo {secret} > /root/s"),
        ],
    );
    let look = fvm_within(
        &store,
        &[
            "run",
            "early",
            "--",
            "sh",
            "-c",
            &format!("cat {}/-/upper/root/s", s(&dir)),
        ],
    );
    assert!(!look.stdout.contains(&secret), "{look}");
    store.stop("x");
    store.stop("early");
    store.assert_clean();
}

/// A process of a running VM that made the (empty) `--dir` its working
/// directory before the create covered it keeps that directory, but none of the
/// new VM's files ever appear in it: the VM gets a new directory at the path.
#[test]
fn a_vm_holding_the_dir_open_from_before_the_create_reads_nothing_of_it() {
    let test = "a_vm_holding_the_dir_open_from_before_the_create_reads_nothing_of_it";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esch-held");
    let outside = var_tmp_dir("esch-held");
    let dir = outside.path().join("x");
    std::fs::create_dir(&dir).expect("mkdir");
    store.create("early");
    store.start("early");
    let tag = unique("fvm-holder");
    let _ = fvm_within(
        &store,
        &[
            "run",
            "early",
            "--",
            "sh",
            "-c",
            &format!(
                "cd {} && setsid sh -c 'while :; do cat ./-/upper/root/s; sleep 0.1; done # {tag}' \
                 </dev/null >/root/fvm-leak 2>/dev/null &",
                s(&dir)
            ),
        ],
    );
    wait_until("the holder runs in vm early", || {
        store.vm_pids("early").iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains(&tag))
        })
    });
    ok_within(&store, &["create", "x", "--dir", s(&dir)]);
    let secret = unique("fvm-tok-secret");
    ok_within(
        &store,
        &[
            "run",
            "x",
            "--",
            "sh",
            "-c",
            &format!("echo {secret} > /root/s"),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    ok_within(&store, &["stop", "early"]);
    let seen = std::fs::read_to_string(store.root.join("vms/early/layers/-/upper/root/fvm-leak"))
        .expect("the holder's output");
    assert!(
        !seen.contains(&secret),
        "vm early read vm x's files through a directory it held open:\n{seen}"
    );
    store.assert_clean();
}

/// A `--dir` that enters the store's index after a starting VM read its mount
/// plan (a create racing the start, which may not yet find the VM running) is
/// covered in that VM before any of its processes runs. The race is made
/// certain: the store's lock is held while the VM starts, the dir is added to
/// the index meanwhile, as a create's first step does, then the lock is let go.
#[test]
fn a_dir_made_while_a_vm_starts_is_covered_before_the_vm_runs() {
    let test = "a_dir_made_while_a_vm_starts_is_covered_before_the_vm_runs";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esch-race");
    let outside = var_tmp_dir("esch-race");
    let dir = outside.path().join("x");
    store.create("y");
    let held = Held::lock(&store, "lock");
    let start = store.background(&["start", "y"]);
    let state = store.root.join("vms/y/state.json");
    wait_until("vm y is recorded as running", || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains("running"))
    });
    std::fs::create_dir(&dir).expect("mkdir");
    let index = store.root.join("dirs");
    let mut dirs = std::fs::read_to_string(&index).unwrap_or_default();
    dirs.push_str(&format!("{}\n", s(&dir)));
    std::fs::write(&index, dirs).expect("write the index");
    drop(held);
    let out = start.finish();
    assert_eq!(out.code, 0, "{out}");
    assert!(
        covered_in(init_of(&store, "y"), &dir),
        "{} is not covered in vm y",
        s(&dir)
    );
    store.stop("y");
    store.assert_clean();
}

/// `start` of a VM whose `--dir` was deleted refuses with one line and doesn't
/// make the dir again; `delete` then removes the VM and its place in the index.
#[test]
fn start_refuses_a_vm_whose_dir_was_deleted() {
    let test = "start_refuses_a_vm_whose_dir_was_deleted";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esch-gone");
    let outside = var_tmp_dir("esch-gone");
    let dir = outside.path().join("x");
    ok_within(&store, &["create", "x", "--dir", s(&dir)]);
    std::fs::remove_dir_all(&dir).expect("remove the dir");
    let out = fvm_within(&store, &["start", "x"]);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(out.stderr.contains("is gone"), "{out}");
    assert!(!dir.exists(), "start made the deleted --dir again");
    let out = fvm_within(&store, &["run", "x", "--", "true"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(!dir.exists(), "run made the deleted --dir again");
    ok_within(&store, &["delete", "x"]);
    // (The index loses the dir once the delete's remover is done, a moment later.)
    wait_until("the dir leaves the store's index", || {
        let index = std::fs::read_to_string(store.root.join("dirs")).unwrap_or_default();
        !index.contains(s(&dir))
    });
    store.assert_clean();
}

/// Kill the store's watcher; returns its pid.
#[track_caller]
fn kill_watcher(store: &TestStore) -> i32 {
    let mut pid = None;
    wait_until("the store's watcher runs", || {
        pid = store.watcher_pid();
        pid.is_some()
    });
    let pid = pid.expect("found");
    kill9(&[pid]);
    wait_until("the watcher is gone", || !is_alive_as(pid, "fvm-watch"));
    pid
}

/// A host process's namespace or cgroup line, to compare with ours.
fn ns_of(pid: &str, ns: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap_or_default()
}

/// Replace `path` by a new file (a new inode): a VM that looked at the old one
/// sees the new one only once the watcher drops its cached view.
fn rename_over(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// After the watcher was SIGKILLed, `list`, `stats`, `doctor` and `run` each
/// start it again (doctor says so), outside every VM's pid namespace and
/// cgroup, and host changes reach the running VM again.
#[test]
fn a_killed_watcher_is_started_again_by_the_next_command() {
    let test = "a_killed_watcher_is_started_again_by_the_next_command";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esch-watch");
    let outside = var_tmp_dir("esch-watch");
    let file = outside.path().join("f");
    std::fs::write(&file, "v0").expect("write");
    store.create("w");
    store.start("w");
    let read = || {
        try_run(
            store.command(&["run", "w", "--", "cat", s(&file)]),
            None,
            COMMAND_TIMEOUT,
        )
        .map(|o| o.stdout)
        .unwrap_or_default()
    };
    assert_eq!(read(), "v0");

    kill_watcher(&store);
    ok_within(&store, &["list"]);
    let mut revived = None;
    wait_until("`list` started the watcher again", || {
        revived = store.watcher_pid();
        revived.is_some()
    });
    let revived = revived.expect("found").to_string();
    for ns in ["pid", "mnt", "cgroup"] {
        assert_eq!(
            ns_of(&revived, ns),
            ns_of("self", ns),
            "watcher's {ns} namespace"
        );
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{revived}/cgroup")).unwrap_or_default();
    assert!(
        !cgroup.contains("fvm-"),
        "the watcher is in a vm's cgroup:\n{cgroup}"
    );
    rename_over(&file, "v1");
    wait_until("the vm sees the host's new file", || read() == "v1");

    for args in [&["stats"][..], &["doctor"][..]] {
        kill_watcher(&store);
        // (doctor's verdict on the rest of the host is not this test's business)
        let out = fvm_within(&store, args);
        if args == ["doctor"] {
            let row = out.stdout.lines().find(|l| l.starts_with("watcher"));
            assert!(
                row.is_some_and(|r| r.contains("warn") && r.contains("restarted")),
                "doctor doesn't report the missing watcher:\n{out}"
            );
        }
        wait_until("the watcher runs again", || store.watcher_pid().is_some());
    }
    kill_watcher(&store);
    ok_within(&store, &["run", "w", "--", "true"]);
    wait_until("`run` started the watcher again", || {
        store.watcher_pid().is_some()
    });
    rename_over(&file, "v2");
    wait_until("the vm sees the host's newer file", || read() == "v2");
    let out = fvm_within(&store, &["doctor"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("watcher") && l.contains("running")),
        "{out}"
    );
    store.stop("w");
    store.assert_clean();
}

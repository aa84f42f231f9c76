//! A store that was tampered with or damaged, and commands that lose a race or
//! die half-way: fvm refuses what it can't trust with one line, finishes or
//! undoes what was cut short, and never reports a done job as a failure.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestStore, needs_root};

/// A VM's layer directory replaced by a symlink (to a decoy directory) is
/// refused at start with one line, and nothing is written through it.
#[test]
fn start_refuses_a_symlinked_layer_directory() {
    if !needs_root("start_refuses_a_symlinked_layer_directory") {
        return;
    }
    let store = TestStore::new("symlayer");
    store.create("sl");
    store.fvm(&["run", "sl", "--", "true"]).ok();
    let decoy = tempfile::tempdir().unwrap();
    let layers = store.root.join("vms/sl/layers");
    let root_layer = layers.join("-");
    assert!(
        root_layer.join("upper").is_dir(),
        "no root layer at {root_layer:?}"
    );
    for (what, victim) in [
        ("upper", root_layer.join("upper")),
        ("layer", root_layer.clone()),
    ] {
        let aside = victim.with_extension("aside");
        std::fs::rename(&victim, &aside).unwrap();
        std::os::unix::fs::symlink(decoy.path(), &victim).unwrap();
        if what == "upper" {
            std::fs::create_dir_all(decoy.path().join("etc")).unwrap();
        }
        for args in [
            &["run", "sl", "--", "touch", "/etc/fvm-written-through"][..],
            &["start", "sl"][..],
        ] {
            let out = store.fvm(args);
            assert_eq!(out.code, 125, "{what}: `{}`:\n{out}", args.join(" "));
            assert_eq!(out.stderr.lines().count(), 1, "{what}:\n{out}");
            assert!(out.stderr.contains("symlink"), "{what}:\n{out}");
            assert_eq!(store.status("sl"), "stopped", "{what}");
        }
        assert!(
            !decoy.path().join("etc/fvm-written-through").exists()
                && !decoy.path().join("mount-point").exists(),
            "{what}: fvm wrote through the symlink into {:?}",
            decoy.path()
        );
        std::fs::remove_file(&victim).unwrap();
        std::fs::rename(&aside, &victim).unwrap();
    }
    store.fvm(&["run", "sl", "--", "true"]).ok();
    assert!(!Path::new(&decoy.path().join("upper")).exists());
    store.assert_clean();
}

/// The ways a state file can be damaged: bad JSON, not UTF-8, too large, a
/// directory.
fn damage(path: &Path, how: &str) {
    let _ = std::fs::remove_file(path);
    match how {
        "json" => std::fs::write(path, "{\"status\": \"flying\"").unwrap(),
        "utf8" => std::fs::write(path, b"\xff\xfe{}").unwrap(),
        "large" => std::fs::write(path, vec![b' '; 3 << 20]).unwrap(),
        "dir" => std::fs::create_dir(path).unwrap(),
        _ => unreachable!(),
    }
}

fn undamage(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir(path).unwrap();
    }
}

/// One rule for every kind of damaged state file: a VM that runs no process is
/// treated as stopped (and used again at once); one that runs is shown as
/// broken, left alone by `doctor --cleanup` (which says so and keeps its
/// processes), and ended by `fvm stop`.
#[test]
fn a_damaged_state_file_has_one_rule() {
    if !needs_root("a_damaged_state_file_has_one_rule") {
        return;
    }
    let store = TestStore::new("badstate");
    store.create("bs");
    let state = store.root.join("vms/bs/state.json");
    for how in ["json", "utf8", "large", "dir"] {
        // Stopped: treated as stopped, and the next command works.
        store.fvm(&["run", "bs", "--", "true"]).ok();
        // Damaged once the stop is done (`run` returns before it is).
        store.wait_for_vm_locks(Duration::from_secs(60));
        damage(&state, how);
        assert_eq!(store.status("bs"), "stopped", "{how}");
        undamage(&state);
        store.fvm(&["run", "bs", "--", "true"]).ok();

        // Running: broken, left alone by doctor --cleanup, ended by stop.
        store.start("bs");
        store
            .fvm(&[
                "run",
                "bs",
                "--",
                "sh",
                "-c",
                "nohup sleep 1000 >/dev/null 2>&1 &",
            ])
            .ok();
        let pids = store.vm_pids("bs");
        assert!(!pids.is_empty(), "{how}");
        damage(&state, how);
        assert_eq!(store.status("bs"), "broken", "{how}");
        let out = store.fvm(&["doctor", "--cleanup"]).ok();
        assert!(out.stdout.contains("left alone"), "{how}:\n{out}");
        assert!(
            pids.iter()
                .all(|p| Path::new(&format!("/proc/{p}")).exists()),
            "{how}: doctor --cleanup killed the vm it said it left alone:\n{out}"
        );
        undamage(&state);
        let out = store.fvm(&["stop", "bs"]).ok();
        assert!(
            store.vm_pids("bs").is_empty(),
            "{how}: stop left processes:\n{out}"
        );
        assert_eq!(store.status("bs"), "stopped", "{how}");
    }
    store.assert_clean();
}

/// A store on a small tmpfs of the test's own, unmounted (after every VM of it is
/// deleted) on drop.
struct SmallStore {
    store: TestStore,
}

impl SmallStore {
    fn new(tag: &str, size: &str) -> SmallStore {
        let store = TestStore::new(tag);
        let mut mount = std::process::Command::new("mount");
        mount
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "fvm-test-store",
            ])
            .arg(&store.root);
        common::run(mount, None).ok();
        SmallStore { store }
    }

    /// Fill the filesystem until it has no room left.
    fn fill(&self) {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "dd if=/dev/zero of={}/filler bs=16k 2>/dev/null; true",
            self.store.root.display()
        ));
        common::run(cmd, None).ok();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.store.root.join("filler"));
    }
}

impl Drop for SmallStore {
    fn drop(&mut self) {
        self.free();
        for problem in self.store.delete_all() {
            eprintln!("{problem}");
        }
        // Lazily: the store's watcher may still hold a file there for a moment.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.store.root)
            .status();
    }
}

/// With the store's filesystem full, `stop` stops the VM and says so (status 0,
/// a warning about the cleanup it couldn't write), a `run` whose command filled
/// the disk reports the command's own status, a start that can't record itself
/// fails with one line and leaves nothing running, and once there is room the
/// next command finishes the cleanup.
#[test]
fn a_full_store_disk_never_turns_a_done_job_into_a_failure() {
    if !needs_root("a_full_store_disk_never_turns_a_done_job_into_a_failure") {
        return;
    }
    let small = SmallStore::new("fullstore", "8m");
    let store = &small.store;
    store.create("fd");
    store.fvm(&["run", "fd", "--", "true"]).ok();

    // stop on a full disk.
    store.start("fd");
    small.fill();
    let out = store.fvm(&["stop", "fd"]);
    assert_eq!(out.code, 0, "stop on a full disk:\n{out}");
    assert!(
        store.vm_pids("fd").is_empty(),
        "stop left processes:\n{out}"
    );
    small.free();
    assert_eq!(store.status("fd"), "stopped");
    store.fvm(&["run", "fd", "--", "true"]).ok();

    // A command that fills the disk itself, then exits 3.
    let out = store.fvm(&[
        "run",
        "fd",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/fvm-test-fill bs=16k 2>/dev/null; exit 3",
    ]);
    assert_eq!(out.code, 3, "the command's status:\n{out}");
    assert!(store.vm_pids("fd").is_empty(), "{out}");

    // A start that can't record itself.
    let out = store.fvm(&["run", "fd", "--", "true"]);
    if out.code != 0 {
        assert_eq!(out.code, 125, "{out}");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(store.vm_pids("fd").is_empty(), "{out}");
    }
    let _ = std::fs::remove_file(store.root.join("vms/fd/layers/-/upper/fvm-test-fill"));
    store.fvm(&["run", "fd", "--", "true"]).ok();
    assert_eq!(store.status("fd"), "stopped");
    store.delete_all();
    let left: Vec<String> = store
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains("fvm-test-store"))
        .collect();
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// A `run` whose command a concurrent `fvm stop` ended says that the VM was
/// stopped, both when the run started the VM and when it entered a running one.
#[test]
fn run_ended_by_a_stop_says_the_vm_was_stopped() {
    if !needs_root("run_ended_by_a_stop_says_the_vm_was_stopped") {
        return;
    }
    let store = TestStore::new("runstop");
    store.create("rs");
    for phase in ["cold", "entered"] {
        if phase == "entered" {
            store.start("rs");
        }
        let bg = store.background(&["run", "rs", "--", "sleep", "1000"]);
        common::wait_until("the sleep runs in the vm", || {
            store.vm_pids("rs").iter().any(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0"))
            })
        });
        store.fvm(&["stop", "rs"]).ok();
        let out = bg.finish();
        assert!(
            out.code == 143 || out.code == 137,
            "{phase}: the command's status:\n{out}"
        );
        assert!(
            out.stderr.contains("fvm: stopped: fvm stop"),
            "{phase}: run didn't say the vm was stopped:\n{out}"
        );
        assert_eq!(store.status("rs"), "stopped", "{phase}");
    }
    store.assert_clean();
}

/// A VM that `run` started keeps running while processes its command left in the
/// background live (`list` says running); once the last one ends, the store's
/// watcher cleans up after it (state, cgroups) without waiting for the next
/// command on it, and a delete then just works.
#[test]
fn a_run_vm_is_cleaned_up_when_its_last_process_ends() {
    if !needs_root("a_run_vm_is_cleaned_up_when_its_last_process_ends") {
        return;
    }
    let store = TestStore::new("runbg");
    store.create("bg");
    store
        .fvm(&["run", "bg", "--", "sh", "-c", "sleep 1 >/dev/null 2>&1 &"])
        .ok();
    assert_eq!(
        store.status("bg"),
        "running",
        "the background sleep still runs"
    );
    let cgroup = store.cgroup_dir("bg", "pids");
    let state = store.root.join("vms/bg/state.json");
    common::wait_until("the watcher cleans up after the vm's last process", || {
        !cgroup.exists() && std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"stopped\""))
    });
    store.fvm(&["delete", "bg"]).ok();
    store.assert_clean();
}

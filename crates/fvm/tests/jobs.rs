//! fvm under job runners: `run --rm --diff-out` from many parallel callers on one
//! store, each diff holding exactly its own VM's change; SIGINT and SIGTERM to
//! `fvm run` stop the VM and fvm exits with the command's status; SIGKILL to
//! `fvm run` ends the VM's processes; `--cgroup-parent` nests the VM's cgroup;
//! nothing is left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Background, TestStore, live_comm, needs_root, needs_tool, pids_in_cgroups_matching, run,
    signal, unique, wait_until,
};
use serde_json::Value;

/// The changes a `--diff-out` file lists, as `(kind, path)`.
fn changes(file: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", file.display()));
    v.as_array()
        .unwrap_or_else(|| panic!("{} is not a list:\n{text}", file.display()))
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or_default().to_owned(),
                c["path"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The store's id in cgroup names (made known by creating and inspecting a VM).
fn store_id(store: &TestStore) -> String {
    store.create("idprobe");
    store.fvm(&["delete", "idprobe"]).ok();
    store.id().expect("the store's id")
}

/// Wait until the VM `name` of the store runs a process called `comm`.
fn wait_for_process(id: &str, name: &str, comm: &str) {
    let needle = format!("fvm-{id}-{name}");
    wait_until(&format!("{name} runs {comm}"), || {
        pids_in_cgroups_matching(&needle)
            .into_iter()
            .any(|p| live_comm(p).as_deref() == Some(comm))
    });
}

#[test]
fn parallel_runs_each_write_their_own_diff() {
    if !needs_root("parallel_runs_each_write_their_own_diff")
        || !needs_tool("parallel_runs_each_write_their_own_diff", "xargs")
    {
        return;
    }
    let store = TestStore::new("jobs");
    let out = common::temp_dir("jobs-out");
    let tag = unique("job");
    // 200 callers, 8 at a time, each a throw-away VM that writes one file of its
    // own number; fvm is called by xargs as a batch runner would.
    // (The placeholder can't be a letter a temporary name may hold.)
    let script = format!(
        "seq 0 199 | xargs -P 8 -I @@ {fvm} --root {root} run --rm --diff-out {out}/@@.json \
         -- sh -c 'echo @@ > /tmp/{tag}-@@; exit $((@@ % 3))'; echo xargs=$?",
        fvm = common::FVM,
        root = store.root.display(),
        out = out.path().display(),
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&script);
    let done = run(cmd, None);
    // Every third command ends with status 0, the others fail (xargs says 123):
    // their diffs are written all the same.
    assert!(done.stdout.contains("xargs=123"), "{done}");
    for n in 0..200 {
        let file = out.path().join(format!("{n}.json"));
        assert_eq!(
            changes(&file),
            // /tmp itself changed only by its new child: not listed.
            [("A".to_owned(), format!("/tmp/{tag}-{n}"))],
            "diff of job {n}"
        );
        assert!(
            !Path::new(&format!("/tmp/{tag}-{n}")).exists(),
            "job {n} wrote to the host"
        );
    }
    // Only the 200 files: no temporary file was left beside them.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 200);
    store.assert_clean();
}

#[test]
fn signals_to_fvm_run_stop_the_vm() {
    if !needs_root("signals_to_fvm_run_stop_the_vm") {
        return;
    }
    let store = TestStore::new("jobsig");
    let id = store_id(&store);
    let out = common::temp_dir("jobsig-out");
    let diff = |n: &str| out.path().join(format!("{n}.json"));
    let start = |name: &str, script: &str| -> Background {
        let file = diff(name);
        store.background(&[
            "run",
            "--rm",
            "--stop-time",
            "1",
            "--diff-out",
            file.to_str().unwrap(),
            name,
            "--",
            "sh",
            "-c",
            script,
        ])
    };
    // SIGINT: passed on to the command, which handles it and exits 5.
    let int = start(
        "sig-int",
        "touch /etc/fvm-int; trap 'exit 5' INT; sleep 100 & wait",
    );
    // SIGTERM to a command that ignores it: killed once the grace of 1 s is over.
    let term = start("sig-term", "touch /etc/fvm-term; trap '' TERM; sleep 100");
    // SIGKILL to fvm: the VM's processes end with it; no diff is written.
    let kill = start("sig-kill", "touch /etc/fvm-kill; sleep 100");
    for name in ["sig-int", "sig-term", "sig-kill"] {
        wait_for_process(&id, name, "sleep");
    }
    signal("INT", &[int.pid()]);
    signal("TERM", &[term.pid()]);
    signal("KILL", &[kill.pid()]);
    let int = int.finish();
    assert_eq!(int.code, 5, "{int}");
    assert_eq!(changes(&diff("sig-int")).last().unwrap().1, "/etc/fvm-int");
    let term = term.finish();
    assert_eq!(term.code, 137, "{term}");
    assert_eq!(
        changes(&diff("sig-term")).last().unwrap().1,
        "/etc/fvm-term"
    );
    let _ = kill.finish();
    wait_until("the killed fvm's vm has no process left", || {
        pids_in_cgroups_matching(&format!("fvm-{id}-sig-kill")).is_empty()
    });
    assert!(!diff("sig-kill").exists());
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 2);
    for f in ["/etc/fvm-int", "/etc/fvm-term", "/etc/fvm-kill"] {
        assert!(!Path::new(f).exists(), "{f} reached the host");
    }
    // The throw-away VM of the killed fvm stays in the store, stopped, until a
    // cleanup: `doctor --cleanup` (in assert_clean) deletes it.
    store.assert_clean();
}

/// A cgroup made in every hierarchy, removed on drop (with what is left in it).
struct ParentCgroup {
    dirs: Vec<PathBuf>,
    name: String,
}

impl ParentCgroup {
    fn new() -> ParentCgroup {
        let name = unique("parent");
        let mut dirs = Vec::new();
        let cgroup_roots = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in cgroup_roots.lines() {
            let Some((_, after)) = line.split_once(" - ") else {
                continue;
            };
            if !after.starts_with("cgroup ") && !after.starts_with("cgroup2 ") {
                continue;
            }
            let mount = line.split(' ').nth(4).unwrap();
            let dir = Path::new(mount).join(&name);
            std::fs::create_dir(&dir).unwrap();
            dirs.push(dir);
        }
        ParentCgroup { dirs, name }
    }
}

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn cgroup_parent_nests_the_vm() {
    if !needs_root("cgroup_parent_nests_the_vm") {
        return;
    }
    let store = TestStore::new("jobcg");
    let id = store_id(&store);
    let parent = ParentCgroup::new();
    let given = format!("/{}", parent.name);
    let vm = store.background(&[
        "run",
        "--rm",
        "--cgroup-parent",
        &given,
        "nested",
        "--",
        "sleep",
        "100",
    ]);
    wait_for_process(&id, "nested", "sleep");
    // Every process of the VM is in the parent's subtree, in every hierarchy.
    let needle = format!("fvm-{id}-nested");
    for pid in pids_in_cgroups_matching(&needle) {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        for line in cg.lines().filter(|l| l.contains(&needle)) {
            let path = line.splitn(3, ':').nth(2).unwrap();
            assert_eq!(path, format!("{given}/{needle}"), "{cg}");
        }
    }
    // The parent's owner kills the VM as it would its own job: every process of
    // the parent's subtree (here from its pids hierarchy) gets SIGKILL.
    let pids = pids_in_cgroups_matching(&parent.name);
    assert!(!pids.is_empty());
    signal("KILL", &pids);
    // (fvm itself is not in the parent here, so it lives to say so.)
    let out = vm.finish();
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("the vm stopped"), "{out}");
    // The VM's cgroup is gone from the parent; the parent is left to its owner.
    for d in &parent.dirs {
        let left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(left.is_empty(), "{} still holds {left:?}", d.display());
        assert!(d.is_dir());
    }
    // Paths outside the cgroup filesystem and parents that don't exist are
    // refused, each with one line.
    for (bad, says) in [
        ("/../../etc", "invalid cgroup parent"),
        ("/", "invalid cgroup parent"),
        ("/a/./b", "invalid cgroup parent"),
        ("/fvm-test-no-such-parent", "does not exist"),
    ] {
        let out = store.fvm(&["run", "--rm", "--cgroup-parent", bad, "--", "true"]);
        assert_eq!(out.code, 125, "{out}");
        assert!(out.stderr.contains(says), "{bad}: {out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    }
    store.assert_clean();
}

//! How durable a VM's layers are (`layers = "disk" | "volatile"`): a volatile VM's
//! overlays skip every sync while it runs, its changes are synced and kept when it
//! stops, and layers left behind by a host that went down while the VM ran are
//! refused by start, commit and copy with one line, until the user removes the marker.
//!
//! A host crash can't be staged in a test, so it is simulated the way fvm sees one:
//! the VM's init is gone and its state names an earlier boot of the host.

mod common;

use std::path::{Path, PathBuf};

use common::{TestStore, kill9, needs_root};
use serde_json::Value;

/// overlayfs's markers of volatile layers under a VM's layers directory.
fn markers(store: &TestStore, name: &str) -> Vec<PathBuf> {
    let layers = store.root.join("vms").join(name).join("layers");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&layers).expect("read the layers directory") {
        let m = entry.unwrap().path().join("work/work/incompat/volatile");
        if m.exists() {
            found.push(m);
        }
    }
    found
}

fn state(store: &TestStore, name: &str) -> Value {
    let path = store.root.join("vms").join(name).join("state.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The options of the VM's root overlay, as the VM's own mount table shows them.
fn root_options(store: &TestStore, name: &str) -> String {
    let out = store.sh(name, "grep '^overlay / ' /proc/mounts").ok();
    out.out().to_owned()
}

/// Start VM `name`, let it write, then make it look like the host went down while
/// it ran: its state names another boot and its init is killed (by pid).
fn crash_host_while_running(store: &TestStore, name: &str) {
    store.start(name);
    store.sh(name, "echo kept > /var/tmp/layers-test").ok();
    let path = store.root.join("vms").join(name).join("state.json");
    let mut s = state(store, name);
    let pid = s["init"]["pid"].as_i64().expect("running init") as i32;
    let earlier = "00000000-0000-4000-8000-000000000000";
    s["init"]["boot_id"] = Value::from(earlier);
    std::fs::write(&path, serde_json::to_vec(&s).unwrap()).unwrap();
    let boot = store.root.join("vms").join(name).join("volatile-boot");
    std::fs::write(boot, format!("{earlier}\n")).unwrap();
    kill9(&[pid]);
    common::wait_until("the init to go", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
}

#[test]
fn a_volatile_vm_skips_syncs_and_keeps_its_changes_after_a_stop() {
    if !needs_root("a_volatile_vm_skips_syncs_and_keeps_its_changes_after_a_stop") {
        return;
    }
    let store = TestStore::new("layers-vol");
    let out = store.fvm(&["create", "v", "--layers", "volatile"]).ok();
    assert_eq!(out.out(), "v");
    let policy = store.fvm(&["config", "v"]).ok();
    assert!(policy.stdout.contains("layers = \"volatile\""), "{policy}");
    store.start("v");
    assert!(
        root_options(&store, "v").contains("volatile"),
        "the root overlay is not volatile"
    );
    store
        .sh("v", "echo kept > /var/tmp/layers-test && sync")
        .ok();
    // overlayfs marks the layers while they are in use.
    assert!(!markers(&store, "v").is_empty());
    store.stop("v");
    // Synced and settled after the stop, in the background: the layers are as
    // durable as a disk VM's then.
    common::wait_until("the volatile layers to be settled", || {
        markers(&store, "v").is_empty()
    });
    let out = store.sh("v", "cat /var/tmp/layers-test").ok();
    assert_eq!(out.out(), "kept");
    let diff = store.fvm(&["diff", "v"]).ok();
    assert!(diff.stdout.contains("A /var/tmp/layers-test"), "{diff}");
    // A disk VM's root overlay has no such option.
    store.create("d");
    assert!(!root_options(&store, "d").contains("volatile"));
    assert_eq!(markers(&store, "d"), Vec::<PathBuf>::new());
}

#[test]
fn layers_left_by_a_host_that_went_down_are_refused_until_the_marker_goes() {
    if !needs_root("layers_left_by_a_host_that_went_down_are_refused_until_the_marker_goes") {
        return;
    }
    let store = TestStore::new("layers-lost");
    store.fvm(&["create", "v", "--layers", "volatile"]).ok();
    store.inspect("v");
    crash_host_while_running(&store, "v");
    // Any command cleans up after the init; the markers must stay.
    let listed = store.fvm(&["list", "--json"]).ok();
    assert!(listed.stdout.contains("stopped"), "{listed}");
    let left = markers(&store, "v");
    assert!(!left.is_empty());
    let policy = std::fs::read(store.root.join("vms/v/vm.toml")).unwrap();
    for args in [
        &["start", "v"][..],
        &["run", "v", "--", "true"],
        &["commit", "v"],
        &["copy", "v", "v2"],
    ] {
        let out = store.fvm(args).code(125);
        let err = out.stderr.trim();
        assert_eq!(
            err.lines().filter(|l| l.starts_with("fvm:")).count(),
            1,
            "{out}"
        );
        assert!(err.contains("host went down"), "{out}");
        assert!(err.contains(&left[0].display().to_string()), "{out}");
    }
    // Nothing was changed or made: no copy, the policy and the markers as they were.
    assert!(!store.root.join("vms/v2").exists());
    assert_eq!(
        std::fs::read(store.root.join("vms/v/vm.toml")).unwrap(),
        policy
    );
    assert_eq!(markers(&store, "v"), left);
    // Reading what is left still works.
    let diff = store.fvm(&["diff", "v"]).ok();
    assert!(diff.stdout.contains("A /var/tmp/layers-test"), "{diff}");
    // Switching to disk layers does not make them trustworthy.
    store.fvm(&["config", "v", "--layers", "disk"]).ok();
    store.fvm(&["start", "v"]).code(125);
    // The user's way out, which the message names.
    for m in &left {
        std::fs::remove_dir_all(m).unwrap();
    }
    let out = store.sh("v", "cat /var/tmp/layers-test").ok();
    assert_eq!(out.out(), "kept");
}

#[test]
fn a_crashed_init_in_the_same_boot_leaves_settled_layers() {
    if !needs_root("a_crashed_init_in_the_same_boot_leaves_settled_layers") {
        return;
    }
    let store = TestStore::new("layers-init");
    store.fvm(&["create", "v", "--layers", "volatile"]).ok();
    store.inspect("v");
    store.start("v");
    store.sh("v", "echo kept > /var/tmp/layers-test").ok();
    let pid = state(&store, "v")["init"]["pid"].as_i64().unwrap() as i32;
    kill9(&[pid]);
    common::wait_until("the init to go", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    // The host is up, so the page cache has every write: cleanup syncs and settles.
    let out = store.sh("v", "cat /var/tmp/layers-test").ok();
    assert_eq!(out.out(), "kept");
    store.stop("v");
    common::wait_until("the volatile layers to be settled", || {
        markers(&store, "v").is_empty()
    });
}

#[test]
fn markers_of_this_boot_are_settled_by_the_next_start() {
    if !needs_root("markers_of_this_boot_are_settled_by_the_next_start") {
        return;
    }
    // The background sync after a stop may not have run yet when the VM is used
    // again (or may have been killed): markers of a run in this boot of the host
    // are settled by the next command itself.
    let store = TestStore::new("layers-next");
    store.fvm(&["create", "v", "--layers", "volatile"]).ok();
    store.inspect("v");
    store.start("v");
    store.sh("v", "echo kept > /var/tmp/layers-test").ok();
    store.stop("v");
    common::wait_until("the volatile layers to be settled", || {
        markers(&store, "v").is_empty()
    });
    // As a run of this boot leaves them, before its sync.
    let layer = store.root.join("vms/v/layers/-");
    std::fs::create_dir_all(layer.join("work/work/incompat/volatile")).unwrap();
    std::fs::write(layer.join("work/work/incompat/volatile/dirty"), b"").unwrap();
    let out = store.sh("v", "cat /var/tmp/layers-test").ok();
    assert_eq!(out.out(), "kept");
    store.fvm(&["copy", "v", "v2"]).ok();
    store.inspect("v2");
    common::wait_until("the volatile layers to be settled", || {
        markers(&store, "v").is_empty()
    });
}

#[test]
fn layers_are_checked_and_not_changed_on_a_running_vm() {
    if !needs_root("layers_are_checked_and_not_changed_on_a_running_vm") {
        return;
    }
    let store = TestStore::new("layers-cfg");
    for bad in ["tmpfs", "", "Volatile", "disk,volatile"] {
        let out = store.fvm(&["create", "b", "--layers", bad]).code(125);
        assert!(out.stderr.contains("use disk or volatile"), "{out}");
        assert!(!store.root.join("vms/b").exists());
    }
    store.create("v");
    let policy = std::fs::read(store.root.join("vms/v/vm.toml")).unwrap();
    let out = store.fvm(&["config", "v", "--layers", "memory"]).code(125);
    assert!(out.stderr.contains("use disk or volatile"), "{out}");
    store.start("v");
    let out = store
        .fvm(&["config", "v", "--layers", "volatile"])
        .code(125);
    assert!(out.stderr.contains("once it is stopped"), "{out}");
    assert_eq!(
        std::fs::read(store.root.join("vms/v/vm.toml")).unwrap(),
        policy
    );
    // Setting what it already has is no change.
    store.fvm(&["config", "v", "--layers", "disk"]).ok();
    store.stop("v");
    store.fvm(&["config", "v", "--layers", "volatile"]).ok();
    store.start("v");
    assert!(root_options(&store, "v").contains("volatile"));
    store.stop("v");
    store.fvm(&["config", "v", "--layers", "disk"]).ok();
    let policy = store.fvm(&["config", "v"]).ok();
    assert!(!policy.stdout.contains("\nlayers"), "{policy}");
}

#[test]
fn throw_away_vms_keep_their_layers_off_the_disk() {
    if !needs_root("throw_away_vms_keep_their_layers_off_the_disk") {
        return;
    }
    let store = TestStore::new("layers-rm");
    let probe = common::unique("fvm-rm-probe");
    let script = format!("head -c 1048576 /dev/zero > /var/tmp/{probe} && sleep 30");
    let vm = store.background(&["run", "--rm", "--", "sh", "-c", &script]);
    // The throw-away VM's init, from its state file, once the VM shows its file.
    let mut seen = None;
    common::wait_until("the throw-away vm to write its file", || {
        seen = running_inits(&store).into_iter().find(|pid| {
            std::fs::metadata(format!("/proc/{pid}/root/var/tmp/{probe}"))
                .is_ok_and(|m| m.len() == 1 << 20)
        });
        seen.is_some()
    });
    let init = seen.unwrap();
    // Through the VM's root the file is there; in the store on disk it is not.
    let on_disk: Vec<_> = walk(&store.root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == probe.as_str()))
        .collect();
    assert_eq!(
        on_disk,
        Vec::<PathBuf>::new(),
        "a throw-away VM wrote to the store's disk"
    );
    kill9(&[init]);
    vm.finish();
    common::wait_until("the throw-away vm to be deleted", || {
        store.list().is_empty()
    });
}

/// The running inits named by the store's state files.
fn running_inits(store: &TestStore) -> Vec<i32> {
    let Ok(vms) = std::fs::read_dir(store.root.join("vms")) else {
        return Vec::new();
    };
    vms.filter_map(|e| {
        let text = std::fs::read_to_string(e.ok()?.path().join("state.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        Some(v["init"]["pid"].as_i64()? as i32)
    })
    .collect()
}

/// Every path under `dir` (not following symlinks).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn directory_inode_numbers_in_a_throw_away_vm_survive_dropped_caches() {
    if !needs_root("directory_inode_numbers_in_a_throw_away_vm_survive_dropped_caches") {
        return;
    }
    // Its layers are on a tmpfs, another filesystem than the host's: without
    // overlayfs's xino a directory's inode number changes when its cached inode is
    // dropped, and tar, rsync or find take that for a rename.
    let store = TestStore::new("layers-ino");
    let dir = common::unique("fvm-ino");
    let script = format!(
        "mkdir /var/tmp/{dir} && stat -c '%d %i' /var/tmp/{dir} /var/tmp && sleep 2 && \
         stat -c '%d %i' /var/tmp/{dir} /var/tmp"
    );
    let vm = store.background(&["run", "--rm", "--", "sh", "-c", &script]);
    for _ in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::write("/proc/sys/vm/drop_caches", "2\n").unwrap();
    }
    let out = vm.finish().ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[..2], lines[2..], "inode numbers changed:\n{out}");
    // One device for the directories of both layers, as on the host.
    assert_eq!(
        lines[0].split(' ').next(),
        lines[1].split(' ').next(),
        "{out}"
    );
}

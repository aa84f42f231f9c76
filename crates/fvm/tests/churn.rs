//! Many VMs made, used and deleted one after another leave nothing behind.

mod common;

use common::{TestStore, cgroup_dirs_matching, is_alive_as, needs_root};

const COUNT: usize = 50;

#[test]
fn fifty_vms_created_started_used_and_deleted_leave_nothing() {
    if !needs_root("fifty_vms_created_started_used_and_deleted_leave_nothing") {
        return;
    }
    let store = TestStore::new("churn");
    let mut inits = Vec::new();
    for i in 0..COUNT {
        let name = format!("churn{i}");
        store.create(&name);
        store.start(&name);
        let init = store.init_pid(&name).expect("a started vm has an init");
        inits.push(init);
        let out = store.fvm(&["run", &name, "--", "true"]);
        assert_eq!(out.code, 0, "run in vm {name}:\n{out}");
        // Half are stopped first, half are deleted while running (--force).
        if i % 2 == 0 {
            store.stop(&name);
            store.fvm(&["delete", &name]).ok();
        } else {
            store.fvm(&["delete", "--force", &name]).ok();
        }
        assert!(
            !is_alive_as(init, "fvm-init"),
            "vm {name}'s init (pid {init}) survived delete"
        );
    }

    assert!(store.list().is_empty(), "list after deleting every vm");
    // (A delete returns before its layers are removed: wait for the removers.)
    let vms = store.root.join("vms");
    let left = || -> Vec<_> {
        std::fs::read_dir(&vms)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    let start = std::time::Instant::now();
    while !left().is_empty() && start.elapsed() < common::WAIT {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left = left();
    assert!(left.is_empty(), "{} still holds {left:?}", vms.display());
    let id = store.id().expect("the store id is known from inspect");
    let cgroups = cgroup_dirs_matching(&format!("fvm-{id}-"));
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let alive: Vec<_> = inits
        .iter()
        .filter(|&&p| is_alive_as(p, "fvm-init"))
        .collect();
    assert!(alive.is_empty(), "inits still running: {alive:?}");
    store.assert_clean();
}

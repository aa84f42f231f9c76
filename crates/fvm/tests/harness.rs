//! The checks the other tests rely on: the leftover detector sees a VM's cgroup,
//! process and mount, and `doctor --cleanup` removes an orphaned cgroup of the
//! store. (If the detector saw nothing, every "nothing is left" assertion would
//! pass vacuously.)

mod common;

use std::process::Command;

use common::{TestStore, needs_root, run};

#[test]
fn the_leftover_check_sees_what_a_vm_leaves() {
    if !needs_root("the_leftover_check_sees_what_a_vm_leaves") {
        return;
    }
    let store = TestStore::new("harness");
    store.create("seen");
    assert!(store.leftovers().iter().any(|l| l.contains("vms/seen")));
    store.start("seen");
    let init = store.init_pid("seen").unwrap();
    let left = store.leftovers();
    assert!(
        left.iter().any(|l| l.starts_with("cgroup dir")),
        "a running vm's cgroup is not seen: {left:?}"
    );
    assert!(
        left.iter()
            .any(|l| l.starts_with(&format!("process {init} "))),
        "a running vm's init is not seen: {left:?}"
    );
    store.fvm(&["delete", "--force", "seen"]).ok();

    // A mount mentioning the store path.
    let mnt = store.root.join("fvm-harness-mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut mount = Command::new("mount");
    mount
        .args(["-t", "tmpfs", "-o", "size=1m", "fvm-harness"])
        .arg(&mnt);
    run(mount, None).ok();
    let left = store.leftovers();
    let mut umount = Command::new("umount");
    umount.arg("-l").arg(&mnt);
    run(umount, None).ok();
    assert!(
        left.iter().any(|l| l.starts_with("mount:")),
        "a mount under the store is not seen: {left:?}"
    );
    std::fs::remove_dir(&mnt).unwrap();

    // An orphaned cgroup of the store (as a crash would leave it): in v1's pids
    // hierarchy, or else at the root of a pure v2 host.
    let id = store.id().expect("store id");
    let parent = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .map(std::path::Path::new)
        .into_iter()
        .find(|p| p.join("cgroup.procs").exists());
    if parent.is_none() {
        common::skip(
            "the_leftover_check_sees_what_a_vm_leaves",
            "no v1 pids hierarchy and no v2 root at /sys/fs/cgroup",
        );
    }
    if let Some(parent) = parent {
        let ghost = parent.join(format!("fvm-{id}-ghost"));
        std::fs::create_dir(&ghost).unwrap();
        let left = store.leftovers();
        assert!(
            left.iter().any(|l| l.contains("-ghost")),
            "an orphaned cgroup is not seen: {left:?}"
        );
        store.fvm(&["doctor", "--cleanup"]);
        if ghost.exists() {
            let _ = std::fs::remove_dir(&ghost);
            panic!(
                "doctor --cleanup left the orphaned cgroup {}",
                ghost.display()
            );
        }
    }
    store.assert_clean();
}

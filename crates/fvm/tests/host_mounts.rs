//! A VM's writes are private and persistent, on the root filesystem and on a
//! second host mount alike.
//!
//! This file holds the only test that mounts something on the host. It lives in a
//! test binary of its own so that no other test's VM starts while the mount comes
//! and goes (cargo runs test binaries one after another).

mod common;

use common::{HostFile, TestStore, TmpfsMount, needs_root, unique};

#[test]
fn writes_stay_in_the_vm_across_restarts_on_every_host_mount() {
    if !needs_root("writes_stay_in_the_vm_across_restarts_on_every_host_mount") {
        return;
    }
    let store = TestStore::new("mounts");
    let mnt = TmpfsMount::new("mounts");
    let m = mnt.path.display().to_string();
    std::fs::write(mnt.path.join("host-file"), "from the host mount\n").unwrap();

    let etc_name = unique("etc");
    let etc_file = format!("/etc/{etc_name}");
    // Should the VM leak its write to the host, don't leave it there.
    let _leak_guard = HostFile(etc_file.clone().into());

    store.create("a");
    store.create("b");
    store.start("a");

    // The VM sees the host's files, on / and on the second mount.
    let seen = store
        .sh("a", &format!("cat /etc/hostname {m}/host-file"))
        .ok();
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert!(seen.stdout.starts_with(&host_hostname), "{seen}");
    assert!(seen.stdout.contains("from the host mount"), "{seen}");

    // A host file made after the VM started, under the second mount, is visible
    // (the VM never looked it up before).
    std::fs::write(mnt.path.join("later"), "made later\n").unwrap();
    let later = store.sh("a", &format!("cat {m}/later")).ok();
    assert_eq!(later.out(), "made later");

    // The VM writes under /etc and under the second mount.
    store
        .sh(
            "a",
            &format!(
                "echo private-etc > {etc_file} && echo private-mnt > {m}/vm-file && \
                 echo changed > {m}/host-file"
            ),
        )
        .ok();

    // The host is untouched.
    assert!(
        !std::path::Path::new(&etc_file).exists(),
        "the vm's write to {etc_file} reached the host"
    );
    assert!(
        !mnt.path.join("vm-file").exists(),
        "the vm's write under the second mount reached the host"
    );
    assert_eq!(
        std::fs::read_to_string(mnt.path.join("host-file")).unwrap(),
        "from the host mount\n",
        "the vm's change of a host file reached the host"
    );
    // The write to /etc is in the VM's layer of "/".
    let upper = store.root.join("vms/a/layers/-/upper/etc").join(&etc_name);
    assert_eq!(
        std::fs::read_to_string(&upper).unwrap_or_default(),
        "private-etc\n",
        "{} should hold the vm's write",
        upper.display()
    );

    // Stop and start: the VM still has its writes.
    store.stop("a");
    assert_eq!(store.status("a"), "stopped");
    store.start("a");
    let after = store
        .sh("a", &format!("cat {etc_file} {m}/vm-file {m}/host-file"))
        .ok();
    assert_eq!(after.out(), "private-etc\nprivate-mnt\nchanged", "{after}");
    store.stop("a");

    // A cold `run` (no start) sees them too.
    let cold = store.sh("a", &format!("cat {etc_file} {m}/vm-file")).ok();
    assert_eq!(cold.out(), "private-etc\nprivate-mnt");

    // Another VM sees the host's view, not a's.
    let other = store
        .sh(
            "b",
            &format!(
                "test ! -e {etc_file} && test ! -e {m}/vm-file && cat {m}/host-file {m}/later"
            ),
        )
        .ok();
    assert_eq!(other.out(), "from the host mount\nmade later", "{other}");

    // Still nothing on the host.
    assert!(!std::path::Path::new(&etc_file).exists());
    assert!(!mnt.path.join("vm-file").exists());

    store.assert_clean();
    drop(mnt);
}

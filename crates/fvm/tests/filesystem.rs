//! The VM's view of the filesystem: the store hidden, /sys read-only, a private
//! /dev and /run, `--dir` layers, and throw-away VMs that leave nothing behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    HostFile, TestStore, live_comm, needs_root, needs_tool, temp_dir, unique, wait_until,
};

#[test]
fn the_store_is_hidden_inside_the_vm() {
    if !needs_root("the_store_is_hidden_inside_the_vm") {
        return;
    }
    let store = TestStore::new("hidden");
    store.create("h1");
    store.create("h2");
    store.sh("h1", "echo mine > /etc/fvm-hidden-marker").ok();
    let root = store.root.display().to_string();
    let upper = store.root.join("vms/h1/layers/-/upper");
    assert!(upper.join("etc/fvm-hidden-marker").exists());
    let upper = upper.display().to_string();

    for vm in ["h1", "h2"] {
        // The store root looks empty, and nothing under it can be reached.
        let out = store.sh(vm, &format!("ls -A {root}")).ok();
        assert_eq!(out.out(), "", "vm {vm} sees the store:\n{out}");
        store
            .sh(
                vm,
                &format!(
                    "test ! -e {root}/vms && test ! -e {upper} && \
                     ! cat {upper}/etc/fvm-hidden-marker 2>/dev/null"
                ),
            )
            .ok();
        // And it can't be written to.
        let out = store.sh(vm, &format!("touch {root}/fvm-x"));
        assert_ne!(out.code, 0, "vm {vm} wrote into the store:\n{out}");
    }
    // The same in a started VM.
    store.start("h2");
    let out = store.sh("h2", &format!("ls -A {root}")).ok();
    assert_eq!(out.out(), "");
    assert!(!store.root.join("fvm-x").exists());
    store.assert_clean();
}

#[test]
fn sys_is_read_only_and_dev_is_private() {
    if !needs_root("sys_is_read_only_and_dev_is_private") {
        return;
    }
    let store = TestStore::new("devsys");
    store.create("d");
    let shm = HostFile(format!("/dev/shm/{}", unique("shm")).into());
    std::fs::write(&shm.0, "host shm\n").unwrap();

    let out = store.sh("d", "touch /sys/fvm-x");
    assert_ne!(out.code, 0, "wrote to /sys:\n{out}");
    assert!(out.stderr.contains("Read-only"), "{out}");

    let out = store.sh("d", "ls -A /dev").ok();
    let dev: Vec<&str> = out.stdout.split_whitespace().collect();
    for node in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue",
    ] {
        assert!(dev.contains(&node), "/dev lacks {node}: {dev:?}");
    }
    for disk in ["vda", "sda", "nvme0n1", "mem", "kmsg", "loop0"] {
        assert!(!dev.contains(&disk), "/dev has host device {disk}: {dev:?}");
    }
    let blocks = store.sh("d", "find /dev -type b").ok();
    assert_eq!(blocks.out(), "", "block devices in the vm's /dev");
    // The nodes are the real ones and work.
    let out = store
        .sh(
            "d",
            "stat -c %t:%T /dev/null /dev/zero; echo x > /dev/null && \
             head -c 4 /dev/zero | wc -c; ! echo x 2>/dev/null > /dev/full",
        )
        .ok();
    assert_eq!(out.out(), "1:3\n1:5\n4", "{out}");
    // /dev/shm is the VM's own: the host's file isn't there, the VM's doesn't leak.
    let vm_shm = format!("/dev/shm/{}", unique("vmshm"));
    let _vm_shm = HostFile(vm_shm.clone().into());
    store
        .sh(
            "d",
            &format!("test ! -e {} && echo vm > {vm_shm}", shm.0.display()),
        )
        .ok();
    assert!(
        !Path::new(&vm_shm).exists(),
        "the vm's /dev/shm file leaked"
    );
    // /proc is the VM's own procfs.
    let out = store.sh("d", "grep -c ' /proc proc ' /proc/mounts").ok();
    assert_eq!(out.out(), "1");
    store.assert_clean();
}

#[test]
fn run_is_private_and_tmp_follows_the_host() {
    if !needs_root("run_is_private_and_tmp_follows_the_host") {
        return;
    }
    let store = TestStore::new("run");
    store.create("r");
    let host_run = HostFile(format!("/run/{}", unique("run")).into());
    std::fs::write(&host_run.0, "host\n").unwrap();
    let vm_run = format!("/run/{}", unique("vmrun"));
    let _vm_run = HostFile(vm_run.clone().into());
    // /tmp is not a tmpfs on this host: the VM sees the host's files there (and
    // keeps its own writes private, like everywhere on the root filesystem).
    let files = temp_dir("tmpview");
    std::fs::write(files.path().join("host"), "host tmp\n").unwrap();
    let tmp = files.path().display();
    store.start("r");
    let out = store
        .sh(
            "r",
            &format!(
                "test ! -e {} && echo vm > {vm_run} && cat {vm_run} && cat {tmp}/host && \
                 echo vm > {tmp}/vm",
                host_run.0.display()
            ),
        )
        .ok();
    assert_eq!(out.out(), "vm\nhost tmp", "{out}");
    assert!(!Path::new(&vm_run).exists(), "the vm's /run file leaked");
    assert!(
        !files.path().join("vm").exists(),
        "the vm's /tmp file leaked"
    );
    // Private /run survives within the running VM, not across a restart.
    store.sh("r", &format!("cat {vm_run}")).ok();
    store.stop("r");
    store.sh("r", &format!("test ! -e {vm_run}")).ok();
    store.assert_clean();
}

#[test]
fn dir_holds_the_layers_and_is_removed_with_the_vm() {
    if !needs_root("dir_holds_the_layers_and_is_removed_with_the_vm") {
        return;
    }
    let store = TestStore::new("dir");
    let outside = temp_dir("layers");
    let dir = outside.path().join("d1-layers");
    let d = dir.to_str().unwrap();
    store.fvm(&["create", "d1", "--dir", d]).ok();
    let v = store.inspect("d1");
    assert_eq!(v["paths"]["layers"], d, "{v:#}");

    store.sh("d1", "echo in-dir > /etc/fvm-dir-marker").ok();
    let upper = dir.join("-/upper/etc/fvm-dir-marker");
    assert_eq!(
        std::fs::read_to_string(&upper).unwrap_or_default(),
        "in-dir\n"
    );
    assert!(!store.root.join("vms/d1/layers").exists());
    assert!(!Path::new("/etc/fvm-dir-marker").exists());
    // The --dir is hidden inside the VM, like the store.
    let out = store.sh("d1", &format!("ls -A {d}")).ok();
    assert_eq!(out.out(), "", "the vm sees its --dir:\n{out}");

    // A non-empty directory is never adopted.
    let busy = outside.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("data"), "someone's\n").unwrap();
    let before = store.snapshot();
    let out = store.fvm(&["create", "d2", "--dir", busy.to_str().unwrap()]);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(before, store.snapshot());
    assert!(busy.join("data").exists());

    // The VM is gone at once; its --dir right after (removed in the background).
    store.fvm(&["delete", "d1"]).ok();
    assert!(store.list().is_empty());
    wait_until("delete removes the --dir", || !dir.exists());
    store.assert_clean();
}

#[test]
fn a_throw_away_vm_leaves_nothing() {
    if !needs_root("a_throw_away_vm_leaves_nothing") {
        return;
    }
    let store = TestStore::new("rm");
    let etc = format!("/etc/{}", unique("rm"));
    let _leak = HostFile(etc.clone().into());

    // Without a name.
    let out = store
        .sh_rm(&format!(
            "echo gone > {etc} && cat {etc} && echo \"$FVM_NAME\" && hostname"
        ))
        .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "gone");
    assert!(!lines[1].is_empty());
    assert_eq!(lines[1], lines[2], "FVM_NAME is the hostname:\n{out}");
    assert!(
        !Path::new(&etc).exists(),
        "a throw-away vm wrote to the host"
    );
    assert!(store.list().is_empty(), "the throw-away vm is still listed");

    // With a name, an exit status, and a daemon it leaves behind.
    let out = store.fvm(&[
        "run",
        "--rm",
        "rm1",
        "--",
        "sh",
        "-c",
        "(setsid sleep 987654 </dev/null >/dev/null 2>&1 &); echo $FVM_NAME; exit 4",
    ]);
    assert_eq!(out.code, 4, "{out}");
    assert_eq!(out.out(), "rm1");
    assert!(store.list().is_empty());
    assert!(store.vm_dirs().is_empty(), "{:?}", store.vm_dirs());
    let survivors: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p: &i32| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == b"sleep\0987654\0")
                && live_comm(*p).is_some()
        })
        .collect();
    assert!(
        survivors.is_empty(),
        "the throw-away vm's daemon survived: {survivors:?}"
    );
    store.assert_clean();
}

/// A layer can hold files even root can't unlink: overlayfs keeps a VM's own
/// `chattr +i`/`+a` in an xattr, but the flags can be on the upper files themselves
/// (set from the host, or by a copied layer). Root in a VM can also plant symlinks
/// to host directories. `delete` still removes the whole VM and never follows a
/// symlink out of the layer.
#[test]
fn delete_removes_immutable_files_and_never_follows_planted_symlinks() {
    let test = "delete_removes_immutable_files_and_never_follows_planted_symlinks";
    if !needs_root(test) || !needs_tool(test, "chattr") {
        return;
    }
    let store = TestStore::new("hostile");
    // The most capable VM there is (chattr +i needs CAP_LINUX_IMMUTABLE).
    store
        .fvm(&["create", "x1", "--security", "unconfined"])
        .ok();
    let victim = temp_dir("fvm-victim");
    let keep = victim.path().join("keep");
    std::fs::write(&keep, "host data").unwrap();
    let script = format!(
        "set -e
         mkdir -p /opt/fvm-hostile/locked && cd /opt/fvm-hostile
         echo a > immutable && echo b > append && echo c > locked/f
         chattr +i immutable
         ln -s /etc etc-link && ln -s {victim} victim-link && ln -s / root-link",
        victim = victim.path().display()
    );
    store.sh("x1", &script).ok();
    let upper = store.root.join("vms/x1/layers/-/upper/opt/fvm-hostile");
    for (flag, path) in [("+i", "immutable"), ("+a", "append"), ("+i", "locked")] {
        let st = Command::new("chattr")
            .arg(flag)
            .arg(upper.join(path))
            .status()
            .unwrap();
        assert!(st.success(), "chattr {flag} {path}");
    }
    assert!(
        std::fs::remove_file(upper.join("immutable")).is_err(),
        "the layer can't be deleted by plain unlinks"
    );
    assert!(upper.join("etc-link").is_symlink());

    store.fvm(&["delete", "x1"]).ok();
    // The layers go by a process of their own, once `delete` has returned.
    wait_until("the deleted vm's layers are removed", || {
        store.vm_dirs().is_empty()
    });
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "host data");
    assert!(Path::new("/etc/passwd").exists());
    store.assert_clean();
}

/// The VM's /proc shows its own processes, but the kernel settings in it are the
/// host's: they are read-only inside (a VM writing `kernel.core_pattern` would run
/// a program of its choice as root on the host), and kernel memory and keys are
/// hidden.
#[test]
fn kernel_settings_are_read_only_inside() {
    if !needs_root("kernel_settings_are_read_only_inside") {
        return;
    }
    let store = TestStore::new("procro");
    store.create("k1");
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let out = store.sh(
        "k1",
        "cat /proc/sys/kernel/core_pattern >/dev/null && echo readable; \
         echo '|/tmp/evil %p' > /proc/sys/kernel/core_pattern && echo WROTE; \
         echo 1 > /proc/sys/vm/drop_caches && echo WROTE; \
         for f in /proc/keys /proc/timer_list /proc/kcore; do \
           [ -e $f ] && [ -s $f ] && echo LEAK $f; done; \
         ls -A /sys/firmware | wc -l",
    );
    assert!(out.stdout.contains("readable"), "{out}");
    assert!(!out.stdout.contains("WROTE"), "{out}");
    assert!(!out.stdout.contains("LEAK"), "{out}");
    assert_eq!(out.stdout.lines().last(), Some("0"), "{out}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        before
    );
    store.assert_clean();
}

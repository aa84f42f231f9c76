//! `fvm copy`: the clone sees exactly what its source sees (added, changed and
//! deleted files, a replaced directory, xattrs, owners, modes, times, hard links,
//! symlinks, fifos), the two diverge afterwards, the host never changes, and a
//! copy that can't be made leaves nothing.

mod common;

use std::path::Path;

use std::process::Command;

use common::{TestStore, needs_root, needs_tool};

/// A host directory the VMs change (on disk, not in /tmp, which is private to
/// a VM on hosts where it is a tmpfs), removed on drop.
fn host_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("fvm-test-copy-")
        .tempdir_in("/var/tmp")
        .expect("create a host directory in /var/tmp");
    let p = dir.path();
    std::fs::create_dir(p.join("d")).unwrap();
    std::fs::write(p.join("d/one"), "one\n").unwrap();
    std::fs::write(p.join("d/two"), "two\n").unwrap();
    for f in ["host-file", "chmod-me", "xattr-me"] {
        std::fs::write(p.join(f), format!("host {f}\n")).unwrap();
    }
    dir
}

/// The names of `path`'s xattrs (not following a symlink), sorted as listed.
fn xattr_names(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(path, &mut buf[..]).unwrap_or(0);
    buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// The host directory as the host sees it: names, modes, contents, xattrs.
fn host_view(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir(dir) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        let xattrs = xattr_names(&e);
        let content = if m.is_file() {
            std::fs::read_to_string(&e).unwrap()
        } else {
            String::new()
        };
        out.push(format!(
            "{} {:o} {content:?} {xattrs:?}",
            e.display(),
            std::os::unix::fs::PermissionsExt::mode(&m.permissions())
        ));
    }
    out
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all = vec![dir.to_owned()];
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() && !e.is_symlink() {
            all.extend(walkdir(&e));
        } else {
            all.push(e);
        }
    }
    all
}

/// What a VM sees of the host directory, as text to compare between VMs.
fn vm_view(store: &TestStore, vm: &str, dir: &str) -> String {
    let script = format!(
        "set -e; cd {dir}
         ls -la --time-style=full-iso . d newdir newdir/sub
         stat -c '%n %a %u %g %h %F %s %Y' * d/* newdir/sub/*
         cat added d/fresh newdir/sub/f chmod-me h2
         readlink sym
         test ! -e host-file && test ! -e d/one && test ! -e d/two
         /usr/bin/python3 -c 'import os
for f in (\"added\", \"xattr-me\", \"d\"):
    print(f, os.getxattr(f, \"user.fvm\"))'"
    );
    store.sh(vm, &script).ok().stdout
}

#[test]
fn a_copy_sees_exactly_what_its_source_sees_and_then_goes_its_own_way() {
    if !needs_root("a_copy_sees_exactly_what_its_source_sees_and_then_goes_its_own_way") {
        return;
    }
    let store = TestStore::new("copy");
    let host = host_dir();
    let dir = host.path().display().to_string();
    let before = host_view(host.path());
    store.create("a");
    store
        .sh(
            "a",
            &format!(
                "set -e; cd {dir}
                 echo new > added
                 mkdir -p newdir/sub && echo deep > newdir/sub/f
                 chown 1234:5678 newdir/sub/f && chmod 4750 newdir/sub/f
                 touch -d '2001-02-03 04:05:06.123456789' newdir/sub/f
                 rm host-file
                 rm -rf d && mkdir d && echo fresh > d/fresh
                 chmod 600 chmod-me
                 echo linked > h1 && ln h1 h2
                 ln -s added sym
                 mkfifo fifo
                 /usr/bin/python3 -c 'import os
for f, v in ((\"added\", b\"v1\"), (\"xattr-me\", b\"v2\"), (\"d\", b\"v3\")):
    os.setxattr(f, \"user.fvm\", v)'"
            ),
        )
        .ok();
    let seen_by_a = vm_view(&store, "a", &dir);
    assert!(
        seen_by_a.contains("newdir/sub/f 4750 1234 5678 1 regular file 5 "),
        "{seen_by_a}"
    );
    assert!(
        seen_by_a.contains("h2 644 0 0 2 regular file"),
        "{seen_by_a}"
    );
    assert!(seen_by_a.contains("fifo 644 0 0 1 fifo"), "{seen_by_a}");

    let out = store.fvm(&["copy", "a", "b"]).ok();
    assert_eq!(out.out(), "b");
    assert_eq!(out.stderr, "", "copy is quiet off a terminal");
    assert_eq!(vm_view(&store, "b", &dir), seen_by_a);
    assert_eq!(vm_view(&store, "a", &dir), seen_by_a, "the source changed");
    let policy = store.inspect("b");
    assert_eq!(policy["name"], "b");
    assert_eq!(policy["status"], "stopped");

    // From now on each goes its own way.
    store
        .sh(
            "a",
            &format!("echo a > {dir}/after-a && echo a2 > {dir}/added"),
        )
        .ok();
    store
        .sh("b", &format!("echo b > {dir}/after-b && rm {dir}/h1"))
        .ok();
    let a = store
        .sh(
            "a",
            &format!("cd {dir} && cat added && ls after-* && stat -c %h h2"),
        )
        .ok();
    assert_eq!(a.out(), "a2\nafter-a\n2", "{a}");
    let b = store
        .sh(
            "b",
            &format!("cd {dir} && cat added && ls after-* && stat -c %h h2"),
        )
        .ok();
    assert_eq!(b.out(), "new\nafter-b\n1", "{b}");

    // Deleting the copy leaves the source alone.
    store.fvm(&["delete", "b"]).ok();
    let a = store.sh("a", &format!("cat {dir}/after-a {dir}/h1")).ok();
    assert_eq!(a.out(), "a\nlinked");
    assert_eq!(host_view(host.path()), before, "the host changed");
    store.assert_clean();
}

#[test]
fn a_copy_that_cannot_be_made_changes_nothing() {
    if !needs_root("a_copy_that_cannot_be_made_changes_nothing") {
        return;
    }
    let store = TestStore::new("copyfail");
    store.create("src");
    store.create("taken");
    store.sh("src", "echo x > /etc/fvm-copyfail-marker").ok();
    let before = store.snapshot();
    for (args, message) in [
        (["copy", "src", "taken"], "fvm: vm \"taken\" already exists"),
        (
            ["copy", "src", "Bad/Name"],
            "fvm: invalid vm name \"Bad/Name\"",
        ),
        (["copy", "nope", "new"], "fvm: vm \"nope\" does not exist"),
        (["copy", "src", "src"], "fvm: vm \"src\" already exists"),
    ] {
        let out = store.fvm(&args).code(125);
        assert!(out.stderr.starts_with(message), "{out}");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert_eq!(store.snapshot(), before, "{args:?} changed the store");
    }

    store.start("src");
    let before = store.snapshot();
    let out = store.fvm(&["copy", "src", "new"]).code(125);
    assert_eq!(
        out.stderr.trim(),
        "fvm: cannot copy vm \"src\": it is running (stop or suspend it first)"
    );
    assert_eq!(store.snapshot(), before);
    assert_eq!(store.status("src"), "running");
    assert!(!store.vm_dirs().contains(&"new".to_owned()));

    // Once stopped it copies; the layer was written by a VM that is gone.
    store.stop("src");
    store.fvm(&["copy", "src", "new"]).ok();
    let out = store.sh("new", "cat /etc/fvm-copyfail-marker").ok();
    assert_eq!(out.out(), "x");
    assert!(!Path::new("/etc/fvm-copyfail-marker").exists());
    store.assert_clean();
}

#[test]
fn a_vm_with_its_own_dir_is_copied_into_the_store() {
    if !needs_root("a_vm_with_its_own_dir_is_copied_into_the_store") {
        return;
    }
    let store = TestStore::new("copydir");
    let outside = common::temp_dir("copydir");
    let dir = outside.path().join("layers");
    store
        .fvm(&[
            "create",
            "out",
            "--dir",
            dir.to_str().unwrap(),
            "--description",
            "kept",
        ])
        .ok();
    store.sh("out", "echo mine > /etc/fvm-copydir-marker").ok();
    store.fvm(&["copy", "out", "in"]).ok();
    let v = store.inspect("in");
    assert_eq!(v["description"], "kept", "{v:#}");
    assert_eq!(
        v["paths"]["layers"],
        store.root.join("vms/in/layers").display().to_string(),
        "{v:#}"
    );
    store.fvm(&["delete", "in"]).ok();
    assert!(dir.join("-/upper/etc/fvm-copydir-marker").exists());
    let out = store.sh("out", "cat /etc/fvm-copydir-marker").ok();
    assert_eq!(out.out(), "mine");
    store.assert_clean();
}

/// `kill -9` of `fvm copy` half-way leaves only a `.new-*` directory: DST is not
/// there, SRC is unharmed, and `doctor --cleanup` removes the leftover.
///
/// "Half-way" without a race: strace kills the copy as it enters its 2048th
/// `openat`, when about half of SRC's 2048 files are copied (each takes at least
/// two), whatever the speed of the disk or the load on the host.
#[test]
fn a_copy_killed_half_way_leaves_only_what_cleanup_removes() {
    let test = "a_copy_killed_half_way_leaves_only_what_cleanup_removes";
    if !needs_root(test) || !needs_tool(test, "strace") {
        return;
    }
    let store = TestStore::new("copykill");
    store.create("a");
    store
        .sh(
            "a",
            "mkdir -p /opt/fvm-copykill && cd /opt/fvm-copykill && i=0 && \
             while [ $i -lt 2048 ]; do echo $i > f$i || exit 1; i=$((i+1)); done",
        )
        .ok();
    let vms = store.root.join("vms");
    let temp = || {
        std::fs::read_dir(&vms)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(".new-b-"))
    };
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=openat"])
        .args(["-e", "inject=openat:signal=KILL:when=2048", "--"])
        .arg(common::FVM)
        .arg("--root")
        .arg(&store.root)
        .args(["copy", "a", "b"]);
    let out = common::run(strace, None);
    assert_eq!(
        out.code,
        128 + 9,
        "fvm copy was not killed half-way:\n{out}"
    );
    assert!(!vms.join("b").exists(), "the killed copy made b");
    let tmp = temp().unwrap_or_else(|| panic!("no temporary directory: {:?}", store.vm_dirs()));
    let copied = common::sh(&format!(
        "find {}/layers -path '*/upper/opt/fvm-copykill/f*' | wc -l",
        vms.join(&tmp).display()
    ));
    let copied: u32 = copied.out().parse().unwrap_or(0);
    assert!(
        (1..2048).contains(&copied),
        "the copy was killed with {copied} of 2048 files copied, not half-way"
    );
    let names: Vec<_> = store.list().iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, ["a"]);

    store.fvm(&["doctor", "--cleanup"]);
    assert_eq!(temp(), None, "cleanup left the temporary directory");
    store.fvm(&["copy", "a", "b"]).ok();
    let out = store.sh("b", "ls /opt/fvm-copykill | wc -l").ok();
    assert_eq!(out.out(), "2048");
    store.assert_clean();
}

//! `fvm diff` and `fvm commit` end to end: what a VM changed under a host
//! directory the test owns, listed like `podman diff` and written back to the host
//! with every kind of change and its metadata; conflicts with the host, selective
//! and dry-run commits, a running VM, and layers edited behind fvm's back.
//!
//! A VM sees the live host, so each test makes a temporary host directory `H`,
//! lets the VM change it, and commits it back; nothing else on the host is
//! touched. `changes_support` has the checksum walk that compares the host with the
//! VM's view.

mod changes_support;
mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use changes_support::{
    SECRET, Victim, assert_same_walk, commit_temps, diff_rel, entries, files_containing, host_walk,
    key, owned, parse_diff, parse_plan, python, rel, sorted_like_diff, upper, vm_python, vm_walk,
    walk_difference, walk_map,
};
use common::{TestStore, needs_root, temp_dir, wait_until};

/// `H` as a string, for shell scripts run in a VM.
fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

fn write(p: &Path, content: &str) {
    std::fs::write(p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The podman case (`touch /X; rm /etc/services` gives `A /X`, `C /etc`,
/// `D /etc/services`) and every other kind of change, listed by `diff` and
/// committed with their metadata: afterwards the host is what the VM saw.
#[test]
fn diff_lists_and_commit_lands_every_kind_of_change() {
    if !needs_root("diff_lists_and_commit_lands_every_kind_of_change") {
        return;
    }
    let store = TestStore::new("kinds");
    let dir = temp_dir("kinds");
    let h = dir.path();
    write(&h.join("keep"), "keep\n");
    write(&h.join("append"), "append\n");
    write(&h.join("gone"), "gone\n");
    std::fs::create_dir_all(h.join("d/sub")).unwrap();
    write(&h.join("d/a"), "a\n");
    write(&h.join("d/sub/b"), "b\n");
    write(&h.join("chm"), "chmod me\n");
    write(&h.join("chw"), "chown me\n");
    write(&h.join("xat"), "xattr me\n");
    store.create("k");

    let py = python();
    let script = format!(
        r#"set -e
        cd {h}
        touch new
        rm gone
        echo more >> append
        mkdir -p p/q/r
        echo deep > p/q/r/f
        {py} -c 'import os; os.setxattr("p/q", "user.dir", b"on a dir")'
        ln -s keep lnk
        chmod 0751 chm
        chown 1234:5678 chw
        {py} -c 'import os; os.setxattr("xat", "user.fvm", b"hello")'
        rm -rf d && mkdir d && echo new > d/n
        mkfifo ff
        echo linked > h1 && ln h1 h2
        : > empty
        echo setuid > suid && chown 42:43 suid && chmod 4711 suid
        {py} -c 'f = open("sparse", "wb"); f.write(b"head"); f.seek(64 << 20); f.write(b"tail")'
        "#,
        h = s(h)
    );
    store.sh("k", &script).ok();

    let expected = sorted_like_diff(owned(&[
        ('C', "append"),
        ('C', "chm"),
        ('C', "chw"),
        ('C', "d"),
        ('D', "d/a"),
        ('A', "d/n"),
        ('D', "d/sub"),
        ('A', "empty"),
        ('A', "ff"),
        ('D', "gone"),
        ('A', "h1"),
        ('A', "h2"),
        ('A', "lnk"),
        ('A', "new"),
        ('A', "p"),
        ('A', "p/q"),
        ('A', "p/q/r"),
        ('A', "p/q/r/f"),
        ('A', "sparse"),
        ('A', "suid"),
        ('C', "xat"),
    ]));
    assert_eq!(diff_rel(&store, "k", h, &[h]), expected);
    // The whole VM's diff has the same lines for H (and H's parents as C).
    let all = store.fvm(&["diff", "k"]).ok();
    let under: Vec<_> = parse_diff(&all, h)
        .into_iter()
        .filter(|(_, p)| !p.starts_with('/'))
        .collect();
    assert_eq!(under, expected, "{all}");
    // (H's parents changed nothing of their own: hidden, but with --all.)
    assert!(!all.stdout.contains("C /tmp\n"), "{all}");
    let all = store.fvm(&["diff", "k", "--all"]).ok();
    assert!(all.stdout.contains("C /tmp\n"), "{all}");
    // A path argument limits it.
    assert_eq!(
        diff_rel(&store, "k", h, &[&h.join("d")]),
        owned(&[('C', "d"), ('D', "d/a"), ('A', "d/n"), ('D', "d/sub")])
    );

    // JSON: the same changes, with the VM's sizes.
    let out = store.fvm(&["--json", "diff", "k", s(h)]).ok();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("diff --json is JSON");
    let got: Vec<(char, String, u64)> = json
        .as_array()
        .expect("an array")
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().chars().next().unwrap(),
                rel(h, Path::new(c["path"].as_str().unwrap())),
                c["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let kinds: Vec<(char, String)> = got.iter().map(|(k, p, _)| (*k, p.clone())).collect();
    assert_eq!(kinds, expected);
    let size = |p: &str| got.iter().find(|c| c.1 == p).unwrap().2;
    assert_eq!(size("append"), 12);
    assert_eq!(size("lnk"), 4);
    assert_eq!(size("sparse"), (64 << 20) + 4);
    assert_eq!(size("d/n"), 4);
    assert_eq!(size("empty"), 0);
    assert_eq!(size("gone"), 0);

    // What the VM sees, then the commit.
    let vm_before = vm_walk(&store, "k", h, "content");
    let host_before = host_walk(h, "content");
    assert_ne!(vm_before, host_before);
    let out = store.fvm(&["commit", "k", s(h)]).ok();
    assert_eq!(
        out.out(),
        format!("committed {} changes", expected.len()),
        "{out}"
    );
    let host_after = host_walk(h, "content");
    assert_same_walk(
        &vm_before,
        &host_after,
        "the vm's view before vs the host after",
    );
    // The VM's view now comes from the host, and is the same.
    let vm_after = vm_walk(&store, "k", h, "content");
    assert_same_walk(&host_after, &vm_after, "the host vs the vm's view after");
    assert_eq!(diff_rel(&store, "k", h, &[h]), []);
    // The committed entries left the (stopped) VM's layer, except the names of a
    // file the VM hard-linked: overlayfs (index=off) would show the host's copies
    // as separate files, so they stay, recorded as committed (diff is empty).
    assert_eq!(entries(&upper(&store, "k", h)), ["h1", "h2"]);

    // Spot checks of what the walk covers.
    let m = walk_map(&host_after);
    assert!(!m.contains_key(&key("gone")) && !m.contains_key(&key("d/sub")));
    let meta = |p: &str| std::fs::symlink_metadata(h.join(p)).unwrap();
    assert_eq!(meta("chm").permissions().mode() & 0o7777, 0o751);
    assert_eq!((meta("chw").uid(), meta("chw").gid()), (1234, 5678));
    assert_eq!(meta("suid").permissions().mode() & 0o7777, 0o4711);
    assert_eq!((meta("suid").uid(), meta("suid").gid()), (42, 43));
    assert_eq!(read(&h.join("append")), "append\nmore\n");
    assert_eq!(read(&h.join("d/n")), "new\n");
    assert!(meta("ff").file_type().is_fifo());
    assert_eq!(
        std::fs::read_link(h.join("lnk")).unwrap(),
        Path::new("keep")
    );
    assert_eq!(meta("h1").ino(), meta("h2").ino(), "h1 and h2 are one file");
    assert_eq!(meta("h1").nlink(), 2);
    let sparse = meta("sparse");
    assert_eq!(sparse.len(), (64 << 20) + 4);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "the sparse file is no longer sparse: {} blocks",
        sparse.blocks()
    );
    let xattr = vm_python(
        &store,
        "k",
        "import os, sys; print(os.getxattr(sys.argv[1], 'user.fvm').decode())",
        &[s(&h.join("xat"))],
    )
    .ok();
    assert_eq!(xattr.out(), "hello");
    assert_eq!(commit_temps(h), Vec::<String>::new());
    store.assert_clean();
}

/// Device nodes show in `diff` but never reach the host; the rest of the commit
/// does.
#[test]
fn device_nodes_show_in_diff_but_are_never_committed() {
    if !needs_root("device_nodes_show_in_diff_but_are_never_committed") {
        return;
    }
    let store = TestStore::new("devnode");
    let dir = temp_dir("devnode");
    let h = dir.path();
    // Making device nodes needs CAP_MKNOD, which only an unconfined VM has.
    store
        .fvm(&["create", "dn", "--security", "unconfined"])
        .ok();
    let py = python();
    store
        .sh(
            "dn",
            &format!(
                "set -e; cd {}; mknod cdev c 1 3; mknod bdev b 7 0; echo f > f
                 {py} -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")'",
                s(h)
            ),
        )
        .ok();
    let listed = owned(&[('A', "bdev"), ('A', "cdev"), ('A', "f"), ('A', "sock")]);
    assert_eq!(diff_rel(&store, "dn", h, &[h]), listed);
    let skipped = |out: &common::Out| {
        for n in ["bdev", "cdev"] {
            let line = format!(
                "fvm: skipped {}: device nodes are not committed to the host",
                h.join(n).display()
            );
            assert!(out.stderr.contains(&line), "no {line:?}:\n{out}");
        }
    };
    let dry = store.fvm(&["commit", "dn", s(h), "--dry-run"]).ok();
    skipped(&dry);
    let planned: Vec<String> = parse_plan(&dry)
        .into_iter()
        .map(|(verb, p, _)| format!("{verb} {}", rel(h, &p)))
        .collect();
    assert_eq!(planned, ["create f", "create sock"], "{dry}");
    let out = store.fvm(&["commit", "dn", s(h)]).ok();
    skipped(&out);
    assert_eq!(out.out(), "committed 2 changes");
    assert_eq!(entries(h), ["f", "sock"]);
    let sock = std::fs::symlink_metadata(h.join("sock")).unwrap();
    assert!(sock.file_type().is_socket());
    // The devices stay the VM's own.
    assert_eq!(
        diff_rel(&store, "dn", h, &[h]),
        owned(&[('A', "bdev"), ('A', "cdev")])
    );
    store
        .sh("dn", &format!("test -c {0}/cdev && test -b {0}/bdev", s(h)))
        .ok();
    store.assert_clean();
}

/// The conflict message for one path.
fn conflict_line(p: &Path) -> String {
    format!(
        "conflict: {} changed on the host after the vm copied it",
        p.display()
    )
}

/// Host paths changed after the VM took its copy (content, a chmod, a file the VM
/// deleted, a file both made) are all listed and nothing at all is written, not
/// even the changes that don't conflict; excluding them commits the rest, and
/// `--force` lets the VM win.
#[test]
fn conflicts_commit_nothing_until_excluded_or_forced() {
    if !needs_root("conflicts_commit_nothing_until_excluded_or_forced") {
        return;
    }
    let store = TestStore::new("conflict");
    let dir = temp_dir("conflict");
    let h = dir.path();
    for f in ["f", "k", "w", "calm"] {
        write(&h.join(f), &format!("host {f}\n"));
    }
    std::fs::create_dir(h.join("od")).unwrap();
    write(&h.join("od/a"), "host a\n");
    store.create("c");
    store
        .sh(
            "c",
            &format!(
                "set -e; cd {}
                 echo vm > f; echo vm > k; rm w; echo vm > both; echo vm > fresh
                 echo vm > calm; rm -rf od; mkdir od; echo vm > od/b",
                s(h)
            ),
        )
        .ok();
    // The host changes them afterwards (a clock tick later at least).
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&h.join("f"), "host changed f\n");
    std::fs::set_permissions(h.join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
    write(&h.join("w"), "host changed w\n");
    write(&h.join("both"), "host both\n");
    write(&h.join("od/c"), "host c\n");

    let host_before = host_walk(h, "snap");
    let store_before = store.snapshot();
    let out = store.fvm(&["commit", "c", s(h)]).code(125);
    // Every host change is listed (the replaced directory `od` may be listed for
    // the entry the host added to it, too); nothing the host left alone is.
    let mut lines: Vec<&str> = out.stderr.lines().collect();
    let summary = lines.pop().unwrap_or_default();
    let listed: Vec<String> = lines
        .iter()
        .map(|l| {
            let p = l
                .strip_prefix("conflict: ")
                .and_then(|l| l.strip_suffix(" changed on the host after the vm copied it"))
                .unwrap_or_else(|| panic!("not a conflict line: {l:?}\n{out}"));
            rel(h, Path::new(p))
        })
        .collect();
    for p in ["both", "f", "k", "od/c", "w"] {
        assert!(listed.iter().any(|l| l == p), "{p} is not listed:\n{out}");
    }
    for p in &listed {
        assert!(
            ["both", "f", "k", "od", "od/c", "w"].contains(&p.as_str()),
            "{p} is listed:\n{out}"
        );
    }
    assert_eq!(
        summary,
        format!(
            "fvm: vm \"c\": {} path(s) changed on the host after the vm copied them; \
             nothing was committed (--force lets the vm win)",
            listed.len()
        ),
        "{out}"
    );
    assert_eq!(out.out(), "", "{out}");
    // Nothing was written: not the conflicting paths, not `fresh` or `calm`.
    let host_after = host_walk(h, "snap");
    assert_same_walk(
        &host_before,
        &host_after,
        "the host before vs after a refused commit",
    );
    assert_eq!(store_before, store.snapshot(), "the store changed");
    assert_eq!(read(&h.join("f")), "host changed f\n");
    assert!(!h.join("fresh").exists());
    let all = diff_rel(&store, "c", h, &[h]);
    for p in ["calm", "fresh", "f", "k", "w"] {
        assert!(
            all.iter().any(|(_, q)| q == p),
            "{p} left the diff: {all:?}"
        );
    }

    // Paths without conflicts commit on their own.
    store
        .fvm(&["commit", "c", s(&h.join("fresh")), s(&h.join("calm"))])
        .ok();
    assert_eq!(read(&h.join("fresh")), "vm\n");
    assert_eq!(read(&h.join("calm")), "vm\n");
    assert_eq!(read(&h.join("f")), "host changed f\n");
    // One conflicting path is enough to stop a commit of several.
    let out = store
        .fvm(&["commit", "c", s(&h.join("f")), s(&h.join("od"))])
        .code(125);
    assert!(out.stderr.contains(&conflict_line(&h.join("f"))), "{out}");
    assert_eq!(read(&h.join("f")), "host changed f\n");
    assert!(h.join("od/a").exists());

    // --force: the VM wins everywhere.
    let vm_view = vm_walk(&store, "c", h, "content");
    let out = store.fvm(&["commit", "c", s(h), "--force"]).ok();
    assert!(out.out().starts_with("committed "), "{out}");
    assert_same_walk(
        &vm_view,
        &host_walk(h, "content"),
        "the vm's view vs the forced host",
    );
    assert_eq!(read(&h.join("f")), "vm\n");
    assert_eq!(read(&h.join("both")), "vm\n");
    assert_eq!(
        std::fs::metadata(h.join("k")).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!h.join("w").exists());
    assert_eq!(entries(&h.join("od")), ["b"]);
    assert_eq!(diff_rel(&store, "c", h, &[h]), []);
    store.assert_clean();
}

/// A file the VM changed and the host then deleted is a conflict like any other
/// host change: a commit must not bring it back silently.
#[test]
fn a_host_deletion_after_the_vm_copied_is_a_conflict() {
    if !needs_root("a_host_deletion_after_the_vm_copied_is_a_conflict") {
        return;
    }
    let store = TestStore::new("hostdel");
    let dir = temp_dir("hostdel");
    let h = dir.path();
    write(&h.join("f"), "host\n");
    write(&h.join("other"), "host\n");
    store.create("hd");
    store
        .sh("hd", &format!("echo vm > {0}/f && echo vm > {0}/new", s(h)))
        .ok();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::remove_file(h.join("f")).unwrap();
    let before = host_walk(h, "snap");
    let out = store.fvm(&["commit", "hd", s(h)]);
    assert_eq!(
        out.code, 125,
        "a file the host deleted after the vm changed it was committed without a conflict:\n{out}"
    );
    let deleted = format!(
        "conflict: {} was deleted on the host after the vm copied it",
        h.join("f").display()
    );
    assert!(out.stderr.contains(&deleted), "{out}");
    assert_same_walk(&before, &host_walk(h, "snap"), "a refused commit wrote");
    store.fvm(&["commit", "hd", s(h), "--force"]).ok();
    assert_eq!(read(&h.join("f")), "vm\n");
    assert_eq!(read(&h.join("new")), "vm\n");
    store.assert_clean();
}

/// A host file the VM renamed (its copy names the host file as its origin), then
/// replaced on the host by a commit of the path it had: the next commit, of this VM
/// or of a copy of it, doesn't take the host file's absence for a host deletion.
/// The selective commit also brings every name of a file the VM hard-linked and
/// the whole directory the VM replaced that holds one of them.
#[test]
fn files_a_commit_replaced_are_no_conflict_for_the_vms_renamed_copies() {
    if !needs_root("files_a_commit_replaced_are_no_conflict_for_the_vms_renamed_copies") {
        return;
    }
    let store = TestStore::new("replaced");
    let dir = temp_dir("replaced");
    let h = dir.path();
    std::fs::create_dir(h.join("sub")).unwrap();
    write(&h.join("f"), "host f\n");
    write(&h.join("g"), "host g\n");
    write(&h.join("sub/old"), "host old\n");
    store.create("rp");
    store
        .sh(
            "rp",
            &format!(
                "cd {} && mv f moved && echo vm > f && ln g g2 && echo more >> g \
                 && rm -r sub && mkdir sub && ln g sub/g3",
                s(h)
            ),
        )
        .ok();
    // `f` alone: the host's f (the origin of the VM's `moved`) is replaced.
    let plan = |path: &Path| -> Vec<String> {
        let dry = store.fvm(&["commit", "rp", "--dry-run", s(path)]).ok();
        parse_plan(&dry)
            .into_iter()
            .map(|(verb, p, _)| format!("{verb} {}", p.strip_prefix(h).unwrap().display()))
            .collect()
    };
    assert_eq!(plan(&h.join("f")), ["replace f"]);
    store.fvm(&["commit", "rp", s(&h.join("f"))]).ok();
    assert_eq!(read(&h.join("f")), "vm\n");
    // A copy made now holds the same `moved`, and the record of what was replaced.
    store.fvm(&["copy", "rp", "rp2"]).ok();
    // `g2` alone brings `g` and `sub/g3` (one file), and so all of `sub`.
    let steps = plan(&h.join("g2"));
    for step in ["replace g", "create g2", "create sub/g3", "delete sub/old"] {
        let (verb, path) = step.split_once(' ').unwrap();
        assert!(
            steps
                .iter()
                .any(|p| p == step || *p == format!("link {path}") && verb == "create"),
            "{step} missing from {steps:?}"
        );
    }
    store.fvm(&["commit", "rp", s(&h.join("g2"))]).ok();
    assert_eq!(std::fs::metadata(h.join("g")).unwrap().nlink(), 3);
    assert!(!h.join("sub/old").exists());
    // The rest: `moved` came from the f the first commit replaced.
    store.fvm(&["commit", "rp", s(h)]).ok();
    assert_eq!(read(&h.join("moved")), "host f\n");
    assert!(diff_rel(&store, "rp", h, &[h]).is_empty());
    // The copy's `moved` is the one the host got after the copy, to the byte
    // and the mtime: no conflict, and nothing to commit…
    let out = store.fvm(&["commit", "rp2", s(&h.join("moved"))]).ok();
    assert!(out.stdout.contains("nothing to commit"), "{out}");
    // …but not for a reason of its origin: once the host's is gone it commits.
    std::fs::remove_file(h.join("moved")).unwrap();
    let out = store.fvm(&["commit", "rp2", s(&h.join("moved"))]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(read(&h.join("moved")), "host f\n");
    store.assert_clean();
}

/// A host file the VM moved out of a directory it then deleted: committing the
/// directory's deletion first removes the file's origin from the host with it,
/// and the later commit of the moved file is no conflict.
#[test]
fn a_file_moved_out_of_a_committed_deleted_directory_is_no_conflict() {
    if !needs_root("a_file_moved_out_of_a_committed_deleted_directory_is_no_conflict") {
        return;
    }
    let store = TestStore::new("movedout");
    let dir = temp_dir("movedout");
    let h = dir.path();
    std::fs::create_dir_all(h.join("d/deeper")).unwrap();
    write(&h.join("d/x"), "host x\n");
    write(&h.join("d/deeper/y"), "host y\n");
    store.create("mo");
    store
        .sh(
            "mo",
            &format!("cd {} && mv d/x x && mv d/deeper/y y && rm -r d", s(h)),
        )
        .ok();
    store.fvm(&["commit", "mo", s(&h.join("d"))]).ok();
    assert!(!h.join("d").exists());
    let out = store.fvm(&["commit", "mo", s(h)]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(read(&h.join("x")), "host x\n");
    assert_eq!(read(&h.join("y")), "host y\n");
    assert!(diff_rel(&store, "mo", h, &[h]).is_empty());
    store.assert_clean();
}

/// Directories of the VM's layer replaced from the host by symlinks to a victim
/// directory (after the VM wrote files into them): a commit never writes into,
/// reads from or deletes anything in the victim, and neither does deleting the VM.
#[test]
fn symlinks_swapped_into_the_layer_never_lead_outside() {
    if !needs_root("symlinks_swapped_into_the_layer_never_lead_outside") {
        return;
    }
    let store = TestStore::new("swapdir");
    let dir = temp_dir("swapdir");
    let h = dir.path();
    let mut victim = Victim::new("victim-swapdir");
    victim.add("file", SECRET);
    victim.add("hostchild", SECRET);
    std::fs::create_dir(h.join("mdir")).unwrap();
    write(&h.join("mdir/hostchild"), "host child\n");
    store.create("sd");
    store
        .sh(
            "sd",
            &format!(
                "set -e; cd {}; mkdir dir; echo vm > dir/file; echo vm > mdir/file; \
                 echo vm > plain",
                s(h)
            ),
        )
        .ok();
    let up = upper(&store, "sd", h);
    for d in ["dir", "mdir"] {
        assert!(up.join(d).join("file").is_file());
        std::fs::remove_dir_all(up.join(d)).unwrap();
        std::os::unix::fs::symlink(victim.path(), up.join(d)).unwrap();
    }
    // The layer now says the VM replaced both directories with symlinks: that is
    // what lands, and nothing goes through them.
    let out = store.fvm(&["commit", "sd", s(h)]).ok();
    assert_eq!(out.out(), "committed 3 changes", "{out}");
    victim.assert_untouched("after the commit");
    assert_eq!(files_containing(h, SECRET), Vec::<String>::new());
    for d in ["dir", "mdir"] {
        let p = h.join(d);
        assert!(std::fs::symlink_metadata(&p).unwrap().is_symlink(), "{d}");
        assert_eq!(std::fs::read_link(&p).unwrap(), victim.path());
    }
    assert_eq!(read(&h.join("plain")), "vm\n");
    assert_eq!(commit_temps(victim.path()), Vec::<String>::new());
    store.assert_clean();
    victim.assert_untouched("after deleting the vm");
}

/// The layer edited from the host between `--dry-run` and the commit: a file
/// replaced by a symlink to the victim's secret, a directory by a symlink to the
/// victim, a new symlink planted. The commit never copies the victim's content
/// into H and never writes outside H.
#[test]
fn a_layer_edited_after_the_dry_run_never_reads_or_writes_outside() {
    if !needs_root("a_layer_edited_after_the_dry_run_never_reads_or_writes_outside") {
        return;
    }
    let store = TestStore::new("edited");
    let dir = temp_dir("edited");
    let h = dir.path();
    let victim = Victim::new("victim-edited");
    write(&h.join("f"), "host f\n");
    store.create("ed");
    store
        .sh(
            "ed",
            &format!(
                "set -e; cd {}; echo vm > f; mkdir sub; echo vm > sub/x; echo vm > g",
                s(h)
            ),
        )
        .ok();
    let dry = store.fvm(&["commit", "ed", s(h), "--dry-run"]).ok();
    let planned: Vec<String> = parse_plan(&dry)
        .into_iter()
        .map(|(verb, p, _)| format!("{verb} {}", rel(h, &p)))
        .collect();
    assert_eq!(
        planned,
        ["replace f", "create g", "create dir sub", "create sub/x"]
    );
    let up = upper(&store, "ed", h);
    std::fs::remove_file(up.join("f")).unwrap();
    std::os::unix::fs::symlink(victim.path().join("secret"), up.join("f")).unwrap();
    std::fs::remove_dir_all(up.join("sub")).unwrap();
    std::os::unix::fs::symlink(victim.path(), up.join("sub")).unwrap();
    std::os::unix::fs::symlink(victim.path().join("secret"), up.join("planted")).unwrap();

    let out = store.fvm(&["commit", "ed", s(h)]).ok();
    assert_eq!(out.out(), "committed 4 changes", "{out}");
    victim.assert_untouched("after the commit");
    assert_eq!(
        files_containing(h, SECRET),
        Vec::<String>::new(),
        "the victim's secret was copied into H"
    );
    // The symlinks land as symlinks (what the layer now says), never as copies.
    for p in ["f", "sub", "planted"] {
        let m = std::fs::symlink_metadata(h.join(p)).unwrap();
        assert!(m.is_symlink(), "{p} on the host is a {:?}", m.file_type());
    }
    assert_eq!(read(&h.join("g")), "vm\n");
    store.assert_clean();
    victim.assert_untouched("after deleting the vm");
}

/// A symlink the VM put where the host has a directory with children: commit
/// replaces the directory with the symlink, and what the VM wrote through the
/// symlink (a change of the victim directory, outside the committed path) stays
/// in the VM.
#[test]
fn a_vm_symlink_replacing_a_host_directory_commits_as_a_symlink() {
    if !needs_root("a_vm_symlink_replacing_a_host_directory_commits_as_a_symlink") {
        return;
    }
    let store = TestStore::new("symdir");
    let dir = temp_dir("symdir");
    let h = dir.path();
    let victim = Victim::new("victim-symdir");
    std::fs::create_dir_all(h.join("x/deeper")).unwrap();
    write(&h.join("x/child"), "host child\n");
    write(&h.join("x/deeper/f"), "host deeper\n");
    store.create("sy");
    store
        .sh(
            "sy",
            &format!(
                "set -e; cd {}; rm -rf x; ln -s {v} x; echo vm > x/through; \
                 test -f {v}/through",
                s(h),
                v = s(victim.path())
            ),
        )
        .ok();
    assert_eq!(diff_rel(&store, "sy", h, &[h]), owned(&[('C', "x")]));
    let through = victim.path().join("through");
    assert_eq!(
        diff_rel(&store, "sy", victim.path(), &[victim.path()]),
        owned(&[('A', "through")])
    );
    let out = store.fvm(&["commit", "sy", s(h)]).ok();
    assert_eq!(out.out(), "committed 1 changes", "{out}");
    let m = std::fs::symlink_metadata(h.join("x")).unwrap();
    assert!(m.file_type().is_symlink());
    assert_eq!(std::fs::read_link(h.join("x")).unwrap(), victim.path());
    assert!(!through.exists(), "the commit wrote through the symlink");
    victim.assert_untouched("after the commit");
    assert_eq!(diff_rel(&store, "sy", h, &[h]), []);
    // The VM's own change of the victim is still its own.
    assert_eq!(
        diff_rel(&store, "sy", victim.path(), &[victim.path()]),
        owned(&[('A', "through")])
    );
    store.assert_clean();
    victim.assert_untouched("after deleting the vm");
}

/// A walk without the mtime of its root directory.
fn without_root_mtime(walk: &str) -> String {
    walk.lines()
        .map(|l| {
            if l.starts_with("'.'\t") {
                l.split(' ')
                    .filter(|f| !f.starts_with("mtime="))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parse a dry-run into "verb rel" strings (a link also names its source).
fn plan_lines(out: &common::Out, h: &Path) -> Vec<String> {
    parse_plan(out)
        .into_iter()
        .map(|(verb, p, of)| match of {
            Some(of) => format!("{verb} {} -> {}", rel(h, &p), rel(h, &of)),
            None => format!("{verb} {}", rel(h, &p)),
        })
        .collect()
}

/// The paths whose walk line differs between two "snap" walks.
fn changed_paths(before: &str, after: &str) -> Vec<String> {
    let (b, a) = (walk_map(before), walk_map(after));
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| k.trim_matches('\'').to_owned())
        .collect()
}

/// PATH arguments limit a commit (a path in a replaced directory takes the whole
/// directory, a path in new directories takes those), and `--dry-run` changes
/// nothing and prints exactly what the commit then does.
#[test]
fn selective_commits_and_dry_runs_do_exactly_what_they_say() {
    if !needs_root("selective_commits_and_dry_runs_do_exactly_what_they_say") {
        return;
    }
    let store = TestStore::new("select");
    let dir = temp_dir("select");
    let h = dir.path();
    for f in ["a", "b", "c", "keep"] {
        write(&h.join(f), &format!("{f}\n"));
    }
    std::fs::create_dir(h.join("d")).unwrap();
    write(&h.join("d/x"), "x\n");
    write(&h.join("d/y"), "y\n");
    store.create("se");
    store
        .sh(
            "se",
            &format!(
                "set -e; cd {}
                 echo A > a; echo B > b; rm c; echo n > n
                 rm -rf d; mkdir d; echo z > d/z
                 mkdir -p newd/deep; echo f > newd/deep/f
                 echo l > l1; ln l1 l2",
                s(h)
            ),
        )
        .ok();

    // A dry run changes nothing, on the host or in the store.
    let host_before = host_walk(h, "snap");
    let store_before = store.snapshot();
    let dry = store.fvm(&["commit", "se", s(h), "--dry-run"]).ok();
    assert_same_walk(
        &host_before,
        &host_walk(h, "snap"),
        "a dry run changed the host",
    );
    assert_eq!(
        store_before,
        store.snapshot(),
        "a dry run changed the store"
    );
    assert_eq!(
        plan_lines(&dry, h),
        [
            "replace a",
            "replace b",
            "delete c",
            "update dir d",
            "delete d/x",
            "delete d/y",
            "create d/z",
            "create l1",
            "link l2 -> l1",
            "create n",
            "create dir newd",
            "create dir newd/deep",
            "create newd/deep/f",
        ],
        "{dry}"
    );

    // One file.
    let before = host_walk(h, "snap");
    let out = store.fvm(&["commit", "se", s(&h.join("a"))]).ok();
    assert_eq!(out.out(), "committed 1 changes");
    let changed = changed_paths(&before, &host_walk(h, "snap"));
    // The rename into H moves H's own times; nothing else changes.
    assert!(changed.iter().all(|p| p == "a" || p == "."), "{changed:?}");
    assert_eq!(read(&h.join("a")), "A\n");
    assert_eq!(read(&h.join("b")), "b\n");
    let left = diff_rel(&store, "se", h, &[h]);
    assert!(!left.iter().any(|(_, p)| p == "a"), "{left:?}");
    for p in ["b", "c", "d", "n", "newd", "l1"] {
        assert!(
            left.iter().any(|(_, q)| q == p),
            "{p} left the diff: {left:?}"
        );
    }

    // A path in a replaced directory commits the whole directory.
    let dry = store
        .fvm(&["commit", "se", s(&h.join("d/z")), "--dry-run"])
        .ok();
    assert_eq!(
        plan_lines(&dry, h),
        ["update dir d", "delete d/x", "delete d/y", "create d/z"]
    );
    let before = host_walk(h, "snap");
    let out = store.fvm(&["commit", "se", s(&h.join("d/z"))]).ok();
    assert_eq!(out.out(), "committed 4 changes");
    assert_eq!(entries(&h.join("d")), ["z"]);
    let changed = changed_paths(&before, &host_walk(h, "snap"));
    assert!(
        changed
            .iter()
            .all(|p| p == "." || p == "d" || p.starts_with("d/")),
        "{changed:?}"
    );

    // A path in new directories brings them along.
    let out = store.fvm(&["commit", "se", s(&h.join("newd/deep/f"))]).ok();
    assert_eq!(out.out(), "committed 3 changes");
    assert_eq!(read(&h.join("newd/deep/f")), "f\n");
    assert!(!h.join("n").exists() && h.join("c").exists());

    // The rest: the dry run's plan is what the commit does, path for path.
    let dry = store.fvm(&["commit", "se", s(h), "--dry-run"]).ok();
    let plan = plan_lines(&dry, h);
    assert_eq!(
        plan,
        [
            "replace b",
            "delete c",
            "create l1",
            "link l2 -> l1",
            "create n",
        ]
    );
    let vm_view = vm_walk(&store, "se", h, "content");
    let before = host_walk(h, "snap");
    let out = store.fvm(&["commit", "se", s(h)]).ok();
    assert_eq!(out.out(), format!("committed {} changes", plan.len()));
    let after = host_walk(h, "snap");
    let (b, a) = (walk_map(&before), walk_map(&after));
    let ino = |m: &std::collections::BTreeMap<String, String>, p: &str| {
        m.get(&key(p))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("ino=")))
            .map(str::to_owned)
    };
    let steps: Vec<(String, String, Option<String>)> = parse_plan(&dry)
        .into_iter()
        .map(|(verb, p, of)| (verb, rel(h, &p), of.map(|o| rel(h, &o))))
        .collect();
    for (verb, p, of) in &steps {
        let line = format!("{verb} {p}");
        let (was, is) = (b.contains_key(&key(p)), a.contains_key(&key(p)));
        match verb.as_str() {
            "create" | "create dir" => assert!(!was && is, "{line}"),
            "replace" => assert!(was && is && ino(&b, p) != ino(&a, p), "{line}"),
            "delete" => assert!(was && !is, "{line}"),
            "update dir" => assert!(was && is && a[&key(p)].starts_with('d'), "{line}"),
            "link" => {
                let of = of.as_deref().expect("a link names its source");
                assert!(!was && is && ino(&a, p) == ino(&a, of), "{line}");
            }
            _ => unreachable!("{line}"),
        }
    }
    // And nothing the plan doesn't name changed (but below what it deletes, and
    // the times of the directories it changes entries of).
    for p in changed_paths(&before, &after) {
        assert!(
            steps.iter().any(|(verb, q, _)| *q == p
                || verb == "delete" && p.starts_with(&format!("{q}/"))
                || p == "."
                || q.starts_with(&format!("{p}/"))),
            "{p} changed but the dry run did not say so: {plan:?}"
        );
    }
    assert_same_walk(
        &vm_view,
        &host_walk(h, "content"),
        "the vm's view vs the host",
    );
    assert_eq!(diff_rel(&store, "se", h, &[h]), []);
    assert_eq!(read(&h.join("keep")), "keep\n");
    store.assert_clean();
}

/// Committing a running VM while a process in it keeps appending to a file: the
/// host gets the committed content, `diff` stops showing what was committed, the
/// VM's later writes are not lost (they show as changes again and commit without a
/// false conflict), and the next start drops the committed entries from the layer.
#[test]
fn committing_a_running_vm_loses_nothing() {
    if !needs_root("committing_a_running_vm_loses_nothing") {
        return;
    }
    let store = TestStore::new("running");
    let dir = temp_dir("running");
    let h = dir.path();
    write(&h.join("f"), "host\n");
    store.create("rv");
    store.start("rv");
    store
        .sh(
            "rv",
            &format!(
                "set -e; cd {h}; echo vm > static; echo vm > f
                 (setsid sh -c 'while :; do echo x >> {h}/log; sleep 0.05; done' \
                   </dev/null >/dev/null 2>&1 &)
                 exit 0",
                h = s(h)
            ),
        )
        .ok();
    let up = upper(&store, "rv", h);
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_until("the vm appended a few lines", || {
        lines(&up.join("log")) >= 3
    });
    assert_eq!(
        diff_rel(&store, "rv", h, &[h]),
        owned(&[('C', "f"), ('A', "log"), ('A', "static")])
    );

    let out = store.fvm(&["commit", "rv", s(h)]).ok();
    assert_eq!(out.out(), "committed 3 changes", "{out}");
    assert_eq!(store.status("rv"), "running");
    assert_eq!(read(&h.join("static")), "vm\n");
    assert_eq!(read(&h.join("f")), "vm\n");
    let committed = read(&h.join("log"));
    let n = committed.lines().count();
    assert!(n >= 3 && committed == "x\n".repeat(n), "{committed:?}");
    // Right after: what was committed is no change any more (the log may be again).
    // (When the log changed again, its directory shows as changed too.)
    let left = diff_rel(&store, "rv", h, &[h]);
    assert!(
        left.iter()
            .all(|c| *c == ('C', "log".to_owned()) || *c == ('C', ".".to_owned())),
        "{left:?}"
    );
    // The VM was thawed and its appends go on, in its own copy.
    wait_until("the vm appended after the commit", || {
        lines(&up.join("log")) > n + 2
    });
    assert_eq!(read(&h.join("log")), committed, "the host's copy moved");
    let vm_log = store
        .fvm(&["run", "rv", "--", "cat", s(&h.join("log"))])
        .ok();
    assert!(vm_log.stdout.starts_with(&committed), "{vm_log}");
    assert!(vm_log.stdout.len() > committed.len());
    // The log changed again, and so its directory shows as changed (as for any
    // change, podman-style).
    let again = owned(&[('C', "log")]);
    assert_eq!(diff_rel(&store, "rv", h, &[h]), again);

    store.stop("rv");
    assert_eq!(diff_rel(&store, "rv", h, &[h]), again);
    store.start("rv");
    // The next start dropped the committed, unchanged entries from the layer.
    assert!(!up.join("static").exists() && !up.join("f").exists());
    assert!(up.join("log").exists());
    let vm_view = vm_walk(&store, "rv", h, "content");
    // The later appends commit too, with no conflict from the first commit.
    let out = store.fvm(&["commit", "rv", s(h)]);
    assert_eq!(
        out.code, 0,
        "the vm's later writes could not be committed:\n{out}"
    );
    let final_log = read(&h.join("log"));
    assert!(final_log.len() > committed.len() && final_log.starts_with(&committed));
    // H itself was committed the first time; the rename of the new log into it
    // moves its mtime on the host (as in any selective commit), so leave that out.
    assert_same_walk(
        &without_root_mtime(&vm_view),
        &without_root_mtime(&host_walk(h, "content")),
        "the vm's view vs the host",
    );
    assert_eq!(diff_rel(&store, "rv", h, &[h]), []);
    store.assert_clean();
}

/// Committing one name of a file the VM hard-linked: the VM still has one file
/// under both names afterwards (a write through one shows through the other).
#[test]
fn a_selective_commit_keeps_the_vms_hard_links() {
    if !needs_root("a_selective_commit_keeps_the_vms_hard_links") {
        return;
    }
    let store = TestStore::new("hardsel");
    let dir = temp_dir("hardsel");
    let h = dir.path();
    store.create("hl");
    store
        .sh("hl", &format!("cd {} && echo one > l1 && ln l1 l2", s(h)))
        .ok();
    let before = vm_walk(&store, "hl", h, "content");
    store.fvm(&["commit", "hl", s(&h.join("l1"))]).ok();
    assert_eq!(read(&h.join("l1")), "one\n");
    let after = vm_walk(&store, "hl", h, "content");
    let files = |w: &str| {
        walk_map(w)
            .into_iter()
            .filter(|(k, _)| *k == key("l1") || *k == key("l2"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        files(&before),
        files(&after),
        "committing l1 changed the vm's view of l1 and l2 (before vs after)"
    );
    let out = store
        .sh(
            "hl",
            &format!("cd {} && echo two >> l2 && cat l1 && stat -c %h l1", s(h)),
        )
        .ok();
    assert_eq!(
        out.out(),
        "one\ntwo\n2",
        "l1 and l2 are no longer one file in the vm"
    );
    store.assert_clean();
}

/// Committing a path inside a directory the VM made where the host has a file
/// (`rm f; mkdir f; …`): the VM keeps seeing the rest of its directory and the
/// committed path, and a later commit neither reports conflicts with fvm's own
/// writes nor deletes what was committed.
#[test]
fn a_selective_commit_into_a_directory_that_replaced_a_file_keeps_the_vms_view() {
    if !needs_root("a_selective_commit_into_a_directory_that_replaced_a_file_keeps_the_vms_view") {
        return;
    }
    let store = TestStore::new("dirfile");
    let dir = temp_dir("dirfile");
    let h = dir.path();
    write(&h.join("f"), "host file\n");
    store.create("df");
    store
        .sh(
            "df",
            &format!(
                "cd {} && rm f && mkdir f && echo a > f/a && echo b > f/b",
                s(h)
            ),
        )
        .ok();
    assert_eq!(
        diff_rel(&store, "df", h, &[h]),
        owned(&[('C', "f"), ('A', "f/a"), ('A', "f/b")])
    );
    let before = vm_walk(&store, "df", h, "content");
    store.fvm(&["commit", "df", s(&h.join("f/a"))]).ok();
    assert_eq!(read(&h.join("f/a")), "a\n");
    let after = vm_walk(&store, "df", h, "content");
    assert!(
        walk_map(&after).keys().eq(walk_map(&before).keys()),
        "committing f/a changed what the vm sees (before vs after):\n{}",
        walk_difference(&before, &after)
    );
    let left = diff_rel(&store, "df", h, &[h]);
    assert!(
        !left.iter().any(|(_, p)| p == "f/a"),
        "f/a still shows after it was committed: {left:?}"
    );
    let out = store.fvm(&["commit", "df", s(h)]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(read(&h.join("f/a")), "a\n", "the next commit deleted f/a");
    assert_eq!(read(&h.join("f/b")), "b\n");
    store.assert_clean();
}

/// A commit of 10,000 files while the VM runs: the VM stays usable afterwards
/// (`diff`, `stop`, `start`, `commit` all work), with nothing left to commit.
#[test]
fn a_large_commit_of_a_running_vm_keeps_it_usable() {
    if !needs_root("a_large_commit_of_a_running_vm_keeps_it_usable") {
        return;
    }
    let store = TestStore::new("bigrun");
    let dir = temp_dir("bigrun");
    let h = dir.path();
    store.create("br");
    store.start("br");
    let script = r#"
import os, sys
p = os.path.join(sys.argv[1], "many")
os.mkdir(p)
for i in range(10000):
    with open(os.path.join(p, "file-with-a-longish-name-%05d" % i), "w") as f:
        f.write("%d\n" % i)
"#;
    vm_python(&store, "br", script, &[s(h)]).ok();
    let out = store.fvm(&["commit", "br", s(h)]).ok();
    assert_eq!(out.out(), "committed 10001 changes", "{out}");
    assert_eq!(entries(&h.join("many")).len(), 10_000);
    assert_eq!(
        read(&h.join("many/file-with-a-longish-name-09999")),
        "9999\n"
    );
    let out = store.fvm(&["diff", "br", s(h)]);
    assert_eq!(
        out.code, 0,
        "diff after a large commit of a running vm:\n{out}"
    );
    assert_eq!(out.out(), "", "{out}");
    store.stop("br");
    let out = store.fvm(&["start", "br"]);
    assert_eq!(
        out.code, 0,
        "start after a large commit of a running vm:\n{out}"
    );
    assert_eq!(entries(&upper(&store, "br", h)), Vec::<String>::new());
    let out = store.fvm(&["commit", "br", s(h)]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.out(), "nothing to commit in vm \"br\"", "{out}");
    store.assert_clean();
}

//! `fvm commit` interrupted: SIGKILLed at several points of a commit of more than
//! 10,000 files (every host path is old or new, never partial, and the next commit
//! finishes the job from the journal), and paths swapped for symlinks between the
//! plan and its execution (nothing is ever read from or written to where they
//! point).

mod changes_support;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use changes_support::{
    SECRET, Victim, commit_temps, diff_rel, entries, files_containing, journal, parse_plan, poll,
    upper, vm_python,
};
use common::{COMMAND_TIMEOUT, TestStore, needs_root, signal, temp_dir};

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

const DIRS: usize = 20;
const PER_DIR: usize = 500;

/// The content the VM writes to `big/dDD/fIIII`: a few KiB, different per file.
fn content(d: usize, i: usize) -> String {
    let len = 2048 + (i % 7) * 300;
    let unit = format!("{d}/{i}:");
    unit.repeat(len / unit.len() + 1)[..len].to_owned()
}

/// The same in python, for the VM.
const MAKE_FILES: &str = r#"
import os, sys
h, dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    p = os.path.join(h, "big", "d%02d" % d)
    os.makedirs(p)
    for i in range(per):
        u = "%d/%d:" % (d, i)
        n = 2048 + (i % 7) * 300
        with open(os.path.join(p, "f%04d" % i), "w") as f:
            f.write((u * (n // len(u) + 1))[:n])
with open(os.path.join(h, "existing"), "w") as f:
    f.write("new\n")
os.unlink(os.path.join(h, "doomed"))
"#;

/// Check that every host path under `h` is the old or the new version, never
/// anything else; `done` requires the new one everywhere and no temp files.
/// Returns how many of the new files are there.
#[track_caller]
fn check_old_or_new(h: &Path, done: bool, when: &str) -> usize {
    let mut files = 0;
    let mut temps = 0;
    for rel in entries(h) {
        let p = h.join(&rel);
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if name.starts_with(".fvm-commit-") {
            assert!(!done, "{when}: a temp file is left: {rel}");
            temps += 1;
            continue;
        }
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["big"] | ["big", _] => assert!(meta.is_dir(), "{when}: {rel} is not a directory"),
            ["big", d, f] => {
                let d: usize = d.strip_prefix('d').unwrap().parse().unwrap();
                let i: usize = f.strip_prefix('f').unwrap().parse().unwrap();
                assert!(meta.is_file(), "{when}: {rel} is not a file");
                let got = std::fs::read_to_string(&p).unwrap();
                assert!(
                    got == content(d, i),
                    "{when}: {rel} is partial or wrong ({} bytes, want {})",
                    got.len(),
                    content(d, i).len()
                );
                files += 1;
            }
            ["existing"] => {
                let got = std::fs::read_to_string(&p).unwrap();
                assert!(
                    got == "new\n" || (!done && got == "old\n"),
                    "{when}: existing is {got:?}"
                );
            }
            ["doomed"] => {
                assert!(!done, "{when}: doomed was not deleted");
                assert_eq!(std::fs::read_to_string(&p).unwrap(), "doomed\n", "{when}");
            }
            _ => panic!("{when}: unexpected host path {rel}"),
        }
    }
    if done {
        assert_eq!(files, DIRS * PER_DIR, "{when}: files missing");
        assert!(!h.join("doomed").exists());
    }
    println!("{when}: {files} new files, {temps} temp files");
    files
}

#[derive(Debug, Clone, Copy)]
enum KillWhen {
    /// This long after the start.
    After(Duration),
    /// As soon as the commit journal is on disk.
    Journal,
    /// As soon as this host path (relative to H) exists.
    Exists(&'static str),
}

/// SIGKILL `fvm commit` at several points of a commit of 10,024 steps (before
/// its journal, right after, while temps are written, while they are renamed):
/// after each kill every host path is old or new; the next `fvm commit` finishes
/// the interrupted one, leaves no temp file, and the VM then has no changes left.
#[test]
fn sigkill_anywhere_leaves_old_or_new_and_the_next_commit_finishes() {
    if !needs_root("sigkill_anywhere_leaves_old_or_new_and_the_next_commit_finishes") {
        return;
    }
    let store = TestStore::new("sigkill");
    let dir = temp_dir("sigkill");
    let h = dir.path();
    std::fs::write(h.join("existing"), "old\n").unwrap();
    std::fs::write(h.join("doomed"), "doomed\n").unwrap();
    store.create("ck");
    vm_python(
        &store,
        "ck",
        MAKE_FILES,
        &[s(h), &DIRS.to_string(), &PER_DIR.to_string()],
    )
    .ok();
    let dry = store.fvm(&["commit", "ck", s(h), "--dry-run"]).ok();
    let steps = parse_plan(&dry).len();
    // big, the 20 directories, the files, `existing` and `doomed` (H changed
    // nothing of its own: its step only restores its times, and isn't listed).
    assert_eq!(steps, DIRS * PER_DIR + DIRS + 3);
    check_old_or_new(h, false, "before");

    let journal = journal(&store, "ck");
    let rounds = [
        KillWhen::After(Duration::from_millis(50)),
        KillWhen::Journal,
        KillWhen::After(Duration::from_millis(400)),
        KillWhen::Exists("big/d00/f0000"),
        KillWhen::Exists("big/d13/f0000"),
    ];
    let mut killed_with_journal = 0;
    let mut finished_alone = false;
    for (n, when) in rounds.into_iter().enumerate() {
        let mut bg = store.background(&["commit", "ck", s(h)]);
        let start = Instant::now();
        poll(COMMAND_TIMEOUT, || {
            bg.finished()
                || match when {
                    KillWhen::After(d) => start.elapsed() >= d,
                    KillWhen::Journal => journal.exists(),
                    KillWhen::Exists(p) => h.join(p).exists(),
                }
        });
        // SIGKILL by pid (the child is not reaped yet, so the pid is still ours).
        if !bg.finished() {
            common::kill9(&[bg.pid()]);
        }
        let out = bg.finish();
        let what = format!(
            "round {n} ({when:?}, {:?}): exit {}, journal {}",
            start.elapsed(),
            out.code,
            if journal.exists() { "left" } else { "absent" }
        );
        if out.code == 0 {
            // Too fast to catch at this point: it finished.
            println!("{what}: the commit finished before the kill:\n{out}");
            finished_alone = true;
            break;
        }
        assert_eq!(out.code, 128 + 9, "{what}:\n{out}");
        if journal.exists() {
            killed_with_journal += 1;
        }
        check_old_or_new(h, false, &what);
    }
    assert!(
        killed_with_journal > 0,
        "no kill happened while a journal existed: the test did not interrupt a commit"
    );

    let had_journal = journal.exists();
    let out = store.fvm(&["commit", "ck", s(h)]).ok();
    if had_journal {
        let line = format!("fvm: finished an interrupted commit of {steps} changes first");
        assert!(out.stderr.contains(&line), "no {line:?}:\n{out}");
    }
    println!("final commit (finished alone before: {finished_alone}):\n{out}");
    check_old_or_new(h, true, "after the final commit");
    assert_eq!(commit_temps(h), Vec::<String>::new());
    assert!(!journal.exists(), "the journal is left");
    assert_eq!(diff_rel(&store, "ck", h, &[h]), []);
    assert_eq!(entries(&upper(&store, "ck", h)), Vec::<String>::new());
    // And one more commit has nothing to do.
    let out = store.fvm(&["commit", "ck", s(h)]).ok();
    assert_eq!(out.out(), "nothing to commit in vm \"ck\"", "{out}");
    assert!(!out.stderr.contains("interrupted"), "{out}");
    store.assert_clean();
}

/// Many small files first, so that a commit is still writing them when the test
/// steps in; `last` names what comes after them in the plan.
fn make_many(store: &TestStore, name: &str, h: &Path, n: usize) {
    let script = r#"
import os, sys
p = os.path.join(sys.argv[1], "big")
os.makedirs(p)
for i in range(int(sys.argv[2])):
    with open(os.path.join(p, "f%05d" % i), "w") as f:
        f.write("file %d\n" % i)
"#;
    vm_python(store, name, script, &[s(h), &n.to_string()]).ok();
}

/// A directory of the layer swapped for a symlink to a victim directory while a
/// commit is under way (after the plan, before the commit reads the files in it):
/// the commit reads nothing through it, and writes nothing outside H.
#[test]
fn a_layer_directory_swapped_mid_commit_is_never_followed() {
    if !needs_root("a_layer_directory_swapped_mid_commit_is_never_followed") {
        return;
    }
    let store = TestStore::new("midswap");
    let dir = temp_dir("midswap");
    let h = dir.path();
    let mut victim = Victim::new("victim-midswap");
    victim.add("f", SECRET);
    store.create("ms");
    make_many(&store, "ms", h, 3000);
    store
        .sh("ms", &format!("mkdir {0}/zz && echo vm > {0}/zz/f", s(h)))
        .ok();
    let journal = journal(&store, "ms");

    let mut bg = store.background(&["commit", "ms", s(h)]);
    poll(COMMAND_TIMEOUT, || bg.finished() || journal.exists());
    signal("STOP", &[bg.pid()]);
    assert!(
        !bg.finished() && !h.join("zz").exists(),
        "the commit got too far before it could be stopped"
    );
    let up = upper(&store, "ms", h);
    std::fs::remove_dir_all(up.join("zz")).unwrap();
    std::os::unix::fs::symlink(victim.path(), up.join("zz")).unwrap();
    signal("CONT", &[bg.pid()]);
    let out = bg.finish();
    println!("the commit with a swapped layer directory:\n{out}");
    assert!(matches!(out.code, 0 | 125), "{out}");
    victim.assert_untouched("after the commit");
    assert_eq!(files_containing(h, SECRET), Vec::<String>::new());
    // Whatever the next commit makes of the journal, the same holds.
    let out = store.fvm(&["commit", "ms", s(h)]);
    println!("the next commit:\n{out}");
    assert!(matches!(out.code, 0 | 125), "{out}");
    victim.assert_untouched("after the next commit");
    assert_eq!(files_containing(h, SECRET), Vec::<String>::new());
    store.assert_clean();
    victim.assert_untouched("after deleting the vm");
}

/// Host directories the commit already made or planned to write into, swapped for
/// symlinks to a victim directory between a killed commit and the one that
/// finishes it: nothing is written, deleted or read through them.
#[test]
fn a_host_directory_swapped_mid_commit_is_never_followed() {
    if !needs_root("a_host_directory_swapped_mid_commit_is_never_followed") {
        return;
    }
    let store = TestStore::new("hostswap");
    let dir = temp_dir("hostswap");
    let h = dir.path();
    let mut victim = Victim::new("victim-hostswap");
    victim.add("f", SECRET);
    victim.add("x", SECRET);
    victim.add("y", SECRET);
    std::fs::create_dir(h.join("dd")).unwrap();
    std::fs::write(h.join("dd/x"), "host x\n").unwrap();
    store.create("hs");
    store
        .sh(
            "hs",
            &format!(
                "set -e; cd {}; mkdir aa; echo vm > aa/f; rm dd/x; echo vm > dd/y",
                s(h)
            ),
        )
        .ok();
    make_many(&store, "hs", h, 3000);
    let journal = journal(&store, "hs");

    let mut bg = store.background(&["commit", "hs", s(h)]);
    poll(COMMAND_TIMEOUT, || bg.finished() || h.join("aa").exists());
    common::kill9(&[bg.pid()]);
    let out = bg.finish();
    assert_eq!(
        out.code,
        128 + 9,
        "the commit finished before the kill:\n{out}"
    );
    assert!(journal.exists(), "no journal after the kill");
    for d in ["aa", "dd"] {
        std::fs::rename(h.join(d), h.join(format!("{d}.moved"))).unwrap();
        std::os::unix::fs::symlink(victim.path(), h.join(d)).unwrap();
    }
    let out = store.fvm(&["commit", "hs", s(h)]);
    println!("the commit finishing onto swapped host directories:\n{out}");
    assert!(matches!(out.code, 0 | 125), "{out}");
    victim.assert_untouched("after the commit");
    assert_eq!(files_containing(h, SECRET), Vec::<String>::new());
    assert_eq!(commit_temps(victim.path()), Vec::<String>::new());
    if out.code == 0 {
        // Finished: into real directories made in place of the symlinks.
        for d in ["aa", "dd"] {
            let m = std::fs::symlink_metadata(h.join(d)).unwrap();
            assert!(m.is_dir(), "{d} is a {:?}", m.file_type());
        }
        assert_eq!(std::fs::read_to_string(h.join("aa/f")).unwrap(), "vm\n");
        assert_eq!(entries(&h.join("dd")), ["y"]);
        assert_eq!(std::fs::read_to_string(h.join("dd/y")).unwrap(), "vm\n");
    }
    store.assert_clean();
    victim.assert_untouched("after deleting the vm");
}

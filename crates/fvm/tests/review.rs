//! Reviewing a VM's changes before committing them: copy-ups that changed
//! nothing hidden (`--all` shows them), `diff --stat`, `diff -u`, `discard`,
//! `commit --exclude`, paths read from the current directory, a path that
//! matches nothing, and a commit with nothing to commit.
//!
//! Each test works in a temporary host directory `H` that its VM changes; nothing
//! else on the host is touched.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Out, TestStore, needs_root, needs_tool, python, run, temp_dir};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

fn write(p: &Path, content: &[u8]) {
    std::fs::write(p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// `diff` lines as (letter, path relative to `h`; "." for `h` itself).
fn lines(out: &Out, h: &Path) -> Vec<(char, String)> {
    out.stdout
        .lines()
        .map(|l| {
            let (k, p) = l.split_once(' ').expect("a diff line");
            let rel = Path::new(p)
                .strip_prefix(h)
                .map(|r| {
                    if r.as_os_str().is_empty() {
                        ".".to_owned()
                    } else {
                        r.display().to_string()
                    }
                })
                .unwrap_or_else(|_| p.to_owned());
            (k.chars().next().unwrap(), rel)
        })
        .collect()
}

/// `fvm ARGS` on `store`, from the working directory `cwd`.
fn fvm_in(store: &TestStore, cwd: &Path, args: &[&str]) -> Out {
    let mut cmd = store.command(args);
    cmd.current_dir(cwd);
    run(cmd, None)
}

/// `fvm ARGS` on `store` under a pseudo-terminal (`script`): what a terminal
/// shows, stdout and stderr together.
fn fvm_on_tty(store: &TestStore, args: &[&str]) -> Out {
    let mut line = format!("{} --root {}", common::FVM, store.root.display());
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    run(cmd, None)
}

/// A `chmod` to the mode a file has already, and a new file in a directory:
/// the first is a copy-up that changed nothing, and the directory (and `H`) are
/// in the layer only because of what changed in them. All three are hidden;
/// `--all` shows them, and commit leaves them out unless `--all`.
#[test]
fn copy_ups_that_changed_nothing_are_hidden_and_all_shows_them() {
    if !needs_root("copy_ups_that_changed_nothing_are_hidden_and_all_shows_them") {
        return;
    }
    let store = TestStore::new("rv-same");
    let dir = temp_dir("rv-same");
    let h = dir.path();
    write(&h.join("same"), b"same\n");
    std::fs::create_dir(h.join("d")).unwrap();
    write(&h.join("d/old"), b"old\n");
    write(&h.join("mode"), b"mode\n");
    store.create("rs");
    store
        .sh(
            "rs",
            &format!(
                "set -e; cd {h}; chmod 0644 same; chmod 0644 same; echo n > d/new; chmod 0600 mode",
                h = s(h)
            ),
        )
        .ok();
    let shown = lines(&store.fvm(&["diff", "rs", s(h)]).ok(), h);
    assert_eq!(
        shown,
        [('A', "d/new".to_owned()), ('C', "mode".to_owned())],
        "the copy-up of `same` and the directories are hidden"
    );
    let all = lines(&store.fvm(&["diff", "rs", s(h), "--all"]).ok(), h);
    for want in [".", "d", "same", "d/new", "mode"] {
        assert!(
            all.iter().any(|(_, p)| p == want),
            "--all lacks {want}: {all:?}"
        );
    }
    // JSON marks them.
    let json: Value = serde_json::from_str(
        &store
            .fvm(&["--json", "diff", "rs", s(h), "--all"])
            .ok()
            .stdout,
    )
    .unwrap();
    let same = json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == s(&h.join("same")))
        .unwrap();
    assert_eq!(same["same_as_host"], true);
    // The dry run plans no step for them; with --all it does.
    let plan = store.fvm(&["commit", "rs", s(h), "--dry-run"]).ok();
    assert!(!plan.stdout.contains(s(&h.join("same"))), "{plan}");
    assert!(plan.stdout.contains(s(&h.join("mode"))), "{plan}");
    let plan = store
        .fvm(&["commit", "rs", s(h), "--dry-run", "--all"])
        .ok();
    assert!(plan.stdout.contains(s(&h.join("same"))), "{plan}");
    let done = store.fvm(&["commit", "rs", s(h)]).ok();
    assert!(done.stdout.contains("committed 2 changes"), "{done}");
}

/// `--stat`: counts and bytes per directory and a total, as text and JSON.
#[test]
fn diff_stat_counts_changes_and_bytes() {
    if !needs_root("diff_stat_counts_changes_and_bytes") {
        return;
    }
    let store = TestStore::new("rv-stat");
    let dir = temp_dir("rv-stat");
    let h = dir.path();
    write(&h.join("c"), b"c\n");
    write(&h.join("gone"), b"gone\n");
    store.create("st");
    store
        .sh(
            "st",
            &format!(
                "set -e; cd {h}; printf 12345 > a; mkdir sub; printf 123 > sub/b; printf 1234567 > c; rm gone; printf x > \"$(printf 'e\\033[2Jx')\"",
                h = s(h)
            ),
        )
        .ok();
    let json: Value = serde_json::from_str(
        &store
            .fvm(&["--json", "diff", "st", s(h), "--stat"])
            .ok()
            .stdout,
    )
    .unwrap();
    let total = &json["total"];
    // a, sub, sub/b and the oddly named file; c; gone.
    assert_eq!(total["added"], 4, "{json}");
    assert_eq!(total["changed"], 1, "{json}");
    assert_eq!(total["deleted"], 1, "{json}");
    assert_eq!(total["bytes"], 5 + 3 + 7 + 1, "{json}");
    let text = store.fvm(&["diff", "st", s(h), "--stat"]).ok();
    let last = text.stdout.lines().last().unwrap().to_owned();
    let cols: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(cols, ["total", "4", "1", "1", "16B"], "{text}");
    assert!(
        !text.stdout.contains('\x1b'),
        "a name sent an escape: {text}"
    );
}

/// `-u`: a real unified diff of text, sizes and sha256 for binaries, mode and
/// symlink targets before and after; colour only on a terminal or with
/// `--color always`; a name's and a line's escape sequences shown escaped on
/// a terminal.
#[test]
fn diff_u_shows_text_binary_metadata_and_links() {
    if !needs_root("diff_u_shows_text_binary_metadata_and_links")
        || !needs_tool("diff_u_shows_text_binary_metadata_and_links", "script")
    {
        return;
    }
    let store = TestStore::new("rv-u");
    let dir = temp_dir("rv-u");
    let h = dir.path();
    write(&h.join("t"), b"one\ntwo\nthree\nfour\nfive\n");
    write(&h.join("bin"), b"\0\x01");
    write(&h.join("m"), b"m\n");
    std::os::unix::fs::symlink("one", h.join("l")).unwrap();
    store.create("un");
    let py = python();
    store
        .sh(
            "un",
            &format!(
                r#"set -e; cd {h}
                sed -i 's/^two$/TWO/' t
                printf '\000\002\003' > bin
                chmod 0600 m
                ln -sfn two l
                {py} -c 'open("evil\x1b[2J\nname", "w").write("x\x1b]0;owned\x07y\n")'
                "#,
                h = s(h)
            ),
        )
        .ok();
    let out = store.fvm(&["diff", "un", s(h), "-u"]).ok();
    let o = &out.stdout;
    assert!(o.contains(&format!("--- host{}", s(&h.join("t")))), "{out}");
    assert!(o.contains(&format!("+++ vm{}", s(&h.join("t")))), "{out}");
    assert!(o.contains("@@ -1,5 +1,5 @@"), "{out}");
    assert!(o.contains("\n-two\n+TWO\n"), "{out}");
    assert!(o.contains(" one\n"), "context lines: {out}");
    assert!(
        o.contains("binary: host 2 bytes, sha256 b413f47d13ee2fe6c845b2ee141af81de858df4ec549a58b7970bb96645bc8d2 -> vm 3 bytes, sha256 "),
        "{out}"
    );
    assert!(o.contains("old file 0644 0:0\nnew file 0600 0:0"), "{out}");
    assert!(o.contains("symlink target one -> two"), "{out}");
    // The name is quoted; to a pipe the content line is as the file has it.
    assert!(o.contains(r#"evil\x1b[2J\nname""#), "{out}");
    assert!(o.contains(r#"+++ "vm/tmp/"#), "{out}");
    assert!(o.contains("+x\x1b]0;owned\x07y"), "{out}");
    assert!(!o.contains("\x1b[2J"), "{out}");
    assert!(!o.contains("\x1b[31m"), "no colour to a pipe: {out}");
    let coloured = store
        .fvm(&["diff", "un", s(h), "-u", "--color", "always"])
        .ok();
    assert!(coloured.stdout.contains("\x1b[31m-two\x1b[m"), "{coloured}");
    assert!(coloured.stdout.contains("\x1b[32m+TWO\x1b[m"), "{coloured}");
    assert!(coloured.stdout.contains("\x1b[36m@@"), "{coloured}");
    assert!(
        coloured.stdout.contains(r"+x\x1b]0;owned\x07y"),
        "escaped when coloured: {coloured}"
    );
    let tty = fvm_on_tty(&store, &["diff", "un", s(h), "-u"]).ok();
    assert!(tty.stdout.contains("\x1b[32m+TWO"), "{tty}");
    assert!(tty.stdout.contains(r"+x\x1b]0;owned\x07y"), "{tty}");
    assert!(!tty.stdout.contains("\x1b]0;owned"), "{tty}");
    // JSON: each side as data, read change by change.
    let json: Value =
        serde_json::from_str(&store.fvm(&["--json", "diff", "un", s(h), "-u"]).ok().stdout)
            .unwrap();
    let t = json
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == s(&h.join("t")))
        .unwrap();
    assert_eq!(t["vm"]["text"], "one\nTWO\nthree\nfour\nfive\n", "{json}");
    assert_eq!(t["host"]["mode"], 0o644, "{json}");
    // One file of a directory's changes, by path.
    let one = store.fvm(&["diff", "un", s(&h.join("t")), "-u"]).ok();
    assert_eq!(one.stdout.matches("diff --fvm").count(), 1, "{one}");
}

/// `discard` drops the layer's entries under a path (the host's version shows
/// again), refuses a running VM, and its dry run changes nothing.
#[test]
fn discard_drops_changes_of_a_stopped_vm_and_refuses_a_running_one() {
    if !needs_root("discard_drops_changes_of_a_stopped_vm_and_refuses_a_running_one") {
        return;
    }
    let store = TestStore::new("rv-discard");
    let dir = temp_dir("rv-discard");
    let h = dir.path();
    write(&h.join("f"), b"host\n");
    write(&h.join("keep"), b"host\n");
    store.create("dc");
    let py = python();
    store
        .sh(
            "dc",
            &format!(
                "set -e; cd {h}; echo vm > f; echo vm > keep; mkdir -p new/deep; echo n > new/deep/x; rm -f gone; {py} -c 'open(\"odd\\x1b[2Jname\", \"w\")'",
                h = s(h)
            ),
        )
        .ok();
    store.start("dc");
    let refused = store.fvm(&["discard", "dc", s(&h.join("f"))]).code(125);
    assert!(refused.stderr.contains("stop it first"), "{refused}");
    let dry = store
        .fvm(&["discard", "dc", s(&h.join("new")), "--dry-run"])
        .ok();
    assert!(dry.stdout.contains("would discard A"), "{dry}");
    store.stop("dc");
    let done = store
        .fvm(&["discard", "dc", s(&h.join("f")), s(&h.join("new"))])
        .ok();
    assert!(done.stdout.contains("discarded 4 change(s)"), "{done}");
    let odd = store
        .fvm(&["discard", "dc", s(&h.join("odd\x1b[2Jname")), "--dry-run"])
        .ok();
    assert!(odd.stdout.contains(r"odd\x1b[2Jname"), "{odd}");
    assert!(!odd.stdout.contains('\x1b'), "{odd}");
    let left = store.fvm(&["diff", "dc", s(h)]).ok();
    let want = format!("C {}\nA \"{}/odd\\x1b[2Jname\"\n", s(&h.join("keep")), s(h));
    assert_eq!(left.stdout, want, "{left}");
    let seen = store.sh("dc", &format!("cat {}", s(&h.join("f")))).ok();
    assert_eq!(seen.out(), "host", "the host's version shows again");
}

/// `--exclude` leaves paths out of a commit (repeatable); they stay the VM's
/// changes. One inside a directory the VM replaced as a whole is refused.
#[test]
fn commit_exclude_leaves_paths_out() {
    if !needs_root("commit_exclude_leaves_paths_out") {
        return;
    }
    let store = TestStore::new("rv-excl");
    let dir = temp_dir("rv-excl");
    let h = dir.path();
    // (A directory the VM makes is replaced as a whole too: `sub` is the host's.)
    std::fs::create_dir(h.join("sub")).unwrap();
    std::fs::create_dir(h.join("whole")).unwrap();
    write(&h.join("whole/old"), b"old\n");
    store.create("ex");
    store
        .sh(
            "ex",
            &format!(
                "set -e; cd {h}; echo a > a; echo b > b; echo c > sub/c; echo d > sub/d; rm -rf whole; mkdir whole; echo n > whole/n",
                h = s(h)
            ),
        )
        .ok();
    let refused = store
        .fvm(&["commit", "ex", s(h), "--exclude", s(&h.join("whole/n"))])
        .code(125);
    assert!(refused.stderr.contains("cannot leave out"), "{refused}");
    assert!(!h.join("a").exists(), "nothing was committed");
    store
        .fvm(&[
            "commit",
            "ex",
            s(h),
            "--exclude",
            s(&h.join("b")),
            "--exclude",
            s(&h.join("sub/d")),
        ])
        .ok();
    assert!(h.join("a").exists() && h.join("sub/c").exists());
    assert!(h.join("whole/n").exists() && !h.join("whole/old").exists());
    assert!(!h.join("b").exists() && !h.join("sub/d").exists());
    let left = lines(&store.fvm(&["diff", "ex", s(h)]).ok(), h);
    assert_eq!(left, [('A', "b".to_owned()), ('A', "sub/d".to_owned())]);
}

/// A relative path is read from the current directory (with `..` resolved by
/// name), for diff, commit, --exclude and discard; one above `/` is an error.
#[test]
fn relative_paths_are_read_from_the_current_directory() {
    if !needs_root("relative_paths_are_read_from_the_current_directory") {
        return;
    }
    let store = TestStore::new("rv-rel");
    let dir = temp_dir("rv-rel");
    let h = dir.path();
    std::fs::create_dir(h.join("sub")).unwrap();
    store.create("rl");
    store
        .sh(
            "rl",
            &format!(
                "set -e; cd {h}; echo a > sub/a; echo b > sub/b; echo c > sub/c; echo t > top",
                h = s(h)
            ),
        )
        .ok();
    let sub = h.join("sub");
    let shown = lines(&fvm_in(&store, &sub, &["diff", "rl", "a"]).ok(), h);
    assert_eq!(shown, [('A', "sub/a".to_owned())]);
    let shown = lines(&fvm_in(&store, &sub, &["diff", "rl", "../top"]).ok(), h);
    assert_eq!(shown, [('A', "top".to_owned())]);
    fvm_in(&store, &sub, &["commit", "rl", ".", "--exclude", "b"]).ok();
    assert!(sub.join("a").exists() && sub.join("c").exists() && !sub.join("b").exists());
    assert!(!Path::new("/sub/a").exists());
    fvm_in(&store, &sub, &["discard", "rl", "b"]).ok();
    let left = lines(&store.fvm(&["diff", "rl", s(h)]).ok(), h);
    assert_eq!(left, [('A', "top".to_owned())]);
    let above = fvm_in(&store, Path::new("/"), &["diff", "rl", "../.."]).code(125);
    assert!(above.stderr.contains("leads above /"), "{above}");
}

/// A path that matches no change is an error with exit status 1 (diff, commit,
/// --exclude, discard); a commit with nothing to commit says so and exits 0.
#[test]
fn a_path_that_matches_nothing_fails_and_nothing_to_commit_is_said() {
    if !needs_root("a_path_that_matches_nothing_fails_and_nothing_to_commit_is_said") {
        return;
    }
    let store = TestStore::new("rv-none");
    let dir = temp_dir("rv-none");
    let h = dir.path();
    store.create("nm");
    store
        .sh("nm", &format!("echo a > {}", s(&h.join("a"))))
        .ok();
    let nope = h.join("nope");
    for args in [
        vec!["diff", "nm", s(&nope)],
        vec!["diff", "nm", s(&nope), "-u"],
        vec!["diff", "nm", s(&nope), "--stat"],
        vec!["commit", "nm", s(&nope)],
        vec!["commit", "nm", s(h), "--exclude", s(&nope)],
        vec!["discard", "nm", s(&nope)],
    ] {
        let out = store.fvm(&args).code(1);
        assert_eq!(
            out.stderr.trim(),
            format!("fvm: path {} matches no change in vm \"nm\"", s(&nope)),
            "{args:?}: {out}"
        );
    }
    assert!(!h.join("a").exists());
    store.fvm(&["commit", "nm", s(h)]).ok();
    assert!(h.join("a").exists());
    // Only a copy-up that changed nothing is left under `H`: the path matches
    // it, and there is nothing to commit.
    store
        .sh("nm", &format!("chmod 0644 {}", s(&h.join("a"))))
        .ok();
    let again = store.fvm(&["commit", "nm", s(h)]).ok();
    assert_eq!(again.out(), "nothing to commit in vm \"nm\"", "{again}");
}

/// `fvm ARGS` on `store` with arguments that need not be UTF-8: (exit status,
/// stdout, stderr) as bytes, exactly as fvm wrote them.
fn fvm_raw(store: &TestStore, args: &[&std::ffi::OsStr]) -> (i32, Vec<u8>, Vec<u8>) {
    let mut cmd = store.command(&[]);
    cmd.args(args);
    let out = cmd.output().expect("run fvm");
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// What a terminal must never get from a VM's name: a control byte (but the
/// newline that ends a line), a C1 control, bytes that are not UTF-8.
fn assert_printable(what: &str, bytes: &[u8]) {
    let text =
        std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: not UTF-8 ({e}): {bytes:?}"));
    assert!(
        !text
            .chars()
            .any(|c| c != '\n' && c.is_control() || c == '\u{fffd}'),
        "{what}: a raw control character: {text:?}"
    );
}

/// Names a VM makes with control characters, newlines, escape sequences and
/// bytes that are not UTF-8 are shown escaped by `diff -u` (headers and
/// metadata lines), `diff --stat` (directory names) and `discard` (its lines
/// and its errors); `diff -u --json` and `--stat --json` carry the bytes in hex
/// for a name that is not UTF-8.
#[test]
fn hostile_names_are_shown_escaped_in_review_output() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    if !needs_root("hostile_names_are_shown_escaped_in_review_output") {
        return;
    }
    let store = TestStore::new("rv-hostile");
    let dir = temp_dir("rv-hostile");
    let h = dir.path();
    let whole = h.join(OsStr::from_bytes(b"whole\x1b[2J"));
    std::fs::create_dir(&whole).unwrap();
    write(&whole.join("old"), b"old\n");
    write(&h.join("modes"), b"m\n");
    let top = format!("/tmp/{}", common::unique("fvm-rv-top"));
    store.create("hn");
    let py = python();
    let script = r#"
import os, sys
h = sys.argv[1].encode()
top = sys.argv[2].encode()
names = [b"nl\nA fake", b"esc\x1b[2Jname", b"ctl\x07\x08\x7f", "c1\u009b31m".encode(), b"bad\xff\xfe", b"rlo\xe2\x80\xaetxt"]
for n in names:
    with open(os.path.join(h, n), "wb") as f:
        f.write(b"x\n")
os.symlink(b"target\x1b]0;owned\x07\n\xff", os.path.join(h, b"link\x1b[1A"))
os.chmod(os.path.join(h, b"modes"), 0o600)
w = os.path.join(h, b"whole\x1b[2J")
os.remove(os.path.join(w, b"old"))
os.rmdir(w)
os.mkdir(w)
open(os.path.join(w, b"new\x1b[K"), "wb").write(b"n\n")
d = top + b"\x1b[2J\n\xff"
os.makedirs(d)
open(os.path.join(d, b"f"), "wb").write(b"f\n")
"#;
    store
        .fvm(&["run", "hn", "--", py, "-c", script, s(h), &top])
        .ok();
    let hb = h.as_os_str().as_bytes();
    let path = |name: &[u8]| {
        let mut p = hb.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        std::ffi::OsString::from_vec(p)
    };
    use std::os::unix::ffi::OsStringExt;
    let hos = h.as_os_str();

    // diff (the listing), diff -u and diff --stat: nothing raw.
    for args in [
        vec![OsStr::new("diff"), OsStr::new("hn"), hos],
        vec![OsStr::new("diff"), OsStr::new("hn"), hos, OsStr::new("-u")],
        vec![OsStr::new("diff"), OsStr::new("hn"), OsStr::new("--stat")],
        vec![
            OsStr::new("diff"),
            OsStr::new("hn"),
            OsStr::new("-u"),
            OsStr::new("--all"),
        ],
    ] {
        let (code, out, err) = fvm_raw(&store, &args);
        assert_eq!(code, 0, "{args:?}: {}", String::from_utf8_lossy(&err));
        assert_printable(&format!("{args:?} stdout"), &out);
        assert_printable(&format!("{args:?} stderr"), &err);
    }
    let (_, u, _) = fvm_raw(
        &store,
        &[OsStr::new("diff"), OsStr::new("hn"), hos, OsStr::new("-u")],
    );
    let u = String::from_utf8(u).unwrap();
    let hs = s(h);
    for want in [
        format!(r#"diff --fvm "{hs}/nl\nA fake""#),
        format!(r#"+++ "vm{hs}/esc\x1b[2Jname""#),
        format!(r#"+++ "vm{hs}/ctl\x07\x08\x7f""#),
        format!(r#"+++ "vm{hs}/c1\u{{009b}}31m""#),
        format!(r#"+++ "vm{hs}/bad\xff\xfe""#),
        format!(r#"+++ "vm{hs}/rlo\u{{202e}}txt""#),
        format!(r#"diff --fvm "{hs}/link\x1b[1A""#),
        r#"symlink target (none) -> "target\x1b]0;owned\x07\n\xff""#.to_owned(),
        format!(r#"diff --fvm "{hs}/whole\x1b[2J/new\x1b[K""#),
    ] {
        assert!(u.contains(&want), "{want} in:\n{u}");
    }
    assert!(u.contains("old file 0644 0:0\nnew file 0600 0:0"), "{u}");
    let (_, st, _) = fvm_raw(
        &store,
        &[OsStr::new("diff"), OsStr::new("hn"), OsStr::new("--stat")],
    );
    let st = String::from_utf8(st).unwrap();
    assert!(st.contains(&format!(r#""{top}\x1b[2J\n\xff""#)), "{st}");

    // JSON: exact text, and the bytes in hex where a name is not UTF-8.
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (_, j, _) = fvm_raw(
        &store,
        &[
            OsStr::new("--json"),
            OsStr::new("diff"),
            OsStr::new("hn"),
            hos,
            OsStr::new("-u"),
        ],
    );
    let j: Value = serde_json::from_slice(&j).unwrap();
    let bad = path(b"bad\xff\xfe");
    let d = j
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path_hex"] == hex(bad.as_bytes()))
        .unwrap_or_else(|| panic!("no path_hex for the name that is not UTF-8: {j:#}"));
    assert_eq!(d["vm"]["text"], "x\n", "{d}");
    let esc = j
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == format!("{hs}/esc\x1b[2Jname"))
        .unwrap_or_else(|| panic!("{j:#}"));
    assert!(esc.get("path_hex").is_none(), "{esc}");
    let link = j
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == format!("{hs}/link\x1b[1A"))
        .unwrap_or_else(|| panic!("{j:#}"));
    assert_eq!(
        link["vm"]["target_hex"],
        hex(b"target\x1b]0;owned\x07\n\xff"),
        "{link}"
    );
    let (_, j, _) = fvm_raw(
        &store,
        &[
            OsStr::new("--json"),
            OsStr::new("diff"),
            OsStr::new("hn"),
            OsStr::new("--stat"),
        ],
    );
    let j: Value = serde_json::from_slice(&j).unwrap();
    let mut topdir = top.as_bytes().to_vec();
    topdir.extend_from_slice(b"\x1b[2J\n\xff");
    assert!(
        j["dirs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dir_hex"] == hex(&topdir)),
        "{j:#}"
    );

    // discard: its lines and its errors.
    let discard = |extra: &[&OsStr]| {
        let mut args = vec![OsStr::new("discard"), OsStr::new("hn")];
        args.extend_from_slice(extra);
        let (code, out, err) = fvm_raw(&store, &args);
        assert_printable(&format!("{args:?} stdout"), &out);
        assert_printable(&format!("{args:?} stderr"), &err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };
    let (nl, ctl, bad, esc) = (
        path(b"nl\nA fake"),
        path(b"ctl\x07\x08\x7f"),
        path(b"bad\xff\xfe"),
        path(b"esc\x1b[2Jname"),
    );
    let (code, out, _) = discard(&[&nl, &ctl, &bad, OsStr::new("--dry-run")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(r#"would discard A "{hs}/nl\nA fake""#)),
        "{out}"
    );
    assert!(
        out.contains(&format!(r#"would discard A "{hs}/bad\xff\xfe""#)),
        "{out}"
    );
    let (code, _, err) = discard(&[&path(b"nothing\x1b[2J\xff")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            r#"path "{hs}/nothing\x1b[2J\xff" matches no change"#
        )),
        "{err}"
    );
    let inside = path(b"whole\x1b[2J/new\x1b[K");
    let (code, _, err) = discard(&[&inside]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains(r#"the vm replaced "#) && err.contains(r#"/whole\x1b[2J""#),
        "{err}"
    );
    let (code, out, _) = discard(&[&nl, &ctl, &bad, &esc]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("discarded 4 change(s)"), "{out}");
    let (_, j, _) = fvm_raw(
        &store,
        &[
            OsStr::new("--json"),
            OsStr::new("discard"),
            OsStr::new("hn"),
            &path(b"rlo\xe2\x80\xaetxt"),
            OsStr::new("--dry-run"),
        ],
    );
    let j: Value = serde_json::from_slice(&j).unwrap();
    assert_eq!(
        j["changes"][0]["path"],
        format!("{hs}/rlo\u{202e}txt"),
        "{j}"
    );
}

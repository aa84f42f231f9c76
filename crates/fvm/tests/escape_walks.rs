//! The escape suite, host-side walks (docs/security.md): root in a VM shapes its
//! layer to break the host-side commands that walk it.
//!
//! - A tree 12,000 directories deep (far beyond the fd limit, `PATH_MAX` and a
//!   recursion's stack): `list`, `stats`, `inspect`, `diff`, `commit --dry-run`,
//!   `commit`, `copy` and `delete` all work with 64 fds, in bounded memory.
//! - `delete` of a tree 1,100 deep with the usual 1,024 fds leaves no trash, and
//!   a delete killed half-way is finished by the next command on the store.
//! - `diff` of a running VM that renames directories in a tight loop never fails.

mod common;
mod escape_support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{FVM, Out, TestStore, needs_root, needs_tool, run, try_run};
use escape_support::{quiet, var_tmp_dir};

/// A path as a string, for scripts.
fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// A python script, run in a VM, that makes `depth` nested directories named
/// `d` under `top` (made in `dir`), with a file `f` at the bottom.
fn deep_tree(dir: &Path, depth: usize) -> String {
    format!(
        "import os\nos.chdir({dir:?})\nos.mkdir('top')\nos.chdir('top')\nfor _ in range({depth}):\n    os.mkdir('d')\n    os.chdir('d')\nopen('f', 'w').write('bottom')\n",
        dir = s(dir)
    )
}

/// What a command run by [`limited`] did, and its peak memory.
struct Limited {
    out: Out,
    /// Its stdout, in a file (a diff of a deep tree is large).
    stdout: PathBuf,
    /// Maximum resident set size, in KiB (`/usr/bin/time -f %M`).
    max_rss_kib: u64,
}

/// fvm on `store` with at most `fds` open files, its stdout in a file under
/// `scratch`.
fn limited(store: &TestStore, scratch: &Path, fds: u32, args: &[&str]) -> Limited {
    let stdout = scratch.join(format!("fvm-out-{}", args.join("-").replace('/', "_")));
    let rss = scratch.join("fvm-rss");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "out=$1 rss=$2; shift 2; ulimit -n {fds} && exec /usr/bin/time -f %M -o \"$rss\" \"$@\" >\"$out\""
        ))
        .arg("sh")
        .arg(&stdout)
        .arg(&rss)
        .arg(FVM)
        .arg("--root")
        .arg(&store.root)
        .args(args);
    // A debug build commits a 12,000-deep tree in a few minutes, not in the
    // usual command timeout.
    let out = try_run(cmd, None, Duration::from_secs(900)).unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(&rss).unwrap_or_default();
    let max_rss_kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    Limited {
        out,
        stdout,
        max_rss_kib,
    }
}

/// Lines in a file, and whether one of them ends with `tail`.
fn lines_and_tail(path: &Path, tail: &str) -> (usize, bool) {
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut text))
        .expect("read the command's output");
    let lines = text.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let (mut n, mut found) = (0, false);
    for l in lines {
        n += 1;
        found |= l.ends_with(tail.as_bytes());
    }
    (n, found)
}

/// How deep the chain of `d` directories under `top` on the host is, and what
/// the file at its bottom holds (walked by python, one `chdir` at a time).
fn host_depth(top: &Path) -> (usize, String) {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(format!(
        "import os\nos.chdir({top:?})\nn = 0\nwhile os.path.isdir('d'):\n    os.chdir('d')\n    n += 1\nprint(n, open('f').read())\n",
        top = s(top)
    ));
    let out = run(cmd, None).ok();
    let (n, f) = out.out().split_once(' ').expect("depth and content");
    (n.parse().expect("a depth"), f.to_owned())
}

/// `.trash-*` directories left in the store.
fn trash(store: &TestStore) -> Vec<String> {
    std::fs::read_dir(store.root.join("vms"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".trash-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a host dir holding a deep tree (GNU `rm` walks any depth).
struct RemoveDeep(PathBuf);

impl Drop for RemoveDeep {
    fn drop(&mut self) {
        quiet(&format!("rm -rf '{}'", self.0.display()));
    }
}

/// The memory a walk of any depth may use: generous, but far below what one
/// path per level kept at once would take (12,000 levels: 12,000 paths of up to
/// 24 KB, 144 MB for each copy kept).
const WALK_RSS_KIB: u64 = 64 * 1024;

/// `diff` and `commit` list each of the 12,000 directories with its full path
/// (the paths themselves are 144 MB): their cap leaves room for a few copies.
const CHANGES_RSS_KIB: u64 = 1536 * 1024;

#[test]
fn a_12000_deep_tree_is_walked_by_every_command_with_64_fds() {
    let test = "a_12000_deep_tree_is_walked_by_every_command_with_64_fds";
    if !needs_root(test) || !needs_tool(test, "python3") || !needs_tool(test, "time") {
        return;
    }
    const DEPTH: usize = 12_000;
    let store = TestStore::new("walks-deep");
    let host = var_tmp_dir("walks-deep");
    let h = host.path().to_owned();
    let _rm = RemoveDeep(h.clone());
    let scratch = common::temp_dir("walks-deep-out");
    store.create("deep");
    store
        .fvm(&["run", "deep", "--", "python3", "-c", &deep_tree(&h, DEPTH)])
        .ok();
    let top = h.join("top");
    let bottom = format!("{}/f", "/d".repeat(DEPTH));

    let mut rss = Vec::new();
    let mut check = |args: &[&str], cap: u64| -> Limited {
        let l = limited(&store, scratch.path(), 64, args);
        assert_eq!(
            l.out.code,
            0,
            "`fvm {}` with 64 fds on a {DEPTH}-deep tree:\n{}",
            args.join(" "),
            l.out
        );
        assert!(
            l.max_rss_kib > 0 && l.max_rss_kib < cap,
            "`fvm {}` used {} KiB (cap {cap} KiB)",
            args.join(" "),
            l.max_rss_kib
        );
        rss.push(format!("{}: {} KiB", args.join(" "), l.max_rss_kib));
        l
    };
    check(&["list"], WALK_RSS_KIB);
    check(&["stats", "deep"], WALK_RSS_KIB);
    let inspect = check(&["inspect", "deep"], WALK_RSS_KIB);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&inspect.stdout).unwrap()).unwrap();
    assert!(
        info["disk"].as_u64().unwrap() >= DEPTH as u64 * 4096,
        "the disk use counts every level: {info}"
    );
    let diff = check(&["diff", "deep"], CHANGES_RSS_KIB);
    let (lines, found) = lines_and_tail(&diff.stdout, &bottom);
    assert!(found, "the diff lists the file at the bottom");
    assert!(lines > DEPTH, "the diff lists every level: {lines} lines");
    let dry = check(&["commit", "--dry-run", "deep", s(&top)], CHANGES_RSS_KIB);
    let (_, found) = lines_and_tail(&dry.stdout, &bottom);
    assert!(found, "the dry run names the file at the bottom");
    assert!(!top.exists(), "a dry run writes nothing");
    check(&["copy", "deep", "deep-copy"], WALK_RSS_KIB);
    check(&["commit", "deep", s(&top)], CHANGES_RSS_KIB);
    assert_eq!(host_depth(&top), (DEPTH, "bottom".to_owned()));
    // The committed tree left the layer; the copy still has it all.
    let after = limited(&store, scratch.path(), 64, &["diff", "deep", s(&top)]);
    assert_eq!(after.out.code, 0, "{}", after.out);
    assert_eq!(lines_and_tail(&after.stdout, &bottom), (0, false));
    let copied = check(&["diff", "deep-copy"], CHANGES_RSS_KIB);
    assert!(lines_and_tail(&copied.stdout, &bottom).1, "the copy has it");
    check(&["delete", "deep-copy"], WALK_RSS_KIB);
    check(&["delete", "deep"], WALK_RSS_KIB);
    println!("peak memory with a {DEPTH}-deep tree: {rss:#?}");
    // The layers are removed after `delete` returns, by a process of its own
    // (forked by `delete`, so under the same limit of 64 fds).
    // (A debug build removes two 12,000-deep trees in well over the usual wait.)
    let start = std::time::Instant::now();
    while !trash(&store).is_empty() && start.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(trash(&store).is_empty(), "{:?}", trash(&store));
    store.assert_clean();
}

#[test]
fn delete_of_a_1100_deep_tree_with_1024_fds_leaves_no_trash() {
    let test = "delete_of_a_1100_deep_tree_with_1024_fds_leaves_no_trash";
    if !needs_root(test) || !needs_tool(test, "python3") || !needs_tool(test, "time") {
        return;
    }
    let store = TestStore::new("walks-1100");
    let scratch = common::temp_dir("walks-1100-out");
    store.create("del");
    store
        .fvm(&[
            "run",
            "del",
            "--",
            "python3",
            "-c",
            &deep_tree(Path::new("/root"), 1_100),
        ])
        .ok();
    let out = limited(&store, scratch.path(), 1024, &["delete", "del"]);
    assert_eq!(out.out.code, 0, "{}", out.out);
    // (The layers are removed after `delete` returns, by a process of its own.)
    common::wait_until("the trash is removed", || trash(&store).is_empty());
    store.assert_clean();
}

#[test]
fn a_killed_delete_is_finished_by_the_next_command() {
    let test = "a_killed_delete_is_finished_by_the_next_command";
    if !needs_root(test) || !needs_tool(test, "python3") || !needs_tool(test, "strace") {
        return;
    }
    let store = TestStore::new("walks-kill");
    store.create("big");
    store
        .fvm(&[
            "run",
            "big",
            "--",
            "python3",
            "-c",
            "import os\nos.makedirs('/root/fvm-big')\nfor i in range(3000):\n    open(f'/root/fvm-big/{i}', 'w').write('x' * 4096)\n",
        ])
        .ok();
    // SIGKILL at the 1000th unlink: the VM's directory is in the trash by then
    // (it is renamed there first, and `delete` returns), and 2,000 of its files
    // are still in it. The unlinks are the layers' remover's, a detached child
    // of `delete` that `strace -f` follows: it is the one killed.
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=unlinkat",
        "-e",
        "inject=unlinkat:signal=SIGKILL:when=1000",
        FVM,
        "--root",
    ])
    .arg(&store.root)
    .args(["delete", "big"]);
    // A debug build commits a 12,000-deep tree in a few minutes, not in the
    // usual command timeout.
    let out = try_run(cmd, None, Duration::from_secs(900)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.code, 0, "the delete itself returns at once: {out}");
    let left = trash(&store);
    assert_eq!(left.len(), 1, "a killed delete leaves its trash: {left:?}");
    let kept = std::fs::read_dir(store.root.join("vms").join(&left[0]))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(kept > 0, "the trash still holds the vm's files");
    // Any command on the store finishes it: it hands the trash to a remover of
    // its own, which empties it a moment later.
    store.fvm(&["list"]).ok();
    common::wait_until("the next command's remover empties the trash", || {
        trash(&store).is_empty()
    });
    assert!(store.list().is_empty());
    store.assert_clean();
}

#[test]
fn diff_of_a_vm_renaming_directories_never_fails() {
    let test = "diff_of_a_vm_renaming_directories_never_fails";
    if !needs_root(test) || !needs_tool(test, "python3") {
        return;
    }
    let store = TestStore::new("walks-rename");
    store.create("mv");
    store.start("mv");
    // Two trees, each a few levels deep with files at every level, whose
    // directories trade places (and parents) as fast as the VM can rename them.
    let script = r#"
import os
os.makedirs('/root/fvm-mv', exist_ok=True)
os.chdir('/root/fvm-mv')
for t in ('a', 'b'):
    p = t
    for depth in range(6):
        os.makedirs(p, exist_ok=True)
        for i in range(20):
            open(f'{p}/f{i}', 'w').write('x')
        p += '/s'
open('ready', 'w').write('')
while True:
    os.rename('a', 'c'); os.rename('b', 'a'); os.rename('c', 'b')
    os.rename('a/s/s', 'b/s/s/s/s/t'); os.rename('b/s/s/s/s/t', 'a/s/s')
"#;
    store
        .sh(
            "mv",
            &format!(
                "setsid python3 -c '{}' </dev/null >/dev/null 2>&1 &",
                script.replace('\'', "'\\''")
            ),
        )
        .ok();
    common::wait_until("the renamer is ready", || {
        store
            .fvm(&["diff", "mv", "/root/fvm-mv/ready"])
            .stdout
            .contains("/root/fvm-mv/ready")
    });
    let mut failed = Vec::new();
    for _ in 0..40 {
        let out = store.fvm(&["diff", "mv"]);
        if out.code != 0 {
            failed.push(out.to_string());
        }
    }
    store.stop("mv");
    assert!(
        failed.is_empty(),
        "{} of 40 diffs of a vm renaming directories failed; the first:\n{}",
        failed.len(),
        failed[0]
    );
    // What it saw is a diff: the trees are there once it stops (under whichever
    // names the stop caught them: a, b or c).
    let out = store.fvm(&["diff", "mv", "/root/fvm-mv"]).ok();
    let trees = ["a", "b", "c"]
        .iter()
        .filter(|t| out.stdout.contains(&format!("/root/fvm-mv/{t}/s/f0")))
        .count();
    assert!(trees >= 1, "{out}");
    store.fvm(&["delete", "mv"]).ok();
    store.assert_clean();
}

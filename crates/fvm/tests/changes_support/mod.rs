//! Helpers for the `diff`/`commit` tests: a checksum walk that python3 runs the
//! same way on the host and inside a VM, `diff` output relative to a test's host
//! directory, where a VM's layer keeps a host path, and checks that a directory
//! (a "victim" the tests point planted symlinks at) was not touched.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Out, TestStore, run};

pub use crate::common::python;

/// Python source defining `walk(root, mode)`: one line per path under `root`
/// ("." first, then depth-first in name order) with its type and permissions,
/// owner, group, and
/// - regular files: size, sha256 of the content, link count, mtime;
/// - symlinks: size, target, mtime;
/// - directories: mtime;
/// - everything: its extended attributes, sorted (overlayfs's own left out).
///
/// `mode` "snap" adds ctime and inode numbers, so that any write to a path shows.
pub const WALK_LIB: &str = r#"
import hashlib, os, stat, sys

def _xattrs(p):
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        return "ERR%d" % e.errno
    out = []
    for n in sorted(names):
        if n.startswith("trusted.overlay."):
            continue
        try:
            v = os.getxattr(p, n, follow_symlinks=False).hex()
        except OSError as e:
            v = "ERR%d" % e.errno
        out.append(n + "=" + v)
    return ",".join(out)

def walk(root, mode="content"):
    lines = []
    def one(p, rel):
        st = os.lstat(p)
        m = st.st_mode
        f = [stat.filemode(m), "uid=%d" % st.st_uid, "gid=%d" % st.st_gid]
        if stat.S_ISREG(m):
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                while True:
                    b = fh.read(1 << 20)
                    if not b:
                        break
                    h.update(b)
            f += ["size=%d" % st.st_size, h.hexdigest(), "nlink=%d" % st.st_nlink]
        elif stat.S_ISLNK(m):
            f += ["size=%d" % st.st_size, "->" + repr(os.readlink(p))]
        f.append("x[" + _xattrs(p) + "]")
        f.append("mtime=%d" % st.st_mtime_ns)
        if mode == "snap":
            f += ["ctime=%d" % st.st_ctime_ns, "ino=%d" % st.st_ino]
        lines.append(repr(rel) + "\t" + " ".join(f))
        if stat.S_ISDIR(m):
            for n in sorted(os.listdir(p)):
                one(os.path.join(p, n), n if rel == "." else rel + "/" + n)
    one(root, ".")
    return "".join(l + "\n" for l in lines)
"#;

/// The walk as a script: `python3 -c WALK ROOT [MODE]`.
pub fn walk_script() -> String {
    format!(
        "{WALK_LIB}\nsys.stdout.write(walk(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else 'content'))\n"
    )
}

/// The walk of `root` on the host.
#[track_caller]
pub fn host_walk(root: &Path, mode: &str) -> String {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(walk_script()).arg(root).arg(mode);
    run(cmd, None).ok().stdout
}

/// The walk of `root` as VM `name` sees it.
#[track_caller]
pub fn vm_walk(store: &TestStore, name: &str, root: &Path, mode: &str) -> String {
    let script = walk_script();
    let root = root.to_str().expect("a UTF-8 test path");
    store
        .fvm(&["run", name, "--", python(), "-c", &script, root, mode])
        .ok()
        .stdout
}

/// A walk as a map from the (Python repr of the) relative path to the rest of
/// its line.
pub fn walk_map(walk: &str) -> BTreeMap<String, String> {
    walk.lines()
        .map(|l| {
            let (path, rest) = l.split_once('\t').unwrap_or((l, ""));
            (path.to_owned(), rest.to_owned())
        })
        .collect()
}

/// The lines only in `a` or only in `b`, for a failure message.
pub fn walk_difference(a: &str, b: &str) -> String {
    let (a, b) = (walk_map(a), walk_map(b));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = String::new();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => out.push_str(&format!(
                "{k}:\n   left:  {}\n   right: {}\n",
                x.map_or("(none)", String::as_str),
                y.map_or("(none)", String::as_str)
            )),
        }
    }
    out
}

/// Assert two walks are equal, showing only the differing paths.
#[track_caller]
pub fn assert_same_walk(left: &str, right: &str, what: &str) {
    assert!(
        left == right,
        "{what}: the walks differ (left vs right):\n{}",
        walk_difference(left, right)
    );
}

/// Run a python3 script in VM `name` (`python3 -c SCRIPT ARGS…`).
pub fn vm_python(store: &TestStore, name: &str, script: &str, args: &[&str]) -> Out {
    let mut argv = vec!["run", name, "--", python(), "-c", script];
    argv.extend_from_slice(args);
    store.fvm(&argv)
}

/// Run a python3 script on the host.
pub fn host_python(script: &str, args: &[&str]) -> Out {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script).args(args);
    run(cmd, None)
}

/// A path relative to `base` as the tests write it ("." for `base` itself); a path
/// outside `base` stays absolute.
pub fn rel(base: &Path, path: &Path) -> String {
    match path.strip_prefix(base) {
        Ok(r) if r.as_os_str().is_empty() => ".".to_owned(),
        Ok(r) => r.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

/// `fvm diff NAME PATHS…` (asserting success) as (letter, path relative to
/// `base`), in the order printed.
#[track_caller]
pub fn diff_rel(
    store: &TestStore,
    name: &str,
    base: &Path,
    paths: &[&Path],
) -> Vec<(char, String)> {
    let mut args = vec!["diff".to_owned(), name.to_owned()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = store.fvm(&args).ok();
    parse_diff(&out, base)
}

#[track_caller]
pub fn parse_diff(out: &Out, base: &Path) -> Vec<(char, String)> {
    out.stdout
        .lines()
        .map(|l| {
            let (k, p) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("not a diff line: {l:?}\n{out}"));
            let mut k = k.chars();
            let letter = k.next().expect("a letter");
            assert!(
                k.next().is_none() && "ACD".contains(letter),
                "not a diff line: {l:?}\n{out}"
            );
            (letter, rel(base, Path::new(p)))
        })
        .collect()
}

/// Turn `[('A', "x"), …]` literals into owned pairs.
pub fn owned(v: &[(char, &str)]) -> Vec<(char, String)> {
    v.iter().map(|(k, p)| (*k, (*p).to_owned())).collect()
}

/// Sort (letter, relative path) pairs the way `diff` does: by the full path's
/// bytes ("." , i.e. the base, first).
pub fn sorted_like_diff(mut v: Vec<(char, String)>) -> Vec<(char, String)> {
    v.sort_by(|a, b| {
        let key = |p: &str| {
            if p == "." {
                String::new()
            } else {
                format!("/{p}")
            }
        };
        key(&a.1).as_bytes().cmp(key(&b.1).as_bytes())
    });
    v
}

/// Where VM `name`'s layer of the root filesystem keeps host path `host`.
pub fn upper(store: &TestStore, name: &str, host: &Path) -> PathBuf {
    let rel = host.strip_prefix("/").expect("an absolute path");
    store
        .root
        .join("vms")
        .join(name)
        .join("layers/-/upper")
        .join(rel)
}

/// The commit journal of VM `name`.
pub fn journal(store: &TestStore, name: &str) -> PathBuf {
    store.root.join("vms").join(name).join("commit.journal")
}

/// The key of a relative path in a [`walk_map`] (for plain names).
pub fn key(rel: &str) -> String {
    format!("'{rel}'")
}

/// Every path under `dir` (relative), not following symlinks; empty if `dir` is
/// not there.
pub fn entries(dir: &Path) -> Vec<String> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(rel(root, &p));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                go(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

/// Commit temp files (`.fvm-commit-*`) anywhere under `dir`.
pub fn commit_temps(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".fvm-commit-"))
        })
        .collect()
}

/// A directory outside everything a commit may write to, with a secret and a
/// sentinel; `assert_untouched` checks nothing in it was read-modified, written,
/// created or deleted (ctimes and inode numbers included).
#[derive(Debug)]
pub struct Victim {
    pub dir: tempfile::TempDir,
    before: String,
}

pub const SECRET: &str = "the victim's secret\n";

impl Victim {
    #[track_caller]
    pub fn new(tag: &str) -> Victim {
        let dir = crate::common::temp_dir(tag);
        let p = dir.path();
        std::fs::write(p.join("secret"), SECRET).unwrap();
        std::fs::write(p.join("sentinel"), "sentinel\n").unwrap();
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::write(p.join("sub/f"), SECRET).unwrap();
        let before = host_walk(p, "snap");
        Victim { dir, before }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Add a file the victim should keep (before anything points at it).
    #[track_caller]
    pub fn add(&mut self, name: &str, content: &str) {
        std::fs::write(self.path().join(name), content).unwrap();
        // The directory's own times moved: take the state again.
        self.before = host_walk(self.path(), "snap");
    }

    #[track_caller]
    pub fn assert_untouched(&self, when: &str) {
        let now = host_walk(self.path(), "snap");
        assert!(
            now == self.before,
            "{when}: the victim directory {} was changed:\n{}",
            self.path().display(),
            walk_difference(&self.before, &now)
        );
    }
}

/// Every regular file under `dir` whose content contains `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|r| {
            let p = dir.join(r);
            std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file())
                && std::fs::read(&p)
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle.trim_end()))
        })
        .collect()
}

/// Poll `cond` every millisecond until it is true or `deadline` passed; whether
/// it came true.
pub fn poll(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The dry-run plan: (verb, path, hard-link source) per line.
#[track_caller]
pub fn parse_plan(out: &Out) -> Vec<(String, PathBuf, Option<PathBuf>)> {
    const VERBS: [&str; 6] = [
        "update dir",
        "create dir",
        "replace",
        "create",
        "delete",
        "link",
    ];
    out.stdout
        .lines()
        .map(|l| {
            let verb = VERBS
                .iter()
                .find(|v| l.starts_with(**v) && l[v.len()..].starts_with(' '))
                .unwrap_or_else(|| panic!("not a plan line: {l:?}\n{out}"));
            let rest = l[verb.len()..].trim_start();
            let (path, of) = match rest.split_once(" (hard link to ") {
                Some((p, of)) => (
                    p,
                    Some(PathBuf::from(
                        of.strip_suffix(')')
                            .unwrap_or_else(|| panic!("bad link line {l:?}")),
                    )),
                ),
                None => (rest, None),
            };
            ((*verb).to_owned(), PathBuf::from(path), of)
        })
        .collect()
}

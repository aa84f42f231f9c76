//! A property of `fvm commit`: whatever a VM does to a directory tree, committing
//! the tree makes the host's copy what the VM saw, and leaves no change behind.
//!
//! Each case starts from a random host tree and applies a random sequence of
//! operations inside the VM (create, write, truncate, rename, unlink, mkdir,
//! rmdir, symlink, hard link, chmod, chown, setxattr, removexattr) through one
//! generated python3 script, which ends with the checksum walk of the VM's view.
//! The commit of the tree must make the host's walk equal to it.
//!
//! Reproducible: the seed is printed (and named in every failure); set
//! `FVM_PROPTEST_SEED` to rerun it, `FVM_PROPTEST_CASES` for more cases (50 by
//! default), `FVM_PROPTEST_VERBOSE=1` to see each case's operations and diff.
//! Case `i` runs with seed `SEED + i`, so one failing case reruns alone
//! with `FVM_PROPTEST_SEED=<its seed> FVM_PROPTEST_CASES=1`.

mod changes_support;
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use changes_support::{
    WALK_LIB, commit_temps, diff_rel, host_python, host_walk, vm_python, vm_walk, walk_difference,
};
use common::{TestStore, needs_root, temp_dir};

/// xorshift64*: small, fast, and the same everywhere.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero; mix the seed so that seeds 1, 2, 3 start far apart.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    /// An index chosen by weight.
    fn weighted(&mut self, weights: &[usize]) -> usize {
        let mut r = self.below(weights.iter().sum());
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        unreachable!("r is below the sum")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File,
    /// `vm`: made in the VM (only those can be renamed: overlayfs without
    /// redirect_dir refuses to rename the host's directories).
    Dir {
        vm: bool,
    },
    Link,
}

/// What the generator believes is in the tree (paths relative to its root). An
/// operation that fails in reality (it is allowed to) makes it wrong, which only
/// makes later operations fail more often.
#[derive(Debug, Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
    counter: usize,
    /// Paths removed so far: reused now and then, so that a name changes type
    /// (file to directory and back) and directories get replaced wholesale.
    graveyard: Vec<String>,
}

/// Names with a space, a dot, non-ASCII: paths are bytes to fvm.
const NAMES: [&str; 8] = [
    "a",
    "b",
    "dir",
    "x.txt",
    "sp ace",
    "ü",
    "-dash",
    "long_name",
];

impl Model {
    fn dirs(&self) -> Vec<String> {
        let mut v = vec![String::new()];
        v.extend(
            self.nodes
                .iter()
                .filter(|(_, n)| matches!(n, Node::Dir { .. }))
                .map(|(p, _)| p.clone()),
        );
        v
    }

    fn of(&self, f: impl Fn(&Node) -> bool) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| f(n))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.nodes
            .keys()
            .filter(|p| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
            .cloned()
            .collect()
    }

    /// A name not in the model, in a random existing directory; now and then one
    /// that existed before.
    fn fresh(&mut self, rng: &mut Rng) -> String {
        if rng.chance(35) {
            let reusable: Vec<usize> = (0..self.graveyard.len())
                .filter(|&i| {
                    let p = &self.graveyard[i];
                    !self.nodes.contains_key(p)
                        && p.rsplit_once('/').is_none_or(|(dir, _)| {
                            matches!(self.nodes.get(dir), Some(Node::Dir { .. }))
                        })
                })
                .collect();
            if !reusable.is_empty() {
                let i = *rng.pick(&reusable);
                return self.graveyard.swap_remove(i);
            }
        }
        let dirs = self.dirs();
        let dir = rng.pick(&dirs).clone();
        self.counter += 1;
        let name = format!("{}{}", rng.pick(&NAMES), self.counter);
        if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        }
    }

    fn remove_tree(&mut self, p: &str) {
        self.graveyard.push(p.to_owned());
        let prefix = format!("{p}/");
        self.nodes.retain(|k, _| k != p && !k.starts_with(&prefix));
    }
}

/// A python string literal (repr-like, without relying on python's repr rules).
fn lit(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

const MODES_FILE: [u32; 6] = [0o600, 0o644, 0o640, 0o755, 0o400, 0o4755];
const MODES_DIR: [u32; 4] = [0o755, 0o700, 0o750, 0o1777];
const XATTRS: [&str; 3] = ["user.a", "user.b", "user.fvm.c"];

/// Data of `n` bytes from `seed`, the same in the generator and in python.
const PRELUDE: &str = r#"
import os, sys
def data(s, n):
    return bytes((s * 131 + i * 7 + (i >> 8)) % 251 for i in range(n))
def create(p, s, n):
    with open(p, "xb") as f:
        f.write(data(s, n))
def sparse(p, s, off):
    with open(p, "xb") as f:
        f.write(data(s, 100))
        f.seek(off)
        f.write(data(s + 1, 100))
def write(p, off, s, n):
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(data(s, n))
def append(p, s, n):
    with open(p, "ab") as f:
        f.write(data(s, n))
fails = []
def op(i, f):
    try:
        f()
    except OSError as e:
        fails.append("%d:%s" % (i, os.strerror(e.errno)))
"#;

/// The host's starting tree: directories, files (some sparse), symlinks, modes,
/// owners and xattrs. Returns python statements (that must all succeed).
fn starting_tree(rng: &mut Rng, model: &mut Model) -> Vec<String> {
    let mut ops = Vec::new();
    let n = 8 + rng.below(15);
    for _ in 0..n {
        let p = model.fresh(rng);
        match rng.weighted(&[3, 6, 2]) {
            0 => {
                ops.push(format!("os.mkdir({})", lit(&p)));
                model.nodes.insert(p.clone(), Node::Dir { vm: false });
            }
            1 => {
                if rng.chance(10) {
                    ops.push(format!(
                        "sparse({}, {}, {})",
                        lit(&p),
                        rng.below(1000),
                        1 << (16 + rng.below(6))
                    ));
                } else {
                    let size = *rng.pick(&[0, 1, 100, 4096, 5000, 70_000]);
                    ops.push(format!("create({}, {}, {size})", lit(&p), rng.below(1000)));
                }
                model.nodes.insert(p.clone(), Node::File);
            }
            _ => {
                let target = link_target(rng, model);
                ops.push(format!("os.symlink({}, {})", lit(&target), lit(&p)));
                model.nodes.insert(p.clone(), Node::Link);
                continue;
            }
        }
        if rng.chance(30) {
            let modes: &[u32] = if model.nodes[&p] == Node::File {
                &MODES_FILE
            } else {
                &MODES_DIR
            };
            ops.push(format!("os.chmod({}, {:#o})", lit(&p), rng.pick(modes)));
        }
        if rng.chance(20) {
            ops.push(format!(
                "os.setxattr({}, {}, b\"host{}\")",
                lit(&p),
                lit(XATTRS[rng.below(XATTRS.len())]),
                rng.below(100)
            ));
        }
        if rng.chance(15) {
            ops.push(format!(
                "os.chown({}, {}, {})",
                lit(&p),
                rng.below(3000),
                rng.below(3000)
            ));
        }
    }
    ops
}

fn link_target(rng: &mut Rng, model: &Model) -> String {
    let existing: Vec<String> = model.nodes.keys().cloned().collect();
    match rng.below(4) {
        0 if !existing.is_empty() => rng.pick(&existing).rsplit('/').next().unwrap().to_owned(),
        1 => "../outside/of/the/tree".to_owned(),
        2 => "/nonexistent/fvm-target".to_owned(),
        _ => format!("dangling{}", rng.below(100)),
    }
}

/// The VM's operations, as python statements, and the model after them.
fn vm_ops(rng: &mut Rng, model: &mut Model, count: usize) -> Vec<String> {
    let mut ops = Vec::new();
    for _ in 0..count {
        let files = model.of(|n| *n == Node::File);
        let links = model.of(|n| *n == Node::Link);
        let dirs: Vec<String> = model.dirs().into_iter().filter(|d| !d.is_empty()).collect();
        let vm_dirs = model.of(|n| *n == Node::Dir { vm: true });
        let stmt = match rng.weighted(&[15, 12, 6, 10, 8, 8, 4, 6, 7, 7, 2, 4, 3]) {
            0 => {
                let p = model.fresh(rng);
                model.nodes.insert(p.clone(), Node::File);
                let size = *rng.pick(&[0, 10, 4096, 9000, 70_000]);
                format!("create({}, {}, {size})", lit(&p), rng.below(1000))
            }
            1 if !files.is_empty() => {
                let p = rng.pick(&files);
                if rng.chance(40) {
                    format!(
                        "append({}, {}, {})",
                        lit(p),
                        rng.below(1000),
                        rng.below(5000)
                    )
                } else {
                    format!(
                        "write({}, {}, {}, {})",
                        lit(p),
                        rng.below(9000),
                        rng.below(1000),
                        1 + rng.below(3000)
                    )
                }
            }
            2 if !files.is_empty() => {
                let p = rng.pick(&files);
                format!(
                    "os.truncate({}, {})",
                    lit(p),
                    rng.pick(&[0, 1, 100, 5000, 1 << 20])
                )
            }
            3 if !files.is_empty() || !links.is_empty() || !vm_dirs.is_empty() => {
                let mut movable = files.clone();
                movable.extend(links.iter().cloned());
                movable.extend(vm_dirs.iter().cloned());
                let src = rng.pick(&movable).clone();
                let is_dir = vm_dirs.contains(&src);
                let dst = if !is_dir && rng.chance(30) && files.len() > 1 {
                    // Over an existing file.
                    rng.pick(&files).clone()
                } else {
                    model.fresh(rng)
                };
                if dst == src || dst.starts_with(&format!("{src}/")) {
                    continue;
                }
                let moved: Vec<(String, Node)> = model
                    .nodes
                    .iter()
                    .filter(|(k, _)| **k == src || k.starts_with(&format!("{src}/")))
                    .map(|(k, n)| (format!("{dst}{}", &k[src.len()..]), *n))
                    .collect();
                model.remove_tree(&src);
                model.nodes.remove(&dst);
                model.nodes.extend(moved);
                format!("os.rename({}, {})", lit(&src), lit(&dst))
            }
            4 if !files.is_empty() || !links.is_empty() => {
                let mut v = files.clone();
                v.extend(links.iter().cloned());
                let p = rng.pick(&v).clone();
                model.remove_tree(&p);
                format!("os.unlink({})", lit(&p))
            }
            5 => {
                let p = model.fresh(rng);
                model.nodes.insert(p.clone(), Node::Dir { vm: true });
                format!("os.mkdir({})", lit(&p))
            }
            6 if !dirs.is_empty() => {
                let empty: Vec<&String> = dirs
                    .iter()
                    .filter(|d| model.children(d).is_empty())
                    .collect();
                if empty.is_empty() {
                    // Make one empty, the hard way.
                    let d = rng.pick(&dirs).clone();
                    model.remove_tree(&d);
                    format!("__import__('shutil').rmtree({})", lit(&d))
                } else {
                    let d = (*rng.pick(&empty)).clone();
                    model.remove_tree(&d);
                    format!("os.rmdir({})", lit(&d))
                }
            }
            7 => {
                let target = link_target(rng, model);
                let p = model.fresh(rng);
                model.nodes.insert(p.clone(), Node::Link);
                format!("os.symlink({}, {})", lit(&target), lit(&p))
            }
            8 if !files.is_empty() || !dirs.is_empty() => {
                if !files.is_empty() && (dirs.is_empty() || rng.chance(60)) {
                    let p = rng.pick(&files);
                    format!("os.chmod({}, {:#o})", lit(p), rng.pick(&MODES_FILE))
                } else {
                    let p = rng.pick(&dirs);
                    format!("os.chmod({}, {:#o})", lit(p), rng.pick(&MODES_DIR))
                }
            }
            9 if !files.is_empty() || !dirs.is_empty() => {
                let mut v = files.clone();
                v.extend(dirs.iter().cloned());
                let p = rng.pick(&v);
                format!(
                    "os.setxattr({}, {}, b\"vm{}\")",
                    lit(p),
                    lit(XATTRS[rng.below(XATTRS.len())]),
                    rng.below(100)
                )
            }
            10 if !files.is_empty() || !dirs.is_empty() => {
                let mut v = files.clone();
                v.extend(dirs.iter().cloned());
                let p = rng.pick(&v);
                format!(
                    "os.removexattr({}, {})",
                    lit(p),
                    lit(XATTRS[rng.below(XATTRS.len())])
                )
            }
            11 if !files.is_empty() => {
                let src = rng.pick(&files).clone();
                let dst = model.fresh(rng);
                model.nodes.insert(dst.clone(), Node::File);
                format!("os.link({}, {})", lit(&src), lit(&dst))
            }
            12 if !model.nodes.is_empty() => {
                let all: Vec<String> = model.nodes.keys().cloned().collect();
                let p = rng.pick(&all);
                format!(
                    "os.chown({}, {}, {}, follow_symlinks=False)",
                    lit(p),
                    rng.below(3000),
                    rng.below(3000)
                )
            }
            _ => continue,
        };
        ops.push(stmt);
    }
    ops
}

/// The script: prelude, the operations (each allowed to fail), then the walk of
/// the tree as the script sees it.
fn script(ops: &[String], walk: bool) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str(WALK_LIB);
    s.push_str("\nroot = sys.argv[1]\nos.chdir(root)\n");
    for (i, o) in ops.iter().enumerate() {
        let _ = writeln!(s, "op({i}, lambda: {o})");
    }
    s.push_str("sys.stderr.write('failed: %s\\n' % ' '.join(fails))\n");
    if walk {
        s.push_str("sys.stdout.write(walk(root))\n");
    }
    s
}

/// A walk without the mtimes of directories.
fn without_dir_mtimes(walk: &str) -> String {
    walk.lines()
        .map(|l| match l.split_once('\t') {
            Some((p, rest)) if rest.starts_with('d') => format!(
                "{p}\t{}",
                rest.split(' ')
                    .filter(|f| !f.starts_with("mtime="))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            _ => l.to_owned(),
        })
        .map(|l| l + "\n")
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn a_commit_makes_the_host_what_the_vm_saw() {
    if !needs_root("a_commit_makes_the_host_what_the_vm_saw") {
        return;
    }
    let seed = env_u64("FVM_PROPTEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id())
    });
    let cases = env_u64("FVM_PROPTEST_CASES").unwrap_or(50);
    println!(
        "property test: FVM_PROPTEST_SEED={seed} FVM_PROPTEST_CASES={cases} \
         (case i runs with seed {seed} + i)"
    );
    let store = TestStore::new("prop");
    let dir = temp_dir("prop");
    store.create("pt");
    let mut failed_ops = 0;
    let mut all_ops = 0;
    for case in 0..cases {
        let case_seed = seed.wrapping_add(case);
        let what = format!("case {case} (FVM_PROPTEST_SEED={case_seed} FVM_PROPTEST_CASES=1)");
        let mut rng = Rng::new(case_seed);
        let root = dir.path().join(format!("case{case}"));
        std::fs::create_dir(&root).unwrap();
        let root_s = root.to_str().unwrap();
        let mut model = Model::default();

        let setup = starting_tree(&mut rng, &mut model);
        let out = host_python(&script(&setup, false), &[root_s]).ok();
        assert_eq!(
            out.stderr.trim(),
            "failed:",
            "{what}: the starting tree could not be made:\n{}\n{out}",
            script(&setup, false)
        );

        let count = 20 + rng.below(21);
        let ops = vm_ops(&mut rng, &mut model, count);
        let vm_script = script(&ops, true);
        let out = vm_python(&store, "pt", &vm_script, &[root_s]).ok();
        let vm_view = out.stdout.clone();
        // "failed: 3:No such file or directory 7:…" (operation numbers).
        let failed_list = out
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("failed:"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let failures = failed_list.matches(':').count();
        failed_ops += failures;
        all_ops += ops.len();

        let show = || {
            format!(
                "{what}\nstarting tree:\n{}\nvm operations:\n{}\nfailed (allowed): {failed_list}",
                setup.join("\n"),
                ops.iter()
                    .enumerate()
                    .map(|(i, o)| format!("{i}: {o}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
        if std::env::var_os("FVM_PROPTEST_VERBOSE").is_some() {
            let changes = store.fvm(&["diff", "pt", root_s]).ok();
            println!("{}\ndiff:\n{}", show(), changes.stdout);
        }
        // Now and then a selective commit of one changed path first: it leaves
        // no change at or under that path, and the VM's view as it was (but for
        // directory times: the layer's directories lose the committed entries).
        let mut vm_view = vm_view;
        if rng.chance(40) {
            let changed = diff_rel(&store, "pt", &root, &[&root]);
            let picks: Vec<&String> = changed
                .iter()
                .map(|(_, p)| p)
                .filter(|p| *p != ".")
                .collect();
            if !picks.is_empty() {
                let pick = (*rng.pick(&picks)).clone();
                if std::env::var_os("FVM_PROPTEST_VERBOSE").is_some() {
                    println!("selective commit of {pick}");
                }
                let path = root.join(&pick);
                let commit = store.fvm(&["commit", "pt", path.to_str().unwrap()]);
                assert_eq!(
                    commit.code,
                    0,
                    "{}\nselective commit of {pick} failed:\n{commit}",
                    show()
                );
                let left = diff_rel(&store, "pt", &root, &[&root]);
                assert!(
                    !left
                        .iter()
                        .any(|(_, p)| *p == pick || p.starts_with(&format!("{pick}/"))),
                    "{}\nchanges left at {pick} after committing it: {left:?}",
                    show()
                );
                let now = vm_walk(&store, "pt", &root, "content");
                assert!(
                    without_dir_mtimes(&now) == without_dir_mtimes(&vm_view),
                    "{}\nthe selective commit of {pick} changed the vm's view (before vs after):\n{}",
                    show(),
                    walk_difference(&without_dir_mtimes(&vm_view), &without_dir_mtimes(&now))
                );
                vm_view = now;
            }
        }
        let commit = store.fvm(&["commit", "pt", root_s]);
        assert_eq!(commit.code, 0, "{}\ncommit failed:\n{commit}", show());
        let host = host_walk(&root, "content");
        assert!(
            host == vm_view,
            "{}\nthe host after the commit differs from the vm's view (vm vs host):\n{}",
            show(),
            walk_difference(&vm_view, &host)
        );
        let left = diff_rel(&store, "pt", &root, &[&root]);
        assert!(
            left.is_empty(),
            "{}\nchanges left after the commit: {left:?}",
            show()
        );
        assert_eq!(commit_temps(&root), Vec::<String>::new(), "{}", show());
        let vm_after = vm_walk(&store, "pt", &root, "content");
        assert!(
            vm_after == host,
            "{}\nthe vm's view after the commit differs from the host (host vs vm):\n{}",
            show(),
            walk_difference(&host, &vm_after)
        );
    }
    println!("{cases} cases, {all_ops} vm operations, {failed_ops} of them failed (allowed)");
    store.assert_clean();
}

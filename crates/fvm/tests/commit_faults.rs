//! `fvm commit` under faults: a new directory of 100,000 files planned and
//! committed under a memory cap, commits SIGKILLed at random points of stopped and
//! running VMs, a full commit target, forged and unreadable journals, and what
//! `delete`, `--abort` and `doctor --cleanup` do with an unfinished commit.

mod changes_support;
mod common;

use std::path::Path;
use std::process::Command;

use changes_support::{commit_temps, journal, parse_plan, poll, vm_python};
use common::{COMMAND_TIMEOUT, TestStore, needs_root, needs_tool, run, temp_dir};

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// `fvm ARGS` on `store` with its address space capped at `bytes` (`prlimit`).
fn fvm_capped(store: &TestStore, bytes: u64, args: &[&str]) -> common::Out {
    let inner = store.command(args);
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={bytes}"))
        .arg(inner.get_program())
        .args(inner.get_args());
    cmd.env_remove("FVM_ROOT");
    run(cmd, None)
}

const MAKE_MANY: &str = r#"
import os, sys
d = os.path.join(sys.argv[1], "many")
os.mkdir(d)
for i in range(int(sys.argv[2])):
    open(os.path.join(d, "f%06d" % i), "w").close()
"#;

/// A directory of 100,000 new files is planned and committed in memory linear in
/// its size: both fit under a 1 GiB address space (a plan that added the whole
/// directory again for each of its files needed tens of GB for this).
#[test]
fn a_new_directory_of_100k_files_commits_under_a_memory_cap() {
    let test = "a_new_directory_of_100k_files_commits_under_a_memory_cap";
    if !needs_root(test) || !needs_tool(test, "prlimit") {
        return;
    }
    const N: usize = 100_000;
    const CAP: u64 = 1 << 30;
    let store = TestStore::new("many");
    let dir = temp_dir("many");
    let h = dir.path();
    store.create("many");
    vm_python(&store, "many", MAKE_MANY, &[s(h), &N.to_string()]).ok();
    let dry = fvm_capped(&store, CAP, &["commit", "many", s(h), "--dry-run"]).ok();
    let plan = parse_plan(&dry);
    // The directory and its files (H changed nothing of its own: not listed).
    assert_eq!(plan.len(), N + 1, "{}", &dry.stderr);
    fvm_capped(&store, CAP, &["commit", "many", s(h)]).ok();
    assert_eq!(std::fs::read_dir(h.join("many")).unwrap().count(), N);
    assert_eq!(commit_temps(h), Vec::<String>::new());
    assert!(!journal(&store, "many").exists());
    store.assert_clean();
}

/// Whether the kernel has VM `name`'s processes frozen (or freezing).
fn kernel_frozen(store: &TestStore, name: &str) -> bool {
    let dir = store.cgroup_dir(name, "freezer");
    match std::fs::read_to_string(dir.join("freezer.state")) {
        Ok(state) => state.trim() != "THAWED",
        // cgroup v2
        Err(_) => std::fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|t| t.trim() == "1"),
    }
}

const MAKE_FEW: &str = r#"
import os, sys
d = os.path.join(sys.argv[1], sys.argv[2])
os.makedirs(d)
for i in range(int(sys.argv[3])):
    with open(os.path.join(d, "f%05d" % i), "w") as f:
        f.write("%d\n" % i)
"#;

/// A commit of a running VM SIGKILLed while the VM is frozen for it: the next
/// command (`list` here, then `commit`) thaws the VM. A VM the user suspended
/// stays suspended through a commit, killed or not, until `resume`.
#[test]
fn a_commit_killed_while_the_vm_is_frozen_never_leaves_it_frozen() {
    let test = "a_commit_killed_while_the_vm_is_frozen_never_leaves_it_frozen";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("frozen");
    let dir = temp_dir("frozen");
    let h = dir.path();
    store.create("fz");
    store.start("fz");
    for round in 0..3 {
        let sub = format!("r{round}");
        vm_python(&store, "fz", MAKE_FEW, &[s(h), &sub, "3000"]).ok();
        let out = kill_commit(&store, "fz", h, || kernel_frozen(&store, "fz"));
        println!("round {round}: commit exit {}", out.code);
        assert_eq!(store.status("fz"), "running", "round {round}");
        assert!(!kernel_frozen(&store, "fz"), "round {round}: still frozen");
        // What was left is finished by the next commit.
        store.fvm(&["commit", "fz", s(h)]).ok();
        assert!(!kernel_frozen(&store, "fz"));
        assert_eq!(std::fs::read_dir(h.join(&sub)).unwrap().count(), 3000);
        assert_eq!(commit_temps(h), Vec::<String>::new());
    }
    // The user's suspend is theirs: a commit (even one killed) doesn't undo it.
    vm_python(&store, "fz", MAKE_FEW, &[s(h), "user", "3000"]).ok();
    store.fvm(&["suspend", "fz"]).ok();
    kill_commit(&store, "fz", h, || journal(&store, "fz").exists());
    assert_eq!(store.status("fz"), "suspended");
    store.fvm(&["commit", "fz", s(h)]).ok();
    assert_eq!(store.status("fz"), "suspended");
    assert!(kernel_frozen(&store, "fz"));
    store.fvm(&["resume", "fz"]).ok();
    assert_eq!(store.status("fz"), "running");
    store.assert_clean();
}

/// Host pids listed in `dir/cgroup.procs`.
fn procs(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// `run` racing `suspend`: a command either enters the VM completely before the
/// freeze (it is then in every cgroup of the VM, frozen with the rest) or is
/// refused; it is never frozen half-way in (in the freezer's cgroup but not the
/// pids one), which used to hang it until someone resumed the VM.
#[test]
fn run_racing_suspend_enters_completely_or_not_at_all() {
    let test = "run_racing_suspend_enters_completely_or_not_at_all";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("race");
    store.create("race");
    store.start("race");
    let freezer = store.cgroup_dir("race", "freezer");
    let pids = store.cgroup_dir("race", "pids");
    let (mut entered, mut refused) = (0, 0);
    for round in 0..40 {
        let run = store.background(&["run", "race", "--", "true"]);
        store.fvm(&["suspend", "race"]).ok();
        let (in_freezer, in_pids) = (procs(&freezer), procs(&pids));
        store.fvm(&["resume", "race"]).ok();
        let out = run.finish();
        assert!(
            in_freezer == in_pids,
            "round {round}: frozen half-way in: freezer cgroup {in_freezer:?}, pids cgroup {in_pids:?}"
        );
        match out.code {
            0 => entered += 1,
            _ if out.stderr.contains("is suspended") => refused += 1,
            _ => panic!("round {round}: run failed:\n{out}"),
        }
    }
    println!("{entered} entered, {refused} refused");
    store.assert_clean();
}

/// The VM's layer directory of the host's root mount, as the store names it.
fn root_layer(store: &TestStore, name: &str) -> std::path::PathBuf {
    store.root.join("vms").join(name).join("layers/-")
}

/// A journal that names a decoy directory as the VM's mount point, or a host
/// file its layer never deleted, is refused: nothing is deleted outside what
/// the VM changed, `--abort` drops it without touching the host, and commits
/// work again.
#[test]
fn a_forged_journal_is_refused_and_abort_drops_it() {
    let test = "a_forged_journal_is_refused_and_abort_drops_it";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("forged");
    let dir = temp_dir("forged");
    let h = dir.path();
    let victim = changes_support::Victim::new("forged-victim");
    store.create("fj");
    vm_python(&store, "fj", MAKE_FEW, &[s(h), "new", "3"]).ok();
    let j = journal(&store, "fj");
    let layer = root_layer(&store, "fj");
    let secret_rel = victim
        .path()
        .join("secret")
        .strip_prefix("/")
        .unwrap()
        .to_owned();
    let forged = [
        // A decoy directory as the layer's mount point.
        serde_json::json!({
            "id": "0000abcd", "phase": "rename", "running": false,
            "layers": [{"mount_point": victim.path(), "dir": layer}],
            "steps": [{"layer": 0, "rel": "secret", "path": victim.path().join("secret"),
                       "action": "remove", "in_layer": true, "host_had": true}],
        }),
        // The VM's real layer, but a deletion its layer doesn't have.
        serde_json::json!({
            "id": "0000abcd", "phase": "rename", "running": false,
            "layers": [{"mount_point": "/", "dir": layer}],
            "steps": [{"layer": 0, "rel": secret_rel, "path": victim.path().join("secret"),
                       "action": "remove", "in_layer": true, "host_had": true}],
        }),
        // A way out of the mount point.
        serde_json::json!({
            "id": "0000abcd", "phase": "rename", "running": false,
            "layers": [{"mount_point": "/", "dir": layer}],
            "steps": [{"layer": 0, "rel": "tmp/../etc/fvm-test-nothing", "path": "/tmp/../etc/fvm-test-nothing",
                       "action": "remove", "in_layer": true, "host_had": true}],
        }),
    ];
    for (n, f) in forged.iter().enumerate() {
        std::fs::write(&j, serde_json::to_vec(f).unwrap()).unwrap();
        let out = store.fvm(&["commit", "fj", s(h)]);
        assert_ne!(out.code, 0, "forged journal {n} was used:\n{out}");
        assert!(out.stderr.contains("--abort"), "forged journal {n}:\n{out}");
        victim.assert_untouched(&format!("forged journal {n}"));
        let out = store.fvm(&["commit", "--abort", "fj"]).ok();
        assert!(
            out.stdout.contains("nothing on the host was touched"),
            "{out}"
        );
        assert!(!j.exists());
        victim.assert_untouched(&format!("abort of forged journal {n}"));
    }
    // An unreadable journal: refused by commit, dropped by --abort.
    std::fs::write(&j, b"{\"id\": \"0000ab").unwrap();
    let out = store.fvm(&["commit", "fj", s(h)]);
    assert!(out.code != 0 && out.stderr.contains("--abort"), "{out}");
    store.fvm(&["commit", "--abort", "fj"]).ok();
    assert!(!j.exists());
    store.fvm(&["commit", "fj", s(h)]).ok();
    assert_eq!(std::fs::read_dir(h.join("new")).unwrap().count(), 3);
    victim.assert_untouched("at the end");
    store.assert_clean();
}

/// A commit whose target filesystem fills up takes itself back: the error says
/// nothing was committed and its temps are gone, and the filesystem has exactly
/// what it had, with its space free again.
#[test]
fn a_commit_to_a_full_filesystem_leaves_nothing_behind() {
    let test = "a_commit_to_a_full_filesystem_leaves_nothing_behind";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("full");
    let mnt = common::TmpfsMount::with_size("full", "1m");
    let m = &mnt.path;
    std::fs::write(m.join("keep"), "host\n").unwrap();
    let before = changes_support::entries(m);
    store.create("full");
    let script = r#"
import os, sys
d = os.path.join(sys.argv[1], "new")
os.mkdir(d)
for n in "abc":
    with open(os.path.join(d, n), "wb") as f:
        f.write(os.urandom(400 * 1024))
"#;
    vm_python(&store, "full", script, &[s(m)]).ok();
    let out = store.fvm(&["commit", "full", s(m)]);
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains("nothing was committed")
            && out
                .stderr
                .contains("temp files and new directories were removed"),
        "{out}"
    );
    assert_eq!(commit_temps(m), Vec::<String>::new());
    assert_eq!(changes_support::entries(m), before);
    assert_eq!(std::fs::read_to_string(m.join("keep")).unwrap(), "host\n");
    assert!(!journal(&store, "full").exists());
    let out = store.fvm(&["commit", "--abort", "full"]).ok();
    assert!(out.stdout.contains("no interrupted commit"), "{out}");
    store.assert_clean();
}

/// A commit of a tree whose paths are longer than PATH_MAX lands whole (every
/// host directory is reached one component at a time), with nothing of the
/// commit's own left behind. (A commit that fails while writing takes back the
/// directories it made: the full-filesystem test above.)
#[test]
fn a_commit_of_paths_longer_than_path_max_lands_whole() {
    let test = "a_commit_of_paths_longer_than_path_max_lands_whole";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("long");
    let dir = temp_dir("long");
    let h = dir.path();
    store.create("long");
    let script = r#"
import os, sys
os.chdir(sys.argv[1])
os.mkdir("long")
os.chdir("long")
for i in range(25):
    n = ("%02d" % i) * 100
    os.mkdir(n)
    os.chdir(n)
with open("f", "w") as f:
    f.write("deep\n")
"#;
    vm_python(&store, "long", script, &[s(h)]).ok();
    store.fvm(&["commit", "long", s(h)]).ok();
    // `find` walks by directory fd too: the deep file is there, with its content.
    let mut find = std::process::Command::new("find");
    find.arg(h.join("long"))
        .args(["-name", "f", "-execdir", "cat", "{}", ";"]);
    let out = common::run(find, None);
    assert_eq!(out.stdout, "deep\n", "{out}");
    assert_eq!(commit_temps(h), Vec::<String>::new());
    assert!(!journal(&store, "long").exists());
    store.assert_clean();
}

const MAKE_DIRS: &str = r#"
import os, sys
h, top, dirs, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for d in range(dirs):
    p = os.path.join(h, top, "d%02d" % d)
    os.makedirs(p)
    for i in range(per):
        with open(os.path.join(p, "f%04d" % i), "w") as f:
            f.write("%d/%d\n" % (d, i))
"#;

/// Start `fvm commit NAME H` and SIGKILL it (by pid) once `until` holds, unless
/// it ended first; how it ended.
fn kill_commit(
    store: &TestStore,
    name: &str,
    h: &Path,
    mut until: impl FnMut() -> bool,
) -> common::Out {
    let mut bg = store.background(&["commit", name, s(h)]);
    poll(COMMAND_TIMEOUT, || bg.finished() || until());
    if !bg.finished() {
        common::kill9(&[bg.pid()]);
    }
    bg.finish()
}

/// `--abort` of a commit killed while renaming: the next commit sees no
/// conflict in what fvm itself wrote, and commits the rest.
#[test]
fn after_abort_of_a_commit_killed_while_renaming_fvm_writes_are_no_conflicts() {
    let test = "after_abort_of_a_commit_killed_while_renaming_fvm_writes_are_no_conflicts";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("abort");
    let dir = temp_dir("abort");
    let h = dir.path();
    store.create("ab");
    vm_python(&store, "ab", MAKE_DIRS, &[s(h), "big", "6", "400"]).ok();
    let out = kill_commit(&store, "ab", h, || h.join("big/d00/f0000").exists());
    assert_eq!(out.code, 128 + 9, "the commit was not interrupted:\n{out}");
    assert!(journal(&store, "ab").exists());
    store.fvm(&["commit", "--abort", "ab"]).ok();
    assert_eq!(commit_temps(h), Vec::<String>::new());
    let out = store.fvm(&["commit", "ab", s(h)]);
    assert_eq!(out.code, 0, "fvm's own writes taken for conflicts:\n{out}");
    for d in 0..6 {
        assert_eq!(
            std::fs::read_dir(h.join(format!("big/d{d:02}")))
                .unwrap()
                .count(),
            400
        );
    }
    let diff = store.fvm(&["diff", "ab", s(h)]).ok();
    assert_eq!(diff.out(), "", "changes left after the commit");
    store.assert_clean();
}

/// `delete` of a stopped VM with an unfinished commit, and `doctor --cleanup`
/// of a running one, leave no temp file and no new directory of it on the host.
#[test]
fn delete_and_doctor_leave_no_temps_of_an_unfinished_commit() {
    let test = "delete_and_doctor_leave_no_temps_of_an_unfinished_commit";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("orphan");
    for how in ["delete", "doctor"] {
        let dir = temp_dir("orphan");
        let h = dir.path();
        store.create(how);
        vm_python(&store, how, MAKE_DIRS, &[s(h), "big", "4", "400"]).ok();
        if how == "doctor" {
            // Its unfinished commit is found while the VM runs.
            store.start(how);
        }
        // Killed while writing temps: the host has none of the commit yet.
        let out = kill_commit(&store, how, h, || !commit_temps(h).is_empty());
        assert_eq!(
            out.code,
            128 + 9,
            "{how}: the commit was not interrupted:\n{out}"
        );
        if how == "delete" {
            store.fvm(&["delete", how]).ok();
        } else {
            let out = store.fvm(&["doctor", "--cleanup"]).ok();
            assert!(out.stdout.contains("interrupted commit"), "{out}");
            assert!(!journal(&store, how).exists());
        }
        assert_eq!(commit_temps(h), Vec::<String>::new(), "{how}");
        assert_eq!(changes_support::entries(h), Vec::<String>::new(), "{how}");
    }
    store.assert_clean();
}

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the VM writes to `rROUND/fI` (a few KiB, so a partial file shows).
fn round_content(round: usize, i: usize) -> String {
    format!("{round}:{i};").repeat(100 + i % 50)
}

const MAKE_ROUND: &str = r#"
import os, sys
h, r, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = os.path.join(h, "r%02d" % r)
os.mkdir(d)
for i in range(n):
    with open(os.path.join(d, "f%04d" % i), "w") as f:
        f.write(("%d:%d;" % (r, i)) * (100 + i % 50))
with open(os.path.join(h, "existing"), "w") as f:
    f.write("round %d\n" % r)
"#;

/// Every host path under `h` is what the VM wrote in some round (or the host's
/// original), never partial; with `settled`, no temp file is left and rounds up
/// to `upto` are all there.
#[track_caller]
fn check_host(h: &Path, upto: usize, per: usize, settled: bool, when: &str) {
    let mut count = vec![0usize; upto + 1];
    for rel in changes_support::entries(h) {
        let p = h.join(&rel);
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".fvm-commit-") {
            assert!(!settled, "{when}: temp file {rel} left on the host");
            continue;
        }
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["existing"] => {
                let got = std::fs::read_to_string(&p).unwrap();
                let ok = got == "old\n"
                    || got
                        .strip_prefix("round ")
                        .and_then(|r| r.strip_suffix('\n'))
                        .is_some_and(|r| r.parse::<usize>().is_ok_and(|r| r <= upto));
                assert!(ok, "{when}: existing is {got:?}");
                if settled {
                    assert_eq!(got, format!("round {upto}\n"), "{when}");
                }
            }
            [_] => assert!(p.is_dir(), "{when}: {rel} is not a directory"),
            [d, f] => {
                let r: usize = d.strip_prefix('r').unwrap().parse().unwrap();
                let i: usize = f.strip_prefix('f').unwrap().parse().unwrap();
                let got = std::fs::read_to_string(&p).unwrap();
                assert!(
                    got == round_content(r, i),
                    "{when}: {rel} is partial or wrong ({} bytes)",
                    got.len()
                );
                count[r] += 1;
            }
            _ => panic!("{when}: unexpected host path {rel}"),
        }
    }
    if settled {
        assert!(
            count.iter().all(|&c| c == per),
            "{when}: files missing: {count:?}"
        );
    }
}

/// SIGKILL `fvm commit` of a stopped or running VM at a random moment, round
/// after round, then run one ordinary command (commit, `commit --abort`,
/// `doctor --cleanup` or `list`) and check: the VM isn't frozen and no record
/// of fvm's freeze is left, no host file is half-written, and after a commit,
/// an abort or a cleanup no temp file or journal is left; then a commit brings
/// the host up to date. The seed is printed; `FVM_FAULT_SEED=N` replays a run.
#[test]
fn sigkilled_commits_at_random_points_leave_nothing_behind() {
    let test = "sigkilled_commits_at_random_points_leave_nothing_behind";
    if !needs_root(test) {
        return;
    }
    const ROUNDS: usize = 12;
    const PER: usize = 400;
    let seed = std::env::var("FVM_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 | 1
        });
    println!("seed {seed} (FVM_FAULT_SEED={seed} replays this run)");
    let mut rng = Rng(seed);
    let store = TestStore::new("faults");
    let dir = temp_dir("faults");
    let h = dir.path();
    std::fs::write(h.join("existing"), "old\n").unwrap();
    store.create("fk");
    let owner = store.root.join("vms/fk/freeze-owner");
    let mut running = false;
    for round in 0..ROUNDS {
        let run_it = rng.below(2) == 1;
        if run_it != running {
            store
                .fvm(&[if run_it { "start" } else { "stop" }, "fk"])
                .ok();
            running = run_it;
        }
        vm_python(
            &store,
            "fk",
            MAKE_ROUND,
            &[s(h), &round.to_string(), &PER.to_string()],
        )
        .ok();
        let delay = std::time::Duration::from_millis(rng.below(600));
        let next = ["commit", "abort", "doctor", "list"][rng.below(4) as usize];
        let when = format!(
            "seed {seed} round {round} (running {running}, kill after {delay:?}, then {next})"
        );
        let start = std::time::Instant::now();
        let out = kill_commit(&store, "fk", h, || start.elapsed() >= delay);
        println!("{when}: commit exit {}", out.code);
        assert!(out.code == 0 || out.code == 128 + 9, "{when}:\n{out}");
        let settles = match next {
            "commit" => {
                store.fvm(&["commit", "fk", s(h)]).ok();
                true
            }
            "abort" => {
                store.fvm(&["commit", "--abort", "fk"]).ok();
                true
            }
            "doctor" => {
                store.fvm(&["doctor", "--cleanup"]).ok();
                true
            }
            _ => {
                store.list();
                false
            }
        };
        let status = store.status("fk");
        assert_eq!(
            status,
            if running { "running" } else { "stopped" },
            "{when}"
        );
        if running {
            assert!(!kernel_frozen(&store, "fk"), "{when}: the vm is frozen");
        }
        assert!(!owner.exists(), "{when}: fvm's freeze record is left");
        check_host(h, round, PER, false, &when);
        if settles {
            let temps = commit_temps(h);
            assert!(
                temps.is_empty(),
                "{when}: {} temp files left, as {:?}",
                temps.len(),
                &temps[..temps.len().min(3)]
            );
            assert!(!journal(&store, "fk").exists(), "{when}: journal left");
        }
        // Whatever happened, the next commit brings the host up to date.
        let out = store.fvm(&["commit", "fk", s(h)]);
        assert_eq!(out.code, 0, "{when}: the commit after:\n{out}");
        check_host(h, round, PER, true, &format!("{when}, after a commit"));
        assert!(!journal(&store, "fk").exists(), "{when}");
    }
    store.assert_clean();
}

/// A commit of a stopped VM killed half-way, finished by the next commit once
/// the VM runs: the running VM's layer is left alone (entries unlinked under a
/// live overlay would lose what the VM writes to them next), and its writes
/// after the commit are still there.
#[test]
fn a_commit_begun_stopped_and_finished_running_leaves_the_layer_alone() {
    let test = "a_commit_begun_stopped_and_finished_running_leaves_the_layer_alone";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("resumerun");
    let dir = temp_dir("resumerun");
    let h = dir.path();
    store.create("rr");
    vm_python(&store, "rr", MAKE_DIRS, &[s(h), "big", "4", "400"]).ok();
    let out = kill_commit(&store, "rr", h, || h.join("big/d00/f0000").exists());
    assert_eq!(out.code, 128 + 9, "the commit was not interrupted:\n{out}");
    store.start("rr");
    // A process of the VM holds a committed file open across the commit.
    let mut holder = store.spawn(&[
        "run",
        "rr",
        "--",
        "sh",
        "-c",
        &format!("exec 3>>{}/big/d01/f0001; sleep 3; echo later >&3", s(h)),
    ]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = store.fvm(&["commit", "rr", s(h)]).ok();
    assert!(
        out.stderr.contains("finished an interrupted commit"),
        "{out}"
    );
    let layer = changes_support::upper(&store, "rr", h);
    assert!(
        layer.join("big/d01/f0001").exists(),
        "the running vm's layer lost a committed entry"
    );
    assert_eq!(holder.wait(), 0);
    let seen = store.sh("rr", &format!("cat {}/big/d01/f0001", s(h))).ok();
    assert_eq!(seen.stdout, "1/1\nlater\n");
    store.assert_clean();
}

/// The phase an unfinished commit's journal says it reached, if there is one.
fn journal_phase(store: &TestStore, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(journal(store, name)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["phase"].as_str().map(str::to_owned)
}

/// A commit killed while it cleans the VM's layer (the host has all of it, the
/// layer part): `--abort` finishes the cleanup rather than leave a new directory
/// of the VM hiding the files already taken out of it, and a start does the same;
/// the VM sees every file, and the next commit deletes none from the host.
#[test]
fn a_commit_killed_while_cleaning_the_layer_never_hides_files() {
    let test = "a_commit_killed_while_cleaning_the_layer_never_hides_files";
    if !needs_root(test) {
        return;
    }
    const DIRS: usize = 8;
    const PER: usize = 500;
    let store = TestStore::new("cleanup");
    let mut caught = Vec::new();
    for attempt in 0..6 {
        let name = format!("cl{attempt}");
        let dir = temp_dir("cleanup");
        let h = dir.path();
        store.create(&name);
        vm_python(
            &store,
            &name,
            MAKE_DIRS,
            &[s(h), "big", &DIRS.to_string(), &PER.to_string()],
        )
        .ok();
        let layer = changes_support::upper(&store, &name, h);
        let last = layer.join(format!("big/d{:02}/f{:04}", DIRS - 1, PER - 1));
        // Cleanup takes entries out of the layer, the last first.
        let out = kill_commit(&store, &name, h, || !last.exists());
        let phase = journal_phase(&store, &name);
        println!(
            "attempt {attempt}: exit {}, journal phase {phase:?}",
            out.code
        );
        if phase.as_deref() != Some("cleanup") {
            store.fvm(&["commit", &name, s(h)]).ok();
            continue;
        }
        // Every other attempt: --abort, or a start, is the next command.
        let how = if caught.len() % 2 == 0 {
            "abort"
        } else {
            "start"
        };
        if how == "abort" {
            let out = store.fvm(&["commit", "--abort", &name]).ok();
            assert!(out.stdout.contains("finished it"), "{out}");
        } else {
            store.start(&name);
        }
        assert!(
            !journal(&store, &name).exists(),
            "{how}: the journal is left"
        );
        let seen = store
            .sh(&name, &format!("ls {}/big/* | grep -c '^f'", s(h)))
            .ok();
        assert_eq!(
            seen.out(),
            (DIRS * PER).to_string(),
            "{how}: the vm lost files"
        );
        store.fvm(&["commit", &name, s(h)]).ok();
        for d in 0..DIRS {
            assert_eq!(
                std::fs::read_dir(h.join(format!("big/d{d:02}")))
                    .unwrap()
                    .count(),
                PER,
                "{how}: host files deleted by the next commit"
            );
        }
        caught.push(how);
        if caught.len() == 2 {
            break;
        }
    }
    assert!(
        !caught.is_empty(),
        "no kill happened while the layer was cleaned"
    );
    println!("checked after: {caught:?}");
    store.assert_clean();
}

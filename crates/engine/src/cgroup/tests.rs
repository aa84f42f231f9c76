//! Tests of the public API: against a fake cgroupfs in a temp dir (any host,
//! no root), and against the host's real cgroups (root only).
//!
//! A fake cgroupfs is plain directories and files, so it differs from the real
//! one in two ways the tests keep in mind: the kernel fills a new cgroup with
//! control files (here the tests write the ones they need), and rmdir of a
//! directory with files in it fails with ENOTEMPTY.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::limits::{Key, Limits};
use crate::testing::require_root;
use rustix::mount::MountFlags;

fn v2_fake() -> (tempfile::TempDir, Cgroups) {
    let tmp = tempfile::tempdir().unwrap();
    let cgroups = Cgroups::v2_at(tmp.path().to_owned());
    (tmp, cgroups)
}

fn v1_fake() -> (tempfile::TempDir, Cgroups) {
    let tmp = tempfile::tempdir().unwrap();
    let mut hierarchies = Vec::new();
    for name in ["cpu,cpuacct", "memory", "pids", "freezer"] {
        let root = tmp.path().join(name);
        fs::create_dir(&root).unwrap();
        let controllers = name.split(',').map(str::to_owned).collect();
        hierarchies.push((controllers, root));
    }
    (tmp, Cgroups::v1_at(hierarchies))
}

/// Creates the VM cgroup and the control files the kernel would have made.
fn create_with_files(vm: &VmCgroup, files: &[(&str, &str)]) {
    vm.create().unwrap();
    for dir in vm.dirs() {
        for (name, content) in files {
            fs::write(dir.join(name), content).unwrap();
        }
    }
}

#[test]
fn v2_create_makes_one_directory_and_is_idempotent() {
    let (tmp, cgroups) = v2_fake();
    let vm = cgroups.vm("fvm-1a2b3c4d-web1").unwrap();
    assert_eq!(vm.version(), Version::V2);
    assert_eq!(vm.dirs(), [tmp.path().join("fvm-1a2b3c4d-web1")]);
    assert!(!vm.exists());
    vm.create().unwrap();
    vm.create().unwrap();
    assert!(vm.exists());
    assert!(tmp.path().join("fvm-1a2b3c4d-web1").is_dir());
}

#[test]
fn v1_create_makes_one_directory_per_hierarchy() {
    let (tmp, cgroups) = v1_fake();
    assert_eq!(cgroups.version(), Version::V1);
    let vm = cgroups.vm("fvm-x").unwrap();
    vm.create().unwrap();
    let expected: Vec<PathBuf> = ["cpu,cpuacct", "memory", "pids", "freezer"]
        .iter()
        .map(|h| tmp.path().join(h).join("fvm-x"))
        .collect();
    assert_eq!(vm.dirs(), expected.as_slice());
    assert!(expected.iter().all(|dir| dir.is_dir()));
}

#[test]
fn create_refuses_a_control_file_with_the_leaf_name() {
    let (tmp, cgroups) = v2_fake();
    fs::write(tmp.path().join("cgroup.procs"), "").unwrap();
    let err = cgroups.vm("cgroup.procs").unwrap().create().unwrap_err();
    assert!(matches!(err, CgroupError::Create { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot create cgroup {}",
            tmp.path().join("cgroup.procs").display()
        )
    );
}

#[test]
fn bad_leaf_names_are_rejected() {
    let (_tmp, cgroups) = v2_fake();
    for name in ["", ".", "..", "a//b", "/abs", "../x", "a/..", "a\0b"] {
        let err = cgroups.vm(name).unwrap_err();
        assert!(
            matches!(err, CgroupError::BadName { .. }),
            "{name:?}: {err:?}"
        );
    }
    cgroups.vm("fvm-1a2b3c4d-web1.v2_x").unwrap();
}

#[test]
fn parent_paths_stay_inside_the_hierarchy() {
    assert_eq!(
        parent_path("/slurm/uid_0/job_1/step_0").unwrap(),
        "slurm/uid_0/job_1/step_0"
    );
    assert_eq!(parent_path("a/b/").unwrap(), "a/b");
    for bad in [
        "",
        "/",
        "//",
        "/../etc",
        "/a/../../b",
        "a//b",
        "/a/./b",
        "/a\nb",
    ] {
        assert!(
            matches!(parent_path(bad), Err(CgroupError::BadParent { .. })),
            "{bad:?}"
        );
    }
    assert!(parent_path(&"a/".repeat(600)).is_err());
}

#[test]
fn v2_a_vm_under_a_parent_is_made_in_it_and_only_there() {
    let (tmp, cgroups) = v2_fake();
    let parent = parent_path("/job_1/step_0").unwrap();
    assert!(matches!(
        cgroups.check_parent(&parent),
        Err(CgroupError::NoParent { .. })
    ));
    fs::create_dir_all(tmp.path().join("job_1/step_0")).unwrap();
    fs::write(
        tmp.path().join("job_1/step_0/cgroup.controllers"),
        "memory pids\n",
    )
    .unwrap();
    fs::write(tmp.path().join("job_1/step_0/cgroup.subtree_control"), "").unwrap();
    cgroups.check_parent(&parent).unwrap();
    let vm = cgroups.vm(&format!("{parent}/fvm-1a2b3c4d-job")).unwrap();
    assert_eq!(
        vm.dirs(),
        [tmp.path().join("job_1/step_0/fvm-1a2b3c4d-job")]
    );
    vm.create().unwrap();
    assert!(vm.exists());
    // The parent hands its controllers down to the VM's cgroup.
    assert_eq!(
        fs::read_to_string(tmp.path().join("job_1/step_0/cgroup.subtree_control")).unwrap(),
        "+memory +pids"
    );
    vm.remove().unwrap();
    assert!(!vm.exists());
    assert!(tmp.path().join("job_1/step_0").is_dir());
    for bad in ["job_1/../../x/fvm-1", "job_1//fvm-1", "./fvm-1"] {
        assert!(cgroups.vm(bad).is_err(), "{bad}");
    }
}

#[test]
fn v1_a_parent_must_be_in_every_hierarchy() {
    let (tmp, cgroups) = v1_fake();
    for h in ["cpu,cpuacct", "memory", "pids"] {
        fs::create_dir(tmp.path().join(h).join("job_7")).unwrap();
    }
    // Missing from the freezer's hierarchy.
    let err = cgroups.check_parent("job_7").unwrap_err();
    assert!(err.to_string().contains("freezer"), "{err}");
    fs::create_dir(tmp.path().join("freezer/job_7")).unwrap();
    cgroups.check_parent("job_7").unwrap();
    let vm = cgroups.vm("job_7/fvm-1a2b3c4d-job").unwrap();
    assert!(
        vm.dirs()
            .iter()
            .all(|d| d.ends_with("job_7/fvm-1a2b3c4d-job"))
    );
}

#[test]
fn a_v1_layout_without_hierarchies_has_no_vm_cgroups() {
    let err = Cgroups::v1_at(Vec::new()).vm("vm").unwrap_err();
    assert!(matches!(err, CgroupError::NoHierarchy), "{err:?}");
}

#[test]
fn roots_and_controllers() {
    let (tmp, cgroups) = v2_fake();
    fs::write(
        tmp.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    assert_eq!(cgroups.roots(), [tmp.path().to_owned()]);
    assert_eq!(
        cgroups.controllers().unwrap(),
        ["cpuset", "cpu", "io", "memory", "pids"]
    );

    let (tmp, cgroups) = v1_fake();
    assert_eq!(cgroups.roots().len(), 4);
    assert_eq!(cgroups.roots()[0], tmp.path().join("cpu,cpuacct"));
    assert_eq!(
        cgroups.controllers().unwrap(),
        ["cpu", "cpuacct", "memory", "pids", "freezer"]
    );
}

#[test]
fn version_serializes_lowercase() {
    assert_eq!(serde_json::to_string(&Version::V1).unwrap(), "\"v1\"");
    assert_eq!(serde_json::to_string(&Version::V2).unwrap(), "\"v2\"");
    assert_eq!(Version::V2.to_string(), "v2");
}

#[test]
fn pids_parses_cgroup_procs_including_sub_cgroups() {
    let (_tmp, cgroups) = v2_fake();
    let vm = cgroups.vm("vm").unwrap();
    assert_eq!(
        vm.pids().unwrap(),
        Vec::<i32>::new(),
        "missing cgroup is empty"
    );
    create_with_files(&vm, &[("cgroup.procs", "4242\n17\n4242\n")]);
    let nested = vm.dirs()[0].join("inner");
    fs::create_dir(&nested).unwrap();
    fs::write(nested.join("cgroup.procs"), "99\n").unwrap();
    assert_eq!(vm.pids().unwrap(), [17, 99, 4242]);
}

#[test]
fn pids_rejects_what_is_not_a_positive_pid() {
    let (_tmp, cgroups) = v2_fake();
    let vm = cgroups.vm("vm").unwrap();
    for bad in ["abc\n", "0\n", "-1\n", "12 13\n"] {
        create_with_files(&vm, &[("cgroup.procs", bad)]);
        let err = vm.pids().unwrap_err();
        assert!(matches!(err, CgroupError::Parse { .. }), "{bad:?}: {err:?}");
    }
}

#[test]
fn v1_pids_come_from_the_pids_hierarchy() {
    let (tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    create_with_files(&vm, &[("cgroup.procs", "")]);
    fs::write(tmp.path().join("pids/vm/cgroup.procs"), "7\n").unwrap();
    assert_eq!(vm.pids().unwrap(), [7]);
}

#[test]
fn oom_kills_read_the_version_specific_counter() {
    let (_tmp, cgroups) = v2_fake();
    let vm = cgroups.vm("vm").unwrap();
    assert_eq!(vm.oom_kills(), None, "missing cgroup");
    vm.create().unwrap();
    assert_eq!(vm.oom_kills(), None, "memory controller off");
    fs::write(
        vm.dirs()[0].join("memory.events"),
        "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n",
    )
    .unwrap();
    assert_eq!(vm.oom_kills(), Some(2));
    assert_eq!(vm.usage().oom_kills, Some(2), "stats counts the same");

    let (tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    vm.create().unwrap();
    fs::write(
        tmp.path().join("memory/vm/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .unwrap();
    assert_eq!(vm.oom_kills(), Some(3));
    assert_eq!(vm.usage().oom_kills, Some(3));
    // A kernel older than 4.13 has no counter: unknown, not zero.
    fs::write(
        tmp.path().join("memory/vm/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\n",
    )
    .unwrap();
    assert_eq!(vm.oom_kills(), None);
}

#[test]
fn memory_current_reads_the_version_specific_file() {
    let (_tmp, cgroups) = v2_fake();
    let vm = cgroups.vm("vm").unwrap();
    assert_eq!(vm.memory_current(), None, "missing cgroup");
    vm.create().unwrap();
    assert_eq!(vm.memory_current(), None, "memory controller off");
    fs::write(vm.dirs()[0].join("memory.current"), "1048576\n").unwrap();
    assert_eq!(vm.memory_current(), Some(1_048_576));

    let (tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    vm.create().unwrap();
    fs::write(tmp.path().join("memory/vm/memory.usage_in_bytes"), "8192\n").unwrap();
    assert_eq!(vm.memory_current(), Some(8192));

    let tmp = tempfile::tempdir().unwrap();
    let cgroups = Cgroups::v1_at(vec![(vec!["pids".into()], tmp.path().to_owned())]);
    let vm = cgroups.vm("vm").unwrap();
    vm.create().unwrap();
    assert_eq!(vm.memory_current(), None, "no memory hierarchy");
}

#[test]
fn v2_kill_all_writes_cgroup_kill() {
    let (_tmp, cgroups) = v2_fake();
    let vm = cgroups.vm("vm").unwrap();
    create_with_files(&vm, &[("cgroup.procs", ""), ("cgroup.kill", "")]);
    vm.kill_all().unwrap();
    assert_eq!(
        fs::read_to_string(vm.dirs()[0].join("cgroup.kill")).unwrap(),
        "1"
    );
}

#[test]
fn kill_all_of_a_missing_cgroup_is_a_no_op() {
    let (_tmp, cgroups) = v2_fake();
    cgroups.vm("vm").unwrap().kill_all().unwrap();
    let (_tmp, cgroups) = v1_fake();
    cgroups.vm("vm").unwrap().kill_all().unwrap();
}

#[test]
fn v1_kill_all_thaws_the_freezer() {
    let (tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    create_with_files(&vm, &[("cgroup.procs", "")]);
    let state = tmp.path().join("freezer/vm/freezer.state");
    fs::write(&state, "THAWED\n").unwrap();
    vm.kill_all().unwrap();
    assert_eq!(fs::read_to_string(&state).unwrap().trim(), "THAWED");
}

#[test]
fn v1_entry_writes_zero_to_every_tasks_file() {
    let (_tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    create_with_files(&vm, &[("tasks", "")]);
    let entry = vm.entry().unwrap();
    assert!(entry.clone_into().is_none());
    assert_eq!(entry.fds().len(), 4);
    entry.join_self().unwrap();
    for dir in vm.dirs() {
        assert_eq!(fs::read_to_string(dir.join("tasks")).unwrap(), "0");
    }
}

#[test]
fn v2_entry_is_the_directory_for_clone3() {
    let (_tmp, cgroups) = v2_fake();
    let vm = cgroups.vm("vm").unwrap();
    assert!(matches!(vm.entry(), Err(CgroupError::Open { .. })));
    vm.create().unwrap();
    let entry = vm.entry().unwrap();
    assert!(entry.clone_into().is_some());
    entry.join_self().unwrap();
}

#[test]
fn add_pid_writes_the_pid_to_every_hierarchy() {
    let (_tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    create_with_files(&vm, &[("cgroup.procs", "")]);
    vm.add_pid(31337).unwrap();
    for dir in vm.dirs() {
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "31337"
        );
    }
}

#[test]
fn remove_deletes_empty_directories_and_tolerates_missing_ones() {
    let (tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    vm.create().unwrap();
    fs::create_dir(tmp.path().join("pids/vm/nested")).unwrap();
    fs::remove_dir(tmp.path().join("memory/vm")).unwrap();
    vm.remove().unwrap();
    assert!(!vm.exists());
    vm.remove().unwrap();
}

#[test]
fn remove_reports_a_directory_it_cannot_delete() {
    // Only the fake behaves like this (ENOTEMPTY because of a file); the real
    // cgroupfs lets rmdir remove a cgroup with its control files.
    let (tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    vm.create().unwrap();
    fs::write(tmp.path().join("memory/vm/cgroup.procs"), "").unwrap();
    let err = vm.remove().unwrap_err();
    match &err {
        CgroupError::Remove { path, source } => {
            assert_eq!(path, &tmp.path().join("memory/vm"));
            assert_eq!(source.kind(), io::ErrorKind::DirectoryNotEmpty);
        }
        other => panic!("unexpected error: {other:?}"),
    }
    // The other hierarchies were still cleaned up.
    assert!(!tmp.path().join("pids/vm").exists());
    assert!(!tmp.path().join("freezer/vm").exists());
}

// ---- Privileged tests against the host's real cgroups ----

fn unique_leaf() -> String {
    let mut random = [0u8; 4];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty()).unwrap();
    format!(
        "fvm-test-{}-{:08x}",
        std::process::id(),
        u32::from_ne_bytes(random)
    )
}

/// Kills and removes the test cgroup even when an assertion fails.
struct CgroupGuard(VmCgroup);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = self.0.kill_all();
        let _ = self.0.remove();
    }
}

/// Kills and reaps a child the test spawned, if the test didn't get to.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asserts that no directory named `leaf` is left in any hierarchy.
fn assert_no_leftovers(cgroups: &Cgroups, leaf: &str) {
    let mut parents = cgroups.roots();
    parents.push(PathBuf::from("/sys/fs/cgroup"));
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        parents.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for parent in parents {
        let leftover = parent.join(leaf);
        assert!(!leftover.exists(), "{} was left behind", leftover.display());
    }
}

/// Waits until the cgroup lists `pid`, failing if `child` exits first.
fn wait_for_member(vm: &VmCgroup, child: &mut Child, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vm.pids().unwrap().contains(&pid) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited before joining the cgroup: {status}");
        }
        assert!(Instant::now() < deadline, "child never joined the cgroup");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the cgroup, reaps `child`, removes the cgroup, and checks nothing is left.
fn kill_and_remove(cgroups: &Cgroups, vm: &VmCgroup, leaf: &str, child: &mut Child) {
    vm.kill_all().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert_eq!(vm.pids().unwrap(), Vec::<i32>::new());
    vm.remove().unwrap();
    assert!(!vm.exists());
    assert_no_leftovers(cgroups, leaf);
}

#[test]
fn real_cgroup_holds_kills_and_removes_a_process() {
    if !require_root("real_cgroup_holds_kills_and_removes_a_process") {
        return;
    }
    let cgroups = Cgroups::detect().unwrap();
    let leaf = unique_leaf();
    let guard = CgroupGuard(cgroups.vm(&leaf).unwrap());
    let vm = &guard.0;
    vm.create().unwrap();
    assert!(vm.dirs().iter().all(|dir| dir.is_dir()));

    let mut child = ChildGuard(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = i32::try_from(child.0.id()).unwrap();
    vm.add_pid(pid).unwrap();
    assert!(vm.pids().unwrap().contains(&pid));
    if cgroups.version() == Version::V1
        && cgroups.controllers().unwrap().iter().any(|c| c == "memory")
    {
        assert!(vm.memory_current().is_some());
    }

    kill_and_remove(&cgroups, vm, &leaf, &mut child.0);
}

/// Environment variable that turns `join_self_child` into the child process of
/// `real_join_self_moves_the_caller`; it names the cgroup leaf to join.
const JOIN_CHILD_ENV: &str = "FVM_CGROUP_TEST_JOIN_LEAF";

/// Not a test by itself: without the variable it does nothing. The privileged
/// test below re-runs the test binary with only this test selected, so that a
/// real separate process calls `entry` and `join_self` on itself.
#[test]
fn join_self_child() {
    let Some(leaf) = std::env::var_os(JOIN_CHILD_ENV) else {
        return;
    };
    let vm = Cgroups::detect()
        .unwrap()
        .vm(leaf.to_str().unwrap())
        .unwrap();
    vm.entry().unwrap().join_self().unwrap();
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn real_join_self_moves_the_caller() {
    if !require_root("real_join_self_moves_the_caller") {
        return;
    }
    let cgroups = Cgroups::detect().unwrap();
    let leaf = unique_leaf();
    let guard = CgroupGuard(cgroups.vm(&leaf).unwrap());
    let vm = &guard.0;
    vm.create().unwrap();

    // The test's name without the crate: the same whether this module is
    // compiled into fvm-engine or into a scratch crate.
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let name = format!("{module}::join_self_child");
    let mut child = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(JOIN_CHILD_ENV, &leaf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = i32::try_from(child.0.id()).unwrap();
    wait_for_member(vm, &mut child.0, pid);
    for dir in vm.dirs() {
        let pids = super::control::read_pids(&procs_file(dir)).unwrap();
        assert!(pids.contains(&pid), "{pid} missing from {}", dir.display());
    }

    kill_and_remove(&cgroups, vm, &leaf, &mut child.0);
}

/// A cgroup2 hierarchy mounted by the test in a temporary directory, unmounted on
/// drop. The test's own mount rather than the host's (which a hybrid host may not
/// have at all, and a v1-only host has nowhere): the same real v2 file semantics
/// on every host where root can mount cgroup2, and a visible skip (a failure under
/// FVM_MUST_RUN=1) where it can't.
struct Cgroup2Mount {
    dir: tempfile::TempDir,
}

impl Cgroup2Mount {
    /// None (after a skip) when not root or the mount fails.
    fn new(test: &str) -> Option<Cgroup2Mount> {
        if !require_root(test) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("fvm-test-cgroup2-")
            .tempdir()
            .unwrap();
        match rustix::mount::mount("none", dir.path(), "cgroup2", MountFlags::empty(), None) {
            Ok(()) => Some(Cgroup2Mount { dir }),
            Err(e) => {
                crate::testing::skip(test, &format!("cannot mount cgroup2: {e}"));
                None
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Cgroup2Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// Real v2 coverage on a hybrid host too: the empty unified hierarchy has no
/// controllers, but it tracks processes and has `cgroup.kill` in child cgroups.
#[test]
fn real_v2_cgroup_holds_kills_and_removes_a_process() {
    let Some(mount) = Cgroup2Mount::new("real_v2_cgroup_holds_kills_and_removes_a_process") else {
        return;
    };
    let cgroups = Cgroups::v2_at(mount.path());
    let leaf = unique_leaf();
    let guard = CgroupGuard(cgroups.vm(&leaf).unwrap());
    let vm = &guard.0;
    vm.create().unwrap();
    assert!(vm.dirs()[0].join("cgroup.procs").exists());

    let mut child = ChildGuard(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = i32::try_from(child.0.id()).unwrap();
    vm.add_pid(pid).unwrap();
    assert_eq!(vm.pids().unwrap(), [pid]);

    kill_and_remove(&cgroups, vm, &leaf, &mut child.0);
}

/// The v2 way into a VM's cgroup, for real: `clone3(CLONE_INTO_CGROUP)` with the
/// fd from `entry()` creates the child inside the cgroup.
#[test]
fn real_v2_clone_into_cgroup_creates_the_child_inside() {
    let Some(mount) = Cgroup2Mount::new("real_v2_clone_into_cgroup_creates_the_child_inside")
    else {
        return;
    };
    let cgroups = Cgroups::v2_at(mount.path());
    let leaf = unique_leaf();
    let guard = CgroupGuard(cgroups.vm(&leaf).unwrap());
    let vm = &guard.0;
    vm.create().unwrap();
    let entry = vm.entry().unwrap();
    // The child only sleeps and exits: nothing that could need a lock that another
    // thread of the test harness held at fork time.
    let pid = crate::os::sys::spawn_from_test(entry.clone_into(), || {
        let _ = rustix::thread::nanosleep(&rustix::thread::Timespec {
            tv_sec: 30,
            tv_nsec: 0,
        });
        0
    })
    .unwrap()
    .as_raw_nonzero()
    .get();
    let listed = vm.pids();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
    let _ = rustix::process::waitpid(
        rustix::process::Pid::from_raw(pid),
        rustix::process::WaitOptions::empty(),
    );
    assert_eq!(listed.unwrap(), [pid]);
    vm.remove().unwrap();
    assert!(!vm.exists());
}

#[test]
fn remove_if_empty_takes_only_empty_cgroups() {
    let (_tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    vm.create().unwrap();
    // A fake cgroup with a file in it stands for a populated one (rmdir fails).
    fs::write(vm.dirs()[0].join("cgroup.procs"), "42\n").unwrap();
    assert!(!vm.remove_if_empty().unwrap());
    assert!(vm.dirs()[0].exists());
    assert!(vm.dirs()[1..].iter().all(|d| !d.exists()));
    fs::remove_file(vm.dirs()[0].join("cgroup.procs")).unwrap();
    assert!(vm.remove_if_empty().unwrap());
    assert!(!vm.exists());
}

#[test]
fn v2_frozen_follows_cgroup_freeze() {
    let (_tmp, cgroups) = v2_fake();
    let vm = cgroups.vm("vm").unwrap();
    assert!(!vm.frozen(), "a missing cgroup is not frozen");
    create_with_files(
        &vm,
        &[
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 1\nfrozen 1\n"),
        ],
    );
    assert!(!vm.frozen());
    vm.freeze().unwrap();
    assert!(vm.frozen());
    vm.thaw().unwrap();
    assert!(!vm.frozen());
    assert_eq!(
        fs::read_to_string(vm.dirs()[0].join("cgroup.freeze"))
            .unwrap()
            .trim(),
        "0"
    );
}

#[test]
fn v1_frozen_reads_the_freezer_state() {
    let (tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("vm").unwrap();
    assert!(!vm.frozen(), "a missing cgroup is not frozen");
    create_with_files(&vm, &[]);
    let state = tmp.path().join("freezer/vm/freezer.state");
    for (content, frozen) in [
        ("THAWED\n", false),
        ("FREEZING\n", true),
        ("FROZEN\n", true),
    ] {
        fs::write(&state, content).unwrap();
        assert_eq!(vm.frozen(), frozen, "{content:?}");
    }
    vm.thaw().unwrap();
    assert_eq!(fs::read_to_string(&state).unwrap().trim(), "THAWED");
    assert!(!vm.frozen());
}

// Limits: the option → file → value tables, on a fake cgroupfs of each version.

fn limits(pairs: &[(Key, &str)]) -> Limits {
    let mut l = Limits::default();
    for (k, v) in pairs {
        l.set(*k, v).unwrap();
    }
    l.validate().unwrap();
    l
}

/// Every control file a limit can touch, empty, as the kernel would have made them.
const V2_FILES: [&str; 5] = [
    "memory.max",
    "memory.swap.max",
    "pids.max",
    "cpu.max",
    "cpu.weight",
];
const V1_FILES: [(&str, &str); 7] = [
    ("memory", "memory.limit_in_bytes"),
    ("memory", "memory.memsw.limit_in_bytes"),
    ("memory", "memory.kmem.tcp.limit_in_bytes"),
    ("pids", "pids.max"),
    ("cpu,cpuacct", "cpu.cfs_period_us"),
    ("cpu,cpuacct", "cpu.cfs_quota_us"),
    ("cpu,cpuacct", "cpu.shares"),
];

/// Applies `l` to a fresh fake cgroup and returns the files that were written,
/// as `file = value` (v1 files prefixed with their hierarchy).
fn written(v2: bool, l: &Limits, all: bool) -> Vec<String> {
    let (tmp, cgroups) = if v2 { v2_fake() } else { v1_fake() };
    let vm = cgroups.vm("fvm-lim").unwrap();
    vm.create().unwrap();
    let files: Vec<PathBuf> = if v2 {
        V2_FILES
            .iter()
            .map(|f| tmp.path().join("fvm-lim").join(f))
            .collect()
    } else {
        V1_FILES
            .iter()
            .map(|(h, f)| tmp.path().join(h).join("fvm-lim").join(f))
            .collect()
    };
    for f in &files {
        fs::write(f, "").unwrap();
    }
    vm.set_limits(l, all).unwrap();
    files
        .iter()
        .filter_map(|f| {
            let v = fs::read_to_string(f).unwrap();
            let rel = f.strip_prefix(tmp.path()).unwrap().to_string_lossy();
            let name = rel.replace("fvm-lim/", "");
            (!v.is_empty()).then(|| format!("{name} = {v}"))
        })
        .collect()
}

#[test]
fn v2_limit_table() {
    let m = (Key::Memory, "64M");
    for (given, expected) in [
        (
            vec![m],
            vec!["memory.max = 67108864", "memory.swap.max = 0"],
        ),
        (
            vec![m, (Key::Swap, "1G")],
            vec!["memory.max = 67108864", "memory.swap.max = 1073741824"],
        ),
        (vec![(Key::Processes, "64")], vec!["pids.max = 64"]),
        (vec![(Key::Cpus, "0.5")], vec!["cpu.max = 50000 100000"]),
        (vec![(Key::Cpus, "1.25")], vec!["cpu.max = 125000 100000"]),
        (vec![(Key::CpuWeight, "50")], vec!["cpu.weight = 50"]),
        (vec![(Key::Priority, "low")], vec!["cpu.weight = 25"]),
        (vec![(Key::Priority, "high")], vec!["cpu.weight = 400"]),
        (
            vec![(Key::Priority, "high"), (Key::CpuWeight, "7")],
            vec!["cpu.weight = 7"],
        ),
        // Per-process limits and the timeout are not cgroup files.
        (
            vec![
                (Key::ProcessMemory, "100M"),
                (Key::CpuTime, "2"),
                (Key::OpenFiles, "256"),
                (Key::Timeout, "3s"),
            ],
            vec![],
        ),
    ] {
        assert_eq!(written(true, &limits(&given), false), expected, "{given:?}");
    }
    // v2 charges socket buffers to memory.current already: nothing more to write.
    let memory = limits(&[m]);
    assert!(
        limits::v2(&memory, true)
            .iter()
            .all(|w| !w.file.contains("tcp") && !w.file.contains("kmem")),
        "{:?}",
        limits::v2(&memory, true)
    );
    // Disk limits are no cgroup's.
    let disk = limits(&[(Key::Disk, "1G"), (Key::Inodes, "5000")]);
    assert!(limits::v2(&disk, false).is_empty());
    assert!(limits::v1(&disk, false, false).is_empty());
    // A live change resets what is no longer set.
    assert_eq!(
        written(true, &Limits::default(), true),
        vec![
            "memory.max = max",
            "memory.swap.max = max",
            "pids.max = max",
            "cpu.max = max 100000",
            "cpu.weight = 100",
        ]
    );
}

#[test]
fn v1_limit_table() {
    let m = (Key::Memory, "64M");
    for (given, expected) in [
        (
            vec![m],
            vec![
                "memory/memory.limit_in_bytes = 67108864",
                "memory/memory.memsw.limit_in_bytes = 67108864",
                "memory/memory.kmem.tcp.limit_in_bytes = 67108864",
            ],
        ),
        (
            vec![m, (Key::Swap, "1G")],
            vec![
                "memory/memory.limit_in_bytes = 67108864",
                "memory/memory.memsw.limit_in_bytes = 1140850688",
                "memory/memory.kmem.tcp.limit_in_bytes = 67108864",
            ],
        ),
        (vec![(Key::Processes, "64")], vec!["pids/pids.max = 64"]),
        (
            vec![(Key::Cpus, "0.5")],
            vec![
                "cpu,cpuacct/cpu.cfs_period_us = 100000",
                "cpu,cpuacct/cpu.cfs_quota_us = 50000",
            ],
        ),
        (
            vec![(Key::CpuWeight, "50")],
            vec!["cpu,cpuacct/cpu.shares = 512"],
        ),
        (
            vec![(Key::Priority, "low")],
            vec!["cpu,cpuacct/cpu.shares = 256"],
        ),
        (
            vec![(Key::Priority, "normal")],
            vec!["cpu,cpuacct/cpu.shares = 1024"],
        ),
        (
            vec![(Key::Priority, "high")],
            vec!["cpu,cpuacct/cpu.shares = 4096"],
        ),
        (
            vec![(Key::CpuWeight, "1")],
            vec!["cpu,cpuacct/cpu.shares = 10"],
        ),
        (
            vec![(Key::CpuWeight, "10000")],
            vec!["cpu,cpuacct/cpu.shares = 102400"],
        ),
        (
            vec![
                (Key::ProcessMemory, "100M"),
                (Key::CpuTime, "2"),
                (Key::OpenFiles, "256"),
                (Key::Timeout, "3s"),
            ],
            vec![],
        ),
    ] {
        assert_eq!(
            written(false, &limits(&given), false),
            expected,
            "{given:?}"
        );
    }
    assert_eq!(
        written(false, &Limits::default(), true),
        vec![
            "memory/memory.limit_in_bytes = -1",
            "memory/memory.memsw.limit_in_bytes = -1",
            "memory/memory.kmem.tcp.limit_in_bytes = -1",
            "pids/pids.max = max",
            "cpu,cpuacct/cpu.cfs_quota_us = -1",
            "cpu,cpuacct/cpu.shares = 1024",
        ]
    );
}

#[test]
fn v1_grows_memory_and_swap_in_the_order_the_kernel_accepts() {
    let l = limits(&[(Key::Memory, "1G")]);
    let files = |w: Vec<limits::LimitWrite>| -> Vec<&str> { w.iter().map(|w| w.file).collect() };
    assert_eq!(
        files(limits::v1(&l, false, false))[..2],
        ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    );
    assert_eq!(
        files(limits::v1(&l, false, true))[..2],
        ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    );
    // On a fake cgroup whose limit is 64M, 1G is a raise.
    let (tmp, cgroups) = v1_fake();
    let vm = cgroups.vm("fvm-raise").unwrap();
    vm.create().unwrap();
    fs::write(
        tmp.path().join("memory/fvm-raise/memory.limit_in_bytes"),
        "67108864\n",
    )
    .unwrap();
    let order: Vec<&str> = vm
        .backend
        .limit_writes(&l, true)
        .iter()
        .map(|w| w.file)
        .collect();
    assert_eq!(order[0], "memory.memsw.limit_in_bytes");
}

#[test]
fn a_missing_controller_or_file_is_an_error_unless_optional() {
    // v1 without a pids hierarchy: processes can't be enforced.
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("memory")).unwrap();
    let cgroups = Cgroups::v1_at(vec![(vec!["memory".into()], tmp.path().join("memory"))]);
    let vm = cgroups.vm("fvm-miss").unwrap();
    vm.create().unwrap();
    let err = vm
        .set_limits(&limits(&[(Key::Processes, "64")]), false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the processes limit can't be enforced on this host: it needs the cgroup pids controller, which is not mounted"
    );
    let err = cgroups
        .check_limits(&limits(&[(Key::Processes, "64")]))
        .unwrap_err();
    assert!(
        matches!(err, CgroupError::MissingController { .. }),
        "{err}"
    );
    // memory.limit_in_bytes but no TCP file: memory would leave the VM's
    // socket buffers uncharged, so it is refused.
    let dir = tmp.path().join("memory/fvm-miss");
    fs::write(dir.join("memory.limit_in_bytes"), "").unwrap();
    fs::write(tmp.path().join("memory/memory.limit_in_bytes"), "").unwrap();
    let memory = limits(&[(Key::Memory, "64M")]);
    let err = cgroups.check_limits(&memory).unwrap_err();
    assert!(
        matches!(
            &err,
            CgroupError::MissingFile {
                key: Key::Memory,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("sockets' buffers"), "{err}");
    let err = vm.set_limits(&memory, false).unwrap_err();
    assert!(err.to_string().contains("sockets' buffers"), "{err}");
    // With it but no memsw file: memory alone works, swap doesn't.
    for d in [&dir, &tmp.path().join("memory")] {
        fs::write(d.join("memory.kmem.tcp.limit_in_bytes"), "").unwrap();
    }
    vm.set_limits(&memory, false).unwrap();
    cgroups.check_limits(&memory).unwrap();
    let swap = limits(&[(Key::Memory, "64M"), (Key::Swap, "1G")]);
    let err = vm.set_limits(&swap, false).unwrap_err();
    assert!(
        matches!(&err, CgroupError::MissingFile { key: Key::Swap, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("swapaccount=1"), "{err}");
    let err = cgroups.check_limits(&swap).unwrap_err();
    assert!(matches!(err, CgroupError::MissingFile { .. }), "{err}");
}

#[test]
fn v2_checks_the_root_controllers_and_enables_them_for_vms() {
    let (tmp, cgroups) = v2_fake();
    fs::write(tmp.path().join("cgroup.controllers"), "cpu io pids\n").unwrap();
    fs::write(tmp.path().join("cgroup.subtree_control"), "").unwrap();
    cgroups
        .check_limits(&limits(&[(Key::Processes, "64"), (Key::Cpus, "1")]))
        .unwrap();
    let err = cgroups
        .check_limits(&limits(&[(Key::Memory, "64M")]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the memory limit can't be enforced on this host: it needs the cgroup memory controller, which is not enabled"
    );
    // A new VM cgroup gets the offered controllers it lacked.
    cgroups.vm("fvm-en").unwrap().create().unwrap();
    assert_eq!(
        fs::read_to_string(tmp.path().join("cgroup.subtree_control")).unwrap(),
        "+cpu +io +pids"
    );
}

//! Host changes seen from running VMs (docs/host-changes.md): the host creates, rewrites,
//! replaces by rename, deletes or chmods a path that a running VM had already
//! looked up, and the VM sees the host's new state within a second; a second VM
//! that had made its own version of the same path keeps it.
//!
//! Each kind of change has a test of its own: a store, a host directory under
//! /var/tmp (on the root filesystem, so under the VMs' overlays; /tmp may be
//! private in a VM), and two running VMs. `fresh` looks the path up before the
//! change (so its overlay caches what it found, or that it found nothing);
//! `own` changes the path itself first. After the host change the test looks
//! again in `fresh`, one `fvm run` after another with no pause, until the new
//! state shows; the bound is the wall clock from the end of the host change to
//! the end of the first look that shows it. `own` is checked once a host file
//! made after the change shows in it too (so its view has been refreshed since).
//! Before any host change a test waits until the store's watcher, which the
//! first `start` forks off in the background, has its fanotify mark on the
//! filesystem of the host directory (its fdinfo says so).
//!
//! Also: a process in a VM that holds the old file open is not disturbed by a
//! host rename-over (the path itself may go on showing the old file while it is
//! held: the documented limit), and the store's watcher process goes away with
//! the store's last VM.
//!
//! The 1 s bound is the contract's "promptly", a functional window, not a speed
//! figure; the latencies seen are printed (`--nocapture`).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Out, TestStore, TmpfsMount, is_alive_as, live_comm, needs_root};
use serde_json::Value;

// ---------------------------------------------------------------------------
// helpers

/// A host change must show in a VM that had looked the path up within this.
const VISIBLE_WITHIN: Duration = Duration::from_secs(1);

/// The storm test counts the events the watcher reads, which the other tests
/// of this file, run in parallel, would add to by the thousand (and press the
/// kernel to evict the watcher's ignore marks): it runs alone, the others
/// together.
static QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    QUIET
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    QUIET
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// After a change failed to show in time, how long to go on looking, to tell a
/// late change from one that never shows (for the failure message only).
const LOOK_ON: Duration = Duration::from_secs(5);

/// The store's watcher must be gone this long after the last VM stopped.
const WATCHER_GONE_WITHIN: Duration = Duration::from_secs(2);

/// A host directory the test changes, on the root filesystem (under /var/tmp),
/// removed on drop.
fn host_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("fvm-test-{tag}-"))
        .tempdir_in("/var/tmp")
        .expect("create a host directory in /var/tmp")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn write(p: &Path, content: &str) {
    std::fs::write(p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Replace a file the way dpkg and editors do: a new file, renamed over it.
fn rename_over(p: &Path, content: &str) {
    let tmp = p.with_extension("fvm-new");
    write(&tmp, content);
    std::fs::rename(&tmp, p)
        .unwrap_or_else(|e| panic!("rename {} over {}: {e}", tmp.display(), p.display()));
}

/// `cd DIR && SCRIPT` in the VM.
fn in_vm(store: &TestStore, vm: &str, dir: &Path, script: &str) -> Out {
    store.sh(vm, &format!("cd {} && {script}", s(dir)))
}

/// What `probe` prints in the VM (trimmed), asserting it ran.
#[track_caller]
fn look(store: &TestStore, vm: &str, dir: &Path, probe: &str) -> String {
    in_vm(store, vm, dir, probe).ok().out().to_owned()
}

/// The outcome of looking again and again.
enum Seen {
    /// The wanted state showed: the time from the change to the end of that look,
    /// and the number of looks.
    After(Duration, u32),
    /// It didn't within the limit: the last look, the time waited, the looks.
    Not(Out, Duration, u32),
}

/// A look at a path from inside a VM, and the state wanted.
struct Watch<'a> {
    store: &'a TestStore,
    vm: &'a str,
    dir: &'a Path,
    /// Run in `dir` in the VM: prints the VM's view.
    probe: &'a str,
    want: &'a str,
}

impl Watch<'_> {
    /// Look until the probe prints `want` or `limit` has passed since `since`.
    /// With `pause` zero the looks follow each other at once (each is an
    /// `fvm run`, a few milliseconds).
    fn until(&self, since: Instant, limit: Duration, pause: Duration) -> Seen {
        let mut looks = 0;
        loop {
            let out = in_vm(self.store, self.vm, self.dir, self.probe);
            looks += 1;
            let waited = since.elapsed();
            if out.code == 0 && out.out() == self.want {
                return Seen::After(waited, looks);
            }
            if waited >= limit {
                return Seen::Not(out, waited, looks);
            }
            std::thread::sleep(pause);
        }
    }

    /// Assert that the wanted state shows within [`VISIBLE_WITHIN`] of `since`
    /// (the end of the host change); returns how long it took. The failure names
    /// the change and the wait, and whether the change showed later or not at all.
    #[track_caller]
    fn shows(&self, kind: &str, since: Instant) -> Duration {
        let (vm, probe, want) = (self.vm, self.probe, self.want);
        match self.until(since, VISIBLE_WITHIN, Duration::ZERO) {
            Seen::After(took, looks) => {
                println!(
                    "{kind}: vm {vm} saw it {} ms after the host change ({looks} looks)",
                    took.as_millis()
                );
                took
            }
            Seen::Not(last, waited, looks) => {
                let later = match self.until(since, LOOK_ON, Duration::from_millis(20)) {
                    Seen::After(took, _) => format!("it showed after {} ms", took.as_millis()),
                    Seen::Not(_, waited, _) => {
                        format!("still stale {} ms after the change", waited.as_millis())
                    }
                };
                panic!(
                    "{kind}: stale in vm {vm}: {} ms after the host change ({looks} looks) \
                     `{probe}` in {} still showed {:?}, not {want:?}; {later}\nlast look:\n{last}",
                    waited.as_millis(),
                    s(self.dir),
                    last.out(),
                );
            }
        }
    }
}

/// The kernel's number for the device of a path, as fanotify's fdinfo prints it
/// (`sdev:` in hex: major << 20 | minor).
fn kernel_dev(p: &Path) -> String {
    let dev = std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{:x}", (major << 20) | minor)
}

/// Whether the process has a fanotify group with a mark on the filesystem whose
/// kernel device number is `sdev`.
fn watches(pid: i32, sdev: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let needle = format!("sdev:{sdev} ");
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("fanotify"))
            && std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| info.contains(&needle))
    })
}

/// Wait until the store's watcher runs and watches the filesystem of `dir` (it is
/// started in the background by the first `start`); returns its pid.
#[track_caller]
fn wait_for_watcher(store: &TestStore, dir: &Path) -> i32 {
    let sdev = kernel_dev(dir);
    let start = Instant::now();
    loop {
        if let Some(pid) = store.watcher_pid().filter(|p| watches(*p, &sdev)) {
            return pid;
        }
        assert!(
            start.elapsed() < common::WAIT,
            "no fvm-watch of store {} watches the filesystem of {} (device {sdev}) {} ms after \
             the vm started (watch.pid: {:?})",
            store.root.display(),
            s(dir),
            start.elapsed().as_millis(),
            std::fs::read_to_string(store.root.join("watch.pid")).ok(),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Live `fvm-watch` processes that hold a file of the store open (its
/// watch.lock): the store's watchers.
fn watchers_of(store: &TestStore) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if live_comm(pid).as_deref() != Some("fvm-watch") {
            continue;
        }
        let holds = std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.starts_with(&store.root)))
        });
        if holds {
            found.push(pid);
        }
    }
    found
}

// ---------------------------------------------------------------------------
// one kind of change, seen by a VM that looked and by one that changed it itself

/// A host change, what a VM that had looked shows before and after it, and what a
/// VM that changed the path itself keeps.
struct Case {
    /// Names the change in messages.
    kind: &'static str,
    /// Makes the host directory's state before the change.
    before: fn(&Path),
    /// The host change.
    change: fn(&Path),
    /// Run in the host directory in a VM: prints the VM's view of the path.
    probe: &'static str,
    /// What `probe` prints before the change and (in `fresh`) after it.
    old: &'static str,
    new: &'static str,
    /// Run in the host directory in `own` before the change: its own version.
    own: &'static str,
    /// Prints `own`'s view of its version, and what that must be afterwards.
    own_probe: &'static str,
    own_view: &'static str,
}

fn check(tag: &str, case: &Case) {
    let kind = case.kind;
    // The host directory outlives the store (dropped after it), so the VMs are
    // gone before it is removed, even on failure.
    let host = host_dir(tag);
    let store = TestStore::new(tag);
    let dir = host.path();
    (case.before)(dir);

    store.create("fresh");
    store.create("own");
    store.start("fresh");
    store.start("own");
    wait_for_watcher(&store, dir);

    // `own` makes its own version of the path, and looks up a name the host will
    // make after the change.
    in_vm(
        &store,
        "own",
        dir,
        &format!("{} && test ! -e refreshed", case.own),
    )
    .ok();
    assert_eq!(
        look(&store, "own", dir, case.own_probe),
        case.own_view,
        "{kind}: vm own does not see its own version before the host change"
    );
    // `fresh` looks the path up.
    assert_eq!(
        look(&store, "fresh", dir, case.probe),
        case.old,
        "{kind}: vm fresh does not see the host's state before the change"
    );

    (case.change)(dir);
    let changed = Instant::now();
    Watch {
        store: &store,
        vm: "fresh",
        dir,
        probe: case.probe,
        want: case.new,
    }
    .shows(kind, changed);

    // Once `own`'s view has been refreshed since the change, its version stands.
    write(&dir.join("refreshed"), "yes\n");
    let made = Instant::now();
    Watch {
        store: &store,
        vm: "own",
        dir,
        probe: "cat refreshed 2>/dev/null || echo missing",
        want: "yes",
    }
    .shows(&format!("{kind}, then a host create (for vm own)"), made);
    assert_eq!(
        look(&store, "own", dir, case.own_probe),
        case.own_view,
        "{kind}: vm own, which had changed the path itself, lost its own version to the host's"
    );
    store.assert_clean();
}

/// `cat f`, or "missing".
const CAT_F: &str = "cat f 2>/dev/null || echo missing";

#[test]
fn a_host_create_shows_where_the_vm_found_nothing() {
    let _shared = shared();
    if !needs_root("a_host_create_shows_where_the_vm_found_nothing") {
        return;
    }
    check(
        "hostchg-create",
        &Case {
            kind: "create after the vm found nothing (negative dentry)",
            before: |_| {},
            change: |d| write(&d.join("f"), "host\n"),
            probe: CAT_F,
            old: "missing",
            new: "host",
            own: "echo own > f",
            own_probe: CAT_F,
            own_view: "own",
        },
    );
}

#[test]
fn a_host_in_place_write_shows() {
    let _shared = shared();
    if !needs_root("a_host_in_place_write_shows") {
        return;
    }
    check(
        "hostchg-write",
        &Case {
            kind: "in-place write (same inode)",
            before: |d| write(&d.join("f"), "old\n"),
            change: |d| {
                let f = d.join("f");
                let inode = std::fs::metadata(&f).unwrap().ino();
                write(&f, "new\n");
                assert_eq!(std::fs::metadata(&f).unwrap().ino(), inode, "not in place");
            },
            probe: CAT_F,
            old: "old",
            new: "new",
            own: "echo own > f",
            own_probe: CAT_F,
            own_view: "own",
        },
    );
}

#[test]
fn a_host_rename_over_shows_the_new_file() {
    let _shared = shared();
    if !needs_root("a_host_rename_over_shows_the_new_file") {
        return;
    }
    check(
        "hostchg-rename",
        &Case {
            kind: "rename-over (new file renamed over one the vm had read)",
            before: |d| write(&d.join("f"), "old\n"),
            change: |d| rename_over(&d.join("f"), "new\n"),
            probe: CAT_F,
            old: "old",
            new: "new",
            own: "echo own > f",
            own_probe: CAT_F,
            own_view: "own",
        },
    );
}

#[test]
fn a_host_delete_shows() {
    let _shared = shared();
    if !needs_root("a_host_delete_shows") {
        return;
    }
    check(
        "hostchg-delete",
        &Case {
            kind: "delete",
            before: |d| write(&d.join("f"), "old\n"),
            change: |d| std::fs::remove_file(d.join("f")).unwrap(),
            probe: CAT_F,
            old: "old",
            new: "missing",
            own: "echo own > f",
            own_probe: CAT_F,
            own_view: "own",
        },
    );
}

/// The mode as `stat` shows it, and whether root may execute the file: the
/// overlay checks permissions against the mode it copied at lookup, while `stat`
/// asks the host inode, so only the second goes stale.
const CHMOD_PROBE: &str = "echo $(stat -c %a f) $(test -x f && echo x || echo not-x)";

#[test]
fn a_host_chmod_shows() {
    let _shared = shared();
    if !needs_root("a_host_chmod_shows") {
        return;
    }
    check(
        "hostchg-chmod",
        &Case {
            kind: "chmod (attribute change)",
            before: |d| {
                write(&d.join("f"), "old\n");
                chmod(&d.join("f"), 0o644);
            },
            change: |d| chmod(&d.join("f"), 0o755),
            probe: CHMOD_PROBE,
            old: "644 not-x",
            new: "755 x",
            own: "chmod 600 f",
            own_probe: CHMOD_PROBE,
            own_view: "600 not-x",
        },
    );
}

#[test]
fn a_new_host_directory_shows_where_the_vm_found_nothing() {
    let _shared = shared();
    if !needs_root("a_new_host_directory_shows_where_the_vm_found_nothing") {
        return;
    }
    check(
        "hostchg-mkdir",
        &Case {
            kind: "new directory with files, where the vm found nothing",
            before: |_| {},
            change: |d| {
                std::fs::create_dir(d.join("d")).unwrap();
                write(&d.join("d/a"), "host a\n");
                write(&d.join("d/b"), "host b\n");
            },
            probe: "if [ -d d ]; then ls d; cat d/*; else echo missing; fi",
            old: "missing",
            new: "a\nb\nhost a\nhost b",
            own: "mkdir d && echo own > d/a",
            own_probe: "cat d/a",
            own_view: "own",
        },
    );
}

#[test]
fn a_host_directory_rename_shows() {
    let _shared = shared();
    if !needs_root("a_host_directory_rename_shows") {
        return;
    }
    check(
        "hostchg-mvdir",
        &Case {
            kind: "rename of a directory the vm had listed",
            before: |d| {
                std::fs::create_dir(d.join("d1")).unwrap();
                write(&d.join("d1/x"), "host x\n");
                write(&d.join("d1/y"), "host y\n");
            },
            change: |d| std::fs::rename(d.join("d1"), d.join("d2")).unwrap(),
            probe: "for p in d1 d2; do if [ -d $p ]; then echo $p: $(ls $p) $(cat $p/*); fi; done",
            old: "d1: x y host x host y",
            new: "d2: x y host x host y",
            own: "echo own > d1/x",
            own_probe: "cat d1/x",
            own_view: "own",
        },
    );
}

// ---------------------------------------------------------------------------
// a process holding the old file open

/// The VM pid and host pid of the process in the VM whose command is `command`.
#[track_caller]
fn pids_of(store: &TestStore, vm: &str, command: &str) -> (i64, i32) {
    let out = store.fvm(&["--json", "ps", vm]).ok();
    let procs: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ps --json: not JSON ({e}):\n{out}"));
    procs
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["command"] == command)
        .and_then(|p| {
            Some((
                p["pid"].as_i64()?,
                i32::try_from(p["host_pid"].as_i64()?).ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no {command:?} in vm {vm}:\n{out}"))
}

#[test]
fn a_process_holding_the_old_file_survives_a_host_rename_over() {
    let _shared = shared();
    if !needs_root("a_process_holding_the_old_file_survives_a_host_rename_over") {
        return;
    }
    let host = host_dir("hostchg-open");
    let store = TestStore::new("hostchg-open");
    let dir = host.path();
    write(&dir.join("held"), "old held\n");
    write(&dir.join("other"), "old other\n");
    store.create("holder");
    store.start("holder");
    wait_for_watcher(&store, dir);

    // A process in the VM holds the file open; the VM has read the other one.
    in_vm(
        &store,
        "holder",
        dir,
        "cat other && nohup sleep 1000 < held >/dev/null 2>&1 &",
    )
    .ok();
    let (vm_pid, host_pid) = pids_of(&store, "holder", "sleep 1000");
    assert_eq!(
        look(&store, "holder", dir, &format!("cat /proc/{vm_pid}/fd/0")),
        "old held"
    );
    assert_eq!(look(&store, "holder", dir, "cat other"), "old other");

    rename_over(&dir.join("held"), "new held\n");
    rename_over(&dir.join("other"), "new other\n");
    let changed = Instant::now();
    // A replaced file in the same directory that nothing holds shows.
    Watch {
        store: &store,
        vm: "holder",
        dir,
        probe: "cat other",
        want: "new other",
    }
    .shows(
        "rename-over next to a file a vm process holds open",
        changed,
    );

    // The holder is undisturbed: alive, and still reading the old file.
    assert!(
        is_alive_as(host_pid, "sleep"),
        "the vm's `sleep 1000 < held` (host pid {host_pid}) is gone after the host \
         replaced held"
    );
    assert_eq!(
        look(&store, "holder", dir, &format!("cat /proc/{vm_pid}/fd/0")),
        "old held",
        "the vm's `sleep 1000 < held` no longer reads the file it opened"
    );
    // The documented limit: the held path itself may go on showing the old file.
    println!(
        "a path held open in the vm shows {:?} after a host rename-over (the limit)",
        look(&store, "holder", dir, "cat held")
    );
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// the watcher's life

#[test]
fn the_watcher_ends_with_the_stores_last_vm() {
    let _shared = shared();
    if !needs_root("the_watcher_ends_with_the_stores_last_vm") {
        return;
    }
    let host = host_dir("hostchg-watcher");
    let store = TestStore::new("hostchg-watcher");
    let dir = host.path();
    store.create("one");
    store.create("two");
    store.start("one");
    let pid = wait_for_watcher(&store, dir);
    assert_eq!(watchers_of(&store), vec![pid], "one watcher per store");
    store.start("two");

    // With one of two VMs stopped, the watcher goes on serving the other.
    store.stop("one");
    in_vm(&store, "two", dir, "test ! -e later").ok();
    write(&dir.join("later"), "later\n");
    let made = Instant::now();
    Watch {
        store: &store,
        vm: "two",
        dir,
        probe: "cat later 2>/dev/null || echo missing",
        want: "later",
    }
    .shows(
        "create after the vm found nothing, with the store's other vm stopped",
        made,
    );
    assert_eq!(
        watchers_of(&store),
        vec![pid],
        "the store's watcher changed while a vm of it ran"
    );

    store.stop("two");
    let stopped = Instant::now();
    loop {
        let left: Vec<i32> = watchers_of(&store)
            .into_iter()
            .chain(Some(pid).filter(|p| is_alive_as(*p, "fvm-watch")))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            stopped.elapsed() < WATCHER_GONE_WITHIN,
            "fvm-watch of store {} still runs (pids {left:?}) {} ms after its last vm stopped",
            store.root.display(),
            stopped.elapsed().as_millis()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "the watcher was gone {} ms after `fvm stop` of the last vm returned",
        stopped.elapsed().as_millis()
    );
    store.assert_clean();
}

#[test]
fn a_vm_started_as_the_last_one_stops_still_gets_a_watcher() {
    let _shared = shared();
    if !needs_root("a_vm_started_as_the_last_one_stops_still_gets_a_watcher") {
        return;
    }
    // The watcher of a store whose last VM just stopped is on its way out for a
    // while (closing its fanotify marks); a VM started meanwhile must not be left
    // without one. Several tries, each starting the next VM right after the stop.
    let host = host_dir("hostchg-handover");
    let store = TestStore::new("hostchg-handover");
    let dir = host.path();
    for i in 0..4 {
        store.create(&format!("vm{i}"));
    }
    store.start("vm0");
    wait_for_watcher(&store, dir);
    for i in 1..4 {
        let (prev, next) = (format!("vm{}", i - 1), format!("vm{i}"));
        store.stop(&prev);
        store.start(&next);
        let pid = wait_for_watcher(&store, dir);
        let name = format!("handover-{i}");
        in_vm(&store, &next, dir, &format!("test ! -e {name}")).ok();
        write(&dir.join(&name), "here\n");
        let made = Instant::now();
        Watch {
            store: &store,
            vm: &next,
            dir,
            probe: &format!("cat {name} 2>/dev/null || echo missing"),
            want: "here",
        }
        .shows(
            "create seen by a vm started right after the last one stopped",
            made,
        );
        assert_eq!(watchers_of(&store), vec![pid], "one watcher per store");
    }
    store.stop("vm3");
}

/// The watcher's counters (`STORE/watch.stats`, which it writes on SIGUSR1).
fn watcher_stats(store: &TestStore, pid: i32) -> std::collections::HashMap<String, u64> {
    let path = store.root.join("watch.stats");
    let _ = std::fs::remove_file(&path);
    common::signal("USR1", &[pid]);
    common::wait_until("the watcher writes watch.stats after SIGUSR1", || {
        path.exists()
    });
    std::fs::read_to_string(&path)
        .expect("read watch.stats")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// A VM's write storm in its own layer, under `DIR/storm` (the host's DIR, so
/// the VM copies it up): in each of `dirs` directories (made if missing), files
/// numbered from `from`, `files` of them, one of them chmodded; then each
/// directory renamed back and forth `renames` times. Prints how many files
/// `storm` holds.
fn storm(dir: &Path, dirs: u32, from: u32, files: u32, renames: u32) -> String {
    format!(
        "mkdir -p {d}/storm && cd {d}/storm && \
         for d in $(seq {dirs}); do mkdir -p d$d; i={from}; \
           while [ $i -lt {end} ]; do : > d$d/f$i; i=$((i+1)); done; \
           chmod 600 d$d/f{from}; done && \
         r=0; while [ $r -lt {renames} ]; do \
           for d in $(seq {dirs}); do mv d$d e$d; mv e$d d$d; done; r=$((r+1)); done && \
         find . -type f | wc -l",
        d = s(dir),
        end = from + files,
    )
}

#[test]
fn a_vms_write_storm_in_its_own_layer_does_not_reach_the_watcher() {
    let _alone = alone();
    if !needs_root("a_vms_write_storm_in_its_own_layer_does_not_reach_the_watcher") {
        return;
    }
    let host = host_dir("hostchg-storm");
    let store = TestStore::new("hostchg-storm");
    let dir = host.path();
    store.create("busy");
    store.start("busy");
    let pid = wait_for_watcher(&store, dir);
    // A first, small storm makes the directories: their first events reach the
    // watcher, which has the kernel ignore them from then on.
    in_vm(&store, "busy", dir, &storm(dir, 8, 0, 10, 1)).ok();
    // Until the watcher has read them all (on a loaded machine that takes a
    // while): its count of the VMs' own events stops moving, and the storm's
    // nine directories are ignored.
    let mut before = watcher_stats(&store, pid);
    common::wait_until("the watcher has read the first storm's events", || {
        std::thread::sleep(Duration::from_millis(200));
        let now = watcher_stats(&store, pid);
        let settled = now["own_events"] == before["own_events"] && now["ignored_dirs"] >= 9;
        before = now;
        settled
    });
    // 8000 creates, 3200 renames, 8 chmods in the VM's layer.
    let made = in_vm(&store, "busy", dir, &storm(dir, 8, 10, 1000, 200)).ok();
    assert_eq!(made.out(), "8080", "the storm's files");
    std::thread::sleep(Duration::from_millis(300));
    let after = watcher_stats(&store, pid);
    let delta = |k: &str| after[k] - before[k];
    println!(
        "during the vm's write storm the watcher read {} events of the vms' own and {} host \
         events, woke {} times (host changes of other processes on this machine count too)",
        delta("own_events"),
        delta("host_events"),
        delta("wakeups"),
    );
    // What does reach it: the `fvm run`'s own files in the store, whose
    // directories are ignored already; a few for any the kernel evicted meanwhile.
    assert!(
        delta("own_events") <= 50,
        "the watcher read {} events of the vms' own while a vm made 8000 files and 3200 \
         renames in its own layer: the kernel must drop them",
        delta("own_events")
    );
    assert!(
        is_alive_as(pid, "fvm-watch"),
        "the watcher is gone after the vm's storm"
    );
    store.assert_clean();
}

#[test]
fn a_host_change_during_a_vms_write_storm_shows() {
    let _shared = shared();
    if !needs_root("a_host_change_during_a_vms_write_storm_shows") {
        return;
    }
    let host = host_dir("hostchg-stormhost");
    let store = TestStore::new("hostchg-stormhost");
    let dir = host.path();
    let own = tempfile::tempdir_in("/var/tmp").expect("a host directory in /var/tmp");
    store.create("busy");
    store.start("busy");
    wait_for_watcher(&store, dir);
    in_vm(&store, "busy", dir, "test ! -e during").ok();
    // The storm goes on in the VM (its own layer, under a directory the host
    // doesn't change) while the host creates a file the VM had found missing.
    let busy = store.background(&[
        "run",
        "busy",
        "--",
        "sh",
        "-c",
        &storm(own.path(), 20, 0, 1000, 50),
    ]);
    // Well into the storm: its first directories are ignored by the kernel by now.
    wait_until_storm_started(&store, own.path());
    write(&dir.join("during"), "host\n");
    let made = Instant::now();
    Watch {
        store: &store,
        vm: "busy",
        dir,
        probe: "cat during 2>/dev/null || echo missing",
        want: "host",
    }
    .shows("create during a vm's write storm", made);
    let out = busy.finish().ok();
    assert_eq!(out.out(), "20000", "the storm's files");
    store.assert_clean();
}

/// Wait until the VM's storm has made its third directory.
fn wait_until_storm_started(store: &TestStore, dir: &Path) {
    common::wait_until("the vm's write storm to reach its third directory", || {
        in_vm(store, "busy", dir, "test -d storm/d3").code == 0
    });
}

#[test]
fn a_store_on_a_filesystem_of_its_own_gets_no_mark() {
    let _shared = shared();
    if !needs_root("a_store_on_a_filesystem_of_its_own_gets_no_mark") {
        return;
    }
    // The store is the root of a tmpfs: everything on it is the VMs' own, so the
    // kernel is asked to report nothing of it (and a VM's writes cost nothing),
    // while the host's root filesystem is still watched.
    let host = host_dir("hostchg-ownfs");
    let fs = TmpfsMount::with_size("hostchg-ownfs", "256m");
    let store = TestStore::at(&fs.path);
    let dir = host.path();
    store.create("busy");
    store.start("busy");
    let pid = wait_for_watcher(&store, dir);
    let own = kernel_dev(&store.root);
    assert!(
        !watches(pid, &own),
        "the watcher has a mark on the store's own filesystem (device {own})"
    );
    in_vm(&store, "busy", dir, &storm(dir, 4, 0, 500, 10)).ok();
    std::thread::sleep(Duration::from_millis(300));
    let stats = watcher_stats(&store, pid);
    println!(
        "with the store on its own tmpfs, the watcher read {} own events",
        stats["own_events"]
    );
    assert_eq!(
        stats["own_events"], 0,
        "the watcher read events of the vms' own with the store on a filesystem of its own"
    );
    // Host changes still show.
    in_vm(&store, "busy", dir, "test ! -e later").ok();
    write(&dir.join("later"), "later\n");
    let made = Instant::now();
    Watch {
        store: &store,
        vm: "busy",
        dir,
        probe: "cat later 2>/dev/null || echo missing",
        want: "later",
    }
    .shows("create with the store on a filesystem of its own", made);
    // (Not `assert_clean`: the store's root is a mount point.)
    drop(store);
}

/// Whether the process has a fanotify inode mark on inode `ino` (the watcher's
/// only inode marks are ignore marks), as its fdinfo says.
fn ignore_marked(pid: i32, ino: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let needle = format!("fanotify ino:{ino:x} ");
    fds.flatten().any(|fd| {
        std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .is_ok_and(|info| info.contains(&needle))
    })
}

#[test]
fn a_directory_moved_from_the_store_into_the_host_tree_is_watched_again() {
    let _shared = shared();
    if !needs_root("a_directory_moved_from_the_store_into_the_host_tree_is_watched_again") {
        return;
    }
    // A directory under the store is the VMs' own, and the watcher has the kernel
    // ignore it once it saw a change in it. Moved into the host's tree, it is the
    // host's again: a file created in it must show in a VM.
    let host = host_dir("hostchg-moveout");
    let store = TestStore::new("hostchg-moveout");
    let dir = host.path();
    store.create("busy");
    store.start("busy");
    let pid = wait_for_watcher(&store, dir);
    let inside = store.root.join("fvm-test-moved");
    std::fs::create_dir(&inside).expect("a directory in the store");
    std::fs::create_dir(inside.join("sub")).expect("a subdirectory in the store");
    let ino = std::fs::metadata(&inside).expect("stat").ino();
    let sub = std::fs::metadata(inside.join("sub")).expect("stat").ino();
    write(&inside.join("first"), "own\n");
    write(&inside.join("sub").join("first"), "own\n");
    common::wait_until("the watcher has the kernel ignore the directories", || {
        ignore_marked(pid, ino) && ignore_marked(pid, sub)
    });
    std::fs::rename(&inside, dir.join("moved")).expect("move the directory out of the store");
    common::wait_until(
        "the watcher drops its ignore marks on the moved directories",
        || !ignore_marked(pid, ino) && !ignore_marked(pid, sub),
    );
    in_vm(
        &store,
        "busy",
        dir,
        "cat moved/first && test ! -e moved/later && test ! -e moved/sub/later",
    )
    .ok();
    write(&dir.join("moved").join("later"), "host\n");
    write(&dir.join("moved").join("sub").join("later"), "host\n");
    let made = Instant::now();
    Watch {
        store: &store,
        vm: "busy",
        dir,
        probe: "cat moved/later 2>/dev/null || echo missing",
        want: "host",
    }
    .shows("create in a directory moved out of the store", made);
    Watch {
        store: &store,
        vm: "busy",
        dir,
        probe: "cat moved/sub/later 2>/dev/null || echo missing",
        want: "host",
    }
    .shows(
        "create in a subdirectory of one moved out of the store",
        made,
    );
    store.assert_clean();
}

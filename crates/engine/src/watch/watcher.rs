//! The store's watcher: one process per store, alive while any of its VMs runs,
//! that makes host changes visible inside them (see the module above).
//!
//! It is started by the command that starts a VM (forked off and detached, so
//! no fvm command waits for it), and again by `list`, `stats`, `run` or `doctor`
//! if they find VMs running without it ([`Watcher::keep`]). It runs in
//! the host's namespaces and the starting command's cgroup, never a VM's. It
//! holds `STORE/watch.lock` for its life so there is never a second one, and
//! rescans the store when one of the VMs it knows exits (a pidfd each) or when a
//! new one starts (SIGHUP from the starter). It exits when no VM of the store
//! runs. It has no timer of its own: it sleeps in
//! `poll` until the kernel reports a change, a VM ends or a signal comes.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags};

use super::{Event, MASK};
use crate::mounts;
use crate::os::files::Lock;
use crate::os::procid::ProcId;
use crate::os::sys;
use crate::runtime::stop::InitHandle;
use crate::store::{Store, VmName};

/// How long the watcher gathers news of started VMs before it rescans the store.
const RESCAN_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// How long after a VM's init went the watcher looks whether a command cleaned
/// up after it (`fvm stop` does, firewall included); only if none did, it cleans
/// up itself: the VM's cgroup, its state and its firewall rules. At once would
/// make every bridged `stop` wait for the watcher's firewall rebuild before its
/// own.
const CLEANUP_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// How many times the watcher tries to clean up after an ended VM whose lock a
/// command holds (a command on the VM cleans up after it too) or whose cleanup
/// failed, CLEANUP_GRACE apart, before it leaves it to the next command on it.
const CLEANUP_TRIES: u32 = 40;

/// Add `gone` to the VMs to clean up after (in CLEANUP_GRACE from the first).
fn queue_cleanup(firewall: &mut Option<(Instant, Vec<VmName>)>, gone: Vec<VmName>) {
    if gone.is_empty() {
        return;
    }
    let list = &mut firewall
        .get_or_insert_with(|| (Instant::now() + CLEANUP_GRACE, Vec::new()))
        .1;
    for name in gone {
        if !list.contains(&name) {
            list.push(name);
        }
    }
}

/// After a cleanup of `done`: those `left` are tried again in CLEANUP_GRACE,
/// up to CLEANUP_TRIES times in all.
fn retry_cleanup(
    firewall: &mut Option<(Instant, Vec<VmName>)>,
    tries: &mut HashMap<VmName, u32>,
    done: &[VmName],
    left: Vec<VmName>,
) {
    for name in done {
        if !left.contains(name) {
            tries.remove(name);
        }
    }
    let mut again = Vec::new();
    for name in left {
        let t = tries.entry(name.clone()).or_insert(0);
        *t += 1;
        if *t < CLEANUP_TRIES {
            again.push(name);
        }
    }
    queue_cleanup(firewall, again);
}

/// `statfs` type of overlayfs.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

/// How many directories of the VMs' own (under the store, or a VM's `--dir`) a
/// group has the kernel ignore at most: past it, its ignore marks are dropped
/// and made again as events come, so a VM making directories without end costs
/// the kernel bounded memory and the watcher a constant per event.
const MAX_IGNORED_DIRS: usize = 8192;

/// What an ignore mark on a directory of the VMs' own drops: every watched event
/// of its entries, subdirectories included.
const IGNORED: u64 = MASK | libc::FAN_EVENT_ON_CHILD;

/// Directories moved into the host's tree that one read of the queue checks
/// for an ignore mark; past it, every mark is dropped without looking.
const MAX_MOVES_CHECKED: usize = 64;

/// How many directory handles a group remembers the verdict of at most (then it
/// forgets them all and starts again).
const MAX_KNOWN_DIRS: usize = 100_000;

/// A host filesystem under the VMs' overlays, watched as a whole.
struct Watched {
    group: OwnedFd,
    /// Any directory on it, for `open_by_handle_at`.
    mount: OwnedFd,
    /// Directory handle → whether changes in it concern the VMs.
    relevant: HashMap<Vec<u8>, bool>,
    /// Ignore marks added since the last flush (see [`MAX_IGNORED_DIRS`]).
    ignored: usize,
}

/// What the watcher counted since it started, written to `STORE/watch.stats` when
/// it gets SIGUSR1 (for tests and the benchmark: how much of the VMs' own
/// writing still reaches it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Returns from `poll`: each one a wakeup.
    pub wakeups: u64,
    /// Events read that concern the VMs (host changes, overflows).
    pub host_events: u64,
    /// Events read of the VMs' own directories (the kernel didn't ignore them yet).
    pub own_events: u64,
    /// Directories of the VMs' own the kernel has been told to ignore.
    pub ignored_dirs: u64,
    /// Invalidation passes (each over every running VM).
    pub invalidations: u64,
}

impl Stats {
    /// `key value` lines.
    pub fn render(&self) -> String {
        format!(
            "wakeups {}\nhost_events {}\nown_events {}\nignored_dirs {}\ninvalidations {}\n",
            self.wakeups, self.host_events, self.own_events, self.ignored_dirs, self.invalidations
        )
    }

    /// What [`Stats::render`] wrote; unknown lines are skipped, missing ones are 0.
    pub fn parse(text: &str) -> Stats {
        let mut s = Stats::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(Ok(value))) = (words.next(), words.next().map(str::parse)) else {
                continue;
            };
            match key {
                "wakeups" => s.wakeups = value,
                "host_events" => s.host_events = value,
                "own_events" => s.own_events = value,
                "ignored_dirs" => s.ignored_dirs = value,
                "invalidations" => s.invalidations = value,
                _ => {}
            }
        }
        s
    }
}

/// A running VM of the store.
struct Running {
    name: VmName,
    init: ProcId,
    handle: InitHandle,
    /// Where its overlays are mounted, read from its mount table at the first
    /// invalidation (a VM can't mount, so they stay where they are).
    overlays: std::cell::RefCell<Option<Vec<PathBuf>>>,
}

impl PartialEq for Running {
    fn eq(&self, other: &Running) -> bool {
        self.init == other.init
    }
}

/// What [`Watcher::health`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatcherHealth {
    /// No VM of the store runs: no watcher is needed.
    Idle,
    Running {
        pid: Option<i32>,
    },
    /// VMs ran without it; it was started again.
    Restarted {
        vms: usize,
    },
    /// VMs run without it and it could not be started.
    Failed(String),
}

/// What the watcher needs of its store's VMs.
pub trait StoreVms {
    /// The VMs of the store whose init runs now (checked, not just recorded).
    fn running(&self) -> Vec<(VmName, ProcId)>;
    /// The VMs whose state says they run while their init is gone: no command
    /// has cleaned up after them yet (a crash, or a start killed midway, whose
    /// init this watcher may never have seen run).
    fn ended(&self) -> Vec<VmName>;
    /// After VMs' inits went: clean up after each one no command has (its
    /// cgroup, state and firewall rules), as the next command on it would.
    /// Returns those it could not clean up now (a command holds the VM's lock,
    /// or the cleanup failed).
    fn clean_up_after_exit(&self, gone: &[VmName]) -> Vec<VmName>;
}

/// The watcher of one store.
pub struct Watcher<'a> {
    pub store: &'a Store,
    pub vms: &'a dyn StoreVms,
}

impl std::fmt::Debug for Watcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("store", &self.store.root())
            .finish()
    }
}

impl Watcher<'_> {
    fn watch_lock_path(&self) -> PathBuf {
        self.store.root().join("watch.lock")
    }

    fn watch_pid_path(&self) -> PathBuf {
        self.store.root().join("watch.pid")
    }

    /// Where the watcher writes its [`Stats`] when asked (SIGUSR1).
    pub fn stats_path(&self) -> PathBuf {
        self.store.root().join("watch.stats")
    }

    /// After a VM started: make sure the store's watcher runs and knows it.
    pub fn ensure(&self) {
        if let Err(e) = self.try_ensure() {
            tracing::warn!(
                "host changes may not show in running vms: cannot start the watcher: {e}"
            );
        }
    }

    fn try_ensure(&self) -> std::io::Result<()> {
        let lock = self.watch_lock_path();
        if Lock::try_exclusive(&lock)?.is_none() {
            // Running: tell it to pick up the new VM.
            if let Some(pid) = self.watcher_pid() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP);
            }
            return Ok(());
        }
        // Not running (the lock we just took and dropped says so).
        crate::os::detach::spawn_detached(c"fvm-watch", || self.run_watcher())
    }

    /// Whether the store's watcher runs (it holds its lock for its life).
    fn watcher_alive(&self) -> std::io::Result<bool> {
        Ok(Lock::try_exclusive(&self.watch_lock_path())?.is_none())
    }

    /// For commands that look at the store: if VMs of it run but its watcher
    /// doesn't (it was killed, or crashed), start it again, so that host changes
    /// reach the VMs again. Says so on stderr.
    pub fn keep(&self) {
        match self.health() {
            WatcherHealth::Restarted { vms } => tracing::warn!(
                "the store's watcher was not running while {vms} vm(s) ran (host changes did not reach them): restarted it"
            ),
            WatcherHealth::Failed(e) => tracing::warn!(
                "host changes may not show in running vms: cannot start the watcher: {e}"
            ),
            WatcherHealth::Idle | WatcherHealth::Running { .. } => {}
        }
    }

    /// The state of the store's watcher; a missing one is started again.
    pub fn health(&self) -> WatcherHealth {
        // The lock first: one flock, where counting the running VMs reads every
        // VM's state (a store may hold a thousand).
        match self.watcher_alive() {
            Ok(true) => {
                return WatcherHealth::Running {
                    pid: self.watcher_pid(),
                };
            }
            Ok(false) => {}
            Err(e) => return WatcherHealth::Failed(e.to_string()),
        }
        let vms = self.vms.running().len();
        if vms == 0 {
            return WatcherHealth::Idle;
        }
        match crate::os::detach::spawn_detached(c"fvm-watch", || self.run_watcher()) {
            Ok(()) => WatcherHealth::Restarted { vms },
            Err(e) => WatcherHealth::Failed(e.to_string()),
        }
    }

    /// The watcher process's work; returns its exit status.
    fn run_watcher(&self) -> i32 {
        // (Its arguments and environment are the starting command's and stay: it
        // runs nft, which needs PATH, and nothing in a VM can read them.)
        let code = match self.watch_loop() {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // Normally gone already (see `watch_loop`); after an error, only if it is
        // still this watcher's.
        if self.watcher_pid() == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(self.watch_pid_path());
        }
        code
    }

    fn write_pid_file(&self) -> std::io::Result<()> {
        crate::os::files::write_atomic(
            &self.watch_pid_path(),
            format!("{}\n", std::process::id()).as_bytes(),
            0o600,
        )
    }

    /// The pid in the store's watcher pid file, if it is a live `fvm-watch`
    /// (never signal a process the file names after its watcher has gone).
    fn watcher_pid(&self) -> Option<i32> {
        crate::os::procid::from_pid_file(&self.watch_pid_path(), "fvm-watch")
    }

    fn watch_loop(&self) -> std::io::Result<()> {
        let Some(mut lock) = Lock::try_exclusive(&self.watch_lock_path())? else {
            return Ok(());
        };
        // Signals first: a starter that reads the pid file sends SIGHUP at once,
        // whose default action would end this process.
        let set = sys::catch_and_block(&[
            Signal::SIGHUP,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
        ])?;
        let mut stats = Stats::default();
        self.write_pid_file()?;
        let signals = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        let mut watched: HashMap<u64, Watched> = HashMap::new();
        let mut pending: Option<Instant> = None;
        // After the groups woke it with nothing for the VMs (a VM writing its own
        // layer, in directories the kernel doesn't ignore yet): when to read them
        // again. Until then it doesn't listen, so such a burst wakes it a few
        // times a second, not at every file.
        let mut hold: Option<Instant> = None;
        // Invalidations left for the current batch of changes (see `super::PASSES`).
        let mut passes_left = 0;
        let mut known: Vec<Running> = Vec::new();
        // VMs whose init went, and when to check whether a command cleaned up after
        // them (see CLEANUP_GRACE).
        let mut firewall: Option<(Instant, Vec<VmName>)> = None;
        // Cleanups tried and left for later, by VM.
        let mut tries: HashMap<VmName, u32> = HashMap::new();
        let mut rescan_at: Option<Instant> = None;
        loop {
            let vms = self.running_vms();
            // A VM ended without a command that cleans up after it (its last process
            // ended after the `run` that started it, or its init crashed or was
            // killed, or its start was killed midway): its cgroup, state and
            // firewall rules are cleaned up now rather than at the next command
            // on it. Found from the VMs' states at every scan, not from the
            // inits this watcher saw run: a start tells the watcher before it
            // adds the VM's rules, and a scan after that finds the VM either
            // running (then its init's end wakes this loop) or ended.
            // A VM seen running again (started anew) starts its count afresh.
            tries.retain(|name, _| !vms.iter().any(|v| v.name == *name));
            let gone = self.ended_vms(&tries);
            queue_cleanup(&mut firewall, gone);
            if vms.is_empty() {
                while let Some((at, gone)) = firewall.take() {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let left = self.vms.clean_up_after_exit(&gone);
                    retry_cleanup(&mut firewall, &mut tries, &gone, left);
                }
                // A VM may start now: its command finds the lock taken and only
                // signals this watcher, which is on its way out. So let go of the
                // lock (and the pid file) first, then look once more: the new VM
                // is recorded as running before its command looks for a watcher
                // (and before it adds its firewall rules, so one whose start was
                // killed since is found ended).
                let _ = std::fs::remove_file(self.watch_pid_path());
                drop(lock);
                if self.running_vms().is_empty() && self.ended_vms(&tries).is_empty() {
                    return Ok(());
                }
                // One did start. Carry on, unless it started a watcher of its own.
                let Some(again) = Lock::try_exclusive(&self.watch_lock_path())? else {
                    return Ok(());
                };
                lock = again;
                self.write_pid_file()?;
                continue;
            }
            let private = self.store.private_paths();
            let marked = watched.len();
            self.watch_filesystems(&mut watched);
            // A new VM (or a new mark) may have looked something up before the
            // marks saw the change: one invalidation covers that window.
            if watched.len() != marked || vms.iter().any(|v| !known.contains(v)) {
                pending.get_or_insert_with(|| Instant::now() + super::SETTLE);
                passes_left = passes_left.max(1);
            }
            let devs: Vec<u64> = watched.keys().copied().collect();
            // Sleep until a change, a VM's end, a signal, or the next invalidation.
            // While one is due, the fanotify groups are left out: what they queue
            // meanwhile is read just before it, so a burst of changes costs a few
            // wake-ups, not one per change.
            loop {
                let listening = pending.is_none() && hold.is_none();
                let mut fds = vec![PollFd::new(&signals, PollFlags::IN)];
                let groups = if listening { devs.len() } else { 0 };
                fds.extend(
                    devs.iter()
                        .take(groups)
                        .map(|d| PollFd::new(&watched[d].group, PollFlags::IN)),
                );
                fds.extend(
                    vms.iter()
                        .map(|v| PollFd::new(v.handle.pidfd(), PollFlags::IN)),
                );
                let wake = [pending, hold, rescan_at, firewall.as_ref().map(|f| f.0)]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|at| {
                        let d = at.saturating_duration_since(Instant::now());
                        rustix::event::Timespec {
                            tv_sec: d.as_secs() as i64,
                            tv_nsec: i64::from(d.subsec_nanos()),
                        }
                    });
                match rustix::event::poll(&mut fds, wake.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                stats.wakeups += 1;
                let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
                drop(fds);
                let mut rescan = false;
                if ready[0] {
                    while let Ok(Some(info)) = signals.read_signal() {
                        match Signal::try_from(info.ssi_signo as i32) {
                            // New VMs: gathered, so a thousand starts in a row cost
                            // a few rescans of the store, not a thousand.
                            Ok(Signal::SIGHUP) => {
                                rescan_at.get_or_insert_with(|| Instant::now() + RESCAN_DELAY);
                            }
                            Ok(Signal::SIGUSR1) => {
                                let _ = crate::os::files::write_atomic(
                                    &self.stats_path(),
                                    stats.render().as_bytes(),
                                    0o600,
                                );
                            }
                            Ok(_) => return Ok(()),
                            Err(_) => {}
                        }
                    }
                }
                let now = Instant::now();
                let due = pending.is_some_and(|at| now >= at);
                let held = hold.is_some_and(|at| now >= at);
                if held {
                    hold = None;
                }
                // Read the queues when they woke us, when a hold ends, and before
                // every invalidation.
                let mut changed = false;
                let mut woke_any = false;
                for (i, dev) in devs.iter().enumerate() {
                    let woke = listening && ready[1 + i];
                    woke_any |= woke;
                    if (woke || due || held)
                        && let Some(w) = watched.get_mut(dev)
                        && drain(w, &private, &mut stats)
                    {
                        changed = true;
                    }
                }
                if woke_any && !changed && !due {
                    hold = Some(now + super::HOLD);
                }
                let due = due || (held && changed);
                if changed && !due {
                    // The first change of a burst: gather for SETTLE.
                    pending = Some(now + super::SETTLE);
                    passes_left = super::PASSES;
                } else if due {
                    if changed {
                        // Still changing: invalidate now and again in BURST, with the
                        // follow-up passes once it is quiet.
                        passes_left = super::PASSES;
                        pending = Some(now + super::BURST);
                    } else {
                        passes_left = passes_left.saturating_sub(1);
                        pending = (passes_left > 0).then(|| now + super::RETRY);
                    }
                    stats.invalidations += 1;
                    for vm in &vms {
                        invalidate(vm);
                    }
                }
                if ready[1 + groups..].iter().any(|r| *r) {
                    rescan = true;
                }
                if rescan_at.is_some_and(|at| Instant::now() >= at) {
                    rescan = true;
                }
                if firewall.as_ref().is_some_and(|f| Instant::now() >= f.0)
                    && let Some((_, gone)) = firewall.take()
                {
                    let left = self.vms.clean_up_after_exit(&gone);
                    retry_cleanup(&mut firewall, &mut tries, &gone, left);
                }
                if rescan {
                    rescan_at = None;
                    break;
                }
            }
            known = vms;
        }
    }

    /// The store's VMs that ended with no command cleaning up after them yet,
    /// but those whose cleanup was tried CLEANUP_TRIES times.
    fn ended_vms(&self, tries: &HashMap<VmName, u32>) -> Vec<VmName> {
        let mut ended = self.vms.ended();
        ended.retain(|name| tries.get(name).is_none_or(|t| *t < CLEANUP_TRIES));
        ended
    }

    /// The store's VMs whose init runs now, each with a handle on its init.
    fn running_vms(&self) -> Vec<Running> {
        self.vms
            .running()
            .into_iter()
            .filter_map(|(name, init)| {
                let handle = InitHandle::open(&init).ok()??;
                Some(Running {
                    name,
                    init,
                    handle,
                    overlays: std::cell::RefCell::new(None),
                })
            })
            .collect()
    }

    /// Add a fanotify group for each host filesystem the VMs overlay that has none
    /// yet. A filesystem that can't be watched (no file handles) is left out, and
    /// so is one mounted only inside the store or a VM's `--dir`.
    fn watch_filesystems(&self, watched: &mut HashMap<u64, Watched>) {
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let Ok(table) = mounts::mountinfo::parse(&text) else {
            return;
        };
        let private = self.store.private_paths();
        let Ok(plan) = mounts::plan::build(&table, &private, &|p: &Path| p.is_dir()) else {
            return;
        };
        for o in &plan.overlays {
            // A mount inside the store or a VM's `--dir` (the store on a filesystem
            // of its own) holds nothing but the VMs' own: its filesystem gets no
            // mark for it, so the kernel has nothing to check at the VMs' writes.
            if private.iter().any(|p| o.mount_point.starts_with(p)) {
                continue;
            }
            let Ok(st) = rustix::fs::stat(&o.mount_point) else {
                continue;
            };
            if watched.contains_key(&st.st_dev) {
                continue;
            }
            let added = (|| -> std::io::Result<Watched> {
                let group = sys::fanotify_dfid_name()?;
                let path = CString::new(o.mount_point.as_os_str().as_bytes())?;
                sys::fanotify_mark_filesystem(group.as_fd(), MASK, &path)?;
                // Not O_PATH: open_by_handle_at refuses those (EBADF).
                let mount = rustix::fs::open(
                    &o.mount_point,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )?;
                Ok(Watched {
                    group,
                    mount,
                    relevant: HashMap::new(),
                    ignored: 0,
                })
            })();
            match added {
                Ok(w) => {
                    watched.insert(st.st_dev, w);
                }
                Err(e) => tracing::debug!(mount = %o.mount_point.display(), %e, "not watched"),
            }
        }
    }
}

/// Read every queued event of one filesystem; true if any concerns the VMs
/// (not a change under the store or a VM's `--dir`, which are the VMs' own).
fn drain(w: &mut Watched, private: &[PathBuf], stats: &mut Stats) -> bool {
    let mut any = false;
    // Directories moved into the host's tree in this batch (see below).
    let mut moved_in: Vec<Event> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rustix::io::read(&w.group, &mut buf) {
            Ok(0) | Err(_) => {
                if moved_in.len() > MAX_MOVES_CHECKED || moved_in.iter().any(|e| was_own(w, e)) {
                    forget_own_dirs(w);
                }
                return any;
            }
            Ok(n) => n,
        };
        for event in super::parse(&buf[..n]) {
            // Every event is looked at, even after one that concerns the VMs:
            // each directory of the VMs' own it names is ignored from then on.
            let relevant = is_relevant(w, &event, private, stats);
            if relevant {
                stats.host_events += 1;
                // A directory moved into the host's tree (or anywhere the watcher
                // can't place) may be one of the VMs' own moved out of the store:
                // it and its subdirectories keep their ignore marks and verdicts.
                if event.mask & libc::FAN_MOVED_TO != 0
                    && event.mask & libc::FAN_ONDIR != 0
                    && moved_in.len() <= MAX_MOVES_CHECKED
                {
                    moved_in.push(event.clone());
                }
            } else {
                stats.own_events += 1;
            }
            any |= relevant;
        }
    }
}

/// Whether a change in the event's directory concerns the VMs. A directory of
/// the VMs' own is from then on ignored by the kernel (its entries' events are
/// dropped before they are queued: a VM writing its layer wakes nobody).
fn is_relevant(w: &mut Watched, event: &Event, private: &[PathBuf], stats: &mut Stats) -> bool {
    if event.handle.is_empty() {
        return true;
    }
    if let Some(r) = w.relevant.get(event.handle.as_slice()) {
        return *r;
    }
    let r = match sys::open_by_handle(w.mount.as_fd(), event.handle_type, &event.handle) {
        Ok(Some(fd)) => match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
            Ok(dir) => {
                let own = private.iter().any(|p| dir.starts_with(p));
                if own && ignore(w, fd.as_fd()) {
                    stats.ignored_dirs += 1;
                }
                !own
            }
            Err(_) => true,
        },
        // The directory is gone already: it can't be told apart; assume it matters.
        _ => true,
    };
    if w.relevant.len() >= MAX_KNOWN_DIRS {
        w.relevant.clear();
    }
    w.relevant.insert(event.handle.clone(), r);
    r
}

/// Whether the directory an event says was moved in had an ignore mark or a
/// verdict as one of the VMs' own (it came from the store or a VM's `--dir`);
/// the mark is removed. A directory that
/// can't be found any more was deleted (its marks went with it) or moved on
/// (which is another event, checked in its turn).
fn was_own(w: &Watched, moved: &Event) -> bool {
    let Ok(Some(parent)) = sys::open_by_handle(w.mount.as_fd(), moved.handle_type, &moved.handle)
    else {
        return false;
    };
    let Ok(dir) = rustix::fs::openat(
        &parent,
        std::ffi::OsStr::from_bytes(&moved.name),
        rustix::fs::OFlags::PATH
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return false;
    };
    let marked = match sys::fanotify_unignore_dir(w.group.as_fd(), IGNORED, dir.as_fd()) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() != Some(libc::ENOENT),
    };
    // One whose mark the kernel refused still has its verdict remembered.
    marked
        || std::ffi::CString::new(moved.name.clone()).is_ok_and(|name| {
            sys::file_handle(parent.as_fd(), &name)
                .is_ok_and(|(_, handle)| w.relevant.get(handle.as_slice()) == Some(&false))
        })
}

/// Drop every ignore mark and verdict of the group: after a directory of the
/// VMs' own moved into the host's tree, none of them can be trusted (its
/// subdirectories have marks too, and its handle a verdict). The VMs' own
/// directories are marked again at their next event.
fn forget_own_dirs(w: &mut Watched) {
    if sys::fanotify_flush_inode_marks(w.group.as_fd()).is_ok() {
        w.ignored = 0;
    }
    w.relevant.clear();
}

/// Have the kernel drop the events of a directory of the VMs' own. Past
/// [`MAX_IGNORED_DIRS`] the group's ignore marks are flushed first. A mark that
/// can't be added (the user's fanotify mark limit) leaves the directory to the
/// cache of verdicts. True if the mark was added.
fn ignore(w: &mut Watched, dir: std::os::fd::BorrowedFd<'_>) -> bool {
    if w.ignored >= MAX_IGNORED_DIRS {
        if sys::fanotify_flush_inode_marks(w.group.as_fd()).is_err() {
            return false;
        }
        w.ignored = 0;
    }
    let added = sys::fanotify_ignore_dir(w.group.as_fd(), IGNORED, dir).is_ok();
    w.ignored += usize::from(added);
    added
}

/// Drop the VM's cached overlay dentries: reconfigure each of its overlay
/// mounts, reached from the VM's root through /proc (the watcher never enters
/// the VM's namespace).
fn invalidate(vm: &Running) {
    let mut cached = vm.overlays.borrow_mut();
    let points = cached.get_or_insert_with(|| overlay_points(vm));
    // Fresh fds each time: holding the overlay roots open between invalidations
    // keeps later reconfigures from dropping anything (seen on this kernel).
    // Lookups from the VM's root follow the VM's mount tree.
    let Ok(root) = rustix::fs::open(
        format!("/proc/{}/root", vm.init.pid),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return;
    };
    if !vm.init.is_alive() {
        return;
    }
    for p in points.iter() {
        // The VM owns every directory on the way: no symlink may redirect this to
        // another mount (only the VM's own overlays are picked).
        let rel = p.strip_prefix("/").unwrap_or(p);
        let dir = if rel.as_os_str().is_empty() {
            rustix::io::dup(&root)
        } else {
            rustix::fs::openat2(
                &root,
                rel,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
                rustix::fs::ResolveFlags::BENEATH
                    | rustix::fs::ResolveFlags::NO_SYMLINKS
                    | rustix::fs::ResolveFlags::NO_MAGICLINKS,
            )
        };
        let Ok(dir) = dir else { continue };
        if !rustix::fs::fstatfs(&dir).is_ok_and(|s| s.f_type == OVERLAYFS_MAGIC) {
            continue;
        }
        if let Ok(fs) = rustix::mount::fspick(
            &dir,
            "",
            rustix::mount::FsPickFlags::FSPICK_CLOEXEC
                | rustix::mount::FsPickFlags::FSPICK_EMPTY_PATH
                | rustix::mount::FsPickFlags::FSPICK_NO_AUTOMOUNT,
        ) {
            let _ = rustix::mount::fsconfig_reconfigure(&fs);
        }
    }
}

/// Where the VM's overlays are mounted, as its mount table says.
fn overlay_points(vm: &Running) -> Vec<PathBuf> {
    mounts::mountinfo::mount_points_of(&vm.init, "overlay")
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn a_cleanup_left_for_later_is_tried_again_a_bounded_number_of_times() {
        use super::{CLEANUP_TRIES, VmName, queue_cleanup, retry_cleanup};
        let name = |n: &str| VmName::new(n).unwrap();
        let mut firewall = None;
        let mut tries = std::collections::HashMap::new();
        queue_cleanup(&mut firewall, vec![name("a"), name("b"), name("a")]);
        queue_cleanup(&mut firewall, vec![name("b")]);
        let (_, gone) = firewall.take().unwrap();
        assert_eq!(gone, [name("a"), name("b")]);
        // b's lock was held: b is tried again, a is done.
        retry_cleanup(&mut firewall, &mut tries, &gone, vec![name("b")]);
        assert_eq!(firewall.as_ref().unwrap().1, [name("b")]);
        assert!(!tries.contains_key(&name("a")));
        let mut rounds = 1;
        while let Some((_, gone)) = firewall.take() {
            retry_cleanup(&mut firewall, &mut tries, &gone, gone.clone());
            rounds += 1;
        }
        assert_eq!(rounds, CLEANUP_TRIES);
        assert_eq!(tries[&name("b")], CLEANUP_TRIES);
        // Done at last: its count goes.
        retry_cleanup(&mut firewall, &mut tries, &[name("b")], Vec::new());
        assert!(tries.is_empty() && firewall.is_none());
    }

    #[test]
    fn stats_read_back_what_they_wrote() {
        let s = Stats {
            wakeups: 7,
            host_events: 3,
            own_events: 2,
            ignored_dirs: 9,
            invalidations: 1,
        };
        assert_eq!(Stats::parse(&s.render()), s);
        assert_eq!(
            Stats::parse("wakeups 4\nnonsense\nown_events x\nfuture 5\n"),
            Stats {
                wakeups: 4,
                ..Stats::default()
            }
        );
    }
}

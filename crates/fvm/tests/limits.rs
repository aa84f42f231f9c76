//! Resource limits (docs/limits.md): the `[limits]` policy of a VM, set by `create` and
//! `config`, enforced by the VM's cgroup and by per-process rlimits, and visible
//! inside the VM where users look for them.
//!
//! What a user would check: a fork bomb stops at the process limit, a memory hog is
//! OOM-killed while the rest of the VM goes on, a busy loop gets half a core under
//! `cpus = 0.5`, `cpu-time` ends a busy loop, `process-memory` makes a big
//! allocation fail, `timeout` stops the VM, a limit raised on a running VM applies
//! at once, `/proc/self/limits` and the VM's own read-only `/sys/fs/cgroup` show the
//! limits, and bad values are refused without touching the policy file.
//!
//! The VM's view of its cgroup is checked by version: a `cgroup.controllers` file in
//! the VM's `/sys/fs/cgroup` means cgroup v2, otherwise v1 (one directory per
//! controller hierarchy). The few bounds on time below are functional windows the
//! contract gives (a 3 s timeout, half a core), kept generous; none is about speed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{
    COMMAND_TIMEOUT, Out, TestStore, WAIT, cgroup_dirs_matching, is_alive_as, needs_root, python,
    try_run,
};
use serde_json::Value;

// ---------------------------------------------------------------------------
// helpers

/// Tests that burn CPU on purpose (the fork bomb, the busy loops) take turns, so
/// that the `cpus` test measures its cap and not another test's load.
static CPU_HEAVY: Mutex<()> = Mutex::new(());

fn cpu_heavy() -> MutexGuard<'static, ()> {
    CPU_HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// `fvm config NAME FLAGS…` (not asserting anything).
fn config(store: &TestStore, name: &str, flags: &[&str]) -> Out {
    let mut args = vec!["config", name];
    args.extend_from_slice(flags);
    store.fvm(&args)
}

/// `fvm run NAME -- ARGV…`.
fn run_in(store: &TestStore, name: &str, argv: &[&str]) -> Out {
    let mut args = vec!["run", name, "--"];
    args.extend_from_slice(argv);
    store.fvm(&args)
}

/// `fvm run NAME -- python3 -c SCRIPT`.
fn py(store: &TestStore, name: &str, script: &str) -> Out {
    run_in(store, name, &[python(), "-c", script])
}

/// A python script that allocates (and touches) `mib` MiB and prints its size.
fn alloc(mib: u64) -> String {
    format!("b = bytearray({mib} * 1024 * 1024); print(len(b))")
}

/// The VM's usage object from `fvm --json stats NAME`.
#[track_caller]
fn usage(store: &TestStore, name: &str) -> Value {
    let out = store.fvm(&["--json", "stats", name]).ok();
    let vms: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stats --json: not JSON ({e}):\n{out}"));
    vms.as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("stats --json has no {name}:\n{out}"))["usage"]
        .clone()
}

/// A number of the VM's usage (e.g. "cpu_ns"), asserting it is there.
#[track_caller]
fn usage_of(store: &TestStore, name: &str, key: &str) -> u64 {
    let u = usage(store, name);
    u[key]
        .as_u64()
        .unwrap_or_else(|| panic!("usage of {name} has no {key}:\n{u:#}"))
}

/// The host pid of the VM process whose command line is `command` (`fvm ps`).
#[track_caller]
fn host_pid_of(store: &TestStore, name: &str, command: &str) -> i32 {
    let out = store.fvm(&["--json", "ps", name]).ok();
    let procs: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ps --json: not JSON ({e}):\n{out}"));
    procs
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["command"] == command)
        .and_then(|p| p["host_pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no {command:?} in vm {name}:\n{out}"))
}

/// Start `sleep SECONDS` in the background of a running VM; returns its host pid.
#[track_caller]
fn background_sleep(store: &TestStore, name: &str, seconds: u32) -> i32 {
    store
        .sh(name, &format!("nohup sleep {seconds} >/dev/null 2>&1 &"))
        .ok();
    host_pid_of(store, name, &format!("sleep {seconds}"))
}

/// The leaf name of the VM's cgroup dirs (`fvm-<store id>-<vm>`), from `inspect`.
#[track_caller]
fn cgroup_leaf(store: &TestStore, name: &str) -> String {
    store
        .cgroup_dir(name, "pids")
        .file_name()
        .and_then(|l| l.to_str())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("vm {name} has no cgroup dir"))
}

/// The cgroup version a VM sees under its `/sys/fs/cgroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    V1,
    V2,
}

impl View {
    /// A control file under the VM's `/sys/fs/cgroup`: `(v1 path, v2 path)`.
    fn path(self, file: (&str, &str)) -> String {
        match self {
            View::V1 => format!("/sys/fs/cgroup/{}", file.0),
            View::V2 => format!("/sys/fs/cgroup/{}", file.1),
        }
    }
}

const MEMORY_MAX: (&str, &str) = ("memory/memory.limit_in_bytes", "memory.max");
/// v1: memory + swap together; v2: swap alone.
const SWAP_MAX: (&str, &str) = ("memory/memory.memsw.limit_in_bytes", "memory.swap.max");
const PIDS_MAX: (&str, &str) = ("pids/pids.max", "pids.max");
const CPU_WEIGHT: (&str, &str) = ("cpu/cpu.shares", "cpu.weight");

/// Which cgroup version the (running or not) VM sees.
#[track_caller]
fn view(store: &TestStore, name: &str) -> View {
    let out = store
        .sh(
            name,
            "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then echo v2; else echo v1; fi",
        )
        .ok();
    match out.out() {
        "v2" => View::V2,
        _ => View::V1,
    }
}

/// A file as the VM sees it (`cat` inside), trimmed; asserting it can be read.
#[track_caller]
fn read_inside(store: &TestStore, name: &str, path: &str) -> String {
    let out = run_in(store, name, &["cat", path]);
    assert_eq!(out.code, 0, "vm {name} cannot read {path}:\n{out}");
    out.out().to_owned()
}

/// A cgroup control file as the VM sees it.
#[track_caller]
fn cgroup_inside(store: &TestStore, name: &str, view: View, file: (&str, &str)) -> String {
    read_inside(store, name, &view.path(file))
}

/// Like [`cgroup_inside`] for a file the kernel may not offer (v1 without swap
/// accounting, v2 without swap): `None` when the VM has no such file.
#[track_caller]
fn cgroup_inside_if_any(
    store: &TestStore,
    name: &str,
    view: View,
    file: (&str, &str),
) -> Option<String> {
    let path = view.path(file);
    let out = run_in(
        store,
        name,
        &["sh", "-c", "[ -e \"$0\" ] || exit 3; cat \"$0\"", &path],
    );
    match out.code {
        0 => Some(out.out().to_owned()),
        3 => None,
        _ => panic!("vm {name} cannot read {path}:\n{out}"),
    }
}

/// The VM's CPU cap as `(quota, period)` in microseconds, as the VM sees it.
#[track_caller]
fn cpu_quota_inside(store: &TestStore, name: &str, view: View) -> (String, String) {
    match view {
        View::V1 => (
            read_inside(store, name, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
            read_inside(store, name, "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
        ),
        View::V2 => {
            let max = read_inside(store, name, "/sys/fs/cgroup/cpu.max");
            let (quota, period) = max
                .split_once(' ')
                .unwrap_or_else(|| panic!("cpu.max of {name} is {max:?}"));
            (quota.to_owned(), period.to_owned())
        }
    }
}

/// True when a memory limit read from a cgroup file means "no limit" (v2 `max`,
/// v1 the page-counter maximum).
fn unlimited(value: &str) -> bool {
    value == "max" || value.parse::<u64>().is_ok_and(|v| v >= 1 << 60)
}

/// `/proc/self/limits` of a new process in the VM.
#[track_caller]
fn limits_inside(store: &TestStore, name: &str) -> String {
    run_in(store, name, &["cat", "/proc/self/limits"])
        .ok()
        .stdout
}

/// `(soft, hard)` of one line of a `/proc/PID/limits` text, e.g. "Max open files".
#[track_caller]
fn rlimit(limits: &str, what: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(what))
        .unwrap_or_else(|| panic!("no {what:?} in\n{limits}"));
    let mut fields = line[what.len()..].split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(soft), Some(hard)) => (soft.to_owned(), hard.to_owned()),
        _ => panic!("cannot read {what:?} from {line:?}"),
    }
}

/// Shorthand for expected `(soft, hard)` pairs.
fn pair(soft: &str, hard: &str) -> (String, String) {
    (soft.to_owned(), hard.to_owned())
}

/// The `[limits]` table of a policy text: key → value as written (`"64M"`, `64`).
/// Comments and other tables are skipped.
fn limits_table(policy: &str) -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    let mut in_limits = false;
    for line in policy.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            in_limits = line == "[limits]";
            continue;
        }
        if let (true, Some((key, value))) = (in_limits, line.split_once('=')) {
            // (None of the values tested holds a '#'.)
            let value = value.split('#').next().unwrap_or_default().trim();
            table.insert(key.trim().trim_matches('"').to_owned(), value.to_owned());
        }
    }
    table
}

/// The VM's policy file, as bytes.
fn policy_bytes(store: &TestStore, name: &str) -> Vec<u8> {
    let path = store.root.join("vms").join(name).join("vm.toml");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Assert that the VM's policy file still holds `before`, byte for byte.
#[track_caller]
fn assert_policy_unchanged(store: &TestStore, name: &str, before: &[u8], what: &str) {
    let after = policy_bytes(store, name);
    assert!(
        before == after.as_slice(),
        "{what} changed {name}'s vm.toml:\n--- before ---\n{}\n--- after ---\n{}",
        String::from_utf8_lossy(before),
        String::from_utf8_lossy(&after)
    );
}

/// The `[limits]` table of the VM's policy file.
fn policy_limits(store: &TestStore, name: &str) -> BTreeMap<String, String> {
    limits_table(&String::from_utf8_lossy(&policy_bytes(store, name)))
}

/// Assert fvm's own failure: status 125 and one line on stderr starting with
/// `fvm: ` that names the setting or the value at fault.
#[track_caller]
fn assert_refused(out: &Out, key: &str, value: &str) {
    assert_eq!(out.code, 125, "`{}` was not refused:\n{out}", out.what);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error expected:\n{out}");
    assert!(lines[0].starts_with("fvm: "), "{out}");
    let line = lines[0];
    assert!(
        line.contains(key) || line.contains(&key.replace('-', " ")) || line.contains(value),
        "the error should name {key:?} or {value:?}:\n{out}"
    );
}

/// Poll the VM's status until it is `want`, at most `within`; returns when.
#[track_caller]
fn wait_status(store: &TestStore, name: &str, want: &str, within: Duration) -> Instant {
    let start = Instant::now();
    loop {
        if store.status(name) == want {
            return Instant::now();
        }
        assert!(
            start.elapsed() < within,
            "vm {name} was not {want} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// cgroup limits

/// Forks children that sleep, ignoring fork errors and trying again, for a minute:
/// steady pressure on the process limit without burning CPU.
const FORKER: &str = r"
import os, time
end = time.monotonic() + 60
while time.monotonic() < end:
    try:
        pid = os.fork()
    except OSError:
        time.sleep(0.005)
        continue
    if pid == 0:
        time.sleep(120)
        os._exit(0)
";

#[test]
fn a_fork_bomb_stops_at_the_process_limit() {
    if !needs_root("a_fork_bomb_stops_at_the_process_limit") {
        return;
    }
    let _cpu = cpu_heavy();
    let store = TestStore::new("forkbomb");
    store.create_with("bomb", &["--processes", "64"]);
    store.create_with("calm", &[]);
    store.start("bomb");
    let leaf = cgroup_leaf(&store, "bomb");
    let pids_current = store.cgroup_dir("bomb", "pids").join("pids.current");
    store
        .fvm(&[
            "run",
            "bomb",
            "--",
            "sh",
            "-c",
            "nohup \"$0\" -c \"$1\" >/dev/null 2>&1 &",
            python(),
            FORKER,
        ])
        .ok();

    // Watch from the host: the count climbs to the limit and never past it.
    let read = || -> u64 {
        std::fs::read_to_string(&pids_current)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot read {}", pids_current.display()))
    };
    let mut most = 0;
    let start = Instant::now();
    while most < 60 {
        most = most.max(read());
        assert!(most <= 64, "vm bomb has {most} processes, over its 64");
        assert!(
            start.elapsed() < WAIT,
            "the fork bomb got only to {most} processes (limit 64)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The bomb keeps trying; the limit keeps holding.
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(2) {
        let now = read();
        assert!(now <= 64, "vm bomb has {now} processes, over its 64");
        std::thread::sleep(Duration::from_millis(10));
    }
    let counted = usage_of(&store, "bomb", "processes");
    assert!(
        (60..=64).contains(&counted),
        "fvm stats counts {counted} processes in vm bomb (limit 64)"
    );

    // Neither the host nor another VM is short of processes.
    common::sh("true").ok();
    run_in(&store, "calm", &["true"]).ok();
    assert_eq!(store.status("bomb"), "running");

    store.stop("bomb");
    assert_eq!(store.status("bomb"), "stopped");
    let left = cgroup_dirs_matching(&leaf);
    assert!(left.is_empty(), "cgroup dirs left after stop: {left:?}");
    store.assert_clean();
}

#[test]
fn a_memory_hog_is_oom_killed_and_the_rest_of_the_vm_goes_on() {
    if !needs_root("a_memory_hog_is_oom_killed_and_the_rest_of_the_vm_goes_on") {
        return;
    }
    let store = TestStore::new("oom");
    store.create_with("hog", &["--memory", "64M"]);
    store.create_with("other", &[]);
    store.start("hog");
    store.start("other");
    let hog_init = store.init_pid("hog");
    let hog_sleep = background_sleep(&store, "hog", 1001);
    let other_sleep = background_sleep(&store, "other", 1002);
    let host_sleep = common::spawn_host(&["sleep", "1003"]);

    let out = py(&store, "hog", &alloc(256));
    assert_eq!(
        out.code, 137,
        "a 256M allocation under a 64M limit should be OOM-killed:\n{out}"
    );

    // Only the hog died: the VM, its other process, the other VM and the host go on.
    assert_eq!(store.status("hog"), "running");
    assert_eq!(store.init_pid("hog"), hog_init, "the vm's init changed");
    assert!(
        is_alive_as(hog_sleep, "sleep"),
        "the oom kill took the vm's sleep"
    );
    assert!(
        is_alive_as(other_sleep, "sleep"),
        "the oom kill reached another vm"
    );
    assert!(
        is_alive_as(host_sleep.pid(), "sleep"),
        "the oom kill reached the host"
    );
    run_in(&store, "hog", &["true"]).ok();
    // The other VM has no such limit.
    let out = py(&store, "other", &alloc(128)).ok();
    assert_eq!(out.out(), (128u64 << 20).to_string(), "{out}");

    // The kill is counted, in stats and inspect, for that VM only.
    let kills = usage_of(&store, "hog", "oom_kills");
    assert!(kills >= 1, "stats of hog count {kills} oom kills");
    let inspected = store.inspect("hog");
    assert!(
        inspected["usage"]["oom_kills"].as_u64() >= Some(1),
        "inspect of hog:\n{inspected:#}"
    );
    assert_eq!(usage_of(&store, "other", "oom_kills"), 0);

    store.stop("hog");
    store.stop("other");
    store.assert_clean();
}

/// `nr_throttled` of the VM's `cpu.stat`: how many periods it ran out of quota.
#[track_caller]
fn throttled(store: &TestStore, name: &str, view: View) -> u64 {
    let stat = cgroup_inside(store, name, view, ("cpu/cpu.stat", "cpu.stat"));
    stat.lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no nr_throttled in cpu.stat of {name}:\n{stat}"))
}

/// What load on the host can't change: over any stretch of time, a busy loop
/// under `cpus = 0.5` gets at most half a core (plus at most one period's quota
/// at either end), and it runs and is throttled. No lower bound on its share: a
/// busy host can starve it; its high weight only makes the cap the limit that
/// bites, so that throttling shows.
#[test]
fn a_cpus_cap_holds_a_busy_loop_to_half_a_core() {
    if !needs_root("a_cpus_cap_holds_a_busy_loop_to_half_a_core") {
        return;
    }
    let _cpu = cpu_heavy();
    let store = TestStore::new("cpus");
    store.create_with("half", &["--cpus", "0.5", "--cpu-weight", "10000"]);
    store.start("half");
    let view = view(&store, "half");
    let (quota, period) = cpu_quota_inside(&store, "half", view);
    assert_eq!((quota.as_str(), period.as_str()), ("50000", "100000"));
    store
        .sh(
            "half",
            "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &",
        )
        .ok();
    let cpu_ns = || usage_of(&store, "half", "cpu_ns");
    let started = cpu_ns();
    common::wait_until("the busy loop runs", || cpu_ns() > started + 50_000_000);

    // The window is the longest the readings could span: from before the first
    // stats command to after the second (the sleep only makes it long enough
    // that a period's quota at its ends is small beside it).
    let first = Instant::now();
    let cpu0 = cpu_ns();
    std::thread::sleep(Duration::from_secs(4));
    let cpu1 = cpu_ns();
    let window = first.elapsed().as_secs_f64();
    let used = cpu1.saturating_sub(cpu0) as f64 / 1e9;
    let most = 0.5 * window + 2.0 * 0.05;
    assert!(
        used <= most,
        "a busy loop under cpus = 0.5 used {used:.3} s of CPU in at most {window:.2} s \
         (the cap allows {most:.3} s)"
    );
    assert!(used > 0.0, "the busy loop got no CPU in {window:.2} s");
    common::wait_until("the busy loop is throttled", || {
        throttled(&store, "half", view) > 0
    });

    store.stop("half");
    store.assert_clean();
}

#[test]
fn raising_the_memory_limit_of_a_running_vm_applies_at_once() {
    if !needs_root("raising_the_memory_limit_of_a_running_vm_applies_at_once") {
        return;
    }
    let store = TestStore::new("raise");
    store.create_with("grow", &["--memory", "64M"]);
    store.start("grow");
    let init = store.init_pid("grow");
    let view = view(&store, "grow");
    assert_eq!(cgroup_inside(&store, "grow", view, MEMORY_MAX), "67108864");

    let out = py(&store, "grow", &alloc(150));
    assert_eq!(
        out.code, 137,
        "150M under a 64M limit should be OOM-killed:\n{out}"
    );

    // (A note on stderr is allowed.)
    config(&store, "grow", &["--memory", "512M"]).ok();
    assert_eq!(store.init_pid("grow"), init, "config restarted the vm");
    assert_eq!(
        policy_limits(&store, "grow")
            .get("memory")
            .map(String::as_str),
        Some("\"512M\"")
    );
    let out = py(&store, "grow", &alloc(150)).ok();
    assert_eq!(out.out(), (150u64 << 20).to_string(), "{out}");
    assert_eq!(cgroup_inside(&store, "grow", view, MEMORY_MAX), "536870912");
    // No swap was given: v1's memory+swap equals memory, v2's swap is 0.
    if let Some(swap) = cgroup_inside_if_any(&store, "grow", view, SWAP_MAX) {
        let want = match view {
            View::V1 => "536870912",
            View::V2 => "0",
        };
        assert_eq!(swap, want, "swap limit of grow ({view:?})");
    }

    store.stop("grow");
    store.assert_clean();
}

#[test]
fn swap_is_allowed_on_top_of_memory() {
    if !needs_root("swap_is_allowed_on_top_of_memory") {
        return;
    }
    let store = TestStore::new("swap");
    store.create_with("swapped", &["--memory", "64M", "--swap", "32M"]);
    store.start("swapped");
    let view = view(&store, "swapped");
    assert_eq!(
        cgroup_inside(&store, "swapped", view, MEMORY_MAX),
        "67108864"
    );
    // A kernel without swap accounting has no file to show (nothing to check).
    if let Some(swap) = cgroup_inside_if_any(&store, "swapped", view, SWAP_MAX) {
        let want = match view {
            View::V1 => "100663296", // 64M + 32M
            View::V2 => "33554432",
        };
        assert_eq!(swap, want, "swap limit of swapped ({view:?})");
    }
    store.stop("swapped");
    store.assert_clean();
}

#[test]
fn priority_and_cpu_weight_set_the_cgroup_weight_and_nice() {
    if !needs_root("priority_and_cpu_weight_set_the_cgroup_weight_and_nice") {
        return;
    }
    let store = TestStore::new("priority");
    // low = weight 25 and nice 10; v1 shares are weight * 1024 / 100.
    store.create_with("lowp", &["--priority", "low"]);
    store.start("lowp");
    let view = view(&store, "lowp");
    let weight = |name: &str| cgroup_inside(&store, name, view, CPU_WEIGHT);
    let nice = |name: &str| run_in(&store, name, &["nice"]).ok().out().to_owned();
    let (low, high, fifty) = match view {
        View::V1 => ("256", "4096", "512"),
        View::V2 => ("25", "400", "50"),
    };
    assert_eq!(weight("lowp"), low);
    assert_eq!(nice("lowp"), "10");

    // high = weight 400 (at once) and nice -5 (for processes started afterwards).
    let out = config(&store, "lowp", &["--priority", "high"]).ok();
    assert!(
        !out.stderr.trim().is_empty(),
        "config of a running vm's priority should note that nice applies to new processes:\n{out}"
    );
    assert_eq!(weight("lowp"), high);
    assert_eq!(nice("lowp"), "-5");

    // An explicit weight, without a priority: nice stays 0.
    store.create_with("w50", &["--cpu-weight", "50"]);
    store.start("w50");
    assert_eq!(weight("w50"), fifty);
    assert_eq!(nice("w50"), "0");

    store.stop("lowp");
    store.stop("w50");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// per-process limits

#[test]
fn cpu_time_ends_a_busy_loop() {
    if !needs_root("cpu_time_ends_a_busy_loop") {
        return;
    }
    let _cpu = cpu_heavy();
    let store = TestStore::new("cputime");
    store.create_with("burn", &["--cpu-time", "2"]);
    let start = Instant::now();
    let out = try_run(
        store.command(&["run", "burn", "--", "sh", "-c", "while :; do :; done"]),
        None,
        COMMAND_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("a busy loop under cpu-time = 2 s went on: {e}"));
    let took = start.elapsed();
    // SIGXCPU at the soft limit (128+24), or SIGKILL at the hard one (128+9).
    assert!(
        out.code == 152 || out.code == 137,
        "the busy loop should end by SIGXCPU or SIGKILL:\n{out}"
    );
    // It can't have used its 2 s of CPU in less wall time than that.
    assert!(
        took >= Duration::from_millis(1500),
        "the busy loop ended after {took:?}, before its 2 s of CPU:\n{out}"
    );
    store.assert_clean();
}

#[test]
fn process_memory_caps_the_address_space_of_each_process() {
    if !needs_root("process_memory_caps_the_address_space_of_each_process") {
        return;
    }
    let store = TestStore::new("procmem");
    store.create_with("pm", &["--process-memory", "100M"]);
    let out = py(&store, "pm", "bytearray(200 * 1024 * 1024)");
    assert_ne!(out.code, 0, "200M under a 100M address-space cap:\n{out}");
    assert!(out.stderr.contains("MemoryError"), "{out}");
    let out = py(&store, "pm", &alloc(20)).ok();
    assert_eq!(out.out(), (20u64 << 20).to_string(), "{out}");
    // It is per process, not for the VM: two processes side by side, each holding
    // 60M for a second, are fine. ($0 is python, $1 the script.)
    let both = "\"$0\" -c \"$1\" & \"$0\" -c \"$1\"; s=$?; wait $! && exit $s";
    let hold = format!("{}; import time; time.sleep(1)", alloc(60));
    let out = run_in(&store, "pm", &["sh", "-c", both, python(), &hold]).ok();
    assert_eq!(out.stdout.lines().count(), 2, "{out}");
    store.assert_clean();
}

#[test]
fn changed_rlimits_apply_to_processes_started_afterwards() {
    if !needs_root("changed_rlimits_apply_to_processes_started_afterwards") {
        return;
    }
    let store = TestStore::new("rlimits");
    store.create_with("fds", &["--open-files", "256", "--cpu-time", "100"]);
    store.start("fds");
    let before = background_sleep(&store, "fds", 1004);

    let out = config(&store, "fds", &["--open-files", "512", "--cpu-time", "200"]).ok();
    assert!(
        !out.stderr.trim().is_empty(),
        "config should note that rlimits apply to processes started afterwards:\n{out}"
    );
    assert!(
        out.stdout.contains("open-files: 256 → 512"),
        "config prints what changed:\n{out}"
    );
    let table = policy_limits(&store, "fds");
    assert_eq!(table.get("open-files").map(String::as_str), Some("512"));
    // New processes get the new limits…
    let limits = limits_inside(&store, "fds");
    assert_eq!(rlimit(&limits, "Max open files"), pair("512", "512"));
    assert_eq!(rlimit(&limits, "Max cpu time"), pair("200", "201"));
    // …and the one already running keeps its own.
    let old = std::fs::read_to_string(format!("/proc/{before}/limits")).unwrap();
    assert_eq!(rlimit(&old, "Max open files"), pair("256", "256"));
    assert_eq!(rlimit(&old, "Max cpu time"), pair("100", "101"));

    store.stop("fds");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// timeout

#[test]
fn timeout_stops_the_vm_and_not_before_its_time() {
    if !needs_root("timeout_stops_the_vm_and_not_before_its_time") {
        return;
    }
    let store = TestStore::new("timeout");
    store.create_with("brief", &["--timeout", "3s"]);

    // A started VM is stopped, and not before its 3 s (counted from start's
    // invocation, before the VM started; the time it started is kept in whole
    // seconds). No upper bound but the wait's: without the timeout the VM would
    // run on, and a loaded host may stop it late.
    let invoked = Instant::now();
    store.start("brief");
    let stopped = wait_status(&store, "brief", "stopped", COMMAND_TIMEOUT);
    let after_invoke = stopped - invoked;
    assert!(
        after_invoke >= Duration::from_millis(2500),
        "the vm stopped {after_invoke:?} after start was invoked (timeout 3 s)"
    );

    // A VM started by a run: the run's command ends with the VM, long before its
    // 1000 s.
    let invoked = Instant::now();
    let out = try_run(
        store.command(&["run", "brief", "--", "sleep", "1000"]),
        None,
        COMMAND_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("the timeout did not end the run: {e}"));
    let took = invoked.elapsed();
    assert_ne!(out.code, 0, "sleep 1000 should not end normally:\n{out}");
    assert!(
        took >= Duration::from_millis(2500),
        "a run in a vm with timeout 3 s took {took:?}:\n{out}"
    );
    wait_status(&store, "brief", "stopped", WAIT);
    store.assert_clean();
}

#[test]
fn a_new_timeout_reaches_a_running_vm() {
    if !needs_root("a_new_timeout_reaches_a_running_vm") {
        return;
    }
    let store = TestStore::new("retime");
    store.create_with("long", &["--timeout", "1h"]);
    let started = Instant::now();
    store.start("long");
    // Shortened: the VM stops about 4 s after it started, not in an hour.
    let out = config(&store, "long", &["--timeout", "4s"]).ok();
    assert!(
        out.stderr.contains("timeout"),
        "config said nothing:\n{out}"
    );
    // (No upper bound but the wait's: the hour it had before is far beyond it.)
    let stopped = wait_status(&store, "long", "stopped", COMMAND_TIMEOUT);
    let took = stopped - started;
    assert!(
        took >= Duration::from_millis(3500),
        "timeout changed to 4 s on a running vm: stopped after {took:?}"
    );
    // Removed: a VM started with a 3 s timeout runs on past it. How long to
    // watch: until a VM started after it with the same timeout, kept, has been
    // stopped by it (load delays both alike).
    config(&store, "long", &["--timeout", "3s"]).ok();
    store.create_with("witness", &["--timeout", "3s"]);
    store.start("long");
    store.start("witness");
    config(&store, "long", &["--timeout", "none"]).ok();
    wait_status(&store, "witness", "stopped", COMMAND_TIMEOUT);
    assert_eq!(
        store.status("long"),
        "running",
        "the removed timeout still stopped the vm"
    );
    store.stop("long");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// the VM's view

#[test]
fn a_vm_sees_its_limits_in_proc_and_in_its_read_only_cgroup() {
    if !needs_root("a_vm_sees_its_limits_in_proc_and_in_its_read_only_cgroup") {
        return;
    }
    let store = TestStore::new("seen");
    store.create_with(
        "seen",
        &[
            "--memory",
            "64M",
            "--processes",
            "64",
            "--cpus",
            "0.5",
            "--process-memory",
            "100M",
            "--cpu-time",
            "2",
            "--open-files",
            "256",
        ],
    );
    store.start("seen");

    let limits = limits_inside(&store, "seen");
    assert_eq!(rlimit(&limits, "Max cpu time"), pair("2", "3"));
    assert_eq!(rlimit(&limits, "Max open files"), pair("256", "256"));
    assert_eq!(
        rlimit(&limits, "Max address space"),
        pair("104857600", "104857600")
    );

    let view = view(&store, "seen");
    assert_eq!(cgroup_inside(&store, "seen", view, MEMORY_MAX), "67108864");
    assert_eq!(cgroup_inside(&store, "seen", view, PIDS_MAX), "64");
    assert_eq!(
        cpu_quota_inside(&store, "seen", view),
        pair("50000", "100000")
    );
    // Read-only: neither a new file nor a raised limit.
    let pids_max = view.path(PIDS_MAX);
    for script in [
        "touch /sys/fs/cgroup/x".to_owned(),
        format!("echo 1000 > {pids_max}"),
    ] {
        let out = store.sh("seen", &script);
        assert_ne!(out.code, 0, "`{script}` worked in the vm:\n{out}");
        assert!(
            out.stderr.contains("Read-only file system"),
            "`{script}` should fail on a read-only file system:\n{out}"
        );
    }
    assert_eq!(cgroup_inside(&store, "seen", view, PIDS_MAX), "64");

    store.stop("seen");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// the policy: values, the file, `none`

#[test]
fn the_policy_file_records_the_limits() {
    if !needs_root("the_policy_file_records_the_limits") {
        return;
    }
    let store = TestStore::new("policy");
    store.create_with(
        "pol",
        &[
            "--memory",
            "64M",
            "--swap",
            "0",
            "--processes",
            "64",
            "--cpus",
            "0.5",
            "--cpu-time",
            "2s",
            "--timeout",
            "3s",
            "--process-memory",
            "100M",
            "--open-files",
            "256",
            "--priority",
            "low",
            "--cpu-weight",
            "50",
        ],
    );
    let want: BTreeMap<String, String> = [
        ("memory", "\"64M\""),
        ("swap", "\"0\""),
        ("processes", "64"),
        ("cpus", "0.5"),
        ("cpu-time", "\"2s\""),
        ("timeout", "\"3s\""),
        ("process-memory", "\"100M\""),
        ("open-files", "256"),
        ("priority", "\"low\""),
        ("cpu-weight", "50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(policy_limits(&store, "pol"), want);
    // `config` with no flags shows the same policy.
    let out = config(&store, "pol", &[]).ok();
    assert_eq!(limits_table(&out.stdout), want, "{out}");
    store.assert_clean();
}

#[test]
fn config_none_removes_a_limit() {
    if !needs_root("config_none_removes_a_limit") {
        return;
    }
    let store = TestStore::new("none");
    store.create_with(
        "loose",
        &[
            "--memory",
            "64M",
            "--processes",
            "64",
            "--open-files",
            "256",
        ],
    );
    let out = config(&store, "loose", &["--memory", "none"]).ok();
    assert_eq!(
        out.out(),
        "memory: 64M → none",
        "config prints what changed"
    );
    let table = policy_limits(&store, "loose");
    assert!(!table.contains_key("memory"), "{table:?}\n{out}");
    assert_eq!(table.get("processes").map(String::as_str), Some("64"));
    assert_eq!(table.get("open-files").map(String::as_str), Some("256"));
    config(
        &store,
        "loose",
        &["--processes", "none", "--open-files", "none"],
    )
    .ok();
    let table = policy_limits(&store, "loose");
    assert!(table.is_empty(), "limits left: {table:?}");

    // On a running VM the cgroup limit goes at once.
    store.create_with("freed", &["--memory", "64M"]);
    store.start("freed");
    let view = view(&store, "freed");
    assert_eq!(cgroup_inside(&store, "freed", view, MEMORY_MAX), "67108864");
    config(&store, "freed", &["--memory", "none"]).ok();
    assert!(!policy_limits(&store, "freed").contains_key("memory"));
    let now = cgroup_inside(&store, "freed", view, MEMORY_MAX);
    assert!(unlimited(&now), "memory limit of freed after none: {now}");
    let out = py(&store, "freed", &alloc(150)).ok();
    assert_eq!(out.out(), (150u64 << 20).to_string(), "{out}");

    store.stop("freed");
    store.assert_clean();
}

#[test]
fn sizes_and_durations_take_every_documented_spelling() {
    if !needs_root("sizes_and_durations_take_every_documented_spelling") {
        return;
    }
    let store = TestStore::new("spelling");
    // The minimums are accepted.
    store.create_with(
        "mins",
        &[
            "--memory",
            "32M",
            "--process-memory",
            "16M",
            "--processes",
            "4",
            "--cpus",
            "0.01",
            "--cpu-weight",
            "1",
            "--open-files",
            "16",
            "--cpu-time",
            "1s",
            "--timeout",
            "1s",
        ],
    );
    config(&store, "mins", &["--cpu-weight", "10000", "--cpus", "1"]).ok();
    for timeout in ["90s", "10m", "1h", "1h30m", "90"] {
        config(&store, "mins", &["--timeout", timeout]).ok();
    }

    // Sizes, as the running VM's cgroup sees them.
    store.create_with("sz", &["--memory", "512MiB"]);
    store.start("sz");
    let view = view(&store, "sz");
    assert_eq!(cgroup_inside(&store, "sz", view, MEMORY_MAX), "536870912");
    for (size, bytes) in [
        ("512m", "536870912"),
        ("33554432", "33554432"),
        ("1048576K", "1073741824"),
        ("2G", "2147483648"),
        ("1T", "1099511627776"),
        ("512M", "536870912"),
    ] {
        config(&store, "sz", &["--memory", size]).ok();
        assert_eq!(
            cgroup_inside(&store, "sz", view, MEMORY_MAX),
            bytes,
            "--memory {size}"
        );
    }
    // Sizes and durations of rlimits, as a new process sees them.
    for (size, bytes) in [("512MiB", "536870912"), ("1G", "1073741824")] {
        config(&store, "sz", &["--process-memory", size]).ok();
        let limits = limits_inside(&store, "sz");
        assert_eq!(
            rlimit(&limits, "Max address space"),
            pair(bytes, bytes),
            "--process-memory {size}"
        );
    }
    for (duration, soft, hard) in [
        ("90s", "90", "91"),
        ("10m", "600", "601"),
        ("1h", "3600", "3601"),
        ("1h30m", "5400", "5401"),
        ("45", "45", "46"),
    ] {
        config(&store, "sz", &["--cpu-time", duration]).ok();
        let limits = limits_inside(&store, "sz");
        assert_eq!(
            rlimit(&limits, "Max cpu time"),
            pair(soft, hard),
            "--cpu-time {duration}"
        );
    }
    store.stop("sz");
    store.assert_clean();
}

/// Bad values, each with the flag it goes to. `--swap 1G` is bad only for a VM
/// without a memory limit (as every VM it is tried on here).
const BAD: &[(&str, &str)] = &[
    ("--memory", "12Q"),
    ("--memory", "1K"),
    ("--memory", "31M"),
    ("--process-memory", "15M"),
    ("--processes", "0"),
    ("--processes", "3"),
    ("--cpus", "0"),
    ("--cpus", "-1"),
    ("--cpus", "0.001"),
    ("--cpus", "1000"),
    ("--cpu-weight", "0"),
    ("--cpu-weight", "10001"),
    ("--timeout", "5x"),
    ("--timeout", "0"),
    ("--cpu-time", "0"),
    ("--priority", "urgent"),
    ("--swap", "1G"),
    ("--open-files", "3"),
    ("--open-files", "15"),
];

#[test]
fn bad_limit_values_are_refused_and_change_nothing() {
    if !needs_root("bad_limit_values_are_refused_and_change_nothing") {
        return;
    }
    let store = TestStore::new("badlimits");
    store.create_with("plain", &["--processes", "64"]);
    store.create_with("live", &["--processes", "64"]);
    store.start("live");
    let live_init = store.init_pid("live");

    for &(flag, value) in BAD {
        let key = flag.trim_start_matches('-');
        // create: refused, and no VM made.
        let out = store.fvm(&["create", "nope", flag, value]);
        assert_refused(&out, key, value);
        assert!(
            !store.list().iter().any(|vm| vm["name"] == "nope"),
            "`create nope {flag} {value}` made the vm"
        );
        assert!(
            !store.vm_dirs().contains(&"nope".to_owned()),
            "`create nope {flag} {value}` left vms/nope"
        );
        // config, of a stopped and of a running VM: refused, policy file untouched.
        for name in ["plain", "live"] {
            let before = policy_bytes(&store, name);
            let out = config(&store, name, &[flag, value]);
            assert_refused(&out, key, value);
            assert_policy_unchanged(&store, name, &before, &format!("`config {flag} {value}`"));
        }
    }
    // A good value next to a bad one is not applied either.
    for name in ["plain", "live"] {
        let before = policy_bytes(&store, name);
        let out = config(&store, name, &["--processes", "128", "--cpus", "1000"]);
        assert_refused(&out, "cpus", "1000");
        assert_policy_unchanged(
            &store,
            name,
            &before,
            "`config --processes 128 --cpus 1000`",
        );
    }
    let view = view(&store, "live");
    assert_eq!(
        cgroup_inside(&store, "live", view, PIDS_MAX),
        "64",
        "a refused config changed the running vm's cgroup"
    );
    assert_eq!(
        store.init_pid("live"),
        live_init,
        "the running vm was disturbed"
    );
    assert_eq!(store.status("live"), "running");

    store.stop("live");
    store.assert_clean();
}

#[test]
fn a_throw_away_vm_takes_limits_and_a_named_run_refuses_them() {
    if !needs_root("a_throw_away_vm_takes_limits_and_a_named_run_refuses_them") {
        return;
    }
    let store = TestStore::new("rmlimits");
    // The throw-away VM's cgroup carries the limit, whichever version it is.
    let out = store
        .fvm(&[
            "run",
            "--rm",
            "--memory",
            "64M",
            "--",
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ])
        .ok();
    assert_eq!(
        out.out().trim(),
        "67108864",
        "run --rm --memory 64M:\n{out}"
    );
    // A named VM has its policy: limit flags on its run are an error.
    store.create_with("named", &[]);
    let out = store
        .fvm(&["run", "--memory", "64M", "named", "--", "true"])
        .code(125);
    assert!(
        out.stderr.starts_with("fvm: ") && out.stderr.contains("--rm"),
        "{out}"
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    store.assert_clean();
}

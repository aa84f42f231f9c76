//! Fault injection: `start`, `run` (of a stopped and of a running VM), `stop`,
//! `delete` and `copy` SIGKILLed at random moments, round after round. After the
//! next ordinary command the store must tell the truth and hold nothing stuck:
//! a VM is running only with a live init, no VM is frozen, a copy is either whole
//! or absent, a delete either undone or finished, and once every VM is deleted
//! nothing of the store is left on the host (cgroups, mounts, trash).
//!
//! The seed is printed; `FVM_FAULT_SEED=N` replays a run.

mod common;

use std::time::{Duration, Instant};

use common::{TestStore, needs_root};

/// xorshift64*: enough randomness to pick operations and delays, reproducibly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Start `args` and SIGKILL it (by its pid) after `delay`, unless it finished.
fn kill_after(store: &TestStore, args: &[&str], delay: Duration) -> bool {
    let mut bg = store.background(args);
    let start = Instant::now();
    while start.elapsed() < delay {
        if bg.finished() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let killed = !bg.finished();
    common::kill9(&[bg.pid()]);
    let _ = bg.finish();
    killed
}

/// The store tells the truth about `name` and nothing of it is stuck.
#[track_caller]
fn check(store: &TestStore, name: &str, when: &str) {
    let list = store.list();
    let Some(vm) = list.iter().find(|v| v["name"] == name) else {
        return;
    };
    let status = vm["status"].as_str().unwrap_or_default().to_owned();
    assert!(
        status == "running" || status == "stopped",
        "{when}: vm {name} is {status}:\n{vm:#}"
    );
    // (Whether a running VM's init lives is what `list` itself checks; a VM
    // whose last process is ending may stop between two looks.)
    if status == "running" {
        let freezer = store.cgroup_dir(name, "freezer").join("freezer.state");
        if let Ok(state) = std::fs::read_to_string(&freezer) {
            assert_eq!(state.trim(), "THAWED", "{when}: vm {name} is frozen");
        }
    }
    // A run works on it (which also finishes any cleanup it still owes).
    let out = store.fvm(&["run", name, "--", "true"]);
    assert_eq!(out.code, 0, "{when}: run on vm {name}:\n{out}");
}

/// SIGKILL start, run, stop, delete and copy at random moments, then check the
/// store after the next ordinary command; in the end nothing is left.
#[test]
fn sigkilled_lifecycle_commands_leave_nothing_stuck() {
    let test = "sigkilled_lifecycle_commands_leave_nothing_stuck";
    if !needs_root(test) {
        return;
    }
    const ROUNDS: u64 = 30;
    let seed = std::env::var("FVM_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed} (FVM_FAULT_SEED={seed} replays this run)");
    let mut rng = Rng(seed);
    let store = TestStore::new("lifefaults");
    store.create("a");
    // Something in its layer, so copies and deletes have work to be cut short in.
    store
        .fvm(&[
            "run",
            "a",
            "--",
            "sh",
            "-c",
            "mkdir -p /var/tmp/fvm-faults && for i in $(seq 300); do echo $i > /var/tmp/fvm-faults/f$i; done",
        ])
        .ok();
    let mut kills = 0;
    for round in 0..ROUNDS {
        let op = ["start", "run", "run-running", "stop", "delete", "copy"][rng.below(6) as usize];
        let delay = Duration::from_millis(rng.below(40));
        let next = ["list", "stats", "doctor", "run"][rng.below(4) as usize];
        let when = format!("seed {seed} round {round}: {op} killed after {delay:?}, then {next}");
        println!("{when}");
        let running = store.status("a") == "running";
        let copy = format!("c{round}");
        match op {
            "start" | "run" if running => store.stop("a"),
            "run-running" | "stop" if !running => store.start("a"),
            "delete" => {
                if running {
                    store.stop("a");
                }
                store.fvm(&["copy", "a", &copy]).ok();
            }
            "copy" if running => store.stop("a"),
            _ => {}
        }
        let args: Vec<&str> = match op {
            "start" => vec!["start", "a"],
            "run" => vec!["run", "a", "--", "sleep", "0.05"],
            "run-running" => vec!["run", "a", "--", "true"],
            "stop" => vec!["stop", "a"],
            "delete" => vec!["delete", &copy],
            _ => vec!["copy", "a", &copy],
        };
        if kill_after(&store, &args, delay) {
            kills += 1;
        }
        match next {
            "list" => drop(store.fvm(&["list"]).ok()),
            "stats" => drop(store.fvm(&["stats"]).ok()),
            "doctor" => drop(store.fvm(&["doctor", "--cleanup"]).ok()),
            _ => drop(store.fvm(&["run", "a", "--", "true"]).ok()),
        }
        // A delete that got as far as starting the remover of its layers (a
        // process of its own, not killed with it) leaves the trash to it.
        let trash = || -> Vec<String> {
            store
                .vm_dirs()
                .into_iter()
                .filter(|d| d.starts_with('.'))
                .collect()
        };
        let waited = Instant::now();
        while !trash().is_empty() && waited.elapsed() < common::WAIT {
            std::thread::sleep(Duration::from_millis(50));
        }
        let trash = trash();
        assert!(trash.is_empty(), "{when}: left in the store: {trash:?}");
        check(&store, "a", &when);
        if store.vm_dirs().contains(&copy) {
            // Whole (it runs and has a's files) or not there at all.
            let out = store.fvm(&["run", &copy, "--", "cat", "/var/tmp/fvm-faults/f300"]);
            assert_eq!(out.stdout.trim(), "300", "{when}: copy {copy}:\n{out}");
            store.fvm(&["delete", "--force", &copy]).ok();
        }
    }
    println!("{kills} of {ROUNDS} commands were killed before they finished");
    let problems = store.delete_all();
    assert!(problems.is_empty(), "seed {seed}: {}", problems.join("\n"));
    store.assert_clean();
}

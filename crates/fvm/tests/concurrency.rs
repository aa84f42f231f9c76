//! Several fvm commands on one VM at once: they must not disturb each other.

mod common;

use common::{TestStore, needs_root, wait_until};

/// A command waits in the VM until a file shows up in the VM's private /run.
fn wait_for(file: &str) -> String {
    format!("while [ ! -e /run/{file} ]; do sleep 0.05; done")
}

#[test]
fn a_command_entering_a_vm_started_by_a_cold_run_outlives_that_run() {
    if !needs_root("a_command_entering_a_vm_started_by_a_cold_run_outlives_that_run") {
        return;
    }
    let store = TestStore::new("outlive");
    store.create("share");
    // `first` starts the stopped VM for its command, which ends once `second` has
    // joined the VM.
    let first = store.background(&[
        "run",
        "share",
        "--",
        "sh",
        "-c",
        &format!("{}; echo first", wait_for("fvm-go1")),
    ]);
    wait_until("the vm runs", || store.status("share") == "running");
    let second = store.background(&[
        "run",
        "share",
        "--",
        "sh",
        "-c",
        &format!("touch /run/fvm-go1; {}; echo second", wait_for("fvm-go2")),
    ]);
    let first = first.finish();
    assert_eq!((first.code, first.out()), (0, "first"), "{first}");

    // `second` still runs in the VM: let it finish.
    store
        .fvm(&["run", "share", "--", "touch", "/run/fvm-go2"])
        .ok();
    let second = second.finish();
    assert_eq!(
        (second.code, second.out()),
        (0, "second"),
        "a command in the vm was killed when the `run` that started the vm ended:\n{second}"
    );
    // Its last process has exited: the VM stops.
    wait_until("the vm has stopped", || store.status("share") == "stopped");
    store.assert_clean();
}

#[test]
fn parallel_runs_on_a_stopped_vm_all_complete() {
    if !needs_root("parallel_runs_on_a_stopped_vm_all_complete") {
        return;
    }
    let store = TestStore::new("parallel");
    store.create("par");
    let runs: Vec<_> = (0..6)
        .map(|i| {
            store.background(&[
                "run",
                "par",
                "--",
                "sh",
                "-c",
                &format!("sleep 0.3; echo ok-{i}"),
            ])
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let out = r.finish();
        assert_eq!(out.code, 0, "run {i} of 6 on the same vm failed:\n{out}");
        assert_eq!(out.out(), format!("ok-{i}"), "{out}");
    }
    wait_until("the vm has stopped", || store.status("par") == "stopped");
    store.assert_clean();
}

#[test]
fn parallel_starts_start_the_vm_once() {
    if !needs_root("parallel_starts_start_the_vm_once") {
        return;
    }
    let store = TestStore::new("starts");
    store.create("once");
    let starts: Vec<_> = (0..4)
        .map(|_| store.background(&["start", "once"]))
        .collect();
    let outs: Vec<_> = starts.into_iter().map(|s| s.finish()).collect();
    // Every start succeeds; all but one find the vm already running.
    assert!(outs.iter().all(|o| o.code == 0), "{outs:#?}");
    let noted = outs
        .iter()
        .filter(|o| o.stderr.contains("already running"))
        .count();
    assert_eq!(noted, 3, "exactly one start started it: {outs:#?}");
    assert_eq!(store.status("once"), "running");
    let pids = store.vm_pids("once");
    let inits = pids
        .iter()
        .filter(|&&p| common::is_alive_as(p, "fvm-init"))
        .count();
    assert_eq!(inits, 1, "one init in the vm's cgroup: {pids:?}");
    store.assert_clean();
}

/// Commands racing on one VM, suspend and resume among them: for a fixed number
/// of rounds, four threads each fire a random command at the VM (a suspend is
/// resumed by the same thread at once). None may hang (each gets 10 s), and each
/// failure is one `fvm: ` line. Afterwards the VM
/// is resumed and stopped by ordinary commands and nothing of it is left.
#[test]
fn racing_commands_on_one_vm_never_hang() {
    if !needs_root("racing_commands_on_one_vm_never_hang") {
        return;
    }
    let store = TestStore::new("race");
    store.create("rc");
    let host = common::temp_dir("race");
    let h = host.path().to_str().expect("utf-8").to_owned();
    let commands: Vec<Vec<String>> = [
        vec!["start", "rc"],
        vec!["stop", "rc"],
        // A suspend is followed by its resume in the same step: a command that
        // entered the VM before the freeze waits in it until the resume, as it
        // should; what must never happen is one frozen half-way in.
        vec!["suspend", "rc"],
        vec!["run", "rc", "--", "true"],
        vec!["run", "rc", "--", "sh", "-c", &format!("echo x > {h}/f")],
        vec!["list"],
        vec!["stats", "rc"],
        vec!["ps", "rc"],
        vec!["diff", "rc"],
        vec!["config", "rc", "--memory", "256M"],
        vec!["commit", "--dry-run", "rc"],
        vec!["commit", "rc", &h],
        vec!["inspect", "rc"],
    ]
    .iter()
    .map(|c| c.iter().map(|s| s.to_string()).collect())
    .collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    println!("seed {seed}");
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (store, commands) = (&store, &commands);
            scope.spawn(move || {
                let mut x = seed.wrapping_add(t * 7919) | 1;
                for _ in 0..50 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let args: Vec<&str> = commands[x % commands.len()]
                        .iter()
                        .map(String::as_str)
                        .collect();
                    let out = common::try_run(
                        store.command(&args),
                        None,
                        std::time::Duration::from_secs(10),
                    )
                    .unwrap_or_else(|e| panic!("seed {seed}: hung: {e}"));
                    if args[0] == "suspend" {
                        let resumed = common::try_run(
                            store.command(&["resume", "rc"]),
                            None,
                            std::time::Duration::from_secs(10),
                        )
                        .unwrap_or_else(|e| panic!("seed {seed}: hung: {e}"));
                        assert!(
                            resumed.code == 0 || resumed.stderr.lines().count() == 1,
                            "seed {seed}: resume:\n{resumed}"
                        );
                    }
                    if out.code != 0 && (args[0] != "run" || out.code == 125) {
                        let lines: Vec<&str> = out.stderr.lines().collect();
                        assert!(
                            lines.len() == 1 && lines[0].starts_with("fvm: "),
                            "seed {seed}: `fvm {}` failed without one line:\n{out}",
                            args.join(" ")
                        );
                    }
                }
            });
        }
    });
    store.fvm(&["resume", "rc"]);
    store.fvm(&["stop", "rc"]).ok();
    assert_eq!(store.status("rc"), "stopped");
    store.fvm(&["run", "rc", "--", "true"]).ok();
    store.assert_clean();
}

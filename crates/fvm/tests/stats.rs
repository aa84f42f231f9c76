//! `fvm stats`: what each VM uses, from its cgroup; `--watch` keeps printing.

mod common;

use std::process::Stdio;

use common::{TestStore, needs_root};
use serde_json::Value;

#[test]
fn stats_report_a_running_vms_cgroup_and_nothing_for_a_stopped_one() {
    if !needs_root("stats_report_a_running_vms_cgroup_and_nothing_for_a_stopped_one") {
        return;
    }
    let store = TestStore::new("stats");
    store.create("busy");
    store.create("idle");
    store.start("busy");
    store
        .sh(
            "busy",
            "head -c 8000000 /dev/urandom > /var/tmp/fvm-test-stats; \
             nohup sleep 1000 >/dev/null 2>&1 &",
        )
        .ok();
    let out = store.fvm(&["--json", "stats"]).ok();
    let vms: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let busy = vms.iter().find(|v| v["name"] == "busy").unwrap();
    let idle = vms.iter().find(|v| v["name"] == "idle").unwrap();
    let u = &busy["usage"];
    assert!(u["cpu_ns"].as_u64().unwrap() > 0, "{busy:#}");
    let memory = u["memory"].as_u64().unwrap();
    assert!(memory > 0, "{busy:#}");
    assert!(u["memory_peak"].as_u64().unwrap() >= memory, "{busy:#}");
    // The init, its service starter (a started VM's, see docs/services.md) and
    // the sleep.
    assert_eq!(u["processes"].as_u64(), Some(3), "{busy:#}");
    assert!(busy["disk"].as_u64().unwrap() >= 8_000_000, "{busy:#}");
    assert_eq!(idle["status"], "stopped");
    assert!(idle["usage"].is_null(), "{idle:#}");

    // Named VMs only; a table with a line each.
    let table = store.fvm(&["stats", "busy", "idle"]).ok();
    assert_eq!(table.stdout.lines().count(), 3, "{table}");
    assert!(table.stdout.starts_with("NAME"), "{table}");
    let out = store.fvm(&["stats", "busy", "nope"]).code(125);
    assert_eq!(out.stderr.trim(), "fvm: vm \"nope\" does not exist");
    let out = store.fvm(&["stats", "--watch", "0", "busy"]).code(125);
    assert!(out.stderr.starts_with("fvm: --watch interval"), "{out}");

    // --watch prints sample after sample until stopped.
    let mut child = store
        .command(&["--json", "stats", "--watch", "0.2", "busy"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let samples: Vec<Value> = serde_json::Deserializer::from_reader(stdout)
        .into_iter::<Value>()
        .take(3)
        .map(Result::unwrap)
        .collect();
    common::kill9(&[child.id() as i32]);
    let _ = child.wait();
    assert_eq!(samples.len(), 3);
    for s in &samples {
        assert_eq!(s[0]["name"], "busy", "{s:#}");
    }
    store.stop("busy");
    store.assert_clean();
}

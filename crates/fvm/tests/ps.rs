//! `fvm ps`: every process of a running VM, with its pid inside and on the host,
//! its user and command; a stopped VM is an error.

mod common;

use common::{TestStore, needs_root};
use serde_json::Value;

#[test]
fn ps_lists_the_vms_processes_by_pid_inside() {
    if !needs_root("ps_lists_the_vms_processes_by_pid_inside") {
        return;
    }
    let store = TestStore::new("ps");
    store.create("p");
    store.start("p");
    store
        .sh(
            "p",
            "nohup sleep 1001 >/dev/null 2>&1 & \
             nohup setpriv --reuid=65534 --regid=65534 --clear-groups sleep 1002 >/dev/null 2>&1 &",
        )
        .ok();
    // The shell returns before its children have exec'd sleep.
    let mut procs: Vec<Value> = Vec::new();
    common::wait_until("both sleeps show in fvm ps", || {
        let out = store.fvm(&["--json", "ps", "p"]).ok();
        procs = serde_json::from_str(&out.stdout).unwrap();
        ["sleep 1001", "sleep 1002"]
            .iter()
            .all(|c| procs.iter().any(|p| p["command"] == *c))
    });
    let find = |cmd: &str| {
        procs
            .iter()
            .find(|p| p["command"] == cmd)
            .unwrap_or_else(|| panic!("no {cmd:?} in {procs:#?}"))
            .clone()
    };
    assert_eq!(procs[0]["pid"], 1, "{procs:#?}");
    let root = find("sleep 1001");
    let nobody = find("sleep 1002");
    assert_eq!(
        (root["uid"].as_u64(), root["user"].as_str()),
        (Some(0), Some("root"))
    );
    assert_eq!(nobody["uid"], 65534);
    for p in [&root, &nobody] {
        assert!(p["pid"].as_i64().unwrap() > 1, "{p}");
        assert!(p["rss"].as_u64().unwrap() > 0, "{p}");
        // The host pid is the same process, seen from the host.
        let host = p["host_pid"].as_i64().unwrap();
        let cmdline = std::fs::read(format!("/proc/{host}/cmdline")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&cmdline).replace('\0', " ").trim(),
            p["command"].as_str().unwrap()
        );
    }
    // The table has a header and a line per process.
    let table = store.fvm(&["ps", "p"]).ok();
    assert!(table.stdout.starts_with("PID"), "{table}");
    assert_eq!(table.stdout.lines().count(), procs.len() + 1, "{table}");

    store.stop("p");
    let out = store.fvm(&["ps", "p"]).code(125);
    assert_eq!(out.stderr.trim(), "fvm: vm \"p\" is not running");
    store.assert_clean();
}

//! Bad input: every mistake gets a one-line `fvm: ...` error and exit status 125
//! (126/127 for a command that can't be executed), and leaves the store as it was.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{FVM, Out, TestStore, needs_root, run, temp_dir};

/// Assert an fvm failure: the status, one `fvm: ` line on stderr holding every
/// word of `says`.
#[track_caller]
fn assert_error(out: &Out, code: i32, says: &[&str]) {
    assert_eq!(out.code, code, "`{}`:\n{out}", out.what);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error expected:\n{out}");
    assert!(lines[0].starts_with("fvm: "), "{out}");
    for word in says {
        assert!(
            lines[0].contains(word),
            "error should mention {word:?}:\n{out}"
        );
    }
}

/// Run `args` on the store, expect the error, and check the store did not change.
#[track_caller]
fn refused(store: &TestStore, args: &[&str], says: &[&str]) {
    let before = store.snapshot();
    let out = store.fvm(args);
    assert_error(&out, 125, says);
    assert_eq!(
        before,
        store.snapshot(),
        "`fvm {}` changed the store",
        args.join(" ")
    );
}

#[test]
fn unknown_vms_bad_names_and_duplicates_are_refused() {
    if !needs_root("unknown_vms_bad_names_and_duplicates_are_refused") {
        return;
    }
    let store = TestStore::new("badinput");
    store.create("there");

    for verb in [
        &["start", "nope"][..],
        &["run", "nope", "--", "true"],
        &["stop", "nope"],
        &["delete", "nope"],
        &["delete", "--force", "nope"],
        &["inspect", "nope"],
        &["config", "nope"],
        &["shell", "nope"],
    ] {
        refused(&store, verb, &["\"nope\"", "does not exist"]);
    }

    let long = "a".repeat(64);
    for bad in ["Bad", "-a", long.as_str(), "a/b", "", ".a", "a b", "../x"] {
        refused(&store, &["create", "--", bad], &["invalid vm name"]);
        refused(&store, &["start", "--", bad], &["invalid vm name"]);
        if !bad.starts_with('-') {
            // (`run` takes its command after `--`, so a name can't start with '-'.)
            refused(&store, &["run", bad, "--", "true"], &["invalid vm name"]);
            refused(
                &store,
                &["run", "--rm", bad, "--", "true"],
                &["invalid vm name"],
            );
        }
    }
    // The longest name is fine.
    let longest = "b".repeat(63);
    store.create(&longest);
    store.fvm(&["delete", &longest]).ok();

    refused(
        &store,
        &["create", "there"],
        &["\"there\"", "already exists"],
    );
    // A `run` without a VM and without --rm.
    refused(&store, &["run", "--", "true"], &["name"]);
    // An option clap doesn't know is a usage error: 125, store untouched.
    let before = store.snapshot();
    assert_eq!(store.fvm(&["create", "-a"]).code, 125);
    assert_eq!(before, store.snapshot());

    store.assert_clean();
}

#[test]
fn a_missing_store_is_an_error_and_is_not_created() {
    if !needs_root("a_missing_store_is_an_error_and_is_not_created") {
        return;
    }
    let missing = "/nonexistent-fvm-xyz";
    assert!(!std::path::Path::new(missing).exists());
    for args in [&["list"][..], &["create", "x"], &["start", "x"]] {
        let mut cmd = Command::new(FVM);
        cmd.args(["--root", missing])
            .args(args)
            .env_remove("FVM_ROOT");
        let out = run(cmd, None);
        assert_error(&out, 125, &["store /nonexistent-fvm-xyz does not exist"]);
        assert!(!std::path::Path::new(missing).exists(), "{args:?} made it");
    }
    // The same through FVM_ROOT.
    let mut cmd = Command::new(FVM);
    cmd.args(["create", "x"]).env("FVM_ROOT", missing);
    let out = run(cmd, None);
    assert_error(&out, 125, &["store /nonexistent-fvm-xyz does not exist"]);
    assert!(!std::path::Path::new(missing).exists());
}

#[test]
fn a_corrupt_policy_file_is_reported_with_its_path_and_line() {
    if !needs_root("a_corrupt_policy_file_is_reported_with_its_path_and_line") {
        return;
    }
    let store = TestStore::new("corrupt");
    store.create("bent");
    let policy = store.root.join("vms/bent/vm.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 3, "{text}");
    lines[2] = "this is [not toml";
    std::fs::write(&policy, lines.join("\n") + "\n").unwrap();
    let path = policy.display().to_string();

    refused(&store, &["start", "bent"], &[&path, "line 3"]);
    refused(&store, &["run", "bent", "--", "true"], &[&path, "line 3"]);
    refused(&store, &["config", "bent"], &[&path, "line 3"]);
    refused(
        &store,
        &["config", "bent", "--description", "x"],
        &[&path, "line 3"],
    );
    // list still works and shows it as broken, with the reason.
    let vms = store.list();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["status"], "broken", "{:#}", vms[0]);
    assert!(
        vms[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&path) && e.contains("line 3")),
        "{:#}",
        vms[0]
    );
    // A broken, stopped VM can always be deleted.
    store.fvm(&["delete", "bent"]).ok();
    assert!(store.list().is_empty());
    store.assert_clean();
}

#[test]
fn commands_that_cannot_run_give_126_and_127() {
    if !needs_root("commands_that_cannot_run_give_126_and_127") {
        return;
    }
    let store = TestStore::new("exec");
    let files = temp_dir("exec");
    let noexec = files.path().join("not-executable");
    std::fs::write(&noexec, "#!/bin/sh\necho should not run\n").unwrap();
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let noexec = noexec.to_str().unwrap();
    let missing = "/nonexistent-fvm-command";
    store.create("x1");

    // Cold runs: the VM is started for the command, and stopped again.
    let out = store.fvm(&["run", "x1", "--", missing]);
    assert_error(&out, 127, &[missing]);
    let out = store.fvm(&["run", "x1", "--", "fvm-no-such-command"]);
    assert_error(&out, 127, &["fvm-no-such-command"]);
    let out = store.fvm(&["run", "x1", "--", noexec]);
    assert_error(&out, 126, &[noexec]);
    assert!(!out.stdout.contains("should not run"));
    let out = store.fvm(&["run", "x1", "--", "/etc"]);
    assert_error(&out, 126, &["/etc"]);
    assert_eq!(store.status("x1"), "stopped");

    // In a running VM.
    store.start("x1");
    let out = store.fvm(&["run", "x1", "--", missing]);
    assert_error(&out, 127, &[missing]);
    let out = store.fvm(&["run", "x1", "--", noexec]);
    assert_error(&out, 126, &[noexec]);
    // A shell's own status for the same is passed through.
    assert_eq!(store.sh("x1", "exec fvm-no-such-command").code, 127);
    assert_eq!(store.status("x1"), "running");

    // Throw-away VMs too.
    let out = store.fvm(&["run", "--rm", "--", missing]);
    assert_error(&out, 127, &[missing]);
    store.stop("x1");
    assert_eq!(store.list().len(), 1, "the throw-away vm is gone");
    store.assert_clean();
}

#[test]
fn starting_a_running_vm_leaves_it_alone() {
    if !needs_root("starting_a_running_vm_leaves_it_alone") {
        return;
    }
    let store = TestStore::new("twice");
    store.create("r1");
    store.start("r1");
    let init = store.init_pid("r1");
    // Like stopping a stopped VM: a note on stderr, status 0.
    let out = store.fvm(&["start", "r1"]).ok();
    assert!(out.stderr.contains("r1 is already running"), "{out}");
    assert_eq!(store.init_pid("r1"), init, "the running vm was disturbed");
    // Stopping a stopped VM is fine: a note on stderr, status 0.
    store.stop("r1");
    let out = store.fvm(&["stop", "r1"]).ok();
    assert!(out.stderr.contains("r1 is already stopped"), "{out}");
    store.assert_clean();
}

#[test]
fn fvm_refuses_to_run_without_root() {
    if !needs_root("fvm_refuses_to_run_without_root") {
        return;
    }
    let store = TestStore::new("nonroot");
    store.create("mine");
    let root = store.root.to_str().unwrap().to_owned();
    let before = store.snapshot();
    for args in [
        &["list"][..],
        &["create", "x"],
        &["start", "mine"],
        &["delete", "mine"],
    ] {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", FVM])
            .args(["--root", &root])
            .args(args);
        let out = run(cmd, None);
        assert_error(&out, 125, &[args[0], "needs root"]);
    }
    assert_eq!(before, store.snapshot(), "a non-root fvm changed the store");
    assert_eq!(store.status("mine"), "stopped");
    store.assert_clean();
}

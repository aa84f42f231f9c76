//! Everyday CLI behaviour: exit statuses and stdio pass through, `delete` of a
//! running VM, `config`, `list`, and a login shell on a pty.

mod common;

use std::process::Command;

use common::{FVM, TestStore, is_alive_as, needs_root, needs_tool, run};

#[test]
fn exit_status_and_stdio_pass_through() {
    if !needs_root("exit_status_and_stdio_pass_through") {
        return;
    }
    let store = TestStore::new("stdio");
    store.create("io");
    // Cold (the VM is started for each command), then entering a running VM.
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("io");
        }
        assert_eq!(store.sh("io", "exit 3").code, 3, "{phase}");
        assert_eq!(store.sh("io", "exit 0").code, 0, "{phase}");
        assert_eq!(store.fvm(&["run", "io", "--", "false"]).code, 1, "{phase}");
        assert_eq!(store.sh("io", "kill -TERM $$").code, 128 + 15, "{phase}");
        assert_eq!(store.sh("io", "kill -KILL $$").code, 128 + 9, "{phase}");

        let out = store.sh("io", "echo to-out; echo to-err >&2").ok();
        assert_eq!(out.stdout, "to-out\n", "{phase}: {out}");
        assert_eq!(out.stderr, "to-err\n", "{phase}: {out}");

        let out = store.fvm_stdin(&["run", "io", "--", "cat"], b"hi\n").ok();
        assert_eq!(out.stdout, "hi\n", "{phase}");
        // More than a pipe buffer, through a command that transforms it.
        let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let out = store
            .fvm_stdin(&["run", "io", "--", "wc", "-l"], big.as_bytes())
            .ok();
        assert_eq!(out.out(), "20000", "{phase}");
        // Without a tty by default when stdin isn't one.
        let out = store.fvm(&["run", "io", "--", "sh", "-c", "tty || true"]);
        assert_eq!(out.out(), "not a tty", "{phase}: {out}");
    }
    assert_eq!(store.status("io"), "running");
    store.assert_clean();
}

#[test]
fn delete_refuses_a_running_vm_unless_forced() {
    if !needs_root("delete_refuses_a_running_vm_unless_forced") {
        return;
    }
    let store = TestStore::new("delete");
    store.create("busy");
    store.start("busy");
    let init = store.init_pid("busy").expect("a started vm has an init");
    let before = store.snapshot();
    let out = store.fvm(&["delete", "busy"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("running"), "{out}");
    assert_eq!(
        before,
        store.snapshot(),
        "a refused delete changed the store"
    );
    assert!(
        is_alive_as(init, "fvm-init"),
        "a refused delete hurt the vm"
    );
    assert_eq!(store.status("busy"), "running");

    let dirs: Vec<String> = store.inspect("busy")["cgroup"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    let out = store.fvm(&["delete", "--force", "busy"]).ok();
    assert_eq!(out.out(), "busy");
    assert!(
        !is_alive_as(init, "fvm-init"),
        "delete --force left the init"
    );
    assert!(store.list().is_empty());
    for d in &dirs {
        assert!(!std::path::Path::new(d).exists(), "cgroup {d} left");
    }
    store.assert_clean();
}

#[test]
fn config_list_and_inspect_show_the_vm() {
    if !needs_root("config_list_and_inspect_show_the_vm") {
        return;
    }
    let store = TestStore::new("config");
    // An empty store lists nothing.
    let empty = store.fvm(&["list"]).ok();
    assert_eq!(empty.stdout.lines().count(), 1, "only a header:\n{empty}");
    assert!(store.list().is_empty());
    let out = store
        .fvm(&["create", "c1", "--description", "first words"])
        .ok();
    assert_eq!(out.out(), "c1");
    assert_eq!(store.inspect("c1")["description"], "first words");

    let out = store.fvm(&["config", "c1"]).ok();
    assert!(out.stdout.contains("name = \"c1\""), "{out}");
    assert!(out.stdout.contains("first words"), "{out}");

    let out = store
        .fvm(&["config", "c1", "--description", "a web server"])
        .ok();
    assert_eq!(
        out.out(),
        "description: first words → a web server",
        "{out}"
    );
    let v = store.inspect("c1");
    assert_eq!(v["description"], "a web server", "{v:#}");
    assert_eq!(v["status"], "stopped");
    assert!(v["init"].is_null());
    let json = store.fvm(&["--json", "config", "c1"]).ok();
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("config --json");
    assert_eq!(json["description"], "a web server", "{json:#}");
    // The policy file on disk says so too.
    let policy = std::fs::read_to_string(store.root.join("vms/c1/vm.toml")).unwrap();
    assert!(policy.contains("a web server"), "{policy}");

    store.create("c2");
    store.start("c2");
    let table = store.fvm(&["list"]).ok();
    let header: Vec<&str> = table
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "IP",
            "PROCESSES",
            "MEMORY",
            "DISK",
            "CREATED"
        ],
        "{table}"
    );
    let row = |name: &str| -> Vec<String> {
        table
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("c1")[1], "stopped");
    assert_eq!(row("c2")[1], "running");
    let vms = store.list();
    let names: Vec<&str> = vms.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["c1", "c2"]);
    assert!(
        vms[1]["processes"].as_u64().is_some_and(|n| n >= 1),
        "{:#}",
        vms[1]
    );
    // FVM_ROOT names the store as --root does.
    let mut cmd = Command::new(FVM);
    cmd.args(["list", "--json"]).env("FVM_ROOT", &store.root);
    let via_env: serde_json::Value = serde_json::from_str(&run(cmd, None).ok().stdout).unwrap();
    assert_eq!(via_env.as_array().map(Vec::len), Some(2), "{via_env:#}");
    store.assert_clean();
}

/// `script -qec CMD /dev/null` with `input`: CMD on a pty, like a user at a terminal.
fn on_a_terminal(cmd: &str, input: &str) -> common::Out {
    let mut script = Command::new("script");
    script.args(["-qec", cmd, "/dev/null"]);
    script.env_remove("FVM_ROOT");
    run(script, Some(input.as_bytes()))
}

#[test]
fn shell_gives_a_login_shell_on_the_vms_own_pty() {
    if !needs_root("shell_gives_a_login_shell_on_the_vms_own_pty")
        || !needs_tool("shell_gives_a_login_shell_on_the_vms_own_pty", "script")
    {
        return;
    }
    let store = TestStore::new("shell");
    store.create("shellvm");
    let cmd = format!("{FVM} --root {} shell shellvm", store.root.display());
    // The typed lines are echoed back; only the shell's own output can hold the
    // expanded text.
    let input = "echo MARK-$HOSTNAME\n\
                 tty | sed s,^,TTY-,\n\
                 read -r l < /proc/$$/stat; set -- ${l##*) }; [ $4 = $$ ] && echo NEW''SESSION\n\
                 exit 7\n";
    let out = on_a_terminal(&cmd, input);
    assert_eq!(out.code, 7, "{out}");
    assert!(out.stdout.contains("MARK-shellvm"), "{out}");
    assert!(
        out.stdout.contains("@shellvm"),
        "the prompt should show the vm name:\n{out}"
    );
    assert!(out.stdout.contains("TTY-/dev/pts/"), "{out}");
    assert!(
        out.stdout.contains("NEWSESSION"),
        "the shell should lead a new session:\n{out}"
    );
    // The shell started the VM; it stopped with the shell.
    assert_eq!(store.status("shellvm"), "stopped");

    // And into a running VM.
    store.start("shellvm");
    let out = on_a_terminal(&cmd, "echo MARK-$FVM_NAME\nexit 0\n");
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("MARK-shellvm"), "{out}");
    assert_eq!(store.status("shellvm"), "running");
    store.assert_clean();
}

#[test]
fn run_with_a_tty_in_a_throw_away_vm() {
    if !needs_root("run_with_a_tty_in_a_throw_away_vm")
        || !needs_tool("run_with_a_tty_in_a_throw_away_vm", "script")
    {
        return;
    }
    let store = TestStore::new("tty");
    let root = store.root.display();
    // A terminal on stdin: a pty by default.
    let out = on_a_terminal(
        &format!("{FVM} --root {root} run --rm tty1 -- sh -c 'tty; echo NAME-$FVM_NAME; exit 5'"),
        "",
    );
    assert_eq!(out.code, 5, "{out}");
    assert!(out.stdout.contains("/dev/pts/"), "{out}");
    assert!(out.stdout.contains("NAME-tty1"), "{out}");
    // -T: no pty even on a terminal.
    let out = on_a_terminal(
        &format!("{FVM} --root {root} run -T --rm -- sh -c 'tty || echo NO-TTY'"),
        "",
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("NO-TTY"), "{out}");
    // -t: a pty even without a terminal.
    let out = store.fvm(&["run", "--rm", "-t", "--", "sh", "-c", "tty"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("/dev/pts/"), "{out}");
    assert!(store.list().is_empty(), "throw-away vms are gone");
    store.assert_clean();
}

/// The pty inside follows the user's terminal: its size at start, and a resize
/// while the shell runs (SIGWINCH reaches fvm, which resizes the VM's pty). Python's
/// pty module plays the user's terminal, because resizing needs the master side.
#[test]
fn the_window_size_follows_the_terminal() {
    let test = "the_window_size_follows_the_terminal";
    if !needs_root(test) || !needs_tool(test, "python3") {
        return;
    }
    let store = TestStore::new("winsize");
    store.create("win");
    let driver = r#"
import fcntl, os, pty, select, struct, sys, termios, time
fvm, root = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(fvm, [fvm, "--root", root, "shell", "win"])
def resize(rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
def read_until(marker, limit=20.0):
    out, end = b"", time.time() + limit
    while marker not in out and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out.decode(errors="replace")
resize(31, 97)
os.write(fd, b"echo SIZE-$(stty size | tr ' ' x)-END\n")
first = read_until(b"x97-END")
resize(44, 123)
time.sleep(0.3)
os.write(fd, b"echo SIZE-$(stty size | tr ' ' x)-END\n")
second = read_until(b"x123-END")
os.write(fd, b"exit\n")
read_until(b"\0", 5.0)
os.waitpid(pid, 0)
print("FIRST", first.count("SIZE-31x97-END"), "SECOND", second.count("SIZE-44x123-END"))
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", driver, FVM, &store.root.display().to_string()]);
    let out = run(cmd, None).ok();
    assert!(
        out.stdout.contains("FIRST 1"),
        "initial size not seen:\n{out}"
    );
    assert!(out.stdout.contains("SECOND 1"), "resize not seen:\n{out}");
    assert_eq!(store.status("win"), "stopped");
    store.assert_clean();
}

/// With stdin on a terminal the command gets a pty, but output the user redirected
/// to a file stays byte for byte what the command wrote (no `\r\n` from the pty),
/// in a cold VM and in a running one.
#[test]
fn redirected_output_bypasses_the_pty() {
    let test = "redirected_output_bypasses_the_pty";
    if !needs_root(test) || !needs_tool(test, "script") {
        return;
    }
    let store = TestStore::new("ttyout");
    store.create("t1");
    let out_file = store.root.join("out.bin");
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("t1");
        }
        let cmd = format!(
            "{FVM} --root {} run t1 -- sh -c 'tty; printf \"x\\ny\\n\"' > {}",
            store.root.display(),
            out_file.display()
        );
        on_a_terminal(&cmd, "").ok();
        let bytes = std::fs::read(&out_file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("/dev/pts/"),
            "{phase}: stdin is a pty: {text:?}"
        );
        assert!(text.ends_with("\nx\ny\n"), "{phase}: {text:?}");
        assert!(!text.contains('\r'), "{phase}: {text:?}");
    }
    store.stop("t1");
    store.assert_clean();
}

/// No fd of the caller's terminal ever reaches a process in the VM (TIOCSTI
/// injection, CVE-2017-5226, or reading what is typed later): terminal streams go
/// through the VM's own pty, or through pipes with `-T`; redirected ones pass as
/// they are. Checked from inside, cold and in a running VM.
#[test]
fn the_callers_terminal_never_reaches_the_vm() {
    let test = "the_callers_terminal_never_reaches_the_vm";
    if !needs_root(test) || !needs_tool(test, "script") {
        return;
    }
    let store = TestStore::new("notty");
    store.create("n1");
    let probe = r#"vmpts=$(stat -c %d /dev/pts/ptmx); for f in 0 1 2; do if [ -p /proc/self/fd/$f ]; then echo fd$f=pipe; elif [ -c /proc/self/fd/$f ]; then if [ "$(stat -L -c %d /proc/$$/fd/$f)" = "$vmpts" ]; then echo fd$f=vmpty; else echo fd$f=HOSTTTY; fi; else echo fd$f=other; fi; done"#;
    let root = store.root.display().to_string();
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("n1");
        }
        for (how, expect) in [
            ("run -T n1", ["fd0=pipe", "fd1=pipe", "fd2=pipe"]),
            ("run n1", ["fd0=vmpty", "fd1=vmpty", "fd2=vmpty"]),
        ] {
            let cmd = format!("{FVM} --root {root} {how} -- sh -c '{probe}'");
            let out = on_a_terminal(&cmd, "").ok();
            for e in expect {
                assert!(out.stdout.contains(e), "{phase} {how}: want {e}:\n{out}");
            }
            assert!(!out.stdout.contains("HOSTTTY"), "{phase} {how}:\n{out}");
        }
        // stdin from a pipe of the caller's own: passed as it is; outputs on the pty.
        let cmd = format!("echo hi | {FVM} --root {root} run n1 -- sh -c '{probe}'");
        let out = on_a_terminal(&cmd, "").ok();
        assert!(out.stdout.contains("fd0=pipe"), "{phase}:\n{out}");
        assert!(out.stdout.contains("fd1=vmpty"), "{phase}:\n{out}");
        assert!(!out.stdout.contains("HOSTTTY"), "{phase}:\n{out}");
    }
    store.stop("n1");
    store.assert_clean();
}

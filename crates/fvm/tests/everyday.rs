//! fvm as a new user meets it: several VMs per verb, list filters, JSON errors
//! and output, messages without Rust debug text, config's changes, what a verb
//! does to a VM already as asked, users of the VM, fvm without root, shell
//! completion and man pages.

mod common;
#[allow(dead_code)]
mod network_support;

use std::process::Command;

use common::{FVM, Out, TestStore, needs_root, needs_tool, run, wait_until};
use network_support::{Subnet, random_hex};
use serde_json::Value;

/// The error object `--json` puts on stderr: one per line.
#[track_caller]
fn json_errors(out: &Out) -> Vec<Value> {
    out.stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stderr line {l:?} is not a JSON object: {e}\n{out}"))
        })
        .collect()
}

/// Text a message must not hold: Rust's debug form of fvm's own types.
#[track_caller]
fn assert_no_debug_text(text: &str) {
    for debug in [
        "VmName(", "Some(", "Size(", "Limits {", "None,", "Ok(", "Err(",
    ] {
        assert!(!text.contains(debug), "debug text {debug:?} in:\n{text}");
    }
}

#[test]
fn several_names_per_verb_go_on_past_a_bad_one() {
    if !needs_root("several_names_per_verb_go_on_past_a_bad_one") {
        return;
    }
    let store = TestStore::new("several");
    store.create("many1");
    store.create("many2");
    for verb in ["start", "suspend", "resume", "stop"] {
        let out = store.fvm(&[verb, "many1", "nosuchvm", "many2"]).code(125);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line per failure:\n{out}");
        assert!(lines[0].contains("nosuchvm"), "{out}");
        assert_eq!(
            out.stdout, "many1\nmany2\n",
            "{verb}: the others are done:\n{out}"
        );
        let want = match verb {
            "suspend" => "suspended",
            "stop" => "stopped",
            _ => "running",
        };
        assert_eq!(store.status("many1"), want, "after {verb}");
        assert_eq!(store.status("many2"), want, "after {verb}");
    }
    // A bad name among them is one more failure, reported in order.
    let out = store
        .fvm(&["delete", "many1", "Bad/Name", "gone", "many2"])
        .code(125);
    assert_eq!(out.stderr.lines().count(), 2, "{out}");
    assert!(store.list().is_empty(), "both vms deleted:\n{out}");
    store.assert_clean();
}

#[test]
fn list_filters_by_status_and_name_pattern() {
    if !needs_root("list_filters_by_status_and_name_pattern") {
        return;
    }
    let store = TestStore::new("filters");
    for n in ["web1", "web2", "db1"] {
        store.create(n);
    }
    store.start("web1");
    store.start("db1");
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--json", "list"];
        all.extend_from_slice(args);
        let v: Value = serde_json::from_str(&store.fvm(&all).ok().stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|vm| vm["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&["web*"]), ["web1", "web2"]);
    assert_eq!(names(&["--status", "running"]), ["db1", "web1"]);
    assert_eq!(names(&["--status", "running", "w?b[0-9]"]), ["web1"]);
    assert_eq!(
        names(&["--status", "stopped", "--status", "running"]),
        ["db1", "web1", "web2"]
    );
    assert!(names(&["--status", "suspended"]).is_empty());
    // The table too.
    let out = store.fvm(&["list", "--status", "stopped"]).ok();
    assert_eq!(out.stdout.lines().count(), 2, "{out}");
    assert!(out.stdout.contains("web2"), "{out}");
    store.assert_clean();
}

#[test]
fn json_errors_are_objects_with_the_exit_code() {
    if !needs_root("json_errors_are_objects_with_the_exit_code") {
        return;
    }
    let store = TestStore::new("jsonerr");
    store.create("je");
    for (args, code, says) in [
        (&["--json", "start", "missing"][..], 125, "missing"),
        (&["--json", "inspect", "missing"], 125, "missing"),
        (
            &["--json", "config", "je", "--memory", "lots"],
            125,
            "memory",
        ),
        (&["--json", "no-such-verb"], 125, "no-such-verb"),
        (
            &["--json", "run", "je", "--", "/nonexistent/fvm-cmd"],
            127,
            "not found",
        ),
    ] {
        let out = store.fvm(args).code(code);
        let errors = json_errors(&out);
        assert_eq!(errors.len(), 1, "{out}");
        assert_eq!(errors[0]["exit_code"], code, "{out}");
        let msg = errors[0]["error"].as_str().expect("a message");
        assert!(msg.contains(says), "{args:?}: {msg}");
    }
    store.assert_clean();
}

#[test]
fn create_json_prints_the_vm_and_inspect_shows_the_network_policy() {
    if !needs_root("create_json_prints_the_vm_and_inspect_shows_the_network_policy") {
        return;
    }
    let store = TestStore::new("createjson");
    let out = store
        .fvm(&[
            "--json",
            "create",
            "cj",
            "--net",
            "none",
            "--memory",
            "256M",
            "--description",
            "json please",
        ])
        .ok();
    let vm: Value = serde_json::from_str(&out.stdout).expect("create --json is JSON");
    assert_eq!(vm["name"], "cj");
    assert_eq!(vm["status"], "stopped");
    assert_eq!(vm["description"], "json please");
    assert_eq!(vm["network"]["mode"], "none");
    // The same object inspect shows, but for what moves (disk use).
    let inspected = store.inspect("cj");
    assert_eq!(vm["limits"], inspected["limits"]);
    assert_eq!(vm["paths"], inspected["paths"]);

    // A bridged VM's whole network policy (nothing runs, so no bridge is made).
    let net = Subnet::claim();
    store
        .fvm(&[
            "network",
            "--bridge",
            &format!("fvmev{}", random_hex(6)),
            "--subnet",
            &net.cidr(),
        ])
        .ok();
    store.create_with(
        "bj",
        &[
            "--net",
            "bridge",
            "--nat",
            "--dns",
            "192.0.2.53",
            "--allow",
            "192.0.2.0/24:443/tcp",
            "--deny",
            "198.51.100.0/24",
            "--publish",
            "18080:80",
        ],
    );
    let n = &store.inspect("bj")["network"];
    assert_eq!(n["mode"], "bridge", "{n:#}");
    assert!(
        n["ip"]
            .as_str()
            .is_some_and(|ip| net.contains(ip.split('/').next().unwrap())),
        "{n:#}"
    );
    assert_eq!(n["nat"], true, "{n:#}");
    assert_eq!(n["dns"], serde_json::json!(["192.0.2.53"]), "{n:#}");
    assert_eq!(n["allow"].as_array().map(Vec::len), Some(1), "{n:#}");
    assert!(
        n["allow"][0].as_str().unwrap().contains("192.0.2.0/24"),
        "{n:#}"
    );
    assert!(
        n["deny"][0].as_str().unwrap().contains("198.51.100.0/24"),
        "{n:#}"
    );
    assert!(n["publish"][0].as_str().unwrap().contains("18080"), "{n:#}");
    store.assert_clean();
}

#[test]
fn stats_watch_json_prints_a_line_per_sample_with_cpu_percent() {
    if !needs_root("stats_watch_json_prints_a_line_per_sample_with_cpu_percent") {
        return;
    }
    let store = TestStore::new("statsjson");
    store.create("sj");
    store.start("sj");
    let out = store
        .fvm(&["--json", "stats", "--watch", "0.2", "--count", "2", "sj"])
        .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per sample:\n{out}");
    let first: Value = serde_json::from_str(lines[0]).unwrap();
    let second: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(first[0]["name"], "sj");
    assert!(
        first[0]["cpu_percent"].is_null(),
        "no interval yet: {first}"
    );
    let cpu = second[0]["cpu_percent"].as_f64();
    assert!(cpu.is_some_and(|c| c >= 0.0), "{second}");
    store.assert_clean();
}

#[test]
fn messages_and_verbose_logs_have_no_debug_text() {
    if !network_support::ready("messages_and_verbose_logs_have_no_debug_text", &["nft"]) {
        return;
    }
    let store = TestStore::new("debugtext");
    let net = Subnet::claim();
    let bridge = format!("fvmev{}", random_hex(6));
    store
        .fvm(&["network", "--bridge", &bridge, "--subnet", &net.cidr()])
        .ok();
    store.create_with("dbg", &["--net", "bridge", "--memory", "100M"]);
    let out = store.fvm(&["-vv", "start", "dbg"]).ok();
    assert_no_debug_text(&out.stderr);
    assert!(out.stderr.contains("starting vm dbg"), "{out}");
    // The store's network can't change under a running bridged VM: the message
    // names it as a name.
    let other = Subnet::claim();
    let out = store.fvm(&["network", "--subnet", &other.cidr()]).code(125);
    assert!(out.stderr.contains("vm dbg runs on bridge"), "{out}");
    assert_no_debug_text(&out.stderr);
    let out = store.fvm(&["-vv", "stop", "dbg"]).ok();
    assert_no_debug_text(&out.stderr);
    store.fvm(&["delete", "dbg"]).ok();
    store.assert_clean();
}

#[test]
fn verbose_says_what_fvm_does() {
    if !needs_root("verbose_says_what_fvm_does") {
        return;
    }
    let store = TestStore::new("verbose");
    store.create("vb");
    let out = store.fvm(&["-v", "run", "vb", "--", "true"]).ok();
    for words in [
        "starting vm vb",
        "mounting",
        "layers",
        "command ended: exit 0",
    ] {
        assert!(
            out.stderr.contains(words),
            "-v should say {words:?}:\n{out}"
        );
    }
    // Each line has the time since fvm started in front.
    assert!(
        out.stderr.lines().all(|l| l
            .trim_start()
            .split('s')
            .next()
            .is_some_and(|t| t.parse::<f64>().is_ok())),
        "{out}"
    );
    assert_no_debug_text(&out.stderr);
    // Without -v, nothing.
    let quiet = store.fvm(&["run", "vb", "--", "true"]).ok();
    assert_eq!(quiet.stderr, "", "{quiet}");
    store.assert_clean();
}

#[test]
fn config_prints_what_it_changed() {
    if !needs_root("config_prints_what_it_changed") {
        return;
    }
    let store = TestStore::new("configdiff");
    store.create("cd");
    let out = store
        .fvm(&["config", "cd", "--memory", "512M", "--description", "db"])
        .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        ["description: none → db", "memory: none → 512M"],
        "{out}"
    );
    let out = store.fvm(&["config", "cd", "--memory", "1G"]).ok();
    assert_eq!(out.out(), "memory: 512M → 1G", "{out}");
    let out = store.fvm(&["config", "cd", "--memory", "none"]).ok();
    assert_eq!(out.out(), "memory: 1G → none", "{out}");
    // The same value again changes nothing, and says so.
    let out = store.fvm(&["config", "cd", "--description", "db"]).ok();
    assert_eq!(out.out(), "", "{out}");
    assert!(out.stderr.contains("nothing changed"), "{out}");
    // With no flags: the whole policy.
    let out = store.fvm(&["config", "cd"]).ok();
    assert!(out.stdout.contains("name = \"cd\""), "{out}");
    store.assert_clean();
}

#[test]
fn a_vm_already_as_asked_is_a_success_with_a_note() {
    if !needs_root("a_vm_already_as_asked_is_a_success_with_a_note") {
        return;
    }
    let store = TestStore::new("already");
    store.create("al");
    let out = store.fvm(&["stop", "al"]).ok();
    assert!(out.stderr.contains("al is already stopped"), "{out}");
    store.start("al");
    let init = store.init_pid("al");
    for (verb, note) in [("start", "already running"), ("resume", "already running")] {
        let out = store.fvm(&[verb, "al"]).ok();
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.contains(note), "{verb}: {out}");
    }
    store.fvm(&["suspend", "al"]).ok();
    let out = store.fvm(&["suspend", "al"]).ok();
    assert!(out.stderr.contains("already suspended"), "{out}");
    assert_eq!(store.init_pid("al"), init, "the vm was disturbed");
    store.fvm(&["resume", "al"]).ok();
    // What isn't a state of a VM stays an error: a VM that doesn't exist, and
    // suspending a stopped one.
    store.fvm(&["delete", "nothere"]).code(125);
    store.stop("al");
    store.fvm(&["suspend", "al"]).code(125);
    // The statuses are in the help.
    let help = store.fvm(&["--help"]).ok();
    for code in ["125", "126", "127", "already"] {
        assert!(help.stdout.contains(code), "{help}");
    }
    store.assert_clean();
}

/// Add user `fvmeveryday` (uid 4321, in a new group `fvmevgroup` too) to VM `vm`.
fn add_user(store: &TestStore, vm: &str) {
    store
        .sh(
            vm,
            "groupadd -g 4400 fvmevgroup && useradd -m -u 4321 -s /bin/sh -G fvmevgroup fvmeveryday",
        )
        .ok();
}

#[test]
fn ps_names_users_from_the_vms_own_passwd() {
    if !needs_root("ps_names_users_from_the_vms_own_passwd")
        || !needs_tool("ps_names_users_from_the_vms_own_passwd", "useradd")
    {
        return;
    }
    let store = TestStore::new("psusers");
    store.create("pu");
    store.start("pu");
    add_user(&store, "pu");
    // A process of the user, by uid (setpriv, not --user: ps is what is tested).
    store
        .sh(
            "pu",
            "setsid setpriv --reuid=4321 --regid=4321 --clear-groups sleep 300 </dev/null >/dev/null 2>&1 &",
        )
        .ok();
    let mut table = String::new();
    wait_until("the user's sleep shows in ps", || {
        table = store.fvm(&["ps", "pu"]).ok().stdout;
        table.lines().any(|l| l.contains("sleep 300"))
    });
    let line = table.lines().find(|l| l.contains("sleep 300")).unwrap();
    assert!(line.contains("fvmeveryday"), "{table}");
    let json: Value =
        serde_json::from_str(&store.fvm(&["--json", "ps", "pu"]).ok().stdout).unwrap();
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .any(|p| p["user"] == "fvmeveryday" && p["uid"] == 4321),
        "{json:#}"
    );
    store.assert_clean();
}

#[test]
fn ps_reads_a_hostile_passwd_safely() {
    if !needs_root("ps_reads_a_hostile_passwd_safely") {
        return;
    }
    let store = TestStore::new("pshostile");
    store.create("ph");
    store.start("ph");
    // A name with a terminal escape and a bell, for uid 4323, and a process of it.
    store
        .sh(
            "ph",
            "printf 'bad\\033]0;x\\007name:x:4323:4323::/:/bin/sh\\n' >> /etc/passwd && \
             setsid setpriv --reuid=4323 --regid=4323 --clear-groups sleep 300 </dev/null >/dev/null 2>&1 &",
        )
        .ok();
    // The sleep is started in the background: wait until it runs.
    wait_until("the hostile user's sleep shows in ps", || {
        store
            .fvm(&["ps", "ph"])
            .ok()
            .stdout
            .lines()
            .any(|l| l.contains("sleep 300"))
    });
    let ps = |what: &str| {
        let out = store.fvm(&["ps", "ph"]).ok();
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("sleep 300"))
            .unwrap_or_else(|| panic!("{what}: no sleep in\n{out}"))
            .to_owned();
        assert!(
            !out.stdout.contains(['\x1b', '\x07']),
            "{what}: raw escapes:\n{out}"
        );
        line
    };
    let line = ps("escaped name");
    assert!(line.contains("bad") && line.contains("name"), "{line}");
    // /etc/passwd a symlink to the shadow file, then a fifo: no name, no hang.
    for swap in [
        "mv /etc/passwd /etc/passwd.real && ln -s /etc/shadow /etc/passwd",
        "rm /etc/passwd && mkfifo /etc/passwd",
    ] {
        store.sh("ph", swap).ok();
        let line = ps(swap);
        assert!(line.contains("4323"), "{swap}: {line}");
        assert!(!line.contains("bad"), "{swap}: {line}");
    }
    store.assert_clean();
}

#[test]
fn run_and_shell_as_a_user_of_the_vm() {
    if !needs_root("run_and_shell_as_a_user_of_the_vm")
        || !needs_tool("run_and_shell_as_a_user_of_the_vm", "useradd")
        || !needs_tool("run_and_shell_as_a_user_of_the_vm", "script")
    {
        return;
    }
    let store = TestStore::new("runuser");
    store.create("ru");
    store.start("ru");
    add_user(&store, "ru");
    let out = store
        .fvm(&[
            "run",
            "--user",
            "fvmeveryday",
            "ru",
            "--",
            "sh",
            "-c",
            "echo $(id -u) $(id -g) $(id -G) $USER $LOGNAME $HOME $SHELL",
        ])
        .ok();
    assert_eq!(
        out.out(),
        "4321 4321 4321 4400 fvmeveryday fvmeveryday /home/fvmeveryday /bin/sh",
        "{out}"
    );
    // By uid, with another primary group.
    let out = store
        .fvm(&["run", "--user", "4321:4400", "ru", "--", "id", "-u"])
        .ok();
    assert_eq!(out.out(), "4321", "{out}");
    let out = store
        .fvm(&["run", "--user", "4321:4400", "ru", "--", "id", "-g"])
        .ok();
    assert_eq!(out.out(), "4400", "{out}");
    // A stopped VM started for the command too.
    store.stop("ru");
    let out = store
        .fvm(&["run", "-u", "fvmeveryday", "ru", "--", "id", "-un"])
        .ok();
    assert_eq!(out.out(), "fvmeveryday", "{out}");
    // Unknown users are refused, in one line.
    for user in ["nobody-in-vm", "99999", "4321:x"] {
        let out = store
            .fvm(&["run", "--user", user, "ru", "--", "true"])
            .code(125);
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.contains("no user"), "{out}");
    }
    // A login shell as the user, in their home.
    let cmd = format!(
        "{FVM} --root {} shell --user fvmeveryday ru",
        store.root.display()
    );
    let mut script = Command::new("script");
    script.args(["-qec", &cmd, "/dev/null"]);
    script.env_remove("FVM_ROOT");
    let out = run(script, Some(b"echo WHO-$(id -un)-$(pwd)\nexit 3\n"));
    assert_eq!(out.code, 3, "{out}");
    assert!(
        out.stdout.contains("WHO-fvmeveryday-/home/fvmeveryday"),
        "{out}"
    );
    store.assert_clean();
}

/// `fvm ARGS` as uid and gid 65534 (nobody), without groups.
fn as_nobody(store: &TestStore, args: &[&str]) -> Out {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", FVM])
        .args(["--root"])
        .arg(&store.root)
        .args(args);
    cmd.env_remove("FVM_ROOT");
    run(cmd, None)
}

#[test]
fn without_root_help_version_and_doctor_work_and_the_rest_say_why_not() {
    if !needs_root("without_root_help_version_and_doctor_work_and_the_rest_say_why_not")
        || !needs_tool(
            "without_root_help_version_and_doctor_work_and_the_rest_say_why_not",
            "setpriv",
        )
    {
        return;
    }
    let store = TestStore::new("nonroot2");
    store.create("nr");
    let before = store.snapshot();
    let help = as_nobody(&store, &["--help"]).ok();
    assert!(help.stdout.contains("Usage"), "{help}");
    let version = as_nobody(&store, &["--version"]).ok();
    assert!(version.stdout.starts_with("fvm "), "{version}");
    let doctor = as_nobody(&store, &["doctor"]).ok();
    assert!(
        doctor.stdout.contains("not checked without root"),
        "{doctor}"
    );
    let out = as_nobody(&store, &["completions", "bash"]).ok();
    assert!(out.stdout.contains("complete"), "{out}");
    for args in [
        &["list"][..],
        &["stop", "nr"],
        &["ps", "nr"],
        &["doctor", "--cleanup"],
    ] {
        let out = as_nobody(&store, args).code(125);
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.contains("needs root"), "{out}");
        assert!(out.stderr.contains(args[0]), "{out}");
    }
    // With --json too.
    let out = as_nobody(&store, &["--json", "list"]).code(125);
    assert_eq!(json_errors(&out)[0]["exit_code"], 125);
    assert_eq!(before, store.snapshot(), "a non-root fvm changed the store");
    store.assert_clean();
}

#[test]
fn bash_completion_lists_the_stores_vms() {
    if !needs_root("bash_completion_lists_the_stores_vms")
        || !needs_tool("bash_completion_lists_the_stores_vms", "bash")
    {
        return;
    }
    let store = TestStore::new("complete");
    for n in ["alpha1", "alpha2", "beta"] {
        store.create(n);
    }
    let dir = std::path::Path::new(FVM).parent().unwrap();
    let complete = |line: &[&str], env_root: bool| -> Vec<String> {
        // The script calls `fvm` from PATH, as an installed one would.
        let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
        let script = format!(
            "source <(fvm completions bash)\n\
             COMP_WORDS=({})\n\
             COMP_CWORD={}\n\
             COMP_TYPE=9\n\
             _clap_complete_fvm fvm '{}' '{}'\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            words.join(" "),
            line.len() - 1,
            line[line.len() - 1],
            line[line.len() - 2],
        );
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "-c", &script]);
        cmd.env(
            "PATH",
            format!(
                "{}:{}",
                dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        if env_root {
            cmd.env("FVM_ROOT", &store.root);
        } else {
            cmd.env_remove("FVM_ROOT");
        }
        let out = run(cmd, None).ok();
        let mut got: Vec<String> = out
            .stdout
            .lines()
            .map(|l| l.trim().to_owned())
            // An empty word completes the flags too.
            .filter(|l| !l.is_empty() && !l.starts_with('-'))
            .collect();
        got.sort();
        got
    };
    assert_eq!(
        complete(&["fvm", "start", "al"], true),
        ["alpha1", "alpha2"]
    );
    assert_eq!(
        complete(&["fvm", "stop", ""], true),
        ["alpha1", "alpha2", "beta"]
    );
    let root = store.root.display().to_string();
    assert_eq!(
        complete(&["fvm", "--root", &root, "inspect", "b"], false),
        ["beta"]
    );
    // Commands complete too.
    assert!(complete(&["fvm", "sta"], true).contains(&"start".to_owned()));
    store.assert_clean();
}

#[test]
fn man_pages_render_with_every_section() {
    if !needs_tool("man_pages_render_with_every_section", "man") {
        return;
    }
    let dir = common::temp_dir("man");
    let out = run(
        {
            let mut c = Command::new(FVM);
            c.args(["man", "--dir"]).arg(dir.path());
            c
        },
        None,
    )
    .ok();
    assert!(out.stdout.contains("fvm-start.1"), "{out}");
    for page in ["fvm.1", "fvm-start.1", "fvm-run.1", "fvm-list.1"] {
        let mut cmd = Command::new("man");
        cmd.arg("-l")
            .arg(dir.path().join(page))
            .env("MANPAGER", "cat");
        cmd.env("MANWIDTH", "100");
        let out = run(cmd, None).ok();
        for section in [
            "NAME",
            "SYNOPSIS",
            "EXIT STATUS",
            "FILES",
            "ENVIRONMENT",
            "EXAMPLES",
        ] {
            assert!(
                out.stdout.contains(section),
                "{page} lacks {section}:\n{out}"
            );
        }
        assert!(out.stdout.contains("/var/lib/fvm"), "{page}");
        assert!(out.stdout.contains("FVM_ROOT"), "{page}");
    }
    let start = std::fs::read_to_string(dir.path().join("fvm-start.1")).unwrap();
    assert!(start.contains("fvm start web1 web2"), "{start}");
}

#[test]
fn copy_help_says_what_copy_allows() {
    let out = run(
        {
            let mut c = Command::new(FVM);
            c.args(["copy", "--help"]);
            c
        },
        None,
    )
    .ok();
    assert!(out.stdout.contains("stopped or suspended"), "{out}");
    assert!(!out.stdout.contains("must be stopped"), "{out}");
}

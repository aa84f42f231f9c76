//! The escape suite (docs/security.md): root inside a VM tries to
//! tamper with the host, and every attempt must fail, with the precise error the
//! contract names, while the host (and a second VM) stay as they were.
//!
//! - Confinement proper: the kept capability set in every process (command, its
//!   children, daemons, the init, `shell`, `run -t`); the seccomp deny list (EPERM)
//!   and `clone3` (ENOSYS), with ordinary fork, clone and threads still working.
//! - Concrete escapes: mount and umount of the overlay, device nodes and raw
//!   disks, kernel settings, modules and kexec, the "shocker" handle escape, host
//!   and other VMs' processes, the store and other VMs' layers, hostname, clock
//!   and host network, bpf/perf/keyrings, TIOCSTI into the caller's terminal,
//!   reboot, and layers full of hostile symlinks handed to `delete`, `commit`,
//!   `copy`, `diff` and `stats`.
//! - `--security unconfined` really lifts all of it (and warns), `default` brings
//!   it back, a bad value is refused.
//! - The positive side: `dpkg -i`, `apt-get install` of a local `.deb`, `pip
//!   install` of a local wheel, `useradd`, `su` and a setuid program work inside
//!   and leave the host untouched.
//!
//! Every attempt is made so that, should it get through, it does nothing harmful
//! (invalid arguments a kernel without the filter would reject with EINVAL, a
//! harmless value, a read instead of a write), and what it could have left on the
//! host is undone by a guard. Raw system calls are made from python3 with ctypes,
//! by x86_64 number (`escape_support`).

mod common;
mod escape_support;
#[allow(dead_code)]
mod network_support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use common::{
    FVM, Out, TestStore, is_alive_as, needs_root, needs_tool, run, spawn_host, unique, wait_until,
};
use escape_support::{
    Undo, assert_kept_caps, assert_results, cap_names, caps_problems, etc_snapshot, host_status,
    kept, needs_pip, on_a_pty, parse_status, print_status, probe, quiet, results, say_each,
    snapshot_difference, tagged_status, tree_snapshot, var_tmp_dir, x86_64,
};

// ---------------------------------------------------------------------------
// helpers

/// A path as a string, for scripts run in a VM.
fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// `fvm run NAME -- ARGV…`.
fn run_in(store: &TestStore, name: &str, argv: &[&str]) -> Out {
    let mut args = vec!["run", name, "--"];
    args.extend_from_slice(argv);
    store.fvm(&args)
}

/// `cmdline` of a host process, with its NULs as spaces (None once it is gone).
fn cmdline(pid: i32) -> Option<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
}

/// The host pid of the process in VM `name` whose command line is `command`
/// (e.g. "sleep 3222222"), once it shows up in the VM's cgroup.
#[track_caller]
fn vm_process(store: &TestStore, name: &str, command: &str) -> i32 {
    let want = format!("{command} ");
    let mut found = None;
    wait_until(&format!("`{command}` runs in vm {name}"), || {
        found = store
            .vm_pids(name)
            .into_iter()
            .find(|&p| cmdline(p).as_deref() == Some(want.as_str()));
        found.is_some()
    });
    found.expect("found")
}

/// Start `command` as a daemon in running VM `name`; returns its host pid.
#[track_caller]
fn daemon(store: &TestStore, name: &str, command: &str) -> i32 {
    store
        .sh(
            name,
            &format!("setsid {command} </dev/null >/dev/null 2>&1 &"),
        )
        .ok();
    let shown = command
        .split_whitespace()
        .skip_while(|w| *w == "setpriv" || w.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ");
    vm_process(store, name, &shown)
}

/// A host file's content, trimmed ("" when it can't be read).
fn host_value(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The filesystem type of the mount at `/` in a mountinfo text.
fn root_fs_type(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        (before.split_whitespace().nth(4) == Some("/")).then(|| {
            after
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
    })
}

/// The `(major, minor)` of the host's root disk: the device of `/` when it is a
/// block device, else the first block device the kernel lists, else sda.
fn host_root_disk() -> (u64, u64) {
    let dev = std::fs::metadata("/").map(|m| m.dev()).unwrap_or(0);
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    if major != 0 {
        return (major, minor);
    }
    std::fs::read_dir("/sys/dev/block")
        .ok()
        .and_then(|d| {
            d.flatten().find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (a, b) = name.split_once(':')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
        })
        .unwrap_or((8, 0))
}

/// Whether the host has an interface `name`, or `addr` on any interface.
fn host_has_link(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn host_has_address(addr: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "addr", "show"]);
    run(cmd, None)
        .ok()
        .stdout
        .split_whitespace()
        .any(|w| w.split('/').next() == Some(addr))
}

/// Names of the kernel modules loaded on the host.
fn host_modules() -> Vec<String> {
    host_value("/proc/modules")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// A module file of the running kernel that isn't loaded (for `insmod`), if the
/// host has any.
fn some_module_file() -> Option<PathBuf> {
    let release = host_value("/proc/sys/kernel/osrelease");
    let loaded = host_modules();
    let mut stack = vec![Path::new("/lib/modules").join(release)];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Some(stem) = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .find_map(|ext| name.strip_suffix(ext))
                && !loaded.iter().any(|m| *m == stem.replace('-', "_"))
            {
                return Some(p);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// 1. capabilities

/// Every process in a VM has exactly the kept capabilities (Docker's default set
/// without MKNOD) in its bounding, permitted and effective sets, nothing
/// inheritable or ambient: the command `run` starts, its child, a daemon an
/// earlier command left, the init (PID 1), a login `shell` and a `run -t`; in a
/// VM the command starts and in a running one.
#[test]
fn root_in_a_vm_keeps_only_the_default_capabilities() {
    let test = "root_in_a_vm_keeps_only_the_default_capabilities";
    if !needs_root(test) || !needs_tool(test, "script") {
        return;
    }
    assert_eq!(kept(), 0xa004_25fb, "the kept set of the contract");
    let store = TestStore::new("esc-caps");
    store.create("caps1");
    let script = [
        print_status("command", "/proc/$$/status"),
        print_status("child", "/proc/self/status"),
        print_status("init", "/proc/1/status"),
    ]
    .join("; ");
    let none = BTreeMap::new();
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("caps1");
        }
        let out = store.sh("caps1", &script).ok();
        let by = tagged_status(&out.stdout);
        for who in ["command", "child", "init"] {
            let st = by.get(who).unwrap_or(&none);
            assert_kept_caps(st, &format!("{phase} run: the {who}"), &out);
        }
        let out = store
            .fvm(&["run", "-t", "caps1", "--", "sh", "-c", &script])
            .ok();
        let by = tagged_status(&out.stdout);
        for who in ["command", "child"] {
            let st = by.get(who).unwrap_or(&none);
            assert_kept_caps(st, &format!("{phase} run -t: the {who}"), &out);
        }
    }

    // Seen from the host: a daemon a command left behind, and the init.
    let sleep = daemon(&store, "caps1", "sleep 7654321");
    let init = store.init_pid("caps1").expect("a running vm has an init");
    for (who, pid) in [("a daemon", sleep), ("the init", init)] {
        let st = host_status(pid);
        let problems = caps_problems(&st);
        assert!(
            problems.is_empty(),
            "{who} of the vm (host pid {pid}) has capabilities beyond the kept set:\n  {}",
            problems.join("\n  ")
        );
    }

    // A login shell, on a terminal.
    let cmd = format!("{FVM} --root {} shell caps1", store.root.display());
    let input = format!(
        "{}; {}\nexit\n",
        print_status("shell", "/proc/$$/status"),
        print_status("shellchild", "/proc/self/status")
    );
    let mut script_cmd = Command::new("script");
    script_cmd.args(["-qec", &cmd, "/dev/null"]);
    script_cmd.env_remove("FVM_ROOT");
    let out = run(script_cmd, Some(input.as_bytes())).ok();
    let by = tagged_status(&out.stdout);
    for who in ["shell", "shellchild"] {
        let st = by.get(who).unwrap_or(&none);
        assert_kept_caps(st, &format!("fvm shell: the {who}"), &out);
    }
    store.stop("caps1");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 2. seccomp

/// The denied system calls, each with arguments that do nothing harmful if the
/// call gets through (most would fail with EINVAL, ENOENT or EBADF instead of
/// the filter's EPERM).
const DENIED: &[(&str, &str)] = &[
    (
        "mount",
        "sc(165, 'none', '/nonexistent-fvm-esc', 'tmpfs', 0, None)",
    ),
    ("umount2", "sc(166, '/nonexistent-fvm-esc', 0)"),
    ("move_mount", "sc(429, -1, '', -1, '', 0)"),
    ("fsopen", "sc(430, 'fvm-no-such-fs', 0)"),
    ("fsconfig", "sc(431, -1, 0, None, None, 0)"),
    ("fsmount", "sc(432, -1, 0, 0)"),
    ("fspick", "sc(433, -1, '', 0)"),
    ("open_tree", "sc(428, -100, '/nonexistent-fvm-esc', 0)"),
    ("mount_setattr", "sc(442, -1, '', 0, None, 0)"),
    (
        "pivot_root",
        "sc(155, '/nonexistent-fvm-esc-a', '/nonexistent-fvm-esc-b')",
    ),
    // More segments than the kernel takes.
    ("kexec_load", "sc(246, 0, 1000, None, 0)"),
    // Flags the kernel doesn't know.
    ("kexec_file_load", "sc(320, -1, -1, 0, None, 0x80000000)"),
    ("init_module", "sc(175, None, 0, '')"),
    ("finit_module", "sc(313, -1, '', 0)"),
    (
        "delete_module",
        "sc(176, 'fvm_no_such_module', os.O_NONBLOCK)",
    ),
    // A map of type 0 (none).
    ("bpf", "sc(321, 0, mem(b'', 128), 128)"),
    // Unknown flags.
    (
        "perf_event_open",
        "sc(298, mem(b'', 128), 0, -1, -1, 0xffffffff)",
    ),
    // The process's own keyring.
    ("keyctl", "sc(250, 0, -2, 0)"),
    (
        "add_key",
        "sc(248, 'fvm-no-such-type', 'fvm-esc', 'x', 1, -2)",
    ),
    ("request_key", "sc(249, 'user', 'fvm-esc-none', None, -2)"),
    ("open_by_handle_at", "sc(304, -1, None, 0)"),
    ("setns", "sc(308, -1, 0)"),
    ("swapon", "sc(167, '/nonexistent-fvm-esc', 0)"),
    ("swapoff", "sc(168, '/nonexistent-fvm-esc')"),
    // Without the magic numbers.
    ("reboot", "sc(169, 0, 0, 0, None)"),
    ("acct", "sc(163, '/nonexistent-fvm-esc')"),
    // Microseconds out of range.
    (
        "settimeofday",
        "sc(164, mem(struct.pack('<qq', 0, 2000000)), None)",
    ),
    // Nanoseconds out of range.
    (
        "clock_settime",
        "sc(227, 0, mem(struct.pack('<qq', 0, 2000000000)))",
    ),
    // Levels go to 3.
    ("iopl", "sc(172, 4)"),
    // An empty range.
    ("ioperm", "sc(173, 0, 0, 0)"),
    // UFFD_USER_MODE_ONLY.
    ("userfaultfd", "sc(323, 1 | os.O_CLOEXEC)"),
    // Q_GETFMT of a missing device.
    (
        "quotactl",
        "sc(179, 0x80000400, '/nonexistent-fvm-esc', 0, mem(b'', 64))",
    ),
    ("quotactl_fd", "sc(443, -1, 0x80000400, 0, mem(b'', 64))"),
    ("lookup_dcookie", "sc(212, 0, None, 0)"),
    // SYSLOG_ACTION_SIZE_BUFFER.
    ("syslog", "sc(103, 10, None, 0)"),
    // In a child without a controlling terminal.
    ("vhangup", "in_child(lambda: sc(153))"),
    ("unshare(NEWUSER)", "in_child(lambda: sc(272, 0x10000000))"),
    (
        "unshare(NEWUSER|NEWNS)",
        "in_child(lambda: sc(272, 0x10000000 | 0x20000))",
    ),
    ("clone(NEWUSER)", "spawn(56, 0x10000000 | 17, 0, 0, 0, 0)"),
    (
        "clone(NEWUSER|NEWPID)",
        "spawn(56, 0x10000000 | 0x20000000 | 17, 0, 0, 0, 0)",
    ),
];

/// `clone3` fails with ENOSYS whatever it is asked (so the C library falls back
/// to `clone`).
const CLONE3: &[(&str, &str)] = &[
    ("clone3(NULL)", "spawn(435, None, 0)"),
    (
        "clone3(plain)",
        "spawn(435, mem(struct.pack('<8Q', 0, 0, 0, 0, 17, 0, 0, 0)), 64)",
    ),
    (
        "clone3(NEWUSER)",
        "spawn(435, mem(struct.pack('<8Q', 0x10000000, 0, 0, 0, 17, 0, 0, 0)), 64)",
    ),
];

/// What programs do all the time, which must keep working.
const ALLOWED: &[(&str, &str)] = &[
    ("fork", "in_child(lambda: 'OK')"),
    ("clone(SIGCHLD)", "spawn(56, 17, 0, 0, 0, 0)"),
    ("thread", "thread_runs()"),
    (
        "fork+exec",
        "'OK' if os.spawnv(os.P_WAIT, '/bin/true', ['true']) == 0 else 'FAILED'",
    ),
];

/// python's `os.unshare(os.CLONE_NEWUSER)` raises PermissionError.
const PY_UNSHARE: (&str, &str) = ("os.unshare(NEWUSER)", "in_child(py_unshare)");

const SECCOMP_HELPERS: &str = r#"
import threading
def thread_runs():
    ran = []
    t = threading.Thread(target=lambda: ran.append(1))
    t.start()
    t.join()
    return "OK" if ran else "NOT-RUN"
def py_unshare():
    # os.unshare is Python 3.12+; before, the same through the C library.
    try:
        if hasattr(os, "unshare"):
            os.unshare(os.CLONE_NEWUSER)
        elif libc.unshare(0x10000000) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return "OK"
    except Exception as e:
        return type(e).__name__
"#;

/// Every command loads the filter (mode 2, three filters: the deny list,
/// clone3's and the x32 numbers'), with no_new_privs off; each denied call fails with EPERM, clone3
/// with ENOSYS; fork, clone, threads and exec still work; util-linux `unshare -U`
/// and python's `os.unshare(CLONE_NEWUSER)` fail.
#[test]
fn a_seccomp_filter_denies_the_listed_calls_with_eperm() {
    let test = "a_seccomp_filter_denies_the_listed_calls_with_eperm";
    if !needs_root(test) || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-seccomp");
    store.create("sc1");
    let status_script = format!(
        "{}; {}",
        print_status("command", "/proc/$$/status"),
        print_status("child", "/proc/self/status")
    );
    let mut body = SECCOMP_HELPERS.to_owned();
    body.push_str(&say_each(DENIED));
    body.push_str(&say_each(CLONE3));
    body.push_str(&say_each(ALLOWED));
    body.push_str(&say_each(&[PY_UNSHARE]));
    let mut expected: Vec<(&str, &str)> = DENIED.iter().map(|(n, _)| (*n, "EPERM")).collect();
    expected.extend(CLONE3.iter().map(|(n, _)| (*n, "ENOSYS")));
    expected.extend(ALLOWED.iter().map(|(n, _)| (*n, "OK")));
    expected.push((PY_UNSHARE.0, "PermissionError"));

    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("sc1");
        }
        let out = store.sh("sc1", &status_script).ok();
        let by = tagged_status(&out.stdout);
        for who in ["command", "child"] {
            let st = by.get(who).cloned().unwrap_or_default();
            for (key, want) in [
                ("Seccomp", "2"),
                ("Seccomp_filters", "3"),
                ("NoNewPrivs", "0"),
            ] {
                assert_eq!(
                    st.get(key).map(String::as_str),
                    Some(want),
                    "{phase}: the {who}'s {key} (2 = a filter is loaded; no_new_privs stays off):\n{out}"
                );
            }
        }
        let out = probe(&store, "sc1", &body, &[]);
        assert_eq!(out.code, 0, "{phase}: the probe failed:\n{out}");
        assert_results(
            &out,
            &expected,
            &format!("{phase}: system calls that got past the filter, or that it broke"),
        );

        let out = store.sh("sc1", "unshare -U true");
        assert_ne!(
            out.code, 0,
            "{phase}: `unshare -U true` made a user namespace in the vm:\n{out}"
        );
        assert!(
            out.stderr.contains("Operation not permitted"),
            "{phase}: `unshare -U` should fail with EPERM:\n{out}"
        );
    }
    // A daemon, started by an earlier command, has the filter too.
    let sleep = daemon(&store, "sc1", "sleep 7654322");
    let st = host_status(sleep);
    assert_eq!(
        st.get("Seccomp").map(String::as_str),
        Some("2"),
        "a daemon in the vm runs without the filter: {st:?}"
    );
    store.stop("sc1");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 3. mount and umount

/// mount(8) and umount(8), and the raw calls behind them: no mount, no unmount of
/// the overlay (`umount -l /`) to see the host beneath, of `/proc`, of a
/// read-only or masking mount, of the tmpfs that hides the store. Afterwards the
/// VM still sees its own files on its overlay, and the host's mount table has
/// nothing new.
#[test]
fn mount_and_umount_fail_and_the_overlay_stays() {
    let test = "mount_and_umount_fail_and_the_overlay_stays";
    if !needs_root(test) || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-mount");
    let root = s(&store.root).to_owned();
    let _undo = Undo(|| {
        // A tmpfs that reached the host's namespace would be named fvm-esc-tmpfs.
        let mounts = host_value("/proc/self/mountinfo");
        for l in mounts.lines().filter(|l| l.contains("fvm-esc-tmpfs")) {
            if let Some(at) = l.split_whitespace().nth(4) {
                quiet(&format!("umount -l '{at}'"));
            }
        }
    });
    store.create("m1");
    store.start("m1");
    store.sh("m1", "echo mine > /root/fvm-esc-mine").ok();

    let out = store.sh("m1", "mount -t tmpfs fvm-esc-tmpfs /mnt && echo MOUNTED");
    assert!(
        out.code != 0 && !out.stdout.contains("MOUNTED"),
        "root in the vm mounted a tmpfs on /mnt:\n{out}"
    );
    let out = store.sh(
        "m1",
        "umount -l / && echo UNMOUNTED; cat /root/fvm-esc-mine",
    );
    assert!(
        !out.stdout.contains("UNMOUNTED"),
        "root in the vm unmounted its overlay root (`umount -l /`):\n{out}"
    );
    assert_eq!(out.out(), "mine", "the vm lost its own files:\n{out}");
    let out = store.sh(
        "m1",
        "umount /proc && echo UNMOUNTED; test -r /proc/self/status && echo PROC",
    );
    assert_eq!(out.out(), "PROC", "`umount /proc` in the vm:\n{out}");

    let body = say_each(&[
        (
            "mount(tmpfs)",
            "sc(165, 'fvm-esc-tmpfs', '/mnt', 'tmpfs', 0, None)",
        ),
        // MS_BIND | MS_REC: the whole tree again, from its root.
        (
            "mount(bind-root)",
            "sc(165, '/', '/mnt', None, 0x1000 | 0x4000, None)",
        ),
        // MS_REMOUNT | MS_BIND: make a read-only bind writable.
        (
            "mount(remount-proc-sys)",
            "sc(165, None, '/proc/sys', None, 0x20 | 0x1000, None)",
        ),
        ("umount2(root)", "sc(166, '/', 2)"),
        ("umount2(proc)", "sc(166, '/proc', 0)"),
        ("umount2(proc-sys)", "sc(166, '/proc/sys', 2)"),
        ("umount2(sys-firmware)", "sc(166, '/sys/firmware', 2)"),
        ("umount2(store)", "sc(166, sys.argv[1], 2)"),
        ("open_tree(root)", "sc(428, -100, '/', 1)"),
    ]);
    let out = probe(&store, "m1", &body, &[&root]);
    assert_results(
        &out,
        &[
            ("mount(tmpfs)", "EPERM"),
            ("mount(bind-root)", "EPERM"),
            ("mount(remount-proc-sys)", "EPERM"),
            ("umount2(root)", "EPERM"),
            ("umount2(proc)", "EPERM"),
            ("umount2(proc-sys)", "EPERM"),
            ("umount2(sys-firmware)", "EPERM"),
            ("umount2(store)", "EPERM"),
            ("open_tree(root)", "EPERM"),
        ],
        "mount calls that were not refused with EPERM",
    );

    // The VM is as it was: its own file, on its overlay, the store still hidden.
    let out = store
        .sh(
            "m1",
            &format!("cat /root/fvm-esc-mine; ls -A {root}; cat /proc/self/mountinfo"),
        )
        .ok();
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("mine"), "{out}");
    assert_eq!(
        root_fs_type(&out.stdout).as_deref(),
        Some("overlay"),
        "the vm's root is no longer its overlay:\n{out}"
    );
    assert!(
        !out.stdout.contains("fvm-esc-tmpfs"),
        "the tmpfs is mounted in the vm:\n{out}"
    );
    // The host: no new mount, none of the VM's files.
    let host_mounts = host_value("/proc/self/mountinfo");
    assert!(
        !host_mounts.contains("fvm-esc-tmpfs"),
        "the vm's tmpfs reached the host's mount table"
    );
    assert!(!Path::new("/root/fvm-esc-mine").exists());
    store.stop("m1");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 4. devices

const MKNOD_HELPERS: &str = r#"
def mk(path, mode, major, minor):
    try:
        os.mknod(path, mode, os.makedev(major, minor))
        return "OK"
    except OSError as e:
        return errname(e.errno)
def mk_disk(major, minor):
    path = "/root/fvm-esc-disk"
    made = mk(path, 0o060400, major, minor)
    if made != "OK":
        return made
    # An escape: show how far it goes, reading only.
    try:
        fd = os.open(path, os.O_RDONLY)
        n = len(os.read(fd, 512))
        os.close(fd)
        return "MADE-AND-READ-%d-BYTES-OF-THE-HOST-DISK" % n
    except OSError as e:
        return "MADE-BUT-OPEN-" + errname(e.errno)
"#;

/// No device nodes can be made (no CAP_MKNOD: a VM has no device cgroup, so a
/// block node would be the host's disk), the VM's /dev has no block devices and
/// no /dev/mem, /dev/kmem or /dev/port, and the host's root disk can't be reached
/// through a node made for it.
#[test]
fn no_device_nodes_and_no_raw_disks() {
    let test = "no_device_nodes_and_no_raw_disks";
    if !needs_root(test) || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-dev");
    store.create("d1");
    let out = store.sh("d1", "mknod /root/sdx b 8 0 && echo MADE");
    assert!(
        out.code != 0 && !out.stdout.contains("MADE"),
        "`mknod /root/sdx b 8 0` worked in the vm:\n{out}"
    );
    assert!(
        out.stderr.contains("Operation not permitted"),
        "mknod should fail with EPERM:\n{out}"
    );

    let (major, minor) = host_root_disk();
    let body = format!(
        "{MKNOD_HELPERS}\n{}",
        say_each(&[
            ("mknod(b-8:0)", "mk('/root/fvm-esc-sda', 0o060600, 8, 0)"),
            (
                "mknod(c-1:1-mem)",
                "mk('/root/fvm-esc-mem', 0o020600, 1, 1)"
            ),
            (
                "mknod(host-root-disk)",
                "mk_disk(int(sys.argv[1]), int(sys.argv[2]))"
            ),
        ])
    );
    let out = probe(
        &store,
        "d1",
        &body,
        &[&major.to_string(), &minor.to_string()],
    );
    assert_results(
        &out,
        &[
            ("mknod(b-8:0)", "EPERM"),
            ("mknod(c-1:1-mem)", "EPERM"),
            ("mknod(host-root-disk)", "EPERM"),
        ],
        &format!("device nodes the vm could make (host root disk {major}:{minor})"),
    );

    let out = store
        .sh(
            "d1",
            "find /dev -type b | sed 's/^/BLOCK /'; \
             for f in mem kmem port kmsg; do [ -e /dev/$f ] && echo HAS /dev/$f; done; true",
        )
        .ok();
    assert_eq!(
        out.out(),
        "",
        "the vm's /dev has host devices in it:\n{out}"
    );
    for f in ["sdx", "fvm-esc-sda", "fvm-esc-mem", "fvm-esc-disk"] {
        assert!(
            !Path::new("/root").join(f).exists(),
            "/root/{f} on the host"
        );
    }
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 5. the kernel: settings, sysrq, modules, kexec

const KERNEL_HELPERS: &str = r#"
def write(path, value):
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return errname(e.errno)
    try:
        os.write(fd, value.encode())
        return "WROTE"
    except OSError as e:
        return "OPENED-THEN-" + errname(e.errno)
    finally:
        os.close(fd)
def opened_for_writing(path):
    # Never writes: a sysrq key would act on the host at once.
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return errname(e.errno)
    os.close(fd)
    return "OPENED-FOR-WRITING"
def masked(path):
    if not os.path.lexists(path):
        return "ABSENT"
    try:
        if os.path.isdir(path):
            n = len(os.listdir(path))
            return "EMPTY" if n == 0 else "LISTS-%d-ENTRIES" % n
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as e:
        return errname(e.errno)
    return "EMPTY" if not data else "LEAKS-%d-BYTES" % len(data)
for arg in sys.argv[1:]:
    path, value = arg.split("=", 1)
    say(path, write(path, value))
"#;

/// Kernel settings: `/proc/sysrq-trigger` can't be opened for writing, no
/// `/proc/sys` key (a UTS one, a global one, the well-known escapes
/// `core_pattern`, `modprobe`, `uevent_helper`) can be written, the masked files
/// show nothing; no module can be loaded or removed (raw calls, and `insmod` of
/// a real module where the host has one), no kexec. The host's values are
/// unchanged.
#[test]
fn kernel_settings_modules_and_kexec_are_out_of_reach() {
    let test = "kernel_settings_modules_and_kexec_are_out_of_reach";
    if !needs_root(test) || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-kernel");
    store.create("k1");

    // Writes of /proc/sys and /sys keys: new values for the VM's own UTS ones,
    // the current value for host-wide ones (so that a write that got through
    // changes nothing).
    let mut writes: Vec<(String, String)> = vec![
        (
            "/proc/sys/kernel/domainname".into(),
            "fvm-esc-domain".into(),
        ),
        ("/proc/sys/kernel/hostname".into(), "fvm-esc-host".into()),
        ("/proc/sys/vm/drop_caches".into(), "1".into()),
    ];
    for key in [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/modprobe",
        "/proc/sys/vm/swappiness",
        "/proc/sys/net/ipv4/ip_forward",
        "/sys/kernel/uevent_helper",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ] {
        if Path::new(key).exists() {
            let v = host_value(key);
            // (THP shows "always [madvise] never": write the chosen one.)
            let v = v
                .split_whitespace()
                .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
                .map_or(v.clone(), str::to_owned);
            writes.push((key.to_owned(), format!("{v}\n")));
        }
    }
    let watched: Vec<&str> = writes
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !k.ends_with("drop_caches"))
        .collect();
    let before: Vec<String> = watched.iter().map(|k| host_value(k)).collect();
    let modules_before = host_modules();
    let kexec_before = host_value("/sys/kernel/kexec_loaded");

    let args: Vec<String> = writes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sysrq = "/proc/sysrq-trigger";
    let body = format!(
        "{KERNEL_HELPERS}\n{}",
        say_each(&[
            ("sysrq", "opened_for_writing('/proc/sysrq-trigger')"),
            ("init_module", "sc(175, None, 0, '')"),
            (
                "finit_module",
                "sc(313, os.open('/dev/null', os.O_RDONLY), '', 0)"
            ),
            (
                "delete_module",
                "sc(176, 'fvm_no_such_module', os.O_NONBLOCK)"
            ),
            ("kexec_load", "sc(246, 0, 1000, None, 0)"),
            ("kexec_file_load", "sc(320, -1, -1, 0, None, 0x80000000)"),
            ("mask:/proc/kcore", "masked('/proc/kcore')"),
            ("mask:/proc/keys", "masked('/proc/keys')"),
            ("mask:/proc/timer_list", "masked('/proc/timer_list')"),
            ("mask:/proc/sched_debug", "masked('/proc/sched_debug')"),
            ("mask:/proc/acpi", "masked('/proc/acpi')"),
            ("mask:/sys/firmware", "masked('/sys/firmware')"),
        ])
    );
    let out = probe(&store, "k1", &body, &args);
    assert_eq!(out.code, 0, "the probe failed:\n{out}");
    // A missing sysrq-trigger (a kernel without magic sysrq) is fine.
    let sysrq_want = if Path::new(sysrq).exists() {
        "EROFS"
    } else {
        "ENOENT"
    };
    let mut expected: Vec<(&str, &str)> = vec![
        ("sysrq", sysrq_want),
        ("init_module", "EPERM"),
        ("finit_module", "EPERM"),
        ("delete_module", "EPERM"),
        ("kexec_load", "EPERM"),
        ("kexec_file_load", "EPERM"),
    ];
    expected.extend(writes.iter().map(|(k, _)| (k.as_str(), "EROFS")));
    assert_results(
        &out,
        &expected,
        "kernel settings, modules or kexec reachable from the vm",
    );
    let got = results(&out);
    for (name, result) in got.iter().filter(|(n, _)| n.starts_with("mask:")) {
        assert!(
            result == "EMPTY" || result == "ABSENT",
            "{} should show nothing in the vm: {result}\n{out}",
            &name[5..]
        );
    }

    // insmod of a real module, where the host has one (only once the raw calls
    // were refused, so that nothing can load).
    if let Some(module) = some_module_file().filter(|_| needs_tool(test, "insmod")) {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split(".ko").next())
            .unwrap_or_default()
            .replace('-', "_");
        let _unload = Undo(|| {
            if host_modules().contains(&name) && !modules_before.contains(&name) {
                quiet(&format!("rmmod {name}"));
            }
        });
        let out = run_in(&store, "k1", &["insmod", s(&module)]);
        assert_ne!(
            out.code,
            0,
            "insmod {} worked in the vm:\n{out}",
            module.display()
        );
        assert!(
            out.stderr.contains("Operation not permitted"),
            "insmod should fail with EPERM:\n{out}"
        );
    }

    let after: Vec<String> = watched.iter().map(|k| host_value(k)).collect();
    for ((key, b), a) in watched.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "the vm changed the host's {key}");
    }
    assert_eq!(host_modules(), modules_before, "the host's modules changed");
    assert_eq!(
        host_value("/sys/kernel/kexec_loaded"),
        kexec_before,
        "a kexec kernel was loaded"
    );
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 6. the "shocker" escape

/// `open_by_handle_at` with a handle from `name_to_handle_at` (which may work),
/// and with the shocker's own guess (the ext4 root inode), fails with EPERM: no
/// way to open a host file by handle, past the VM's root.
#[test]
fn open_by_handle_at_the_shocker_escape_fails() {
    let test = "open_by_handle_at_the_shocker_escape_fails";
    if !needs_root(test) || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-shocker");
    store.create("sh1");
    let body = r#"
def handle_of(path):
    h = mem(struct.pack("<Ii", 128, 0), 8 + 128)
    mount_id = ctypes.c_int(0)
    r, e = call(303, -100, path, h, ctypes.byref(mount_id), 0)
    return (h if r == 0 else None), (e or "OK")
# The ext4 root directory: FILEID_INO32_GEN (1), inode 2, generation 0.
guess = mem(struct.pack("<IiII", 8, 1, 2, 0))
root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
for path in ("/etc/passwd", "/"):
    h, res = handle_of(path)
    say("name_to_handle_at(%s)" % path, res)
    say("open_by_handle_at(%s)" % path, sc(304, root, h if h is not None else guess, os.O_RDONLY))
say("open_by_handle_at(ext4-root-inode)", sc(304, root, guess, os.O_RDONLY | os.O_DIRECTORY))
"#;
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("sh1");
        }
        let out = probe(&store, "sh1", body, &[]);
        assert_results(
            &out,
            &[
                ("open_by_handle_at(/etc/passwd)", "EPERM"),
                ("open_by_handle_at(/)", "EPERM"),
                ("open_by_handle_at(ext4-root-inode)", "EPERM"),
            ],
            &format!("{phase}: open_by_handle_at (the shocker escape) was not refused"),
        );
    }
    store.stop("sh1");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 7. processes

const PTRACE_HELPERS: &str = r#"
def find(command):
    want = command.replace(" ", "\0").encode() + b"\0"
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/cmdline" % p, "rb") as f:
                    if f.read() == want:
                        return int(p)
            except OSError:
                pass
    return -1
def attach(pid):
    if pid < 0:
        return "NOT-FOUND"
    r, e = call(101, 16, pid, None, None)
    if e:
        return e
    try:
        os.waitpid(pid, 0x40000000)
    except OSError:
        pass
    call(101, 17, pid, None, None)
    return "ATTACHED"
def getfd(pid):
    pidfd, e = call(434, pid, 0)
    if e:
        return "PIDFD-" + e
    return sc(438, pidfd, 0, 0)
def opened(path):
    try:
        os.close(os.open(path, os.O_RDONLY))
        return "OK"
    except OSError as e:
        return errname(e.errno)
def link(path):
    try:
        os.readlink(path)
        return "OK"
    except OSError as e:
        return errname(e.errno)
"#;

/// A host `sleep` and a second VM's `sleep` can't be seen from a VM (not in its
/// /proc, or the number is a process of its own), nor killed by pid, nor by
/// `kill -9 -1`; the VM's init and a process of another uid can't be traced and
/// the init's memory and file descriptors can't be taken.
#[test]
fn host_and_other_vm_processes_cannot_be_seen_signalled_or_traced() {
    let test = "host_and_other_vm_processes_cannot_be_seen_signalled_or_traced";
    if !needs_root(test) || !needs_tool(test, "setpriv") || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-procs");
    store.create("pa");
    store.create("pb");
    store.start("pa");
    store.start("pb");
    let host_sleep = spawn_host(&["sleep", "3111111"]);
    let b_sleep = daemon(&store, "pb", "sleep 3222222");
    daemon(
        &store,
        "pa",
        "setpriv --reuid=65534 --regid=65534 --clear-groups sleep 3333333",
    );
    let targets = [
        ("the host's sleep", host_sleep.pid(), "sleep 3111111"),
        ("vm pb's sleep", b_sleep, "sleep 3222222"),
    ];

    let listing = store
        .sh(
            "pa",
            "for p in /proc/[0-9]*; do printf '%s %s\\n' \"${p#/proc/}\" \"$(tr '\\0' ' ' < $p/cmdline)\"; done",
        )
        .ok();
    for (who, pid, command) in targets {
        assert!(
            !listing.stdout.contains(command),
            "vm pa sees {who} (host pid {pid}):\n{listing}"
        );
        let mine = listing
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pid.to_string().as_str()));
        assert!(
            mine.is_none_or(|l| !l.contains(command)),
            "pid {pid} in vm pa is {who}: {mine:?}"
        );
    }

    store
        .sh(
            "pa",
            &format!("kill -9 {} {} 2>/dev/null; true", host_sleep.pid(), b_sleep),
        )
        .ok();

    let body = format!(
        "{PTRACE_HELPERS}\n{}",
        say_each(&[
            ("ptrace(ATTACH,init)", "attach(1)"),
            ("ptrace(ATTACH,other-uid)", "attach(find('sleep 3333333'))"),
            ("pidfd_getfd(init)", "getfd(1)"),
            ("open(/proc/1/mem)", "opened('/proc/1/mem')"),
            ("readlink(/proc/1/fd/0)", "link('/proc/1/fd/0')"),
            ("readlink(/proc/1/root)", "link('/proc/1/root')"),
        ])
    );
    let out = probe(&store, "pa", &body, &[]);
    assert_results(
        &out,
        &[
            ("ptrace(ATTACH,init)", "EPERM"),
            ("ptrace(ATTACH,other-uid)", "EPERM"),
            ("pidfd_getfd(init)", "EPERM"),
            ("open(/proc/1/mem)", "EACCES"),
            ("readlink(/proc/1/fd/0)", "EACCES"),
            ("readlink(/proc/1/root)", "EACCES"),
        ],
        "root in vm pa got at its init or another user's process",
    );
    // Everything a process in the VM may signal: only the VM's own.
    let _ = store.sh("pa", "kill -9 -1; true");

    for (who, pid, _) in targets {
        assert!(
            is_alive_as(pid, "sleep"),
            "{who} (host pid {pid}) was killed from vm pa"
        );
    }
    assert_eq!(store.status("pb"), "running");
    drop(host_sleep);
    store.stop("pa");
    store.stop("pb");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 8. the store and other VMs' layers

/// The secret VM `writer` wrote, looked for from VM `reader` by every path that
/// could lead to it; returns the script's output.
fn look_for_secret(store: &TestStore, reader: &str, secret: &str, uppers: &[PathBuf]) -> Out {
    let root = s(&store.root);
    let mut paths = vec!["/root/fvm-esc-secret".to_owned()];
    paths.extend(
        uppers
            .iter()
            .map(|u| format!("{}/root/fvm-esc-secret", s(u))),
    );
    paths.push("/proc/[0-9]*/root/root/fvm-esc-secret".into());
    paths.push("/proc/[0-9]*/cwd/fvm-esc-secret".into());
    let dirs: Vec<&str> = uppers.iter().map(|u| s(u)).collect();
    let script = format!(
        "ls -A {root} | sed 's/^/STORE-ENTRY /'
         for f in {paths}; do cat \"$f\" 2>/dev/null | sed \"s|^|READ $f: |\"; done
         grep -rs {secret} {root} {dirs} 2>/dev/null | sed 's/^/FOUND /'
         touch {root}/fvm-esc-x 2>/dev/null && echo WROTE-INTO-THE-STORE
         true",
        paths = paths.join(" "),
        dirs = dirs.join(" ")
    );
    store.sh(reader, &script).ok()
}

/// Inside VM `sa` the store is an empty, read-only directory, and a file VM `sb`
/// wrote can't be read by any path: its place in the store, /proc/PID/root of
/// sb's processes (which sa can't see), or sa's own view of the same path.
#[test]
fn the_store_and_other_vms_layers_are_out_of_reach() {
    let test = "the_store_and_other_vms_layers_are_out_of_reach";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esc-store");
    store.create("sa");
    store.create("sb");
    store.start("sa");
    store.start("sb");
    let secret = unique("secret");
    store
        .sh(
            "sb",
            &format!("echo {secret} > /root/fvm-esc-secret && cd /root && setsid sleep 3444444 </dev/null >/dev/null 2>&1 &"),
        )
        .ok();
    vm_process(&store, "sb", "sleep 3444444");
    let upper = store.root.join("vms/sb/layers/-/upper");
    assert!(
        upper.join("root/fvm-esc-secret").is_file(),
        "vm sb's file is not where the test expects it"
    );

    let out = look_for_secret(&store, "sa", &secret, std::slice::from_ref(&upper));
    assert!(
        !out.stdout.contains(&secret),
        "vm sa read vm sb's file:\n{out}"
    );
    assert!(
        !out.stdout.contains("STORE-ENTRY"),
        "vm sa sees the store's entries:\n{out}"
    );
    assert!(
        !out.stdout.contains("WROTE"),
        "vm sa wrote into the store:\n{out}"
    );
    // Nor does sa's mount table name sb's layers.
    let out = store.sh("sa", "cat /proc/self/mountinfo").ok();
    assert!(
        !out.stdout.contains("/vms/sb/"),
        "vm sa's mount table names vm sb's layers:\n{out}"
    );
    assert!(!store.root.join("fvm-esc-x").exists());
    store.stop("sa");
    store.stop("sb");
    store.assert_clean();
}

/// A VM made with `--dir` keeps its layers outside the store; a VM that was
/// already running when it was made must not read them either (docs/security.md, "The promise": a VM
/// never sees another VM's layer).
#[test]
fn a_vm_made_with_dir_while_another_runs_is_out_of_its_reach() {
    let test = "a_vm_made_with_dir_while_another_runs_is_out_of_its_reach";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esc-dirvm");
    let outside = var_tmp_dir("esc-dirvm");
    let dir = outside.path().join("layers");
    store.create("early");
    store.start("early");
    store.fvm(&["create", "late", "--dir", s(&dir)]).ok();
    let secret = unique("secret");
    store
        .sh("late", &format!("echo {secret} > /root/fvm-esc-secret"))
        .ok();
    let upper = dir.join("-/upper");
    assert!(upper.join("root/fvm-esc-secret").is_file());
    let out = look_for_secret(&store, "early", &secret, &[upper]);
    assert!(
        !out.stdout.contains(&secret),
        "vm early (running since before vm late was made) reads vm late's layer in its --dir:\n{out}"
    );
    store.stop("early");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 9. hostname, clock, host network

const CLOCK_PROBE: &str = r#"
# struct timex with modes = ADJ_SETOFFSET and an offset of 0: a step by nothing.
tx = bytearray(208)
struct.pack_into("<I", tx, 0, 0x0100)
say("settimeofday", sc(164, mem(struct.pack("<qq", 0, 2000000)), None))
say("clock_settime", sc(227, 0, mem(struct.pack("<qq", 0, 2000000000))))
say("adjtimex(ADJ_SETOFFSET)", sc(159, mem(bytes(tx))))
say("clock_adjtime(ADJ_SETOFFSET)", sc(305, 0, mem(bytes(tx))))
"#;

/// `hostname` in a VM changes at most the VM's own name (no CAP_SYS_ADMIN: it
/// fails), `date -s` fails and the host clock doesn't move, and in host network
/// mode `ip link add` and `ip addr add` fail (no CAP_NET_ADMIN) and leave the
/// host's network as it was.
#[test]
fn hostname_clock_and_host_network_stay_the_hosts() {
    let test = "hostname_clock_and_host_network_stay_the_hosts";
    if !needs_root(test) || !needs_tool(test, "ip") || !x86_64(test) {
        return;
    }
    let (link, addr) = ("fvmesc0", "10.254.254.1");
    assert!(
        !host_has_link(link) && !host_has_address(addr),
        "the host already has {link} or {addr} (left by an earlier run?)"
    );
    let _undo = Undo(|| {
        if host_has_link(link) {
            quiet(&format!("ip link del {link}"));
        }
        if host_has_address(addr) {
            quiet(&format!("ip addr del {addr}/32 dev lo"));
        }
    });
    let hostname = host_value("/proc/sys/kernel/hostname");
    let domainname = host_value("/proc/sys/kernel/domainname");
    let _names = Undo(|| {
        if host_value("/proc/sys/kernel/hostname") != hostname {
            let _ = std::fs::write("/proc/sys/kernel/hostname", &hostname);
        }
        if host_value("/proc/sys/kernel/domainname") != domainname {
            let _ = std::fs::write("/proc/sys/kernel/domainname", &domainname);
        }
    });
    let (wall0, mono0) = (SystemTime::now(), Instant::now());
    let store = TestStore::new("esc-ident");
    store.create("id1");
    store.start("id1");

    // Hostname and domain name: the VM's own UTS namespace, if anything.
    let out = store.sh(
        "id1",
        "hostname fvmesc-other && domainname fvmesc-domain; hostname",
    );
    let now = out.stdout.lines().last().unwrap_or_default();
    assert!(
        now == "id1" || now == "fvmesc-other",
        "the vm's hostname is {now:?}:\n{out}"
    );
    assert_eq!(
        host_value("/proc/sys/kernel/hostname"),
        hostname,
        "the vm changed the host's hostname"
    );
    assert_eq!(
        host_value("/proc/sys/kernel/domainname"),
        domainname,
        "the vm changed the host's domain name"
    );

    // The clock: the calls `date -s` makes are refused (tried with invalid or
    // zero values first, so that the real `date -s` is never let loose).
    let out = probe(&store, "id1", CLOCK_PROBE, &[]);
    assert_results(
        &out,
        &[
            ("settimeofday", "EPERM"),
            ("clock_settime", "EPERM"),
            ("adjtimex(ADJ_SETOFFSET)", "EPERM"),
            ("clock_adjtime(ADJ_SETOFFSET)", "EPERM"),
        ],
        "clock calls the vm can make (`date -s` not tried)",
    );
    let out = store.sh("id1", "date -s '2001-02-03 04:05:06'");
    assert_ne!(out.code, 0, "`date -s` worked in the vm:\n{out}");
    assert!(
        out.stderr.contains("Operation not permitted"),
        "`date -s` should fail with EPERM:\n{out}"
    );
    let wall = match SystemTime::now().duration_since(wall0) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let jump = wall - mono0.elapsed().as_secs_f64();
    assert!(
        jump.abs() < 5.0,
        "the host clock jumped by {jump:.1} s while the vm ran `date -s`"
    );

    // The network: host mode shares the host's namespace, read-only.
    let out = store.sh("id1", "readlink /proc/self/ns/net").ok();
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        out.out(),
        s(&host_net),
        "the vm is not in host network mode (the default)"
    );
    let attempts: Vec<Out> = [
        format!("ip link add {link} type dummy"),
        format!("ip addr add {addr}/32 dev lo"),
    ]
    .iter()
    .map(|cmd| store.sh("id1", cmd))
    .collect();
    assert!(!host_has_link(link), "the vm made link {link} on the host");
    assert!(
        !host_has_address(addr),
        "the vm put {addr} on the host's loopback:\n{}",
        attempts[1]
    );
    for out in &attempts {
        assert!(
            out.code != 0 && out.stderr.contains("Operation not permitted"),
            "should fail with EPERM (no CAP_NET_ADMIN):\n{out}"
        );
    }
    store.stop("id1");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 10. bpf, perf events, keyrings

const BPF_PERF_KEYS: &str = r#"
# bpf: an array map, and a socket filter "return 0".
say("bpf(MAP_CREATE)", sc(321, 0, mem(struct.pack("<IIIII", 2, 4, 4, 1, 0), 128), 128))
insns = mem(struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0))
gpl = mem(b"GPL")
attr = struct.pack("<IIQQ", 1, 2, ctypes.addressof(insns), ctypes.addressof(gpl))
say("bpf(PROG_LOAD)", sc(321, 5, mem(attr, 128), 128))
# perf: a task clock of this process, and a CPU-wide cycle counter (a spy's).
flags = (1 << 0) | (1 << 5) | (1 << 6)  # disabled, exclude_kernel, exclude_hv
say("perf_event_open(task-clock)", sc(298, mem(struct.pack("<IIQQQQQ", 1, 112, 0, 0, 0, 0, flags), 112), 0, -1, -1, 8))
say("perf_event_open(cpu-wide)", sc(298, mem(struct.pack("<IIQQQQQ", 0, 112, 0, 0, 0, 0, 1), 112), -1, 0, -1, 8))
# keyrings: root's user keyring is the host root's.
say("keyctl(GET_KEYRING_ID,user)", sc(250, 0, -4, 0))
say("keyctl(JOIN_SESSION_KEYRING)", sc(250, 1, "fvm-esc-ring"))
say("add_key(user)", sc(248, "user", "fvm-esc-key", "secret", 6, -2))
say("request_key(user)", sc(249, "user", "fvm-esc-key", None, 0))
"#;

/// `bpf`, `perf_event_open` and the keyring calls, with the arguments a real
/// program would pass, fail with EPERM.
#[test]
fn bpf_perf_events_and_keyrings_are_denied() {
    let test = "bpf_perf_events_and_keyrings_are_denied";
    if !needs_root(test) || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-bpf");
    store.create("b1");
    let out = probe(&store, "b1", BPF_PERF_KEYS, &[]);
    let names = [
        "bpf(MAP_CREATE)",
        "bpf(PROG_LOAD)",
        "perf_event_open(task-clock)",
        "perf_event_open(cpu-wide)",
        "keyctl(GET_KEYRING_ID,user)",
        "keyctl(JOIN_SESSION_KEYRING)",
        "add_key(user)",
        "request_key(user)",
    ];
    let expected: Vec<(&str, &str)> = names.iter().map(|n| (*n, "EPERM")).collect();
    assert_results(
        &out,
        &expected,
        "bpf, perf events or keyrings reachable from the vm",
    );
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 11. TIOCSTI

/// What runs in the VM: TIOCSTI of a command line on stdin, stdout, stderr and
/// /dev/tty, then a marker.
const TIOCSTI_PAYLOAD: &str = r#"
import errno, fcntl, os, termios
res = []
fds = [0, 1, 2]
try:
    fds.append(os.open("/dev/tty", os.O_RDWR))
except OSError as e:
    res.append("tty=" + errno.errorcode.get(e.errno, str(e.errno)))
for fd in fds:
    r = "OK"
    for c in b"echo fvm-esc-pwned\n":
        try:
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
        except OSError as e:
            r = errno.errorcode.get(e.errno, str(e.errno))
            break
    res.append("fd%d=%s" % (fd, r))
print("TIOCSTI" + "-DONE", " ".join(res), flush=True)
"#;

/// A process in the VM pushes `echo fvm-esc-pwned` into its terminal with
/// TIOCSTI (CVE-2017-5226), under `fvm run -t` and `fvm shell` run on a terminal
/// of the test's: whatever lands in the VM's own pty, nothing is left queued as
/// input on the caller's terminal. (A kernel with `dev.tty.legacy_tiocsti=0`
/// refuses TIOCSTI altogether; the host side must be clean either way.)
#[test]
fn tiocsti_never_reaches_the_callers_terminal() {
    let test = "tiocsti_never_reaches_the_callers_terminal";
    if !needs_root(test) || !needs_tool(test, "python3") {
        return;
    }
    let store = TestStore::new("esc-tiocsti");
    store.create("t1");
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("t1");
        }
        for mode in ["run", "shell"] {
            let got = on_a_pty(&store, mode, "t1", TIOCSTI_PAYLOAD);
            assert!(
                got.output.contains("TIOCSTI-DONE"),
                "{phase} {mode}: the payload did not run:\n{}\n{}",
                got.output,
                got.raw
            );
            assert!(
                got.queued.is_empty(),
                "{phase} {mode}: the vm injected {:?} into the caller's terminal ({}):\n{}",
                String::from_utf8_lossy(&got.queued),
                got.output
                    .lines()
                    .find(|l| l.contains("TIOCSTI-DONE"))
                    .unwrap_or_default()
                    .trim(),
                got.output
            );
            assert_eq!(got.code, 0, "{phase} {mode}:\n{}", got.output);
        }
    }
    store.stop("t1");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 12. reboot

const REBOOT_PROBE: &str = r#"
if os.readlink("/proc/self/ns/pid") == sys.argv[1]:
    say("pid-namespace", "HOST")  # never reboot from the host's pid namespace
else:
    say("pid-namespace", "OWN")
    for name, cmd in (("RESTART", 0x01234567), ("POWER_OFF", 0x4321FEDC),
                      ("HALT", 0xCDEF0123), ("RESTART2", 0xA1B2C3D4)):
        say("reboot(%s)" % name, in_child(lambda: sc(169, 0xfee1dead, 672274793, cmd, "fvm-esc")))
"#;

/// `reboot` with every command that would restart or halt fails with EPERM (in
/// a pid namespace it could at most end the VM); the host (this test) and a
/// second VM run on, and so does the VM itself.
#[test]
fn reboot_fails_and_the_host_and_other_vms_run_on() {
    let test = "reboot_fails_and_the_host_and_other_vms_run_on";
    if !needs_root(test) || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-reboot");
    store.create("ra");
    store.create("rb");
    store.start("ra");
    store.start("rb");
    let b_sleep = daemon(&store, "rb", "sleep 3555555");
    let host_pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let out = probe(&store, "ra", REBOOT_PROBE, &[s(&host_pidns)]);
    assert_results(
        &out,
        &[
            ("pid-namespace", "OWN"),
            ("reboot(RESTART)", "EPERM"),
            ("reboot(POWER_OFF)", "EPERM"),
            ("reboot(HALT)", "EPERM"),
            ("reboot(RESTART2)", "EPERM"),
        ],
        "reboot in the vm was not refused",
    );
    assert_eq!(store.status("ra"), "running", "vm ra ended");
    assert_eq!(store.status("rb"), "running", "vm rb ended");
    assert!(is_alive_as(b_sleep, "sleep"), "vm rb's process ended");
    store.stop("ra");
    store.stop("rb");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 13. hostile layers

/// A VM plants symlinks to a host directory of the test's, to /etc and to /,
/// relative ones and a loop, deletes a host file (a whiteout) and replaces a host
/// directory: `delete` (of the stopped VM, and `--force` of a running one) leaves
/// the directory's files and /etc exactly as they were.
#[test]
fn delete_never_follows_symlinks_the_vm_planted() {
    let test = "delete_never_follows_symlinks_the_vm_planted";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esc-delete");
    let victim = var_tmp_dir("esc-victim");
    let v = victim.path();
    std::fs::create_dir(v.join("sub")).unwrap();
    for (f, text) in [("a", "host a\n"), ("b", "host b\n"), ("sub/c", "host c\n")] {
        std::fs::write(v.join(f), text).unwrap();
    }
    let victim_before = tree_snapshot(v);
    let etc_before = etc_snapshot();
    let tag = unique("link");
    let plant = format!(
        "set -e
         ln -s {v} /var/tmp/{tag}-victim
         ln -s /etc /var/tmp/{tag}-etc
         ln -s / /var/tmp/{tag}-root
         mkdir -p /var/tmp/{tag}-dir && cd /var/tmp/{tag}-dir
         ln -s {v}/a file-link && ln -s ../../../../../../etc rel-etc
         ln -s loop2 loop1 && ln -s loop1 loop2
         rm {v}/b && rm -r {v}/sub && ln -s /etc {v}/sub",
        v = s(v)
    );
    for (name, running) in [("dl1", false), ("dl2", true)] {
        store.create(name);
        store.sh(name, &plant).ok();
        if running {
            store.start(name);
            store.fvm(&["delete", "--force", name]).ok();
        } else {
            store.fvm(&["delete", name]).ok();
        }
        let after = tree_snapshot(v);
        assert!(
            victim_before == after,
            "deleting vm {name} changed the host directory its symlinks point at:\n{}",
            snapshot_difference(&victim_before, &after)
        );
        let etc = etc_snapshot();
        assert!(
            etc_before == etc,
            "deleting vm {name} changed /etc:\n{}",
            snapshot_difference(&etc_before, &etc)
        );
        for suffix in ["victim", "etc", "root", "dir"] {
            assert!(
                !Path::new(&format!("/var/tmp/{tag}-{suffix}")).exists(),
                "vm {name}'s /var/tmp/{tag}-{suffix} is on the host"
            );
        }
    }
    store.assert_clean();
}

/// `commit` of a VM whose layer has a symlink where the host has a directory
/// (with files the VM then "wrote through" it), and one where the host has a
/// file: the symlinks land as symlinks (or the commit refuses), and nothing is
/// ever written through them into their targets.
#[test]
fn commit_writes_planted_symlinks_as_symlinks_never_through_them() {
    let test = "commit_writes_planted_symlinks_as_symlinks_never_through_them";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esc-commit");
    let host = var_tmp_dir("esc-commit");
    let victim = var_tmp_dir("esc-commit-victim");
    let (h, v) = (host.path(), victim.path());
    std::fs::create_dir(h.join("dir")).unwrap();
    std::fs::write(h.join("dir/child"), "host child\n").unwrap();
    std::fs::write(h.join("file"), "host file\n").unwrap();
    std::fs::create_dir(v.join("inner")).unwrap();
    std::fs::write(v.join("secret"), "victim secret\n").unwrap();
    std::fs::write(v.join("inner/x"), "victim x\n").unwrap();
    let victim_before = tree_snapshot(v);
    let host_before = tree_snapshot(h);
    let etc_before = etc_snapshot();
    store.create("cm");
    store
        .sh(
            "cm",
            &format!(
                "set -e; cd {h}
                 rm -r dir && ln -s {v} dir && echo vm > dir/through && echo vm > dir/inner/x
                 rm file && ln -s {v}/secret file && echo vm > file
                 ln -s /etc etc-link && ln -s / root-link
                 test \"$(cat {v}/secret)\" = vm",
                h = s(h),
                v = s(v)
            ),
        )
        .ok();
    let out = store.fvm(&["commit", "cm", s(h)]);
    let victim_after = tree_snapshot(v);
    assert!(
        victim_before == victim_after,
        "commit wrote through a planted symlink into its target:\n{}\n{out}",
        snapshot_difference(&victim_before, &victim_after)
    );
    let etc = etc_snapshot();
    assert!(
        etc_before == etc,
        "commit changed /etc:\n{}",
        snapshot_difference(&etc_before, &etc)
    );
    if out.code == 0 {
        for (p, target) in [
            ("dir", v.to_owned()),
            ("file", v.join("secret")),
            ("etc-link", "/etc".into()),
            ("root-link", "/".into()),
        ] {
            let link = std::fs::read_link(h.join(p));
            assert_eq!(
                link.ok().as_deref(),
                Some(target.as_path()),
                "{p} should land as a symlink to {}:\n{out}",
                target.display()
            );
        }
    } else {
        assert_eq!(out.code, 125, "{out}");
        let after = tree_snapshot(h);
        assert!(
            host_before == after,
            "a refused commit changed the host:\n{}",
            snapshot_difference(&host_before, &after)
        );
    }
    store.assert_clean();
    assert_eq!(tree_snapshot(v), victim_before, "deleting the vm");
}

/// The size of everything under `root`, not following symlinks.
fn tree_size(root: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(root) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(root)
        .map(|d| d.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// A layer with symlink loops, a symlink to `/`, to `..`, to `.`, and through
/// /proc: `diff` (of the directory and of the whole VM), `stats` and `copy`
/// finish, list the symlinks as symlinks and never what is behind them, and the
/// copy holds the same symlinks.
#[test]
fn copy_diff_and_stats_do_not_follow_symlink_loops_or_root() {
    let test = "copy_diff_and_stats_do_not_follow_symlink_loops_or_root";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esc-loops");
    let host = var_tmp_dir("esc-loops");
    let h = host.path();
    store.create("lp");
    store.start("lp");
    store
        .sh(
            "lp",
            &format!(
                "set -e; cd {}
                 ln -s loop2 loop1 && ln -s loop1 loop2 && ln -s . self && ln -s .. up
                 ln -s / root && ln -s /proc/self/root procroot
                 mkdir d && ln -s ../d d/back",
                s(h)
            ),
        )
        .ok();
    let links = [
        ("loop1", "loop2"),
        ("loop2", "loop1"),
        ("self", "."),
        ("up", ".."),
        ("root", "/"),
        ("procroot", "/proc/self/root"),
        ("d/back", "../d"),
    ];
    // The directory itself changed only by its new entries: not listed.
    let mut want: Vec<String> = vec!["A d".into()];
    want.extend(links.iter().map(|(p, _)| format!("A {p}")));
    want.sort();
    let diff_of = |vm: &str| -> Vec<String> {
        let out = store.fvm(&["diff", vm, s(h)]).ok();
        let mut lines: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| {
                let (kind, path) = l.split_once(' ')?;
                let rel = Path::new(path).strip_prefix(h).ok()?;
                let rel = if rel.as_os_str().is_empty() {
                    ".".to_owned()
                } else {
                    rel.display().to_string()
                };
                Some(format!("{kind} {rel}"))
            })
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(diff_of("lp"), want, "diff follows or misses symlinks");
    let all = store.fvm(&["diff", "lp"]).ok();
    for (p, _) in links {
        let behind = format!("{}/", h.join(p).display());
        assert!(
            !all.stdout.lines().any(|l| l.contains(&behind)),
            "diff of the whole vm lists what is behind symlink {p}:\n{all}"
        );
    }
    let out = store.fvm(&["--json", "stats", "lp"]).ok();
    let stats: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stats --json: not JSON ({e}):\n{out}"));
    let disk = stats[0]["disk"].as_u64();
    assert!(
        disk.is_some_and(|d| d < 64 << 20),
        "stats counts {disk:?} bytes in a layer of symlinks (following them?):\n{out}"
    );

    store.stop("lp");
    store.fvm(&["copy", "lp", "lp2"]).ok();
    assert_eq!(diff_of("lp2"), want, "the copy's diff");
    let upper = |vm: &str| -> PathBuf {
        let mut p = store.root.join("vms").join(vm).join("layers/-/upper");
        p.push(h.strip_prefix("/").unwrap());
        p
    };
    for (p, target) in links {
        let got = std::fs::read_link(upper("lp2").join(p));
        assert_eq!(
            got.ok().as_deref(),
            Some(Path::new(target)),
            "the copy's {p} is not the same symlink"
        );
    }
    let size = tree_size(&store.root.join("vms/lp2/layers"));
    assert!(
        size < 64 << 20,
        "the copy's layers hold {size} bytes: it followed a symlink"
    );
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 14. --security unconfined

/// The policy file's top-level `security` value, if any.
fn policy_security(store: &TestStore, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(store.root.join("vms").join(name).join("vm.toml"))
        .unwrap_or_default();
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "security").then(|| v.trim().trim_matches('"').to_owned())
        })
}

/// Assert a one-line `fvm: ` error with status 125.
#[track_caller]
fn assert_refused(out: &Out) {
    assert_eq!(out.code, 125, "`{}` was not refused:\n{out}", out.what);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error expected:\n{out}");
    assert!(lines[0].starts_with("fvm: "), "{out}");
}

/// `--security unconfined` gives root in the VM the host root's capabilities and
/// no filter, with a warning on every start and command; `--security default`
/// brings confinement back; a bad value is refused and changes nothing.
#[test]
fn unconfined_lifts_confinement_with_a_warning_and_default_restores_it() {
    let test = "unconfined_lifts_confinement_with_a_warning_and_default_restores_it";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esc-unconf");
    let host = host_status(std::process::id() as i32);
    let script = print_status("command", "/proc/$$/status");
    let status_in = |out: &Out| {
        tagged_status(&out.stdout)
            .remove("command")
            .unwrap_or_default()
    };

    store
        .fvm(&["create", "uc", "--security", "unconfined"])
        .ok();
    store.inspect("uc");
    assert_eq!(policy_security(&store, "uc").as_deref(), Some("unconfined"));
    for phase in ["cold", "running"] {
        if phase == "running" {
            let out = store.fvm(&["start", "uc"]).ok();
            assert!(
                out.stderr.contains("unconfined"),
                "start of an unconfined vm gives no warning:\n{out}"
            );
        }
        let out = store.sh("uc", &script).ok();
        assert!(
            out.stderr.contains("unconfined"),
            "{phase}: a command in an unconfined vm gives no warning:\n{out}"
        );
        let st = status_in(&out);
        for key in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                st.get(key),
                host.get(key),
                "{phase}: {key} in an unconfined vm is not the host root's ({}):\n{out}",
                cap_names(
                    u64::from_str_radix(host.get(key).map_or("0", String::as_str), 16).unwrap_or(0)
                        & !u64::from_str_radix(st.get(key).map_or("0", String::as_str), 16)
                            .unwrap_or(0)
                )
            );
        }
        assert_eq!(
            st.get("Seccomp").map(String::as_str),
            Some("0"),
            "{phase}: {out}"
        );
    }
    store.stop("uc");

    // Back to default: confined, and quiet about it.
    store.fvm(&["config", "uc", "--security", "default"]).ok();
    assert_ne!(policy_security(&store, "uc").as_deref(), Some("unconfined"));
    let out = store.sh("uc", &script).ok();
    assert!(!out.stderr.contains("unconfined"), "{out}");
    assert_kept_caps(&status_in(&out), "a vm set back to default", &out);
    assert_eq!(
        status_in(&out).get("Seccomp").map(String::as_str),
        Some("2"),
        "{out}"
    );
    // And unconfined again through config.
    store
        .fvm(&["config", "uc", "--security", "unconfined"])
        .ok();
    assert_eq!(policy_security(&store, "uc").as_deref(), Some("unconfined"));
    let out = store.sh("uc", &script).ok();
    assert_eq!(
        status_in(&out).get("Seccomp").map(String::as_str),
        Some("0")
    );

    // A bad value: refused, no VM made, the policy as it was.
    let out = store.fvm(&["create", "bogus1", "--security", "bogus"]);
    assert_refused(&out);
    assert!(!store.vm_dirs().contains(&"bogus1".to_owned()));
    let policy = store.root.join("vms/uc/vm.toml");
    let before = std::fs::read(&policy).unwrap();
    let out = store.fvm(&["config", "uc", "--security", "bogus"]);
    assert_refused(&out);
    assert!(
        std::fs::read(&policy).unwrap() == before,
        "a refused --security changed the policy"
    );
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 15-17. what root in a VM must still be able to do

/// Build `fvm-esc-test_1.0_all.deb` (installs /usr/share/fvm-esc-test/hello) in
/// `dir`.
#[track_caller]
fn build_deb(dir: &Path) -> PathBuf {
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/fvm-esc-test")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: fvm-esc-test\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: fvm tests <root@localhost>\nDescription: fvm escape-suite test package\n",
    )
    .unwrap();
    std::fs::write(pkg.join("usr/share/fvm-esc-test/hello"), "hello\n").unwrap();
    let deb = dir.join("fvm-esc-test_1.0_all.deb");
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(["--build", "--root-owner-group"])
        .arg(&pkg)
        .arg(&deb);
    run(cmd, None).ok();
    deb
}

/// True when the host has package `name` installed.
fn host_has_package(name: &str) -> bool {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Status}", name]);
    run(cmd, None).stdout.contains("install ok installed")
}

/// Package management works in a VM, on the VM only: `dpkg -i` and `apt-get
/// install` of a local `.deb` (no network) install it, `dpkg -s` knows it; the
/// host has neither the package nor its file.
#[test]
fn dpkg_and_apt_install_a_local_package_inside_only() {
    let test = "dpkg_and_apt_install_a_local_package_inside_only";
    if !needs_root(test) || !needs_tool(test, "dpkg-deb") || !needs_tool(test, "apt-get") {
        return;
    }
    assert!(
        !host_has_package("fvm-esc-test"),
        "the host already has fvm-esc-test (left by an earlier run?)"
    );
    let _undo = Undo(|| {
        if host_has_package("fvm-esc-test") {
            quiet("dpkg --purge fvm-esc-test");
        }
    });
    let files = var_tmp_dir("esc-deb");
    let deb = build_deb(files.path());
    let deb = s(&deb);
    let store = TestStore::new("esc-dpkg");
    store.create("dp");
    store.create("ap");
    store.sh("dp", &format!("test -r {deb}")).ok();

    let out = run_in(&store, "dp", &["dpkg", "-i", deb]);
    assert_eq!(out.code, 0, "dpkg -i failed in the vm:\n{out}");
    let out = store
        .sh(
            "dp",
            "dpkg -s fvm-esc-test | grep '^Status'; cat /usr/share/fvm-esc-test/hello",
        )
        .ok();
    assert_eq!(out.out(), "Status: install ok installed\nhello", "{out}");

    let out = run_in(&store, "ap", &["apt-get", "install", "-y", "-q", deb]);
    assert_eq!(out.code, 0, "apt-get install failed in the vm:\n{out}");
    let out = store.sh("ap", "dpkg -s fvm-esc-test | grep '^Status'").ok();
    assert_eq!(out.out(), "Status: install ok installed", "{out}");

    assert!(
        !host_has_package("fvm-esc-test"),
        "the vm installed fvm-esc-test on the host"
    );
    assert!(
        !Path::new("/usr/share/fvm-esc-test").exists(),
        "the package's files are on the host"
    );
    store.assert_clean();
}

/// Build `fvmesc-1.0-py3-none-any.whl` (module `fvmesc`) in `dir` with python's
/// zipfile: the module, METADATA, WHEEL and a RECORD with real hashes.
#[track_caller]
fn build_wheel(dir: &Path, py: &str) -> PathBuf {
    let wheel = dir.join("fvmesc-1.0-py3-none-any.whl");
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "fvmesc/__init__.py": b"VALUE = 'fvm-esc-wheel'\n",
    "fvmesc-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fvmesc\nVersion: 1.0\nSummary: fvm escape-suite test wheel\n",
    "fvmesc-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: fvm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += "%s,sha256=%s,%d\n" % (name, digest, len(data))
record += "fvmesc-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
    z.writestr("fvmesc-1.0.dist-info/RECORD", record)
"#;
    let mut cmd = Command::new(py);
    cmd.args(["-c", script]).arg(&wheel);
    run(cmd, None).ok();
    wheel
}

/// Whether `py` on the host can import module `fvmesc`.
fn host_imports(py: &str) -> bool {
    let mut cmd = Command::new(py);
    cmd.args(["-c", "import fvmesc"]);
    run(cmd, None).code == 0
}

/// `pip install --no-index` of a local wheel works in a VM, which can then
/// import the module; the host can't.
#[test]
fn pip_installs_a_local_wheel_inside_only() {
    let test = "pip_installs_a_local_wheel_inside_only";
    if !needs_root(test) {
        return;
    }
    let Some(py) = needs_pip(test) else {
        return;
    };
    assert!(
        !host_imports(py),
        "the host already has module fvmesc (left by an earlier run?)"
    );
    let _undo = Undo(|| {
        if host_imports(py) {
            quiet(&format!(
                "{py} -m pip uninstall -y --break-system-packages fvmesc"
            ));
        }
    });
    let files = var_tmp_dir("esc-wheel");
    let wheel = build_wheel(files.path(), py);
    let store = TestStore::new("esc-pip");
    store.create("pp");
    let out = run_in(
        &store,
        "pp",
        &[
            py,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--break-system-packages",
            "--root-user-action=ignore",
            "--disable-pip-version-check",
            s(&wheel),
        ],
    );
    assert_eq!(out.code, 0, "pip install failed in the vm:\n{out}");
    let out = run_in(
        &store,
        "pp",
        &[py, "-c", "import fvmesc; print(fvmesc.VALUE)"],
    )
    .ok();
    assert_eq!(out.out(), "fvm-esc-wheel", "{out}");
    assert!(!host_imports(py), "the vm's pip install reached the host");
    store.assert_clean();
}

/// True when the host has user `name`.
fn host_has_user(name: &str) -> bool {
    host_value("/etc/passwd")
        .lines()
        .any(|l| l.split(':').next() == Some(name))
}

/// `useradd -m`, `id`, `su` work in a VM, and a setuid-root program run by that
/// user becomes euid 0 (no_new_privs is off) with only the kept capabilities; the
/// host has no such user, home or program.
#[test]
fn useradd_su_and_setuid_programs_work_inside_with_the_kept_capabilities() {
    let test = "useradd_su_and_setuid_programs_work_inside_with_the_kept_capabilities";
    if !needs_root(test)
        || !needs_tool(test, "useradd")
        || !needs_tool(test, "su")
        || !needs_tool(test, "setpriv")
    {
        return;
    }
    let user = "fvmescuser";
    assert!(
        !host_has_user(user),
        "the host already has user {user} (left by an earlier run?)"
    );
    let _undo = Undo(|| {
        if host_has_user(user) {
            quiet(&format!("userdel -r {user}"));
        }
    });
    let store = TestStore::new("esc-user");
    store.create("us");
    store.start("us");
    let out = store
        .sh("us", &format!("useradd -m {user} && id {user}"))
        .ok();
    assert!(out.out().contains(&format!("({user})")), "{out}");
    let out = run_in(&store, "us", &["su", user, "-s", "/bin/sh", "-c", "id -un"]).ok();
    assert_eq!(out.out(), user, "su to {user} in the vm:\n{out}");

    let dir = format!("/var/tmp/{}", unique("suid"));
    let out = store
        .sh(
            "us",
            &format!(
                "set -e; mkdir -m 755 {dir}; cp /usr/bin/id /usr/bin/cat {dir}/
                 chmod 4755 {dir}/id {dir}/cat
                 as_user() {{ setpriv --reuid=$(id -u {user}) --regid=$(id -g {user}) --clear-groups \"$@\"; }}
                 as_user {dir}/id
                 as_user {dir}/cat /proc/self/status"
            ),
        )
        .ok();
    assert!(
        out.stdout.contains("euid=0(root)"),
        "a setuid-root program run by {user} did not get euid 0 (no_new_privs on?):\n{out}"
    );
    let st = parse_status(&out.stdout);
    let uids: Vec<&str> = st
        .get("Uid")
        .map(|u| u.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        uids.get(1),
        Some(&"0"),
        "effective uid of the setuid cat:\n{out}"
    );
    assert_kept_caps(&st, "a setuid-root program in the vm", &out);

    assert!(!host_has_user(user), "the vm's useradd reached the host");
    assert!(!Path::new(&format!("/home/{user}")).exists());
    assert!(!Path::new(&dir).exists(), "the vm's {dir} is on the host");
    store.stop("us");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 15. other network namespaces: the host's, through netlink and sockets

/// Raw rtnetlink from inside a VM, aimed at the host's network namespace:
/// `say(name, result)` for each, where the result is `OK...` if the kernel did
/// it, else the errno name. argv: the index of a host link the test made, and a
/// name for a link the probe tries to create on the host.
const NETNS_PROBE: &str = r#"
import socket, fcntl
HOST_IFINDEX = int(sys.argv[1])
NEW_NAME = sys.argv[2].encode()

def attr(kind, data):
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * ((4 - n % 4) % 4)

def u32(v):
    return struct.pack("=I", v & 0xffffffff)

def s32(v):
    return struct.pack("=i", v)

def nl(msg_type, flags, body):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.settimeout(5)
    try:
        s.send(struct.pack("=IHHII", 16 + len(body), msg_type, flags | 1, 1, 0) + body)
        names = []
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                n, t = struct.unpack_from("=IH", data, off)
                if t == 2:  # NLMSG_ERROR
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        return errname(err)
                    return "OK" + (":" + ",".join(names) if names else "")
                if t == 3:  # NLMSG_DONE, with the dump's error if it failed
                    if n >= 20 and struct.unpack_from("=i", data, off + 16)[0] < 0:
                        return errname(-struct.unpack_from("=i", data, off + 16)[0])
                    return "OK:" + ",".join(names)
                if t == 16:  # RTM_NEWLINK: collect IFLA_IFNAME
                    a = off + 16 + 16
                    while a + 4 <= off + n:
                        al, at = struct.unpack_from("=HH", data, a)
                        if al < 4:
                            break
                        if at == 3:
                            names.append(data[a + 4:a + al].rstrip(b"\0").decode())
                        a += (al + 3) & ~3
                off += (n + 3) & ~3
    except OSError as e:
        return errname(e.errno)
    finally:
        s.close()

ACK, CREATE, EXCL, DUMP = 0x4, 0x400, 0x200, 0x300
IFLA_IFNAME, IFLA_LINK, IFLA_LINKINFO, IFLA_LINK_NETNSID, IFLA_TARGET_NETNSID = 3, 5, 18, 37, 46
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWNSID = 16, 17, 18, 88

def ifinfo(index=0):
    return struct.pack("=BxHiII", 0, 0, index, 0, 0)

def kind(k):
    return attr(IFLA_LINKINFO, attr(1, k))

# A bridge made in the host's namespace (netnsid 0).
say("newlink-target-netnsid", nl(RTM_NEWLINK, ACK | CREATE | EXCL,
    ifinfo() + attr(IFLA_IFNAME, NEW_NAME + b"\0") + kind(b"bridge")
    + attr(IFLA_TARGET_NETNSID, s32(0))))
# The host's links, listed.
say("getlink-target-netnsid", nl(RTM_GETLINK, DUMP,
    ifinfo() + attr(IFLA_TARGET_NETNSID, s32(0))))
say("getlink-one-target-netnsid", nl(RTM_GETLINK, ACK,
    ifinfo(HOST_IFINDEX) + attr(IFLA_TARGET_NETNSID, s32(0))))
# The test's host link, deleted.
say("dellink-target-netnsid", nl(RTM_DELLINK, ACK,
    ifinfo(HOST_IFINDEX) + attr(IFLA_TARGET_NETNSID, s32(0))))
# A macvlan in the VM on top of a host link.
say("newlink-link-netnsid", nl(RTM_NEWLINK, ACK | CREATE | EXCL,
    ifinfo() + attr(IFLA_IFNAME, b"fvmescmv0\0") + kind(b"macvlan")
    + attr(IFLA_LINK, u32(HOST_IFINDEX)) + attr(IFLA_LINK_NETNSID, s32(0))))
# An id for the namespace of the VM's init (NETNSA_PID) and of our own (NETNSA_FD).
say("newnsid-pid", nl(RTM_NEWNSID, ACK, struct.pack("=Bxxx", 0) + attr(2, u32(1))))
fd = os.open("/proc/self/ns/net", os.O_RDONLY)
say("newnsid-fd", nl(RTM_NEWNSID, ACK, struct.pack("=Bxxx", 0) + attr(3, u32(fd))))
# stdin is a socket the host made: the host's network namespace, by ioctl.
try:
    ns = fcntl.ioctl(0, 0x894c)
    say("siocgskns-stdin", "OK")
except OSError as e:
    say("siocgskns-stdin", errname(e.errno))
"#;

/// Root in a VM of each network mode can neither read nor change any network
/// namespace but its own: rtnetlink aimed at the host's namespace by id
/// (IFLA_TARGET_NETNSID, IFLA_LINK_NETNSID, which a bridged VM's veth hands it),
/// new namespace ids (RTM_NEWNSID), and the host namespace of a socket it was
/// handed as stdin (SIOCGSKNS) are all refused, and the host's links stay as
/// they were.
#[test]
fn no_vm_reaches_the_hosts_network_namespace() {
    let test = "no_vm_reaches_the_hosts_network_namespace";
    if !network_support::ready(test, &["nft"]) || !x86_64(test) {
        return;
    }
    let net = network_support::Net::new("esc-netns");
    let dummy = format!("fvmesd{}", network_support::random_hex(6));
    let made = format!("fvmesb{}", network_support::random_hex(6));
    let _undo = Undo(|| {
        for link in [&dummy, &made, &"fvmescmv0".to_owned()] {
            if host_has_link(link) {
                quiet(&format!("ip link del {link}"));
            }
        }
    });
    network_support::host(&["ip", "link", "add", &dummy, "type", "bridge"]).ok();
    let index = std::fs::read_to_string(format!("/sys/class/net/{dummy}/ifindex"))
        .expect("the dummy link's index")
        .trim()
        .to_owned();
    let links_before = network_support::links();

    net.create("h", &[]);
    net.create("n", &["--net", "none"]);
    net.bridged("b", &[]);
    let script = escape_support::probe_script(NETNS_PROBE);
    let driver = "import socket, subprocess, sys\n\
                  a, b = socket.socketpair()\n\
                  sys.exit(subprocess.call(sys.argv[1:], stdin=b))";
    for vm in ["h", "n", "b"] {
        let mut cmd = Command::new(escape_support::python());
        cmd.args(["-c", driver, FVM, "--root"])
            .arg(&net.store.root)
            .args(["run", vm, "--", escape_support::python(), "-c", &script])
            .args([index.as_str(), made.as_str()]);
        let out = run(cmd, None);
        let got = results(&out);
        let refused = |name: &str, allowed: &[&str]| {
            let r = got.get(name).map(String::as_str).unwrap_or("no answer");
            assert!(
                allowed.contains(&r),
                "vm {vm} (network {}): {name} gave {r}, expected one of {allowed:?}\n{out}",
                if vm == "h" {
                    "host"
                } else if vm == "n" {
                    "none"
                } else {
                    "bridge"
                }
            );
        };
        // EPERM or EACCES: no CAP_NET_ADMIN (or seccomp). Where the VM's namespace
        // has no id 0, a target id is first refused as unknown (EINVAL).
        for name in [
            "newlink-target-netnsid",
            "getlink-target-netnsid",
            "getlink-one-target-netnsid",
            "dellink-target-netnsid",
        ] {
            refused(name, &["EPERM", "EACCES", "EINVAL"]);
        }
        if vm == "b" {
            // The veth really gives a bridged VM an id for the host's namespace:
            // refused for want of the capability.
            refused("getlink-target-netnsid", &["EACCES"]);
            refused("getlink-one-target-netnsid", &["EACCES"]);
            refused("dellink-target-netnsid", &["EPERM"]);
        }
        refused("newlink-link-netnsid", &["EPERM"]);
        refused("newnsid-pid", &["EPERM"]);
        refused("newnsid-fd", &["EPERM"]);
        refused("siocgskns-stdin", &["EPERM"]);
        assert!(host_has_link(&dummy), "vm {vm} deleted the host's {dummy}");
        assert!(!host_has_link(&made), "vm {vm} made {made} on the host");
    }
    let names = |links: &[network_support::Link]| -> BTreeMap<String, ()> {
        links
            .iter()
            // The store's bridge and veths, and other tests' links, are fvm*.
            .filter(|l| !l.name.starts_with("fvm"))
            .map(|l| (l.name.clone(), ()))
            .collect()
    };
    assert_eq!(
        names(&network_support::links()),
        names(&links_before),
        "the host's links changed"
    );
}

// ---------------------------------------------------------------------------
// 16. system calls that get around the filter or out of every namespace

const SURFACE_PROBE: &str = r#"
params = mem(b"", 120)
say("io_uring_setup", sc(425, 1, params))
say("io_uring_enter", sc(426, 0, 0, 0, 0, None, 0))
say("io_uring_register", sc(427, 0, 0, None, 0))
r, e = call(41, 40, 1, 0)   # socket(AF_VSOCK, SOCK_STREAM, 0)
say("socket(AF_VSOCK)", e or "OK")
r, e = call(53, 40, 1, 0, mem(b"", 8))   # socketpair(AF_VSOCK, ...)
say("socketpair(AF_VSOCK)", e or "OK")
say("x32-getpid", sc(0x40000000 + 39))
say("x32-mount", sc(0x40000000 + 165, "none", "/tmp", "tmpfs", 0, None))
say("syscall(-1)", sc(-1))
say("getpid", sc(39))
"#;

/// io_uring (whose operations bypass the filter), vsock sockets (not
/// namespaced: a VM could take the host's vsock ports) and the x32 twins of the
/// system calls are denied; an unknown number still gets ENOSYS.
#[test]
fn io_uring_vsock_and_x32_are_denied() {
    let test = "io_uring_vsock_and_x32_are_denied";
    if !needs_root(test) || !x86_64(test) {
        return;
    }
    let store = TestStore::new("esc-surface");
    store.create("s1");
    for net in ["host", "none"] {
        store.fvm(&["config", "s1", "--net", net]).ok();
        let out = probe(&store, "s1", SURFACE_PROBE, &[]);
        assert_results(
            &out,
            &[
                ("io_uring_setup", "EPERM"),
                ("io_uring_enter", "EPERM"),
                ("io_uring_register", "EPERM"),
                ("socket(AF_VSOCK)", "EPERM"),
                ("x32-getpid", "EPERM"),
                ("x32-mount", "EPERM"),
                ("syscall(-1)", "ENOSYS"),
                ("getpid", "OK"),
            ],
            &format!("the system call surface of a vm with network {net}"),
        );
        let pair = results(&out);
        assert!(
            pair.get("socketpair(AF_VSOCK)").is_some_and(|r| r != "OK"),
            "socketpair(AF_VSOCK) worked:\n{out}"
        );
    }
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 17. names that would fake the review

/// The hostile names: terminal escapes (ESC, the 8-bit CSI), line breaks,
/// backspace, tab, invalid UTF-8 and a right-to-left override, as python bytes
/// literals, each with what fvm must show for it.
const HOSTILE_NAMES: &[(&str, &str)] = &[
    (
        r"b'esc\x1b[2K\x1b[1A\x1b[2K\x1b[1A'",
        r#""esc\x1b[2K\x1b[1A\x1b[2K\x1b[1A""#,
    ),
    (r"b'cr\rfake'", r#""cr\rfake""#),
    (r"b'lf\nA forged'", r#""lf\nA forged""#),
    (r"b'bs\x08\x08x'", r#""bs\x08\x08x""#),
    (r"b'tab\tx'", r#""tab\tx""#),
    (r"b'csi\xc2\x9b2K'", r#""csi\u{009b}2K""#),
    (r"b'bad\xff\xfe'", r#""bad\xff\xfe""#),
    (r"b'rlo\xe2\x80\xaetxt.sh'", r#""rlo\u{202e}txt.sh""#),
];

/// Every line of `text` is printable: no control character, no invisible
/// formatting character, and no U+FFFD (which stands for bytes that are not
/// UTF-8 in the test's lossy view of the output).
#[track_caller]
fn assert_printable_lines(text: &str, what: &str) {
    for line in text.lines() {
        assert!(
            !line.chars().any(|c| c.is_control()
                || c == '\u{fffd}'
                || matches!(c as u32, 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x206f)),
            "{what}: a line with control, formatting or non-UTF-8 characters: {line:?}\n{text}"
        );
    }
}

/// A VM names files (and a process) with terminal escapes, line breaks,
/// invalid UTF-8 and a right-to-left override: `diff`, `commit --dry-run`,
/// `commit`'s conflicts, `ps` and errors show each on exactly one line, quoted,
/// printable and distinct, so nothing can be hidden from or forged into the
/// review.
#[test]
fn hostile_names_cannot_fake_the_review() {
    let test = "hostile_names_cannot_fake_the_review";
    if !needs_root(test) {
        return;
    }
    let host = var_tmp_dir("esc-names");
    let h = s(host.path());
    let conflicting: &std::ffi::OsStr =
        std::os::unix::ffi::OsStrExt::from_bytes(b"conflict\x1b[2K\nx");
    // A host file with a hostile name of its own, for a conflict.
    std::fs::write(host.path().join(conflicting), "host\n").unwrap();
    let store = TestStore::new("esc-names");
    store.create("nm");
    let names: Vec<&str> = HOSTILE_NAMES.iter().map(|(py, _)| *py).collect();
    let make = format!(
        "import os\nd = {h:?}.encode()\nfor n in [{}]:\n    open(os.path.join(d, n), 'w').write('x')\n\
         open(os.path.join(d, b'conflict\\x1b[2K\\nx'), 'w').write('vm')\n",
        names.join(", ")
    );
    let py = escape_support::python();
    store.fvm(&["run", "nm", "--", py, "-c", &make]).ok();
    // The host changes its file after the VM copied it: a conflict.
    std::fs::write(host.path().join(conflicting), "host again\n").unwrap();

    let want_lines = |shown: &str, prefix: &str| -> Vec<String> {
        HOSTILE_NAMES
            .iter()
            .map(|(_, q)| {
                let inner = &q[1..q.len() - 1];
                format!("{prefix}\"{shown}/{inner}\"")
            })
            .collect()
    };
    let diff = store.fvm(&["diff", "nm", h]).ok();
    assert_printable_lines(&diff.stdout, "fvm diff");
    for line in want_lines(h, "A ") {
        assert!(
            diff.stdout.lines().any(|l| l == line),
            "fvm diff has no line {line:?}:\n{diff}"
        );
    }
    // One line per change: the names and the conflicting file, nothing else
    // (their directory changed only by its new entries, which diff doesn't list).
    assert_eq!(
        diff.stdout.lines().count(),
        HOSTILE_NAMES.len() + 1,
        "fvm diff:\n{diff}"
    );

    let dry = store.fvm(&["commit", "--dry-run", "--force", "nm", h]).ok();
    assert_printable_lines(&dry.stdout, "fvm commit --dry-run");
    for line in want_lines(h, "create     ") {
        assert!(
            dry.stdout.lines().any(|l| l == line),
            "fvm commit --dry-run has no line {line:?}:\n{dry}"
        );
    }

    let conflict = store.fvm(&["commit", "nm", h]);
    assert_ne!(
        conflict.code, 0,
        "the commit should stop at the conflict:\n{conflict}"
    );
    // The conflicts and the error that ends the commit, all on printable lines.
    assert_printable_lines(&conflict.stderr, "fvm commit's conflicts and error");
    let line =
        format!(r#"conflict: "{h}/conflict\x1b[2K\nx" changed on the host after the vm copied it"#);
    assert!(
        conflict.stderr.lines().any(|l| l == line),
        "fvm commit shows no line {line:?}:\n{conflict}"
    );

    // ps: a process whose command line is made of the same names.
    store.start("nm");
    let spawn = format!(
        "import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', [{} + {}, b'1000'])\n",
        HOSTILE_NAMES[0].0, HOSTILE_NAMES[2].0
    );
    store.fvm(&["run", "nm", "--", py, "-c", &spawn]).ok();
    let mut ps = store.fvm(&["ps", "nm"]).ok();
    wait_until("the hostile sleep shows in fvm ps", || {
        ps = store.fvm(&["ps", "nm"]).ok();
        ps.stdout.contains("1000")
    });
    assert_printable_lines(&ps.stdout, "fvm ps");
    let (a, b) = (HOSTILE_NAMES[0].1, HOSTILE_NAMES[2].1);
    let want = format!("{}{} 1000", &a[..a.len() - 1], &b[1..]);
    assert!(
        ps.stdout.lines().any(|l| l.ends_with(&want)),
        "fvm ps shows no command line {want:?}:\n{ps}"
    );
    store.stop("nm");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// 18. what a VM is handed: the environment and stdio

/// A command in a VM starts with a clean environment: nothing of the caller's
/// (`RT_SECRET` stays out), PATH, HOME, USER and the locale from the VM's own
/// files, TERM and FVM_NAME; `--env NAME=VALUE`, `--env NAME` and `--env-file`
/// add what the user names; a bad one is refused with one line, before the VM
/// starts.
#[test]
fn a_command_gets_a_clean_environment_and_only_what_is_named() {
    let test = "a_command_gets_a_clean_environment_and_only_what_is_named";
    if !needs_root(test) {
        return;
    }
    let store = TestStore::new("esc-env");
    store.create("ev");
    let env_of = |out: &Out| -> BTreeMap<String, String> {
        out.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let files = tempfile::tempdir().unwrap();
    let env_file = files.path().join("vars");
    std::fs::write(&env_file, "# a comment\n\nFROM_FILE=f1\nSHARED=from-file\n").unwrap();
    for phase in ["cold", "running", "rm"] {
        if phase == "running" {
            store.start("ev");
        }
        let mut args = if phase == "rm" {
            vec!["run", "--rm"]
        } else {
            vec!["run", "ev"]
        };
        args.extend([
            "--env",
            "GIVEN=a=b c",
            "-e",
            "RT_PASSED",
            "-e",
            "RT_UNSET_IN_CALLER",
            "--env-file",
            s(&env_file),
            "--env",
            "SHARED=from-flag",
            "--",
            "env",
        ]);
        let mut cmd = store.command(&args);
        cmd.env("RT_SECRET", "hunter2-fvm")
            .env("RT_PASSED", "passed")
            .env("TERM", "xterm-fvmtest")
            .env("LC_SECRET", "lc-hunter2");
        let out = run(cmd, None).ok();
        let env = env_of(&out);
        assert!(
            !out.stdout.contains("hunter2"),
            "{phase}: the caller's environment reached the vm:\n{out}"
        );
        for (k, v) in [
            ("GIVEN", "a=b c"),
            ("RT_PASSED", "passed"),
            ("FROM_FILE", "f1"),
            ("SHARED", "from-flag"),
            ("TERM", "xterm-fvmtest"),
            ("HOME", "/root"),
            ("USER", "root"),
        ] {
            assert_eq!(
                env.get(k).map(String::as_str),
                Some(v),
                "{phase}: {k}:\n{out}"
            );
        }
        assert!(
            env.contains_key("PATH") && env.contains_key("FVM_NAME"),
            "{phase}:\n{out}"
        );
        assert!(!env.contains_key("RT_UNSET_IN_CALLER"), "{phase}:\n{out}");
    }
    store.stop("ev");
    for bad in ["=x", "A B=1", "", "A\u{0}=1"] {
        if bad.contains('\0') {
            continue; // an argv can't hold a NUL
        }
        let out = store.fvm(&["run", "ev", "--env", bad, "--", "true"]);
        assert_eq!(out.code, 125, "--env {bad:?}:\n{out}");
        assert_eq!(out.stderr.lines().count(), 1, "--env {bad:?}:\n{out}");
        assert!(out.stderr.contains("invalid --env"), "{out}");
    }
    std::fs::write(&env_file, "OK=1\nBAD NAME=2\n").unwrap();
    let out = store.fvm(&["run", "ev", "--env-file", s(&env_file), "--", "true"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("line 2"), "{out}");
    assert_eq!(store.status("ev"), "stopped");
    store.assert_clean();
}

/// A host directory (or an O_PATH fd) as stdin, stdout or stderr is refused
/// with one line, so `openat(0, ...)` can't write host files; a host file given
/// as stdin reaches the command through a pipe, so reopening
/// `/proc/self/fd/0` for writing can't change it.
#[test]
fn stdio_never_hands_a_vm_a_host_directory_or_a_reopenable_file() {
    let test = "stdio_never_hands_a_vm_a_host_directory_or_a_reopenable_file";
    if !needs_root(test) {
        return;
    }
    let host = var_tmp_dir("esc-stdio");
    let h = s(host.path());
    let store = TestStore::new("esc-stdio");
    store.create("io");
    let py = escape_support::python();
    // stdin, stdout and stderr in turn: a directory, then an O_PATH fd.
    let driver = "import os, sys\n\
                  fd, path_flag = int(sys.argv[1]), sys.argv[2] == 'path'\n\
                  d = os.open(sys.argv[3], os.O_PATH if path_flag else os.O_RDONLY)\n\
                  os.dup2(d, fd)\n\
                  os.execv(sys.argv[4], sys.argv[4:])";
    let write = "import os\ntry:\n    f = os.open('planted', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=0)\n    os.write(f, b'x')\nexcept OSError:\n    pass\n";
    for phase in ["cold", "running"] {
        if phase == "running" {
            store.start("io");
        }
        for fd in ["0", "1", "2"] {
            for kind in ["dir", "path"] {
                let mut cmd = Command::new(py);
                cmd.args(["-c", driver, fd, kind, h, FVM, "--root"])
                    .arg(&store.root)
                    .args(["run", "io", "--", py, "-c", write]);
                let out = run(cmd, None);
                assert_eq!(out.code, 125, "{phase} fd {fd} {kind}:\n{out}");
                assert!(
                    !host.path().join("planted").exists(),
                    "{phase}: a vm given a host directory as fd {fd} wrote into it:\n{out}"
                );
                if fd != "2" {
                    assert_eq!(
                        out.stderr.lines().count(),
                        1,
                        "{phase} fd {fd} {kind}:\n{out}"
                    );
                    assert!(
                        out.stderr.contains(if kind == "dir" {
                            "a directory"
                        } else {
                            "O_PATH"
                        }),
                        "{phase} fd {fd} {kind}:\n{out}"
                    );
                }
            }
        }
        // A host file as stdin: read as it is, but never reopened for writing.
        let file = host.path().join("input");
        std::fs::write(&file, "host data\n").unwrap();
        let mut cmd = store.command(&[
            "run",
            "io",
            "--",
            "sh",
            "-c",
            "cat; echo vm > /proc/self/fd/0; exit 0",
        ]);
        cmd.stdin(std::fs::File::open(&file).unwrap());
        let mut out = tempfile::tempfile().unwrap();
        cmd.stdout(out.try_clone().unwrap());
        let status = cmd.status().unwrap();
        assert!(status.success(), "{phase}: {status:?}");
        let mut got = String::new();
        std::io::Seek::rewind(&mut out).unwrap();
        std::io::Read::read_to_string(&mut out, &mut got).unwrap();
        assert_eq!(got, "host data\n", "{phase}: what the command read");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "host data\n",
            "{phase}: the vm rewrote the host file it was given as stdin"
        );
    }
    store.stop("io");
    store.assert_clean();
}

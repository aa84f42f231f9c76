//! Helpers for the escape suite: the capability set root keeps in a VM, probes
//! that run inside a VM (python3 with ctypes for raw system calls, printing one
//! `name RESULT` line per attempt), `/proc/PID/status` parsing, and guards that
//! undo on the host whatever an escape would have left there.
//!
//! System call numbers are x86_64's; [`x86_64`] skips a test elsewhere.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{Out, TestStore, skip, try_run};

// ---------------------------------------------------------------------------
// capabilities

/// Capability names by bit, for failure messages.
const CAP_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability mask of the given names.
fn caps(names: &[&str]) -> u64 {
    names.iter().fold(0, |mask, name| {
        let bit = CAP_NAMES
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no capability {name}"));
        mask | 1 << bit
    })
}

/// What root in a VM keeps, in the bounding, permitted and effective sets:
/// Docker's default set without MKNOD (bits 0,1,3,4,5,6,7,8,10,13,18,29,31).
pub fn kept() -> u64 {
    caps(&[
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "SETFCAP",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SYS_CHROOT",
        "AUDIT_WRITE",
    ])
}

/// The names of the capabilities in `mask`.
pub fn cap_names(mask: u64) -> String {
    let names: Vec<String> = (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| {
            CAP_NAMES
                .get(bit)
                .map_or_else(|| format!("cap{bit}"), |n| (*n).to_owned())
        })
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

// ---------------------------------------------------------------------------
// /proc/PID/status

/// `Key: value` of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// `/proc/PID/status` of a host process.
#[track_caller]
pub fn host_status(pid: i32) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    parse_status(&text)
}

/// A shell command that prints `@@TAG Key: value` for the capability, seccomp
/// and no_new_privs lines of a status file (e.g. `/proc/$$/status`). (On a
/// terminal the typed command is echoed, and a prompt's escape sequences may
/// lead a line: the marker is built by awk, so only the output holds it.)
pub fn print_status(tag: &str, path: &str) -> String {
    format!("awk -v t={tag} '/^(Cap|NoNewPrivs|Seccomp)/ {{ print \"@\" \"@\" t, $1, $2 }}' {path}")
}

/// The lines [`print_status`] printed (on a pty too), by tag.
pub fn tagged_status(out: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut by_tag: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in out.lines() {
        let Some((_, tagged)) = line.split_once("@@") else {
            continue;
        };
        let parts: Vec<&str> = tagged.split_whitespace().collect();
        if let [tag, key, value] = parts[..]
            && let Some(key) = key.strip_suffix(':')
        {
            by_tag
                .entry(tag.to_owned())
                .or_default()
                .insert(key.to_owned(), value.to_owned());
        }
    }
    by_tag
}

/// What is wrong with the capability sets of a status (empty when they are the
/// kept set, with nothing inheritable or ambient).
pub fn caps_problems(status: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, want) in [
        ("CapBnd", kept()),
        ("CapPrm", kept()),
        ("CapEff", kept()),
        ("CapInh", 0),
        ("CapAmb", 0),
    ] {
        let Some(text) = status.get(key) else {
            problems.push(format!("no {key} line"));
            continue;
        };
        let Ok(got) = u64::from_str_radix(text, 16) else {
            problems.push(format!("{key} is {text:?}"));
            continue;
        };
        if got != want {
            let extra = got & !want;
            let missing = want & !got;
            problems.push(format!(
                "{key} = {got:016x}, expected {want:016x}; escaped: {}; missing: {}",
                cap_names(extra),
                cap_names(missing)
            ));
        }
    }
    problems
}

/// Assert the kept capability set in a status, `who` naming the process.
#[track_caller]
pub fn assert_kept_caps(status: &BTreeMap<String, String>, who: &str, context: &Out) {
    let problems = caps_problems(status);
    assert!(
        problems.is_empty(),
        "{who} has capabilities beyond root's kept set:\n  {}\n{context}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// probes inside a VM

pub use crate::common::python;

/// True on x86_64, whose system call numbers the probes use; elsewhere prints a
/// skip line.
pub fn x86_64(test: &str) -> bool {
    if cfg!(target_arch = "x86_64") {
        return true;
    }
    skip(test, "the probes use x86_64 system call numbers")
}

/// Python prelude of every probe:
/// - `sc(nr, *args)`: a raw system call; its errno name (`EPERM`) or `OK`;
/// - `call(nr, *args)`: the same as `(return value, errno name or None)`;
/// - `mem(bytes, size)`: writable memory to pass as a pointer;
/// - `say(name, result)`: one `name RESULT` line;
/// - `in_child(fn)`: `fn()` in a forked child leading a new session (so no
///   terminal is ever hung up or joined), its result as text;
/// - `spawn(nr, *args)`: `clone`/`clone3` with fork semantics (the child exits at
///   once), `OK` when a child ran.
///
/// Arguments: ints are passed as C longs, str/bytes as char pointers, None as
/// NULL.
pub const PRELUDE: &str = r#"
import ctypes, errno, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def _arg(a):
    if a is None:
        return ctypes.c_void_p(None)
    if isinstance(a, int):
        return ctypes.c_long(a)
    if isinstance(a, str):
        a = a.encode()
    if isinstance(a, bytes):
        return ctypes.c_char_p(a)
    return a

def errname(e):
    return errno.errorcode.get(e, "E%d" % e)

def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[_arg(a) for a in args])
    if r == -1:
        return r, errname(ctypes.get_errno())
    return r, None

def sc(nr, *args):
    return call(nr, *args)[1] or "OK"

def mem(data, size=0):
    return ctypes.create_string_buffer(data, max(size, len(data), 1))

def say(name, result):
    print(name, result, flush=True)

def in_child(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setsid()
            res = str(fn())
        except OSError as e:
            res = errname(e.errno)
        except BaseException as e:
            res = "EXC-" + type(e).__name__
        os.write(w, res.encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return data.decode() or "NO-ANSWER(status=%d)" % status

def spawn(nr, *args):
    r, e = call(nr, *args)
    if r == 0:
        os._exit(0)
    if e:
        return e
    _, status = os.waitpid(r, 0)
    return "OK" if status == 0 else "CHILD-STATUS-%d" % status
"#;

/// The full script of a probe: the prelude and `body`.
pub fn probe_script(body: &str) -> String {
    format!("{PRELUDE}\n{body}\n")
}

/// Run a probe as root in VM `name` (`python3 -c PRELUDE+BODY ARGS…`).
pub fn probe(store: &TestStore, name: &str, body: &str, args: &[&str]) -> Out {
    let script = probe_script(body);
    let mut argv = vec!["run", name, "--", python(), "-c", &script];
    argv.extend_from_slice(args);
    store.fvm(&argv)
}

/// The `name RESULT` lines of a probe.
pub fn results(out: &Out) -> BTreeMap<String, String> {
    out.stdout
        .lines()
        .filter_map(|l| {
            let (name, result) = l.trim().rsplit_once(' ')?;
            Some((name.to_owned(), result.to_owned()))
        })
        .collect()
}

/// Assert that each named attempt of a probe gave the expected result; the
/// message lists every attempt that did not, with what it got instead.
#[track_caller]
pub fn assert_results(out: &Out, expected: &[(&str, &str)], what: &str) {
    let got = results(out);
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(name, want)| match got.get(*name) {
            Some(result) if result == want => None,
            Some(result) => Some(format!("{name}: {result} (expected {want})")),
            None => Some(format!(
                "{name}: no answer (expected {want}; did the call end the probe?)"
            )),
        })
        .collect();
    assert!(wrong.is_empty(), "{what}:\n  {}\n{out}", wrong.join("\n  "));
}

/// Probe lines for a table of `(name, python expression)` attempts.
pub fn say_each(table: &[(&str, &str)]) -> String {
    table
        .iter()
        .map(|(name, expr)| format!("say({name:?}, {expr})\n"))
        .collect()
}

// ---------------------------------------------------------------------------
// the host side

/// A temporary directory under /var/tmp (which VMs see as the host's even where
/// /tmp is a private tmpfs), with "fvm" in its name.
pub fn var_tmp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("fvm-test-{tag}-"))
        .tempdir_in("/var/tmp")
        .expect("create a temporary directory in /var/tmp")
}

/// `sh -c SCRIPT` on the host, for cleanups: never panics, returns the output
/// when it ran.
pub fn quiet(script: &str) -> Option<Out> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    try_run(cmd, None, Duration::from_secs(60)).ok()
}

/// Runs its closure on drop: undoes on the host what an escape would have left
/// (the closure checks first; normally there is nothing to undo).
pub struct Undo<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Every file under `root` (not following symlinks) with its kind, mode, owner
/// and content: to compare a host directory before and after.
pub fn tree_snapshot(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, dir: &Path, map: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let desc = if m.is_dir() {
                walk(root, &path, map);
                format!("dir {:o} {}:{}", m.mode(), m.uid(), m.gid())
            } else if m.is_symlink() {
                format!("symlink -> {:?}", std::fs::read_link(&path).ok())
            } else if m.is_file() && m.len() <= 1 << 20 {
                let content = std::fs::read(&path).unwrap_or_default();
                format!(
                    "file {:o} {}:{} {:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    String::from_utf8_lossy(&content)
                )
            } else {
                format!("other {:o} {}", m.mode(), m.len())
            };
            map.insert(rel, desc);
        }
    }
    let mut map = BTreeMap::new();
    walk(root, root, &mut map);
    map
}

/// The lines that differ between two snapshots, for a failure message.
pub fn snapshot_difference(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    for k in before.keys().chain(after.keys()) {
        let (b, a) = (before.get(k), after.get(k));
        if b != a && !out.contains(&format!("{k}:\n")) {
            out.push_str(&format!(
                "{k}:\n   before: {}\n   after:  {}\n",
                b.map_or("(none)", String::as_str),
                a.map_or("(none)", String::as_str)
            ));
        }
    }
    out
}

/// What a user would compare of /etc after a VM played with it: the names in it
/// and the content of the files that matter most.
pub fn etc_snapshot() -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut names: Vec<String> = std::fs::read_dir("/etc")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    map.insert("(names)".to_owned(), names.join(" "));
    for f in [
        "passwd", "group", "shadow", "hosts", "hostname", "fstab", "sudoers",
    ] {
        let p = Path::new("/etc").join(f);
        if let Ok(bytes) = std::fs::read(&p) {
            map.insert(f.to_owned(), String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    map
}

/// The python3 that has pip (the system one first). Without one the test is
/// skipped, or fails under `FVM_MUST_RUN=1` (CI installs python3-pip).
pub fn needs_pip(test: &str) -> Option<&'static str> {
    for py in ["/usr/bin/python3", "python3"] {
        let mut cmd = Command::new(py);
        cmd.args(["-m", "pip", "--version"]);
        if try_run(cmd, None, Duration::from_secs(60)).is_ok_and(|o| o.code == 0) {
            return Some(py);
        }
    }
    skip(test, "needs pip (python3-pip)");
    None
}

// ---------------------------------------------------------------------------
// terminals

/// Drives fvm on a new pty, as a user at a terminal: the child leads a new
/// session whose controlling terminal is the pty's slave, with stdin, stdout and
/// stderr on it. Arguments: `MODE FVM ROOT VM PYTHON PAYLOAD`; MODE `run` runs
/// `fvm run -t VM -- PYTHON -c PAYLOAD`, `shell` types the same into `fvm shell
/// VM` and then `exit`. Afterwards it prints, hex-encoded, what fvm wrote to the
/// terminal (`OUTPUT`) and what is left queued as *input* on the terminal
/// (`QUEUED`): what the caller's shell would read and run next.
pub const PTY_DRIVER: &str = r#"
import fcntl, os, pty, select, sys, termios, time
mode, fvm, root, vm, py, payload = sys.argv[1:7]
master, slave = pty.openpty()
pid = os.fork()
if pid == 0:
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    argv = [fvm, "--root", root]
    if mode == "run":
        argv += ["run", "-t", vm, "--", py, "-c", payload]
    else:
        argv += ["shell", vm]
    os.execv(fvm, argv)
out = b""
def pump(seconds, until=None):
    global out
    end = time.time() + seconds
    while time.time() < end:
        if until is not None and until in out:
            return
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            out += data
if mode == "shell":
    code = payload.encode().hex()
    line = "%s -c \"exec(bytes.fromhex('%s'))\"; echo SHELL''DONE\n" % (py, code)
    os.write(master, line.encode())
    pump(60, b"SHELLDONE")
    os.write(master, b"exit\n")
status = None
end = time.time() + 60
while time.time() < end:
    pump(0.2)
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        status = st
        break
if status is None:
    os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    print("TIMEOUT")
pump(0.5)
attrs = termios.tcgetattr(slave)
attrs[3] &= ~(termios.ICANON | termios.ECHO)
attrs[6][termios.VMIN] = 0
attrs[6][termios.VTIME] = 0
termios.tcsetattr(slave, termios.TCSANOW, attrs)
fcntl.fcntl(slave, fcntl.F_SETFL, fcntl.fcntl(slave, fcntl.F_GETFL) | os.O_NONBLOCK)
queued = b""
while True:
    try:
        data = os.read(slave, 4096)
    except OSError:
        break
    if not data:
        break
    queued += data
print("EXIT", os.waitstatus_to_exitcode(status))
print("QUEUED", queued.hex())
print("OUTPUT", out.hex())
"#;

/// What [`PTY_DRIVER`] reported: fvm's exit status, the terminal input left
/// queued, and fvm's output on the terminal.
#[derive(Debug)]
pub struct PtyRun {
    pub code: i32,
    pub queued: Vec<u8>,
    pub output: String,
    pub raw: Out,
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Run [`PTY_DRIVER`] for `fvm run -t` (`mode` "run") or `fvm shell` ("shell").
#[track_caller]
pub fn on_a_pty(store: &TestStore, mode: &str, vm: &str, payload: &str) -> PtyRun {
    let mut cmd = Command::new(python());
    cmd.args(["-c", PTY_DRIVER, mode, crate::common::FVM])
        .arg(&store.root)
        .args([vm, python(), payload])
        .env_remove("FVM_ROOT");
    let raw = crate::common::run(cmd, None).ok();
    let field = |key: &str| {
        raw.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("the pty driver printed no {key}:\n{raw}"))
            .to_owned()
    };
    assert!(
        !raw.stdout.contains("TIMEOUT"),
        "fvm {mode} on a pty did not finish:\n{raw}"
    );
    let code = field("EXIT ").parse().unwrap_or(-1);
    let queued = unhex(&field("QUEUED "));
    let output = String::from_utf8_lossy(&unhex(&field("OUTPUT "))).into_owned();
    PtyRun {
        code,
        queued,
        output,
        raw,
    }
}

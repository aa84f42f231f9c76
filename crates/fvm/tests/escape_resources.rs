//! Resources a VM could take from the host around its limits: socket buffers
//! outside the memory limit, an OOM kill that takes the VM's init, and (see the
//! disk tests) the host's disk and inodes.
//!
//! Each test is what root inside a VM would try, bounded so that even on a host
//! without the fix it takes little: a few dozen loopback connections, a small
//! file system made by the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{TestStore, is_alive_as, needs_root, needs_tool, python, wait_until};

/// A number from a cgroup file (or a `key value` line of one), if there.
fn cgroup_number(path: &Path, key: Option<&str>) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match key {
        None => text.trim().parse().ok(),
        Some(key) => text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        }),
    }
}

/// The socket buffers charged to the VM's memory cgroup: v1 counts TCP buffers
/// in `memory.kmem.tcp.usage_in_bytes`, v2 in the `sock` line of `memory.stat`.
fn socket_memory(memory_dir: &Path) -> u64 {
    let v1 = memory_dir.join("memory.kmem.tcp.usage_in_bytes");
    if v1.exists() {
        cgroup_number(&v1, None).unwrap_or(0)
    } else {
        cgroup_number(&memory_dir.join("memory.stat"), Some("sock")).unwrap_or(0)
    }
}

/// The host's TCP buffer memory in bytes (`mem` of /proc/net/sockstat, in pages).
fn host_tcp_memory() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("read /proc/net/sockstat");
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .expect("a TCP line in /proc/net/sockstat");
    let mut words = line.split_whitespace();
    let pages: u64 = std::iter::from_fn(|| words.next())
        .skip_while(|w| *w != "mem")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mem in {line:?}"));
    pages * 4096
}

/// Opens `count` loopback connections inside the VM, writes to each until the
/// kernel takes no more, reads nothing, prints "filled", and holds them.
fn fill_sockets(count: u32) -> String {
    format!(
        r#"
import socket, sys, time
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen({count})
keep = []
chunk = b"x" * 65536
for _ in range({count}):
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    keep += [c, a]
    c.setblocking(False)
    stuck = 0
    while stuck < 20:
        try:
            c.send(chunk)
        except BlockingIOError:
            stuck += 1
            time.sleep(0.002)
print("filled", flush=True)
sys.stdout.close()
time.sleep(600)
"#
    )
}

#[test]
fn socket_buffers_are_charged_to_the_vm_and_held_to_its_memory_limit() {
    if !needs_root("socket_buffers_are_charged_to_the_vm_and_held_to_its_memory_limit") {
        return;
    }
    const LIMIT: u64 = 64 << 20;
    let store = TestStore::new("tcpmem");
    store.create_with("sockets", &["--memory", "64M"]);
    store.start("sockets");
    let memory_dir = store.cgroup_dir("sockets", "memory");
    let before = host_tcp_memory();
    // 48 connections could each hold several MiB (send and receive buffers):
    // far more than 64M if nothing charged them to the VM.
    let filler = store.background(&["run", "sockets", "--", python(), "-c", &fill_sockets(48)]);
    let mut charged = 0;
    wait_until("the vm's sockets are charged to its cgroup", || {
        charged = socket_memory(&memory_dir);
        charged >= 16 << 20
    });
    // Watch the VM and the host while the filler goes on.
    let mut peak_host = 0;
    for _ in 0..40 {
        peak_host = peak_host.max(host_tcp_memory());
        charged = charged.max(socket_memory(&memory_dir));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The kernel lets a socket go a little over (a forced charge per socket).
    assert!(
        charged <= LIMIT + (8 << 20),
        "the vm holds {charged} bytes of socket buffers under a {LIMIT} limit"
    );
    // Other tests on this host use loopback too: allow them 32 MiB.
    let grown = peak_host.saturating_sub(before);
    assert!(
        grown <= LIMIT + (32 << 20),
        "the host's TCP memory grew by {grown} bytes for a vm limited to {LIMIT}"
    );
    // On cgroup v1 a live change of memory moves the TCP limit with it.
    let tcp_limit = memory_dir.join("memory.kmem.tcp.limit_in_bytes");
    if tcp_limit.exists() {
        assert_eq!(cgroup_number(&tcp_limit, None), Some(LIMIT));
        store.fvm(&["config", "sockets", "--memory", "128M"]).ok();
        assert_eq!(cgroup_number(&tcp_limit, None), Some(128 << 20));
    }
    store.stop("sockets");
    drop(filler);
    store.assert_clean();
}

/// The host pid of the VM process whose command line starts with `prefix`.
fn host_pid_starting(store: &TestStore, name: &str, prefix: &str) -> Option<i32> {
    let out = store.fvm(&["--json", "ps", name]).ok();
    let procs: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    procs
        .as_array()?
        .iter()
        .find(|p| p["command"].as_str().is_some_and(|c| c.starts_with(prefix)))
        .and_then(|p| p["host_pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
}

/// Whether this process has CAP_SYS_RESOURCE (as the fvm it starts will).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// CAP_SYS_RESOURCE's bit in the capability sets.
const CAP_SYS_RESOURCE: u32 = 24;

/// A process's `oom_score_adj` as the host sees it.
fn oom_score_adj(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap_or_else(|e| panic!("cannot read oom_score_adj of {pid}: {e}"))
        .trim()
        .parse()
        .expect("oom_score_adj is a number")
}

#[test]
fn the_oom_killer_takes_the_vms_init_last() {
    if !needs_root("the_oom_killer_takes_the_vms_init_last") {
        return;
    }
    let store = TestStore::new("oominit");
    store.create_with("full", &["--memory", "64M"]);
    store.start("full");
    let init = store.init_pid("full").expect("a running vm has an init");
    store.sh("full", "nohup sleep 1004 >/dev/null 2>&1 &").ok();
    wait_until("the vm's sleep runs", || {
        host_pid_starting(&store, "full", "sleep 1004").is_some()
    });
    let sleep = host_pid_starting(&store, "full", "sleep 1004").unwrap();
    // With CAP_SYS_RESOURCE the init goes down to -999 and commands stay at 0;
    // without it (this test runs as fvm does) the init keeps fvm's score and
    // commands go up to 500.
    let (init_score, command_score) = if has_cap_sys_resource() {
        (-999, 0)
    } else {
        (oom_score_adj(std::process::id() as i32), 500)
    };
    assert_eq!(oom_score_adj(init), init_score, "the vm's init");
    assert_eq!(
        oom_score_adj(sleep),
        command_score,
        "a command of the vm, seen from the host"
    );
    // Inside: root in the VM has no CAP_SYS_RESOURCE, so it can't go below 0
    // nor lower the init's.
    let out = store
        .sh(
            "full",
            "cat /proc/self/oom_score_adj; \
             echo -1000 > /proc/self/oom_score_adj && echo lowered-self; \
             echo -1000 > /proc/1/oom_score_adj && echo lowered-init; \
             cat /proc/1/oom_score_adj",
        )
        .ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [command_score.to_string(), init_score.to_string()],
        "{out}"
    );

    // Memory no process's size accounts for (a memfd, like socket buffers):
    // the OOM killer has nothing to go by but the score, and must not take the
    // init.
    let fill = "import os\n\
                fd = os.memfd_create('fvm-fill')\n\
                block = b'x' * (1 << 20)\n\
                for _ in range(256):\n    os.write(fd, block)\n\
                print('not killed')\n";
    let out = store.fvm(&["run", "full", "--", python(), "-c", fill]);
    assert_eq!(out.code, 137, "256M in a memfd under a 64M limit:\n{out}");
    assert_eq!(store.status("full"), "running");
    assert_eq!(store.init_pid("full"), Some(init), "the vm's init changed");
    assert!(is_alive_as(init, "fvm-init"), "the vm's init was killed");
    store.sh("full", "true").ok();
    store.stop("full");
    store.assert_clean();
}

// ---------------------------------------------------------------------------
// disk and inodes

/// A small filesystem the test makes: an image file formatted and mounted on the
/// host (`mount -o loop`), with project quotas if this kernel has them. Unmounted
/// (its loop device goes with it) and removed on drop, even if the test failed.
struct LoopFs {
    path: PathBuf,
    /// Mounted with project quotas enforced (else fvm falls back to an image).
    quotas: bool,
    dir: Option<tempfile::TempDir>,
}

impl LoopFs {
    /// `mb` MiB of `kind` (ext4 or xfs). With `quotas`, made with project quotas
    /// (ext4: `-O quota,project`) and mounted with `prjquota` (None if this kernel
    /// can't); else plain ext4.
    #[track_caller]
    fn new(tag: &str, mb: u64, kind: &str, quotas: bool) -> Option<LoopFs> {
        let dir = common::temp_dir(tag);
        let image = dir.path().join("fs.img");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("create the mount point");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mb << 20))
            .expect("create the filesystem image");
        let mut fs = LoopFs {
            path,
            quotas: false,
            dir: Some(dir),
        };
        let mkfs = |features: &[&str]| {
            let mut cmd = Command::new(format!("mkfs.{kind}"));
            match kind {
                "xfs" => cmd.args(["-q", "-f"]),
                _ => cmd.args(["-q", "-F", "-m", "0"]),
            };
            cmd.args(features).arg(&image);
            common::run(cmd, None).ok();
        };
        let mount = |options: &str| {
            let mut cmd = Command::new("mount");
            cmd.args(["-o", options]).arg(&image).arg(&fs.path);
            common::run(cmd, None).code == 0
        };
        if quotas {
            mkfs(if kind == "ext4" {
                &["-O", "quota,project"]
            } else {
                &[]
            });
            fs.quotas = mount("loop,prjquota");
            return fs.quotas.then_some(fs);
        }
        mkfs(&[]);
        assert!(mount("loop"), "cannot mount {}", image.display());
        Some(fs)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        for lazy in [false, true] {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.path);
            if common::try_run(cmd, None, Duration::from_secs(30)).is_ok_and(|o| o.code == 0) {
                break;
            }
        }
        drop(self.dir.take());
    }
}

/// Loop devices whose backing file is under `dir` (as /sys/block names it).
fn loop_devices_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            backing
                .contains(&needle)
                .then(|| format!("{}: {}", e.file_name().to_string_lossy(), backing.trim()))
        })
        .collect()
}

/// Mounts of this (the test's) mount namespace under `dir`, but `dir` itself.
fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// In the VM: write `mb` MiB to one file, then make up to `files` empty files.
/// Prints `write failed: <dd's error>` if the write stopped early, and `made N`.
fn fill_disk(mb: u64, files: u64) -> String {
    format!(
        "if ! out=$(dd if=/dev/zero of=/root/fvm-big bs=1M count={mb} 2>&1); then \
           echo \"write failed: $(echo \"$out\" | head -1)\"; fi; \
         rm -f /root/fvm-big; mkdir -p /root/fvm-many; cd /root/fvm-many; i=0; \
         while [ $i -lt {files} ] && printf '' 2>/dev/null > f$i; do i=$((i+1)); done; \
         echo made $i; rm -rf /root/fvm-many"
    )
}

/// Asserts that a [`fill_disk`] run hit the disk and the inode limits.
#[track_caller]
fn assert_held(out: &common::Out, inodes: u64, what: &str) {
    assert_eq!(out.code, 0, "{what}:\n{out}");
    let failed = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("write failed: "))
        .unwrap_or_else(|| panic!("{what}: writing past disk did not fail:\n{out}"));
    assert!(
        failed.contains("No space left") || failed.contains("quota exceeded"),
        "{what}: writing past disk failed with {failed:?}"
    );
    let made: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("made "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what}: no count of files:\n{out}"));
    assert!(
        made < inodes,
        "{what}: made {made} files under an inodes limit of {inodes}"
    );
}

/// The VM's `disk_limits` from `fvm --json stats NAME`.
#[track_caller]
fn disk_limits(store: &TestStore, name: &str) -> serde_json::Value {
    let out = store.fvm(&["--json", "stats", name]).ok();
    let vms: serde_json::Value = serde_json::from_str(&out.stdout).expect("stats --json");
    vms[0]["disk_limits"].clone()
}

#[test]
fn disk_and_inodes_hold_every_kind_of_layer_and_spare_the_host() {
    if !needs_root("disk_and_inodes_hold_every_kind_of_layer_and_spare_the_host")
        || !needs_tool(
            "disk_and_inodes_hold_every_kind_of_layer_and_spare_the_host",
            "mkfs.ext4",
        )
    {
        return;
    }
    // With project quotas where this kernel has them (xfs and ext4 share the
    // code in fvm; ext4 is the one whose tools every test host has), and on a
    // filesystem without, where fvm falls back to an image of the VM's own.
    for kind in ["ext4", "xfs"] {
        let part = format!("disk_and_inodes_hold_every_kind_of_layer_and_spare_the_host on {kind}");
        if kind == "xfs" && !Path::new("/usr/sbin/mkfs.xfs").exists() {
            common::skip(&part, "needs mkfs.xfs (xfsprogs)");
            continue;
        }
        match LoopFs::new("diskq", 320, kind, true) {
            Some(fs) => hold_on(&fs),
            // Nothing a host can install: the image fallback below still runs.
            None => fvm_engine::testing::part_skipped(
                &part,
                &format!("this kernel has no {kind} project quotas"),
            ),
        }
    }
    hold_on(&LoopFs::new("disk", 320, "ext4", false).expect("a plain ext4"));
}

/// The disk test on one filesystem.
fn hold_on(fs: &LoopFs) {
    let store = TestStore::in_dir(&fs.path, "disk");
    let limits = ["--disk", "32M", "--inodes", "2000"];
    store.create_with("plain", &limits);
    let mut volatile = limits.to_vec();
    volatile.extend(["--layers", "volatile"]);
    store.create_with("fast", &volatile);
    store.create_with("other", &[]);
    for vm in ["plain", "fast", "other"] {
        store.start(vm);
    }
    // The host's mount table shows nothing of the running VMs' layers.
    assert_eq!(mounts_under(&store.root), Vec::<String>::new());
    for vm in ["plain", "fast"] {
        // How the layers are held: project quotas where the filesystem has them,
        // else an image of the VM's own.
        let dir = store.root.join("vms").join(vm);
        if fs.quotas {
            assert!(dir.join("project").is_file(), "{vm} has no project id");
        } else {
            assert!(dir.join("disk.img").is_file(), "{vm} has no image");
        }
        let out = store.sh(vm, &fill_disk(48, 3000));
        assert_held(&out, 2000, vm);
        // Use against the limit, as stats and list show it.
        let used = disk_limits(&store, vm);
        let limit = used["bytes_limit"].as_u64().unwrap_or(0);
        assert!(
            limit > 0 && limit <= 32 << 20,
            "stats of {vm}: disk limit {limit}:\n{used:#}"
        );
        assert!(used["inodes_limit"].as_u64().is_some(), "{used:#}");
        let list = store.fvm(&["list"]).ok();
        let row = list
            .stdout
            .lines()
            .find(|l| l.starts_with(vm))
            .unwrap_or_else(|| panic!("no {vm} in list:\n{list}"));
        assert!(
            row.split_whitespace()
                .any(|t| t.contains('/') && t.ends_with('M')),
            "list shows no disk use against the limit for {vm}: {row}"
        );
    }
    // The limits were the VMs' own: the other VM and the host still write.
    let out = store.sh(
        "other",
        "dd if=/dev/zero of=/root/fvm-other bs=1M count=40 2>&1 && rm /root/fvm-other && echo ok",
    );
    assert_eq!(out.code, 0, "the other vm can't write:\n{out}");
    let host_file = fs.path.join("fvm-host-file");
    std::fs::write(&host_file, vec![0u8; 16 << 20]).expect("the host can't write");
    std::fs::remove_file(&host_file).unwrap();

    // A throw-away VM: its tmpfs is the limit.
    let out = store.fvm(&[
        "run",
        "--rm",
        "--disk",
        "16M",
        "--inodes",
        "1000",
        "--",
        "sh",
        "-c",
        &fill_disk(32, 2000),
    ]);
    assert_held(&out, 1000, "run --rm");

    for vm in ["plain", "fast", "other"] {
        store.stop(vm);
    }
    // Stopped: the diff of an image-backed VM still reads its layers.
    store.sh("plain", "echo kept > /root/fvm-kept").ok();
    store.stop("plain");
    let diff = store.fvm(&["diff", "plain"]).ok();
    assert!(diff.stdout.contains("/root/fvm-kept"), "{diff}");
    // A copy has the layers and limits of its own.
    store.fvm(&["copy", "plain", "copied"]).ok();
    let out = store.sh("copied", "cat /root/fvm-kept").ok();
    assert_eq!(out.out(), "kept");
    let copied = store.root.join("vms/copied");
    assert!(
        copied
            .join(if fs.quotas { "project" } else { "disk.img" })
            .is_file(),
        "the copy's layers are not held"
    );
    assert_held(&store.sh("copied", &fill_disk(48, 3000)), 2000, "copied");
    store.assert_clean();
    drop(store);
    // The kernel detaches a loop device once its last user is gone, soon after.
    wait_until("no loop device is left of the store", || {
        loop_devices_under(&fs.path).is_empty()
    });
    assert_eq!(mounts_under(&fs.path), Vec::<String>::new());
}

/// `fvm config NAME FLAGS…`, asserting it is refused in one line and that the
/// store is left as it was.
#[track_caller]
fn refused(store: &TestStore, name: &str, flags: &[&str]) -> String {
    let before = store.snapshot();
    let mut args = vec!["config", name];
    args.extend_from_slice(flags);
    let out = store.fvm(&args);
    assert_eq!(out.code, 125, "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert_eq!(
        store.snapshot(),
        before,
        "a refused config changed the store"
    );
    out.stderr
}

#[test]
fn disk_limits_change_where_the_layers_allow_and_are_refused_in_one_line_elsewhere() {
    let test = "disk_limits_change_where_the_layers_allow_and_are_refused_in_one_line_elsewhere";
    if !needs_root(test) || !needs_tool(test, "mkfs.ext4") {
        return;
    }
    // No project quotas here: the layers move into (and out of) an image.
    let fs = LoopFs::new("diskcfg", 320, "ext4", false).expect("a plain ext4");
    let store = TestStore::in_dir(&fs.path, "diskcfg");
    store.create_with("used", &[]);
    store
        .sh(
            "used",
            "echo kept > /root/fvm-kept && dd if=/dev/zero of=/root/fvm-20m bs=1M count=20 2>/dev/null",
        )
        .ok();
    let image = store.root.join("vms/used/disk.img");
    // What the layers hold doesn't fit: refused, nothing moved.
    let err = refused(&store, "used", &["--disk", "16M"]);
    assert!(err.contains("No space left"), "{err}");
    assert!(!image.exists());
    // It fits: the stopped VM's layers move into an image of that size.
    store
        .fvm(&["config", "used", "--disk", "64M", "--inodes", "3000"])
        .ok();
    assert!(image.is_file());
    let out = store.sh("used", "cat /root/fvm-kept").ok();
    assert_eq!(out.out(), "kept");
    // A running VM's image keeps its size.
    store.start("used");
    let err = refused(&store, "used", &["--disk", "128M"]);
    assert!(err.contains("once it is stopped"), "{err}");
    store.stop("used");
    store.fvm(&["config", "used", "--disk", "128M"]).ok();
    let limit = disk_limits(&store, "used")["bytes_limit"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        limit > 64 << 20,
        "after growing to 128M the limit is {limit}"
    );
    // No limits left: the layers leave the image.
    store
        .fvm(&["config", "used", "--disk", "none", "--inodes", "none"])
        .ok();
    assert!(!image.exists());
    let out = store.sh("used", "cat /root/fvm-kept").ok();
    assert_eq!(out.out(), "kept");
    for (flag, value) in [
        ("--cpus", "1e308"),
        ("--disk", &"9".repeat(400)),
        ("--inodes", "1e308"),
    ] {
        let out = store.fvm(&["create", "absurd", flag, value]);
        assert_eq!(out.code, 125, "{out}");
        assert_eq!(out.stderr.lines().count(), 1, "{out}");
        assert!(out.stderr.len() < 200, "{flag}: {}", out.stderr);
    }
    store.assert_clean();
    drop(store);
    wait_until("no loop device is left of the store", || {
        loop_devices_under(&fs.path).is_empty()
    });
}

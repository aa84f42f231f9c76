//! fvm as containerd's runtime: `ctr` with `--runc-binary fvm-runc` (a symlink to
//! the fvm under test) and the io.containerd.runc.v2 shim, against a containerd
//! this test starts on its own root, state and socket (its CRI plugin off) and
//! kills by pid at the end.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Out, cgroup_dirs_matching, needs_root, needs_tool, try_run, unique, wait_until};

/// A containerd of the test's own, and fvm-runc beside it.
struct Containerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
    /// The cgroup ctr's containers are put in (`--cgroup /PARENT/ID`).
    cgroup_parent: String,
}

/// Cgroup dirs named `needle...` in `parent` in each hierarchy.
fn vm_cgroups_under(parent: &str, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in std::fs::read_dir(root.path().join(parent))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(needle) {
                found.push(e.path());
            }
        }
    }
    found
}

impl Containerd {
    fn start(tag: &str) -> Containerd {
        let dir = common::temp_dir(tag);
        let d = dir.path();
        for sub in ["root", "state", "rootfs", "export", "bin", "runc"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(common::FVM, d.join("bin/fvm-runc")).unwrap();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.ttrpc.sock\"\n",
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            dir,
            child,
            cgroup_parent: unique("ctr"),
        };
        let sock = c.path("containerd.sock");
        wait_until("containerd serves", || {
            sock.exists() && c.ctr(&["version"]).code == 0
        });
        c
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ctr(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.path("containerd.sock"))
            .args(args);
        try_run(cmd, None, Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ctr run` with fvm-runc and its own runtime root.
    fn run(&self, flags: &[&str], id: &str, argv: &[&str]) -> Out {
        let bin = self.path("bin/fvm-runc");
        let root = self.path("runc");
        let rootfs = self.path("rootfs");
        let cgroup = format!("/{}/{id}", self.cgroup_parent);
        let mut args = vec![
            "run",
            "--cgroup",
            &cgroup,
            "--runc-binary",
            bin.to_str().unwrap(),
            "--runc-root",
            root.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        // `--rootfs` is a switch: the directory is the first argument after the
        // flags (ctr stops reading flags there).
        args.extend_from_slice(&["--rootfs", rootfs.to_str().unwrap()]);
        args.push(id);
        args.extend_from_slice(argv);
        self.ctr(&args)
    }

    /// The runtime's store (containerd's namespace `default`).
    fn store(&self) -> PathBuf {
        self.path("runc/default/store")
    }

    /// What of the runtime is left on the host: containers, VMs, mounts,
    /// cgroups.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for dir in ["runc/default/containers", "runc/default/store/vms"] {
            if let Ok(entries) = std::fs::read_dir(self.path(dir)) {
                left.extend(
                    entries
                        .flatten()
                        .map(|e| format!("{dir}/{:?}", e.file_name())),
                );
            }
        }
        let root = self.dir.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        left.extend(
            mountinfo
                .lines()
                .filter(|l| l.contains(&root))
                .map(|l| format!("mount: {l}")),
        );
        if let Ok(store) = fvm_engine::store::Store::open(&self.store()) {
            let needle = format!("fvm-{}-", store.id());
            left.extend(
                cgroup_dirs_matching(&needle)
                    .into_iter()
                    .map(|d| format!("cgroup {}", d.display())),
            );
            // Under the parent of ctr's cgroupsPath (/default/ID) too.
            left.extend(
                vm_cgroups_under(&self.cgroup_parent, &needle)
                    .into_iter()
                    .map(|d| format!("cgroup {}", d.display())),
            );
        }
        left
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: its tasks and containers go through
        // containerd first, so their shims exit too.
        // (Never a panic here: this may run while a failed test unwinds.)
        let quiet = |args: &[&str]| {
            let mut cmd = Command::new("ctr");
            cmd.arg("--address")
                .arg(self.path("containerd.sock"))
                .args(args);
            try_run(cmd, None, Duration::from_secs(30)).map_or(String::new(), |o| o.stdout)
        };
        for id in quiet(&["task", "ls", "-q"]).lines().map(str::trim) {
            if !id.is_empty() {
                quiet(&["task", "delete", "--force", id]);
            }
        }
        for id in quiet(&["container", "ls", "-q"]).lines().map(str::trim) {
            if !id.is_empty() {
                quiet(&["container", "delete", id]);
            }
        }
        // Then every container of the runtime.
        let _ = Command::new(common::FVM)
            .args(["oci", "--root"])
            .arg(self.path("runc/default"))
            .arg("delete")
            .arg("--force")
            .arg("fvm-never-made")
            .status();
        if let Ok(entries) = std::fs::read_dir(self.path("runc/default/containers")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".json") {
                    let _ = Command::new(common::FVM)
                        .args(["oci", "--root"])
                        .arg(self.path("runc/default"))
                        .args(["delete", "--force", id])
                        .status();
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The parent cgroup fvm made for the containers (as runc would).
        for root in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(root.path().join(&self.cgroup_parent));
        }
        // containerd's shims (children of init once it is gone) end by
        // themselves when their containers are deleted.
    }
}

fn skip(test: &str) -> bool {
    !needs_root(test) || !needs_tool(test, "containerd") || !needs_tool(test, "ctr")
}

#[test]
fn a_host_clone_container_runs_and_exports_its_changes() {
    if skip("a_host_clone_container_runs_and_exports_its_changes") {
        return;
    }
    let c = Containerd::start("oci-run");
    let probe = format!("/etc/{}", unique("probe"));
    // A host file the container deletes (in its own view only).
    let doomed = common::HostFile(PathBuf::from(format!("/etc/{}", unique("doomed"))));
    std::fs::write(&doomed.0, "host\n").unwrap();
    // A directory the engine binds in read-only (a volume, a secret).
    let volume = c.path("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("secret"), "s3cret\n").unwrap();
    let bind_at = format!("/srv/{}", unique("bind"));
    let mount = format!(
        "type=bind,src={},dst={bind_at},options=rbind:ro",
        volume.display()
    );
    let export = c.path("export");
    let export_ann = format!("org.featherweight.export={}", export.display());
    let id = "fvm-oci-run";
    let out = c.run(
        &[
            "--rm",
            "--annotation",
            "org.featherweight.rootfs=host",
            "--annotation",
            &export_ann,
            "--annotation",
            "org.featherweight.export-layer=true",
            "--mount",
            &mount,
        ],
        id,
        &[
            "/bin/sh",
            "-c",
            &format!(
                "echo x > {probe}; rm {}; cat {bind_at}/secret; \
                 touch {bind_at}/w 2>/dev/null && echo bind-writable; \
                 echo from the container; exit 3",
                doomed.0.display()
            ),
        ],
    );
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stdout.contains("from the container"), "{out}");
    assert!(
        !Path::new(&probe).exists(),
        "the container wrote to the host"
    );
    let text = std::fs::read_to_string(export.join(format!("{id}.json"))).unwrap();
    let changes: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        changes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "A" && c["path"] == probe.as_str()),
        "{text}"
    );
    assert!(doomed.0.exists(), "the container deleted a host file");
    // The engine's mount is not the container's change.
    assert!(!text.contains(&bind_at), "{text}");
    // The layer: the new file with its content, a whiteout for the deleted one.
    let tar = export.join(format!("{id}.tar"));
    let mut list = Command::new("tar");
    list.arg("-tvf").arg(&tar);
    let listed = try_run(list, None, Duration::from_secs(30)).unwrap().ok();
    let name = |p: &str| p.trim_start_matches('/').to_owned();
    assert!(listed.stdout.contains(&name(&probe)), "{listed}");
    let whiteout = format!(
        "etc/.wh.{}",
        doomed.0.file_name().unwrap().to_string_lossy()
    );
    assert!(listed.stdout.contains(&whiteout), "{listed}");
    let mut cat = Command::new("tar");
    cat.arg("-xOf").arg(&tar).arg(name(&probe));
    assert_eq!(
        try_run(cat, None, Duration::from_secs(30))
            .unwrap()
            .ok()
            .stdout,
        "x\n"
    );
    wait_until("nothing of the container is left", || {
        c.leftovers().is_empty()
    });
}

#[test]
fn a_detached_container_takes_exec_ps_pause_kill_and_delete() {
    if skip("a_detached_container_takes_exec_ps_pause_kill_and_delete") {
        return;
    }
    let c = Containerd::start("oci-task");
    let id = "fvm-oci-task";
    c.run(
        &[
            "-d",
            "--annotation",
            "org.featherweight.rootfs=host",
            "--memory-limit",
            "268435456",
        ],
        id,
        &["sleep", "1000"],
    )
    .ok();
    // The VM's cgroup is in the parent of the container's cgroupsPath, with the
    // container's memory limit.
    let store = fvm_engine::store::Store::open(&c.store()).unwrap();
    let dirs = vm_cgroups_under(&c.cgroup_parent, &format!("fvm-{}-", store.id()));
    // cgroup v1: the memory hierarchy's; v2: the one unified directory.
    let memory: Vec<&PathBuf> = dirs
        .iter()
        .filter(|d| d.to_string_lossy().contains("/memory/") || dirs.len() == 1)
        .collect();
    assert_eq!(memory.len(), 1, "{dirs:?}");
    let limit = std::fs::read_to_string(memory[0].join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(memory[0].join("memory.max")))
        .unwrap();
    assert_eq!(limit.trim(), "268435456");

    let status = |c: &Containerd| {
        let out = c.ctr(&["task", "ls"]).ok();
        out.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(status(&c), "RUNNING");
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "/bin/sh",
        "-c",
        "echo from exec; exit 4",
    ]);
    assert_eq!(exec.code, 4, "{exec}");
    assert!(exec.stdout.contains("from exec"), "{exec}");
    // The init, sh's sleep: at least two processes.
    let ps = c.ctr(&["task", "ps", id]).ok();
    assert!(ps.stdout.lines().count() >= 3, "{ps}");
    c.ctr(&["task", "pause", id]).ok();
    assert_eq!(status(&c), "PAUSED");
    c.ctr(&["task", "resume", id]).ok();
    assert_eq!(status(&c), "RUNNING");
    c.ctr(&["task", "kill", "-a", "-s", "SIGKILL", id]).ok();
    wait_until("the task stopped", || status(&c) == "STOPPED");
    c.ctr(&["task", "delete", id]).ok();
    c.ctr(&["container", "delete", id]).ok();
    wait_until("nothing of the container is left", || {
        c.leftovers().is_empty()
    });
}

/// A tiny root filesystem in `dir`: `programs` of the host (looked up in
/// /bin, /sbin) with the libraries they load, and the usual empty mount points.
fn tiny_rootfs(dir: &Path, programs: &[&str]) {
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    for sub in ["proc", "sys", "dev", "run", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for program in programs {
        let host = ["/bin", "/sbin", "/usr/bin", "/usr/sbin"]
            .iter()
            .map(|d| Path::new(d).join(program))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{program} is not on this host"));
        copy(&host, &dir.join("bin").join(program));
        let mut ldd = Command::new("ldd");
        ldd.arg(&host);
        let out = try_run(ldd, None, Duration::from_secs(30)).unwrap();
        for lib in out.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
            let lib = Path::new(lib);
            copy(lib, &dir.join(lib.strip_prefix("/").unwrap()));
        }
    }
}

#[test]
fn a_container_without_the_annotation_never_gets_the_host() {
    if skip("a_container_without_the_annotation_never_gets_the_host") {
        return;
    }
    let c = Containerd::start("oci-plain");
    let rootfs = c.path("rootfs");
    tiny_rootfs(&rootfs, &["sh", "ls", "cat", "rm"]);
    // A host file the container must not see.
    let host_only = common::HostFile(PathBuf::from(format!("/etc/{}", unique("hostonly"))));
    std::fs::write(&host_only.0, "host\n").unwrap();
    let export = c.path("export");
    let export_ann = format!("org.featherweight.export={}", export.display());
    let id = "fvm-oci-plain";
    let out = c.run(
        &["--rm", "--annotation", &export_ann],
        id,
        &[
            "/bin/sh",
            "-c",
            &format!(
                "test -e {} && echo HOST-VISIBLE; ls /etc; echo rootfs-listed; \
                 echo x > /probe; rm /bin/cat; exit 3",
                host_only.0.display()
            ),
        ],
    );
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stdout.contains("rootfs-listed"), "{out}");
    assert!(!out.stdout.contains("HOST-VISIBLE"), "{out}");
    // Its /etc is the rootfs's, empty: none of the host's files.
    assert!(!out.stdout.contains("passwd"), "{out}");
    // The rootfs itself is only the lower layer: unchanged.
    assert!(!rootfs.join("probe").exists());
    assert!(rootfs.join("bin/cat").exists());
    // The export lists the container's changes at its own paths.
    let text = std::fs::read_to_string(export.join(format!("{id}.json"))).unwrap();
    let changes: serde_json::Value = serde_json::from_str(&text).unwrap();
    let has = |kind: &str, path: &str| {
        changes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == kind && c["path"] == path)
    };
    assert!(has("A", "/probe"), "{text}");
    assert!(has("D", "/bin/cat"), "{text}");
    assert!(!text.contains("/proc"), "{text}");

    // root.readonly: nothing can be written, the mount points still work.
    let out = c.run(
        &["--rm", "--read-only"],
        "fvm-oci-readonly",
        &[
            "/bin/sh",
            "-c",
            "echo x > /probe2 || echo read-only; cat /proc/self/comm",
        ],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("read-only"), "{out}");
    assert!(out.stdout.contains("cat"), "{out}");
    wait_until("nothing of the container is left", || {
        c.leftovers().is_empty()
    });
}

#[test]
fn ctr_run_with_a_terminal() {
    let test = "ctr_run_with_a_terminal";
    if skip(test) || !needs_tool(test, "script") {
        return;
    }
    let c = Containerd::start("oci-ctr-tty");
    let bin = c.path("bin/fvm-runc");
    let root = c.path("runc");
    let rootfs = c.path("rootfs");
    let id = "fvm-oci-tty";
    // ctr wants a terminal of its own for -t: `script` gives it one.
    let line = format!(
        "ctr --address {sock} run -t --rm --cgroup /{parent}/{id} --runc-binary {bin} \
         --runc-root {root} --annotation org.featherweight.rootfs=host --rootfs {rootfs} \
         {id} /bin/sh -c 'tty; echo TERMOK; exit 5'",
        sock = c.path("containerd.sock").display(),
        parent = c.cgroup_parent,
        bin = bin.display(),
        root = root.display(),
        rootfs = rootfs.display(),
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]);
    let out = try_run(cmd, None, Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.code, 5, "{out}");
    assert!(out.stdout.contains("/dev/pts/"), "{out}");
    assert!(out.stdout.contains("TERMOK"), "{out}");
    wait_until("nothing of the container is left", || {
        c.leftovers().is_empty()
    });
}

/// A bundle directory with `config.json` = `json`.
fn bundle(dir: &Path, json: &str) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::write(b.join("config.json"), json).unwrap();
    b
}

/// `fvm oci --root ROOT ARGS`.
fn oci(root: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new(common::FVM);
    cmd.arg("oci").arg("--root").arg(root).args(args);
    try_run(cmd, None, Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_runtime_by_hand_create_state_kill_delete() {
    if !needs_root("the_runtime_by_hand_create_state_kill_delete") {
        return;
    }
    let dir = common::temp_dir("oci-hand");
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"user":{"uid":0,"gid":0},"args":["sleep","1000"],"cwd":"/"},
            "annotations":{"org.featherweight.rootfs":"host"}}"#,
    );
    let pid_file = dir.path().join("init.pid");
    let id = "fvm-hand";
    // A host file as stdin would be the VM's to reopen for writing: refused,
    // and nothing is made.
    let host_file = dir.path().join("stdin-file");
    std::fs::write(&host_file, "host data\n").unwrap();
    let refused = Command::new(common::FVM)
        .arg("oci")
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), id])
        .stdin(std::fs::File::open(&host_file).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stdin is a host file"), "{stderr}");
    assert!(
        std::fs::read_dir(root.join("containers"))
            .unwrap()
            .next()
            .is_none()
    );
    oci(
        &root,
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ],
    )
    .ok();
    let state: serde_json::Value =
        serde_json::from_str(&oci(&root, &["state", id]).ok().stdout).unwrap();
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(state["pid"].to_string(), pid.trim());
    let list: serde_json::Value =
        serde_json::from_str(&oci(&root, &["list", "--format", "json"]).ok().stdout).unwrap();
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["status"], "created");
    assert_eq!(oci(&root, &["list", "-q"]).ok().stdout, format!("{id}\n"));
    // A second create of the ID is refused; so are hostile IDs.
    let again = oci(&root, &["create", "--bundle", b.to_str().unwrap(), id]);
    assert_eq!(again.code, 1, "{again}");
    assert!(again.stderr.contains("already exists"), "{again}");
    for bad in ["../../etc", "a/b", ".hidden", "-x"] {
        let out = oci(&root, &["state", "--", bad]);
        assert_eq!(out.code, 1, "{bad}: {out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    }
    // A live change of limits, as containerd's shim sends it (`update
    // --resources -`, the JSON on stdin).
    let mut cmd = Command::new(common::FVM);
    cmd.arg("oci")
        .arg("--root")
        .arg(&root)
        .args(["update", "--resources", "-", id]);
    try_run(
        cmd,
        Some(br#"{"memory":{"limit":134217728},"pids":{"limit":77}}"#),
        Duration::from_secs(90),
    )
    .unwrap()
    .ok();
    let store = fvm_engine::store::Store::open(&root.join("store")).unwrap();
    let pids = cgroup_dirs_matching(&format!("fvm-{}-", store.id()))
        .into_iter()
        .map(|d| d.join("pids.max"))
        .find(|f| f.exists())
        .expect("the vm's pids cgroup");
    assert_eq!(std::fs::read_to_string(pids).unwrap().trim(), "77");
    // Not stopped: delete without --force is refused.
    let busy = oci(&root, &["delete", id]);
    assert_eq!(busy.code, 1, "{busy}");
    // A kill before start ends the parked VM.
    oci(&root, &["kill", id, "KILL"]).ok();
    wait_until("the container stopped", || {
        oci(&root, &["state", id]).stdout.contains("\"stopped\"")
    });
    // A stopped container: kill --all and delete are fine; a plain kill is not.
    oci(&root, &["kill", "--all", id, "TERM"]).ok();
    assert_eq!(oci(&root, &["kill", id, "TERM"]).code, 1);
    oci(&root, &["delete", id]).ok();
    // Gone: delete --force of it again (after a crash, say) is still fine.
    oci(&root, &["delete", "--force", id]).ok();
    let gone = oci(&root, &["state", id]);
    assert!(gone.stderr.contains("does not exist"), "{gone}");
    no_vms_left(&root);
    assert!(
        std::fs::read_dir(root.join("containers"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn podman_runs_fvm_runc_through_conmon() {
    let test = "podman_runs_fvm_runc_through_conmon";
    if !needs_root(test) || !needs_tool(test, "podman") || !needs_tool(test, "conmon") {
        return;
    }
    let dir = common::temp_dir("oci-podman");
    let d = dir.path();
    for sub in ["storage", "runroot", "rootfs", "export"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink(common::FVM, d.join("fvm-runc")).unwrap();
    // podman's own storage in the test's directory. The runtime keeps its
    // default root (/run/fvm-runc): the cleanup podman's conmon runs after the
    // container (`podman container cleanup --rm`) calls the runtime without
    // podman's --runtime-flag, so a root given there would be missed.
    let podman = || {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--runtime")
            .arg(d.join("fvm-runc"))
            .args(["--events-backend", "file", "--cgroup-manager", "cgroupfs"]);
        cmd
    };
    let probe = format!("/etc/{}", unique("podman-probe"));
    let export = format!("org.featherweight.export={}", d.join("export").display());
    let mut cmd = podman();
    cmd.args(["run", "--rm", "--network", "host"])
        .args(["--annotation", "org.featherweight.rootfs=host"])
        .args(["--annotation", &export])
        .arg("--rootfs")
        .arg(d.join("rootfs"))
        .args([
            "/bin/sh",
            "-c",
            &format!("echo x > {probe}; echo from podman; exit 3"),
        ]);
    let out = try_run(cmd, None, Duration::from_secs(120)).unwrap();
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stdout.contains("from podman"), "{out}");
    assert!(
        !Path::new(&probe).exists(),
        "the container wrote to the host"
    );
    // The export is written by the delete of that cleanup.
    let exports = || -> Vec<PathBuf> {
        std::fs::read_dir(d.join("export"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    wait_until("the export is written", || exports().len() == 1);
    let file = &exports()[0];
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(&format!("\"{probe}\"")), "{text}");
    // Nothing of this container is left in the runtime.
    let id = file.file_stem().unwrap().to_string_lossy().into_owned();
    let root = Path::new(fvm_runc_default_root());
    assert!(!root.join("containers").join(format!("{id}.json")).exists());
    let vm = format!("c-{}-", &id[..12]);
    let vms: Vec<_> = std::fs::read_dir(root.join("store/vms"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&vm))
        .collect();
    assert!(vms.is_empty(), "{vms:?}");
    // podman's own mounts of its storage go with it.
    let mut reset = podman();
    reset.args(["system", "reset", "--force"]);
    let _ = try_run(reset, None, Duration::from_secs(60));
}

/// The runtime's `--root` when none is given.
fn fvm_runc_default_root() -> &'static str {
    "/run/fvm-runc"
}

/// Receives one fd over a unix socket (as an engine's console socket does) and
/// prints what it reads from it until `TERMOK`.
const CONSOLE_RECEIVER: &str = r#"
import socket, array, os, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
msg, anc, _, _ = c.recvmsg(4096, socket.CMSG_LEN(4))
fds = array.array("i")
for level, kind, data in anc:
    fds.frombytes(data[:4])
m = fds[0]
os.set_blocking(m, False)
out = b""
end = time.time() + 30
while time.time() < end and b"TERMOK" not in out:
    try:
        d = os.read(m, 4096)
        if not d:
            break
        out += d
    except BlockingIOError:
        time.sleep(0.05)
    except OSError:
        break
sys.stdout.write(out.decode(errors="replace"))
"#;

#[test]
fn a_terminal_container_gets_a_pty_through_the_console_socket() {
    if !needs_root("a_terminal_container_gets_a_pty_through_the_console_socket") {
        return;
    }
    let dir = common::temp_dir("oci-tty");
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"terminal":true,"user":{"uid":0,"gid":0},
                       "args":["/bin/sh","-c","tty; echo TERMOK; sleep 2"],"cwd":"/"},
            "annotations":{"org.featherweight.rootfs":"host"}}"#,
    );
    let socket = dir.path().join("console.sock");
    let receiver = common::Background::start({
        let mut cmd = Command::new(common::python());
        cmd.arg("-c").arg(CONSOLE_RECEIVER).arg(&socket);
        cmd
    });
    wait_until("the console socket listens", || socket.exists());
    let id = "fvm-tty";
    // A terminal needs a console socket, and a console socket a terminal.
    let without = oci(&root, &["create", "--bundle", b.to_str().unwrap(), id]);
    assert_eq!(without.code, 1, "{without}");
    assert!(without.stderr.contains("--console-socket"), "{without}");
    oci(
        &root,
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--console-socket",
            socket.to_str().unwrap(),
            id,
        ],
    )
    .ok();
    oci(&root, &["start", id]).ok();
    let out = receiver.finish();
    assert!(out.stdout.contains("/dev/pts/"), "{out}");
    assert!(out.stdout.contains("TERMOK"), "{out}");
    oci(&root, &["delete", "--force", id]).ok();
    no_vms_left(&root);
}

#[test]
fn no_new_privileges_is_honoured() {
    if !needs_root("no_new_privileges_is_honoured") {
        return;
    }
    let dir = common::temp_dir("oci-nnp");
    let root = dir.path().join("root");
    for (nnp, want) in [(true, "1"), (false, "0")] {
        let b = bundle(
            dir.path(),
            &format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
                    "process":{{"noNewPrivileges":{nnp},"user":{{"uid":0,"gid":0}},
                               "args":["/bin/sh","-c","grep NoNewPrivs /proc/self/status"],"cwd":"/"}},
                    "annotations":{{"org.featherweight.rootfs":"host"}}}}"#
            ),
        );
        let out = oci(&root, &["run", "--bundle", b.to_str().unwrap(), "fvm-nnp"]).ok();
        let value = out
            .stdout
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        assert_eq!(value, want, "noNewPrivileges {nnp}: {out}");
    }
    no_vms_left(&root);
}

/// A container whose process can't be started says why on its stderr (the
/// container's, which the engine shows), in one line, and fails: nobody reads
/// the init's channel once `create` has gone.
#[test]
fn a_process_that_cannot_start_says_why_on_the_containers_stderr() {
    if !needs_root("a_process_that_cannot_start_says_why_on_the_containers_stderr") {
        return;
    }
    let dir = common::temp_dir("oci-noexec");
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"user":{"uid":0,"gid":0},"args":["/fvm-no-such-program\u001b[2J"],"cwd":"/"},
            "annotations":{"org.featherweight.rootfs":"host"}}"#,
    );
    let out = oci(
        &root,
        &["run", "--bundle", b.to_str().unwrap(), "fvm-noexec"],
    );
    assert_ne!(out.code, 0, "{out}");
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("fvm-no-such-program"))
        .collect();
    assert_eq!(said.len(), 1, "one line names the program: {out}");
    assert!(said[0].contains("not found"), "{out}");
    assert!(
        !out.stderr.contains('\x1b'),
        "the name is shown escaped: {out}"
    );
    no_vms_left(&root);
}

/// The runtime's store has no VM left: a deleted VM's layers are removed in the
/// background (its directory renamed into the store's trash first), so this
/// waits for that to finish.
fn no_vms_left(root: &Path) {
    common::wait_until("the runtime's store has no vm left", || {
        std::fs::read_dir(root.join("store/vms"))
            .unwrap()
            .next()
            .is_none()
    });
}

/// A network namespace the test makes (`ip netns add`), with a veth pair of
/// its own inside it; deleted on drop.
struct Netns {
    name: String,
    veth: String,
}

impl Netns {
    fn new() -> Netns {
        let tag = format!("{:08x}", std::process::id() ^ rand_tag());
        let ns = Netns {
            name: format!("fvm-oci-{tag}"),
            veth: format!("fvmo{tag}"),
        };
        common::sh(&format!(
            "ip netns add {n} && ip -n {n} link set lo up && \
             ip -n {n} link add {v} type veth peer name fvmp{t} && \
             ip -n {n} addr add 127.0.0.2/32 dev {v} && ip -n {n} link set {v} up",
            n = ns.name,
            v = ns.veth,
            t = tag
        ))
        .ok();
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A few bits that differ between runs of the same pid.
fn rand_tag() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[test]
fn a_container_joins_a_network_namespace_by_path() {
    let test = "a_container_joins_a_network_namespace_by_path";
    if !needs_root(test) || !needs_tool(test, "ip") {
        return;
    }
    let dir = common::temp_dir("oci-netns");
    let root = dir.path().join("root");
    let ns = Netns::new();
    let config = |path: &str, args: &str| {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
                "process":{{"user":{{"uid":0,"gid":0}},"args":{args},"cwd":"/"}},
                "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"network","path":{path:?}}}]}},
                "annotations":{{"org.featherweight.rootfs":"host"}}}}"#
        )
    };
    // The container's process and an exec'd one are in that namespace: they
    // see its veth, and none of the host's interfaces.
    let b = bundle(
        dir.path(),
        &config(
            &ns.path(),
            r#"["/bin/sh","-c","cat /proc/net/dev; ls /sys/class/net; sleep 1000"]"#,
        ),
    );
    let log = dir.path().join("out.log");
    let id = "fvm-netns";
    let mut create = Command::new(common::FVM);
    create
        .arg("oci")
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit());
    assert!(create.status().unwrap().success());
    oci(&root, &["start", id]).ok();
    wait_until("the container listed its interfaces", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(&ns.veth)
            .count()
            >= 2
    });
    let seen = std::fs::read_to_string(&log).unwrap();
    let host_ifaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    for iface in &host_ifaces {
        assert!(!seen.contains(iface.as_str()), "host {iface} seen: {seen}");
    }
    let process = dir.path().join("process.json");
    std::fs::write(
        &process,
        r#"{"user":{"uid":0,"gid":0},"args":["/bin/cat","/proc/net/dev"],"cwd":"/"}"#,
    )
    .unwrap();
    let exec = oci(&root, &["exec", "--process", process.to_str().unwrap(), id]).ok();
    assert!(exec.stdout.contains(&ns.veth), "{exec}");
    oci(&root, &["delete", "--force", id]).ok();
    // Anything but a network namespace is refused, with one line, and nothing
    // is made.
    for bad in ["/proc/self/ns/pid", "/etc/hostname", "/dev/null"] {
        let b = bundle(dir.path(), &config(bad, r#"["/bin/true"]"#));
        let out = oci(
            &root,
            &["run", "--bundle", b.to_str().unwrap(), "fvm-netns-bad"],
        );
        assert_eq!(out.code, 1, "{bad}: {out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        assert!(out.stderr.contains("network namespace"), "{out}");
    }
    no_vms_left(&root);
}

#[test]
fn mounts_masked_and_readonly_paths_stay_inside_the_vms_root() {
    if !needs_root("mounts_masked_and_readonly_paths_stay_inside_the_vms_root") {
        return;
    }
    let dir = common::temp_dir("oci-mounts");
    let root = dir.path().join("root");
    let host_side = dir.path().join("hostside");
    std::fs::create_dir(&host_side).unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("secret"), "s3cret\n").unwrap();
    let config = format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
            "process":{{"user":{{"uid":0,"gid":0}},"cwd":"/","env":["PATH=/bin"],
              "args":["/bin/sh","-c","cat /run/fvmvol/secret; echo x > /run/fvmvol/w 2>/dev/null && echo VOL-WRITABLE; cat /evil/inside/secret; cat /proc/mounts; cat /etc/secret-file; echo masked-file; ls /etc/secret-dir; echo masked-dir; echo y > /ro-dir/f 2>/dev/null && echo RO-WRITABLE; echo z > /data/f && echo data-ok"]}},
            "mounts":[
              {{"destination":"/var/run/fvmvol","type":"bind","source":{vol:?},"options":["rbind","ro"]}},
              {{"destination":"/evil/inside","type":"bind","source":{vol:?},"options":["rbind","ro"]}},
              {{"destination":"/data","type":"tmpfs","source":"tmpfs","options":["nosuid","size=1m","mode=0700"]}}],
            "linux":{{"maskedPaths":["/etc/secret-file","/etc/secret-dir","/fvm-not-there"],
                      "readonlyPaths":["/ro-dir"]}}}}"#,
        vol = volume.to_str().unwrap()
    );
    let b = bundle(dir.path(), &config);
    let rootfs = b.join("rootfs");
    tiny_rootfs(&rootfs, &["sh", "cat", "ls"]);
    // Debian's /var/run, and a symlink that climbs out towards a host path.
    std::fs::create_dir(rootfs.join("var")).unwrap();
    std::os::unix::fs::symlink("/run", rootfs.join("var/run")).unwrap();
    let climb = format!("../../../../../../..{}", host_side.display());
    std::os::unix::fs::symlink(&climb, rootfs.join("evil")).unwrap();
    std::fs::write(rootfs.join("etc/secret-file"), "leak\n").unwrap();
    std::fs::create_dir(rootfs.join("etc/secret-dir")).unwrap();
    std::fs::write(rootfs.join("etc/secret-dir/leak-too"), "leak\n").unwrap();
    std::fs::create_dir(rootfs.join("ro-dir")).unwrap();
    let out = oci(
        &root,
        &["run", "--bundle", b.to_str().unwrap(), "fvm-mounts"],
    );
    assert_eq!(out.code, 0, "{out}");
    // The bind through /var/run is at /run (the VM's), read-only.
    assert_eq!(out.stdout.matches("s3cret").count(), 2, "{out}");
    assert!(!out.stdout.contains("VOL-WRITABLE"), "{out}");
    // The symlink was followed inside the VM's root: nothing made on the host.
    assert!(!host_side.join("inside").exists());
    assert_eq!(std::fs::read_dir(&host_side).unwrap().count(), 0);
    // The tmpfs with its options.
    let data = out
        .stdout
        .lines()
        .find(|l| l.starts_with("tmpfs /data "))
        .unwrap_or_else(|| panic!("no /data tmpfs: {out}"));
    assert!(data.contains("nosuid"), "{data}");
    assert!(data.contains("size=1024k"), "{data}");
    assert!(data.contains("mode=700"), "{data}");
    assert!(out.stdout.contains("data-ok"), "{out}");
    // Masked and read-only paths.
    assert!(!out.stdout.contains("leak"), "{out}");
    assert!(out.stdout.contains("masked-dir"), "{out}");
    assert!(!out.stdout.contains("RO-WRITABLE"), "{out}");
    // The rootfs is only the lower layer: untouched.
    assert!(!rootfs.join("data").exists());
    oci(&root, &["delete", "--force", "fvm-mounts"]).ok();
    no_vms_left(&root);
}

/// `Name:` of a `/proc/PID/status` text, its fields joined by one space.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[test]
fn the_process_user_capabilities_and_rlimits_are_applied_within_fvms_own() {
    if !needs_root("the_process_user_capabilities_and_rlimits_are_applied_within_fvms_own") {
        return;
    }
    let dir = common::temp_dir("oci-user");
    let root = dir.path().join("root");
    let run = |process: &str| {
        let b = bundle(
            dir.path(),
            &format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"process":{{"cwd":"/","env":["PATH=/bin"],
                    "args":["/bin/sh","-c","cat /proc/self/status; echo umask $(umask); echo nofile $(ulimit -Sn) $(ulimit -Hn)"],
                    {process}}}}}"#
            ),
        );
        tiny_rootfs(&b.join("rootfs"), &["sh", "cat"]);
        oci(&root, &["run", "--bundle", b.to_str().unwrap(), "fvm-user"]).ok()
    };
    // A user of its own, with groups, umask, rlimits and capabilities: those
    // outside fvm's set (SYS_ADMIN) are not given, whatever the config says.
    let out = run(
        r#""user":{"uid":1234,"gid":2345,"additionalGids":[3456,4567],"umask":23},
           "rlimits":[{"type":"RLIMIT_NOFILE","soft":100,"hard":200}],
           "capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_ADMIN","CAP_NET_RAW","CAP_KILL"],
                           "effective":["CAP_CHOWN","CAP_SYS_ADMIN","CAP_KILL"],
                           "permitted":["CAP_CHOWN","CAP_SYS_ADMIN","CAP_KILL"],
                           "inheritable":["CAP_KILL","CAP_SYS_ADMIN"],
                           "ambient":["CAP_KILL","CAP_SYS_ADMIN"]}"#,
    );
    let s = &out.stdout;
    assert_eq!(status_field(s, "Uid"), "1234 1234 1234 1234", "{out}");
    assert_eq!(status_field(s, "Gid"), "2345 2345 2345 2345", "{out}");
    assert_eq!(status_field(s, "Groups"), "3456 4567", "{out}");
    assert!(s.contains("umask 0027"), "{out}");
    assert!(s.contains("nofile 100 200"), "{out}");
    // CHOWN 0, KILL 5, NET_RAW 13 bound; only KILL ambient (so kept by a
    // non-root process across exec).
    assert_eq!(status_field(s, "CapBnd"), "0000000000002021", "{out}");
    assert_eq!(status_field(s, "CapAmb"), "0000000000000020", "{out}");
    assert_eq!(status_field(s, "CapEff"), "0000000000000020", "{out}");
    // Root asking for more than fvm gives gets only what it gives.
    let out = run(r#""user":{"uid":0,"gid":0},
           "capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_ADMIN","CAP_MKNOD"],
                           "effective":["CAP_CHOWN","CAP_SYS_ADMIN","CAP_MKNOD"],
                           "permitted":["CAP_CHOWN","CAP_SYS_ADMIN","CAP_MKNOD"]}"#);
    assert_eq!(
        status_field(&out.stdout, "CapEff"),
        "0000000000000001",
        "{out}"
    );
    assert_eq!(
        status_field(&out.stdout, "CapBnd"),
        "0000000000000001",
        "{out}"
    );
    assert_eq!(status_field(&out.stdout, "Uid"), "0 0 0 0", "{out}");
    no_vms_left(&root);
}

#[test]
fn exec_with_a_terminal_sends_its_pty_to_the_console_socket() {
    if !needs_root("exec_with_a_terminal_sends_its_pty_to_the_console_socket") {
        return;
    }
    let dir = common::temp_dir("oci-exec-tty");
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"user":{"uid":0,"gid":0},"args":["sleep","1000"],"cwd":"/"},
            "annotations":{"org.featherweight.rootfs":"host"}}"#,
    );
    let id = "fvm-exec-tty";
    oci(&root, &["create", "--bundle", b.to_str().unwrap(), id]).ok();
    oci(&root, &["start", id]).ok();
    let process = dir.path().join("process.json");
    std::fs::write(
        &process,
        r#"{"terminal":true,"user":{"uid":0,"gid":0},"cwd":"/",
            "args":["/bin/sh","-c","tty; echo TERMOK; sleep 2"]}"#,
    )
    .unwrap();
    let p = process.to_str().unwrap();
    // A terminal needs a console socket.
    let without = oci(&root, &["exec", "--process", p, "--detach", id]);
    assert_eq!(without.code, 1, "{without}");
    assert!(without.stderr.contains("--console-socket"), "{without}");
    let socket = dir.path().join("console.sock");
    let receiver = common::Background::start({
        let mut cmd = Command::new(common::python());
        cmd.arg("-c").arg(CONSOLE_RECEIVER).arg(&socket);
        cmd
    });
    wait_until("the console socket listens", || socket.exists());
    let pid_file = dir.path().join("exec.pid");
    oci(
        &root,
        &[
            "exec",
            "--process",
            p,
            "--detach",
            "--console-socket",
            socket.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ],
    )
    .ok();
    let out = receiver.finish();
    assert!(out.stdout.contains("/dev/pts/"), "{out}");
    assert!(out.stdout.contains("TERMOK"), "{out}");
    assert!(
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse::<i32>()
            .is_ok()
    );
    oci(&root, &["delete", "--force", id]).ok();
    no_vms_left(&root);
}

#[test]
fn a_plain_bundle_of_the_hosts_root_is_refused() {
    if !needs_root("a_plain_bundle_of_the_hosts_root_is_refused") {
        return;
    }
    let dir = common::temp_dir("oci-slash");
    let root = dir.path().join("root");
    // The host's / by its name and by another: never a container's own root.
    for path in ["/", "../../../../../../../../.."] {
        let b = bundle(
            dir.path(),
            &format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":{path:?}}},
                    "process":{{"user":{{"uid":0,"gid":0}},"args":["/bin/true"],"cwd":"/"}}}}"#
            ),
        );
        let out = oci(
            &root,
            &["run", "--bundle", b.to_str().unwrap(), "fvm-slash"],
        );
        assert_eq!(out.code, 1, "{path}: {out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
        assert!(
            out.stderr.contains("org.featherweight.rootfs=host"),
            "{out}"
        );
    }
    // Nothing was made.
    let made = |sub: &str| {
        std::fs::read_dir(root.join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!((made("containers"), made("store/vms")), (0, 0));
}

/// `config.json` of a plain bundle running `script` under `/bin/sh`, with
/// `mounts` (a JSON array).
fn plain_config(script: &str, mounts: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
            "process":{{"user":{{"uid":0,"gid":0}},"cwd":"/","env":["PATH=/bin"],
              "args":["/bin/sh","-c",{script:?}]}},
            "mounts":{mounts}}}"#
    )
}

/// The mount options (field 6) of the mount at `point` in a mountinfo text.
fn mount_options<'a>(mountinfo: &'a str, point: &str) -> Option<Vec<&'a str>> {
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(point))
        .map(|l| l.split(' ').nth(5).unwrap_or("").split(',').collect())
}

#[test]
fn a_plain_rootfs_cannot_steer_fvms_own_proc() {
    if !needs_root("a_plain_rootfs_cannot_steer_fvms_own_proc") {
        return;
    }
    let dir = common::temp_dir("oci-proc");
    let root = dir.path().join("root");
    let shm = dir.path().join("shm");
    std::fs::create_dir(&shm).unwrap();
    // The same value back: never a different one into a host sysctl.
    let script = "v=$(cat /proc/sys/kernel/core_uses_pid); \
                  (echo $v > /proc/sys/kernel/core_uses_pid) 2>/dev/null && echo SYSCTL-WRITABLE; \
                  cat /proc/keys >/dev/null 2>&1 && grep -q . /proc/keys && echo KEYS-SHOWN; \
                  cat /proc/self/mountinfo";
    let shm_bind = format!(
        r#"[{{"destination":"/dev/shm","type":"bind","source":{:?},"options":["rbind","rw"]}}]"#,
        shm.to_str().unwrap()
    );
    // (name, mounts, the image's layout: symlinks and directories)
    type Layout = (
        &'static str,
        String,
        &'static [(&'static str, &'static str)],
    );
    let layouts: [Layout; 4] = [
        // /proc resolves to /realproc before fvm's /dev, to nothing after it,
        // and again once fvm made /run/lock.
        (
            "lock",
            "[]".into(),
            &[
                ("proc", "/run/lock/../../realproc"),
                ("run/lock", "/dev/fvmy"),
                ("dev/fvmy", ""),
                ("realproc", ""),
            ],
        ),
        // Through the pod's shared /dev/shm, past the masks of the config.
        (
            "shm",
            shm_bind,
            &[
                ("dev/shm", "/realproc"),
                ("proc", "/dev/shm"),
                ("realproc", ""),
            ],
        ),
        // A mount point that is a file, or a symlink to a directory.
        ("file", "[]".into(), &[("run", "-file")]),
        ("dev", "[]".into(), &[("dev", "/realdev"), ("realdev", "")]),
    ];
    for (name, mounts, layout) in layouts {
        let b = bundle(&dir.path().join(name), &plain_config(script, &mounts));
        let rootfs = b.join("rootfs");
        tiny_rootfs(&rootfs, &["sh", "cat", "grep"]);
        for (path, target) in layout {
            let at = rootfs.join(path);
            if at.is_dir() && !at.is_symlink() {
                std::fs::remove_dir(&at).unwrap();
            }
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            match *target {
                "" => std::fs::create_dir(&at).unwrap(),
                "-file" => std::fs::write(&at, "").unwrap(),
                t => std::os::unix::fs::symlink(t, &at).unwrap(),
            }
        }
        let id = format!("fvm-proc-{name}");
        let out = oci(&root, &["run", "--bundle", b.to_str().unwrap(), &id]);
        assert!(!out.stdout.contains("SYSCTL-WRITABLE"), "{name}: {out}");
        assert!(!out.stdout.contains("KEYS-SHOWN"), "{name}: {out}");
        // Refused, in one line naming the mount point.
        assert_eq!(out.code, 1, "{name}: {out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{name}: {out}");
        assert!(
            out.stderr.contains("a symlink or not a directory"),
            "{name}: {out}"
        );
        oci(&root, &["delete", "--force", &id]);
    }
    // An image with plain directories: fvm's /proc is there, its kernel
    // files read-only and masked.
    let b = bundle(&dir.path().join("plain"), &plain_config(script, "[]"));
    tiny_rootfs(&b.join("rootfs"), &["sh", "cat", "grep"]);
    let out = oci(
        &root,
        &["run", "--bundle", b.to_str().unwrap(), "fvm-proc-plain"],
    );
    assert_eq!(out.code, 0, "{out}");
    assert!(!out.stdout.contains("SYSCTL-WRITABLE"), "{out}");
    assert!(!out.stdout.contains("KEYS-SHOWN"), "{out}");
    let sys = mount_options(&out.stdout, "/proc/sys")
        .unwrap_or_else(|| panic!("no /proc/sys mount: {out}"));
    assert!(sys.contains(&"ro"), "{sys:?}");
    assert!(mount_options(&out.stdout, "/proc").is_some(), "{out}");
    oci(&root, &["delete", "--force", "fvm-proc-plain"]);
    no_vms_left(&root);
}

#[test]
fn a_readonly_bind_stays_readonly_wherever_its_target_symlink_leads() {
    if !needs_root("a_readonly_bind_stays_readonly_wherever_its_target_symlink_leads") {
        return;
    }
    let dir = common::temp_dir("oci-robind");
    let root = dir.path().join("root");
    // The volume holds a symlink that, looked up again after the bind, would
    // lead /m (= /d/x/..) to the VM's root.
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::os::unix::fs::symlink("/tmp", volume.join("x")).unwrap();
    std::fs::write(volume.join("f"), "host\n").unwrap();
    let flagged = dir.path().join("flagged");
    std::fs::create_dir(&flagged).unwrap();
    let mounts = format!(
        r#"[{{"destination":"/m","type":"bind","source":{vol:?},"options":["rbind","ro"]}},
            {{"destination":"/flagged","type":"bind","source":{fl:?},"options":["rbind","nosuid","nodev","noexec","rprivate"]}}]"#,
        vol = volume.to_str().unwrap(),
        fl = flagged.to_str().unwrap()
    );
    let script = "echo y > /d/f 2>/dev/null && echo VOL-WRITABLE; cat /d/f; \
                  echo z > /probe 2>/dev/null && echo ROOT-WRITABLE; cat /proc/self/mountinfo";
    let b = bundle(dir.path(), &plain_config(script, &mounts));
    let rootfs = b.join("rootfs");
    tiny_rootfs(&rootfs, &["sh", "cat"]);
    std::fs::create_dir_all(rootfs.join("d/x")).unwrap();
    std::os::unix::fs::symlink("/d/x/..", rootfs.join("m")).unwrap();
    let out = oci(
        &root,
        &["run", "--bundle", b.to_str().unwrap(), "fvm-robind"],
    );
    assert_eq!(out.code, 0, "{out}");
    // The volume is at /d, read-only; the VM's root is not.
    assert!(out.stdout.contains("host"), "{out}");
    assert!(!out.stdout.contains("VOL-WRITABLE"), "{out}");
    assert!(out.stdout.contains("ROOT-WRITABLE"), "{out}");
    assert_eq!(std::fs::read_to_string(volume.join("f")).unwrap(), "host\n");
    let d = mount_options(&out.stdout, "/d").unwrap_or_else(|| panic!("no /d: {out}"));
    assert!(d.contains(&"ro"), "{d:?}");
    let root_opts = mount_options(&out.stdout, "/").unwrap_or_else(|| panic!("no /: {out}"));
    assert!(root_opts.contains(&"rw"), "{root_opts:?}");
    // nosuid, nodev and noexec of a bind are applied.
    let f = mount_options(&out.stdout, "/flagged").unwrap_or_else(|| panic!("no /flagged: {out}"));
    for o in ["nosuid", "nodev", "noexec"] {
        assert!(f.contains(&o), "{o}: {f:?}");
    }
    oci(&root, &["delete", "--force", "fvm-robind"]);
    // A bind option fvm doesn't know is refused, not dropped.
    let mounts = format!(
        r#"[{{"destination":"/m2","type":"bind","source":{:?},"options":["rbind","fvmbogus"]}}]"#,
        volume.to_str().unwrap()
    );
    let b = bundle(&dir.path().join("bogus"), &plain_config("true", &mounts));
    tiny_rootfs(&b.join("rootfs"), &["sh"]);
    let out = oci(
        &root,
        &["run", "--bundle", b.to_str().unwrap(), "fvm-robind-bogus"],
    );
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out}");
    assert!(out.stderr.contains("fvmbogus"), "{out}");
    oci(&root, &["delete", "--force", "fvm-robind-bogus"]);
    no_vms_left(&root);
}

#[test]
fn a_mask_is_fvms_own_dev_null_whatever_is_bound_at_dev() {
    if !needs_root("a_mask_is_fvms_own_dev_null_whatever_is_bound_at_dev") {
        return;
    }
    let dir = common::temp_dir("oci-mask");
    let root = dir.path().join("root");
    // A host directory bound at /dev whose `null` is a plain host file.
    let devdir = dir.path().join("devdir");
    std::fs::create_dir(&devdir).unwrap();
    std::fs::write(devdir.join("null"), "hostnull\n").unwrap();
    let mounts = format!(
        r#"[{{"destination":"/dev","type":"bind","source":{:?},"options":["rbind","rw"]}}]"#,
        devdir.to_str().unwrap()
    );
    let config = plain_config(
        "cat /etc/secret; echo over > /etc/secret; echo done",
        &mounts,
    )
    .replace(
        r#""mounts":"#,
        r#""linux":{"maskedPaths":["/etc/secret"]},"mounts":"#,
    );
    let b = bundle(dir.path(), &config);
    let rootfs = b.join("rootfs");
    tiny_rootfs(&rootfs, &["sh", "cat"]);
    std::fs::write(rootfs.join("etc/secret"), "leak\n").unwrap();
    let out = oci(&root, &["run", "--bundle", b.to_str().unwrap(), "fvm-mask"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("done"), "{out}");
    assert!(!out.stdout.contains("leak"), "{out}");
    assert!(!out.stdout.contains("hostnull"), "{out}");
    // The host file bound at /dev was not put over the masked path.
    assert_eq!(
        std::fs::read_to_string(devdir.join("null")).unwrap(),
        "hostnull\n"
    );
    oci(&root, &["delete", "--force", "fvm-mask"]);
    no_vms_left(&root);
}

/// `run` in the foreground (Slurm's `RunTimeRun`) passes a SIGTERM (a
/// scheduler's cancel) on to the container and exits with its status; the
/// container is deleted, as after any foreground `run`.
#[test]
fn run_in_the_foreground_passes_a_sigterm_on_to_the_container() {
    if !needs_root("run_in_the_foreground_passes_a_sigterm_on_to_the_container") {
        return;
    }
    let dir = common::temp_dir("oci-runterm");
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"user":{"uid":0,"gid":0},"cwd":"/",
                "args":["/bin/sh","-c","trap 'echo fvm-got-term; exit 7' TERM; echo fvm-ready; while :; do sleep 0.1; done"]},
            "annotations":{"org.featherweight.rootfs":"host"}}"#,
    );
    // Without the signal passed on, the container would outlive fvm: removed
    // also when the test fails.
    struct ForceDelete(PathBuf);
    impl Drop for ForceDelete {
        fn drop(&mut self) {
            let _ = Command::new(common::FVM)
                .arg("oci")
                .arg("--root")
                .arg(&self.0)
                .args(["delete", "--force", "fvm-runterm"])
                .output();
        }
    }
    let _cleanup = ForceDelete(root.clone());
    let out_path = dir.path().join("out");
    let mut child = Command::new(common::FVM)
        .arg("oci")
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle", b.to_str().unwrap(), "fvm-runterm"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let out = || std::fs::read_to_string(&out_path).unwrap_or_default();
    wait_until("the container runs", || out().contains("fvm-ready"));
    common::signal("TERM", &[pid]);
    let mut status = None;
    wait_until("fvm oci run exits", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(7), "{}", out());
    assert!(out().contains("fvm-got-term"), "{}", out());
    assert!(
        std::fs::read_dir(root.join("containers"))
            .unwrap()
            .next()
            .is_none()
    );
    no_vms_left(&root);
}

//! fvm as an OCI runtime: what `fvm oci` (also installed as `fvm-runc`) does
//! for container engines that drive runc (containerd's runc shim, conmon).
//!
//! A container is one VM of the runtime's own store (`<root>/store`), named
//! from the container's ID (see [`id`]); `<root>/containers/<ID>.json` records
//! the container: its VM, bundle, annotations, the VM's init and whether it was
//! started. `create` assembles the VM and leaves its init parked with the
//! container's process not yet run; `start` lets it run; the init exits with
//! the process's status, and is reaped by the engine's shim (the child
//! subreaper the init passes to when `create` exits). `delete` writes the export
//! an annotation asks for, then removes the VM. The OCI logic lives here; the
//! VM's lives in [`crate::vm`].

pub mod bundle;
pub mod id;
pub mod layer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{Store, VmName};
use crate::vm::{ContainerSetup, CreateOptions, Engine, VmError};
pub use bundle::Bundle;

/// The runtime spec version this runtime implements.
pub const OCI_VERSION: &str = "1.0.2";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{0}")]
    Id(String),
    #[error("container {id:?} does not exist")]
    NoSuchContainer { id: String },
    #[error("container {id:?} already exists")]
    Exists { id: String },
    #[error("container {id:?} is {status}, not {wanted}")]
    WrongStatus {
        id: String,
        status: &'static str,
        wanted: &'static str,
    },
    #[error("bundle {}: {why}", .path.display())]
    Bundle { path: PathBuf, why: String },
    #[error("config.json: {why}")]
    Config { why: String },
    #[error("annotation {key}: {why}")]
    Annotation { key: &'static str, why: String },
    #[error("{0:?} is not a signal")]
    Signal(String),
    #[error("{what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Vm(#[from] VmError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OciError + use<> {
    let path = path.to_owned();
    move |source| OciError::Io { what, path, source }
}

/// What `<root>/containers/<ID>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    pub vm: VmName,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The VM's init (host pid), which the engine reaps.
    pub pid: i32,
    /// `start` has let the process run.
    #[serde(default)]
    pub started: bool,
    /// When `create` ran (RFC 3339).
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<PathBuf>,
    /// Export the layer too, as a tarball.
    #[serde(default)]
    pub export_layer: bool,
    /// Left out of an export (the engine's own mounts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<PathBuf>,
    /// A plain container's root directory on the host (its VM's only lower
    /// layer); none for a host clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
}

/// A container's status, as the runtime spec (and runc's `paused`) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// The state document `state` prints: the runtime spec's, with runc's
/// `rootfs` and `created`, which runc's callers read too.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateDoc {
    pub oci_version: String,
    pub id: String,
    pub status: String,
    /// The VM's init, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// The runtime on one `--root`.
#[derive(Debug)]
pub struct Runtime {
    root: PathBuf,
    engine: Engine,
}

impl Runtime {
    /// Open (making it if needed) the runtime's directory `root`.
    pub fn open(root: &Path) -> Result<Runtime, OciError> {
        // (The engine names a root whose parents may not exist yet either.)
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        for dir in [root.to_owned(), root.join("containers")] {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(io_err("cannot set the mode of", &dir))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("cannot create", &dir)(e)),
            }
        }
        let store = Store::open_or_create(&root.join("store"))?;
        Ok(Runtime {
            root: root.to_owned(),
            engine: Engine::new(store),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn record_path(&self, id: &str) -> Result<PathBuf, OciError> {
        let id = id::check(id).map_err(OciError::Id)?;
        Ok(self.root.join("containers").join(format!("{id}.json")))
    }

    /// The record of container `id`.
    pub fn record(&self, id: &str) -> Result<Record, OciError> {
        let path = self.record_path(id)?;
        let text = match crate::os::files::read_regular_max(&path, 1 << 20) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OciError::NoSuchContainer { id: id.to_owned() });
            }
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            io_err("cannot parse", &path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
    }

    fn save(&self, record: &Record) -> Result<(), OciError> {
        let path = self.record_path(&record.id)?;
        let text = serde_json::to_vec_pretty(record).expect("a record always serializes");
        crate::os::files::write_atomic(&path, &text, 0o600).map_err(io_err("cannot write", &path))
    }

    /// `create`: make the container's VM and park its process. Returns the
    /// VM's init (host pid) for `--pid-file`.
    /// With `process.terminal` the process's fds 0-2 are a pty from the VM's
    /// devpts, whose master is sent to `console_socket` (required then, and
    /// only then, as for runc).
    pub fn create(
        &self,
        id: &str,
        bundle_dir: &Path,
        console_socket: Option<&Path>,
    ) -> Result<i32, OciError> {
        let path = self.record_path(id)?;
        if path.exists() {
            return Err(OciError::Exists { id: id.to_owned() });
        }
        let bundle = Bundle::load(bundle_dir, self.engine.store().root())?;
        let tty = bundle.terminal();
        match (tty, console_socket) {
            (true, None) => {
                return Err(OciError::Config {
                    why: "process.terminal is set: it needs --console-socket".into(),
                });
            }
            (false, Some(_)) => {
                return Err(OciError::Config {
                    why: "--console-socket is given, but process.terminal is not set".into(),
                });
            }
            (false, None) => check_stdio()?,
            (true, Some(_)) => {}
        }
        let vm = id::vm_name(id);
        // Opened (and checked) before anything is made.
        let netns = bundle
            .netns_path()?
            .map(|p| bundle::open_netns(&p))
            .transpose()?;
        let mut opts = CreateOptions::default();
        opts.network.mode = bundle.network()?;
        opts.limits = bundle.limits()?;
        if let Some(parent) = bundle.cgroup_parent()? {
            // runc makes a container's missing parents; so does fvm (they are
            // the engine's to remove, as runc leaves them too).
            self.engine
                .cgroups()
                .and_then(|c| c.make_parent(&parent))
                .map_err(|e| VmError::cgroup(&vm)(e))?;
            opts.cgroup_parent = Some(parent);
        }
        opts.description = Some(format!("OCI container {id}"));
        self.engine.create(&vm, &opts)?;
        let started = (|| -> Result<Record, OciError> {
            let record = Record {
                id: id.to_owned(),
                vm: vm.clone(),
                bundle: bundle.dir.clone(),
                annotations: bundle.spec.annotations().clone().unwrap_or_default(),
                pid: 0,
                started: false,
                created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
                export: bundle.export.clone(),
                export_layer: bundle.export_layer,
                skip: bundle.mount_points(),
                rootfs: bundle.rootfs.as_ref().map(|r| r.path.clone()),
            };
            // Recorded before the VM starts: a `create` killed half-way leaves
            // a container `delete` removes.
            self.save(&record)?;
            let setup = ContainerSetup {
                mounts: bundle.mounts()?,
                rootfs: bundle.rootfs.clone(),
                netns,
            };
            let (init, master) = self
                .engine
                .start_parked(&vm, bundle.command()?, setup, tty)?;
            if let (Some(master), Some(socket)) = (master, console_socket) {
                send_console(socket, master).map_err(io_err("cannot send the pty to", socket))?;
            }
            let record = Record {
                pid: init.pid,
                ..record
            };
            self.save(&record)?;
            Ok(record)
        })();
        match started {
            Ok(record) => Ok(record.pid),
            Err(e) => {
                let _ = self.engine.delete(&vm, true);
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// The container's status now.
    pub fn status(&self, record: &Record) -> Status {
        match self.engine.vm_status(&record.vm) {
            Some(crate::vm::RunStatus::Suspended) => Status::Paused,
            Some(crate::vm::RunStatus::Running) if record.started => Status::Running,
            Some(crate::vm::RunStatus::Running) => Status::Created,
            None => Status::Stopped,
        }
    }

    /// `start`: let a created container's process run.
    pub fn start(&self, id: &str) -> Result<(), OciError> {
        let mut record = self.record(id)?;
        match self.status(&record) {
            Status::Created => {}
            status => {
                return Err(OciError::WrongStatus {
                    id: id.to_owned(),
                    status: status.as_str(),
                    wanted: "created",
                });
            }
        }
        record.started = true;
        self.save(&record)?;
        self.engine.release(&record.vm)?;
        Ok(())
    }

    /// `state`.
    pub fn state(&self, id: &str) -> Result<StateDoc, OciError> {
        let record = self.record(id)?;
        let status = self.status(&record);
        Ok(StateDoc {
            oci_version: OCI_VERSION.into(),
            id: record.id.clone(),
            status: status.as_str().into(),
            pid: (status != Status::Stopped).then_some(record.pid),
            rootfs: record
                .rootfs
                .clone()
                .unwrap_or_else(|| record.bundle.join("rootfs")),
            bundle: record.bundle,
            created: record.created,
            annotations: record.annotations,
        })
    }

    /// `list`: the state of every container of this root, by ID. A record that
    /// can't be read is skipped (it names nothing this runtime can act on).
    pub fn list(&self) -> Result<Vec<StateDoc>, OciError> {
        let dir = self.root.join("containers");
        let mut ids: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io_err("cannot read", &dir))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                id::check(id).ok().map(str::to_owned)
            })
            .collect();
        ids.sort();
        Ok(ids.iter().filter_map(|id| self.state(id).ok()).collect())
    }

    /// `kill`: `signal` to the container's init (which passes it on to every
    /// process of the VM), or with `all` to every process. A stopped container
    /// is an error without `all`, as for runc.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), OciError> {
        let record = self.record(id)?;
        let sent = self.engine.signal(&record.vm, signal, all)?;
        if !sent && !all {
            return Err(OciError::WrongStatus {
                id: id.to_owned(),
                status: "stopped",
                wanted: "running",
            });
        }
        Ok(())
    }

    /// `exec`: run the OCI process in `process_json` in the running container,
    /// with this process's fds 0-2, or, when the process file sets `terminal`
    /// (or `tty`, runc's `--tty`), a pty from the VM's devpts whose master goes
    /// to `console_socket` (required then, and only then, as for `create`). Its
    /// host pid goes to `pid_file` (written through the file's directory,
    /// opened before this process enters the VM's namespaces). Returns the pid;
    /// the process is this one's child.
    pub fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: Option<&Path>,
        console_socket: Option<&Path>,
        tty: bool,
    ) -> Result<i32, OciError> {
        let record = self.record(id)?;
        let text = crate::os::files::read_regular_max(process_json, 1 << 20)
            .map_err(io_err("cannot read the process file", process_json))?;
        let process: oci_spec::runtime::Process =
            serde_json::from_str(&text).map_err(|e| OciError::Bundle {
                path: process_json.to_owned(),
                why: e.to_string(),
            })?;
        let tty = tty || process.terminal().unwrap_or(false);
        let spec = bundle::command(&process)?;
        // The console socket is connected to before this process enters the
        // VM's namespaces, where its path would not reach it.
        let console = match (tty, console_socket) {
            (true, None) => {
                return Err(OciError::Config {
                    why: "the process has a terminal: it needs --console-socket".into(),
                });
            }
            (false, Some(_)) => {
                return Err(OciError::Config {
                    why: "--console-socket is given, but the process has no terminal".into(),
                });
            }
            (false, None) => {
                check_stdio()?;
                None
            }
            (true, Some(socket)) => Some((
                std::os::unix::net::UnixStream::connect(socket)
                    .map_err(io_err("cannot connect to the console socket", socket))?,
                socket,
            )),
        };
        let pid_dir = pid_file
            .map(|f| PidFile::open(f).map_err(io_err("cannot open the directory of", f)))
            .transpose()?;
        let (pid, master) = self.engine.exec_in(&record.vm, spec, tty)?;
        if let (Some((stream, socket)), Some(master)) = (console, master) {
            send_console_on(&stream, master).map_err(io_err("cannot send the pty to", socket))?;
        }
        if let (Some(dir), Some(file)) = (pid_dir, pid_file) {
            dir.write(pid).map_err(io_err("cannot write", file))?;
        }
        Ok(pid)
    }

    /// `update`: set the limits `resources` names on the container's VM (live,
    /// as `fvm config` does); the keys it leaves out keep their values.
    pub fn update(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), OciError> {
        let record = self.record(id)?;
        let limits = bundle::resource_limits(resources)?;
        self.engine.configure(&record.vm, |policy| {
            for key in limits.keys() {
                if let Some(value) = limits.get(key) {
                    policy.limits.set(key, &value)?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// `pause` and `resume`: freeze and thaw the VM.
    pub fn pause(&self, id: &str, pause: bool) -> Result<(), OciError> {
        let record = self.record(id)?;
        if pause {
            self.engine.suspend(&record.vm)?;
        } else {
            self.engine.resume(&record.vm)?;
        }
        Ok(())
    }

    /// `ps`: host pids of the container's processes.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>, OciError> {
        let record = self.record(id)?;
        Ok(self.engine.pids(&record.vm)?)
    }

    /// `delete`: export what an annotation asks for, then remove the VM and the
    /// record. A running container needs `force` (it is killed). With `force`,
    /// a container that does not exist is no error.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), OciError> {
        let record = match self.record(id) {
            Err(OciError::NoSuchContainer { .. }) if force => return Ok(()),
            other => other?,
        };
        let status = self.status(&record);
        if status != Status::Stopped && !force {
            return Err(OciError::WrongStatus {
                id: id.to_owned(),
                status: status.as_str(),
                wanted: "stopped",
            });
        }
        let mut exported = Ok(());
        if self.engine.store().vm(&record.vm).is_ok() {
            // Stopped first, so the export is of the container's last state.
            if status != Status::Stopped {
                self.engine.stop(&record.vm, Duration::ZERO)?;
            }
            if let Some(dir) = &record.export {
                exported = self.export(&record, dir);
                // Without --force a failed export keeps the container, to try
                // again; with it the container goes, and the failure is still
                // reported.
                if exported.is_err() && !force {
                    return exported;
                }
            }
            self.engine.delete(&record.vm, true)?;
        }
        let path = self.record_path(id)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("cannot remove", &path)(e));
            }
            _ => {}
        }
        exported
    }

    /// Write the container's diff to `dir/<ID>.json` (as `fvm diff --json`),
    /// without the engine's own mount points; with `export_layer`, its layer
    /// to `dir/<ID>.tar` too.
    fn export(&self, record: &Record, dir: &Path) -> Result<(), OciError> {
        let changes: Vec<_> = self
            .engine
            .diff(
                &record.vm,
                &super::vm::Selection::paths(&[]),
                false,
                &mut |_| {},
            )?
            .into_iter()
            .filter_map(|mut c| {
                // A plain container's layer is recorded at its rootfs on the
                // host: its paths are the container's below it.
                if let Some(root) = &record.rootfs {
                    c.path = Path::new("/").join(c.path.strip_prefix(root).ok()?);
                }
                (!record.skip.iter().any(|s| c.path.starts_with(s))).then_some(c)
            })
            .collect();
        let mut text = serde_json::to_vec_pretty(&changes).expect("changes always serialize");
        text.push(b'\n');
        if record.export_layer {
            let mut layers = self.engine.layers_of(&record.vm)?;
            if record.rootfs.is_some() {
                // The changes' paths are the container's: so is its layer's.
                for l in &mut layers {
                    l.mount_point = "/".into();
                }
            }
            let tar = dir.join(format!("{}.tar", record.id));
            layer::write(&tar, &changes, &layers)
                .map_err(io_err("cannot write the exported layer", &tar))?;
        }
        let path = dir.join(format!("{}.json", record.id));
        crate::os::files::write_durable(&path, &text, 0o644)
            .map_err(io_err("cannot write the export", &path))
    }
}

/// Send a pty master to the engine's console socket (SCM_RIGHTS), as runc does.
fn send_console(socket: &Path, master: std::os::fd::OwnedFd) -> std::io::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    send_console_on(&stream, master)
}

/// [`send_console`] on a connected socket.
fn send_console_on(
    stream: &std::os::unix::net::UnixStream,
    master: std::os::fd::OwnedFd,
) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let fds = [master.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        stream,
        &[std::io::IoSlice::new(b"/dev/ptmx")],
        &mut cmsg,
        rustix::net::SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// The container's process gets this process's fds 0-2 as they are: see
/// [`crate::runtime::stdio::check_inherit`].
fn check_stdio() -> Result<(), OciError> {
    crate::runtime::stdio::check_inherit().map_err(|e| OciError::Config {
        why: format!("the process's stdio: {e}"),
    })
}

/// A pid file, reached through its directory opened beforehand: written after
/// this process has moved into a VM's mount namespace.
struct PidFile {
    dir: std::os::fd::OwnedFd,
    name: std::ffi::OsString,
}

impl PidFile {
    fn open(path: &Path) -> std::io::Result<PidFile> {
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("no file name"))?
            .to_owned();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = rustix::fs::open(
            parent,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok(PidFile { dir, name })
    }

    /// Write `pid` to a temporary name beside the file and rename it over.
    fn write(&self, pid: i32) -> std::io::Result<()> {
        use std::io::Write as _;
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(&self.name);
        tmp.push(format!(".tmp-{}", std::process::id()));
        let fd = rustix::fs::openat(
            &self.dir,
            &tmp,
            rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::TRUNC
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o644),
        )?;
        std::fs::File::from(fd).write_all(pid.to_string().as_bytes())?;
        rustix::fs::renameat(&self.dir, &tmp, &self.dir, &self.name)?;
        Ok(())
    }
}

/// Wait for the container's init, a child of this process (`run` in the
/// foreground), and return its exit status: the container process's.
pub fn wait_init(pid: i32) -> std::io::Result<i32> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
            Ok(status) => {
                return Ok(status.map_or(255, |(_, s)| {
                    crate::runtime::channel::Exit::from_raw(s.as_raw()).code()
                }));
            }
        }
    }
}

/// The signals `run` in the foreground passes on to the container, as runc's
/// `run` does: a scheduler's SIGTERM (Slurm's `scancel`), a Ctrl-C, a hangup.
pub const FORWARDED_SIGNALS: [nix::sys::signal::Signal; 6] = [
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
    nix::sys::signal::Signal::SIGUSR1,
    nix::sys::signal::Signal::SIGUSR2,
];

/// [`wait_init`], passing each of [`FORWARDED_SIGNALS`] this process gets to
/// `forward` (which sends it to the container) instead of dying of it, until
/// the init `pid` (a child of this process) ends. The signals are blocked in
/// this thread from here on; block them before starting any other thread.
pub fn wait_init_forwarding(pid: i32, mut forward: impl FnMut(i32)) -> std::io::Result<i32> {
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use rustix::event::{PollFd, PollFlags};

    let mut set = SigSet::empty();
    for s in FORWARDED_SIGNALS {
        set.add(s);
    }
    set.thread_block()?;
    let sigfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let child = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let pidfd = rustix::process::pidfd_open(child, rustix::process::PidfdFlags::empty())?;
    loop {
        let mut fds = [
            PollFd::new(&sigfd, PollFlags::IN),
            PollFd::new(&pidfd, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        while let Ok(Some(info)) = sigfd.read_signal() {
            forward(info.ssi_signo as i32);
        }
        let flags = rustix::process::WaitOptions::NOHANG;
        match rustix::process::waitpid(Some(child), flags) {
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
            Ok(Some((_, s))) => {
                return Ok(crate::runtime::channel::Exit::from_raw(s.as_raw()).code());
            }
        }
    }
}

/// A signal as runc takes it: a number, or a name with or without `SIG`.
pub fn parse_signal(given: &str) -> Result<i32, OciError> {
    if let Ok(n) = given.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| OciError::Signal(given.to_owned()));
    }
    let upper = given.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| OciError::Signal(given.to_owned()))
}

/// The runtime spec's features document for `features`.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [],
        "mountOptions": [],
        "linux": {
            "namespaces": ["pid", "network", "ipc", "uts", "mount", "cgroup"],
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
        },
        "annotations": {
            "org.featherweight.rootfs": "host: the container is a copy-on-write clone of the live host (without it: the bundle's rootfs is the only lower layer)",
            "org.featherweight.export": "DIR: at delete, write the container's changes to DIR/<id>.json",
            "org.featherweight.export-layer": "true: with export, also write the container's layer to DIR/<id>.tar (an OCI layer, .wh. whiteouts)",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The child is reaped by `wait_init_forwarding`, as `run`'s init is.
    #[allow(clippy::zombie_processes)]
    fn run_in_the_foreground_passes_signals_on_and_returns_the_status() {
        use nix::sys::signal::{SigSet, Signal};
        // A child that only ends when the forwarded signal reaches it.
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // SIGTERM to this thread alone (blocked, it waits for the loop), never
        // to the rest of the test process.
        let mut term = SigSet::empty();
        term.add(Signal::SIGTERM);
        term.thread_block().unwrap();
        nix::sys::signal::raise(Signal::SIGTERM).unwrap();
        let mut forwarded = Vec::new();
        let status = wait_init_forwarding(pid, |sig| {
            forwarded.push(sig);
            let to = nix::unistd::Pid::from_raw(pid);
            nix::sys::signal::kill(to, Signal::try_from(sig).unwrap()).unwrap();
        });
        let mut all = SigSet::empty();
        for s in FORWARDED_SIGNALS {
            all.add(s);
        }
        all.thread_unblock().unwrap();
        assert_eq!(status.unwrap(), 128 + 15);
        assert_eq!(forwarded, vec![15]);
    }

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("term").unwrap(), 15);
        for bad in ["", "0x9", "SIGNOPE", "999", "-1"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_state_document_has_the_specs_fields() {
        let doc = StateDoc {
            oci_version: OCI_VERSION.into(),
            id: "abc".into(),
            status: Status::Created.as_str().into(),
            pid: Some(42),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-01-01T00:00:00Z".into(),
            annotations: HashMap::from([("a".into(), "b".into())]),
        };
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["status"], "created");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["bundle"], "/b");
        assert_eq!(v["annotations"]["a"], "b");
        // It parses as the spec's own state.
        let spec: oci_spec::runtime::State = serde_json::from_value(v).unwrap();
        assert_eq!(spec.id(), "abc");
        let stopped = StateDoc {
            pid: None,
            status: Status::Stopped.as_str().into(),
            ..doc
        };
        assert!(serde_json::to_value(&stopped).unwrap().get("pid").is_none());
    }

    #[test]
    fn features_is_the_specs_document() {
        let f: oci_spec::runtime::Features = serde_json::from_value(features()).unwrap();
        assert_eq!(f.oci_version_max(), OCI_VERSION);
    }
}

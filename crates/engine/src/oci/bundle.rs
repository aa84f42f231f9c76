//! A bundle's config.json, read into what fvm does with it: the VM's command,
//! its network, and the annotations that choose fvm's own behaviour.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};

use super::OciError;
use crate::limits::{Key, Limits};
use crate::mounts::plan::{Bind, ContainerMount, ContainerMounts, Flags, Rootfs, Tmpfs};
use crate::net::NetMode;
use crate::runtime::command::{Capabilities, CommandSpec, ProcessSetup, Program};
use crate::runtime::stdio::TtyMode;

/// The annotation that makes the container a clone of the live host. Only this
/// annotation does: without it the bundle's `root.path` is the VM's only lower
/// layer (and `/` is refused), so a container sent to another runtime by
/// mistake never runs on the host.
pub const ROOTFS: &str = "org.featherweight.rootfs";
/// Write the container's diff (JSON) into this host directory at `delete`.
pub const EXPORT: &str = "org.featherweight.export";
/// `true`: also write the container's layer there, as an OCI layer tarball.
pub const EXPORT_LAYER: &str = "org.featherweight.export-layer";

/// The largest config.json read (the runtime spec's files are kilobytes).
const MAX_CONFIG: u64 = 4 << 20;

/// A bundle as fvm runs it.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    pub spec: Spec,
    /// `org.featherweight.rootfs=host`.
    pub host_clone: bool,
    /// Without it: the bundle's `root.path` (canonical), the VM's only lower
    /// layer.
    pub rootfs: Option<Rootfs>,
    /// `org.featherweight.export=DIR`, checked.
    pub export: Option<PathBuf>,
    /// `org.featherweight.export-layer=true`.
    pub export_layer: bool,
}

impl Bundle {
    /// Read `dir/config.json`. `store` is the runtime's store, which an export
    /// directory must not be inside.
    pub fn load(dir: &Path, store: &Path) -> Result<Bundle, OciError> {
        let dir = std::fs::canonicalize(dir).map_err(|e| OciError::Bundle {
            path: dir.to_owned(),
            why: e.to_string(),
        })?;
        let path = dir.join("config.json");
        let text = crate::os::files::read_regular_max(&path, MAX_CONFIG).map_err(|e| {
            OciError::Bundle {
                path: path.clone(),
                why: e.to_string(),
            }
        })?;
        let spec: Spec = serde_json::from_str(&text).map_err(|e| OciError::Bundle {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Bundle::from_spec(dir, spec, store)
    }

    pub fn from_spec(dir: PathBuf, spec: Spec, store: &Path) -> Result<Bundle, OciError> {
        let empty = HashMap::new();
        let annotations = spec.annotations().as_ref().unwrap_or(&empty);
        let host_clone = match annotations.get(ROOTFS).map(String::as_str) {
            None => false,
            Some("host") => true,
            Some(other) => {
                return Err(OciError::Annotation {
                    key: ROOTFS,
                    why: format!("{other:?} is not \"host\""),
                });
            }
        };
        let rootfs = if host_clone {
            None
        } else {
            Some(rootfs_of(&dir, &spec, store)?)
        };
        let export = annotations
            .get(EXPORT)
            .map(|d| export_dir(d, store))
            .transpose()?;
        let export_layer = match annotations.get(EXPORT_LAYER).map(String::as_str) {
            None | Some("false") => false,
            Some("true") if export.is_some() => true,
            Some("true") => {
                return Err(OciError::Annotation {
                    key: EXPORT_LAYER,
                    why: format!("it needs {EXPORT} (the directory to write the layer to)"),
                });
            }
            Some(other) => {
                return Err(OciError::Annotation {
                    key: EXPORT_LAYER,
                    why: format!("{other:?} is not true or false"),
                });
            }
        };
        let bundle = Bundle {
            dir,
            spec,
            host_clone,
            rootfs,
            export,
            export_layer,
        };
        // Checked now, so that `create` fails rather than the VM.
        bundle.command()?;
        bundle.network()?;
        bundle.cgroup_parent()?;
        bundle.limits()?;
        bundle.mounts()?;
        Ok(bundle)
    }

    /// The container's process as the VM's command.
    pub fn command(&self) -> Result<CommandSpec, OciError> {
        let process = self.spec.process().as_ref().ok_or(OciError::Config {
            why: "it has no process".into(),
        })?;
        command(process)
    }
    /// `process.terminal`: the process gets a pty, whose master goes to the
    /// engine's console socket.
    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    /// The VM's network: the host's when the config has no network namespace,
    /// its own (only `lo`) when it asks for a new one; with a namespace by path
    /// (see [`Bundle::netns_path`]) fvm makes none (`host`), and the VM joins
    /// that one.
    pub fn network(&self) -> Result<NetMode, OciError> {
        self.netns_path()?;
        match self.network_namespace() {
            Some(n) if n.path().is_none() => Ok(NetMode::None),
            _ => Ok(NetMode::Host),
        }
    }

    /// The config's network namespace entry, if it has one.
    fn network_namespace(&self) -> Option<oci_spec::runtime::LinuxNamespace> {
        self.spec
            .linux()
            .as_ref()?
            .namespaces()
            .as_ref()?
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .cloned()
    }

    /// The network namespace the container joins (`linux.namespaces` of type
    /// network with a path, as a CNI plugin gives): an absolute path.
    pub fn netns_path(&self) -> Result<Option<PathBuf>, OciError> {
        match self.network_namespace().and_then(|n| n.path().clone()) {
            Some(p) if !p.is_absolute() => Err(OciError::Config {
                why: format!("the network namespace {} is not absolute", p.display()),
            }),
            other => Ok(other),
        }
    }

    /// The cgroup the container's VM is made in: the parent of `cgroupsPath`
    /// (see [`cgroup_parent`]), `None` without one.
    pub fn cgroup_parent(&self) -> Result<Option<String>, OciError> {
        match self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
        {
            Some(path) => cgroup_parent(&path.to_string_lossy()),
            None => Ok(None),
        }
    }

    /// `linux.resources` as the VM's limits: memory (limit and swap), CPU
    /// (quota over period, shares as a weight) and pids.
    pub fn limits(&self) -> Result<Limits, OciError> {
        match self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
        {
            Some(res) => resource_limits(res),
            None => Ok(Limits::default()),
        }
    }

    /// The config's mounts fvm applies, in order: binds (`type` "bind", or a
    /// `bind`/`rbind` option: hosts files, secrets, volumes) and tmpfs mounts
    /// (with their size, mode and flags), and `linux.maskedPaths` and
    /// `readonlyPaths`. Its other kernel filesystems (proc, sysfs, devpts,
    /// mqueue, cgroup) and the tmpfs at `/dev` and `/run` are fvm's own in
    /// every VM already.
    pub fn mounts(&self) -> Result<ContainerMounts, OciError> {
        let mut out = ContainerMounts::default();
        for m in self.spec.mounts().iter().flatten() {
            let options = m.options().clone().unwrap_or_default();
            let is_bind = m.typ().as_deref() == Some("bind")
                || options.iter().any(|o| o == "bind" || o == "rbind");
            let is_tmpfs = !is_bind && m.typ().as_deref() == Some("tmpfs");
            if !is_bind && !is_tmpfs {
                continue;
            }
            let target = m.destination().clone();
            plain_path("mount destination", &target)?;
            if is_tmpfs {
                if [Path::new("/dev"), Path::new("/run")].contains(&target.as_path()) {
                    continue;
                }
                out.mounts
                    .push(ContainerMount::Tmpfs(tmpfs(&target, &options)?));
                continue;
            }
            let Some(source) = m.source().clone().filter(|s| s.is_absolute()) else {
                return Err(OciError::Config {
                    why: format!(
                        "the bind mount at {} has no absolute source",
                        target.display()
                    ),
                });
            };
            out.mounts.push(ContainerMount::Bind(Bind {
                flags: bind_flags(&target, &options)?,
                source,
                target,
            }));
        }
        if let Some(linux) = self.spec.linux() {
            for p in linux.masked_paths().iter().flatten() {
                out.masked
                    .push(plain_path("linux.maskedPaths entry", Path::new(p))?);
            }
            for p in linux.readonly_paths().iter().flatten() {
                out.readonly
                    .push(plain_path("linux.readonlyPaths entry", Path::new(p))?);
            }
        }
        Ok(out)
    }

    /// Where the engine mounts its own files into the container (hosts,
    /// resolv.conf, secrets, /proc, /dev...): left out of an export, as they are
    /// not the container's work.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().clone())
            .filter(|d| d != Path::new("/"))
            .collect()
    }
}

/// OCI `linux.resources` (a config's, or `update --resources`'s) as a VM's
/// limits: memory (limit and swap), CPU (quota over period, shares as a
/// weight) and pids.
pub fn resource_limits(res: &LinuxResources) -> Result<Limits, OciError> {
    let mut limits = Limits::default();
    let bad = |e: crate::limits::LimitError| OciError::Config {
        why: format!("linux.resources: {e}"),
    };
    if let Some(mem) = res.memory()
        && let Some(limit) = mem.limit().filter(|l| *l > 0)
    {
        limits.set(Key::Memory, &limit.to_string()).map_err(bad)?;
        if let Some(swap) = mem.swap().filter(|s| *s >= limit) {
            // The spec's swap is memory and swap together.
            limits
                .set(Key::Swap, &(swap - limit).to_string())
                .map_err(bad)?;
        }
    }
    if let Some(cpu) = res.cpu() {
        if let (Some(quota), Some(period)) = (cpu.quota().filter(|q| *q > 0), cpu.period())
            && period > 0
        {
            let cpus = quota as f64 / period as f64;
            limits.set(Key::Cpus, &format!("{cpus:.2}")).map_err(bad)?;
        }
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            // cgroup v1 shares (2-262144, 1024 the default) as a weight
            // (1-10000, 100 the default), as runc converts them.
            let weight = (1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142).max(1);
            limits
                .set(Key::CpuWeight, &weight.to_string())
                .map_err(bad)?;
        }
    }
    if let Some(pids) = res.pids()
        && pids.limit() > 0
    {
        limits
            .set(Key::Processes, &pids.limit().to_string())
            .map_err(bad)?;
    }
    Ok(limits)
}

/// The parent cgroup of a container's `cgroupsPath`, for the VM's cgroup: on
/// cgroupfs `/a/b/c` gives `a/b`; in systemd's form `slice:prefix:name` the
/// container's cgroup is `slice/prefix-name.scope` and the parent `slice` (the
/// cgroupfs path systemd would use for a top-level slice; with no systemd
/// running, fvm makes it itself). A path at the top (`/c`) has no parent.
pub fn cgroup_parent(path: &str) -> Result<Option<String>, OciError> {
    let bad = |why: &str| OciError::Config {
        why: format!("linux.cgroupsPath {path:?}: {why}"),
    };
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        let parts: Vec<&str> = path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(bad("neither a path (/a/b) nor systemd's slice:prefix:name"));
        };
        if [slice, prefix, name].iter().any(|p| p.contains('/')) || name.is_empty() {
            return Err(bad("systemd's slice, prefix and name have no '/'"));
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let scope = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        format!("/{slice}/{scope}")
    };
    let parent = Path::new(&full)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if parent.trim_matches('/').is_empty() {
        // Still checked: the container's own name must be a plain one too.
        crate::cgroup::parent_path(&full).map_err(|e| bad(&crate::error_line(&e)))?;
        return Ok(None);
    }
    crate::cgroup::parent_path(&full).map_err(|e| bad(&crate::error_line(&e)))?;
    crate::cgroup::parent_path(&parent)
        .map(Some)
        .map_err(|e| bad(&crate::error_line(&e)))
}

/// An OCI process (a bundle's, or `exec --process`'s) as a command in the VM.
pub fn command(process: &Process) -> Result<CommandSpec, OciError> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(OciError::Config {
            why: "process.args is empty".into(),
        });
    }
    let mut env = Vec::new();
    for var in process.env().iter().flatten() {
        let (k, v) = var.split_once('=').unwrap_or((var.as_str(), ""));
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(OciError::Config {
                why: format!("process.env has a bad entry {var:?}"),
            });
        }
        env.push((k.to_owned(), v.to_owned()));
    }
    let cwd = process.cwd().clone();
    if !cwd.is_absolute() {
        return Err(OciError::Config {
            why: format!("process.cwd {} is not absolute", cwd.display()),
        });
    }
    let user = process.user();
    if user.username().is_some() {
        return Err(OciError::Config {
            why: "process.user.username is for Windows; give uid and gid".into(),
        });
    }
    let groups = user.additional_gids().clone().unwrap_or_default();
    if groups.len() > 65536 {
        return Err(OciError::Config {
            why: "process.user.additionalGids has more groups than the kernel takes".into(),
        });
    }
    let setup = ProcessSetup {
        ids: Some((user.uid(), user.gid(), groups)),
        umask: match user.umask() {
            Some(m) if m > 0o777 => {
                return Err(OciError::Config {
                    why: format!("process.user.umask {m:o} is not a file mode mask"),
                });
            }
            m => m,
        },
        capabilities: process
            .capabilities()
            .as_ref()
            .map(|c| {
                let set = |s: &Option<oci_spec::runtime::Capabilities>| capability_set(s);
                Ok::<_, OciError>(Capabilities {
                    bounding: set(c.bounding())?,
                    effective: set(c.effective())?,
                    permitted: set(c.permitted())?,
                    inheritable: set(c.inheritable())?,
                    ambient: set(c.ambient())?,
                })
            })
            .transpose()?,
        rlimits: process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| {
                if r.soft() > r.hard() {
                    return Err(OciError::Config {
                        why: format!("process.rlimits: {:?} has soft above hard", r.typ()),
                    });
                }
                Ok((rlimit_resource(r.typ()), r.soft(), r.hard()))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(CommandSpec {
        program: Program::Argv(args),
        env,
        cwd,
        tty: TtyMode::Never,
        limits: Default::default(),
        // The engine fills in the VM's confinement; `noNewPrivileges` is kept.
        confine: crate::confine::Confinement::none()
            .with_no_new_privs(process.no_new_privileges().unwrap_or(false)),
        user: None,
        process: setup,
    })
}

/// The capabilities' bit numbers, by their names in a config.
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// One of an OCI process's capability sets as bits (an absent set is empty).
fn capability_set(
    caps: &Option<oci_spec::runtime::Capabilities>,
) -> Result<rustix::thread::CapabilitySet, OciError> {
    let mut set = rustix::thread::CapabilitySet::empty();
    for cap in caps.iter().flatten() {
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let bit = CAPABILITIES
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| OciError::Config {
                why: format!("process.capabilities: {name:?} is not a capability fvm knows"),
            })?;
        set |= rustix::thread::CapabilitySet::from_bits_retain(1 << bit);
    }
    Ok(set)
}

/// An OCI rlimit's resource.
fn rlimit_resource(typ: oci_spec::runtime::PosixRlimitType) -> rustix::process::Resource {
    use oci_spec::runtime::PosixRlimitType as T;
    use rustix::process::Resource as R;
    match typ {
        T::RlimitCpu => R::Cpu,
        T::RlimitFsize => R::Fsize,
        T::RlimitData => R::Data,
        T::RlimitStack => R::Stack,
        T::RlimitCore => R::Core,
        T::RlimitRss => R::Rss,
        T::RlimitNproc => R::Nproc,
        T::RlimitNofile => R::Nofile,
        T::RlimitMemlock => R::Memlock,
        T::RlimitAs => R::As,
        T::RlimitLocks => R::Locks,
        T::RlimitSigpending => R::Sigpending,
        T::RlimitMsgqueue => R::Msgqueue,
        T::RlimitNice => R::Nice,
        T::RlimitRtprio => R::Rtprio,
        T::RlimitRttime => R::Rttime,
    }
}

/// `path` if it is absolute, of plain names, and not `/`.
fn plain_path(what: &str, path: &Path) -> Result<PathBuf, OciError> {
    let plain = path.is_absolute()
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        && path != Path::new("/");
    if !plain {
        return Err(OciError::Config {
            why: format!(
                "{what} {} is not an absolute path of plain names",
                path.display()
            ),
        });
    }
    Ok(path.to_owned())
}

/// A tmpfs mount's options: mount flags (`ro`, `nosuid`, `nodev`, `noexec`,
/// `noatime`...) and tmpfs's own (`size`, `mode`, `nr_inodes`, `nr_blocks`,
/// `uid`, `gid`), each checked; anything else is refused.
/// A bind's options: read-only (`ro`, `rro`: the whole bound tree either
/// way), `nosuid`, `nodev`, `noexec`, `noatime`, `nodiratime`; the defaults,
/// propagation and atime choices are accepted and change nothing. Any other
/// is refused rather than silently dropped.
fn bind_flags(target: &Path, options: &[String]) -> Result<Flags, OciError> {
    let mut flags = Flags::default();
    for o in options {
        match o.as_str() {
            "ro" | "rro" => flags.readonly = true,
            "nosuid" => flags.nosuid = true,
            "nodev" => flags.nodev = true,
            "noexec" => flags.noexec = true,
            "noatime" => flags.noatime = true,
            "nodiratime" => flags.nodiratime = true,
            "bind" | "rbind" | "rw" | "rrw" | "suid" | "dev" | "exec" | "atime" | "diratime"
            | "relatime" | "strictatime" | "norelatime" | "private" | "rprivate" | "slave"
            | "rslave" | "shared" | "rshared" | "unbindable" | "runbindable" => {}
            other => {
                return Err(OciError::Config {
                    why: format!(
                        "the bind mount at {}: option {:?} is not one fvm knows",
                        target.display(),
                        other
                    ),
                });
            }
        }
    }
    Ok(flags)
}

fn tmpfs(target: &Path, options: &[String]) -> Result<Tmpfs, OciError> {
    let bad = |why: String| OciError::Config {
        why: format!("the tmpfs at {}: {why}", target.display()),
    };
    let mut flags = Flags::default();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags.readonly = true,
            "nosuid" => flags.nosuid = true,
            "nodev" => flags.nodev = true,
            "noexec" => flags.noexec = true,
            "noatime" => flags.noatime = true,
            "nodiratime" => flags.nodiratime = true,
            "rw" | "suid" | "dev" | "exec" | "atime" | "diratime" | "relatime" | "strictatime"
            | "norelatime" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {
            }
            other => {
                let (key, value) = other
                    .split_once('=')
                    .ok_or_else(|| bad(format!("option {other:?} is not one fvm knows")))?;
                let ok = match key {
                    "size" | "nr_blocks" | "nr_inodes" => {
                        let digits = value.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
                        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                    }
                    "mode" => value.len() <= 4 && value.bytes().all(|b| (b'0'..=b'7').contains(&b)),
                    "uid" | "gid" => value.parse::<u32>().is_ok(),
                    _ => return Err(bad(format!("option {other:?} is not one fvm knows"))),
                };
                if !ok {
                    return Err(bad(format!("option {other:?} has a bad value")));
                }
                data.push(other.to_owned());
            }
        }
    }
    Ok(Tmpfs {
        target: target.to_owned(),
        flags,
        data: data.join(","),
    })
}

/// Open the network namespace at `path`, refused with one line unless it is
/// one: a regular file of the namespace filesystem (a `/run/netns/NAME` bind,
/// or `/proc/PID/ns/net`) whose kind the kernel says is network. Opened without
/// blocking, and only after a stat shows a regular file (never a device or a
/// fifo).
pub fn open_netns(path: &Path) -> Result<std::os::fd::OwnedFd, OciError> {
    use rustix::fs::{FileType, Mode, OFlags};
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let bad = |why: String| OciError::Config {
        why: format!("the network namespace {}: {why}", path.display()),
    };
    let st = rustix::fs::stat(path).map_err(|e| bad(e.to_string()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(bad("not a namespace file".into()));
    }
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| bad(e.to_string()))?;
    let opened = rustix::fs::fstat(&fd).map_err(|e| bad(e.to_string()))?;
    let fs = rustix::fs::fstatfs(&fd).map_err(|e| bad(e.to_string()))?;
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino)
        || fs.f_type != NSFS_MAGIC
        || crate::os::sys::namespace_type(fd.as_fd()).ok() != Some(crate::os::sys::ns::NET)
    {
        return Err(bad("not a network namespace".into()));
    }
    Ok(fd)
}

/// A plain bundle's root: `root.path` (relative to the bundle, or absolute),
/// an existing directory, which is neither the host's `/` (by any name: that
/// would be a host clone without the annotation) nor holds or is inside the
/// runtime's store.
fn rootfs_of(dir: &Path, spec: &Spec, store: &Path) -> Result<Rootfs, OciError> {
    let root = spec.root().as_ref().ok_or(OciError::Config {
        why: "it has no root.path (and no org.featherweight.rootfs=host annotation)".into(),
    })?;
    let given = root.path();
    let bad = |why: String| OciError::Config {
        why: format!("root.path {}: {why}", given.display()),
    };
    let path = std::fs::canonicalize(dir.join(given)).map_err(|e| bad(e.to_string()))?;
    if !path.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if path == Path::new("/") {
        return Err(bad(format!(
            "it is the host's /, which fvm runs only with the annotation {ROOTFS}=host"
        )));
    }
    let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_owned());
    if store.starts_with(&path) || path.starts_with(&store) {
        return Err(bad("it holds the runtime's store, or is inside it".into()));
    }
    Ok(Rootfs {
        path,
        readonly: root.readonly().unwrap_or(false),
    })
}

/// An export directory: an operator's path on the host, absolute, an existing
/// directory, and not inside the runtime's store.
fn export_dir(given: &str, store: &Path) -> Result<PathBuf, OciError> {
    let bad = |why: &str| OciError::Annotation {
        key: EXPORT,
        why: format!("{given:?}: {why}"),
    };
    let path = Path::new(given);
    if !path.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    let real = std::fs::canonicalize(path).map_err(|e| bad(&e.to_string()))?;
    if !real.is_dir() {
        return Err(bad("not a directory"));
    }
    let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_owned());
    if real.starts_with(&store) {
        return Err(bad("inside the runtime's store"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"user":{"uid":0,"gid":0},"args":["/bin/sh","-c","exit 3"],
                   "env":["PATH=/usr/bin:/bin","A=b=c"],"cwd":"/srv"},
        "mounts":[{"destination":"/proc","type":"proc"},{"destination":"/etc/hosts","type":"bind","source":"/x"}],
        "annotations":{"org.featherweight.rootfs":"host"}}"#;

    #[test]
    fn a_host_clone_bundle_becomes_a_command() {
        let tmp = tempfile::tempdir().unwrap();
        let b = Bundle::from_spec("/b".into(), spec(BASE), tmp.path()).unwrap();
        assert!(b.host_clone);
        let c = b.command().unwrap();
        assert_eq!(
            c.program,
            Program::Argv(vec!["/bin/sh".into(), "-c".into(), "exit 3".into()])
        );
        assert_eq!(c.env[1], ("A".into(), "b=c".into()));
        assert_eq!(c.cwd, Path::new("/srv"));
        assert_eq!(b.network().unwrap(), NetMode::Host);
        assert_eq!(
            b.mount_points(),
            [Path::new("/proc"), Path::new("/etc/hosts")]
        );
    }

    #[test]
    fn only_the_annotation_makes_a_host_clone() {
        let store = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(b.path().join("rootfs")).unwrap();
        let plain = |root: &str| {
            let json = BASE
                .replace(r#""org.featherweight.rootfs":"host""#, r#""x":"y""#)
                .replace(r#"{"path":"rootfs"}"#, root);
            Bundle::from_spec(b.path().to_owned(), spec(&json), store.path())
        };
        // Without the annotation the bundle's rootfs is the only lower layer,
        // read-only as the config says.
        let own = plain(r#"{"path":"rootfs","readonly":true}"#).unwrap();
        assert!(!own.host_clone);
        let rootfs = own.rootfs.unwrap();
        assert_eq!(rootfs.path, b.path().join("rootfs").canonicalize().unwrap());
        assert!(rootfs.readonly);
        let absolute = format!(r#"{{"path":{:?}}}"#, b.path().join("rootfs"));
        assert!(!plain(&absolute).unwrap().rootfs.unwrap().readonly);
        // The host's root by any name, a missing one, a file, the store or a
        // directory holding it: refused.
        let store_parent = format!(r#"{{"path":{:?}}}"#, store.path().parent().unwrap());
        let inside = format!(r#"{{"path":{:?}}}"#, store.path());
        for root in [
            r#"{"path":"/"}"#,
            r#"{"path":"../../../../../../../../.."}"#,
            r#"{"path":"missing"}"#,
            r#"{"path":"/etc/hostname"}"#,
            &store_parent,
            &inside,
        ] {
            assert!(
                matches!(plain(root), Err(OciError::Config { .. })),
                "{root}"
            );
        }
        let other = BASE.replace(r#"rootfs":"host""#, r#"rootfs":"Host""#);
        assert!(Bundle::from_spec("/b".into(), spec(&other), store.path()).is_err());
        // A host clone has no rootfs of its own.
        let host = Bundle::from_spec("/b".into(), spec(BASE), store.path()).unwrap();
        assert!(host.rootfs.is_none());
    }

    #[test]
    fn network_namespaces_map_to_the_vms_network() {
        let tmp = tempfile::tempdir().unwrap();
        let with = |ns: &str| {
            let json = BASE.replace(
                r#""annotations""#,
                &format!(r#""linux":{{"namespaces":[{ns}]}},"annotations""#),
            );
            Bundle::from_spec("/b".into(), spec(&json), tmp.path()).map(|b| b.network().unwrap())
        };
        assert_eq!(with(r#"{"type":"pid"}"#).unwrap(), NetMode::Host);
        assert_eq!(with(r#"{"type":"network"}"#).unwrap(), NetMode::None);
        // A namespace by path: fvm makes no network, the VM joins that one.
        assert_eq!(
            with(r#"{"type":"network","path":"/proc/1/ns/net"}"#).unwrap(),
            NetMode::Host
        );
        assert!(with(r#"{"type":"network","path":"proc/1/ns/net"}"#).is_err());
    }

    #[test]
    fn mounts_tmpfs_masked_and_readonly_paths_are_read_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let with = |mounts: &str, linux: &str| {
            let json = BASE
                .replace(
                    r#""mounts":[{"destination":"/proc","type":"proc"},{"destination":"/etc/hosts","type":"bind","source":"/x"}]"#,
                    &format!(r#""mounts":[{mounts}]"#),
                )
                .replace(r#""annotations""#, &format!(r#""linux":{{{linux}}},"annotations""#));
            Bundle::from_spec("/b".into(), spec(&json), tmp.path()).and_then(|b| b.mounts())
        };
        let m = with(
            r#"{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["size=65536k"]},
               {"destination":"/run","type":"tmpfs","source":"tmpfs"},
               {"destination":"/data","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","size=1m","mode=0700","nr_inodes=5k"]},
               {"destination":"/var/run/x","type":"bind","source":"/srv/x","options":["rbind","ro"]},
               {"destination":"/proc","type":"proc","source":"proc"}"#,
            r#""maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"]"#,
        )
        .unwrap();
        // fvm's own /dev and /run are not made again; the rest in order.
        assert_eq!(m.mounts.len(), 2);
        let ContainerMount::Tmpfs(t) = &m.mounts[0] else {
            panic!("{m:?}")
        };
        assert_eq!(t.target, Path::new("/data"));
        assert!(t.flags.nosuid && !t.flags.readonly);
        assert_eq!(t.data, "size=1m,mode=0700,nr_inodes=5k");
        let ContainerMount::Bind(b) = &m.mounts[1] else {
            panic!("{m:?}")
        };
        assert!(b.flags.readonly && b.target == Path::new("/var/run/x"));
        assert!(!b.flags.nosuid && !b.flags.noexec);
        assert_eq!(m.masked, [Path::new("/proc/kcore")]);
        assert_eq!(m.readonly, [Path::new("/proc/sys")]);
        for (mounts, linux) in [
            (
                r#"{"destination":"/d","type":"tmpfs","options":["size=1m,mode=777"]}"#,
                "",
            ),
            (
                r#"{"destination":"/d","type":"tmpfs","options":["mode=999"]}"#,
                "",
            ),
            (
                r#"{"destination":"/d","type":"tmpfs","options":["context=x"]}"#,
                "",
            ),
            (
                r#"{"destination":"/d","type":"tmpfs","options":["uid=-1"]}"#,
                "",
            ),
            (r#"{"destination":"d","type":"tmpfs"}"#, ""),
            (
                r#"{"destination":"/a/../b","type":"bind","source":"/x"}"#,
                "",
            ),
            ("", r#""maskedPaths":["proc/kcore"]"#),
            ("", r#""readonlyPaths":["/proc/../etc"]"#),
            (
                r#"{"destination":"/d","type":"bind","source":"/x","options":["rbind","idmap"]}"#,
                "",
            ),
            (
                r#"{"destination":"/d","source":"/x","options":["bind","z"]}"#,
                "",
            ),
        ] {
            assert!(
                matches!(with(mounts, linux), Err(OciError::Config { .. })),
                "{mounts} {linux}"
            );
        }
    }

    #[test]
    fn bind_options_become_flags_and_unknown_ones_are_refused() {
        let opts = |o: &[&str]| {
            bind_flags(
                Path::new("/d"),
                &o.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let f = opts(&["rbind", "rro", "nosuid", "nodev", "noexec", "rprivate"]).unwrap();
        assert!(f.readonly && f.nosuid && f.nodev && f.noexec);
        let f = opts(&["bind", "rw", "relatime", "rslave"]).unwrap();
        assert_eq!(f, Flags::default());
        let e = opts(&["rbind", "copy-up"]).unwrap_err().to_string();
        assert!(e.contains("\"copy-up\"") && e.contains("/d"), "{e}");
    }

    #[test]
    fn only_a_network_namespace_is_joined() {
        assert!(open_netns(Path::new("/proc/self/ns/net")).is_ok());
        for bad in [
            "/proc/self/ns/pid",
            "/proc/self/ns/mnt",
            "/etc/hostname",
            "/dev/null",
            "/proc/self/ns",
            "/fvm-no-such-netns",
        ] {
            let e = open_netns(Path::new(bad)).unwrap_err();
            assert!(matches!(e, OciError::Config { .. }), "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn cgroups_paths_give_the_vms_parent() {
        assert_eq!(
            cgroup_parent("/default/abc").unwrap().as_deref(),
            Some("default")
        );
        assert_eq!(
            cgroup_parent("/kubepods/burstable/pod1/abc")
                .unwrap()
                .as_deref(),
            Some("kubepods/burstable/pod1")
        );
        assert_eq!(cgroup_parent("/abc").unwrap(), None);
        assert_eq!(
            cgroup_parent("kubepods-pod1.slice:cri-containerd:abc")
                .unwrap()
                .as_deref(),
            Some("kubepods-pod1.slice")
        );
        assert_eq!(
            cgroup_parent(":fvm:abc").unwrap().as_deref(),
            Some("system.slice")
        );
        for bad in [
            "/a/../../etc/x",
            "/a/./b",
            "a:b",
            "a/b:c:d",
            "s:p:",
            "/a//b",
            "relative/path",
        ] {
            assert!(cgroup_parent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_become_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let json = BASE.replace(
            r#""annotations""#,
            r#""linux":{"cgroupsPath":"/default/x","resources":{"memory":{"limit":268435456,"swap":268435456},"cpu":{"quota":50000,"period":100000,"shares":1024},"pids":{"limit":64}}},"annotations""#,
        );
        let b = Bundle::from_spec("/b".into(), spec(&json), tmp.path()).unwrap();
        let l = b.limits().unwrap();
        assert_eq!(l.get(Key::Memory).as_deref(), Some("256M"));
        assert_eq!(l.get(Key::Swap).as_deref(), Some("0"));
        assert_eq!(l.get(Key::Cpus).as_deref(), Some("0.5"));
        assert_eq!(l.get(Key::Processes).as_deref(), Some("64"));
        assert!(l.get(Key::CpuWeight).is_some());
        assert_eq!(b.cgroup_parent().unwrap().as_deref(), Some("default"));
    }

    #[test]
    fn export_dirs_are_checked() {
        let store = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let with = |dir: &str| {
            let json = BASE.replace(
                r#""org.featherweight.rootfs":"host""#,
                &format!(r#""org.featherweight.rootfs":"host","org.featherweight.export":{dir:?}"#),
            );
            Bundle::from_spec("/b".into(), spec(&json), store.path())
        };
        let ok = with(out.path().to_str().unwrap()).unwrap();
        assert_eq!(ok.export.unwrap(), out.path().canonicalize().unwrap());
        assert!(!ok.export_layer);
        let layer = BASE.replace(
            r#""org.featherweight.rootfs":"host""#,
            r#""org.featherweight.rootfs":"host","org.featherweight.export-layer":"true""#,
        );
        assert!(matches!(
            Bundle::from_spec("/b".into(), spec(&layer), store.path()),
            Err(OciError::Annotation {
                key: EXPORT_LAYER,
                ..
            })
        ));
        std::fs::create_dir(store.path().join("in")).unwrap();
        for bad in [
            "relative/dir".to_owned(),
            "/fvm-no-such-dir".to_owned(),
            store.path().join("in").display().to_string(),
            "/etc/hostname".to_owned(),
        ] {
            assert!(
                matches!(with(&bad), Err(OciError::Annotation { key: EXPORT, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_process_user_capabilities_and_rlimits_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let json = BASE.replace(
            r#""user":{"uid":0,"gid":0}"#,
            r#""user":{"uid":1000,"gid":100,"additionalGids":[5],"umask":18},
               "capabilities":{"bounding":["CAP_CHOWN","CAP_KILL"],"ambient":["CAP_KILL"]},
               "rlimits":[{"type":"RLIMIT_NOFILE","soft":10,"hard":20}]"#,
        );
        let b = Bundle::from_spec("/b".into(), spec(&json), tmp.path()).unwrap();
        let p = b.command().unwrap().process;
        assert_eq!(p.ids, Some((1000, 100, vec![5])));
        assert_eq!(p.umask, Some(0o22));
        let caps = p.capabilities.unwrap();
        use rustix::thread::CapabilitySet as C;
        assert_eq!(caps.bounding, C::CHOWN | C::KILL);
        assert_eq!(caps.ambient, C::KILL);
        assert!(caps.effective.is_empty());
        assert_eq!(p.rlimits, [(rustix::process::Resource::Nofile, 10, 20)]);
        // The capability table is the kernel's numbering.
        assert_eq!(CAPABILITIES[21], "CAP_SYS_ADMIN");
        assert_eq!(CAPABILITIES[40], "CAP_CHECKPOINT_RESTORE");
    }

    #[test]
    fn processes_fvm_cant_honour_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for (from, to) in [
            (r#""uid":0"#, r#""uid":0,"umask":512"#),
            (r#""uid":0"#, r#""uid":0,"username":"root""#),
            (
                r#""cwd":"/srv""#,
                r#""cwd":"/srv","rlimits":[{"type":"RLIMIT_NOFILE","soft":2,"hard":1}]"#,
            ),
            (r#""cwd":"/srv""#, r#""cwd":"srv""#),
            (r#""args":["/bin/sh","-c","exit 3"]"#, r#""args":[]"#),
        ] {
            let json = BASE.replace(from, to);
            assert!(
                matches!(
                    Bundle::from_spec("/b".into(), spec(&json), tmp.path()),
                    Err(OciError::Config { .. })
                ),
                "{to}"
            );
        }
    }
}

//! `fvm doctor`: what this host supports, what it lacks, and how to fix it.
//!
//! Each check probes the kernel the way a VM start would use it (the overlay check
//! really mounts an overlay over `/` in a throw-away mount namespace), so a green
//! report means VMs can start here.

use std::path::Path;

use serde::Serialize;

use crate::cgroup::Cgroups;
use crate::os::sys;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

fn check(name: &'static str, result: Result<String, (Level, String)>) -> Check {
    match result {
        Ok(detail) => Check {
            name,
            level: Level::Ok,
            detail,
        },
        Err((level, detail)) => Check {
            name,
            level,
            detail,
        },
    }
}

/// What `doctor` leaves out without root (every other command needs it).
pub const NOT_CHECKED_WITHOUT_ROOT: &str = "not checked without root";

/// Run every check. `store` is the store in use, if it exists. Without root the
/// store, the overlayfs probe in it and its watcher are not checked: the store is
/// root's, and the probe mounts.
pub fn run(store: Option<&Store>, store_path: &Path) -> Vec<Check> {
    let root_user = rustix::process::geteuid().is_root();
    let store = store.filter(|_| root_user);
    let mut checks = vec![
        check("root", root()),
        check("kernel", kernel()),
        check("namespaces", namespaces()),
        check("syscalls", syscalls()),
        check("cgroups", cgroups()),
    ];
    checks.push(check(
        "store",
        if !root_user {
            Err((
                Level::Warn,
                format!(
                    "{}: {NOT_CHECKED_WITHOUT_ROOT} (the store is root's)",
                    store_path.display()
                ),
            ))
        } else {
            store.map_or_else(
                || {
                    Err((
                        Level::Warn,
                        format!(
                            "{} does not exist yet (it is created by `fvm create`)",
                            store_path.display()
                        ),
                    ))
                },
                |s| Ok(s.root().display().to_string()),
            )
        },
    ));
    checks.push(check(
        "overlayfs",
        overlay(store).map(|ok| {
            if root_user {
                ok
            } else {
                format!("overlayfs is available (a mount in the store: {NOT_CHECKED_WITHOUT_ROOT})")
            }
        }),
    ));
    checks.push(check("nftables", nftables()));
    checks
}

fn root() -> Result<String, (Level, String)> {
    if rustix::process::geteuid().is_root() {
        Ok("running as root".into())
    } else {
        Err((
            Level::Warn,
            "not root: every command but doctor, completions and --help needs root (sudo); \
             the store, a mount in it and its watcher are not checked"
                .into(),
        ))
    }
}

fn kernel() -> Result<String, (Level, String)> {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if (major, minor) >= (5, 9) {
        Ok(format!("Linux {release}"))
    } else {
        Err((
            Level::Fail,
            format!(
                "Linux {release} is too old: fvm needs 5.9 or newer (pidfd, openat2, close_range)"
            ),
        ))
    }
}

fn namespaces() -> Result<String, (Level, String)> {
    let missing: Vec<&str> = ["mnt", "pid", "ipc", "uts", "net", "cgroup"]
        .into_iter()
        .filter(|n| !Path::new("/proc/self/ns").join(n).exists())
        .collect();
    if missing.is_empty() {
        Ok("mount, pid, ipc, uts, net and cgroup namespaces are available".into())
    } else {
        Err((
            Level::Fail,
            format!("the kernel lacks these namespaces: {}", missing.join(", ")),
        ))
    }
}

fn syscalls() -> Result<String, (Level, String)> {
    let me = rustix::process::getpid();
    rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty())
        .map_err(|e| (Level::Fail, format!("pidfd_open: {e}")))?;
    let root = rustix::fs::open(
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| (Level::Fail, format!("open /: {e}")))?;
    rustix::fs::openat2(
        &root,
        ".",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::BENEATH,
    )
    .map_err(|e| (Level::Fail, format!("openat2: {e}")))?;
    Ok("pidfd_open and openat2 work".into())
}

fn cgroups() -> Result<String, (Level, String)> {
    let c = Cgroups::detect().map_err(|e| (Level::Fail, crate::error_line(&e)))?;
    let controllers = c.controllers().unwrap_or_default();
    let roots: Vec<String> = c.roots().iter().map(|r| r.display().to_string()).collect();
    Ok(format!(
        "cgroup {} at {}; controllers: {}",
        c.version(),
        roots.join(", "),
        controllers.join(" ")
    ))
}

/// Mount an overlay of `/` with an upper in the store, in a child process that has
/// its own mount namespace, exactly as a VM start does.
fn overlay(store: Option<&Store>) -> Result<String, (Level, String)> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|l| l.ends_with("\toverlay")) {
        return Err((
            Level::Fail,
            "the kernel has no overlay filesystem (modprobe overlay)".into(),
        ));
    }
    let Some(store) = store else {
        return Ok("overlayfs is available (store not probed: it does not exist)".into());
    };
    let probe = store.root().join(format!(".doctor-{}", std::process::id()));
    let (upper, work, target) = (probe.join("upper"), probe.join("work"), probe.join("mnt"));
    for d in [&upper, &work, &target] {
        std::fs::create_dir_all(d)
            .map_err(|e| (Level::Fail, format!("cannot create {}: {e}", d.display())))?;
    }
    let data = std::ffi::CString::new(format!(
        "lowerdir=/,upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off,xino=on",
        upper.display(),
        work.display()
    ))
    .map_err(|_| (Level::Fail, "the store path contains a NUL byte".to_owned()))?;
    let probe_mount = || {
        let ok = sys::unshare(sys::ns::MOUNT).is_ok()
            && rustix::mount::mount_change(
                "/",
                rustix::mount::MountPropagationFlags::PRIVATE
                    | rustix::mount::MountPropagationFlags::REC,
            )
            .is_ok();
        match ok {
            false => 2,
            true => match rustix::mount::mount(
                "overlay",
                &target,
                "overlay",
                rustix::mount::MountFlags::empty(),
                Some(data.as_c_str()),
            ) {
                Ok(()) => 0,
                Err(e) => 10 + e.raw_os_error().min(200),
            },
        }
    };
    let result = sys::spawn(|_| probe_mount()).ok().and_then(|pid| {
        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
            .ok()
            .flatten()
            .and_then(|(_, s)| s.exit_status())
    });
    let _ = crate::os::files::remove_tree(&probe);
    match result {
        Some(0) => Ok(format!(
            "an overlay of / with its upper layer in {} mounts",
            store.root().display()
        )),
        Some(code) if code >= 10 => Err((
            Level::Fail,
            format!(
                "an overlay with its upper layer in {} does not mount ({}); the store must be on a local filesystem such as ext4, xfs or btrfs, not overlayfs or a network filesystem (see `dmesg`)",
                store.root().display(),
                std::io::Error::from_raw_os_error(code - 10)
            ),
        )),
        _ => Err((
            Level::Fail,
            "cannot create a mount namespace to probe overlayfs".into(),
        )),
    }
}

fn nftables() -> Result<String, (Level, String)> {
    match std::process::Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        _ => Err((
            Level::Warn,
            "nft is not installed (package nftables); only needed for bridge networking".into(),
        )),
    }
}

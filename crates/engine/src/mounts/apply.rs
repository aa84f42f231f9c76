//! Carry out a [`MountPlan`] inside a VM's new mount namespace.
//!
//! Runs in the VM's first process before anything of the VM's own executes. The
//! order is what keeps the host safe (docs/vm-lifecycle.md):
//!
//! 1. Before `pivot_root` only overlays and read-only binds are mounted, onto
//!    targets opened beneath the new root without following symlinks: a symlink the
//!    VM planted in its layer last time can't aim a mount at a host path.
//! 2. After `pivot_root` and detaching the old root the host tree is unreachable,
//!    so everything else (files, device nodes, fresh kernel filesystems) is created
//!    by ordinary paths inside the VM's own view.
//! 3. Last, an OCI container's own mounts: its binds (taken as detached mount
//!    trees before the pivot), tmpfs mounts, masked and read-only paths, each at
//!    a path resolved inside the VM's root (a symlink followed as the VM sees
//!    it, never up into the host's tree, never through a magic link).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::plan::{ContainerMount, ContainerMounts, Flags, MountPlan, Overlay};

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}")]
pub struct MountError {
    pub what: String,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let what = what.into();
    let path = path.to_owned();
    move |source| MountError { what, path, source }
}

/// Where a VM's layers are and where its root is assembled.
#[derive(Debug, Clone)]
pub struct Layout {
    /// An empty directory that becomes the VM's `/` (in the store).
    pub staging: PathBuf,
    /// Holds one `<key>/{upper,work}` pair per overlay.
    pub layers: PathBuf,
    /// Keep the layers on a tmpfs private to the VM's mount namespace (throw-away
    /// VMs): nothing reaches the disk and nothing needs deleting afterwards.
    pub tmpfs_layers: bool,
    /// Options added to that tmpfs's: its size and inode count, the VM's `disk`
    /// and `inodes` limits (see [`super::disk::tmpfs_options`]).
    pub tmpfs_limits: String,
    /// Mount the overlays with overlayfs's `volatile` option (no syncs of the upper
    /// layer); see [`super::volatile`].
    pub volatile: bool,
}

/// Create the layer directories a plan needs (idempotent). The upper directory of a
/// new layer copies the mode and owner of the host mount point, because overlayfs
/// shows the upper root's attributes as the mount's root. Every directory is made
/// and opened beneath `layers` without following a symlink: a store whose layer
/// directory was replaced by one is refused, never written through.
pub fn prepare_layers(plan: &MountPlan, layers: &Path) -> Result<(), MountError> {
    match std::fs::DirBuilder::new().mode(0o700).create(layers) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err("create", layers)(e)),
        _ => {}
    }
    let layers_fd = open_layers(layers)?;
    for o in &plan.overlays {
        let dir = layers.join(&o.key);
        let fresh = layer_dir(&layers_fd, layers, &o.key, "work").is_err();
        mkdir_at(&layers_fd, Path::new(&o.key), &dir)?;
        let dir_fd = layer_dir(&layers_fd, layers, &o.key, "")?;
        if fresh {
            let upper = dir.join("upper");
            mkdir_at(&dir_fd, Path::new("upper"), &upper)?;
            let host = std::fs::metadata(&o.mount_point).map_err(err("stat", &o.mount_point))?;
            let upper_fd = rustix::fs::openat(
                &dir_fd,
                "upper",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| err("open", &upper)(e.into()))?;
            rustix::fs::fchown(
                &upper_fd,
                Some(rustix::fs::Uid::from_raw(host.uid())),
                Some(rustix::fs::Gid::from_raw(host.gid())),
            )
            .and_then(|()| rustix::fs::fchmod(&upper_fd, Mode::from_raw_mode(host.mode() & 0o7777)))
            .map_err(|e| err("set owner and mode of", &upper)(e.into()))?;
            mkdir_at(&dir_fd, Path::new("work"), &dir.join("work"))?;
        }
        crate::layers::record_mount_point_at(&dir_fd, &o.mount_point)
            .map_err(err("record the mount point in", &dir))?;
    }
    Ok(())
}

/// The layers directory itself, refused if it is a symlink.
fn open_layers(layers: &Path) -> Result<OwnedFd, MountError> {
    rustix::fs::open(
        layers,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open the layers directory", layers)(e.into()))
}

/// `<key>/<sub>` (or `<key>` for an empty `sub`) beneath the layers directory,
/// with no symlink on the way.
fn layer_dir(
    layers_fd: &OwnedFd,
    layers: &Path,
    key: &str,
    sub: &str,
) -> Result<OwnedFd, MountError> {
    let rel = if sub.is_empty() {
        PathBuf::from(key)
    } else {
        Path::new(key).join(sub)
    };
    rustix::fs::openat2(
        layers_fd,
        &rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        let path = layers.join(&rel);
        match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::NOTDIR => {
                err("use the layer directory", &path)(io::Error::other(
                    "it is a symlink or not a directory",
                ))
            }
            e => err("open the layer directory", &path)(e.into()),
        }
    })
}

fn mkdir_at(parent: &OwnedFd, name: &Path, shown: &Path) -> Result<(), MountError> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(err("create", shown)(e.into())),
    }
}

/// Steps 1: build the VM's root from overlays and switch to it.
pub fn enter_root(plan: &MountPlan, layout: &Layout) -> Result<(), MountError> {
    // Nothing mounted from here on may propagate back to the host's namespace.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| err("make private", Path::new("/"))(e.into()))?;
    if layout.tmpfs_layers {
        // 32-bit inode numbers leave overlayfs the high bits it needs for `xino`
        // (see `mount_overlay`).
        mount_fs(
            "tmpfs",
            &layout.layers,
            "tmpfs",
            MountFlags::empty(),
            &format!("mode=0700,inode32{}", layout.tmpfs_limits),
        )?;
        prepare_layers(plan, &layout.layers)?;
    }
    let Some((root, nested)) = plan.overlays.split_first() else {
        return Err(err("assemble the root at", &layout.staging)(
            io::Error::other("the mount plan has no root overlay"),
        ));
    };
    mount_overlay(root, layout, &layout.staging)?;
    let staging = rustix::fs::open(
        &layout.staging,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open", &layout.staging)(e.into()))?;
    for o in nested {
        let Some(target) = open_beneath(&staging, &o.mount_point, true)? else {
            tracing::debug!(mount = %o.mount_point.display(), "vm replaced the mount point; not mounted");
            continue;
        };
        mount_overlay(o, layout, &fd_path(&target))?;
    }
    for file in &plan.file_binds {
        bind_file_readonly(&staging, file, &layout.staging)?;
    }
    // The container's bind sources: detached copies of their mounts, taken
    // while the host's tree is in view and attached once the VM's own mounts
    // are made (`container_mounts`).
    let sources = bind_sources(&plan.container)?;
    // Host DNS config that lives in /run must be read now, while the host's /run is
    // still reachable; it is written into the VM's private /run after the pivot.
    let resolv = if plan.own_root {
        None
    } else {
        run_resolv_conf()
    };
    pivot(&layout.staging)?;
    populate(plan, resolv)?;
    container_mounts(&plan.container, sources)?;
    if plan.root_readonly {
        rustix::mount::mount_remount("/", MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(|e| err("make read-only", Path::new("/"))(e.into()))?;
    }
    Ok(())
}

fn mount_overlay(o: &Overlay, layout: &Layout, target: &Path) -> Result<(), MountError> {
    // The layer's directories by fd, opened with no symlink on the way: what
    // overlayfs is given can't be aimed anywhere else.
    let layers_fd = open_layers(&layout.layers)?;
    let upper = layer_dir(&layers_fd, &layout.layers, &o.key, "upper")?;
    let work = layer_dir(&layers_fd, &layout.layers, &o.key, "work")?;
    // `xino=on`: when the upper layer is on another filesystem than the host mount
    // (a throw-away VM's tmpfs, a host mount on its own disk), overlayfs otherwise
    // gives directories inode numbers that change whenever their cached inode is
    // dropped, which tools that compare them (tar, rsync, find) take for a rename.
    // With all layers on one filesystem it changes nothing.
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,index=off,metacopy=off,xino=on",
        escape(&o.mount_point),
        escape(&fd_path(&upper)),
        escape(&fd_path(&work)),
    );
    if layout.volatile {
        data.push_str(",volatile");
    }
    // Without CAP_SYS_RESOURCE: overlayfs writes with the mounter's credentials,
    // which must not step past the VM's `disk` and `inodes` quotas.
    super::disk::mount_without_sys_resource(
        || mount_fs("overlay", target, "overlay", flags(o.flags), &data),
        |e| err("set the capabilities to mount", target)(e),
    )
    .map_err(|mut e| {
        e.what = format!(
            "mount the overlay of host {} (see `dmesg` for overlayfs's reason) at",
            o.mount_point.display()
        );
        e
    })
}

/// Overlayfs splits its options at `,` and lower layers at `:`; a backslash escapes.
fn escape(p: &Path) -> String {
    let mut s = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

fn flags(f: Flags) -> MountFlags {
    let mut m = MountFlags::empty();
    for (on, flag) in [
        (f.readonly, MountFlags::RDONLY),
        (f.nosuid, MountFlags::NOSUID),
        (f.nodev, MountFlags::NODEV),
        (f.noexec, MountFlags::NOEXEC),
        (f.noatime, MountFlags::NOATIME),
        (f.nodiratime, MountFlags::NODIRATIME),
    ] {
        if on {
            m |= flag;
        }
    }
    m
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), MountError> {
    let data = std::ffi::CString::new(data)
        .map_err(|_| err("pass options for", target)(io::ErrorKind::InvalidInput.into()))?;
    let data = (!data.is_empty()).then_some(data.as_c_str());
    rustix::mount::mount(source, target, fstype, flags, data)
        .map_err(|e| err(format!("mount {fstype} at"), target)(e.into()))
}

/// Open a host mount point's counterpart beneath the new root, refusing symlinks.
/// `None` if the VM's layer removed it or turned it into something else.
fn open_beneath(root: &OwnedFd, path: &Path, dir: bool) -> Result<Option<OwnedFd>, MountError> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let mut oflags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if dir {
        oflags |= OFlags::DIRECTORY;
    }
    match rustix::fs::openat2(
        root.as_fd(),
        rel,
        oflags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.raw_os_error(), libc::ENOENT | libc::ELOOP | libc::ENOTDIR) => {
            Ok(None)
        }
        Err(e) => Err(err("open", path)(e.into())),
    }
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn bind_file_readonly(root: &OwnedFd, file: &Path, staging: &Path) -> Result<(), MountError> {
    let Some(target) = open_beneath(root, file, false)? else {
        return Ok(());
    };
    let source = rustix::fs::open(file, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err("open", file)(e.into()))?;
    rustix::mount::mount_bind(fd_path(&source), fd_path(&target))
        .map_err(|e| err("bind host file", file)(e.into()))?;
    // The fd still names the file below the new mount; remount by path (no VM
    // process exists yet, and the path was just checked to have no symlinks).
    let at = staging.join(file.strip_prefix("/").unwrap_or(file));
    rustix::mount::mount_remount(&at, MountFlags::BIND | MountFlags::RDONLY, "")
        .map_err(|e| err("make read-only", file)(e.into()))
}

/// A detached copy (with the mounts below it) of each bind's source, by the
/// index of its mount; taken before `pivot_root`, while host paths resolve.
fn bind_sources(c: &ContainerMounts) -> Result<Vec<Option<OwnedFd>>, MountError> {
    use rustix::mount::OpenTreeFlags;
    c.mounts
        .iter()
        .map(|m| match m {
            ContainerMount::Bind(b) => rustix::mount::open_tree(
                rustix::fs::CWD,
                &b.source,
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE,
            )
            .map(Some)
            .map_err(|e| err("take the mount of", &b.source)(e.into())),
            ContainerMount::Tmpfs(_) => Ok(None),
        })
        .collect()
}

/// Step 3, after fvm's own mounts: the container's binds and tmpfs mounts in
/// order, then its masked and read-only paths. Every path is resolved inside
/// the VM's root (see [`open_in_root`]).
fn container_mounts(c: &ContainerMounts, sources: Vec<Option<OwnedFd>>) -> Result<(), MountError> {
    if c.mounts.is_empty() && c.masked.is_empty() && c.readonly.is_empty() {
        return Ok(());
    }
    let root = open_root()?;
    for (m, source) in c.mounts.iter().zip(sources) {
        match (m, source) {
            (ContainerMount::Bind(b), Some(tree)) => {
                let is_dir = rustix::fs::fstat(&tree)
                    .map(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Directory
                    })
                    .map_err(|e| err("stat", &b.source)(e.into()))?;
                let target = open_in_root(&root, &b.target, Some(is_dir))?
                    .ok_or_else(|| err("create", &b.target)(io::ErrorKind::NotFound.into()))?;
                rustix::mount::move_mount(
                    &tree,
                    "",
                    &target,
                    "",
                    rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH
                        | rustix::mount::MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
                )
                .map_err(|e| err(format!("bind {} at", b.source.display()), &b.target)(e.into()))?;
                if b.readonly {
                    remount_readonly(&root, &b.target)?;
                }
            }
            (ContainerMount::Tmpfs(t), _) => {
                let target = open_in_root(&root, &t.target, Some(true))?
                    .ok_or_else(|| err("create", &t.target)(io::ErrorKind::NotFound.into()))?;
                mount_fs("tmpfs", &fd_path(&target), "tmpfs", flags(t.flags), &t.data).map_err(
                    |mut e| {
                        e.path = t.target.clone();
                        e
                    },
                )?;
            }
            (ContainerMount::Bind(b), None) => {
                return Err(err("bind", &b.source)(io::ErrorKind::NotFound.into()));
            }
        }
    }
    let locked = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for path in &c.masked {
        let Some(target) = open_in_root(&root, path, None)? else {
            continue;
        };
        let st = rustix::fs::fstat(&target).map_err(|e| err("stat", path)(e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            mount_fs(
                "tmpfs",
                &fd_path(&target),
                "tmpfs",
                locked | MountFlags::RDONLY,
                "mode=0555,size=4k,nr_inodes=1",
            )
            .map_err(|mut e| {
                e.path = path.clone();
                e
            })?;
        } else {
            rustix::mount::mount_bind("/dev/null", fd_path(&target))
                .map_err(|e| err("mask", path)(e.into()))?;
        }
    }
    for path in &c.readonly {
        let Some(target) = open_in_root(&root, path, None)? else {
            continue;
        };
        rustix::mount::mount_bind_recursive(fd_path(&target), fd_path(&target))
            .map_err(|e| err("bind over itself", path)(e.into()))?;
        remount_readonly(&root, path)?;
    }
    Ok(())
}

/// Make the mount at `path` (in the VM's root) read-only, keeping its other
/// flags (`nosuid`, `nodev`, `noexec`), which a bind remount would clear.
fn remount_readonly(root: &OwnedFd, path: &Path) -> Result<(), MountError> {
    use rustix::fs::StatVfsMountFlags as V;
    let top = open_in_root(root, path, None)?
        .ok_or_else(|| err("make read-only", path)(io::ErrorKind::NotFound.into()))?;
    let vfs = rustix::fs::fstatvfs(&top).map_err(|e| err("stat", path)(e.into()))?;
    let mut f = MountFlags::BIND | MountFlags::RDONLY;
    for (has, flag) in [
        (V::NOSUID, MountFlags::NOSUID),
        (V::NODEV, MountFlags::NODEV),
        (V::NOEXEC, MountFlags::NOEXEC),
    ] {
        if vfs.f_flag.contains(has) {
            f |= flag;
        }
    }
    rustix::mount::mount_remount(fd_path(&top), f, "")
        .map_err(|e| err("make read-only", path)(e.into()))
}

/// `path` inside the VM's root `root`, a symlink on the way followed as the
/// VM sees it (`/var/run/x` is `/run/x` where `/var/run` links to `/run`),
/// never above the root, and never through a magic link of `/proc`. With
/// `make` (whether the last component is a directory), missing components
/// are made (directories, and the last one as a directory or an empty file);
/// without it a missing path is `None`.
fn open_in_root(
    root: &OwnedFd,
    path: &Path,
    make: Option<bool>,
) -> Result<Option<OwnedFd>, MountError> {
    let open = |rel: &Path, extra: OFlags| {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            root,
            rel,
            OFlags::PATH | OFlags::CLOEXEC | extra,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    };
    let rel = path.strip_prefix("/").unwrap_or(path);
    let is_dir = match (open(rel, OFlags::empty()), make) {
        (Ok(fd), _) => return Ok(Some(fd)),
        (Err(rustix::io::Errno::NOENT), None) => return Ok(None),
        (Err(rustix::io::Errno::NOENT), Some(is_dir)) => is_dir,
        (Err(e), _) => return Err(err("open", path)(e.into())),
    };
    // Walked a name at a time from the root: `at` is where the walk is, as
    // the kernel names it (symlinks resolved), so `..` is its parent. A
    // missing name that is a dangling symlink is followed (its target made
    // inside the root); any other missing name is made.
    let name_of = |fd: &OwnedFd| -> Result<PathBuf, MountError> {
        let real = std::fs::read_link(fd_path(fd)).map_err(err("resolve", path))?;
        Ok(real.strip_prefix("/").unwrap_or(&real).to_owned())
    };
    let mut queue: std::collections::VecDeque<std::ffi::OsString> = rel
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect();
    let mut at = PathBuf::new();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        if part == "." {
            continue;
        }
        if part == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&part);
        match open(&next, OFlags::empty()) {
            Ok(fd) => {
                at = name_of(&fd)?;
                continue;
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(err("open", path)(e.into())),
        }
        let parent =
            open(&at, OFlags::DIRECTORY).map_err(|e| err("open a directory of", path)(e.into()))?;
        if let Ok(target) = rustix::fs::readlinkat(&parent, &part, Vec::new()) {
            links += 1;
            if links > 40 {
                return Err(err("open", path)(io::Error::from_raw_os_error(libc::ELOOP)));
            }
            let target = PathBuf::from(std::ffi::OsString::from_vec(target.into_bytes()));
            if target.is_absolute() {
                at = PathBuf::new();
            }
            for c in target.components().rev() {
                match c {
                    std::path::Component::Normal(n) => queue.push_front(n.to_owned()),
                    std::path::Component::ParentDir => queue.push_front("..".into()),
                    _ => {}
                }
            }
            continue;
        }
        let made = if queue.is_empty() && !is_dir {
            rustix::fs::openat(
                &parent,
                &part,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&parent, &part, Mode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err("create", path)(e.into())),
        }
        let fd = open(&next, OFlags::empty())
            .map_err(|e| err("open the mount point", path)(e.into()))?;
        at = name_of(&fd)?;
    }
    open(&at, OFlags::empty())
        .map(Some)
        .map_err(|e| err("open the mount point", path)(e.into()))
}

fn run_resolv_conf() -> Option<(PathBuf, Vec<u8>)> {
    let target = std::fs::canonicalize("/etc/resolv.conf").ok()?;
    if !target.starts_with("/run") {
        return None;
    }
    Some((target.clone(), std::fs::read(&target).ok()?))
}

fn pivot(staging: &Path) -> Result<(), MountError> {
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
    // then leaves only the VM's tree, with no directory needed for the old root.
    std::env::set_current_dir(staging).map_err(err("enter", staging))?;
    rustix::process::pivot_root(".", ".").map_err(|e| err("pivot_root into", staging)(e.into()))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| err("detach the host root from", staging)(e.into()))?;
    std::env::set_current_dir("/").map_err(err("enter", Path::new("/")))
}

/// Step 2: fresh kernel filesystems and private directories, inside the VM's view.
fn populate(plan: &MountPlan, resolv: Option<(PathBuf, Vec<u8>)>) -> Result<(), MountError> {
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount_at("proc", "/proc", "proc", nosuid_nodev_noexec, "")?;
    mount_at(
        "sysfs",
        "/sys",
        "sysfs",
        nosuid_nodev_noexec | MountFlags::RDONLY,
        "",
    )?;
    mount_cgroups(&plan.cgroups)?;
    populate_dev()?;
    protect_kernel_files()?;
    mount_at(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=0755",
    )?;
    make_dir(Path::new("/run/lock"), 0o1777)?;
    if let Some((path, content)) = resolv {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err("create", parent))?;
        }
        std::fs::write(&path, content).map_err(err("write", &path))?;
    }
    if plan.private_tmp {
        mount_at(
            "tmpfs",
            "/tmp",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            "mode=1777",
        )?;
    }
    for path in &plan.hide {
        hide(path)?;
    }
    Ok(())
}

/// The VM's cgroup at `/sys/fs/cgroup`, read-only. The init made its cgroup
/// namespace after joining the VM's cgroup, so a cgroup filesystem mounted now
/// has the VM's cgroup as its root: a process sees its own limits and usage, and
/// nothing of the host's other cgroups.
fn mount_cgroups(view: &crate::cgroup::CgroupView) -> Result<(), MountError> {
    use crate::cgroup::CgroupView;
    let ro = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::RDONLY;
    let root = Path::new("/sys/fs/cgroup");
    match view {
        CgroupView::None => Ok(()),
        CgroupView::V2 => mount_fs("cgroup2", root, "cgroup2", ro, ""),
        CgroupView::V1(hierarchies) => {
            // sysfs is read-only: a tmpfs gives the hierarchies directories.
            mount_fs(
                "tmpfs",
                root,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                "mode=0755,size=64k",
            )?;
            for controllers in hierarchies {
                let name = controllers.join(",");
                let dir = root.join(&name);
                make_dir(&dir, 0o555)?;
                mount_fs("cgroup", &dir, "cgroup", ro, &name)?;
                // `cpu,cpuacct` is also reachable as `cpu` and `cpuacct`, as on hosts.
                if controllers.len() > 1 {
                    for c in controllers {
                        let link = root.join(c);
                        std::os::unix::fs::symlink(&name, &link).map_err(err("create", &link))?;
                    }
                }
            }
            rustix::mount::mount_remount(root, ro, "mode=0755,size=64k")
                .map_err(|e| err("make read-only", root)(e.into()))
        }
    }
}

fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), MountError> {
    let target = Path::new(target);
    if !target.is_dir() {
        std::fs::create_dir_all(target).map_err(err("create", target))?;
    }
    mount_fs(source, target, fstype, flags, data)
}

fn make_dir(path: &Path, mode: u32) -> Result<(), MountError> {
    std::fs::create_dir_all(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(err("create", path))
}

/// Files of /proc that change the running kernel for the whole machine (sysctls,
/// sysrq, IRQ affinity, bus settings): read-only inside a VM.
const KERNEL_READONLY: [&str; 5] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// Files that show host kernel memory, keys, timers or firmware: hidden.
const KERNEL_MASKED: [&str; 10] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/acpi",
    "/proc/scsi",
    "/proc/asound",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// A fresh /proc is the VM's own for processes, but its kernel files are the
/// host's: a VM writing `kernel.core_pattern` or a sysrq would act on the host.
fn protect_kernel_files() -> Result<(), MountError> {
    let locked = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for path in KERNEL_READONLY.map(Path::new) {
        if !path.exists() {
            continue;
        }
        rustix::mount::mount_bind(path, path).map_err(|e| err("bind", path)(e.into()))?;
        rustix::mount::mount_remount(path, MountFlags::BIND | MountFlags::RDONLY | locked, "")
            .map_err(|e| err("make read-only", path)(e.into()))?;
    }
    for path in KERNEL_MASKED.map(Path::new) {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => mount_fs(
                "tmpfs",
                path,
                "tmpfs",
                MountFlags::RDONLY | locked,
                "mode=0555,size=4k,nr_inodes=1",
            )?,
            Ok(_) => rustix::mount::mount_bind("/dev/null", path)
                .map_err(|e| err("mask", path)(e.into()))?,
            Err(_) => {}
        }
    }
    Ok(())
}

/// A private /dev: a tmpfs with the harmless character devices, a new devpts
/// instance (so ptys of the VM are its own), and its own shm and mqueue.
fn populate_dev() -> Result<(), MountError> {
    mount_at(
        "tmpfs",
        "/dev",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=0755,size=64k",
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = Path::new("/dev").join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| err("create device", &path)(e.into()))?;
        // mknod applies the umask; devices must be usable by every user.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(err("set mode of", &path))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = Path::new("/dev").join(link);
        std::os::unix::fs::symlink(target, &path).map_err(err("create", &path))?;
    }
    mount_at(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    mount_at(
        "shm",
        "/dev/shm",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=1777",
    )?;
    mount_at(
        "mqueue",
        "/dev/mqueue",
        "mqueue",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )
}

/// `statfs` type of tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// In a running VM's mount namespace (the caller has entered that namespace
/// only, and stays in the host's pid namespace and cgroup): cover each of
/// `paths` with an empty read-only tmpfs, as a start does, unless it is covered
/// already. The mount is made with file descriptors only (`fsmount` and
/// `move_mount` onto a target opened beneath the VM's root without following
/// symlinks), so nothing goes through the VM's `/proc`, and each cover is then
/// checked by opening the path again. A path the VM sees as something other
/// than a directory (a file or symlink of its own layer) can't show the host's
/// directory and needs no cover. A path it doesn't see at all is an error unless
/// `missing_ok` (a VM none of whose processes ran yet): it may be a stale lookup
/// that shows the directory later.
pub fn hide_in_running(paths: &[PathBuf], missing_ok: bool) -> Result<(), MountError> {
    for path in paths {
        let root = open_root()?;
        let target = match open_dir_beneath(&root, path) {
            Ok(Reached::Dir(fd)) => fd,
            Ok(Reached::NotADir) => continue,
            Err(e) if missing_ok && e.source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if is_cover(&target) {
            continue;
        }
        cover_fd(&target).map_err(err("mount an empty tmpfs at", path))?;
        let root = open_root()?;
        match open_dir_beneath(&root, path)? {
            Reached::Dir(fd) if is_cover(&fd) => {}
            _ => {
                return Err(err("cover", path)(io::Error::other(
                    "the path moved while it was covered",
                )));
            }
        }
    }
    Ok(())
}

fn open_root() -> Result<OwnedFd, MountError> {
    rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open", Path::new("/"))(e.into()))
}

enum Reached {
    Dir(OwnedFd),
    /// A non-directory (or a symlink) on the way or at the end.
    NotADir,
}

fn open_dir_beneath(root: &OwnedFd, path: &Path) -> Result<Reached, MountError> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    match rustix::fs::openat2(
        root.as_fd(),
        rel,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::DIRECTORY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(Reached::Dir(fd)),
        Err(e) if matches!(e.raw_os_error(), libc::ELOOP | libc::ENOTDIR) => Ok(Reached::NotADir),
        Err(e) => Err(err("find", path)(e.into())),
    }
}

/// Whether `dir` is the root of an empty read-only tmpfs mount, as a cover is
/// (a VM can't mount, so it can't have made one).
fn is_cover(dir: &OwnedFd) -> bool {
    let tmpfs = rustix::fs::fstatfs(dir).is_ok_and(|s| s.f_type == TMPFS_MAGIC);
    let root = rustix::fs::statx(
        dir,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::BASIC_STATS,
    )
    .is_ok_and(|st| {
        let attr = rustix::fs::StatxAttributes::MOUNT_ROOT;
        st.stx_attributes_mask.contains(attr)
            && st.stx_attributes.contains(attr)
            && st.stx_mode & 0o777 == 0
    });
    tmpfs && root
}

/// Mount an empty read-only tmpfs onto the directory `target`, by descriptor.
fn cover_fd(target: &OwnedFd) -> io::Result<()> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create,
        fsconfig_set_string, fsmount, fsopen, move_mount,
    };
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for (key, value) in [("mode", "0000"), ("size", "4k"), ("nr_inodes", "1")] {
        fsconfig_set_string(&fs, key, value)?;
    }
    fsconfig_create(&fs)?;
    let mnt = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    move_mount(
        &mnt,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// Cover a place where VM layers would be visible with an empty read-only tmpfs.
/// If the VM's view has no directory there (the VM removed or replaced it), the
/// layers can't be reached through that path and nothing needs covering.
fn hide(path: &Path) -> Result<(), MountError> {
    let root = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open", Path::new("/"))(e.into()))?;
    let Some(target) = open_beneath(&root, path, true)? else {
        return Ok(());
    };
    mount_fs(
        "tmpfs",
        &fd_path(&target),
        "tmpfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "mode=0000,size=4k,nr_inodes=1",
    )
    .map_err(|mut e| {
        e.path = path.to_owned();
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_overlay_separators() {
        assert_eq!(escape(Path::new("/a,b:c\\d")), "/a\\,b\\:c\\\\d");
        assert_eq!(escape(Path::new("/plain/path")), "/plain/path");
    }

    #[test]
    fn host_flags_become_mount_flags() {
        let f = Flags {
            readonly: true,
            noexec: true,
            ..Flags::default()
        };
        assert_eq!(flags(f), MountFlags::RDONLY | MountFlags::NOEXEC);
    }
}

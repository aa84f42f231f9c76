//! Carry out a [`MountPlan`] inside a VM's new mount namespace.
//!
//! Runs in the VM's first process before anything of the VM's own executes. The
//! order is what keeps the host safe (docs/vm-lifecycle.md):
//!
//! 1. Before `pivot_root` only overlays and read-only binds are mounted, onto
//!    targets opened beneath the new root without following symlinks: a symlink the
//!    VM planted in its layer last time can't aim a mount at a host path.
//! 2. After `pivot_root` and detaching the old root the host tree is unreachable.
//!    The root may still be an image of its own (a plain OCI rootfs) whose `/proc`
//!    or `/dev` is a symlink, so each of fvm's mount points is opened from the root
//!    one name at a time without following symlinks (a symlink or a file there is
//!    refused), every fresh kernel filesystem is made with `fsmount` and attached
//!    to that descriptor, and what goes below it (devices, `/proc/sys`'s read-only
//!    copy, the masks) is reached from the new mount's own descriptor: no path is
//!    looked up twice.
//! 3. Last, an OCI container's own mounts: its binds (taken as detached mount
//!    trees before the pivot, their flags set on that copy), tmpfs mounts, masked
//!    and read-only paths, each at a path walked by descriptor inside the VM's
//!    root (a symlink followed as the VM sees it, never up into the host's tree,
//!    never through `/proc`) and mounted on that descriptor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
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
        bind_file_readonly(&staging, file)?;
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
    let null = populate(plan, resolv)?;
    container_mounts(&plan.container, sources, &null)?;
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
    // No `O_NOFOLLOW`: with `O_PATH` it would open a symlink itself, where
    // `RESOLVE_NO_SYMLINKS` makes it an `ELOOP` (`None`).
    let mut oflags = OFlags::PATH | OFlags::CLOEXEC;
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

fn bind_file_readonly(root: &OwnedFd, file: &Path) -> Result<(), MountError> {
    use rustix::mount::OpenTreeFlags as T;
    let Some(target) = open_beneath(root, file, false)? else {
        return Ok(());
    };
    // A read-only detached bind of the host file, attached onto the target
    // by its descriptor: nothing is looked up again.
    let source = rustix::mount::open_tree(
        rustix::fs::CWD,
        file,
        T::OPEN_TREE_CLONE | T::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| err("take the mount of", file)(e.into()))?;
    crate::os::sys::mount_setattr(
        source.as_fd(),
        false,
        rustix::mount::MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
    .map_err(err("make read-only", file))?;
    attach(&source, &target).map_err(err("bind host file", file))
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
/// order, then its masked and read-only paths. Every path is resolved once,
/// inside the VM's root (see [`open_in_root`]), and used by that descriptor
/// only: a bind is made read-only (`nosuid`...) on its detached copy before it
/// is attached, a read-only path is a read-only copy of the tree at that
/// descriptor attached onto it, and masks bind fvm's own `/dev/null` (`null`,
/// taken when fvm made `/dev`). No path is looked up a second time, where an
/// earlier mount could make it lead elsewhere.
fn container_mounts(
    c: &ContainerMounts,
    sources: Vec<Option<OwnedFd>>,
    null: &OwnedFd,
) -> Result<(), MountError> {
    use rustix::mount::MountAttrFlags as A;
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
                let set = attr_flags(b.flags);
                if !set.is_empty() {
                    crate::os::sys::mount_setattr(tree.as_fd(), true, set).map_err(err(
                        format!("set the flags of the bind of {} at", b.source.display()),
                        &b.target,
                    ))?;
                }
                let target = open_in_root(&root, &b.target, Some(is_dir))?
                    .ok_or_else(|| err("create", &b.target)(io::ErrorKind::NotFound.into()))?;
                attach(&tree, &target)
                    .map_err(err(format!("bind {} at", b.source.display()), &b.target))?;
            }
            (ContainerMount::Tmpfs(t), _) => {
                let target = open_in_root(&root, &t.target, Some(true))?
                    .ok_or_else(|| err("create", &t.target)(io::ErrorKind::NotFound.into()))?;
                new_mount("tmpfs", "tmpfs", &t.data, attr_flags(t.flags))
                    .and_then(|mnt| attach(&mnt, &target))
                    .map_err(err("mount tmpfs at", &t.target))?;
            }
            (ContainerMount::Bind(b), None) => {
                return Err(err("bind", &b.source)(io::ErrorKind::NotFound.into()));
            }
        }
    }
    for path in &c.masked {
        let Some(target) = open_in_root(&root, path, None)? else {
            continue;
        };
        mask(&target, null).map_err(err("mask", path))?;
    }
    for path in &c.readonly {
        let Some(target) = open_in_root(&root, path, None)? else {
            continue;
        };
        clone_with(&target, A::MOUNT_ATTR_RDONLY)
            .and_then(|tree| attach(&tree, &target))
            .map_err(err("make read-only", path))?;
    }
    Ok(())
}

/// A mount's flags as the attributes of `fsmount` and `mount_setattr`.
fn attr_flags(f: Flags) -> rustix::mount::MountAttrFlags {
    use rustix::mount::MountAttrFlags as A;
    let mut a = A::empty();
    for (on, flag) in [
        (f.readonly, A::MOUNT_ATTR_RDONLY),
        (f.nosuid, A::MOUNT_ATTR_NOSUID),
        (f.nodev, A::MOUNT_ATTR_NODEV),
        (f.noexec, A::MOUNT_ATTR_NOEXEC),
        (f.noatime, A::MOUNT_ATTR_NOATIME),
        (f.nodiratime, A::MOUNT_ATTR_NODIRATIME),
    ] {
        if on {
            a |= flag;
        }
    }
    a
}

/// `path` inside the VM's root `root`, a symlink on the way followed as the
/// VM sees it (`/var/run/x` is `/run/x` where `/var/run` links to `/run`),
/// never above the root. With `make` (whether the last component is a
/// directory), missing components are made (directories, and the last one as
/// a directory or an empty file); without it a missing path is `None`.
///
/// Walked one name at a time by descriptor, from the root: each name opened
/// below the directory reached so far with no symlink followed; a symlink's
/// text is read and walked in its place (from the root if absolute), and `..`
/// steps back to the directory the walk came from (never above the root).
/// No path is looked up twice and nothing goes through `/proc`, so neither a
/// mount made earlier (a bind at `/proc`) nor a change made meanwhile in a
/// shared volume can make the result differ from what was walked.
fn open_in_root(
    root: &OwnedFd,
    path: &Path,
    make: Option<bool>,
) -> Result<Option<OwnedFd>, MountError> {
    use std::ffi::OsString;
    // Without `O_NOFOLLOW`: with `O_PATH` it would open a symlink itself;
    // `RESOLVE_NO_SYMLINKS` makes any symlink an `ELOOP`.
    let step = |dir: &OwnedFd, name: &std::ffi::OsStr| {
        rustix::fs::openat2(
            dir,
            name,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    };
    let names = |p: &Path| -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_owned()),
                std::path::Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut queue: std::collections::VecDeque<OsString> = names(path).into();
    // The directories walked into below the root, innermost last.
    let mut walked: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        if part == ".." {
            walked.pop();
            continue;
        }
        let at = walked.last().unwrap_or(root);
        match step(at, &part) {
            Ok(fd) => {
                walked.push(fd);
                continue;
            }
            Err(rustix::io::Errno::LOOP) => {
                links += 1;
                if links > 40 {
                    return Err(err("open", path)(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let target = rustix::fs::readlinkat(at, &part, Vec::new())
                    .map_err(|e| err("read a symlink of", path)(e.into()))?;
                let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                if target.is_absolute() {
                    walked.clear();
                }
                for name in names(&target).into_iter().rev() {
                    queue.push_front(name);
                }
                continue;
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(err("open", path)(e.into())),
        }
        let Some(is_dir) = make else {
            return Ok(None);
        };
        let made = if queue.is_empty() && !is_dir {
            rustix::fs::openat(
                at,
                &part,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(at, &part, Mode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err("create", path)(e.into())),
        }
        let fd = step(at, &part).map_err(|e| err("open the mount point", path)(e.into()))?;
        walked.push(fd);
    }
    match walked.pop() {
        Some(fd) => Ok(Some(fd)),
        None => rustix::fs::openat(root, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map(Some)
            .map_err(|e| err("open", path)(e.into())),
    }
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
///
/// The VM's root may be an image of its own (a plain OCI rootfs), whose `/proc`,
/// `/dev` or `/run` may be a symlink aimed at another of these (or at a place
/// an earlier mount of fvm changes). So every mount point of fvm's is reached
/// from the root one name at a time, with no symlink followed, as a directory
/// (made if missing; refused if it is a symlink or not a directory), and the
/// mount is attached to that descriptor: no path is looked up twice. What is
/// mounted below a fresh mount (`/dev/pts`, `/proc/sys`...) is reached from
/// that mount's own descriptor. Returns an `O_PATH` descriptor of fvm's
/// `/dev/null`, the source of every mask made later.
fn populate(plan: &MountPlan, resolv: Option<(PathBuf, Vec<u8>)>) -> Result<OwnedFd, MountError> {
    use rustix::mount::MountAttrFlags as A;
    let locked = A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV | A::MOUNT_ATTR_NOEXEC;
    let root = open_root()?;
    let proc_at = own_dir(&root, "proc", Path::new("/proc"))?;
    let proc = mount_new("proc", "proc", "", locked, &proc_at, Path::new("/proc"))?;
    let sys_at = own_dir(&root, "sys", Path::new("/sys"))?;
    let sys = mount_new(
        "sysfs",
        "sysfs",
        "",
        locked | A::MOUNT_ATTR_RDONLY,
        &sys_at,
        Path::new("/sys"),
    )?;
    mount_cgroups(&plan.cgroups, &sys)?;
    let null = populate_dev(&root)?;
    protect_kernel_files(&proc, &sys, &null)?;
    let run_at = own_dir(&root, "run", Path::new("/run"))?;
    let run = mount_new(
        "tmpfs",
        "tmpfs",
        "mode=0755",
        A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV,
        &run_at,
        Path::new("/run"),
    )?;
    let lock = own_dir(&run, "lock", Path::new("/run/lock"))?;
    set_mode(&lock, 0o1777, Path::new("/run/lock"))?;
    if let Some((path, content)) = resolv {
        write_in_run(&run, &path, &content)?;
    }
    if plan.private_tmp {
        let tmp_at = own_dir(&root, "tmp", Path::new("/tmp"))?;
        mount_new(
            "tmpfs",
            "tmpfs",
            "mode=1777",
            A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV,
            &tmp_at,
            Path::new("/tmp"),
        )?;
    }
    for path in &plan.hide {
        hide(path)?;
    }
    Ok(null)
}

/// The directory `name` (names below `parent`, no symlink followed, never
/// above it) as an `O_PATH` descriptor; the last name is made (mode 0755) if
/// missing. A symlink or a non-directory on the way is refused: fvm mounts
/// nothing through it.
fn own_dir(parent: &OwnedFd, name: &str, shown: &Path) -> Result<OwnedFd, MountError> {
    let open = || {
        rustix::fs::openat2(
            parent,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
    };
    let opened = match open() {
        Err(rustix::io::Errno::NOENT) => {
            match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(err("create", shown)(e.into())),
            }
            open()
        }
        r => r,
    };
    opened.map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR | rustix::io::Errno::XDEV => {
            err("mount at", shown)(io::Error::other("it is a symlink or not a directory"))
        }
        e => err("open the mount point", shown)(e.into()),
    })
}

/// A fresh mount of `fstype` with `options` (`key=value` or flag, comma
/// separated) and the mount attributes `attrs`, attached onto the directory
/// `target` by descriptor. Returns the new mount's root.
fn mount_new(
    fstype: &str,
    source: &str,
    options: &str,
    attrs: rustix::mount::MountAttrFlags,
    target: &OwnedFd,
    shown: &Path,
) -> Result<OwnedFd, MountError> {
    let mnt = new_mount(fstype, source, options, attrs)
        .map_err(|e| err(format!("mount {fstype} at"), shown)(e))?;
    attach(&mnt, target).map_err(|e| err(format!("mount {fstype} at"), shown)(e))?;
    Ok(mnt)
}

/// A new, still detached mount of a kernel filesystem (fsopen, fsmount).
fn new_mount(
    fstype: &str,
    source: &str,
    options: &str,
    attrs: rustix::mount::MountAttrFlags,
) -> io::Result<OwnedFd> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, fsconfig_create, fsconfig_set_flag, fsconfig_set_string,
        fsmount, fsopen,
    };
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "source", source)?;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some((key, value)) => fsconfig_set_string(&fs, key, value)?,
            None => fsconfig_set_flag(&fs, option)?,
        }
    }
    fsconfig_create(&fs)?;
    Ok(fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?)
}

/// Attach the detached mount `mnt` onto `target` (a descriptor, no path).
fn attach(mnt: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    use rustix::mount::MoveMountFlags as M;
    rustix::mount::move_mount(
        mnt,
        "",
        target,
        "",
        M::MOVE_MOUNT_F_EMPTY_PATH | M::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

/// A detached copy of the mount tree at `fd` (the mounts below it too), which
/// then gets the attributes `set` on every mount of it.
fn clone_with(fd: &OwnedFd, set: rustix::mount::MountAttrFlags) -> io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags as T;
    let tree = rustix::mount::open_tree(
        fd,
        "",
        T::OPEN_TREE_CLONE | T::OPEN_TREE_CLOEXEC | T::AT_RECURSIVE | T::AT_EMPTY_PATH,
    )?;
    if !set.is_empty() {
        crate::os::sys::mount_setattr(tree.as_fd(), true, set)?;
    }
    Ok(tree)
}

/// A detached bind of fvm's `/dev/null` (by its descriptor) to mask a file.
fn null_bind(null: &OwnedFd) -> io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags as T;
    Ok(rustix::mount::open_tree(
        null,
        "",
        T::OPEN_TREE_CLONE | T::OPEN_TREE_CLOEXEC | T::AT_EMPTY_PATH,
    )?)
}

/// An empty read-only tmpfs to mask a directory.
fn empty_dir_mount() -> io::Result<OwnedFd> {
    use rustix::mount::MountAttrFlags as A;
    new_mount(
        "tmpfs",
        "tmpfs",
        "mode=0555,size=4k,nr_inodes=1",
        A::MOUNT_ATTR_RDONLY | A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV | A::MOUNT_ATTR_NOEXEC,
    )
}

fn set_mode(dir: &OwnedFd, mode: u32, shown: &Path) -> Result<(), MountError> {
    rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(|fd| rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)))
    .map_err(|e| err("set the mode of", shown)(e.into()))
}

/// Write the host's DNS file `path` (below `/run`) into the VM's fresh `/run`,
/// by names below its descriptor.
fn write_in_run(run: &OwnedFd, path: &Path, content: &[u8]) -> Result<(), MountError> {
    use std::io::Write;
    let Ok(rel) = path.strip_prefix("/run") else {
        return Ok(());
    };
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((file, dirs)) = names.split_last() else {
        return Ok(());
    };
    let mut at = rustix::io::dup(run).map_err(|e| err("open", Path::new("/run"))(e.into()))?;
    for d in dirs {
        let name = d
            .to_str()
            .ok_or_else(|| err("create", path)(io::ErrorKind::InvalidInput.into()))?;
        at = own_dir(&at, name, path)?;
    }
    let fd = rustix::fs::openat(
        &at,
        *file,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(|e| err("write", path)(e.into()))?;
    std::fs::File::from(fd)
        .write_all(content)
        .map_err(err("write", path))
}

/// The VM's cgroup at `/sys/fs/cgroup`, read-only. The init made its cgroup
/// namespace after joining the VM's cgroup, so a cgroup filesystem mounted now
/// has the VM's cgroup as its root: a process sees its own limits and usage, and
/// nothing of the host's other cgroups. `sys` is fvm's fresh sysfs.
fn mount_cgroups(view: &crate::cgroup::CgroupView, sys: &OwnedFd) -> Result<(), MountError> {
    use crate::cgroup::CgroupView;
    use rustix::mount::MountAttrFlags as A;
    let locked = A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV | A::MOUNT_ATTR_NOEXEC;
    let ro = locked | A::MOUNT_ATTR_RDONLY;
    let root = Path::new("/sys/fs/cgroup");
    match view {
        CgroupView::None => Ok(()),
        CgroupView::V2 => {
            let at = own_dir(sys, "fs/cgroup", root)?;
            mount_new("cgroup2", "cgroup2", "", ro, &at, root).map(drop)
        }
        CgroupView::V1(hierarchies) => {
            // sysfs is read-only: a tmpfs gives the hierarchies directories.
            let at = own_dir(sys, "fs/cgroup", root)?;
            let tmpfs = mount_new("tmpfs", "tmpfs", "mode=0755,size=64k", locked, &at, root)?;
            for controllers in hierarchies {
                let name = controllers.join(",");
                let dir = root.join(&name);
                let dir_fd = own_dir(&tmpfs, &name, &dir)?;
                set_mode(&dir_fd, 0o555, &dir)?;
                mount_new("cgroup", "cgroup", &name, ro, &dir_fd, &dir)?;
                // `cpu,cpuacct` is also reachable as `cpu` and `cpuacct`, as on hosts.
                if controllers.len() > 1 {
                    for c in controllers {
                        rustix::fs::symlinkat(name.as_str(), &tmpfs, c.as_str())
                            .map_err(|e| err("create", &root.join(c))(e.into()))?;
                    }
                }
            }
            crate::os::sys::mount_setattr(tmpfs.as_fd(), false, ro)
                .map_err(err("make read-only", root))
        }
    }
}

/// Files of /proc that change the running kernel for the whole machine (sysctls,
/// sysrq, IRQ affinity, bus settings): read-only inside a VM.
const KERNEL_READONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Files of /proc that show host kernel memory, keys, timers or firmware: hidden.
const KERNEL_MASKED: [&str; 8] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "acpi",
    "scsi",
    "asound",
];

/// The same, of /sys.
const SYS_MASKED: [&str; 2] = ["firmware", "devices/virtual/powercap"];

/// A fresh /proc is the VM's own for processes, but its kernel files are the
/// host's: a VM writing `kernel.core_pattern` or a sysrq would act on the host.
/// Each entry is reached from the descriptor of fvm's own proc (or sysfs)
/// mount with no symlink followed, and fails the start unless the kernel
/// simply has no such entry.
fn protect_kernel_files(proc: &OwnedFd, sys: &OwnedFd, null: &OwnedFd) -> Result<(), MountError> {
    use rustix::mount::MountAttrFlags as A;
    let ro =
        A::MOUNT_ATTR_RDONLY | A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV | A::MOUNT_ATTR_NOEXEC;
    for name in KERNEL_READONLY {
        let shown = Path::new("/proc").join(name);
        let Some(fd) = kernel_entry(proc, name, &shown)? else {
            continue;
        };
        clone_with(&fd, ro)
            .and_then(|tree| attach(&tree, &fd))
            .map_err(err("make read-only", &shown))?;
    }
    let masked = KERNEL_MASKED
        .iter()
        .map(|n| (proc, Path::new("/proc"), *n))
        .chain(SYS_MASKED.iter().map(|n| (sys, Path::new("/sys"), *n)));
    for (base, base_name, name) in masked {
        let shown = base_name.join(name);
        let Some(fd) = kernel_entry(base, name, &shown)? else {
            continue;
        };
        mask(&fd, null).map_err(err("mask", &shown))?;
    }
    Ok(())
}

/// `name` below fvm's own kernel filesystem mount `base`, with no symlink
/// followed; `None` only when the kernel has no such entry.
fn kernel_entry(base: &OwnedFd, name: &str, shown: &Path) -> Result<Option<OwnedFd>, MountError> {
    // No `O_NOFOLLOW`, which with `O_PATH` opens a symlink itself: a
    // symlink is an error (`ELOOP`).
    match rustix::fs::openat2(
        base,
        name,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(err("open", shown)(e.into())),
    }
}

/// Hide what `target` shows: a directory under an empty read-only tmpfs, a
/// file under a bind of `/dev/null`.
fn mask(target: &OwnedFd, null: &OwnedFd) -> io::Result<()> {
    let st = rustix::fs::fstat(target)?;
    let cover =
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            empty_dir_mount()?
        } else {
            null_bind(null)?
        };
    attach(&cover, target)
}

/// A private /dev: a tmpfs with the harmless character devices, a new devpts
/// instance (so ptys of the VM are its own), and its own shm and mqueue.
/// Returns an `O_PATH` descriptor of its `null`.
fn populate_dev(root: &OwnedFd) -> Result<OwnedFd, MountError> {
    use rustix::mount::MountAttrFlags as A;
    let dev_at = own_dir(root, "dev", Path::new("/dev"))?;
    let dev = mount_new(
        "tmpfs",
        "tmpfs",
        "mode=0755,size=64k",
        A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NOEXEC,
        &dev_at,
        Path::new("/dev"),
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
            &dev,
            name,
            rustix::fs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| err("create device", &path)(e.into()))?;
        // mknod applies the umask; devices must be usable by every user.
        rustix::fs::chmodat(
            &dev,
            name,
            Mode::from_raw_mode(0o666),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| err("set mode of", &path)(e.into()))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        rustix::fs::symlinkat(target, &dev, link)
            .map_err(|e| err("create", &Path::new("/dev").join(link))(e.into()))?;
    }
    let null = rustix::fs::openat2(
        &dev,
        "null",
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .map_err(|e| err("open", Path::new("/dev/null"))(e.into()))?;
    for (name, fstype, options, attrs) in [
        (
            "pts",
            "devpts",
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
            A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NOEXEC,
        ),
        (
            "shm",
            "tmpfs",
            "mode=1777",
            A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV,
        ),
        (
            "mqueue",
            "mqueue",
            "",
            A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV | A::MOUNT_ATTR_NOEXEC,
        ),
    ] {
        let shown = Path::new("/dev").join(name);
        let at = own_dir(&dev, name, &shown)?;
        mount_new(fstype, fstype, options, attrs, &at, &shown)?;
    }
    Ok(null)
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
    let root = open_root()?;
    let Some(target) = open_beneath(&root, path, true)? else {
        return Ok(());
    };
    cover_fd(&target).map_err(err("mount tmpfs at", path))
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

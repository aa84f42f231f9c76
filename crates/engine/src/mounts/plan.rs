//! The mount plan of a VM: pure data computed from the host's mount table.
//!
//! Every real host mount becomes an overlay whose lower layer is the live host path
//! and whose upper layer is the VM's own, so the VM sees the whole host tree. The
//! kernel trees (`/proc`, `/sys`, `/dev`) and `/run` are made fresh instead, `/tmp`
//! too when it is a tmpfs on the host, and the places where VM layers live (the
//! store, `--dir`s) are covered wherever they show up. Building the plan does no I/O
//! except through the `is_dir` callback, so it is unit-tested on sample tables.

use std::path::{Path, PathBuf};

use super::mountinfo::MountEntry;

/// Trees that get fresh kernel filesystems instead of the host's mounts.
const KERNEL_TREES: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Filesystems that hold no user data and can't be an overlay's lower layer.
const PSEUDO: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "sysfs",
    "tracefs",
];

/// Per-mount flags copied from the host, so the VM's view of a mount is as strict
/// as the host's (a `noexec` host mount stays `noexec` inside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub nodiratime: bool,
}

impl Flags {
    fn of(entry: &MountEntry) -> Flags {
        Flags {
            readonly: entry.has_option("ro"),
            nosuid: entry.has_option("nosuid"),
            nodev: entry.has_option("nodev"),
            noexec: entry.has_option("noexec"),
            noatime: entry.has_option("noatime"),
            nodiratime: entry.has_option("nodiratime"),
        }
    }
}

/// One host mount seen through an overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The host mount point: the lower layer, and the same path inside the VM.
    pub mount_point: PathBuf,
    /// The name of this mount's layer directory (upper + work) in the VM's layers.
    pub key: String,
    pub flags: Flags,
    pub fs_type: String,
}

/// What the VM's mount namespace is built from, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountPlan {
    /// Overlays, parents before children; the first is `/`.
    pub overlays: Vec<Overlay>,
    /// Host mounts of single files (common in containers: `/etc/resolv.conf`),
    /// which overlayfs can't cover; they are bound read-only at the same path.
    pub file_binds: Vec<PathBuf>,
    /// `/tmp` is a tmpfs on the host, so the VM gets its own.
    pub private_tmp: bool,
    /// Paths inside the VM covered by an empty read-only tmpfs: wherever the store
    /// or a VM's layer directory would be visible.
    pub hide: Vec<PathBuf>,
    /// Host mounts not carried into the VM, with the reason (for `-v` and inspect).
    pub skipped: Vec<(PathBuf, &'static str)>,
    /// What to mount read-only at `/sys/fs/cgroup`: the VM's own cgroup, seen
    /// through its cgroup namespace. Filled in from the host's cgroup layout.
    pub cgroups: crate::cgroup::CgroupView,
    /// What an OCI container's config mounts into it (hosts files, secrets,
    /// volumes, tmpfs mounts) and masks, applied once fvm's own mounts are made.
    pub container: ContainerMounts,
    /// The VM's root is a directory of its own (an OCI container's rootfs),
    /// not the host's: nothing of the host's tree (not even its DNS files in
    /// `/run`) is carried in.
    pub own_root: bool,
    /// Remount the VM's root read-only once it is assembled (an OCI
    /// container's `root.readonly`): its own mount points are made first.
    pub root_readonly: bool,
}

/// A directory that is a VM's only lower layer, instead of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// On the host: absolute and canonical (the caller's path, trusted).
    pub path: PathBuf,
    /// The VM's root is mounted read-only.
    pub readonly: bool,
}

/// An OCI container's own mounts, in the VM as seen from its root: each
/// destination is resolved inside the VM's root (a symlink on the way is
/// followed there, never to the host's tree, and never through `/proc`'s
/// magic links); a missing one is made in the VM's own layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerMounts {
    /// Binds and tmpfs mounts, in the config's order.
    pub mounts: Vec<ContainerMount>,
    /// Paths hidden: a file by `/dev/null` bound over it, a directory by an
    /// empty read-only tmpfs (missing ones are left alone).
    pub masked: Vec<PathBuf>,
    /// Paths bound read-only over themselves (missing ones are left alone).
    pub readonly: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerMount {
    Bind(Bind),
    Tmpfs(Tmpfs),
}

/// A tmpfs the container's config mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    /// In the VM: absolute, plain components.
    pub target: PathBuf,
    pub flags: Flags,
    /// tmpfs's own options (`size=...,mode=...`), checked.
    pub data: String,
}

/// A host file or directory bound into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// On the host (the caller's path, trusted).
    pub source: PathBuf,
    /// In the VM: absolute, plain components (see [`ContainerMounts`]).
    pub target: PathBuf,
    /// Set on every mount of the bound tree (`ro` and `rro` alike) before
    /// it is attached.
    pub flags: Flags,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the host mount table has no root mount")]
    NoRoot,
    #[error("the host root is a {fs_type} filesystem, which can't be a VM's lower layer")]
    RootUnusable { fs_type: String },
    #[error("the root directory {0} is not an absolute path below /")]
    RootfsNotOwn(PathBuf),
}

/// The plan of a VM whose only lower layer is `rootfs` (one overlay, at `/`):
/// none of the host's mounts, files or hidden paths, only the fresh kernel
/// trees every VM gets.
pub fn of_rootfs(rootfs: &Rootfs) -> Result<MountPlan, PlanError> {
    let plain = rootfs.path.is_absolute()
        && rootfs
            .path
            .components()
            .skip(1)
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || rootfs.path == Path::new("/") {
        return Err(PlanError::RootfsNotOwn(rootfs.path.clone()));
    }
    Ok(MountPlan {
        overlays: vec![Overlay {
            // The layer's recorded mount point is where its lower layer is on
            // the host (what a diff compares it with).
            mount_point: rootfs.path.clone(),
            key: crate::layers::layer_key(&rootfs.path),
            flags: Flags::default(),
            fs_type: "rootfs".into(),
        }],
        own_root: true,
        root_readonly: rootfs.readonly,
        ..MountPlan::default()
    })
}

/// Build the plan. `private` lists host paths holding VM layers (canonical).
pub fn build(
    mounts: &[MountEntry],
    private: &[PathBuf],
    is_dir: &dyn Fn(&Path) -> bool,
) -> Result<MountPlan, PlanError> {
    let visible = visible_mounts(mounts);
    let mut plan = MountPlan::default();
    let root = visible
        .iter()
        .find(|m| m.mount_point == Path::new("/"))
        .ok_or(PlanError::NoRoot)?;
    if PSEUDO.contains(&root.fs_type.as_str()) {
        return Err(PlanError::RootUnusable {
            fs_type: root.fs_type.clone(),
        });
    }
    plan.private_tmp = visible
        .iter()
        .any(|m| m.mount_point == Path::new("/tmp") && m.fs_type == "tmpfs");

    // Mount points under which nothing from the host is carried over.
    let mut fresh: Vec<PathBuf> = KERNEL_TREES.iter().map(PathBuf::from).collect();
    fresh.push("/run".into());
    if plan.private_tmp {
        fresh.push("/tmp".into());
    }
    let mut dead: Vec<PathBuf> = Vec::new();
    let mut carried: Vec<&MountEntry> = Vec::new();
    for m in &visible {
        let mp = &m.mount_point;
        if fresh.iter().any(|f| mp.starts_with(f)) {
            continue;
        }
        if dead.iter().any(|d| mp.starts_with(d)) {
            plan.skipped
                .push((mp.clone(), "inside a mount that is not carried over"));
            continue;
        }
        if PSEUDO.contains(&m.fs_type.as_str()) {
            plan.skipped.push((mp.clone(), "kernel pseudo-filesystem"));
            dead.push(mp.clone());
            continue;
        }
        if !is_dir(mp) {
            plan.file_binds.push(mp.clone());
            continue;
        }
        carried.push(m);
        plan.overlays.push(Overlay {
            mount_point: mp.clone(),
            key: crate::layers::layer_key(mp),
            flags: Flags::of(m),
            fs_type: m.fs_type.clone(),
        });
    }
    // Parents before children even if the table lists a moved mount early.
    plan.overlays
        .sort_by_key(|o| o.mount_point.components().count());
    plan.hide = hide_points(&visible, &carried, private);
    Ok(plan)
}

/// The mounts a path lookup from `/` can reach, in table order.
///
/// A mount is hidden when another mount sits on the same point on top of it, or on
/// one of its parent directories in a way that its own parent mount is no longer on
/// the path. Resolve each mount point the way the kernel walks a path (follow the
/// child mounted on each prefix, topmost first) and keep the mounts that are hit.
/// This works from the parent ids, because table order is not always mount order.
fn visible_mounts(mounts: &[MountEntry]) -> Vec<MountEntry> {
    let Some(base) = mounts.iter().find(|m| {
        m.mount_point == Path::new("/") && !mounts.iter().any(|p| p.id == m.parent && p.id != m.id)
    }) else {
        return Vec::new();
    };
    let root = topmost(mounts, base);
    mounts
        .iter()
        .filter(|m| resolve(mounts, root, &m.mount_point) == m.id)
        .cloned()
        .collect()
}

/// The mount attached to `parent` at `at`, the latest if several are.
fn child_at<'a>(mounts: &'a [MountEntry], parent: u32, at: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .rev()
        .find(|c| c.parent == parent && c.id != parent && c.mount_point == at)
}

/// The last of the mounts stacked on the same point as `m`.
fn topmost<'a>(mounts: &'a [MountEntry], mut m: &'a MountEntry) -> &'a MountEntry {
    while let Some(c) = child_at(mounts, m.id, &m.mount_point) {
        m = c;
    }
    m
}

/// The id of the mount a lookup of `path` ends on.
fn resolve(mounts: &[MountEntry], root: &MountEntry, path: &Path) -> u32 {
    let mut cur = root;
    let mut prefix = PathBuf::from("/");
    for c in path.components().skip(1) {
        prefix.push(c);
        if let Some(child) = child_at(mounts, cur.id, &prefix) {
            cur = topmost(mounts, child);
        }
    }
    cur.id
}

/// Everywhere a private path shows up in a carried mount: a mount of the same
/// filesystem whose root directory contains it (the mount itself, or a bind mount of
/// a parent directory elsewhere).
fn hide_points(
    visible: &[MountEntry],
    carried: &[&MountEntry],
    private: &[PathBuf],
) -> Vec<PathBuf> {
    let mut hide = Vec::new();
    for p in private {
        let Some(home) = visible
            .iter()
            .filter(|m| p.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.components().count())
        else {
            continue;
        };
        let in_fs = home
            .root
            .join(p.strip_prefix(&home.mount_point).unwrap_or(Path::new("")));
        for m in carried.iter().filter(|m| m.dev == home.dev) {
            if let Ok(rest) = in_fs.strip_prefix(&m.root) {
                let at = m.mount_point.join(rest);
                if !hide.contains(&at) {
                    hide.push(at);
                }
            }
        }
    }
    hide
}

#[cfg(test)]
mod tests {
    use super::super::mountinfo::parse;
    use super::*;

    /// A systemd host: separate /home and /boot, /boot/efi below /boot, a bind mount
    /// of a data directory, tmpfs /tmp and /run, the store on /var/lib/fvm (root fs).
    const HOST: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
25 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
26 22 0:6 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw
27 26 0:24 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw
28 22 0:25 / /run rw,nosuid,nodev,noexec,relatime shared:7 - tmpfs tmpfs rw
29 28 0:26 / /run/user/1000 rw,nosuid,nodev,relatime shared:8 - tmpfs tmpfs rw
30 22 254:2 / /home rw,relatime shared:10 - xfs /dev/vda2 rw
31 22 254:3 / /boot rw,nodev,relatime shared:11 - ext4 /dev/vda3 rw
32 31 254:4 / /boot/efi ro,relatime shared:12 - vfat /dev/vda4 rw
33 22 0:27 / /tmp rw,nosuid,nodev shared:13 - tmpfs tmpfs rw
34 22 254:2 /alice/data /srv/data rw,noexec,relatime shared:10 - xfs /dev/vda2 rw
35 23 0:40 / /proc/sys/fs/binfmt_misc rw,relatime shared:14 - autofs systemd-1 rw
36 22 254:1 /var/lib /mnt/varlib rw,relatime shared:1 - ext4 /dev/vda1 rw
37 22 0:41 / /media/auto rw,relatime shared:15 - autofs systemd-1 rw
38 37 0:42 / /media/auto/usb rw,relatime shared:16 - vfat /dev/sdb1 rw
";

    #[test]
    fn a_rootfs_is_the_only_lower_layer() {
        let r = Rootfs {
            path: "/srv/bundle/rootfs".into(),
            readonly: true,
        };
        let p = of_rootfs(&r).unwrap();
        assert_eq!(p.overlays.len(), 1);
        assert_eq!(p.overlays[0].mount_point, Path::new("/srv/bundle/rootfs"));
        assert!(p.root_readonly && !p.overlays[0].flags.readonly);
        assert!(p.own_root);
        assert!(p.file_binds.is_empty() && p.hide.is_empty() && !p.private_tmp);
        // The host's root by any name is not a root of its own.
        for bad in ["/", "relative", "/a/../b"] {
            let r = Rootfs {
                path: bad.into(),
                readonly: false,
            };
            assert!(of_rootfs(&r).is_err(), "{bad}");
        }
    }

    fn plan(text: &str, private: &[&str]) -> MountPlan {
        let private: Vec<PathBuf> = private.iter().map(PathBuf::from).collect();
        build(&parse(text).unwrap(), &private, &|_| true).unwrap()
    }

    fn points(p: &MountPlan) -> Vec<&str> {
        p.overlays
            .iter()
            .map(|o| o.mount_point.to_str().unwrap())
            .collect()
    }

    #[test]
    fn every_real_mount_is_an_overlay_in_parent_order() {
        let p = plan(HOST, &["/var/lib/fvm"]);
        assert_eq!(
            points(&p),
            [
                "/",
                "/home",
                "/boot",
                "/boot/efi",
                "/srv/data",
                "/mnt/varlib"
            ]
        );
        assert!(p.private_tmp);
        assert!(p.file_binds.is_empty());
    }

    #[test]
    fn host_flags_are_kept() {
        let p = plan(HOST, &[]);
        let efi = p
            .overlays
            .iter()
            .find(|o| o.mount_point == Path::new("/boot/efi"));
        assert!(efi.unwrap().flags.readonly);
        let data = p
            .overlays
            .iter()
            .find(|o| o.mount_point == Path::new("/srv/data"));
        assert!(data.unwrap().flags.noexec);
        assert_eq!(p.overlays[0].flags, Flags::default());
    }

    #[test]
    fn kernel_trees_run_and_tmpfs_tmp_are_not_carried() {
        let p = plan(HOST, &[]);
        for fresh in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
            assert!(
                !p.overlays.iter().any(|o| o.mount_point.starts_with(fresh)),
                "{fresh}"
            );
        }
    }

    #[test]
    fn pseudo_filesystems_and_what_is_under_them_are_skipped() {
        let p = plan(HOST, &[]);
        let skipped: Vec<_> = p.skipped.iter().map(|s| s.0.to_str().unwrap()).collect();
        assert_eq!(skipped, ["/media/auto", "/media/auto/usb"]);
    }

    #[test]
    fn the_store_is_hidden_wherever_its_filesystem_shows_it() {
        let p = plan(HOST, &["/var/lib/fvm", "/home/alice/data/vms/web1"]);
        assert_eq!(
            p.hide,
            [
                PathBuf::from("/var/lib/fvm"),
                "/mnt/varlib/fvm".into(),
                "/home/alice/data/vms/web1".into(),
                "/srv/data/vms/web1".into(),
            ]
        );
    }

    #[test]
    fn store_on_a_private_tmpfs_needs_no_hiding() {
        let p = plan(HOST, &["/tmp/store"]);
        assert!(p.hide.is_empty());
    }

    #[test]
    fn later_mounts_hide_earlier_ones_below_them() {
        // /data/a was mounted, then /data itself was mounted over: /data/a is hidden.
        // /data/b comes after, on top of the new /data. /x is mounted twice: the
        // second one wins.
        let t = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:2 / /data/a rw - ext4 /dev/sda2 rw
3 1 8:3 / /data rw - ext4 /dev/sda3 rw
4 3 8:4 / /data/b rw - ext4 /dev/sda4 rw
5 1 0:50 / /x rw - tmpfs t1 rw
6 5 0:51 / /x ro - tmpfs t2 rw
";
        let p = plan(t, &[]);
        assert_eq!(points(&p), ["/", "/data", "/x", "/data/b"]);
        assert!(p.overlays[2].flags.readonly);
        assert!(!p.private_tmp);
    }

    #[test]
    fn this_machines_layout_with_a_file_bind_and_no_tmpfs_tmp() {
        let t = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,mode=755
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
28 27 0:25 / /mnt/sandboxing/tools ro,nosuid,nodev,relatime - tmpfs tools ro,size=4k
41 27 254:0 /etc/hostname-x /etc/hostname rw,relatime - ext4 /dev/vda rw
";
        let p = build(&parse(t).unwrap(), &[], &|p| {
            p != Path::new("/etc/hostname")
        })
        .unwrap();
        assert_eq!(points(&p), ["/", "/mnt/sandboxing/tools"]);
        assert_eq!(p.file_binds, [PathBuf::from("/etc/hostname")]);
        assert!(!p.private_tmp);
    }

    #[test]
    fn a_table_without_root_or_with_a_pseudo_root_is_refused() {
        let no_root = "2 1 8:2 / /data rw - ext4 /dev/sda2 rw\n";
        assert!(matches!(
            build(&parse(no_root).unwrap(), &[], &|_| true),
            Err(PlanError::NoRoot)
        ));
        let proc_root = "1 0 0:5 / / rw - proc proc rw\n";
        assert!(matches!(
            build(&parse(proc_root).unwrap(), &[], &|_| true),
            Err(PlanError::RootUnusable { .. })
        ));
    }
}

//! Finding the cgroup hierarchies in `/proc/self/mountinfo`.
//!
//! The mount table, not `/sys/fs/cgroup` by convention, is the truth: distros
//! mount v1 hierarchies under different names ("cpu,cpuacct" or "cpu" and
//! "cpuacct"), containers bind-mount them elsewhere, and a hybrid host has a
//! cgroup2 mount that looks usable but has no controllers. The superblock
//! options of a `cgroup` mount name its controllers; a `cgroup2` mount has all
//! controllers that v1 doesn't hold.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::CgroupError;

/// v1 controllers that make a hierarchy worth a directory per VM: they account
/// for or limit a VM, or (freezer) let us stop it atomically. cpuset is left
/// out because a new cpuset cgroup has no CPUs and can't take tasks until
/// configured; devices, net_cls, name=systemd etc. add nothing for a VM.
const USED_V1: [&str; 6] = ["pids", "memory", "cpu", "cpuacct", "blkio", "freezer"];

/// Where systemd and most distros mount the unified hierarchy.
const DEFAULT_V2_ROOT: &str = "/sys/fs/cgroup";

/// Every v1 controller the kernel has had. A v1 mount's superblock options mix
/// these with mount options (`rw`, `xattr`, `name=systemd`, ...).
const V1_CONTROLLERS: [&str; 15] = [
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// The cgroup layout: which hierarchies a VM gets a directory in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Layout {
    V1(Vec<Hierarchy>),
    V2(PathBuf),
}

/// One mounted v1 hierarchy and the controllers bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hierarchy {
    pub(super) controllers: Vec<String>,
    pub(super) root: PathBuf,
}

/// The fields of one mountinfo line that detection needs.
struct Mount<'a> {
    point: PathBuf,
    fstype: &'a str,
    super_opts: &'a str,
}

/// Picks the layout: v1 if any v1 hierarchy carries a controller we use
/// (this covers hybrid hosts), otherwise the cgroup2 mount.
pub(super) fn parse(text: &str) -> Result<Layout, CgroupError> {
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    let mut v2_roots: Vec<PathBuf> = Vec::new();
    for mount in text.lines().filter_map(parse_line) {
        match mount.fstype {
            "cgroup" => {
                let controllers = v1_controllers(mount.super_opts);
                if !controllers.iter().any(|c| USED_V1.contains(&c.as_str())) {
                    continue;
                }
                // The same hierarchy can be mounted twice (bind mounts, container
                // runtimes); one directory per hierarchy is enough.
                if hierarchies
                    .iter()
                    .any(|h| same_set(&h.controllers, &controllers))
                {
                    continue;
                }
                hierarchies.push(Hierarchy {
                    controllers,
                    root: mount.point,
                });
            }
            "cgroup2" => v2_roots.push(mount.point),
            _ => {}
        }
    }
    if !hierarchies.is_empty() {
        return Ok(Layout::V1(hierarchies));
    }
    let preferred = v2_roots
        .iter()
        .position(|root| root.as_os_str() == DEFAULT_V2_ROOT)
        .unwrap_or(0);
    match v2_roots.into_iter().nth(preferred) {
        Some(root) => Ok(Layout::V2(root)),
        None => Err(CgroupError::NoHierarchy),
    }
}

/// Splits a mountinfo line: `id parent major:minor root point opts [optional...] - fstype source super_opts`.
/// Lines that don't have that shape are skipped.
fn parse_line(line: &str) -> Option<Mount<'_>> {
    let mut fields = line.split(' ');
    let point = fields.nth(4)?;
    // Optional fields come in any number, so the separator is found by value.
    let mut after = fields.skip_while(|field| *field != "-").skip(1);
    let fstype = after.next()?;
    let _source = after.next()?;
    let super_opts = after.next()?;
    Some(Mount {
        point: PathBuf::from(OsString::from_vec(unescape(point))),
        fstype,
        super_opts,
    })
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash
/// (`\040`, `\011`, `\012`, `\134`) in mountinfo paths.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                // Three octal digits can exceed a byte; the kernel never emits
                // such a sequence, so keep it literally.
                match u8::try_from(value) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 4]),
                }
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// Controller names in the superblock options of a v1 mount, e.g. "rw,cpu,cpuacct".
fn v1_controllers(super_opts: &str) -> Vec<String> {
    super_opts
        .split(',')
        .filter(|opt| V1_CONTROLLERS.contains(opt))
        .map(str::to_owned)
        .collect()
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine: v1 controllers each on its own hierarchy, plus an empty cgroup2.
    const HYBRID: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd host in unified mode.
    const PURE_V2: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
36 24 0:31 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:10 - bpf bpf rw,mode=700
";

    /// A CentOS 7 style v1-only host with co-mounted controllers.
    const V1_ONLY: &str = "\
25 18 0:21 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:6 - tmpfs tmpfs ro,mode=755
26 25 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:7 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
28 25 0:24 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpuset
29 25 0:25 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,net_prio,net_cls
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpuacct,cpu
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,devices
";

    fn hierarchy(controllers: &[&str], root: &str) -> Hierarchy {
        Hierarchy {
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            root: PathBuf::from(root),
        }
    }

    #[test]
    fn hybrid_uses_v1_hierarchies_not_the_empty_unified_one() {
        let expected = vec![
            hierarchy(&["cpu"], "/sys/fs/cgroup/cpu"),
            hierarchy(&["cpuacct"], "/sys/fs/cgroup/cpuacct"),
            hierarchy(&["memory"], "/sys/fs/cgroup/memory"),
            hierarchy(&["freezer"], "/sys/fs/cgroup/freezer"),
            hierarchy(&["blkio"], "/sys/fs/cgroup/blkio"),
            hierarchy(&["pids"], "/sys/fs/cgroup/pids"),
        ];
        assert_eq!(parse(HYBRID).unwrap(), Layout::V1(expected));
    }

    #[test]
    fn pure_v2_uses_the_cgroup2_mount() {
        assert_eq!(
            parse(PURE_V2).unwrap(),
            Layout::V2(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn v1_only_counts_co_mounted_controllers_once_and_skips_unused() {
        let expected = vec![
            hierarchy(&["cpuacct", "cpu"], "/sys/fs/cgroup/cpu,cpuacct"),
            hierarchy(&["memory"], "/sys/fs/cgroup/memory"),
            hierarchy(&["pids"], "/sys/fs/cgroup/pids"),
        ];
        assert_eq!(parse(V1_ONLY).unwrap(), Layout::V1(expected));
    }

    #[test]
    fn no_cgroup_mounts_is_an_error() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n27 1 254:0 / / rw - ext4 /dev/vda rw\n";
        assert!(matches!(parse(text), Err(CgroupError::NoHierarchy)));
        assert!(matches!(parse(""), Err(CgroupError::NoHierarchy)));
    }

    #[test]
    fn only_unused_v1_controllers_and_no_cgroup2_is_an_error() {
        let text = "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
                    34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n";
        assert!(matches!(parse(text), Err(CgroupError::NoHierarchy)));
    }

    #[test]
    fn a_hierarchy_mounted_twice_is_used_once() {
        let text = "32 31 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
                    50 27 0:29 / /mnt/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(
            parse(text).unwrap(),
            Layout::V1(vec![hierarchy(&["pids"], "/sys/fs/cgroup/pids")])
        );
    }

    #[test]
    fn the_default_v2_mount_wins_over_others() {
        let text = "50 27 0:30 / /mnt/other rw - cgroup2 cgroup2 rw\n\
                    35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse(text).unwrap(),
            Layout::V2(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn mount_points_are_unescaped() {
        let text = "35 24 0:30 / /mnt/a\\040b\\011c\\012d\\134e rw shared:9 master:2 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse(text).unwrap(),
            Layout::V2(PathBuf::from("/mnt/a b\tc\nd\\e"))
        );
    }

    #[test]
    fn unescape_keeps_what_is_not_an_escape() {
        assert_eq!(unescape(r"a\04"), b"a\\04");
        assert_eq!(unescape(r"a\x40b"), b"a\\x40b");
        assert_eq!(unescape(r"\777"), b"\\777");
        assert_eq!(unescape(r"\\040"), b"\\ ");
    }

    #[test]
    fn v1_options_that_are_not_controllers_are_ignored() {
        assert_eq!(
            v1_controllers("rw,noprefix,xattr,release_agent=/x,name=foo,memory,cpu"),
            vec!["memory".to_string(), "cpu".to_string()]
        );
    }
}

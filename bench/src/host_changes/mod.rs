//! The "Host changes" section of docs/BENCHMARKS.md: how soon a change the host
//! makes shows inside a running VM, and what the store's watcher (`fvm-watch`,
//! which makes it show) costs the host.
//!
//! - Latency. A file in a directory of the benchmark's own under /var/tmp (on the
//!   host's filesystem, which the VMs overlay) is replaced the way dpkg replaces
//!   files, a new file written and renamed over it, with a new value every 150 to
//!   200 ms, at random, so that the changes meet the watcher's schedule (an
//!   invalidation 50 ms after a change, retried 100 ms apart) at random points. Two readers re-read the file every millisecond and
//!   print each new value with the time they read it: one inside a running VM
//!   (`fvm-bench watch-file`, this binary, run through `fvm run` by its host
//!   path), one on the host, which shows what the readers themselves add. Both
//!   clocks are the same kernel's CLOCK_REALTIME.
//! - Cost. A metadata-heavy host workload, `find /usr` and the untar of a tree of
//!   small files copied from /usr/share, with no VM of the store running (so no
//!   watcher) and with 50 idle ones, in rounds that run both, in alternating order
//!   (0, 50 | 50, 0 | ...), so the VMs are started or stopped once per round,
//!   between its two runs, and a slow spell of the machine lands on both. Every
//!   run starts after `sync` and a pause, untimed: no dirty pages, an idle
//!   watcher. The untarred trees are kept until the end, and their parent has
//!   ext4's TOPDIR attribute (`chattr +T`), so that each starts in a block group
//!   of its own: on an ext4 without a journal (this machine's root filesystem) a
//!   new inode skips past every inode freed in the last minute or more
//!   (`recently_deleted`), and an untar into a group where a `rm -rf` (ours
//!   between runs, or anybody's) had just freed inodes took 6 to 15 times longer.
//!   With `discard`, a `rm -rf` itself mostly waits for the disk's discards, which
//!   have nothing to do with fvm, so it is not part of the workload.
//! - The latency is measured first, the workload second: the inodes the
//!   latency's replaced files free are few and in another group than the trees,
//!   and its minutes let whatever freed many inodes before the section (the full
//!   run's diff and commit, a previous run's cleanup) stop counting as recent.
//!
//! Everything the section makes on the host is in one temporary directory under
//! /var/tmp, removed at the end, also on failure; its VMs are in the benchmark's
//! store, whose guard deletes them.

mod latency;
pub(crate) mod watcher;
mod workload;

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::store::Store;

use latency::Latency;
pub use latency::watch_file;
use watcher::wait_for_watcher;
use workload::Workload;

pub const BEGIN: &str = "<!-- bench:host-changes:begin -->";
pub const END: &str = "<!-- bench:host-changes:end -->";

/// Where the section's host files go: the host's own, seen by the VMs.
const HOST_PARENT: &str = "/var/tmp";

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// Changes of the file the readers watch.
    pub changes: usize,
    /// Timed rounds of the workload, each with a run without VMs and one with.
    pub rounds: usize,
    /// VMs running during the loaded runs.
    pub vms: usize,
    /// MiB of file content in the untarred tree.
    pub tree_mib: usize,
}

#[derive(Debug, Clone, Default)]
pub struct HostChangesBench {
    pub cpus: usize,
    pub changes: usize,
    pub latency: Latency,
    pub workload: Workload,
    /// Filesystem type of the host directory.
    pub host_fs: String,
    /// Seconds to remove the host directory (the trees) at the end.
    pub cleanup_s: f64,
    /// Wall time of the whole section, cleanup included.
    pub took_s: f64,
}

pub fn measure(store: &Store, p: &Params) -> Result<HostChangesBench> {
    let began = Instant::now();
    wait_for_watcher(store, false).context("before the host-changes benchmark")?;
    // Removed when dropped, also on failure; on success below, with its time.
    let dir = tempfile::Builder::new()
        .prefix("fvm-bench-host-")
        .tempdir_in(HOST_PARENT)
        .with_context(|| format!("creating a temporary directory under {HOST_PARENT}"))?;
    eprintln!(
        "fvm-bench: host changes: host files in {}",
        dir.path().display()
    );
    let mut b = HostChangesBench {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        changes: p.changes,
        host_fs: crate::store::fs_type(dir.path()).unwrap_or_default(),
        ..HostChangesBench::default()
    };
    // The latency first (see the module's doc).
    b.latency = latency::measure(store, dir.path(), p.changes)?;
    b.workload = workload::measure(store, dir.path(), p)?;
    eprintln!("fvm-bench: host changes: removing the host files");
    let t = Instant::now();
    let trees = dir.path().join("trees");
    if trees.exists() {
        workload::remove_subdirs(&trees)?;
    }
    let shown = dir.path().display().to_string();
    dir.close().with_context(|| format!("removing {shown}"))?;
    b.cleanup_s = t.elapsed().as_secs_f64();
    wait_for_watcher(store, false).context("after the host-changes benchmark")?;
    b.took_s = began.elapsed().as_secs_f64();
    Ok(b)
}

/// The section, markers included.
pub fn render(
    b: &HostChangesBench,
    invocation: &str,
    date: &str,
    kernel: &str,
    store: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n## Host changes\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- CPUs: {}\n- store: {store}\n\
         - host files: HOSTDIR, a temporary directory under {HOST_PARENT} ({}) made for \
         this section, outside the store, so the VMs see it as the host's; removed at \
         the end ({:.0} s)\n\
         - VMs made by `fvm --root DIR create VM` (host network); afterwards every VM was \
         deleted and the store's watcher was gone (checked)\n\
         - measuring this section took {:.0} s\n",
        b.cpus, b.host_fs, b.cleanup_s, b.took_s
    );
    latency::render(&mut s, b.changes, &b.latency);
    workload::render(&mut s, &b.workload);
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::workload::Runs;
    use super::*;

    #[test]
    fn renders_both_tables_and_the_verdict() {
        let runs = |idle: f64, loaded: f64| Runs {
            idle: vec![idle; 3],
            loaded: vec![loaded; 3],
        };
        let b = HostChangesBench {
            cpus: 2,
            changes: 4,
            latency: Latency {
                vm: vec![Some(50.0), Some(60.0), None, Some(150.0)],
                host: vec![Some(0.5); 4],
                vm_ended: false,
                host_ended: true,
                foreign: 2,
                checks: 100,
            },
            workload: Workload {
                rounds: 3,
                vms: 50,
                entries: 10,
                files: 8,
                file_bytes: 100 << 20,
                tar_bytes: 130 << 20,
                topdir: true,
                find: runs(0.25, 0.25),
                untar: runs(1.75, 1.85),
                cpu: runs(1.0, 1.04),
                watcher_cpu: vec![0.1; 3],
                start_s: vec![1.0; 2],
                stop_s: vec![0.5; 2],
                foreign: 1,
                runs: 6,
            },
            host_fs: "ext4".into(),
            cleanup_s: 12.0,
            took_s: 100.0,
        };
        let md = render(&b, "bench/run --host-changes-only", "d", "k", "s");
        assert_eq!(
            md,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/snapshots/host-changes.md"
            ))
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        for want in [
            "Produced by `bench/run --host-changes-only`.",
            "| in a running VM | `fvm --root DIR run VM -- fvm-bench watch-file --every-us 1000 --max-secs N --file HOSTDIR/lat/value` | 4 | 3 | 1 | 60.0 | 150.0 | 150.0 | 150.0 |",
            "| on the host | `fvm-bench watch-file",
            "The VM's reader had not read the last change 10 s after it",
            "| untar | `tar -xf TREE.tar -C HOSTDIR/trees/x-N` | 50 | 1.850 | 1.850 | 1.850 | 1.06× |",
            "| find + untar | `both, one after the other` | 0 | 2.000 |",
            "find + untar 1.05x (1.05, 1.05, 1.05), target < 1.05x: missed; find 1.00x",
            "| CPU time of find + untar | `both, one after the other` | 50 | 1.040 |",
            "CPU time of both 1.04x (1.04, 1.04, 1.04).",
            "a median of 100 ms of CPU per run with the VMs",
            "4.8 % of the run's wall time",
            "took a median of 1.00 s per switch (2 switches), stopping them 0.50 s (2)",
            "ran during 1 of the 6 timed runs",
            "ran during the changes (2 of 100 checks,",
            "measuring this section took 100 s",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        assert!(!md.contains("The host's reader had not"), "{md}");
    }
}

//! What a VM's cgroup has used, read from the version's own files. A figure the
//! host's cgroups don't report (a controller not mounted, an older kernel) is
//! `None`, never a made-up zero.

use std::path::Path;

use serde::Serialize;

use super::control;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// CPU time of all its processes, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory charged now, and the most it has been charged, in bytes.
    pub memory: Option<u64>,
    pub memory_peak: Option<u64>,
    pub processes: Option<u64>,
    /// Bytes read from and written to block devices.
    pub io_read: Option<u64>,
    pub io_write: Option<u64>,
    /// Processes the kernel's OOM killer ended because the VM hit its memory limit.
    pub oom_kills: Option<u64>,
}

fn number(path: &Path) -> Option<u64> {
    control::read(path).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, memory.stat): the value of `key`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// v2 `io.stat`: one line per device, `MAJ:MIN rbytes=N wbytes=N …`; summed.
pub(super) fn parse_io_stat(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r += v.parse::<u64>().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w += v.parse::<u64>().unwrap_or(0);
        }
    }
    (r, w)
}

/// v1 `blkio.throttle.io_service_bytes`: `MAJ:MIN Read N` lines per device (and
/// a `Total N` line); the per-device Read and Write lines summed.
pub(super) fn parse_blkio(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [_dev, op, n] = f[..] {
            let n = n.parse::<u64>().unwrap_or(0);
            match op {
                "Read" => r += n,
                "Write" => w += n,
                _ => {}
            }
        }
    }
    (r, w)
}

pub(super) fn v2(dir: &Path) -> Usage {
    let io = control::read(&dir.join("io.stat"))
        .ok()
        .map(|t| parse_io_stat(&t));
    Usage {
        cpu_ns: control::read(&dir.join("cpu.stat"))
            .ok()
            .and_then(|t| keyed(&t, "usage_usec"))
            .map(|us| us * 1000),
        memory: number(&dir.join("memory.current")),
        memory_peak: number(&dir.join("memory.peak")),
        processes: number(&dir.join("pids.current")),
        io_read: io.map(|i| i.0),
        io_write: io.map(|i| i.1),
        oom_kills: oom_kills_v2(dir),
    }
}

/// v2: processes the OOM killer ended in the cgroup (`oom_kill` of
/// `memory.events`).
pub(super) fn oom_kills_v2(dir: &Path) -> Option<u64> {
    control::read(&dir.join("memory.events"))
        .ok()
        .and_then(|t| keyed(&t, "oom_kill"))
}

/// v1: the same, from the memory hierarchy's directory; `oom_kill` is in
/// memory.oom_control since Linux 4.13.
pub(super) fn oom_kills_v1(memory: &Path) -> Option<u64> {
    control::read(&memory.join("memory.oom_control"))
        .ok()
        .and_then(|t| keyed(&t, "oom_kill"))
}

/// v1: each figure from the hierarchy of its controller.
pub(super) fn v1(dir_with: impl Fn(&str) -> Option<std::path::PathBuf>) -> Usage {
    let file = |controller: &str, name: &str| dir_with(controller).map(|d| d.join(name));
    let io = file("blkio", "blkio.throttle.io_service_bytes")
        .and_then(|p| control::read(&p).ok())
        .map(|t| parse_blkio(&t));
    Usage {
        cpu_ns: file("cpuacct", "cpuacct.usage").and_then(|p| number(&p)),
        memory: file("memory", "memory.usage_in_bytes").and_then(|p| number(&p)),
        memory_peak: file("memory", "memory.max_usage_in_bytes").and_then(|p| number(&p)),
        processes: file("pids", "pids.current").and_then(|p| number(&p)),
        io_read: io.map(|i| i.0),
        io_write: io.map(|i| i.1),
        oom_kills: dir_with("memory").and_then(|d| oom_kills_v1(&d)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_sums_every_device() {
        let t = "8:0 rbytes=4096 wbytes=100 rios=1 wios=1 dbytes=0 dios=0\n\
                 259:0 rbytes=10 wbytes=5 rios=1 wios=1\n";
        assert_eq!(parse_io_stat(t), (4106, 105));
        assert_eq!(parse_io_stat(""), (0, 0));
    }

    #[test]
    fn blkio_sums_read_and_write_lines_but_not_totals() {
        let t = "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 0\n8:0 Total 4608\n\
                 8:16 Read 1\n8:16 Write 2\nTotal 4611\n";
        assert_eq!(parse_blkio(t), (4097, 514));
    }

    #[test]
    fn keyed_finds_its_key_only() {
        let t = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(keyed(t, "usage_usec"), Some(1500));
        assert_eq!(keyed(t, "nr_periods"), None);
    }

    #[test]
    fn v2_and_v1_read_their_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for (f, c) in [
            ("cpu.stat", "usage_usec 2000\n"),
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            ("pids.current", "3\n"),
            ("io.stat", "8:0 rbytes=1 wbytes=2\n"),
            ("memory.events", "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n"),
        ] {
            std::fs::write(d.join(f), c).unwrap();
        }
        let u = v2(d);
        assert_eq!(
            u,
            Usage {
                cpu_ns: Some(2_000_000),
                memory: Some(4096),
                memory_peak: Some(8192),
                processes: Some(3),
                io_read: Some(1),
                io_write: Some(2),
                oom_kills: Some(2),
            }
        );
        // Without memory.peak (kernels before 5.19) the peak is unknown.
        std::fs::remove_file(d.join("memory.peak")).unwrap();
        assert_eq!(v2(d).memory_peak, None);

        for (f, c) in [
            ("cpuacct.usage", "123\n"),
            ("memory.usage_in_bytes", "10\n"),
            ("memory.max_usage_in_bytes", "20\n"),
            (
                "blkio.throttle.io_service_bytes",
                "8:0 Read 7\n8:0 Write 9\nTotal 16\n",
            ),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
            ),
        ] {
            std::fs::write(d.join(f), c).unwrap();
        }
        let u = v1(|c| (c != "pids").then(|| d.to_owned()));
        assert_eq!(
            u,
            Usage {
                cpu_ns: Some(123),
                memory: Some(10),
                memory_peak: Some(20),
                processes: None,
                io_read: Some(7),
                io_write: Some(9),
                oom_kills: Some(1),
            }
        );
    }
}

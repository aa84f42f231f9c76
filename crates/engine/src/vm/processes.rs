//! What `ps` shows: every process of a running VM, read from the host's /proc.
//! The processes are the VM's, so what they report (command lines, names) is
//! data, never trusted; a process that ends while it is read is left out.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::Path;

use serde::Serialize;

use super::{Engine, VmError};
use crate::os::procid::{self, ProcId};
use crate::store::VmName;

/// One process of a VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmProcess {
    /// Its pid inside the VM (the VM's init is 1).
    pub pid: i32,
    pub host_pid: i32,
    /// Real uid, and its name in the VM's own /etc/passwd (else the number).
    pub uid: u32,
    pub user: String,
    /// CPU time over its lifetime as a share of one CPU, as `ps` reports %CPU.
    pub cpu_percent: f64,
    /// Resident memory, in bytes.
    pub rss: u64,
    /// When it started, RFC 3339 (UTC).
    pub started: String,
    /// Its command line; its name in brackets when it has none (a kernel-style
    /// or scrubbed process). Bytes that are not UTF-8 show as U+FFFD here;
    /// [`VmProcess::shown_command`] shows them exactly.
    pub command: String,
    /// The arguments as the process has them, or its name when it has none.
    #[serde(skip)]
    pub args: Vec<Vec<u8>>,
}

impl VmProcess {
    /// The command line for a person: each argument quoted by the rule of
    /// [`crate::os::quote`], so a process of the VM can't forge lines or hide
    /// itself; the name in brackets when there are no arguments.
    pub fn shown_command(&self) -> String {
        if self.command.starts_with('[') && self.args.len() == 1 {
            return format!("[{}]", crate::os::quote::bytes(&self.args[0]));
        }
        let shown: Vec<_> = self
            .args
            .iter()
            .map(|a| crate::os::quote::bytes(a))
            .collect();
        shown.join(" ")
    }
}

impl Engine {
    /// The processes of running VM `name`, by pid inside the VM.
    pub fn processes(&self, name: &VmName) -> Result<Vec<VmProcess>, VmError> {
        let vm = self.vm(name)?;
        let state = self.load_state(&vm)?;
        let Some(init) = state.live_init(&self.cgroup_leaf(name)).cloned() else {
            return Err(VmError::NotRunning {
                name: name.to_string(),
            });
        };
        let cgroup = self.cgroup(name)?;
        let pids = cgroup.pids().map_err(VmError::cgroup(name))?;
        let clock = Clock::now();
        let users = users(&init);
        let mut out: Vec<VmProcess> = pids
            .into_iter()
            .filter_map(|pid| process(pid, &clock, &users))
            .collect();
        out.sort_by_key(|p| (p.pid, p.host_pid));
        Ok(out)
    }
}

struct Clock {
    ticks: f64,
    boot: u64,
    uptime: f64,
    page: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            ticks: rustix::param::clock_ticks_per_second() as f64,
            boot: boot_time().unwrap_or(0),
            uptime: uptime().unwrap_or(0.0),
            page: rustix::param::page_size() as u64,
        }
    }
}

fn process(host_pid: i32, clock: &Clock, users: &HashMap<u32, String>) -> Option<VmProcess> {
    let stat = procid::read_stat(host_pid).ok()?;
    let uid = procid::real_uid(host_pid)?;
    let pid = procid::ns_pids(host_pid)
        .and_then(|ns| ns.last().copied())
        .unwrap_or(host_pid);
    let since = stat.start_time as f64 / clock.ticks;
    let alive = clock.uptime - since;
    let cpu = (stat.utime + stat.stime) as f64 / clock.ticks;
    let cpu_percent = if alive > 0.0 {
        (cpu / alive * 1000.0).round() / 10.0
    } else {
        0.0
    };
    let started = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(clock.boot)
        + std::time::Duration::from_secs_f64(since);
    // NUL-separated; trailing NULs are the terminator, or arguments a process
    // blanked (fvm's init does).
    let raw = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap_or_default();
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut args: Vec<Vec<u8>> = if end == 0 {
        Vec::new()
    } else {
        raw[..end].split(|&b| b == 0).map(<[u8]>::to_vec).collect()
    };
    let command = if args.is_empty() {
        let command = format!("[{}]", String::from_utf8_lossy(&stat.comm));
        args.push(stat.comm);
        command
    } else {
        let lossy: Vec<_> = args.iter().map(|a| String::from_utf8_lossy(a)).collect();
        lossy.join(" ")
    };
    Some(VmProcess {
        pid,
        host_pid,
        uid,
        user: users.get(&uid).cloned().unwrap_or_else(|| uid.to_string()),
        cpu_percent,
        rss: stat.rss * clock.page,
        started: humantime::format_rfc3339_seconds(started).to_string(),
        command,
        args,
    })
}

/// When the host booted, in seconds after the epoch (`btime` of /proc/stat).
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Seconds since the host booted (the first number of /proc/uptime).
fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The largest /etc/passwd of a VM that `ps` reads for names.
const MAX_PASSWD: u64 = 1 << 20;

/// uid → name from the VM's own /etc/passwd, read through its init's root: a
/// user made in the VM shows by name. The file is the VM's: symlinks resolve
/// inside the VM, a file that isn't regular or is too large names nobody, and
/// the names are quoted where they are shown.
fn users(init: &ProcId) -> HashMap<u32, String> {
    let Ok(root) = rustix::fs::open(
        format!("/proc/{}/root", init.pid),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) else {
        return HashMap::new();
    };
    // The pid could have been reused between reading the state and the open.
    if !init.is_alive() {
        return HashMap::new();
    }
    crate::os::files::read_regular_in(root.as_fd(), Path::new("etc/passwd"), MAX_PASSWD)
        .map(|t| parse_passwd(&t))
        .unwrap_or_default()
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if let (Some(name), Some(uid)) = (f.first(), f.get(2).and_then(|u| u.parse().ok())) {
            out.entry(uid).or_insert_with(|| (*name).to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_names_by_uid_first_entry_wins() {
        let users =
            parse_passwd("root:x:0:0::/root:/bin/sh\nbad line\nbin:x:2:2::/:\ntoor:x:0:0::/:\n");
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&2).map(String::as_str), Some("bin"));
        assert_eq!(users.len(), 2);
    }
}

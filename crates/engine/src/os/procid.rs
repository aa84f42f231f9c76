//! A process identity that survives pid reuse: pid + start time + boot id.
//!
//! A VM's state file records its init this way, so after a crash or a reboot a new
//! process that happens to get the same pid is never mistaken for the VM's init.

use std::io;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: clock ticks after boot.
    pub start_time: u64,
    /// /proc/sys/kernel/random/boot_id when the process was seen.
    pub boot_id: String,
}

/// What /proc says about a pid right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (or sleeps), and it is the same process.
    Alive,
    /// Gone, a zombie, or a different process now holds the pid.
    Dead,
}

/// The pid a helper's pid file names, if a process named `comm` has it now (a
/// pid file outliving its process never gets another process signalled).
pub fn from_pid_file(path: &std::path::Path, comm: &str) -> Option<i32> {
    let pid = std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)?;
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (name.trim_end() == comm).then_some(pid)
}

impl ProcId {
    /// Identify a live pid as it is now.
    pub fn of(pid: i32) -> io::Result<ProcId> {
        let stat = read_stat(pid)?;
        Ok(ProcId {
            pid,
            start_time: stat.start_time,
            boot_id: boot_id()?,
        })
    }

    pub fn liveness(&self) -> Liveness {
        match (read_stat(self.pid), boot_id()) {
            (Ok(stat), Ok(boot))
                if boot == self.boot_id
                    && stat.start_time == self.start_time
                    && !stat.is_gone() =>
            {
                Liveness::Alive
            }
            _ => Liveness::Dead,
        }
    }

    pub fn is_alive(&self) -> bool {
        self.liveness() == Liveness::Alive
    }

    /// Alive, and really the init of a VM whose cgroup is named `leaf`: PID 1 of a
    /// pid namespace below ours, inside that cgroup. A state file planted to name
    /// some other process (the host's init, say) fails this, so fvm never signals
    /// or enters a process that isn't the VM's.
    pub fn is_vm_init(&self, leaf: &str) -> bool {
        self.is_alive()
            && is_nested_pid1(self.pid)
            && in_cgroup(self.pid, leaf)
            // Checked again: the pid could have been recycled between the reads.
            && self.is_alive()
    }
}

/// /proc/PID/status lists the pid in each namespace from ours down; a VM's init
/// has at least two entries, the last being 1.
fn is_nested_pid1(pid: i32) -> bool {
    ns_pids(pid).is_some_and(|ids| ids.len() >= 2 && ids.last() == Some(&1))
}

/// Whether any of the process's cgroups (v1 or v2 lines) is `/<leaf>`.
pub fn in_cgroup(pid: i32, leaf: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|path| path.strip_prefix('/') == Some(leaf))
}

/// The fields of /proc/PID/stat that fvm reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Field 2, the command name: up to 15 bytes the process chose, so any bytes
    /// but NUL, `)` and spaces included.
    pub comm: Vec<u8>,
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: u8,
    /// Field 6: the session id, as the reader's pid namespace shows it (0 when
    /// the session's leader is in a namespace it can't see).
    pub session: i32,
    /// Field 7: the controlling terminal's device number, 0 for none.
    pub tty: u32,
    /// Fields 14 and 15: CPU time in user and kernel mode, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Field 22: clock ticks after boot when the process started.
    pub start_time: u64,
    /// Field 24: resident set size, in pages.
    pub rss: u64,
}

impl Stat {
    /// A zombie or a dead process: it runs no more.
    pub fn is_gone(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// /proc/PID/stat of `pid`, as this process's /proc shows it.
pub fn read_stat(pid: i32) -> io::Result<Stat> {
    let bytes = std::fs::read(format!("/proc/{pid}/stat"))?;
    parse_stat(&bytes).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat line"))
}

/// Parse a /proc/PID/stat line. The command name is whatever lies between the
/// first `(` and the last `)`: it may itself hold `)`, spaces and bytes that are
/// not UTF-8, but the fields after it are numbers and one state letter.
pub fn parse_stat(line: &[u8]) -> Option<Stat> {
    let open = line.iter().position(|&b| b == b'(')?;
    let close = line.iter().rposition(|&b| b == b')')?;
    let comm = line.get(open + 1..close)?.to_vec();
    let rest = std::str::from_utf8(&line[close + 1..]).ok()?;
    // After ')' the fields are numbered from 3 (state).
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let number = |n: usize| field(n)?.parse::<u64>().ok();
    let state = match field(3)?.as_bytes() {
        [s] => *s,
        _ => return None,
    };
    Some(Stat {
        comm,
        state,
        session: field(6)?.parse().ok()?,
        tty: field(7)?
            .parse::<i64>()
            .ok()
            .and_then(|t| u32::try_from(t).ok())?,
        utime: number(14)?,
        stime: number(15)?,
        start_time: number(22)?,
        rss: number(24)?,
    })
}

/// The pids of `pid` in each pid namespace from ours down (`NSpid` of
/// /proc/PID/status): a VM's process has two or more, the last as the VM sees it.
pub fn ns_pids(pid: i32) -> Option<Vec<i32>> {
    let status = std::fs::read(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "NSpid")?
        .split_ascii_whitespace()
        .map(|n| n.parse().ok())
        .collect()
}

/// The real uid of `pid` (the first number of `Uid` in /proc/PID/status).
pub fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "Uid")?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The value of `name:` in /proc/PID/status. The `Name` line holds the process's
/// own bytes, so lines are split as bytes and only the one asked for is decoded.
fn status_field<'a>(status: &'a [u8], name: &str) -> Option<&'a str> {
    status.split(|&b| b == b'\n').find_map(|line| {
        let value = line.strip_prefix(name.as_bytes())?.strip_prefix(b":")?;
        std::str::from_utf8(value).ok()
    })
}

/// This boot of the host (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = b"1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 \n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, b"a) b (c)");
        assert_eq!(s.state, b'S');
        assert_eq!((s.session, s.tty), (1234, 0));
        assert_eq!((s.utime, s.stime), (1, 2));
        assert_eq!(s.start_time, 987654);
        assert_eq!(s.rss, 10);
        let odd = b"7 (\xff) 1 2 (3) R 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 42 0 3\n";
        let s = parse_stat(odd).unwrap();
        assert_eq!(s.comm, b"\xff) 1 2 (3");
        assert_eq!((s.state, s.start_time, s.rss), (b'R', 42, 3));
        let on_pty = b"9 (bash) S 1 9 9 34817 9 0 0 0 0 0 5 6 0 0 20 0 1 0 42 0 3\n";
        assert_eq!(
            parse_stat(on_pty).map(|s| (s.session, s.tty)),
            Some((9, 34817))
        );
        assert!(parse_stat(b"7 (x) S 1 2\n").is_none());
    }

    #[test]
    fn a_process_whose_name_is_not_utf8_is_read() {
        // A thread's name is its own /proc/TID/stat's command name; this test's
        // thread gets bytes that are not UTF-8 (as any process in a VM may).
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        rustix::thread::set_name(c"\xff)x (y").unwrap();
        let stat = read_stat(tid).unwrap();
        assert_eq!(stat.comm, b"\xff)x (y");
        assert!(!stat.is_gone());
        assert_eq!(real_uid(tid), Some(rustix::process::getuid().as_raw()));
        assert_eq!(ns_pids(tid).and_then(|p| p.last().copied()), Some(tid));
    }

    #[test]
    fn a_process_outside_any_vm_is_not_a_vm_init() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(!me.is_vm_init("fvm-00000000-x"));
        let host_init = ProcId::of(1).unwrap();
        assert!(host_init.is_alive());
        assert!(!host_init.is_vm_init("fvm-00000000-x"));
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!other.is_alive());
        let rebooted = ProcId {
            boot_id: "x".into(),
            ..me
        };
        assert!(!rebooted.is_alive());
    }
}

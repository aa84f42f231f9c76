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
                    && !matches!(stat.state, 'Z' | 'X' | 'x') =>
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
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .is_some_and(|ids| ids.len() >= 2 && ids.last() == Some(&"1"))
}

/// Whether any of the process's cgroups (v1 or v2 lines) is `/<leaf>`.
fn in_cgroup(pid: i32, leaf: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|path| path.strip_prefix('/') == Some(leaf))
}

struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: i32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat line"))
}

/// Parse the fields after the command name, which may itself contain spaces and ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After ')' the fields are numbered from 3 (state); start time is field 22.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat { state, start_time })
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
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 \n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 987654);
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

//! Signals to a VM's processes from the process tree: only to a process that is,
//! at the moment of the signal, in that VM's cgroup. The pid is pinned with a
//! pidfd first, so a process that exits and has its pid reused by another
//! between the check and the signal can't be hit: the signal goes to the
//! pidfd's process, which is then gone (ESRCH).

use std::path::{Path, PathBuf};

use rustix::process::{Pid, PidfdFlags, Signal};

/// The signals the console sends.
pub const SIGNALS: &[(i32, &str)] = &[(15, "TERM"), (9, "KILL"), (1, "HUP"), (2, "INT")];

/// The parent pid of host process `pid` (the 4th field of /proc/PID/stat, after
/// the command name, which may hold anything, in parentheses).
pub fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Send `signal` to host pid `pid` if it is in one of `cgroup_dirs` (a VM's
/// cgroup directories) or below them.
pub fn kill_in_cgroup(pid: i32, signal: i32, cgroup_dirs: &[PathBuf]) -> Result<(), String> {
    if !SIGNALS.iter().any(|(s, _)| *s == signal) {
        return Err(format!("signal {signal} is not one the console sends"));
    }
    let sig = Signal::from_named_raw(signal).ok_or_else(|| format!("no signal {signal}"))?;
    let raw = Pid::from_raw(pid).ok_or_else(|| format!("no process {pid}"))?;
    let fd = rustix::process::pidfd_open(raw, PidfdFlags::empty())
        .map_err(|e| format!("process {pid}: {e}"))?;
    if !cgroup_dirs.iter().any(|d| holds(d, pid, 0)) {
        return Err(format!("process {pid} is not a process of this vm"));
    }
    rustix::process::pidfd_send_signal(&fd, sig).map_err(|e| format!("process {pid}: {e}"))
}

/// Whether `pid` is listed in `dir`'s cgroup.procs or a subgroup's.
fn holds(dir: &Path, pid: i32, depth: usize) -> bool {
    if dir.as_os_str().is_empty() || depth > 16 {
        return false;
    }
    let listed = std::fs::read_to_string(dir.join("cgroup.procs"))
        .is_ok_and(|t| t.lines().any(|l| l.trim().parse() == Ok(pid)));
    listed
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink())
                    && holds(&e.path(), pid, depth + 1)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_this_process() {
        let me = std::process::id() as i32;
        let expected = std::os::unix::process::parent_id() as i32;
        assert_eq!(parent(me), Some(expected));
    }

    #[test]
    fn a_process_outside_the_cgroup_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "1\n").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let e = kill_in_cgroup(pid, 15, &[dir.path().to_owned()]).unwrap_err();
        assert!(e.contains("not a process of this vm"), "{e}");
        assert!(child.try_wait().unwrap().is_none(), "still alive");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/cgroup.procs"), format!("{pid}\n")).unwrap();
        kill_in_cgroup(pid, 9, &[dir.path().to_owned()]).unwrap();
        assert!(!child.wait().unwrap().success());
        assert!(kill_in_cgroup(pid, 31, &[dir.path().to_owned()]).is_err());
    }
}

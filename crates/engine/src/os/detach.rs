//! Processes that outlive the command that starts them (the store's watcher, the
//! sync of volatile layers): nobody's child, in a session of their own.

use super::sys;

/// Run `work` in a new process that is nobody's child (forked twice, in a session
/// of its own), named `name`, with every inherited file closed and stdio on
/// /dev/null; it exits with what `work` returns. Returns once the intermediate
/// child is reaped.
pub fn spawn_detached(name: &std::ffi::CStr, work: impl FnOnce() -> i32) -> std::io::Result<()> {
    spawn_detached_keeping(name, &[], work)
}

/// [`spawn_detached`], keeping the fds `keep` open in the worker (sockets the
/// caller bound for it, say).
pub fn spawn_detached_keeping(
    name: &std::ffi::CStr,
    keep: &[std::os::fd::BorrowedFd<'_>],
    work: impl FnOnce() -> i32,
) -> std::io::Result<()> {
    let pid = sys::spawn(|_| {
        let _ = rustix::process::setsid();
        // The intermediate child ends at once, so the worker is nobody's child.
        let _ = sys::spawn(|forked| detached(forked, name, keep, work));
        0
    })?;
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    Ok(())
}

/// The second child of [`spawn_detached`]: stdio on /dev/null, then `work`.
fn detached(
    forked: &sys::Forked,
    name: &std::ffi::CStr,
    keep: &[std::os::fd::BorrowedFd<'_>],
    work: impl FnOnce() -> i32,
) -> i32 {
    let _ = forked.close_all_except(keep);
    // With every fd closed (the kept ones are never 0-2: the caller's stdio
    // holds those), /dev/null opens as fd 0 (stdin) and stays open.
    if let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR,
        rustix::fs::Mode::empty(),
    ) {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
        if std::os::fd::AsRawFd::as_raw_fd(&null) <= 2 {
            let _ = std::os::fd::IntoRawFd::into_raw_fd(null);
        }
    }
    let _ = rustix::thread::set_name(name);
    work()
}

//! The only place in fvm that calls the kernel without a safe wrapper.
//!
//! rustix and nix cover almost every syscall fvm needs. What is left is here:
//! `clone` with namespace flags (neither crate offers a fork-like clone), `unshare`
//! (unsafe in rustix because of `CLONE_FILES`), `execve`, `close_range`, signal
//! dispositions, file handles, fanotify, quotas and loop devices. Each wrapper
//! states the invariant that makes it sound. Where rustix has a safe call (inode
//! flags, FICLONE, dup2 onto stdio) the wrappers here use it.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};
use rustix::process::Pid;

/// Namespace flags for [`spawn_in`], as the kernel spells them.
pub mod ns {
    pub const MOUNT: u64 = libc::CLONE_NEWNS as u64;
    pub const PID: u64 = libc::CLONE_NEWPID as u64;
    pub const IPC: u64 = libc::CLONE_NEWIPC as u64;
    pub const UTS: u64 = libc::CLONE_NEWUTS as u64;
    pub const CGROUP: u64 = libc::CLONE_NEWCGROUP as u64;
    pub const NET: u64 = libc::CLONE_NEWNET as u64;
}

/// `struct clone_args` of clone3(2), up to the `cgroup` field (kernel 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The exit status of a forked child whose work panicked (Rust's own code for a
/// panicking program).
pub const CHILD_PANICKED: i32 = 101;

/// Run `child` in a new process (like `fork()`), in new namespaces (`flags` from
/// [`ns`]) and, if `cgroup` is a cgroup v2 directory, born inside that cgroup. The
/// new process ends with `_exit` and the code `child` returns, or
/// [`CHILD_PANICKED`] if it panics: it never returns into the caller's frames,
/// never runs the caller's destructors or flushes its buffers a second time.
/// Returns the new process's pid in our pid namespace.
///
/// The child gets a copy of one thread only: had another thread held a lock
/// (malloc's, stdio's) it would stay locked in the child forever. So this fails,
/// without forking, unless the calling process is single-threaded; the kernel
/// answers that (see [`ensure_single_threaded`]), not a promise of the caller.
pub fn spawn_in(
    flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    child: impl FnOnce(&Forked) -> i32,
) -> io::Result<Pid> {
    ensure_single_threaded()?;
    // SAFETY: the process was single-threaded just now, and nothing between the
    // check and the clone starts a thread.
    unsafe { clone_and_run(flags, cgroup, child) }
}

/// [`spawn_in`] without new namespaces or a cgroup: `fork()`.
pub fn spawn(child: impl FnOnce(&Forked) -> i32) -> io::Result<Pid> {
    spawn_in(0, None, child)
}

/// [`spawn`] from a test, which runs on one of the test harness's threads, so
/// the single-thread check can't pass. The child is a plain `fn` (it captures
/// nothing) and must only make system calls: no allocation, no lock, no output.
#[cfg(test)]
pub fn spawn_from_test(cgroup: Option<BorrowedFd<'_>>, child: fn() -> i32) -> io::Result<Pid> {
    // SAFETY: the other threads are the harness's; the child, by this function's
    // contract, takes none of the locks they may hold.
    unsafe { clone_and_run(0, cgroup, |_| child()) }
}

/// Fail unless this process is single-threaded. `unshare` of CLONE_THREAD,
/// CLONE_SIGHAND and CLONE_VM is refused with EINVAL while any other task shares
/// this process's thread group, signal handlers or memory, and otherwise has
/// nothing to unshare: it asks the kernel and changes nothing. Unlike counting
/// /proc/self/task it works in any mount namespace (a running VM's /proc does not
/// show this process) and can't be fooled by what is mounted on /proc.
fn ensure_single_threaded() -> io::Result<()> {
    let flags = libc::CLONE_THREAD | libc::CLONE_SIGHAND | libc::CLONE_VM;
    // SAFETY: with these flags unshare either fails or, for a process that shares
    // nothing, leaves every kernel object of the process as it was.
    if unsafe { libc::unshare(flags) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        return Err(io::Error::other(
            "cannot fork: this process has other threads",
        ));
    }
    Err(e)
}

/// clone3 like `fork()`; the child runs `child` under `catch_unwind` and exits.
///
/// # Safety
///
/// The process must be single-threaded, or `child` must take no lock another
/// thread might hold (no allocation, no stdio).
unsafe fn clone_and_run(
    flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
    child: impl FnOnce(&Forked) -> i32,
) -> io::Result<Pid> {
    let mut args = CloneArgs {
        flags,
        // A sibling (CLONE_PARENT) takes the caller's own exit signal, and clone3
        // refuses one given with it.
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: clone3 with no stack (0) and without CLONE_VM/CLONE_THREAD/CLONE_SETTLS
    // behaves like fork(2): the child resumes here on a private copy of the caller's
    // memory. `args` is a live, fully initialized clone_args of the size passed. The
    // caller vouches for the threads (see above).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let forked = Forked { _only_here: () };
            let code =
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(&forked))) {
                    Ok(code) => code,
                    Err(payload) => {
                        // Dropping the payload could run code that panics again.
                        std::mem::forget(payload);
                        CHILD_PANICKED
                    }
                };
            exit_now(code)
        }
        pid => Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("clone3 returned pid 0")),
    }
}

/// `unshare(2)` for namespace flags from [`ns`].
pub fn unshare(flags: u64) -> io::Result<()> {
    // SAFETY: only namespace flags are passed (never CLONE_FILES, which is what makes
    // rustix mark this unsafe: it would split the fd table between threads).
    debug_assert_eq!(flags & libc::CLONE_FILES as u64, 0);
    let flags = rustix::thread::UnshareFlags::from_bits_retain(flags as u32);
    // SAFETY: see above; CLONE_FILES is excluded.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// `execve(2)`. Returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut args: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    args.push(std::ptr::null());
    let mut env: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env.push(std::ptr::null());
    // SAFETY: `path` and every element are NUL-terminated C strings that outlive the
    // call, and both pointer arrays end with a null pointer as execve requires.
    unsafe { libc::execve(path.as_ptr(), args.as_ptr(), env.as_ptr()) };
    io::Error::last_os_error()
}

/// Make `fd` this process's stdin (`n` 0), stdout (1) or stderr (2), replacing
/// what was there; the copy is inherited across exec.
pub fn dup_onto_stdio(fd: BorrowedFd<'_>, n: usize) -> io::Result<()> {
    if fd.as_raw_fd() as usize == n {
        // dup2 onto itself is a no-op that keeps CLOEXEC; clear it explicitly.
        return rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(Into::into);
    }
    match n {
        0 => rustix::stdio::dup2_stdin(fd),
        1 => rustix::stdio::dup2_stdout(fd),
        2 => rustix::stdio::dup2_stderr(fd),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a stdio fd",
            ));
        }
    }
    .map_err(Into::into)
}

extern "C" fn note_signal(_: libc::c_int) {}

/// Prepare a pid-namespace init for `sigwait`: a pid-1 process only receives signals
/// it has a handler for (the kernel drops SIG_DFL ones), so install a no-op handler,
/// then block the signals so they queue for [`SigSet::wait`].
pub fn catch_and_block(signals: &[Signal]) -> io::Result<SigSet> {
    let action = SigAction::new(
        SigHandler::Handler(note_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let mut set = SigSet::empty();
    for &sig in signals {
        // SAFETY: the handler does nothing (it is async-signal-safe trivially), and the
        // signal is blocked right after, so it is consumed by sigwait, not the handler.
        unsafe { nix::sys::signal::sigaction(sig, &action) }.map_err(io::Error::from)?;
        set.add(sig);
    }
    set.thread_block().map_err(io::Error::from)?;
    Ok(set)
}

/// Give a process that is about to exec a clean signal state: nothing blocked and the
/// default action for every signal fvm changed (Rust ignores SIGPIPE at startup, and
/// an ignored signal would stay ignored across exec).
pub fn reset_signals_for_exec() -> io::Result<()> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL never runs code in this process.
        unsafe { nix::sys::signal::sigaction(sig, &default) }.map_err(io::Error::from)?;
    }
    SigSet::empty().thread_set_mask().map_err(io::Error::from)
}

/// Clear the immutable and append-only inode flags, so the file can be deleted.
/// Returns whether anything was cleared. `fd` may be opened O_RDONLY (or on a dir).
pub fn clear_undeletable_flags(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::fs::IFlags;
    let undeletable = IFlags::IMMUTABLE | IFlags::APPEND;
    let flags = rustix::fs::ioctl_getflags(fd)?;
    if !flags.intersects(undeletable) {
        return Ok(false);
    }
    rustix::fs::ioctl_setflags(fd, flags - undeletable)?;
    Ok(true)
}

/// The kind of namespace `fd` (a file of the namespace filesystem) is, as
/// `CLONE_NEW*` flags (`ns::NET` for a network namespace).
pub fn namespace_type(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns an int; on a
    // file that is not a namespace the kernel fails it with ENOTTY.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(kind as u64)
}

/// Call `f` when this process exits normally (returns from `main` or calls
/// `exit`), after everything else it printed.
pub fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: atexit only records the pointer; `f` is a plain `extern "C" fn()` with
    // 'static lifetime, which is exactly what atexit later calls with no arguments.
    if unsafe { libc::atexit(f) } == 0 {
        Ok(())
    } else {
        Err(io::Error::other("atexit: no room for another handler"))
    }
}

/// A child that ended, as `wait4` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: Pid,
    /// The raw wait status (`WIFEXITED`, `WTERMSIG`, ... read it).
    pub status: i32,
    /// The CPU time it used, user and system: what RLIMIT_CPU counts.
    pub cpu: std::time::Duration,
}

/// Reap a child of this process that ended: `pid`, or any child with `None`;
/// with `nohang`, `Ok(None)` while none has. Like `waitpid`, plus the child's CPU
/// time, which only `wait4` reports once the child is gone.
pub fn reap(pid: Option<Pid>, nohang: bool) -> io::Result<Option<Reaped>> {
    let who = pid.map_or(-1, |p| p.as_raw_nonzero().get());
    let flags = if nohang { libc::WNOHANG } else { 0 };
    loop {
        let mut status: libc::c_int = 0;
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `status` and `usage` are writable and of the types wait4 fills
        // in, and both outlive the call.
        let got = unsafe { libc::wait4(who, &mut status, flags, usage.as_mut_ptr()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        let Some(pid) = Pid::from_raw(got) else {
            return Ok(None);
        };
        // SAFETY: all-zero bytes are a valid rusage (it is only integers), and
        // wait4 filled it in besides.
        let usage = unsafe { usage.assume_init() };
        let time = |t: libc::timeval| {
            std::time::Duration::new(
                u64::try_from(t.tv_sec).unwrap_or(0),
                u32::try_from(t.tv_usec).unwrap_or(0).saturating_mul(1000),
            )
        };
        return Ok(Some(Reaped {
            pid,
            status,
            cpu: time(usage.ru_utime).saturating_add(time(usage.ru_stime)),
        }));
    }
}

/// End this process at once: no destructors, no atexit handlers, no flushing of
/// buffers copied from the parent. For a VM's init, which ends from deep inside
/// its loop; every other forked child just returns its code to [`spawn_in`].
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; skipping destructors is the
    // point (a forked child must not flush or free the parent's state twice).
    unsafe { libc::_exit(code) }
}

/// What a child of [`spawn_in`] is handed: proof that it runs in a forked
/// process that ends with `_exit` when its work returns (or panics), never
/// returning into the frames it was forked from. Only [`spawn_in`] makes one.
pub struct Forked {
    _only_here: (),
}

impl Forked {
    /// Close every fd of this process except `keep` (used by a VM's first
    /// process, which inherits whatever the fvm command had open, including its
    /// lock files, and by the detached workers).
    ///
    /// Sound because of where it can be called: in a forked child, the owners
    /// (`OwnedFd`, `File`) of the numbers it closes live in the frames the child
    /// was forked from, which it never returns into, so none of them is dropped
    /// again (`_exit` runs no destructor). `keep` is borrowed from its owners,
    /// so it names only open fds. What it can't check: an fd the child's own
    /// work goes on to use must be in `keep`.
    pub fn close_all_except(&self, keep: &[BorrowedFd<'_>]) -> io::Result<()> {
        close_all_except(keep.iter().map(AsRawFd::as_raw_fd).collect())
    }
}

/// See [`Forked::close_all_except`].
fn close_all_except(mut keep: Vec<RawFd>) -> io::Result<()> {
    keep.sort_unstable();
    keep.dedup();
    let mut next = 0;
    for &k in &keep {
        if k > next {
            close_range(next, k - 1)?;
        }
        next = k + 1;
    }
    close_range(next, RawFd::MAX)
}

/// Spawn `cmd` so that it is killed (SIGKILL) when the thread that spawned it
/// ends, the command's process included: a helper such as `nft` must not
/// outlive a killed fvm and change the host after the next command, which
/// took the lock the killed one held, has cleaned up after it. If the parent
/// is gone before the child asked for that, the child never execs.
///
/// `hold` (a lock's fd) stays open in the child through its exec: the lock is
/// then held until the child is gone too. A SIGKILL can't stop a transaction
/// the child has handed the kernel already, so without this the next command
/// could take the lock, clean up, and have the killed one's change land after.
pub fn spawn_killed_with_parent(
    cmd: &mut std::process::Command,
    hold: Option<BorrowedFd<'_>>,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let parent = rustix::process::getpid();
    let hold: Option<RawFd> = hold.map(|fd| fd.as_raw_fd());
    // SAFETY: the closure runs in the forked child between fork and exec, where
    // only async-signal-safe work is sound: it makes system calls (prctl,
    // getppid, fcntl) through rustix, which neither allocates nor takes a lock,
    // and builds an io::Error from an errno (no allocation either). It reads
    // `parent` and `hold`, copied integers, and nothing else of the parent's
    // memory. `hold` names an fd the caller has borrowed to us for this whole
    // call, and the closure only runs inside `spawn` below, so the number is
    // that open fd (the child's copy of it) when the child uses it.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(fd) = hold {
                let fd = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Mark every fd of this process but stdin, stdout and stderr close-on-exec
/// (`close_range` with CLOSE_RANGE_CLOEXEC, Linux 5.11): a command about to be
/// exec'd starts with fds 0-2 only. Nothing is closed before the exec, so every
/// owner of an fd in this process stays valid.
pub fn close_on_exec_beyond_stdio() -> io::Result<()> {
    // SAFETY: with CLOSE_RANGE_CLOEXEC the kernel only sets a flag on each fd
    // from 3 up; no fd is closed, so no owner is invalidated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn close_range(first: RawFd, last: RawFd) -> io::Result<()> {
    // SAFETY: called only by Forked::close_all_except, in a spawn_in child, which
    // gives up every fd outside `keep`; an OwnedFd that refers to a closed number
    // belongs to a frame the child never returns to (spawn_in _exits it).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0) };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

unsafe extern "C" {
    /// glibc and musl both export the address of argv[0] under this name.
    static program_invocation_name: *mut libc::c_char;
}

/// Blank this process's arguments (after argv[0]) and environment strings in
/// place, so that /proc/PID/cmdline and /proc/PID/environ show nothing of what the
/// fvm command was run with. For a VM's init, which lives on as a copy of that
/// command inside the VM.
pub fn scrub_args_and_environment() {
    // SAFETY: `environ` and `program_invocation_name` point at the NUL-terminated
    // strings the kernel put on this process's initial stack (argv strings, then
    // environment strings, contiguous). We only overwrite bytes inside those
    // strings (up to, not including, each terminator) and the gap between argv[0]
    // and the first environment string, which holds the other argv strings. The
    // process is single-threaded here and nothing reads the environment after.
    unsafe {
        let env = libc::environ;
        let first_env = if env.is_null() {
            std::ptr::null_mut()
        } else {
            *env
        };
        let arg0 = program_invocation_name;
        if !arg0.is_null() && !first_env.is_null() && first_env > arg0 {
            let rest = arg0.add(libc::strlen(arg0) + 1);
            if rest < first_env {
                std::ptr::write_bytes(rest, 0, first_env.offset_from(rest) as usize);
            }
        }
        let mut p = env;
        while !p.is_null() && !(*p).is_null() {
            std::ptr::write_bytes(*p, 0, libc::strlen(*p));
            p = p.add(1);
        }
    }
}

/// Make `dst` share `src`'s data blocks (a reflink, FICLONE), where the filesystem
/// can (btrfs, xfs, bcachefs); `Err` with EOPNOTSUPP, EXDEV or EINVAL where it can't.
pub fn reflink(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::ioctl_ficlone(dst, src).map_err(Into::into)
}

/// Whether the inode a file handle names still exists on the filesystem of
/// `mount` (`open_by_handle_at`; needs CAP_DAC_READ_SEARCH, which fvm has).
/// `Ok(false)` when the kernel says the handle is stale: the inode is gone.
pub fn handle_exists(mount: BorrowedFd<'_>, handle_type: i32, handle: &[u8]) -> io::Result<bool> {
    Ok(open_by_handle(mount, handle_type, handle)?.is_some())
}

/// `open_by_handle_at(O_PATH)`: the file with this handle on the filesystem of
/// `mount`, or `None` when the kernel says the handle is stale (the inode is gone).
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
) -> io::Result<Option<std::os::fd::OwnedFd>> {
    let header = std::mem::size_of::<libc::file_handle>();
    // u32 words, so the header's fields are aligned.
    let mut buf = vec![0u32; (header + handle.len()).div_ceil(4)];
    let base = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` holds at least `header + handle.len()` bytes and is 4-byte
    // aligned, as `file_handle` needs; the handle bytes are copied right after the
    // header, where the kernel reads `f_handle`, and `handle_bytes` says how many.
    let fd = unsafe {
        let fh = base.cast::<libc::file_handle>();
        (*fh).handle_bytes = handle.len() as libc::c_uint;
        (*fh).handle_type = handle_type;
        std::ptr::copy_nonoverlapping(handle.as_ptr(), base.add(header), handle.len());
        libc::open_by_handle_at(mount.as_raw_fd(), fh, libc::O_PATH | libc::O_CLOEXEC)
    };
    if fd == -1 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `fd` was just returned by open_by_handle_at and is owned by nobody else.
    Ok(Some(unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }))
}

/// A fanotify group that reports directory entry changes with the parent
/// directory's file handle and the entry's name (`FAN_REPORT_DFID_NAME`),
/// non-blocking.
pub fn fanotify_dfid_name() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain syscall with flag arguments; the result is checked.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF
                | libc::FAN_CLOEXEC
                | libc::FAN_NONBLOCK
                | libc::FAN_REPORT_DFID_NAME,
            (libc::O_RDONLY | libc::O_LARGEFILE) as libc::c_uint,
        )
    };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by fanotify_init and is owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Watch the whole filesystem that `path` is on for the events in `mask`.
pub fn fanotify_mark_filesystem(group: BorrowedFd<'_>, mask: u64, path: &CStr) -> io::Result<()> {
    fanotify_mark_at(
        group,
        libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
        mask,
        None,
        path,
    )
}

/// Have the kernel drop `mask`'s events in the directory `dir` (an `O_PATH` fd is
/// fine) before they reach `group`: an ignore mark on the directory's inode
/// (`FAN_MARK_IGNORE`, surviving modifications, with `FAN_ONDIR` in `mask` for
/// subdirectories), evictable, so that it doesn't pin the inode and goes when
/// the kernel evicts it. It covers the directory's own entries, not deeper ones.
pub fn fanotify_ignore_dir(
    group: BorrowedFd<'_>,
    mask: u64,
    dir: BorrowedFd<'_>,
) -> io::Result<()> {
    // fanotify_mark needs a path: a bare O_PATH fd is refused, so "." beneath it.
    fanotify_mark_at(
        group,
        libc::FAN_MARK_ADD
            | libc::FAN_MARK_IGNORE
            | libc::FAN_MARK_IGNORED_SURV_MODIFY
            | libc::FAN_MARK_EVICTABLE
            | libc::FAN_MARK_ONLYDIR
            | libc::FAN_MARK_DONT_FOLLOW,
        mask,
        Some(dir),
        c".",
    )
}

/// Remove the ignore mark [`fanotify_ignore_dir`] put on the directory `dir`;
/// `ENOENT` if it has none.
pub fn fanotify_unignore_dir(
    group: BorrowedFd<'_>,
    mask: u64,
    dir: BorrowedFd<'_>,
) -> io::Result<()> {
    fanotify_mark_at(
        group,
        libc::FAN_MARK_REMOVE
            | libc::FAN_MARK_IGNORE
            | libc::FAN_MARK_ONLYDIR
            | libc::FAN_MARK_DONT_FOLLOW,
        mask,
        Some(dir),
        c".",
    )
}

/// `fanotify_mark` on `path`, relative to `dir` (the current directory if none).
fn fanotify_mark_at(
    group: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
) -> io::Result<()> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `path` is a valid NUL-terminated string for the call's duration,
    // and `dirfd` is AT_FDCWD or an fd borrowed for it.
    let ret = unsafe { libc::fanotify_mark(group.as_raw_fd(), flags, mask, dirfd, path.as_ptr()) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Remove every inode mark of `group` (its ignore marks); its filesystem marks stay.
pub fn fanotify_flush_inode_marks(group: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall; FAN_MARK_FLUSH takes no path (NULL is allowed).
    let ret = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_FLUSH,
            0,
            libc::AT_FDCWD,
            std::ptr::null(),
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The file handle of `name` in `dir` (not following a symlink): its type and
/// bytes, as `open_by_handle_at` and overlayfs's origin records use them.
pub fn file_handle(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(i32, Vec<u8>)> {
    const MAX_HANDLE: usize = 128;
    let header = std::mem::size_of::<libc::file_handle>();
    let mut buf = vec![0u32; (header + MAX_HANDLE).div_ceil(4)];
    let base = buf.as_mut_ptr().cast::<u8>();
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is 4-byte aligned and holds the header plus MAX_HANDLE bytes,
    // which `handle_bytes` tells the kernel; `name` is NUL-terminated; `mount_id` is
    // a live local. After the call the kernel has set `handle_bytes` to the bytes it
    // wrote, at most MAX_HANDLE, which are then copied out.
    unsafe {
        let fh = base.cast::<libc::file_handle>();
        (*fh).handle_bytes = MAX_HANDLE as libc::c_uint;
        if libc::name_to_handle_at(
            dir.as_raw_fd(),
            name.as_ptr(),
            fh,
            &mut mount_id,
            // Without AT_SYMLINK_FOLLOW, a symlink is not followed.
            0,
        ) == -1
        {
            return Err(io::Error::last_os_error());
        }
        let len = ((*fh).handle_bytes as usize).min(MAX_HANDLE);
        let bytes = std::slice::from_raw_parts(base.add(header), len).to_vec();
        Ok(((*fh).handle_type, bytes))
    }
}

/// Load a seccomp filter on the calling thread without setting `no_new_privs`
/// (the caller needs CAP_SYS_ADMIN). Filters stack: every later exec keeps it.
pub fn load_seccomp(program: &[seccompiler::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp filter too long"))?;
    let prog = libc::sock_fprog {
        len,
        // seccompiler's sock_filter is `struct sock_filter` from linux/filter.h,
        // field for field, as libc's is.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `len` valid instructions that outlive the call; the
    // kernel copies the program and keeps no pointer into our memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct fsxattr` of `<linux/fs.h>`: what FS_IOC_FS{GET,SET}XATTR read and write.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `_IOR('X', 31, struct fsxattr)` and `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// New files and directories under a directory with this flag get its project id.
pub const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

/// Give an open file or directory the project id `id`, and to a directory also
/// FS_XFLAG_PROJINHERIT (so what is made in it later gets `id` too).
pub fn set_project(fd: BorrowedFd<'_>, id: u32, dir: bool) -> io::Result<()> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr` (28 bytes, the layout
    // of `FsXattr`) through the pointer, which points at a live local.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut attr) } == -1 {
        return Err(io::Error::last_os_error());
    }
    attr.projid = id;
    if dir {
        attr.xflags |= FS_XFLAG_PROJINHERIT;
    }
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` through the pointer (a
    // live local filled in by the kernel just above).
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, &attr) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `PRJQUOTA` of `<linux/quota.h>`.
const PRJQUOTA: libc::c_int = 2;
/// `Q_XGETQSTAT` of `<linux/dqblk_xfs.h>`: quota state in `struct fs_quota_stat`.
const Q_XGETQSTAT: libc::c_int = (b'X' as libc::c_int) << 8 | 5;
/// `FS_QUOTA_PDQ_ACCT` and `FS_QUOTA_PDQ_ENFD`: project quota accounted, enforced.
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;

/// `quotactl_fd(2)` (Linux 5.14) on the filesystem of `fd`, for project quotas.
///
/// # Safety
///
/// `addr` must be null or point at memory of the size and layout `cmd` reads or
/// writes, valid for the call.
unsafe fn quotactl_project(
    fd: BorrowedFd<'_>,
    cmd: libc::c_int,
    id: u32,
    addr: *mut libc::c_void,
) -> io::Result<()> {
    let cmd = libc::QCMD(cmd, PRJQUOTA);
    // SAFETY: the caller vouches for `addr`; the other arguments are integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd() as libc::c_uint,
            cmd as libc::c_uint,
            id as libc::c_uint,
            addr,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether project quotas are (accounted, enforced) on the filesystem of `fd`.
pub fn project_quota_state(fd: BorrowedFd<'_>) -> io::Result<(bool, bool)> {
    // `struct fs_quota_stat` is 80 bytes on every ABI; `qs_flags` is the u16 at
    // offset 2. A larger, 8-aligned zeroed buffer holds it.
    let mut buf = [0u64; 16];
    // SAFETY: Q_XGETQSTAT writes one `struct fs_quota_stat` (80 bytes) through
    // the pointer; `buf` is 128 bytes, 8-aligned, and lives across the call.
    unsafe { quotactl_project(fd, Q_XGETQSTAT, 0, buf.as_mut_ptr().cast())? };
    let bytes: [u8; 8] = buf[0].to_ne_bytes();
    let flags = u16::from_ne_bytes([bytes[2], bytes[3]]);
    Ok((
        flags & FS_QUOTA_PDQ_ACCT != 0,
        flags & FS_QUOTA_PDQ_ENFD != 0,
    ))
}

/// One project's quota: limits (0 is none) and use, in bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectQuota {
    pub bytes_limit: u64,
    pub inodes_limit: u64,
    pub bytes_used: u64,
    pub inodes_used: u64,
}

/// Quota blocks of `struct if_dqblk` are 1 KiB.
const QUOTA_BLOCK: u64 = 1024;

/// Project `id`'s quota on the filesystem of `fd`.
pub fn project_quota(fd: BorrowedFd<'_>, id: u32) -> io::Result<ProjectQuota> {
    // SAFETY: `dqblk` is plain integers, for which all-zero is a valid value.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    // SAFETY: Q_GETQUOTA writes one `struct if_dqblk` (libc's `dqblk`) through
    // the pointer, a live local.
    unsafe { quotactl_project(fd, libc::Q_GETQUOTA, id, (&raw mut q).cast())? };
    Ok(ProjectQuota {
        bytes_limit: q.dqb_bhardlimit.saturating_mul(QUOTA_BLOCK),
        inodes_limit: q.dqb_ihardlimit,
        bytes_used: q.dqb_curspace,
        inodes_used: q.dqb_curinodes,
    })
}

/// Set project `id`'s hard and soft limits on the filesystem of `fd`: `bytes`
/// (rounded up to whole KiB) and `inodes`, 0 meaning none.
pub fn set_project_quota(fd: BorrowedFd<'_>, id: u32, bytes: u64, inodes: u64) -> io::Result<()> {
    // SAFETY: as in `project_quota`.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    let blocks = bytes.div_ceil(QUOTA_BLOCK);
    q.dqb_bhardlimit = blocks;
    q.dqb_bsoftlimit = blocks;
    q.dqb_ihardlimit = inodes;
    q.dqb_isoftlimit = inodes;
    q.dqb_valid = libc::QIF_LIMITS;
    // SAFETY: Q_SETQUOTA reads one `struct if_dqblk` through the pointer, a live
    // local.
    unsafe { quotactl_project(fd, libc::Q_SETQUOTA, id, (&raw mut q).cast()) }
}

/// `struct loop_info64` of `<linux/loop.h>` (232 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`, for LOOP_CONFIGURE.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
/// Detach the device when its last user (open file or mount) goes.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

fn zeroed_loop_info() -> LoopInfo64 {
    LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: 0,
        file_name: [0; 64],
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    }
}

/// Attach `file` to a free loop device that detaches itself once nothing uses
/// it any more (LO_FLAGS_AUTOCLEAR). Returns the device's number and an open fd
/// of it: keep that open until the device is mounted, or it goes at once.
pub fn loop_attach(file: BorrowedFd<'_>) -> io::Result<(u32, std::os::fd::OwnedFd)> {
    use rustix::fs::{Mode, OFlags, open};
    let control = open(
        "/dev/loop-control",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Another process may take the free device between asking and configuring.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let device = open(
            format!("/dev/loop{n}").as_str(),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut info = zeroed_loop_info();
        info.flags = LO_FLAGS_AUTOCLEAR;
        let config = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info,
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config` through the
        // pointer, a live local with the kernel's layout.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) } == 0 {
            return Ok((n as u32, device));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EBUSY))
}

/// The (device, inode) of the file behind an open loop device.
pub fn loop_backing(device: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut info = zeroed_loop_info();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` through the
    // pointer, a live local with the kernel's layout.
    if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_GET_STATUS64, &mut info) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((info.device, info.inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_refuses_a_process_with_other_threads() {
        // The test harness runs this on a thread of its own: not single-threaded.
        let err = spawn(|_| 0).unwrap_err();
        assert!(err.to_string().contains("other threads"), "{err}");
    }

    const PANIC_CHILD_ENV: &str = "FVM_TEST_PANICKING_CHILD";

    /// Run in a process of its own by the test below: one test, so the
    /// harness's only other thread is its main one, waiting for this test.
    #[test]
    fn panicking_child() {
        if std::env::var_os(PANIC_CHILD_ENV).is_none() {
            return;
        }
        let pid = spawn_from_test(None, || panic!("the child panics")).unwrap();
        let (_, status) =
            rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
                .unwrap()
                .unwrap();
        // Only the parent gets here: the child never unwound into this frame.
        println!("child exit status {:?}", status.exit_status());
    }

    #[test]
    fn a_panicking_child_exits_with_101_and_never_returns_to_the_parent() {
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("{module}::panicking_child"),
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(PANIC_CHILD_ENV, "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        // Once: a child that went on in the parent's frames would report too.
        assert_eq!(stdout.matches("child exit status").count(), 1, "{stdout}");
        assert!(stdout.contains("child exit status Some(101)"), "{stdout}");
    }

    #[test]
    fn a_test_child_exits_with_what_it_returns() {
        let pid = spawn_from_test(None, || 7).unwrap();
        let (_, status) =
            rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
                .unwrap()
                .unwrap();
        assert_eq!(status.exit_status(), Some(7));
    }
}

/// `struct mount_attr` of mount_setattr(2) (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Set the `MOUNT_ATTR_*` bits `set` (read-only, nosuid, nodev, noexec) on the
/// mount `mnt` is the root of (an attached mount or a detached tree from
/// `open_tree`/`fsmount`), and with `recursive` on every mount below it too.
/// By descriptor only (`AT_EMPTY_PATH`): no path is looked up.
pub fn mount_setattr(
    mnt: BorrowedFd<'_>,
    recursive: bool,
    set: rustix::mount::MountAttrFlags,
) -> io::Result<()> {
    use rustix::mount::MountAttrFlags as A;
    // An atime choice replaces the mount's one: the kernel wants the whole
    // atime field cleared with it.
    let atime = A::MOUNT_ATTR_NOATIME | A::MOUNT_ATTR_STRICTATIME;
    let attr = MountAttr {
        attr_set: u64::from(set.bits()),
        attr_clr: if set.intersects(atime) {
            u64::from(A::MOUNT_ATTR__ATIME.bits())
        } else {
            0
        },
        ..MountAttr::default()
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: `mnt` is an open descriptor borrowed for the whole call; the path
    // is a NUL-terminated empty string that lives for the call; `attr` is a
    // live, `repr(C)` `struct mount_attr` whose exact size is passed, and the
    // kernel only reads it. No memory of ours is written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

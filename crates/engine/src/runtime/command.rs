//! Start one command inside the VM's namespaces: a new session, optionally on a pty
//! from the VM's own devpts, then exec.
//!
//! Used by a VM's init (a command given to a stopped VM) and by `fvm` after it
//! entered a running VM. Exec failures travel back over a close-on-exec pipe, so
//! "command not found" (127) and "cannot execute" (126) are told apart from the
//! command's own exit status.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::process::Pid;

use super::stdio::{Pipes, StdioPlan, Stream, TtyMode};
use crate::confine::Confinement;
use crate::limits::ProcessLimits;
use crate::os::sys;

/// The PATH used when the environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// argv[0] is looked up in PATH unless it contains a '/'.
    Argv(Vec<String>),
    /// The user's login shell from the VM's /etc/passwd, started as a login shell.
    LoginShell,
}

#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: Program,
    /// Set on top of the clean environment every command starts from (see
    /// [`base_env`]); a later entry wins over an earlier one of the same name.
    pub env: Vec<(String, String)>,
    /// Working directory; `/` is used if it does not exist in the VM, and the
    /// user's home when empty.
    pub cwd: PathBuf,
    /// Whether the command gets a pty from the VM's devpts (see [`super::stdio`]).
    pub tty: TtyMode,
    /// Per-process limits from the VM's policy; the engine fills them in.
    pub limits: ProcessLimits,
    /// Capabilities and seccomp; the engine fills them in from the VM's policy.
    pub confine: Confinement,
    /// Who runs the command: a name or `UID[:GID]` of the VM's own /etc/passwd;
    /// root when none.
    pub user: Option<String>,
    /// What an OCI process asks for besides (its exact ids, umask,
    /// capabilities, rlimits); nothing for fvm's own commands.
    pub process: ProcessSetup,
}

/// An OCI process's own settings, applied in the forked child before exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSetup {
    /// Run as exactly these ids, not looked up in the VM's /etc/passwd (it
    /// wins over `user`): uid, gid and the supplementary groups.
    pub ids: Option<(u32, u32, Vec<u32>)>,
    pub umask: Option<u32>,
    /// The capability sets the process asks for: what it gets is each of
    /// them within what the VM's confinement leaves (never more).
    pub capabilities: Option<Capabilities>,
    /// Set before the VM's own per-process limits, which win where both are.
    pub rlimits: Vec<(rustix::process::Resource, u64, u64)>,
}

/// The five capability sets of an OCI process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub bounding: rustix::thread::CapabilitySet,
    pub effective: rustix::thread::CapabilitySet,
    pub permitted: rustix::thread::CapabilitySet,
    pub inheritable: rustix::thread::CapabilitySet,
    pub ambient: rustix::thread::CapabilitySet,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{program}: command not found")]
    NotFound { program: String },
    #[error("cannot execute {program}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot start a process for {program}")]
    Fork {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid argument or environment (it contains a NUL byte)")]
    Nul,
    #[error(
        "{program} did not start within {} s (a process of the vm may have stopped it); gave up",
        .after.as_secs()
    )]
    Stalled {
        program: String,
        after: std::time::Duration,
    },
    #[error("no user {} in the vm's /etc/passwd", crate::os::quote::text(.user))]
    NoUser { user: String },
}

/// How long a new process may take to reach `exec`. In a running VM it is in the
/// VM's pid namespace from its first instruction, so a process of the VM can stop
/// it; the command that waits for it must not wait for ever.
const EXEC_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

impl SpawnError {
    /// The exit status a shell would give.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => 127,
            SpawnError::Exec { .. } => 126,
            _ => 125,
        }
    }

    pub fn from_errno(program: String, errno: i32) -> SpawnError {
        if errno == libc::ENOENT {
            SpawnError::NotFound { program }
        } else {
            SpawnError::Exec {
                program,
                source: io::Error::from_raw_os_error(errno),
            }
        }
    }
}

/// A command resolved in the VM's view, ready to fork and exec.
struct Resolved {
    program: String,
    candidates: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    limits: ProcessLimits,
    confine: Confinement,
    /// The ids to switch to before exec; none for root as fvm runs.
    ids: Option<Ids>,
    process: ProcessSetup,
}

/// A user's ids: uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ids {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

fn cstr(s: impl Into<Vec<u8>>) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul)
}

impl CommandSpec {
    pub fn display(&self) -> String {
        match &self.program {
            Program::Argv(a) => a.first().cloned().unwrap_or_default(),
            Program::LoginShell => "login shell".into(),
        }
    }

    /// Resolve against the filesystem the caller sees now (the VM's).
    fn resolve(&self) -> Result<Resolved, SpawnError> {
        let passwd = crate::os::files::read_regular(Path::new("/etc/passwd")).unwrap_or_default();
        let (account, ids) = match (&self.process.ids, &self.user) {
            (Some((uid, gid, groups)), _) => {
                // Named as the VM's files name it, if they do.
                let account = Account::find(&passwd, &uid.to_string()).unwrap_or(Account {
                    name: uid.to_string(),
                    uid: *uid,
                    gid: *gid,
                    home: "/".into(),
                    shell: "/bin/sh".into(),
                });
                let ids = Ids {
                    uid: *uid,
                    gid: *gid,
                    groups: groups.clone(),
                };
                (account, Some(ids))
            }
            (None, None) => (Account::root(&passwd), None),
            (None, Some(user)) => {
                let group =
                    crate::os::files::read_regular(Path::new("/etc/group")).unwrap_or_default();
                let account = Account::find(&passwd, user)
                    .ok_or_else(|| SpawnError::NoUser { user: user.clone() })?;
                let ids = account.ids(&group);
                (account, Some(ids))
            }
        };
        let mut env = base_env(&account);
        for (k, v) in &self.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        let (program, argv0, argv) = match &self.program {
            Program::Argv(a) => {
                let first = a.first().cloned().unwrap_or_default();
                (first.clone(), first, a.clone())
            }
            Program::LoginShell => {
                let shell = account.shell.clone();
                let base = Path::new(&shell)
                    .file_name()
                    .map_or("sh".into(), |b| b.to_string_lossy().into_owned());
                (shell.clone(), shell, vec![format!("-{base}")])
            }
        };
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        let candidates = if argv0.contains('/') {
            vec![cstr(argv0.as_str())?]
        } else {
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstr(format!("{d}/{argv0}")))
                .collect::<Result<_, _>>()?
        };
        let cwd = if self.cwd.as_os_str().is_empty() && Path::new(&account.home).is_dir() {
            account.home.as_bytes().to_vec()
        } else if self.cwd.is_dir() {
            self.cwd.as_os_str().as_bytes().to_vec()
        } else {
            b"/".to_vec()
        };
        Ok(Resolved {
            program,
            candidates,
            argv: argv.into_iter().map(cstr).collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|(k, v)| cstr(format!("{k}={v}")))
                .collect::<Result<_, _>>()?,
            cwd: cstr(cwd)?,
            limits: self.limits,
            confine: self.confine.clone(),
            ids,
            process: self.process.clone(),
        })
    }
}

/// An account of the VM's /etc/passwd, parsed by hand: NSS would load libraries
/// from the VM's own filesystem into this privileged process. The files are the
/// VM's, so they are read like any hostile file: no symlink, no fifo, at most
/// 1 MiB (see [`crate::os::files::read_regular`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    /// `/` where the entry has no absolute home (`/root` for root).
    home: String,
    /// `/bin/sh` where the entry has no absolute shell.
    shell: String,
}

impl Account {
    /// One `name:x:uid:gid:gecos:home:shell` line.
    fn parse(line: &str) -> Option<Account> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0].is_empty() {
            return None;
        }
        let uid = f[2].parse().ok()?;
        let absolute = |s: &str, or: &str| {
            if s.starts_with('/') {
                s.to_owned()
            } else {
                or.to_owned()
            }
        };
        Some(Account {
            name: f[0].to_owned(),
            uid,
            gid: f[3].parse().ok()?,
            home: absolute(f[5], if uid == 0 { "/root" } else { "/" }),
            shell: absolute(f[6], "/bin/sh"),
        })
    }

    /// root's entry (`/root` and `/bin/sh` where the VM has none).
    fn root(passwd: &str) -> Account {
        passwd
            .lines()
            .filter_map(Account::parse)
            .find(|a| a.uid == 0)
            .map(|a| Account {
                name: "root".into(),
                ..a
            })
            .unwrap_or_else(|| Account {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
                shell: "/bin/sh".into(),
            })
    }

    /// `user` as `--user` names it: a name, or `UID[:GID]` (the first entry with
    /// that uid; GID replaces its primary group). None if the VM has no such user.
    fn find(passwd: &str, user: &str) -> Option<Account> {
        let mut entries = passwd.lines().filter_map(Account::parse);
        let (who, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g.parse::<u32>().ok()?)),
            None => (user, None),
        };
        let found = match who.parse::<u32>() {
            Ok(uid) => entries.find(|a| a.uid == uid),
            Err(_) => entries.find(|a| a.name == who),
        }?;
        Some(Account {
            gid: gid.unwrap_or(found.gid),
            ..found
        })
    }

    /// The ids to run as: the primary group and every group of the VM's
    /// /etc/group that lists the user by name (`name:x:gid:user1,user2`), at most
    /// the kernel's NGROUPS_MAX of them (the file is the VM's to fill).
    fn ids(&self, group: &str) -> Ids {
        const NGROUPS_MAX: usize = 65536;
        let mut groups = vec![self.gid];
        let mut seen = std::collections::HashSet::from([self.gid]);
        for line in group.lines() {
            if groups.len() >= NGROUPS_MAX {
                break;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                continue;
            }
            let Ok(gid) = f[2].parse::<u32>() else {
                continue;
            };
            if f[3].split(',').any(|m| m == self.name) && seen.insert(gid) {
                groups.push(gid);
            }
        }
        Ids {
            uid: self.uid,
            gid: self.gid,
            groups,
        }
    }
}

/// The environment every command in a VM starts from, as `sudo`, `su -` and
/// `podman` give one: nothing of the caller's (whose tokens and secrets
/// untrusted code must not get), only what the VM's own files say. PATH, HOME,
/// USER, LOGNAME and SHELL of the account, and the locale (LANG, LANGUAGE, LC_*) from
/// the VM's /etc/default/locale or /etc/locale.conf. The caller adds TERM, the
/// VM's name and what the user asked for with `--env`. Read inside the VM, by
/// the process that is about to fork the command.
fn base_env(account: &Account) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".into(), account.home.clone()),
        ("USER".into(), account.name.clone()),
        ("LOGNAME".into(), account.name.clone()),
        ("SHELL".into(), account.shell.clone()),
    ];
    for file in ["/etc/default/locale", "/etc/locale.conf"] {
        let Ok(text) = crate::os::files::read_regular_max(Path::new(file), 64 << 10) else {
            continue;
        };
        env.extend(locale_vars(&text));
        break;
    }
    env
}

/// `NAME=value` lines of a locale file whose name is a locale variable; quotes
/// around the value are dropped.
fn locale_vars(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once('=')?;
            let is_locale = k == "LANG"
                || k == "LANGUAGE"
                || k.strip_prefix("LC_").is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                });
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (is_locale && !v.contains(['\0', '"', '\'', '$', '`']))
                .then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Fork and exec `spec` in the current namespaces, with its fds 0-2 as `stdio`
/// says. `tty` is the pty slave, made the controlling terminal if given. `cgroup`
/// is a cgroup v2 directory to create the child in. `before_exec` runs in the
/// child first (joining the VM's cgroup on v1, for example).
pub fn spawn(
    spec: &CommandSpec,
    stdio: &StdioPlan,
    pipes: Pipes<'_>,
    tty: Option<&OwnedFd>,
    cgroup: Option<BorrowedFd<'_>>,
    before_exec: &dyn Fn() -> io::Result<()>,
) -> Result<Pid, SpawnError> {
    spawn_with(spec, 0, stdio, pipes, tty, cgroup, before_exec)
}

/// [`spawn`] for a VM's service or detached command, from the VM's service
/// starter (see `runtime::services`): a child of the VM's init (CLONE_PARENT),
/// which reaps it and sees how it ended.
pub fn spawn_service(
    spec: &CommandSpec,
    stdio: &StdioPlan,
    pipes: Pipes<'_>,
) -> Result<Pid, SpawnError> {
    spawn_with(
        spec,
        libc::CLONE_PARENT as u64,
        stdio,
        pipes,
        None,
        None,
        &|| Ok(()),
    )
}

fn spawn_with(
    spec: &CommandSpec,
    flags: u64,
    stdio: &StdioPlan,
    pipes: Pipes<'_>,
    tty: Option<&OwnedFd>,
    cgroup: Option<BorrowedFd<'_>>,
    before_exec: &dyn Fn() -> io::Result<()>,
) -> Result<Pid, SpawnError> {
    let r = spec.resolve()?;
    let fork_err = |source| SpawnError::Fork {
        program: r.program.clone(),
        source,
    };
    let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| fork_err(e.into()))?;
    let pid = sys::spawn_in(flags, cgroup, |_| {
        let errno = exec_child(&r, stdio, pipes, tty, before_exec);
        let _ = rustix::io::write(&err_write, &errno.to_ne_bytes());
        if errno == libc::ENOENT { 127 } else { 126 }
    })
    .map_err(fork_err)?;
    drop(err_write);
    // Readable once the child exec'd (or died), or its exec failed.
    if !super::stop::wait_readable(&err_read, EXEC_DEADLINE).unwrap_or(true) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        return Err(SpawnError::Stalled {
            program: r.program,
            after: EXEC_DEADLINE,
        });
    }
    let mut buf = [0u8; 4];
    let mut f = std::fs::File::from(err_read);
    match f.read(&mut buf) {
        Ok(4) => {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            Err(SpawnError::from_errno(r.program, i32::from_ne_bytes(buf)))
        }
        _ => Ok(pid),
    }
}

/// In the forked child: returns the errno of the failure (exec returned).
fn exec_child(
    r: &Resolved,
    stdio: &StdioPlan,
    pipes: Pipes<'_>,
    tty: Option<&OwnedFd>,
    before_exec: &dyn Fn() -> io::Result<()>,
) -> i32 {
    let errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    // Until exec this is a copy of a privileged fvm process inside the VM's pid
    // namespace: not dumpable, so processes of the VM without CAP_SYS_PTRACE can't
    // attach to it. exec makes the command dumpable again as usual.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    if let Err(e) = before_exec() {
        return errno(e);
    }
    // A new session: the command can't reach the terminal of whoever ran fvm.
    if let Err(e) = rustix::process::setsid() {
        return e.raw_os_error();
    }
    if let Some(slave) = tty
        && let Err(e) = rustix::process::ioctl_tiocsctty(slave)
    {
        return e.raw_os_error();
    }
    for (target, stream) in stdio.streams.iter().enumerate() {
        let source = match (stream, tty) {
            (Stream::Pty, Some(slave)) => slave.as_fd(),
            (Stream::Pipe, _) => match pipes.0[target] {
                Some(fd) => fd,
                None => return libc::EBADF,
            },
            _ => continue,
        };
        if let Err(e) = sys::dup_onto_stdio(source, target) {
            return errno(e);
        }
    }
    // Nothing else of fvm's (cgroup files, the init's pidfd, the pty master)
    // stays open in the VM past exec. Marked, not closed: closing would leave
    // this process's owners of those fds naming numbers that may be reused.
    if let Err(e) = sys::close_on_exec_beyond_stdio() {
        return errno(e);
    }
    if rustix::process::chdir(r.cwd.as_c_str()).is_err() {
        let _ = rustix::process::chdir(c"/");
    }
    // An OCI process's rlimits, then the policy's rlimits and nice value (and
    // an OOM score of 0), last, so that nothing of fvm's own work above counts
    // against them.
    for &(resource, soft, hard) in &r.process.rlimits {
        use rustix::process::{Rlimit, getrlimit, setrlimit};
        let limit = Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        };
        let set = match setrlimit(resource, limit) {
            // Above what this host lets even root raise it to (a hard limit
            // fvm itself runs under): as high as it goes.
            Err(rustix::io::Errno::PERM) => {
                let most = getrlimit(resource).maximum;
                let clamp = |v: u64| most.map_or(v, |m| v.min(m));
                setrlimit(
                    resource,
                    Rlimit {
                        current: Some(clamp(soft)),
                        maximum: Some(clamp(hard)),
                    },
                )
            }
            other => other,
        };
        if let Err(e) = set {
            return e.raw_os_error();
        }
    }
    if let Err(e) = r.limits.apply() {
        return errno(e);
    }
    // Then the seccomp filter and the capability drop (see `confine`): after the
    // rlimits, whose hard limits may need CAP_SYS_RESOURCE to set.
    if let Err(e) = r.confine.apply() {
        return errno(e);
    }
    // An OCI process's bounding set, within what is left.
    if let Some(caps) = &r.process.capabilities
        && let Err(e) = crate::confine::caps::limit_bounding(caps.bounding)
    {
        return errno(e);
    }
    // Last, the user's ids (root keeps SETUID and SETGID for this): groups
    // first, then the gid, then the uid, which also clears every capability
    // (but for an OCI process's own, kept across it and set below).
    if r.process.capabilities.is_some()
        && let Err(e) = rustix::thread::set_keep_capabilities(true)
    {
        return e.raw_os_error();
    }
    if let Some(ids) = &r.ids
        && let Err(e) = switch_ids(ids)
    {
        return errno(e);
    }
    if let Some(caps) = &r.process.capabilities
        && let Err(e) = crate::confine::caps::narrow(
            caps.effective,
            caps.permitted,
            caps.inheritable,
            caps.ambient,
        )
    {
        return errno(e);
    }
    if let Some(mask) = r.process.umask {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask & 0o777));
    }
    if let Err(e) = sys::reset_signals_for_exec() {
        return errno(e);
    }
    let mut result = libc::ENOENT;
    for c in &r.candidates {
        let e = sys::execve(c, &r.argv, &r.env);
        match e.raw_os_error() {
            // Keep looking along PATH; remember "found but not executable".
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => result = libc::EACCES,
            Some(n) => return n,
            None => return libc::EIO,
        }
    }
    result
}

/// Become `ids` for good (real, effective and saved): in the forked child, which
/// has one thread, so the thread calls change the whole process.
fn switch_ids(ids: &Ids) -> io::Result<()> {
    use rustix::process::{Gid, Uid};
    let groups: Vec<Gid> = ids.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    rustix::thread::set_thread_groups(&groups)?;
    let gid = Gid::from_raw(ids.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    let uid = Uid::from_raw(ids.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    Ok(())
}

/// Open a new pty pair from the devpts of the mount namespace we are in: the
/// master for fvm, the slave for the command.
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::fs::{FileType, Mode, OFlags};
    use rustix::pty::OpenptFlags;
    // The VM can change its own /dev; open the devpts multiplexer itself without
    // following links or blocking, and check it is the ptmx device (5:2).
    let master = rustix::fs::open(
        "/dev/pts/ptmx",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&master)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::CharacterDevice
        || st.st_rdev != rustix::fs::makedev(5, 2)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "/dev/pts/ptmx in the vm is not the pty multiplexer",
        ));
    }
    rustix::fs::fcntl_setfl(&master, OFlags::RDWR)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    // TIOCGPTPEER opens the slave through the master's own devpts instance, with no
    // path lookup that could be redirected.
    let slave = rustix::pty::ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?;
    Ok((master, slave))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            program: Program::Argv(argv.iter().map(|s| s.to_string()).collect()),
            env: vec![("PATH".into(), "/nonexistent:/usr/bin:/bin".into())],
            cwd: "/nonexistent-dir".into(),
            tty: TtyMode::Never,
            limits: ProcessLimits::default(),
            confine: Confinement::none(),
            user: None,
            process: Default::default(),
        }
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        web:x:1001:1001:Web:/home/web:/bin/zsh\n\
        nohome:x:1002:1002:::\n";

    #[test]
    fn users_are_found_by_name_or_uid_and_gid() {
        let web = Account::find(PASSWD, "web").unwrap();
        assert_eq!((web.uid, web.gid), (1001, 1001));
        assert_eq!(
            (web.home.as_str(), web.shell.as_str()),
            ("/home/web", "/bin/zsh")
        );
        assert_eq!(Account::find(PASSWD, "1001").unwrap().name, "web");
        let as_group = Account::find(PASSWD, "1001:5").unwrap();
        assert_eq!((as_group.uid, as_group.gid), (1001, 5));
        let odd = Account::find(PASSWD, "nohome").unwrap();
        assert_eq!((odd.home.as_str(), odd.shell.as_str()), ("/", "/bin/sh"));
        for unknown in ["nobody-here", "4242", "web:x", "", "broken line"] {
            assert_eq!(Account::find(PASSWD, unknown), None, "{unknown}");
        }
        assert_eq!(Account::root(PASSWD).shell, "/bin/bash");
        assert_eq!(Account::root("").home, "/root");
    }

    #[test]
    fn supplementary_groups_come_from_the_group_file() {
        let web = Account::find(PASSWD, "web").unwrap();
        let ids =
            web.ids("sudo:x:27:alice,web\nweb:x:1001:\nbad\nstaff:x:50:webx\naudio:x:29:web\n");
        assert_eq!(ids.groups, vec![1001, 27, 29]);
    }

    #[test]
    fn a_huge_group_file_gives_at_most_ngroups_max_groups() {
        let web = Account::find(PASSWD, "web").unwrap();
        let group: String = (0..70_000).map(|g| format!("g{g}:x:{g}:web\n")).collect();
        let ids = web.ids(&group);
        assert_eq!(ids.groups.len(), 65536);
        assert_eq!(ids.groups[0], 1001);
    }

    #[test]
    fn an_unknown_user_is_one_line() {
        let mut s = spec(&["true"]);
        s.user = Some("ghost\nx".into());
        let err = s.resolve().err().unwrap();
        assert_eq!(err.exit_code(), 125);
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn path_lookup_and_cwd_fallback() {
        let r = spec(&["true"]).resolve().unwrap();
        assert_eq!(r.candidates[0].to_str().unwrap(), "/nonexistent/true");
        assert_eq!(r.candidates.len(), 3);
        assert_eq!(r.cwd.to_str().unwrap(), "/");
        let r = spec(&["./x", "a"]).resolve().unwrap();
        assert_eq!(r.candidates.len(), 1);
        assert_eq!(r.argv.len(), 2);
    }

    #[test]
    fn nul_bytes_are_refused() {
        assert!(matches!(spec(&["a\0b"]).resolve(), Err(SpawnError::Nul)));
    }

    #[test]
    fn exec_errors_map_to_shell_codes() {
        assert_eq!(
            SpawnError::from_errno("x".into(), libc::ENOENT).exit_code(),
            127
        );
        assert_eq!(
            SpawnError::from_errno("x".into(), libc::EACCES).exit_code(),
            126
        );
    }
}

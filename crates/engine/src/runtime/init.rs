//! PID 1 of a VM: assembles the VM, then reaps zombies and forwards signals.
//!
//! This is the process `clone` created in the VM's new namespaces. It is a forked
//! copy of the `fvm` command and never execs: exec would load the dynamic loader
//! and libc from the VM's own (writable) filesystem into a fully privileged process.
//! After setup it holds no file descriptor that reaches outside the VM but one:
//! a background VM's logs directory in the store (see [`crate::logs`]), written
//! beneath that descriptor only. It also keeps the VM's services (see
//! [`super::services`]).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags};
use rustix::process::Pid;

use super::channel::{Channel, Exit, Msg};
use super::command::{self, SpawnError};
use super::control::{self, ControlPipe};
use super::launch::LaunchSpec;
use super::services;
use super::stdio::{Pipes, StdioPlan};
use crate::cgroup;
use crate::logs::Writer;
use crate::mounts::apply;
use crate::os::{quote, sys};
use crate::store::StartMode;

/// Signals the init passes on to every process of the VM.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// How long processes get between the SIGTERM of a timeout and the SIGKILL.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// Run the VM's init. Never returns.
pub(super) fn run(
    forked: &sys::Forked,
    spec: &LaunchSpec,
    pipes: Pipes<'_>,
    chan: Channel,
    cgroup: cgroup::Entry,
    control: ControlPipe,
) -> ! {
    let started = Instant::now();
    let (signals, pipes, writer) = match setup(forked, spec, pipes, &chan, cgroup, &control) {
        Ok(s) => s,
        Err(error) => {
            let _ = chan.send(&Msg::Failed { error }, None);
            sys::exit_now(1);
        }
    };
    let _ = chan.send(&Msg::Ready, None);
    // Wait until fvm has recorded this init in the VM's state. If fvm dies first,
    // the channel reads end-of-file and the VM ends here: nothing would know of it.
    match chan.recv() {
        Ok(Some((Msg::Go, _))) => {}
        _ => sys::exit_now(1),
    }
    let mut init = Init {
        mode: spec.mode,
        command: None,
        chan: Some(chan),
        stopping: false,
        control,
        started,
        deadline: spec.timeout.map(|s| started + Duration::from_secs(s)),
        kill_at: None,
        timed_out: false,
        outside: None,
        services: services::Supervisor::new(&[], None, None),
        pending_signal: None,
        end_with_caller: spec.end_with_caller,
        exit_code: 0,
    };
    // A parked command's pty is opened (and its master sent) before the park:
    // whoever parked it hands the master on and goes.
    let mut pty = None;
    if spec.parked && spec.stdio.pty() {
        pty = Some(init.open_pty());
    }
    if spec.parked {
        init.wait_for_start(&signals);
    }
    if let Some(cmd) = &spec.command {
        if pty.is_none() && spec.stdio.pty() {
            pty = Some(init.open_pty());
        }
        init.start_command(cmd, &spec.stdio, pipes, pty, spec.parked);
    }
    // A VM started to run (`fvm start`) starts its services, through a starter
    // forked now, while the init still has the capabilities to confine them.
    if init.mode == StartMode::Background {
        let starter = services::Starter::fork(spec.service_limits, &spec.service_confine).ok();
        init.services = services::Supervisor::new(&spec.services, starter, writer);
    } else {
        drop(writer);
    }
    // From here the init only reaps, forwards signals and keeps the timeout: none
    // of that needs more than the VM's own capabilities, and a process of the VM
    // that took it over would get no more than root in the VM has.
    if spec.confined && crate::confine::caps::drop_to_kept().is_err() {
        sys::exit_now(1);
    }
    if init.mode == StartMode::Background {
        init.chan = None;
    }
    init.services.start_all();
    init.serve(&signals)
}

/// What [`setup`] leaves the init: its signals, its copies of the command's
/// pipes, and the VM's logs.
type Assembled = (SignalFd, [Option<OwnedFd>; 3], Option<Writer>);

/// Assemble the VM. Errors are one line for the user, naming the step.
fn setup(
    forked: &sys::Forked,
    spec: &LaunchSpec,
    pipes: Pipes<'_>,
    chan: &Channel,
    cgroup: cgroup::Entry,
    control: &ControlPipe,
) -> Result<Assembled, String> {
    // The command's pipe ends are fvm's (and go with everything else it had
    // open); the init takes copies of its own, to hand on and then close.
    let pipes = pipes
        .copies()
        .map_err(|e| format!("cannot copy the command's pipes: {e}"))?;
    // Everything inherited from the fvm command (lock files, the store) goes first.
    let mut keep = vec![
        rustix::stdio::stdin(),
        rustix::stdio::stdout(),
        rustix::stdio::stderr(),
        chan.as_fd(),
        control.read.as_fd(),
        control.write.as_fd(),
        control.requests.as_fd(),
        control.requests_in.as_fd(),
    ];
    keep.extend(cgroup.fds());
    keep.extend(pipes.iter().flatten().map(AsFd::as_fd));
    keep.extend(spec.netns.as_ref().map(AsFd::as_fd));
    forked
        .close_all_except(&keep)
        .map_err(|e| format!("cannot close inherited files: {e}"))?;
    // Before /sys is mounted: it shows the network namespace of its mounter.
    if let Some(netns) = &spec.netns {
        rustix::thread::move_into_link_name_space(
            netns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("cannot join the network namespace: {e}"))?;
    }
    // `ps` inside the VM shows this as PID 1, and nothing of how fvm was run
    // (its arguments, the caller's environment) is left for the VM to read.
    let _ = rustix::thread::set_name(c"fvm-init");
    sys::scrub_args_and_environment();
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    // The OOM killer's last choice in the VM (see `limits::OomScores`).
    if let Some(score) = crate::limits::OomScores::here().init {
        crate::limits::set_oom_score_adj(score)
            .map_err(|e| format!("cannot set the init's oom score: {e}"))?;
    }
    // Join the VM's cgroup before anything else runs, then make it the root of the
    // VM's cgroup namespace, so every later process is inside and sees only it.
    cgroup
        .join_self()
        .map_err(|e| format!("cannot join the vm's cgroup: {e}"))?;
    drop(cgroup);
    sys::unshare(sys::ns::CGROUP).map_err(|e| format!("cannot create a cgroup namespace: {e}"))?;
    // Leave the session of whoever ran fvm: the VM must not get its terminal.
    rustix::process::setsid().map_err(|e| format!("cannot start a new session: {e}"))?;
    tracing::debug!("init: in the vm's cgroup");
    // The VM's logs directory, the one fd of the store the init keeps (see
    // `crate::logs`): opened while the store is still in view.
    let writer = match (&spec.logs, spec.mode) {
        (Some(dir), StartMode::Background) => Some(
            Writer::open(dir).map_err(|e| format!("cannot open the vm's logs directory: {e}"))?,
        ),
        _ => None,
    };
    apply::enter_root(&spec.plan, &spec.layout).map_err(|e| crate::error_line(&e))?;
    tracing::debug!("init: root assembled");
    rustix::system::sethostname(spec.name.as_bytes())
        .map_err(|e| format!("cannot set the hostname: {e}"))?;
    if !spec.dns.is_empty() {
        write_resolv_conf(&spec.dns).map_err(|e| format!("cannot write /etc/resolv.conf: {e}"))?;
    }
    // A background VM's init has no one to talk to; nor has a parked one
    // whose command gets a pty for all of fds 0-2 (an OCI container with a
    // console socket): the caller's own stdio (an engine reading `create`'s
    // output until it closes) is let go.
    let all_pty = spec.stdio == StdioPlan::all_pty();
    if spec.mode == StartMode::Background || (spec.parked && all_pty) {
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| format!("cannot open /dev/null: {e}"))?;
        for fd in 0..=2 {
            sys::dup_onto_stdio(null.as_fd(), fd)
                .map_err(|e| format!("cannot redirect stdio: {e}"))?;
        }
    }
    let mut all = FORWARDED.to_vec();
    all.push(Signal::SIGCHLD);
    sys::catch_and_block(&all)
        .and_then(|set| {
            SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
                .map_err(Into::into)
        })
        .map_err(|e| format!("cannot set up signal handling: {e}"))
        .map(|signals| (signals, pipes, writer))
}

/// The VM's own /etc/resolv.conf (in its layer), naming `servers`. Whatever was
/// there (often a symlink into the host's /run) is replaced, not written through.
/// `/etc` is opened inside the VM's root (`RESOLVE_IN_ROOT`, no magic link of
/// `/proc`, which could name a descriptor this process holds), and the file is
/// removed and made beneath that descriptor without following a symlink.
fn write_resolv_conf(servers: &[std::net::Ipv4Addr]) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let root = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let etc = rustix::fs::openat2(
        &root,
        "etc",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    match rustix::fs::unlinkat(&etc, "resolv.conf", rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let text: String = servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect();
    let fd = rustix::fs::openat(
        &etc,
        "resolv.conf",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    std::io::Write::write_all(
        &mut std::fs::File::from(fd),
        format!("# written by fvm: the store's resolver on the bridge, or --dns\n{text}")
            .as_bytes(),
    )
}

struct Init {
    mode: StartMode,
    command: Option<Pid>,
    /// Open while someone waits for the command's exit status.
    chan: Option<Channel>,
    /// A stop signal arrived: exit once the VM is empty.
    stopping: bool,
    /// Messages from later fvm commands (see `runtime::control`).
    control: ControlPipe,
    started: Instant,
    /// When the VM's timeout runs out, if it has one.
    deadline: Option<Instant>,
    /// When the processes that ignored the timeout's SIGTERM get SIGKILL.
    kill_at: Option<Instant>,
    timed_out: bool,
    /// The first stop signal that came from outside the VM (a sender the VM's
    /// pid namespace doesn't show: `fvm stop`, the host shutting down).
    outside: Option<i32>,
    /// The VM's services and detached commands.
    services: services::Supervisor,
    /// A stop signal for the VM's other processes, sent once its services
    /// have stopped (in reverse order).
    pending_signal: Option<Signal>,
    /// See [`LaunchSpec::end_with_caller`].
    end_with_caller: bool,
    /// What the init exits with: the command's status (128 + the signal that
    /// ended it), as an OCI runtime's caller reads it from the init's exit.
    exit_code: i32,
}

impl Init {
    /// Parked (see [`LaunchSpec::parked`]): wait for the start message. A stop
    /// signal before it ends the VM, which has nothing else running.
    fn wait_for_start(&mut self, signals: &SignalFd) {
        loop {
            let mut fds = [
                PollFd::new(signals, PollFlags::IN),
                PollFd::new(&self.control.read, PollFlags::IN),
            ];
            if let Err(e) = rustix::event::poll(&mut fds, None)
                && e != rustix::io::Errno::INTR
            {
                sys::exit_now(1);
            }
            let mut started = false;
            if let Some(timeout) = control::read_messages(&self.control.read, &mut started) {
                self.deadline = timeout.map(|s| self.started + Duration::from_secs(s));
            }
            if started {
                return;
            }
            while let Ok(Some(info)) = signals.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                if !matches!(sig, Signal::SIGCHLD | Signal::SIGUSR1 | Signal::SIGUSR2) {
                    sys::exit_now(128 + sig as i32);
                }
            }
        }
    }

    /// A pty from the VM's devpts: the master goes to fvm, the slave is
    /// returned for the command.
    fn open_pty(&self) -> OwnedFd {
        match command::open_pty() {
            Ok((master, slave)) => {
                self.send(&Msg::Pty, Some(&master));
                slave
            }
            Err(e) => {
                self.send(
                    &Msg::Failed {
                        error: format!("cannot open a pty in the vm: {e}"),
                    },
                    None,
                );
                sys::exit_now(1);
            }
        }
    }

    /// Start the command; `pty` is the slave of its pty, if it has one.
    /// `parked`: nobody reads the init's channel any more (the OCI runtime's
    /// `create` has gone), so a command that can't start is also said in one
    /// line on the init's stderr, which is the container's.
    fn start_command(
        &mut self,
        cmd: &command::CommandSpec,
        stdio: &StdioPlan,
        pipes: [Option<OwnedFd>; 3],
        pty: Option<OwnedFd>,
        parked: bool,
    ) {
        match command::spawn(
            cmd,
            stdio,
            Pipes::of(&pipes),
            pty.as_ref(),
            None,
            &|| Ok(()),
        ) {
            Ok(pid) => self.command = Some(pid),
            Err(e) => {
                if parked {
                    let line = format!("fvm: {}\n", quote::line(&crate::error_line(&e)));
                    let _ = rustix::io::write(rustix::stdio::stderr(), line.as_bytes());
                }
                let msg = match e {
                    SpawnError::NoUser { user } => Msg::NoUser { user },
                    SpawnError::NotFound { program } => Msg::ExecFailed {
                        program,
                        errno: libc::ENOENT,
                    },
                    SpawnError::Exec { program, source } => Msg::ExecFailed {
                        program,
                        errno: source.raw_os_error().unwrap_or(libc::EIO),
                    },
                    other => Msg::ExecFailed {
                        program: other.to_string(),
                        errno: libc::EIO,
                    },
                };
                self.send(&msg, None);
                sys::exit_now(1);
            }
        }
        // The command has its own copies of the caller's stdio and of the relay
        // pipes; the init must not keep a pipe open (a reader would never see
        // end-of-file).
        drop(pipes);
        if let Ok(null) = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            for fd in 0..=2 {
                let _ = sys::dup_onto_stdio(null.as_fd(), fd);
            }
        }
    }

    fn send(&self, msg: &Msg, fd: Option<&OwnedFd>) {
        if let Some(chan) = &self.chan {
            let _ = chan.send(msg, fd.map(|f| f.as_fd()));
        }
    }

    /// Wait for signals and for the VM's other processes. Processes that joined the
    /// VM from outside (`fvm run` into a running VM) are not our children, so their
    /// exit raises no SIGCHLD here: while the VM should end once it is empty, the
    /// init also watches a pidfd of each of them.
    fn serve(mut self, signals: &SignalFd) -> ! {
        let mut watched: Vec<OwnedFd> = Vec::new();
        loop {
            let sources = self.services.poll_fds();
            let mut fds = vec![
                PollFd::new(signals, PollFlags::IN),
                PollFd::new(&self.control.read, PollFlags::IN),
                PollFd::new(&self.control.requests, PollFlags::IN),
            ];
            fds.extend(sources.iter().map(|(fd, _)| PollFd::new(fd, PollFlags::IN)));
            let first_watched = fds.len();
            fds.extend(watched.iter().map(|w| PollFd::new(w, PollFlags::IN)));
            // fvm sends nothing after `Go`: the channel turns readable only when
            // the fvm waiting on the command is gone.
            let caller_at = fds.len();
            let watch_caller = self.end_with_caller && !self.stopping;
            if let (true, Some(chan)) = (watch_caller, &self.chan) {
                fds.push(PollFd::from_borrowed_fd(chan.as_fd(), PollFlags::IN));
            }
            let wake = self.next_wake().map(|at| {
                let d = at.saturating_duration_since(Instant::now());
                rustix::event::Timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: i64::from(d.subsec_nanos()),
                }
            });
            if let Err(e) = rustix::event::poll(&mut fds, wake.as_ref())
                && e != rustix::io::Errno::INTR
            {
                sys::exit_now(1);
            }
            let request = !fds[2].revents().is_empty();
            let ready: Vec<services::Polled> = fds[3..first_watched]
                .iter()
                .zip(&sources)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, (_, which))| *which)
                .collect();
            let caller_gone = fds.get(caller_at).is_some_and(|f| !f.revents().is_empty());
            drop(fds);
            drop(sources);
            if caller_gone
                && matches!(
                    self.chan.as_ref().map(Channel::recv),
                    Some(Ok(None) | Err(_))
                )
            {
                self.chan = None;
                self.stopping = true;
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), Signal::SIGKILL);
            }
            if let Some(timeout) = control::read_messages(&self.control.read, &mut false) {
                self.deadline = timeout.map(|s| self.started + Duration::from_secs(s));
            }
            self.enforce_timeout();
            if request {
                self.answer_request();
            }
            self.services.ready(&ready);
            while let Ok(Some(info)) = signals.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                if sig == Signal::SIGCHLD {
                    continue;
                }
                let stop = sig != Signal::SIGUSR1 && sig != Signal::SIGUSR2;
                if stop && self.services.any_active() {
                    // The services first, in reverse order; then the rest.
                    self.services.stop_all(None);
                    self.pending_signal = Some(sig);
                } else {
                    // kill(-1) from a pid-namespace init reaches every other process of
                    // the VM, double-forked daemons included.
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), sig);
                }
                if stop {
                    self.stopping = true;
                    self.services.end();
                    // A process of the VM that signals its init shows its pid;
                    // one outside the VM's pid namespace shows as 0. Only kill()
                    // (SI_USER) counts: a process of the VM can queue a signal
                    // with any sender pid, 0 included, but only with a negative
                    // code (SI_QUEUE and the like).
                    if info.ssi_pid == 0 && info.ssi_code == libc::SI_USER {
                        self.outside.get_or_insert(sig as i32);
                    }
                }
            }
            let (no_children, command_exit) = self.reap();
            self.services.tick();
            if let Some(sig) = self.pending_signal
                && self.services.stopped()
            {
                self.pending_signal = None;
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), sig);
            }
            let ending = self.stopping || self.mode == StartMode::Command;
            let others = if no_children && (ending || command_exit.is_some()) {
                others_alive()
            } else {
                Vec::new()
            };
            if let Some((exit, cpu)) = command_exit {
                self.exit_code = exit.code();
                let last = no_children && others.is_empty();
                let timed_out = self.timed_out;
                self.send(
                    &Msg::Exited {
                        exit,
                        last,
                        timed_out,
                        outside: self.outside,
                        cpu_ms: u64::try_from(cpu.as_millis()).ok(),
                    },
                    None,
                );
                self.chan = None;
            }
            if ending && no_children && others.is_empty() {
                self.services.flush();
                sys::exit_now(self.exit_code);
            }
            watched = others;
        }
    }

    /// One request from fvm (see `runtime::control`), answered on the line it
    /// came with.
    fn answer_request(&mut self) {
        let Ok(Some((req, fds))) = self.control.requests.recv_value::<services::Request>() else {
            return;
        };
        let Some(reply) = fds.into_iter().next() else {
            return;
        };
        let answer = self.services.handle(req);
        let reply = Channel::from(reply);
        // Never wait on fvm: a reply that doesn't fit now is dropped.
        let _ = rustix::io::ioctl_fionbio(&reply, true);
        let _ = reply.send_value(&answer, &[]);
    }

    /// The next moment the timeout needs the init: the deadline, or the SIGKILL
    /// after it.
    fn next_wake(&self) -> Option<Instant> {
        let timeout = match (self.kill_at, self.timed_out) {
            (Some(at), _) => Some(at),
            (None, false) => self.deadline,
            (None, true) => None,
        };
        [timeout, self.services.next_wake()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Stop the VM once its timeout has run out: SIGTERM to every process, and
    /// SIGKILL to what is left [`TIMEOUT_GRACE`] later.
    fn enforce_timeout(&mut self) {
        let now = Instant::now();
        let everyone = nix::unistd::Pid::from_raw(-1);
        if !self.timed_out && self.deadline.is_some_and(|d| now >= d) {
            self.timed_out = true;
            self.stopping = true;
            self.kill_at = Some(now + TIMEOUT_GRACE);
            // Nothing is restarted or started any more.
            self.services.stop_all(Some(TIMEOUT_GRACE));
            self.services.end();
            let _ = nix::sys::signal::kill(everyone, Signal::SIGTERM);
        } else if self.kill_at.is_some_and(|k| now >= k) {
            self.kill_at = None;
            let _ = nix::sys::signal::kill(everyone, Signal::SIGKILL);
        }
    }

    /// Reap every exited child. Returns whether no child is left, and how the first
    /// command ended (with the CPU time it used) if it just did.
    fn reap(&mut self) -> (bool, Option<(Exit, Duration)>) {
        let mut command_exit = None;
        loop {
            match sys::reap(None, true) {
                Ok(Some(child)) => {
                    if Some(child.pid) == self.command {
                        self.command = None;
                        command_exit = Some((Exit::from_raw(child.status), child.cpu));
                    } else {
                        self.services
                            .reaped(child.pid, Exit::from_raw(child.status));
                    }
                }
                Ok(None) => return (false, command_exit),
                Err(_) => return (true, command_exit),
            }
        }
    }
}

/// Pidfds of the VM's live processes other than the init (zombies don't count).
/// The VM's own /proc lists exactly the processes of its pid namespace.
fn others_alive() -> Vec<OwnedFd> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != 1)
        .filter(|&pid| crate::os::procid::read_stat(pid).is_ok_and(|s| !s.is_gone()))
        .filter_map(|pid| {
            rustix::process::pidfd_open(Pid::from_raw(pid)?, rustix::process::PidfdFlags::empty())
                .ok()
        })
        .collect()
}

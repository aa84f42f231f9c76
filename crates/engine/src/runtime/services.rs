//! The VM's services and detached commands, kept by its init.
//!
//! The init starts the policy's services when the VM starts (`fvm start`, `run
//! -d` on a stopped VM, autostart), in order, restarts them as their `restart`
//! policy says, writes their output to the VM's logs (see [`crate::logs`]), and
//! stops them in reverse order when the VM stops. `fvm service` and `fvm run -d`
//! reach it through the request socket of `runtime::control`.
//!
//! Starting. The init drops to the VM's capabilities once the VM runs, and
//! without CAP_SYS_ADMIN it could no longer load the seccomp filter into what it
//! starts. So before it drops them it forks a *starter* (`fvm-starter`): a copy
//! of itself that keeps them, holds nothing but its line to the init, and only
//! ever starts commands the init asks for, through `runtime::command` exactly as
//! `fvm run` does (same namespaces, cgroup, rlimits, capabilities and seccomp
//! filter), plus the service's user. It starts them with CLONE_PARENT, so they
//! are the init's children: the init reaps them and sees how they ended. Like
//! the init, the starter is not dumpable; root in the VM can kill it (then no
//! service can start until the VM restarts), not use it.
//!
//! Restart back-off: a service that ends and is to be restarted waits 100 ms,
//! doubled after each restart up to 30 s; a run that lasted 10 s or more resets
//! it to 100 ms.
//!
//! A daemon that forks (its command exits 0 and leaves the daemon running) is
//! tracked by its `pidfile`: once the command has exited 0 the init waits up to
//! 10 s for the file, and from then on the process it names is the service (it
//! is the init's child once its parent is gone, so its exit status is known).
//! Without a pidfile the service ended when its command did.
//!
//! Stopping a service: SIGTERM to its process group (the command is a session
//! leader) and to the daemon of its pidfile, SIGKILL to both when its share of
//! the grace time is over, and SIGKILL to what is left of its process group once
//! its main process has ended.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

use super::channel::{Channel, Exit};
use super::command::{self, CommandSpec, Program};
use super::stdio::{Pipes, StdioPlan, Stream as StdStream, TtyMode};
use crate::confine::Confinement;
use crate::limits::ProcessLimits;
use crate::logs::{self, Entry, Lines, Stream, Writer};
use crate::store::service::{Restart, Service, ServiceName};

/// The first restart's delay, doubled after each restart.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest delay between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long resets the back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// How long the init waits for a forking daemon's pidfile.
pub const PIDFILE_WAIT: Duration = Duration::from_secs(10);
/// The grace time of a stop the init was not told one for.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How long the init waits for the starter to start a command.
pub const STARTER_DEADLINE: Duration = Duration::from_secs(10);
/// The most detached commands running at once.
pub const MAX_DETACHED: usize = 256;

/// What fvm asks the init.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// `fvm run -d`: start a command whose output goes to the logs.
    Detach {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
    },
    /// Start these services (as the policy defines them now) unless they run.
    Start {
        services: Vec<Service>,
    },
    /// Stop these services (all when empty), in reverse order.
    Stop {
        names: Vec<ServiceName>,
        grace_ms: u64,
    },
    /// Stop each (if it runs), then start it as defined here.
    Restart {
        services: Vec<Service>,
        grace_ms: u64,
    },
    /// The VM is about to be stopped with this grace time: stop the services
    /// in reverse order now.
    StopAll {
        grace_ms: u64,
    },
    Status,
}

/// What the init answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    Detached { pid: i32 },
    Done,
    Status { services: Vec<ServiceStatus> },
    Error { message: String },
}

/// Where a service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Its command exited 0; waiting for its pidfile.
    Starting,
    Running,
    Stopping,
    /// Stopped by fvm (or never started).
    Stopped,
    /// Ended with status 0, not to be restarted.
    Exited,
    /// Ended otherwise (or could not start), not to be restarted.
    Failed,
    /// Waiting to be restarted.
    Backoff,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
            ServiceState::Exited => "exited",
            ServiceState::Failed => "failed",
            ServiceState::Backoff => "backoff",
        }
    }

    /// Has (or is about to have) a process.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            ServiceState::Starting
                | ServiceState::Running
                | ServiceState::Stopping
                | ServiceState::Backoff
        )
    }
}

/// One service as `fvm service VM status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// The main process inside the VM (the daemon of its pidfile once known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub restarts: u32,
    /// When it entered this state (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// How its process last ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<Exit>,
    /// Why it could not start, if it couldn't.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the starter is asked to start.
#[derive(Debug, Serialize, Deserialize)]
struct SpawnRequest {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    user: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
enum SpawnAnswer {
    Started(i32),
    Failed(String),
}

/// The privileged process that starts commands for the init.
#[derive(Debug)]
pub(super) struct Starter {
    chan: Channel,
    pid: Pid,
}

impl Starter {
    /// Fork the starter (before the init drops its capabilities). `keep` are the
    /// init's fds the starter closes.
    pub(super) fn fork(limits: ProcessLimits, confine: &Confinement) -> std::io::Result<Starter> {
        let (ours, theirs) = Channel::pair()?;
        let pid = crate::os::sys::spawn(|forked| {
            let _ = rustix::thread::set_name(c"fvm-starter");
            let keep = [
                rustix::stdio::stdin(),
                rustix::stdio::stdout(),
                rustix::stdio::stderr(),
                theirs.as_fd(),
            ];
            if forked.close_all_except(&keep).is_err() {
                return 1;
            }
            // The init's blocked signals: a stop of the VM must end this too.
            if crate::os::sys::reset_signals_for_exec().is_err() {
                return 1;
            }
            starter_loop(&theirs, limits, confine);
            0
        })?;
        drop(theirs);
        Ok(Starter { chan: ours, pid })
    }

    fn start(&self, req: &SpawnRequest, out: &OwnedFd, err: &OwnedFd) -> Result<Pid, String> {
        self.chan
            .send_value(req, &[out.as_fd(), err.as_fd()])
            .map_err(|e| format!("the vm's service starter is gone: {e}"))?;
        // Root in the VM can stop the starter (SIGSTOP): the init must not wait
        // for it for ever (its timeout, logs and children wait with it). One that
        // doesn't answer in time is killed: no service starts until the VM
        // restarts.
        let answered = super::stop::wait_readable(&self.chan, STARTER_DEADLINE);
        if !matches!(answered, Ok(true)) {
            self.kill();
            return Err(format!(
                "the vm's service starter did not answer within {STARTER_DEADLINE:?} (stopped from inside the vm?): it was ended, no service can start until the vm restarts"
            ));
        }
        match self.chan.recv_value::<SpawnAnswer>() {
            Ok(Some((SpawnAnswer::Started(pid), _))) => {
                Pid::from_raw(pid).ok_or_else(|| "the starter returned no pid".to_owned())
            }
            Ok(Some((SpawnAnswer::Failed(e), _))) => Err(e),
            _ => Err("the vm's service starter is gone".to_owned()),
        }
    }

    fn kill(&self) {
        let _ = rustix::process::kill_process(self.pid, Signal::KILL);
    }
}

/// The starter's work: one command per request, until the init goes.
fn starter_loop(chan: &Channel, limits: ProcessLimits, confine: &Confinement) {
    while let Ok(Some((req, fds))) = chan.recv_value::<SpawnRequest>() {
        let answer = if fds.len() != 2 {
            SpawnAnswer::Failed("no output pipes".into())
        } else {
            let spec = CommandSpec {
                program: Program::Argv(req.argv),
                env: req.env,
                cwd: req.cwd,
                tty: TtyMode::Never,
                limits,
                confine: confine.clone(),
                user: req.user,
                process: Default::default(),
            };
            // stdin is the init's /dev/null.
            let stdio = StdioPlan {
                streams: [StdStream::Inherit, StdStream::Pipe, StdStream::Pipe],
            };
            let pipes = Pipes([None, Some(fds[0].as_fd()), Some(fds[1].as_fd())]);
            match command::spawn_service(&spec, &stdio, pipes) {
                Ok(pid) => SpawnAnswer::Started(pid.as_raw_nonzero().get()),
                Err(e) => SpawnAnswer::Failed(crate::error_line(&e)),
            }
        };
        drop(fds);
        if chan.send_value(&answer, &[]).is_err() {
            return;
        }
    }
}

/// One output pipe of a process the init started.
#[derive(Debug)]
struct Output {
    fd: OwnedFd,
    stream: Stream,
    lines: Lines,
}

impl Output {
    /// Read what is there (one read); false at end of file.
    fn read(&mut self, source: &str, pid: Option<i32>, writer: &mut Option<Writer>) -> bool {
        self.read_some(source, pid, writer) != Read::Closed
    }

    /// One read: whether it got data, found nothing yet, or found the end.
    fn read_some(&mut self, source: &str, pid: Option<i32>, writer: &mut Option<Writer>) -> Read {
        let mut buf = vec![0u8; 64 << 10];
        let (open, got) = match rustix::io::read(&self.fd, &mut buf) {
            Ok(0) => (false, 0),
            Ok(n) => (true, n),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return Read::Nothing,
            Err(_) => (false, 0),
        };
        // The lines of this read, written together (cut lines are copied out).
        let mut lines: Vec<Vec<u8>> = Vec::new();
        self.lines
            .feed(&buf[..got], &mut |l| lines.push(l.to_vec()));
        if !open {
            self.lines.finish(&mut |l| lines.push(l.to_vec()));
        }
        if let Some(w) = writer {
            let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            w.write_lines(source, pid, self.stream, &refs);
        }
        if open { Read::Data } else { Read::Closed }
    }

    /// Read what is left, until the end or nothing more is there now (at most
    /// a few MiB: the init is about to exit).
    fn drain(&mut self, source: &str, pid: Option<i32>, writer: &mut Option<Writer>) {
        for _ in 0..64 {
            if self.read_some(source, pid, writer) != Read::Data {
                return;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Data,
    Nothing,
    Closed,
}

fn log(writer: &mut Option<Writer>, source: &str, pid: Option<i32>, stream: Stream, line: &[u8]) {
    if let Some(w) = writer {
        w.write(&Entry::now(source, pid, stream, line));
    }
}

/// Two pipes: the init's read ends and the ends the command gets.
fn pipes(source: &str) -> Result<([Output; 2], [OwnedFd; 2]), String> {
    let make = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("cannot make pipes for {source}: {e}"))
    };
    let (out_r, out_w) = make()?;
    let (err_r, err_w) = make()?;
    for fd in [&out_r, &err_r] {
        let _ = rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK);
    }
    let output = |fd, stream| Output {
        fd,
        stream,
        lines: Lines::default(),
    };
    Ok((
        [output(out_r, Stream::Stdout), output(err_r, Stream::Stderr)],
        [out_w, err_w],
    ))
}

#[derive(Debug)]
struct Svc {
    def: Service,
    state: ServiceState,
    /// The command's process (a session and process group leader).
    pid: Option<Pid>,
    /// The daemon its pidfile named, with a pidfd to see it end.
    daemon: Option<(Pid, OwnedFd)>,
    outputs: Vec<Output>,
    restarts: u32,
    /// Restarts since the last long run: the back-off's exponent.
    backoff: u32,
    since: SystemTime,
    started: Instant,
    last_exit: Option<Exit>,
    error: Option<String>,
    /// When to restart it (backoff), to SIGKILL it (stopping), or to give up on
    /// its pidfile (starting).
    at: Option<Instant>,
    /// Started again once stopped (`fvm service restart`).
    then_start: Option<Service>,
}

impl Svc {
    fn new(def: Service) -> Svc {
        Svc {
            def,
            state: ServiceState::Stopped,
            pid: None,
            daemon: None,
            outputs: Vec::new(),
            restarts: 0,
            backoff: 0,
            since: SystemTime::now(),
            started: Instant::now(),
            last_exit: None,
            error: None,
            at: None,
            then_start: None,
        }
    }

    fn set(&mut self, state: ServiceState) {
        self.state = state;
        self.since = SystemTime::now();
    }

    fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.def.name.to_string(),
            state: self.state,
            pid: self
                .daemon
                .as_ref()
                .map(|(p, _)| *p)
                .or(self.pid)
                .map(|p| p.as_raw_nonzero().get()),
            restarts: self.restarts,
            since: Some(humantime::format_rfc3339_seconds(self.since).to_string()),
            last_exit: self.last_exit,
            error: self.error.clone(),
        }
    }

    /// Signal the service: its process group, and its daemon.
    /// Once to each process: its group if it leads one (a shell would run
    /// its trap once per signal), else itself.
    fn signal(&self, sig: Signal) {
        let daemon = self.daemon.as_ref().map(|(p, _)| *p);
        for pid in [self.pid, daemon].into_iter().flatten() {
            if rustix::process::kill_process_group(pid, sig).is_err() {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    }

    fn alive(&self) -> bool {
        self.pid.is_some() || self.daemon.is_some()
    }
}

#[derive(Debug)]
struct Detached {
    pid: Option<Pid>,
    shown: i32,
    outputs: Vec<Output>,
    /// How it ended, once it has.
    exit: Option<Exit>,
}

/// The init's table of services and detached commands.
#[derive(Debug)]
pub(super) struct Supervisor {
    services: Vec<Svc>,
    detached: Vec<Detached>,
    starter: Option<Starter>,
    writer: Option<Writer>,
    /// Services left to stop, last first (a stop of several, or of the VM).
    stop_queue: Vec<usize>,
    /// Each one's share of the grace time.
    stop_share: Duration,
    /// The whole VM stops: nothing is restarted or started any more.
    vm_stopping: bool,
    dirty: bool,
}

/// Where a polled fd leads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Polled {
    ServiceOutput(usize, usize),
    DetachedOutput(usize, usize),
    Daemon(usize),
}

impl Supervisor {
    pub(super) fn new(
        services: &[Service],
        starter: Option<Starter>,
        writer: Option<Writer>,
    ) -> Supervisor {
        Supervisor {
            services: services.iter().cloned().map(Svc::new).collect(),
            detached: Vec::new(),
            starter,
            writer,
            stop_queue: Vec::new(),
            stop_share: DEFAULT_GRACE,
            vm_stopping: false,
            dirty: true,
        }
    }

    /// Start every service of the table, in order.
    pub(super) fn start_all(&mut self) {
        for i in 0..self.services.len() {
            self.start(i);
        }
        self.save_status();
    }

    fn note(&mut self, source: &str, pid: Option<Pid>, text: &str) {
        log(
            &mut self.writer,
            source,
            pid.map(|p| p.as_raw_nonzero().get()),
            Stream::Fvm,
            text.as_bytes(),
        );
    }

    fn start(&mut self, i: usize) {
        self.dirty = true;
        let svc = &mut self.services[i];
        svc.at = None;
        let name = svc.def.name.to_string();
        let Some(starter) = &self.starter else {
            svc.error = Some("this vm runs one command (fvm run); start it with fvm start".into());
            svc.set(ServiceState::Failed);
            return;
        };
        let result = pipes(&name).and_then(|(outputs, ends)| {
            let req = SpawnRequest {
                argv: svc.def.argv(),
                env: svc
                    .def
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain([("FVM_SERVICE".to_owned(), name.clone())])
                    .collect(),
                cwd: svc.def.workdir.clone().unwrap_or_else(|| "/".into()),
                user: svc.def.user.clone(),
            };
            starter
                .start(&req, &ends[0], &ends[1])
                .map(|pid| (pid, outputs))
        });
        match result {
            Ok((pid, outputs)) => {
                svc.pid = Some(pid);
                svc.outputs = outputs.into();
                svc.error = None;
                svc.started = Instant::now();
                svc.set(ServiceState::Running);
                self.note(&name, Some(pid), "started");
            }
            Err(e) => {
                svc.error = Some(e.clone());
                svc.set(ServiceState::Failed);
                self.note(&name, None, &format!("cannot start: {e}"));
            }
        }
    }

    fn begin_stop(&mut self, i: usize) {
        self.dirty = true;
        let share = self.stop_share;
        let svc = &mut self.services[i];
        match svc.state {
            ServiceState::Backoff | ServiceState::Starting if !svc.alive() => {
                svc.at = None;
                svc.set(ServiceState::Stopped);
            }
            _ if svc.alive() => {
                svc.signal(Signal::TERM);
                svc.at = Some(Instant::now() + share);
                svc.set(ServiceState::Stopping);
            }
            _ => {}
        }
    }

    /// The VM stops: stop every service in reverse order within `grace`.
    pub(super) fn stop_all(&mut self, grace: Option<Duration>) {
        if self.vm_stopping && grace.is_none() {
            return;
        }
        self.vm_stopping = true;
        let all: Vec<usize> = (0..self.services.len()).collect();
        self.queue_stop(all, grace.unwrap_or(DEFAULT_GRACE));
    }

    fn queue_stop(&mut self, which: Vec<usize>, grace: Duration) {
        let active = which
            .iter()
            .filter(|&&i| self.services[i].state.is_active())
            .count();
        // Every service gets an equal share, and the VM's other processes the last.
        self.stop_share = (grace / (active as u32 + 1)).max(Duration::from_millis(100));
        for i in which {
            if !self.stop_queue.contains(&i) {
                self.stop_queue.push(i);
            }
        }
        self.advance_stop();
    }

    /// Stop the next queued service once none is stopping.
    fn advance_stop(&mut self) {
        while !self
            .services
            .iter()
            .any(|s| s.state == ServiceState::Stopping)
        {
            let Some(i) = self.stop_queue.pop() else {
                break;
            };
            self.begin_stop(i);
        }
        // A restart: once every service it stops has stopped, start them again,
        // in the table's order.
        let settled = self.stop_queue.is_empty()
            && !self
                .services
                .iter()
                .any(|s| s.state == ServiceState::Stopping);
        if settled && !self.vm_stopping {
            for i in 0..self.services.len() {
                if let Some(def) = self.services[i].then_start.take() {
                    self.services[i].def = def;
                    self.services[i].backoff = 0;
                    self.start(i);
                }
            }
        }
    }

    /// No service is left to stop (the init may signal the rest of the VM).
    pub(super) fn stopped(&self) -> bool {
        self.stop_queue.is_empty() && !self.services.iter().any(|s| s.alive())
    }

    pub(super) fn any_active(&self) -> bool {
        self.services.iter().any(|s| s.state.is_active())
    }

    /// The init is about to exit: log what the pipes still hold and how the
    /// detached commands ended, and record the services' states.
    pub(super) fn flush(&mut self) {
        for s in &mut self.services {
            let pid = s.pid.map(|p| p.as_raw_nonzero().get());
            let name = s.def.name.to_string();
            for o in &mut s.outputs {
                o.drain(&name, pid, &mut self.writer);
            }
            s.outputs.clear();
        }
        for d in &mut self.detached {
            for o in &mut d.outputs {
                o.drain(logs::DETACHED, Some(d.shown), &mut self.writer);
            }
            d.outputs.clear();
            d.pid = None;
        }
        self.prune_detached();
        self.dirty = true;
        self.save_status();
    }

    /// The VM ends: the starter goes too.
    pub(super) fn end(&mut self) {
        if let Some(s) = self.starter.take() {
            s.kill();
        }
    }

    /// A child of the init ended.
    pub(super) fn reaped(&mut self, pid: Pid, exit: Exit) {
        if let Some(d) = self.detached.iter_mut().find(|d| d.pid == Some(pid)) {
            d.pid = None;
            d.exit = Some(exit);
            self.prune_detached();
            return;
        }
        let Some(i) = self
            .services
            .iter()
            .position(|s| s.pid == Some(pid) || s.daemon.as_ref().is_some_and(|(d, _)| *d == pid))
        else {
            return;
        };
        self.dirty = true;
        let svc = &mut self.services[i];
        let was_main = svc.pid == Some(pid);
        let forked = svc.def.pidfile.is_some() && exit == Exit::Code(0);
        if was_main {
            svc.pid = None;
            // What it left in its process group goes with it; not the daemon a
            // forking service's command leaves (it may not have left the group
            // yet).
            if !forked {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
        } else {
            svc.daemon = None;
        }
        if was_main
            && svc.state == ServiceState::Running
            && exit == Exit::Code(0)
            && svc.def.pidfile.is_some()
        {
            svc.at = Some(Instant::now() + PIDFILE_WAIT);
            svc.set(ServiceState::Starting);
            self.check_pidfile(i);
            return;
        }
        self.ended(i, Some(exit));
    }

    /// The service's process ended (`exit` if known).
    fn ended(&mut self, i: usize, exit: Option<Exit>) {
        let vm_stopping = self.vm_stopping;
        let svc = &mut self.services[i];
        if svc.alive() {
            return;
        }
        svc.last_exit = exit.or(svc.last_exit);
        let name = svc.def.name.to_string();
        let text = format!("ended: {}", describe(exit));
        if svc.state == ServiceState::Stopping {
            svc.at = None;
            svc.set(ServiceState::Stopped);
            self.note(&name, None, &text);
            self.advance_stop();
            return;
        }
        let failed = exit != Some(Exit::Code(0));
        let again = !vm_stopping
            && match svc.def.restart {
                Restart::No => false,
                Restart::OnFailure => failed,
                Restart::Always => true,
            };
        if again {
            if svc.started.elapsed() >= BACKOFF_RESET {
                svc.backoff = 0;
            }
            let delay = BACKOFF_FIRST
                .saturating_mul(1u32 << svc.backoff.min(16))
                .min(BACKOFF_MAX);
            svc.backoff += 1;
            svc.at = Some(Instant::now() + delay);
            svc.set(ServiceState::Backoff);
            self.note(&name, None, &format!("{text}; restarting in {delay:?}"));
        } else {
            svc.set(if failed {
                ServiceState::Failed
            } else {
                ServiceState::Exited
            });
            self.note(&name, None, &text);
        }
    }

    /// A forking service: read its pidfile (a file of the VM's; a pid of the
    /// VM's own processes, never the init or the starter).
    fn check_pidfile(&mut self, i: usize) {
        let starter = self.starter.as_ref().map(|s| s.pid);
        let svc = &mut self.services[i];
        let Some(path) = &svc.def.pidfile else { return };
        let pid = crate::os::files::read_regular_max(path, 64)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p > 1)
            .and_then(Pid::from_raw)
            .filter(|&p| Some(p) != starter);
        let Some(pid) = pid else { return };
        let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
            return;
        };
        svc.daemon = Some((pid, fd));
        svc.at = None;
        svc.set(ServiceState::Running);
        let name = svc.def.name.to_string();
        self.note(&name, Some(pid), "daemon found by its pidfile");
        self.dirty = true;
    }

    /// Timers: restarts, SIGKILLs, pidfiles.
    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.services.len() {
            let svc = &self.services[i];
            match (svc.state, svc.at) {
                (ServiceState::Starting, Some(at)) => {
                    self.check_pidfile(i);
                    let svc = &mut self.services[i];
                    if svc.state == ServiceState::Starting && now >= at {
                        svc.error = Some("its pidfile named no live process in time".into());
                        svc.at = None;
                        svc.set(ServiceState::Failed);
                        self.dirty = true;
                    }
                }
                (ServiceState::Backoff, Some(at)) if now >= at && !self.vm_stopping => {
                    self.services[i].restarts += 1;
                    self.start(i);
                }
                (ServiceState::Stopping, Some(at)) if now >= at => {
                    let svc = &mut self.services[i];
                    svc.signal(Signal::KILL);
                    svc.at = None;
                }
                _ => {}
            }
        }
        self.save_status();
    }

    /// The next moment [`Supervisor::tick`] has work.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| match s.state {
                // A pidfile is looked for every 100 ms.
                ServiceState::Starting => {
                    s.at.map(|at| at.min(Instant::now() + Duration::from_millis(100)))
                }
                _ => s.at,
            })
            .min()
    }

    /// The fds to poll, and where each leads.
    pub(super) fn poll_fds(&self) -> Vec<(std::os::fd::BorrowedFd<'_>, Polled)> {
        let mut out = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            for (j, o) in s.outputs.iter().enumerate() {
                out.push((o.fd.as_fd(), Polled::ServiceOutput(i, j)));
            }
            if let Some((_, fd)) = &s.daemon {
                out.push((fd.as_fd(), Polled::Daemon(i)));
            }
        }
        for (i, d) in self.detached.iter().enumerate() {
            for (j, o) in d.outputs.iter().enumerate() {
                out.push((o.fd.as_fd(), Polled::DetachedOutput(i, j)));
            }
        }
        out
    }

    /// An fd of [`Supervisor::poll_fds`] is ready.
    pub(super) fn ready(&mut self, which: &[Polled]) {
        let mut closed_svc = Vec::new();
        let mut closed_det = Vec::new();
        for p in which {
            match *p {
                Polled::ServiceOutput(i, j) => {
                    let s = &mut self.services[i];
                    let pid = s.pid.map(|p| p.as_raw_nonzero().get());
                    let name = s.def.name.to_string();
                    if !s.outputs[j].read(&name, pid, &mut self.writer) {
                        closed_svc.push((i, j));
                    }
                }
                Polled::DetachedOutput(i, j) => {
                    let d = &mut self.detached[i];
                    if !d.outputs[j].read(logs::DETACHED, Some(d.shown), &mut self.writer) {
                        closed_det.push((i, j));
                    }
                }
                Polled::Daemon(i) => {
                    // Not our child (its parent still lives): its status is unknown.
                    // One that is our child is reaped, and reported, by the init.
                    let pid = self.services[i].daemon.as_ref().map(|(p, _)| *p);
                    if let Some(pid) = pid
                        && rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG)
                            .is_err()
                    {
                        self.services[i].daemon = None;
                        self.dirty = true;
                        self.ended(i, None);
                    }
                }
            }
        }
        for (i, j) in closed_svc.into_iter().rev() {
            self.services[i].outputs.remove(j);
        }
        for (i, j) in closed_det.into_iter().rev() {
            self.detached[i].outputs.remove(j);
        }
        self.prune_detached();
    }

    /// Forget the detached commands that ended and whose output is all read,
    /// noting how each ended after its last line.
    fn prune_detached(&mut self) {
        let writer = &mut self.writer;
        self.detached.retain(|d| {
            let done = d.pid.is_none() && d.outputs.is_empty();
            if done {
                let text = format!("ended: {}", describe(d.exit));
                log(
                    writer,
                    logs::DETACHED,
                    Some(d.shown),
                    Stream::Fvm,
                    text.as_bytes(),
                );
            }
            !done
        });
    }

    /// Write the status file if anything changed.
    pub(super) fn save_status(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if let Some(w) = &self.writer {
            let all: Vec<ServiceStatus> = self.services.iter().map(Svc::status).collect();
            if let Ok(text) = serde_json::to_vec_pretty(&all) {
                let _ = w.replace(logs::STATUS_FILE, &text);
            }
        }
    }

    fn index_or_add(&mut self, def: &Service) -> usize {
        match self.services.iter().position(|s| s.def.name == def.name) {
            Some(i) => i,
            None => {
                self.services.push(Svc::new(def.clone()));
                self.services.len() - 1
            }
        }
    }

    /// Answer one request of fvm's.
    pub(super) fn handle(&mut self, req: Request) -> Answer {
        let refuse = |m: &str| Answer::Error {
            message: m.to_owned(),
        };
        if self.vm_stopping && !matches!(req, Request::Status | Request::StopAll { .. }) {
            return refuse("the vm is stopping");
        }
        let answer = match req {
            Request::Status => Answer::Status {
                services: self.services.iter().map(Svc::status).collect(),
            },
            Request::StopAll { grace_ms } => {
                self.stop_all(Some(Duration::from_millis(grace_ms)));
                Answer::Done
            }
            Request::Start { services } => {
                for def in services {
                    let i = self.index_or_add(&def);
                    if !self.services[i].state.is_active() {
                        self.services[i].def = def;
                        self.services[i].backoff = 0;
                        self.start(i);
                    }
                }
                Answer::Done
            }
            Request::Stop { names, grace_ms } => {
                let which: Vec<usize> = if names.is_empty() {
                    (0..self.services.len()).collect()
                } else {
                    let mut v = Vec::new();
                    for n in &names {
                        match self.services.iter().position(|s| &s.def.name == n) {
                            Some(i) => v.push(i),
                            None => return refuse(&format!("service {n} has not run in this vm")),
                        }
                    }
                    v
                };
                self.queue_stop(which, Duration::from_millis(grace_ms));
                Answer::Done
            }
            Request::Restart { services, grace_ms } => {
                // Stop those that run (in reverse order), then start them all
                // in order (see `advance_stop`).
                let mut stop = Vec::new();
                for def in services {
                    let i = self.index_or_add(&def);
                    self.services[i].then_start = Some(def);
                    if self.services[i].state.is_active() {
                        stop.push(i);
                    }
                }
                self.queue_stop(stop, Duration::from_millis(grace_ms));
                Answer::Done
            }
            Request::Detach { argv, env, cwd } => self.detach(argv, env, cwd),
        };
        self.save_status();
        answer
    }

    fn detach(&mut self, argv: Vec<String>, env: Vec<(String, String)>, cwd: PathBuf) -> Answer {
        let fail = |message: String| Answer::Error { message };
        let Some(starter) = &self.starter else {
            return fail(
                "this vm runs one command (fvm run); run -d needs a vm started with fvm start"
                    .into(),
            );
        };
        if self.detached.len() >= MAX_DETACHED {
            return fail(format!(
                "{MAX_DETACHED} detached commands already run in this vm"
            ));
        }
        let req = SpawnRequest {
            argv,
            env,
            cwd,
            user: None,
        };
        match pipes(logs::DETACHED)
            .and_then(|(outputs, ends)| Ok((starter.start(&req, &ends[0], &ends[1])?, outputs)))
        {
            Ok((pid, outputs)) => {
                let shown = pid.as_raw_nonzero().get();
                self.detached.push(Detached {
                    pid: Some(pid),
                    shown,
                    outputs: outputs.into(),
                    exit: None,
                });
                let line = format!("started: {}", req.argv.join(" "));
                log(
                    &mut self.writer,
                    logs::DETACHED,
                    Some(shown),
                    Stream::Fvm,
                    line.as_bytes(),
                );
                Answer::Detached { pid: shown }
            }
            Err(e) => fail(e),
        }
    }
}

/// How a process ended, for a log line.
pub fn describe(exit: Option<Exit>) -> String {
    match exit {
        Some(Exit::Code(c)) => format!("exit status {c}"),
        Some(Exit::Signal(s)) => match nix::sys::signal::Signal::try_from(s) {
            Ok(sig) => format!("killed by {}", sig.as_str()),
            Err(_) => format!("killed by signal {s}"),
        },
        None => "status unknown (not a child of the init)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above any pid_max: signals to it (and its group) reach nothing.
    const FAKE: i32 = i32::MAX - 7;

    fn svc(cmd: &str, restart: Restart) -> Service {
        let mut s = Service::new(ServiceName::new("s").unwrap(), cmd).unwrap();
        s.restart = restart;
        s
    }

    fn sup_with(def: Service) -> Supervisor {
        let mut s = Supervisor::new(&[def], None, None);
        // As if it had started.
        s.services[0].pid = Pid::from_raw(FAKE);
        s.services[0].set(ServiceState::Running);
        s
    }

    #[test]
    fn restart_policies_decide_what_an_end_leads_to() {
        for (restart, exit, state) in [
            (Restart::No, Exit::Code(0), ServiceState::Exited),
            (Restart::No, Exit::Code(1), ServiceState::Failed),
            (Restart::OnFailure, Exit::Code(0), ServiceState::Exited),
            (Restart::OnFailure, Exit::Code(3), ServiceState::Backoff),
            (Restart::OnFailure, Exit::Signal(9), ServiceState::Backoff),
            (Restart::Always, Exit::Code(0), ServiceState::Backoff),
        ] {
            let mut s = sup_with(svc("true", restart));
            s.reaped(Pid::from_raw(FAKE).unwrap(), exit);
            assert_eq!(s.services[0].state, state, "{restart:?} {exit:?}");
            assert_eq!(s.services[0].last_exit, Some(exit));
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_a_long_run_resets_it() {
        let mut s = sup_with(svc("false", Restart::Always));
        let mut delays = Vec::new();
        for _ in 0..12 {
            s.services[0].pid = Pid::from_raw(FAKE);
            s.services[0].state = ServiceState::Running;
            let before = Instant::now();
            s.reaped(Pid::from_raw(FAKE).unwrap(), Exit::Code(1));
            let at = s.services[0].at.unwrap();
            delays.push(at.duration_since(before));
        }
        assert!(delays[0] >= BACKOFF_FIRST && delays[0] < BACKOFF_FIRST * 2);
        assert!(delays[1] >= BACKOFF_FIRST * 2 && delays[1] < BACKOFF_FIRST * 3);
        assert!(delays[11] >= BACKOFF_MAX && delays[11] < BACKOFF_MAX + BACKOFF_FIRST);
        // A run as long as BACKOFF_RESET starts over.
        s.services[0].pid = Pid::from_raw(FAKE);
        s.services[0].state = ServiceState::Running;
        s.services[0].started = Instant::now() - BACKOFF_RESET;
        let before = Instant::now();
        s.reaped(Pid::from_raw(FAKE).unwrap(), Exit::Code(1));
        assert!(s.services[0].at.unwrap().duration_since(before) < BACKOFF_FIRST * 2);
    }

    #[test]
    fn nothing_restarts_while_the_vm_stops_and_a_stopped_service_stays_stopped() {
        let mut s = sup_with(svc("sleep 1000", Restart::Always));
        s.services[0].pid = Pid::from_raw(FAKE);
        s.stop_all(Some(Duration::from_secs(1)));
        assert_eq!(s.services[0].state, ServiceState::Stopping);
        s.reaped(Pid::from_raw(FAKE).unwrap(), Exit::Signal(15));
        assert_eq!(s.services[0].state, ServiceState::Stopped);
        assert!(s.stopped());
        assert!(matches!(
            s.handle(Request::Start { services: vec![] }),
            Answer::Error { .. }
        ));
    }

    #[test]
    fn a_restart_stops_in_reverse_order_then_starts_in_order() {
        let a = Service::new(ServiceName::new("a").unwrap(), "true").unwrap();
        let b = Service::new(ServiceName::new("b").unwrap(), "true").unwrap();
        let mut s = Supervisor::new(&[a.clone(), b.clone()], None, None);
        for (i, pid) in [(0, FAKE), (1, FAKE - 1)] {
            s.services[i].pid = Pid::from_raw(pid);
            s.services[i].set(ServiceState::Running);
        }
        s.handle(Request::Restart {
            services: vec![a, b],
            grace_ms: 1000,
        });
        // b first; a waits its turn.
        assert_eq!(s.services[1].state, ServiceState::Stopping);
        assert_eq!(s.services[0].state, ServiceState::Running);
        s.reaped(Pid::from_raw(FAKE - 1).unwrap(), Exit::Signal(15));
        assert_eq!(s.services[0].state, ServiceState::Stopping);
        assert!(
            s.services[1].then_start.is_some(),
            "b starts only after a stopped"
        );
        s.reaped(Pid::from_raw(FAKE).unwrap(), Exit::Signal(15));
        // Both started again (here without a starter, so both fail to).
        for svc in &s.services {
            assert!(svc.then_start.is_none());
            assert_eq!(svc.state, ServiceState::Failed);
            assert!(svc.error.as_deref().unwrap().contains("fvm start"));
        }
    }

    #[test]
    fn requests_and_answers_cross_as_json() {
        let r = Request::Stop {
            names: vec![ServiceName::new("web").unwrap()],
            grace_ms: 5,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(matches!(
            serde_json::from_str::<Request>(&text).unwrap(),
            Request::Stop { grace_ms: 5, .. }
        ));
        assert_eq!(describe(Some(Exit::Code(3))), "exit status 3");
        assert_eq!(describe(Some(Exit::Signal(9))), "killed by SIGKILL");
    }
}

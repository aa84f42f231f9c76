//! `run` and `shell`: a command inside a VM, in the foreground.
//!
//! In a running VM the command joins it (see `runtime::enter`). A stopped VM is
//! started for the command; its init runs the command and exits once the last
//! process of the VM has, and this process then cleans up after it.

use std::os::fd::AsFd;
use std::time::Duration;

use rustix::process::Pid;

use super::lifecycle::Throwaway;
use super::{Engine, VmError};
use crate::changes::diff::Change;
use crate::os::procid::ProcId;
use crate::runtime::channel::{Channel, Exit};
use crate::runtime::command::CommandSpec;
use crate::runtime::enter;
use crate::runtime::relay::{self, Outcome, Waited};
use crate::runtime::stdio::{self, CallerEnds, StdioPlan};
use crate::store::{Cause, End, Policy, StartMode, State, Subject, VmDir, VmName};

impl Engine {
    /// Run `spec` in VM `name` and return how it ended.
    pub fn run(&self, name: &VmName, mut spec: CommandSpec) -> Result<Ended, VmError> {
        let vm = self.vm(name)?;
        let lock = vm.lock()?;
        // Blocked only now, so ^C still ends a command that waits for the lock; from
        // here on they are passed to the command.
        let signals = relay::block_signals().map_err(|e| self.relay_error(name, e.into()))?;
        let policy = self.policy(&vm)?;
        spec.limits = policy.limits.per_process();
        let state = self.reconcile(&vm)?;
        let (stdio, mut ends) =
            stdio::plan(spec.tty).map_err(|e| self.relay_error(name, e.into()))?;
        if let Some(init) = state.live_init(&self.cgroup_leaf(name)) {
            let cgroup = self.cgroup(name)?;
            // A process entering a frozen cgroup would freeze at once.
            if cgroup.frozen() {
                return Err(VmError::Suspended {
                    name: name.to_string(),
                });
            }
            spec.confine = self.confinement(name, &policy)?;
            // The VM runs, so the store's watcher must too. Started now, while this
            // process is still wholly the host's (`enter` moves it into the VM's
            // namespaces): a watcher started from it must run outside every VM. (A
            // stopped VM's start makes sure of it itself.)
            self.keep_watcher();
            // The lock is held until the command runs in the VM: `suspend` (and
            // a commit's freeze) take it, so the VM can't be frozen while the
            // command is half-way in (in the freezer's cgroup but not yet in the
            // others), which would leave it, and this command, frozen outside the
            // VM's accounting until someone resumed the VM. Then it is let go, its
            // file kept open to take it again after the command.
            let oom_before = cgroup.oom_kills();
            let entered = enter::enter(init, &cgroup, &spec, &stdio, ends.command_pipes());
            let unlocked = lock.unlock().ok();
            let (pid, master) = entered.map_err(VmError::enter(name))?;
            ends.release_command_ends();
            tracing::info!("command started in running vm {name}");
            let outcome = relay::run(Waited::Child { pid }, master, &signals, ends)
                .map_err(|e| self.relay_error(name, e))?;
            tracing::info!("command ended: exit {}", outcome.exit.code());
            let seen = Seen {
                oom_kills: (oom_before, cgroup.oom_kills()),
                ..Seen::of(&outcome)
            };
            let mut end = judge(&seen, &policy.limits);
            // Taken again to record the end. A stop holds the lock until the VM's
            // init is gone, so a command a stop may have ended waits for it and
            // finds the stop's record; any other end is recorded only if nobody
            // holds the lock (a long commit of the VM doesn't hold up the command).
            let stop_signal = killed(outcome.exit);
            let _lock = if stop_signal {
                unlocked.and_then(|u| u.lock().ok())
            } else {
                vm.try_lock().ok().flatten()
            };
            if _lock.is_some() {
                end = self.record_command_end(&vm, init, end, stop_signal);
            }
            return Ok(Ended {
                exit: outcome.exit,
                end,
            });
        }
        self.run_cold(
            &vm,
            &policy,
            (spec, stdio, ends),
            lock,
            (Throwaway::No, STOP_GRACE, Teardown::Detach),
            &signals,
        )
        .map(|(ended, _)| ended)
    }

    /// After a command in a running VM ended, with the VM's lock held: if the VM
    /// ended too (the command died of a stop signal and the init is gone), how the
    /// VM ended is the command's end; else `end` is recorded as the VM's last.
    fn record_command_end(&self, vm: &VmDir, init: &ProcId, end: End, stop_signal: bool) -> End {
        // A VM that ends kills what is left in it before its init is gone: give
        // the init a moment to finish.
        let init_gone = stop_signal
            && match crate::runtime::stop::InitHandle::open(init) {
                Ok(Some(handle)) => handle.wait(Duration::from_millis(250)).unwrap_or(false),
                Ok(None) => true,
                Err(_) => false,
            };
        if init_gone {
            return match self.reconcile(vm) {
                Ok(State {
                    end: Some(vm_end), ..
                }) => vm_end.said_of(Subject::Command),
                _ => end,
            };
        }
        if let Ok(mut state) = vm.load_state()
            && state.init.as_ref() == Some(init)
        {
            state.end = Some(end.clone());
            if let Err(e) = self.save_state(vm, &state) {
                tracing::debug!(vm = %vm.name(), "cannot record the command's end: {}", crate::error_line(&e));
            }
        }
        end
    }

    /// Start a stopped VM for one command. `lock` is released once the VM runs.
    /// Also returns whether the VM's teardown was handed to a process of its own
    /// (see [`Teardown`]), which then deletes it if asked to.
    fn run_cold(
        &self,
        vm: &VmDir,
        policy: &Policy,
        (spec, stdio, mut ends): (CommandSpec, StdioPlan, CallerEnds),
        lock: crate::store::Lock,
        (throwaway, grace, teardown): (Throwaway, Duration, Teardown),
        signals: &nix::sys::signal::SigSet,
    ) -> Result<(Ended, bool), VmError> {
        let name = vm.name();
        let cgroup = self.cgroup(name)?;
        let (launched, init) = self.launch(
            vm,
            policy,
            StartMode::Command,
            Some((spec, stdio, ends.command_pipes())),
            throwaway,
        )?;
        // The init has its own copies of the command's pipe ends.
        ends.release_command_ends();
        let pid = launched.pid;
        let oom_before = cgroup.oom_kills();
        drop(lock);
        // Started now, while the command runs, so that forking it costs the
        // caller nothing once the command has ended.
        let standby = match teardown {
            Teardown::Wait => None,
            Teardown::Detach => self.standby(vm, pid, false),
            Teardown::DetachAndDelete => self.standby(vm, pid, true),
        };
        let result = relay::run(
            Waited::Init {
                pid,
                chan: launched.chan,
                grace,
            },
            None,
            signals,
            ends,
        );
        // Read before the cleanup below removes the cgroup.
        let mut end = match &result {
            Ok(o) => {
                let seen = Seen {
                    oom_kills: (oom_before, cgroup.oom_kills()),
                    ..Seen::of(o)
                };
                Some(judge(&seen, &policy.limits))
            }
            // The command never ran: the status `fvm run` exits with.
            Err(relay::RelayError::Spawn(e)) => {
                Some(End::of_exit(Subject::Command, Some(e.exit_code()), None))
            }
            Err(relay::RelayError::Init(_)) => {
                Some(End::of_exit(Subject::Command, Some(125), None))
            }
            // The init went away under the command: how the VM ended says why.
            Err(_) => None,
        };
        // The init exits by itself when nothing else runs in the VM (or the command
        // could not start); then reap it and clean up. If processes remain (a daemon
        // the command started), the VM keeps running until they end or `fvm stop`.
        let ended = match &result {
            Ok(o) => o.vm_ended,
            Err(_) => true,
        };
        match &result {
            Ok(o) => tracing::info!("command ended: exit {}", o.exit.code()),
            Err(e) => tracing::info!("command failed: {}", crate::error_line(e)),
        }
        let handed_off = match (&result, &end, &standby) {
            (Ok(_), Some(e), Some(standby)) if ended => self.hand_off(vm, &init, e, standby),
            _ => false,
        };
        // Not handed off: the process standing by reads end-of-file and exits.
        drop(standby);
        if handed_off {
            tracing::info!("vm {name} stopping: cleaned up in the background");
        } else if ended {
            match self.finish(vm, pid, &init, end.as_ref()) {
                Ok(recorded) => {
                    tracing::debug!(vm = %name, "vm stopped and cleaned up");
                    tracing::info!("vm {name} stopped");
                    end = recorded.or(end);
                }
                // The command has run and the VM has stopped: that is the job, and
                // its status is what this command reports. What is left (the state
                // file, the cgroup) the next command on the VM finishes.
                Err(e) if result.is_ok() => tracing::warn!(
                    "vm {name} stopped after the command, but cleaning up after it failed: {}; the next command on it finishes that",
                    crate::error_line(&e)
                ),
                Err(e) => return Err(e),
            }
        } else if let Some(e) = &end
            && let Ok(Some(_lock)) = vm.try_lock()
        {
            // The VM goes on (a process the command left runs): the command's
            // end is its last, recorded if nobody holds the lock.
            end = Some(self.record_command_end(vm, &init, e.clone(), false));
        }
        let outcome = result.map_err(|e| self.relay_error(name, e))?;
        let ended = Ended {
            exit: outcome.exit,
            end: end.unwrap_or_else(|| {
                End::of_exit(
                    Subject::Command,
                    outcome.exit.status(),
                    outcome.exit.signal(),
                )
            }),
        };
        Ok((ended, handed_off))
    }

    /// Start the process that cleans up after a cold run's VM (`fvm-teardown`)
    /// once [`Engine::hand_off`] gives it the VM's lock: it waits for the init
    /// `pid` (a child of this process, not reaped, so its pid can't be reused)
    /// to exit, which is when the kernel takes down the VM's namespaces and
    /// overlays, records the VM stopped with the end it is handed, removes the
    /// cgroup, and with `delete` deletes the VM. Returns the line to hand it
    /// over on; if this process goes away or drops that line without handing
    /// anything over, it exits. `None` (the caller cleans up itself) if it
    /// can't be started.
    ///
    /// It keeps nothing of the caller's: every fd but its line and a pidfd of
    /// the init is closed (stdio on /dev/null, so a caller reading `fvm`'s
    /// output to its end isn't held up), its working directory is `/`, it runs
    /// in a session of its own (a ^C in the terminal doesn't reach it), and
    /// what it logs goes nowhere.
    fn standby(&self, vm: &VmDir, pid: Pid, delete: bool) -> Option<Channel> {
        let handle = crate::runtime::stop::InitHandle::of_child(pid).ok()?;
        let (ours, theirs) = Channel::pair().ok()?;
        let teardown = || {
            let _ = rustix::process::chdir("/");
            // How the VM ended, with the VM's lock (its open file: the flock
            // is held as long as this process has it).
            let Ok(Some((end, fds))) = theirs.recv_value::<End>() else {
                return 0;
            };
            let Some(_lock) = fds.into_iter().next() else {
                return 1;
            };
            hold_for_test();
            // Readable once the init has exited (whoever reaps it).
            let _ = handle.wait(Duration::MAX);
            let mut failed = self.reconcile_with(vm, Some(end), false).is_err();
            if delete && !failed {
                failed = self.delete_locked(vm, true).is_err();
            }
            i32::from(failed)
        };
        let keep = [theirs.as_fd(), handle.pidfd().as_fd()];
        match crate::os::detach::spawn_detached_keeping(c"fvm-teardown", &keep, teardown) {
            Ok(()) => Some(ours),
            Err(e) => {
                tracing::debug!(vm = %vm.name(), "no teardown process: {e}");
                None
            }
        }
    }

    /// After the command of a cold run ended and took its VM with it: hand the
    /// rest of the stop to the process standing by (see [`Engine::standby`]),
    /// so that `fvm run` returns the command's status at once. False (nothing
    /// handed off; the caller cleans up itself) if the VM's state names another
    /// init by the time this has the VM's lock (a stop or the store's watcher
    /// cleaned up already), or the hand-over fails.
    ///
    /// The VM's lock is handed over with it, so every later command on the VM
    /// waits until the stop is done and finds a clean stopped VM. What doesn't
    /// lock (`list`, `inspect`, the web console) reads `ending`, recorded here
    /// first: the VM shows as stopped, with this end, and a throw-away VM being
    /// deleted not at all. If that process dies (SIGKILL) at any point, the VM
    /// is left running in its state, with its init gone and `ending` set: the
    /// next command on it (or the watcher, or `doctor --cleanup`) cleans up
    /// after it as after any gone init, and records `ending` as how it ended; a
    /// throw-away VM left stopped is deleted by `doctor --cleanup`.
    fn hand_off(&self, vm: &VmDir, init: &ProcId, end: &End, standby: &Channel) -> bool {
        let name = vm.name();
        let lock = match vm.lock() {
            Ok(lock) => lock,
            Err(e) => {
                tracing::debug!(vm = %name, "teardown not handed off: {}", crate::error_line(&e));
                return false;
            }
        };
        let state = match vm.load_state() {
            Ok(state) if state.init.as_ref() == Some(init) => state,
            _ => {
                tracing::debug!(vm = %name, "teardown not handed off: cleaned up already");
                return false;
            }
        };
        let vm_end = end.said_of(Subject::Vm);
        let ending = State {
            ending: Some(vm_end.clone()),
            ..state
        };
        if let Err(e) = self.save_state(vm, &ending) {
            tracing::debug!(vm = %name, "teardown not handed off: {}", crate::error_line(&e));
            return false;
        }
        match standby.send_value(&vm_end, &[lock.as_fd()]) {
            Ok(()) => {
                tracing::debug!(vm = %name, "teardown handed off");
                true
            }
            Err(e) => {
                // `ending` stays: the cleanup here records the same end.
                tracing::debug!(vm = %name, "teardown not handed off: {e}");
                false
            }
        }
    }

    /// After a VM started by this process has exited: reap its init and clean up,
    /// recording `end` (the command's) as how the VM ended, unless another command
    /// already did (the state names a different init). Returns the end a stop
    /// recorded, when it was one that ended the VM.
    fn finish(
        &self,
        vm: &VmDir,
        pid: Pid,
        init: &ProcId,
        end: Option<&End>,
    ) -> Result<Option<End>, VmError> {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        tracing::debug!(vm = %vm.name(), "init exited");
        let _lock = vm.lock()?;
        let mut state = self.load_state(vm)?;
        if state.init.as_ref() == Some(init) {
            self.reconcile_with(vm, end.map(|e| e.said_of(Subject::Vm)), false)?;
            return Ok(None);
        }
        // Cleaned up by a stop (its record says so), or by the store's watcher,
        // which can't know how the command ended: this command does.
        match state.end {
            Some(recorded) if recorded.cause == Cause::Stop => {
                Ok(Some(recorded.said_of(Subject::Command)))
            }
            _ => {
                if let Some(end) = end
                    && state.status == crate::store::Status::Stopped
                {
                    state.end = Some(end.said_of(Subject::Vm));
                    self.save_state(vm, &state)?;
                }
                Ok(None)
            }
        }
    }

    /// `run --rm`: a throw-away VM, created for the command and deleted after it.
    /// Its layers live on a tmpfs in its own mount namespace: nothing is written to
    /// disk, and whatever it left running is stopped with it.
    pub fn run_temporary(
        &self,
        name: Option<VmName>,
        opts: &super::CreateOptions,
        spec: CommandSpec,
    ) -> Result<Ended, VmError> {
        self.run_job(name, opts, spec, &JobOptions::default())
            .map(|o| o.ended)
    }

    /// A throw-away VM for one command, as [`Engine::run_temporary`], with what a
    /// job runner asks for (see [`JobOptions`]).
    pub fn run_job(
        &self,
        name: Option<VmName>,
        opts: &super::CreateOptions,
        spec: CommandSpec,
        job: &JobOptions,
    ) -> Result<JobOutcome, VmError> {
        let name = match name {
            Some(n) => n,
            None => self.temporary_name()?,
        };
        let opts = super::CreateOptions {
            temporary: true,
            ..opts.clone()
        };
        let throwaway = if job.diff {
            // The layers are read after the VM has stopped, so they are kept in
            // the store (on disk) until the delete, not on the VM's own tmpfs.
            self.check_disk(&self.store.root().join("vms"), &opts.limits)?;
            Throwaway::OnDisk
        } else {
            Throwaway::Tmpfs
        };
        // A diff job reads the layers after the VM has stopped, before it
        // returns: it waits for the teardown anyway, so it does it itself.
        let teardown = if job.diff {
            Teardown::Wait
        } else {
            Teardown::DetachAndDelete
        };
        let vm = self.create(&name, &opts)?;
        // Everything after the create runs in here, so that any failure still ends
        // in the delete below (with the VM's lock released first).
        let result = (|| {
            let lock = vm.lock()?;
            let signals = relay::block_signals().map_err(|e| self.relay_error(&name, e.into()))?;
            // (Marked temporary by the create: a crash leaves a VM the next
            // cleanup deletes.)
            let policy = self.policy(&vm)?;
            let (stdio, ends) =
                stdio::plan(spec.tty).map_err(|e| self.relay_error(&name, e.into()))?;
            self.run_cold(
                &vm,
                &policy,
                (spec, stdio, ends),
                lock,
                (throwaway, job.stop_grace, teardown),
                &signals,
            )
        })();
        // What the VM changed, read once nothing of it runs any more (a daemon
        // the command left is stopped first, as the delete would).
        if let Ok((ended, true)) = result {
            // The VM is deleted by the process that cleans up after it.
            return Ok(JobOutcome { ended, diff: None });
        }
        let result = result.map(|(ended, _)| ended);
        let diff =
            match (&result, job.diff) {
                (Ok(_), true) => Some(self.stop(&name, Duration::ZERO).and_then(|_| {
                    self.diff(&name, &super::Selection::paths(&[]), false, &mut |_| {})
                })),
                _ => None,
            };
        let cleanup = self.delete(&name, true);
        let ended = result?;
        // The command ran: a delete that failed afterwards (a full disk) is a
        // warning; the next `fvm doctor --cleanup` or command on the store removes
        // the throw-away VM.
        if let Err(e) = cleanup {
            tracing::warn!(
                "the throw-away vm {name} could not be deleted after the command: {}; `fvm doctor --cleanup` removes it",
                crate::error_line(&e)
            );
        }
        Ok(JobOutcome { ended, diff })
    }

    pub fn temporary_name(&self) -> Result<VmName, VmError> {
        let mut bytes = [0u8; 4];
        let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
        Ok(VmName::new(&format!(
            "tmp-{:08x}",
            u32::from_ne_bytes(bytes)
        ))?)
    }

    fn relay_error(&self, name: &VmName, source: relay::RelayError) -> VmError {
        VmError::relay(name)(source)
    }
}

/// What a cold run does once its command has ended and its VM with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Teardown {
    /// Wait for the init to exit and clean up, then return.
    Wait,
    /// Return at once; a process of its own cleans up (see [`Engine::hand_off`]).
    Detach,
    /// [`Teardown::Detach`], and that process deletes the VM after it.
    DetachAndDelete,
}

/// In a debug build, with `FVM_DEBUG_TEARDOWN_HOLD` set to a directory: the
/// process that cleans up after a cold run writes its pid to `teardown.pid`
/// there and waits (two minutes at most) until `go` appears in it, so tests can
/// look at the store meanwhile, or kill it. Nothing in a release build.
fn hold_for_test() {
    #[cfg(debug_assertions)]
    if let Some(dir) = std::env::var_os("FVM_DEBUG_TEARDOWN_HOLD") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::write(dir.join("teardown.pid"), std::process::id().to_string());
        let until = std::time::Instant::now() + Duration::from_secs(120);
        while !dir.join("go").exists() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How long a VM run for one command gets to stop after `fvm run` is asked to
/// stop (SIGINT, SIGTERM, SIGHUP, SIGQUIT), before its processes are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a job runner asks of a throw-away VM (see [`Engine::run_job`]).
#[derive(Debug, Clone, Copy)]
pub struct JobOptions {
    /// Read what the VM changed after the command (its layers are kept on disk
    /// until then).
    pub diff: bool,
    /// See [`STOP_GRACE`].
    pub stop_grace: Duration,
}

impl Default for JobOptions {
    fn default() -> JobOptions {
        JobOptions {
            diff: false,
            stop_grace: STOP_GRACE,
        }
    }
}

/// How a job ended.
#[derive(Debug)]
pub struct JobOutcome {
    pub ended: Ended,
    /// What the VM changed, when asked for: sorted by path, as `fvm diff`.
    pub diff: Option<Result<Vec<Change>, VmError>>,
}

/// Ended by a signal a stop of the VM sends: SIGHUP (a terminal session hung
/// up), SIGTERM or SIGKILL.
fn killed(exit: Exit) -> bool {
    matches!(
        exit,
        Exit::Signal(libc::SIGHUP | libc::SIGTERM | libc::SIGKILL)
    )
}

/// How a command `fvm run` waited for ended: its status, which `fvm run` exits
/// with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub exit: Exit,
    pub end: End,
}

/// What `run` saw of a command's end.
#[derive(Debug, Clone, Copy)]
struct Seen {
    exit: Exit,
    cpu: Option<Duration>,
    /// The VM's OOM kills before the command and after it.
    oom_kills: (Option<u64>, Option<u64>),
    timed_out: bool,
    outside: Option<i32>,
}

impl Seen {
    fn of(o: &Outcome) -> Seen {
        Seen {
            exit: o.exit,
            cpu: o.cpu,
            oom_kills: (None, None),
            timed_out: o.timed_out,
            outside: o.outside,
        }
    }
}

/// Why the command ended. A limit is blamed only on evidence: the OOM killer
/// only if the command died of SIGKILL and the VM's OOM kill counter moved while
/// it ran; the cpu-time limit only if it died of SIGXCPU or SIGKILL having used
/// that much CPU time (75% of it at least: the kernel checks the limit against
/// its precise runtime, while the times `wait4` reports come out lower, by up
/// to 15% in tests with limits of 1 and 3 s). Anything else is the command's own status or signal.
fn judge(seen: &Seen, limits: &crate::limits::Limits) -> End {
    let own = End::of_exit(Subject::Command, seen.exit.status(), seen.exit.signal());
    let by = |cause, limit| {
        End {
            limit,
            ..End::now(cause, Subject::Command)
        }
        .with_exit(&own)
    };
    if seen.timed_out {
        return by(Cause::Timeout, limits.timeout.map(|t| t.0));
    }
    if let Some(signal) = seen.outside {
        return End {
            signal: Some(signal),
            status: None,
            ..End::now(Cause::Outside, Subject::Command)
        };
    }
    let oom_moved = matches!(seen.oom_kills, (Some(before), Some(after)) if after > before);
    if seen.exit == Exit::Signal(libc::SIGKILL) && oom_moved {
        return by(Cause::Oom, limits.memory.map(|m| m.0));
    }
    if let (Some(limit), Some(cpu)) = (limits.cpu_time, seen.cpu)
        && matches!(seen.exit, Exit::Signal(libc::SIGXCPU | libc::SIGKILL))
        && cpu.as_millis() * 4 >= u128::from(limit.0) * 1000 * 3
    {
        return by(Cause::CpuTime, Some(limit.0));
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Limits, Seconds, Size};

    fn seen(exit: Exit) -> Seen {
        Seen {
            exit,
            cpu: Some(Duration::from_millis(10)),
            oom_kills: (Some(0), Some(0)),
            timed_out: false,
            outside: None,
        }
    }

    fn limits() -> Limits {
        Limits {
            memory: Some(Size(32 << 20)),
            cpu_time: Some(Seconds(10)),
            timeout: Some(Seconds(60)),
            ..Limits::default()
        }
    }

    #[test]
    fn a_limit_is_blamed_only_on_evidence() {
        let l = limits();
        let kill = Exit::Signal(libc::SIGKILL);
        // A SIGKILL with no OOM kill counted is someone's signal.
        assert_eq!(judge(&seen(kill), &l).cause, Cause::Signal);
        let oom = Seen {
            oom_kills: (Some(1), Some(2)),
            ..seen(kill)
        };
        let end = judge(&oom, &l);
        assert_eq!(
            (end.cause, end.limit, end.signal),
            (Cause::Oom, Some(32 << 20), Some(9))
        );
        // Unknown counters prove nothing.
        let unknown = Seen {
            oom_kills: (None, Some(2)),
            ..seen(kill)
        };
        assert_eq!(judge(&unknown, &l).cause, Cause::Signal);
        // The counter moved, but the command died of something else.
        let segv = Seen {
            oom_kills: (Some(0), Some(1)),
            ..seen(Exit::Signal(libc::SIGSEGV))
        };
        assert_eq!(judge(&segv, &l).cause, Cause::Signal);
        // SIGXCPU (or SIGKILL) with the CPU time used: the cpu-time limit.
        for exit in [Exit::Signal(libc::SIGXCPU), kill] {
            let busy = Seen {
                cpu: Some(Duration::from_millis(8_000)),
                ..seen(exit)
            };
            assert_eq!(judge(&busy, &l).cause, Cause::CpuTime, "{exit:?}");
        }
        // SIGXCPU someone sent to an idle command.
        assert_eq!(
            judge(&seen(Exit::Signal(libc::SIGXCPU)), &l).cause,
            Cause::Signal
        );
        // No cpu-time limit: no cpu-time end.
        let busy = Seen {
            cpu: Some(Duration::from_secs(100)),
            ..seen(Exit::Signal(libc::SIGXCPU))
        };
        assert_eq!(judge(&busy, &Limits::default()).cause, Cause::Signal);
        assert_eq!(judge(&seen(Exit::Code(0)), &l).cause, Cause::Exited);
    }

    #[test]
    fn the_init_s_word_comes_first() {
        let l = limits();
        let timed_out = Seen {
            timed_out: true,
            ..seen(Exit::Signal(libc::SIGTERM))
        };
        let end = judge(&timed_out, &l);
        assert_eq!(
            (end.cause, end.limit, end.signal),
            (Cause::Timeout, Some(60), Some(15))
        );
        let outside = Seen {
            outside: Some(libc::SIGTERM),
            ..seen(Exit::Code(0))
        };
        let end = judge(&outside, &l);
        assert_eq!(
            (end.cause, end.signal, end.status),
            (Cause::Outside, Some(15), None)
        );
    }
}

//! `run` and `shell`: a command inside a VM, in the foreground.
//!
//! In a running VM the command joins it (see `runtime::enter`). A stopped VM is
//! started for the command; its init runs the command and exits once the last
//! process of the VM has, and this process then cleans up after it.

use std::time::Duration;

use rustix::process::Pid;

use super::lifecycle::Throwaway;
use super::{Engine, VmError};
use crate::changes::diff::Change;
use crate::os::procid::ProcId;
use crate::runtime::channel::Exit;
use crate::runtime::command::CommandSpec;
use crate::runtime::enter;
use crate::runtime::relay::{self, Outcome, Waited};
use crate::runtime::stdio::{self, CallerEnds, StdioPlan};
use crate::store::{Policy, StartMode, State, VmDir, VmName};

impl Engine {
    /// Run `spec` in VM `name` and return how it ended.
    pub fn run(&self, name: &VmName, mut spec: CommandSpec) -> Result<Exit, VmError> {
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
            // Kept open, to learn after the command whether a stop of the VM ended
            // it: past the namespaces' switch the store can't be reached by path.
            let init_fd = rustix::process::pidfd_open(
                rustix::process::Pid::from_raw(init.pid).ok_or(VmError::NotRunning {
                    name: name.to_string(),
                })?,
                rustix::process::PidfdFlags::empty(),
            )
            .ok();
            // The lock is held until the command runs in the VM: `suspend` (and
            // a commit's freeze) take it, so the VM can't be frozen while the
            // command is half-way in (in the freezer's cgroup but not yet in the
            // others), which would leave it, and this command, frozen outside the
            // VM's accounting until someone resumed the VM. Then it is let go, its
            // file kept open to take it again after the command.
            let entered = enter::enter(init, &cgroup, &spec, &stdio, ends.command_pipes());
            let unlocked = lock.unlock().ok();
            let (pid, master) = entered.map_err(VmError::enter(name))?;
            ends.release_command_ends();
            let outcome = relay::run(Waited::Child { pid }, master, &signals, ends)
                .map_err(|e| self.relay_error(name, e))?;
            if killed(outcome.exit)
                && let (Some(unlocked), Some(init_fd)) = (unlocked, init_fd)
            {
                // Ended by SIGTERM or SIGKILL: if that was a stop of the whole VM,
                // say so. A stop holds the VM's lock until the VM's init is gone.
                let _lock = unlocked.lock();
                let mut fds = [rustix::event::PollFd::new(
                    &init_fd,
                    rustix::event::PollFlags::IN,
                )];
                // A VM that ends kills what is left in it before its init is gone:
                // give the init a moment to finish.
                let moment = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 250_000_000,
                };
                let init_gone = rustix::event::poll(&mut fds, Some(&moment)).is_ok_and(|n| n > 0);
                if init_gone {
                    warn_stopped(name, outcome.exit);
                }
            }
            return Ok(outcome.exit);
        }
        let outcome = self.run_cold(
            &vm,
            &policy,
            (spec, stdio, ends),
            lock,
            (Throwaway::No, STOP_GRACE),
            &signals,
        )?;
        Ok(outcome.exit)
    }

    /// Start a stopped VM for one command. `lock` is released once the VM runs.
    fn run_cold(
        &self,
        vm: &VmDir,
        policy: &Policy,
        (spec, stdio, mut ends): (CommandSpec, StdioPlan, CallerEnds),
        lock: crate::store::Lock,
        (throwaway, grace): (Throwaway, Duration),
        signals: &nix::sys::signal::SigSet,
    ) -> Result<Outcome, VmError> {
        let name = vm.name();
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
        drop(lock);
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
        // The init exits by itself when nothing else runs in the VM (or the command
        // could not start); then reap it and clean up. If processes remain (a daemon
        // the command started), the VM keeps running until they end or `fvm stop`.
        let ended = match &result {
            Ok(o) => o.vm_ended,
            Err(_) => true,
        };
        tracing::debug!(vm = %name, ?result, "command ended");
        if ended {
            match self.finish(vm, pid, &init) {
                Ok(by_another) => {
                    tracing::debug!(vm = %name, "vm stopped and cleaned up");
                    if let Ok(o) = &result
                        && by_another
                        && killed(o.exit)
                    {
                        warn_stopped(name, o.exit);
                    }
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
        }
        if let Ok(o) = &result
            && o.timed_out
        {
            let limit = policy
                .limits
                .timeout
                .map(|t| t.to_string())
                .unwrap_or_default();
            tracing::warn!("vm {name} was stopped: its timeout of {limit} ran out");
        }
        result.map_err(|e| self.relay_error(name, e))
    }

    /// After a VM started by this process has exited: reap its init and clean up,
    /// unless another command already did (the state names a different init).
    /// True when another command had (a stop).
    fn finish(&self, vm: &VmDir, pid: Pid, init: &ProcId) -> Result<bool, VmError> {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        tracing::debug!(vm = %vm.name(), "init exited");
        let _lock = vm.lock()?;
        let state = self.load_state(vm)?;
        if state.init.as_ref() == Some(init) {
            self.reconcile(vm)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// `run --rm`: a throw-away VM, created for the command and deleted after it.
    /// Its layers live on a tmpfs in its own mount namespace: nothing is written to
    /// disk, and whatever it left running is stopped with it.
    pub fn run_temporary(
        &self,
        name: Option<VmName>,
        opts: &super::CreateOptions,
        spec: CommandSpec,
    ) -> Result<Exit, VmError> {
        self.run_job(name, opts, spec, &JobOptions::default())
            .map(|o| o.exit)
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
        let vm = self.create(&name, &opts)?;
        // Everything after the create runs in here, so that any failure still ends
        // in the delete below (with the VM's lock released first).
        let result = (|| {
            let lock = vm.lock()?;
            let signals = relay::block_signals().map_err(|e| self.relay_error(&name, e.into()))?;
            // Marked before it starts: a crash leaves a VM the next cleanup deletes.
            self.save_state(
                &vm,
                &State {
                    temporary: true,
                    ..State::default()
                },
            )?;
            let policy = self.policy(&vm)?;
            let (stdio, ends) =
                stdio::plan(spec.tty).map_err(|e| self.relay_error(&name, e.into()))?;
            self.run_cold(
                &vm,
                &policy,
                (spec, stdio, ends),
                lock,
                (throwaway, job.stop_grace),
                &signals,
            )
        })();
        // What the VM changed, read once nothing of it runs any more (a daemon
        // the command left is stopped first, as the delete would).
        let diff = match (&result, job.diff) {
            (Ok(_), true) => Some(
                self.stop(&name, Duration::ZERO)
                    .and_then(|_| self.diff(&name, &[])),
            ),
            _ => None,
        };
        let cleanup = self.delete(&name, true);
        let outcome = result?;
        // The command ran: a delete that failed afterwards (a full disk) is a
        // warning; the next `fvm doctor --cleanup` or command on the store removes
        // the throw-away VM.
        if let Err(e) = cleanup {
            tracing::warn!(
                "the throw-away vm {name} could not be deleted after the command: {}; `fvm doctor --cleanup` removes it",
                crate::error_line(&e)
            );
        }
        Ok(JobOutcome {
            exit: outcome.exit,
            diff,
        })
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
    pub exit: Exit,
    /// What the VM changed, when asked for: sorted by path, as `fvm diff`.
    pub diff: Option<Result<Vec<Change>, VmError>>,
}

/// Ended by SIGTERM or SIGKILL, as a stop of the VM ends its processes.
fn killed(exit: crate::runtime::channel::Exit) -> bool {
    matches!(
        exit,
        crate::runtime::channel::Exit::Signal(libc::SIGTERM | libc::SIGKILL)
    )
}

fn warn_stopped(name: &VmName, exit: crate::runtime::channel::Exit) {
    tracing::warn!(
        "vm {name} was stopped while the command ran (the command ended with status {})",
        exit.code()
    );
}

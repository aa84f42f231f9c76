//! A VM started with its command held back until a later call lets it run: what
//! an OCI runtime's `create` and `start` need (see `crate::oci`).

use super::lifecycle::{How, Throwaway};
use super::{Engine, VmError};
use crate::os::procid::ProcId;
use crate::runtime::command::CommandSpec;
use crate::runtime::control;
use crate::runtime::stdio::{Pipes, StdioPlan};
use crate::store::{StartMode, VmName};

/// What an OCI container asks of its VM beyond its command.
#[derive(Debug, Default)]
pub struct ContainerSetup {
    /// The container's mounts and masked paths.
    pub mounts: crate::mounts::plan::ContainerMounts,
    /// The VM's only lower layer, instead of the host (the bundle's rootfs).
    pub rootfs: Option<crate::mounts::plan::Rootfs>,
    /// A network namespace the VM joins (checked to be one by the caller),
    /// with the VM's network mode `host`: fvm sets up nothing of it.
    pub netns: Option<std::os::fd::OwnedFd>,
}

impl Engine {
    /// Start stopped VM `name` with `spec` as its command, which waits until
    /// [`Engine::release`]. The command gets this process's own fds 0-2. The
    /// VM's init is a child of this process: when it exits, the init passes to
    /// the nearest child subreaper (an OCI runtime's caller is one), which reaps
    /// it and reads the command's status from the init's exit status.
    /// `setup` holds the container's mounts and root. With
    /// `tty` the command's fds 0-2 are a pty from the VM's devpts instead, and
    /// its master is returned, for the caller to hand on.
    pub fn start_parked(
        &self,
        name: &VmName,
        spec: CommandSpec,
        setup: ContainerSetup,
        tty: bool,
    ) -> Result<(ProcId, Option<std::os::fd::OwnedFd>), VmError> {
        let stdio = if tty {
            StdioPlan::all_pty()
        } else {
            StdioPlan::inherit()
        };
        let (launched, init) = self.start_stopped(
            name,
            StartMode::Command,
            Some((spec, stdio, Pipes::default())),
            How {
                throwaway: Throwaway::No,
                parked: true,
                container: setup.mounts,
                rootfs: setup.rootfs,
                netns: setup.netns,
            },
        )?;
        if !tty {
            return Ok((init, None));
        }
        let failed =
            |why: String| VmError::relay(name)(crate::runtime::relay::RelayError::Init(why));
        match launched.chan.recv() {
            Ok(Some((crate::runtime::channel::Msg::Pty, Some(master)))) => Ok((init, Some(master))),
            Ok(Some((crate::runtime::channel::Msg::Failed { error }, _))) => Err(failed(error)),
            Ok(_) => Err(failed("the vm's init sent no pty".into())),
            Err(e) => Err(failed(format!("cannot read the vm's pty: {e}"))),
        }
    }

    /// Let the command of VM `name`, started by [`Engine::start_parked`], run.
    pub fn release(&self, name: &VmName) -> Result<(), VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        let state = self.load_state(&vm)?;
        let not_running = || VmError::NotRunning {
            name: name.to_string(),
        };
        let init = state
            .live_init(&self.cgroup_leaf(name))
            .ok_or_else(not_running)?;
        let fd = state.control_fd.ok_or_else(not_running)?;
        match control::send_start(init, fd) {
            Ok(true) => Ok(()),
            Ok(false) => Err(not_running()),
            Err(e) => Err(VmError::control(name)(e)),
        }
    }

    /// Send `signal` to VM `name`'s init (which passes SIGTERM, SIGINT,
    /// SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to every process of the VM;
    /// SIGKILL ends them all), or with `all` to every process of the VM. False
    /// when the VM is not running.
    pub fn signal(&self, name: &VmName, signal: i32, all: bool) -> Result<bool, VmError> {
        let vm = self.vm(name)?;
        let state = self.load_state(&vm)?;
        let Some(init) = state.live_init(&self.cgroup_leaf(name)) else {
            return Ok(false);
        };
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| VmError::BadSignal { signal })?;
        if all {
            let cgroup = self.cgroup(name)?;
            if sig == nix::sys::signal::Signal::SIGKILL {
                cgroup.kill_all().map_err(VmError::cgroup(name))?;
                return Ok(true);
            }
            for pid in cgroup.pids().map_err(VmError::cgroup(name))? {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
            return Ok(true);
        }
        let Some(handle) =
            crate::runtime::stop::InitHandle::open(init).map_err(VmError::stop(name))?
        else {
            return Ok(false);
        };
        let rsig =
            rustix::process::Signal::from_named_raw(signal).ok_or(VmError::BadSignal { signal })?;
        handle.signal(rsig).map_err(VmError::stop(name))?;
        Ok(true)
    }
}

/// A running VM's state, for callers that only need to tell these apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Suspended,
}

impl Engine {
    /// Whether VM `name` runs (and is suspended); `None` when it is stopped or
    /// does not exist.
    pub fn vm_status(&self, name: &VmName) -> Option<RunStatus> {
        let vm = self.vm(name).ok()?;
        let state = vm.load_state().ok()?;
        state.live_init(&self.cgroup_leaf(name))?;
        let frozen = self.cgroup(name).is_ok_and(|c| c.frozen());
        Some(if frozen {
            RunStatus::Suspended
        } else {
            RunStatus::Running
        })
    }

    /// Host pids of VM `name`'s processes (none when it is stopped).
    pub fn pids(&self, name: &VmName) -> Result<Vec<i32>, VmError> {
        if self.vm_status(name).is_none() {
            return Ok(Vec::new());
        }
        self.cgroup(name)?.pids().map_err(VmError::cgroup(name))
    }
}

impl Engine {
    /// Start `spec` in running VM `name` with this process's own fds 0-2 (with
    /// `tty`: a pty from the VM's devpts instead, whose master is returned), and
    /// return its host pid (a child of this process). Afterwards this process
    /// lives in the VM's namespaces: host paths no longer reach the host.
    pub fn exec_in(
        &self,
        name: &VmName,
        mut spec: CommandSpec,
        tty: bool,
    ) -> Result<(i32, Option<std::os::fd::OwnedFd>), VmError> {
        let vm = self.vm(name)?;
        let lock = vm.lock()?;
        let policy = self.policy(&vm)?;
        spec.limits = policy.limits.per_process();
        let state = self.reconcile(&vm)?;
        let init = state
            .live_init(&self.cgroup_leaf(name))
            .ok_or_else(|| VmError::NotRunning {
                name: name.to_string(),
            })?
            .clone();
        let cgroup = self.cgroup(name)?;
        if cgroup.frozen() {
            return Err(VmError::Suspended {
                name: name.to_string(),
            });
        }
        spec.confine = self
            .confinement(name, &policy)?
            .with_no_new_privs(spec.confine.no_new_privs);
        self.keep_watcher();
        let stdio = if tty {
            StdioPlan::all_pty()
        } else {
            StdioPlan::inherit()
        };
        let entered = crate::runtime::enter::enter(&init, &cgroup, &spec, &stdio, Pipes::default());
        drop(lock);
        let (pid, master) = entered.map_err(VmError::enter(name))?;
        Ok((pid.as_raw_nonzero().get(), master))
    }
}

//! The operations users ask for (create, start, run, stop, delete, list, ...),
//! built from the store, the mount plan, cgroups and the runtime.
//!
//! Every operation that changes a VM holds the VM's lock and first reconciles the
//! state file with reality: if the recorded init is dead (killed, crashed, or the
//! machine rebooted), the VM's leftovers (its cgroup) are removed and it is marked
//! stopped. That is how a crash is cleaned up by the next command.

mod changes;
mod console;
mod copy;
mod dns;
mod freeze;
mod info;
mod lifecycle;
mod limits;
mod maintain;
mod network;
mod parked;
mod processes;
mod run;
mod services;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

pub use crate::runtime::services::ServiceState;
/// What the `run` and `stop` of the CLI hand to and get from the engine.
pub use crate::runtime::stop::Stopped;
pub use crate::runtime::{CommandSpec, Program, TtyMode};
pub use crate::watch::watcher::WatcherHealth;
pub use changes::Selection;
pub use console::{PREVIEW_BYTES, Version, Versions};
pub use copy::{CopyProgress, CopyVmError};
pub use info::{VmInfo, VmStatus};
pub use lifecycle::CreateOptions;
pub use limits::Configured;
pub use parked::{ContainerSetup, RunStatus};
pub use processes::VmProcess;
pub use run::Ended;
pub use run::{JobOptions, JobOutcome, STOP_GRACE};
pub use services::{Autostarted, Detached, ServiceAction, ServiceStatus, describe};

use crate::cgroup::{CgroupError, Cgroups, VmCgroup};
use crate::mounts::{MountError, PlanError};
use crate::runtime::command::SpawnError;
use crate::runtime::enter::EnterError;
use crate::runtime::launch::LaunchError;
use crate::runtime::relay::RelayError;
use crate::store::{
    Cause, End, NameError, PolicyError, State, StateError, Store, StoreError, Subject, VmDir,
    VmName,
};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("vm {name:?}")]
    Policy {
        name: String,
        #[source]
        source: PolicyError,
    },
    #[error("vm {name:?}")]
    State {
        name: String,
        #[source]
        source: StateError,
    },
    #[error("vm {name:?} is already running")]
    AlreadyRunning { name: String },
    #[error("vm {name:?} is running (stop it first, or use --force)")]
    Running { name: String },
    #[error("cannot copy vm {name:?}: it is running (stop or suspend it first)")]
    CopyRunning { name: String },
    #[error("vm {name:?} is not running")]
    NotRunning { name: String },
    #[error("vm {name:?}: {message}")]
    Services { name: String, message: String },
    #[error("{signal} is not a signal")]
    BadSignal { signal: i32 },
    #[error(
        "cannot discard changes of vm {name:?} while it runs or is suspended (overlayfs doesn't support changing a mounted layer): stop it first"
    )]
    DiscardRunning { name: String },
    #[error(
        "vm {name:?} has an interrupted commit: finish it with `fvm commit {name}` or drop it with `fvm commit --abort {name}` first"
    )]
    DiscardUnfinishedCommit { name: String },
    #[error("vm {name:?} is suspended (fvm resume {name} first)")]
    Suspended { name: String },
    #[error("cannot copy vm {src:?} to {dst:?}")]
    Copy {
        src: String,
        dst: String,
        #[source]
        source: CopyVmError,
    },
    #[error("cannot start vm {name:?}")]
    Start {
        name: String,
        #[source]
        source: StartError,
    },
    #[error("vm {name:?}")]
    Cgroup {
        name: String,
        #[source]
        source: CgroupError,
    },
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    #[error(transparent)]
    Confine(#[from] crate::confine::seccomp::FilterError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    HostLimit(CgroupError),
    #[error(transparent)]
    HostDisk(crate::mounts::disk::DiskError),
    #[error("vm {name:?}")]
    Disk {
        name: String,
        #[source]
        source: crate::mounts::disk::DiskError,
    },
    #[error("vm {name:?} is running: {why}")]
    DiskWhileRunning { name: String, why: &'static str },
    #[error("vm {name:?}: {why}")]
    DiskFixed { name: String, why: &'static str },
    #[error("vm {name:?}: cannot move its layers for its new disk and inodes")]
    Rebuild {
        name: String,
        #[source]
        source: CopyVmError,
    },
    #[error("cannot reach the init of vm {name:?}")]
    Control {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot stop vm {name:?}")]
    Stop {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter vm {name:?}")]
    Enter {
        name: String,
        #[source]
        source: EnterError,
    },
    #[error("vm {name:?}")]
    Command {
        name: String,
        #[source]
        source: SpawnError,
    },
    #[error("vm {name:?}: cannot record fvm's own freeze of it in {}", .path.display())]
    Freeze {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {name:?}")]
    Changes {
        name: String,
        #[source]
        source: ChangesError,
    },
    #[error(
        "cannot hide {} from running vm {name:?} (stop that vm and try again)",
        .dir.display()
    )]
    HideDir {
        dir: PathBuf,
        name: String,
        #[source]
        source: Box<EnterError>,
    },
    #[error(
        "vm {name:?}: its directory {} is gone or is no longer its own (fvm doesn't make it again): delete the vm",
        .dir.display()
    )]
    DirGone { name: String, dir: PathBuf },
    #[error(
        "vm {name:?}: the host went down while it ran with volatile layers, so its changes may be incomplete; `fvm diff {name}` shows what is left: delete the vm, or remove {} to use them anyway",
        .markers.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(" and ")
    )]
    VolatileLost { name: String, markers: Vec<PathBuf> },
    #[error("vm {name:?}: cannot check its layers")]
    LayersCheck {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {name:?}: cannot sync its volatile layers")]
    LayersSync {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {name:?} is running: its layers can be changed to {layers} once it is stopped")]
    LayersWhileRunning { name: String, layers: &'static str },
    #[error("invalid path {}: it leads above /", crate::os::quote::path(.path))]
    BadPath { path: PathBuf },
    /// Exit status 1, as git's for a pathspec that matches no file.
    #[error("path {} matches no change in vm {name:?}", crate::os::quote::path(.path))]
    NoMatch { name: String, path: PathBuf },
    #[error("vm {name:?}")]
    Relay {
        name: String,
        #[source]
        source: RelayError,
    },
}

/// The `.map_err` of every error that is a VM's name and a cause:
/// `.map_err(VmError::state(vm.name()))` builds `VmError::State { name, source }`.
macro_rules! name_and_source {
    ($($ctor:ident => $variant:ident($source:ty);)*) => {
        impl VmError {
            $(
                pub(crate) fn $ctor<N: ToString + ?Sized>(
                    name: &N,
                ) -> impl Fn($source) -> VmError + Copy + '_ {
                    move |source| VmError::$variant {
                        name: name.to_string(),
                        source,
                    }
                }
            )*
        }
    };
}

name_and_source! {
    cgroup => Cgroup(CgroupError);
    changes => Changes(ChangesError);
    control => Control(std::io::Error);
    disk => Disk(crate::mounts::disk::DiskError);
    enter => Enter(EnterError);
    layers_check => LayersCheck(std::io::Error);
    layers_sync => LayersSync(std::io::Error);
    policy => Policy(PolicyError);
    rebuild => Rebuild(CopyVmError);
    relay => Relay(RelayError);
    start => Start(StartError);
    state => State(StateError);
    stop => Stop(std::io::Error);
}

/// What went wrong reading or writing a VM's changes.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error(transparent)]
    Scan(#[from] crate::changes::scan::ScanError),
    #[error(transparent)]
    Commit(#[from] crate::changes::commit::CommitError),
    #[error(transparent)]
    Discard(#[from] crate::changes::discard::DiscardError),
    #[error("cannot read the vm's layers")]
    Layers(#[from] std::io::Error),
}

/// Why a VM could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the host's mount table")]
    MountTable(#[source] std::io::Error),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Layers(#[from] MountError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("cannot connect the vm to its network")]
    Network(#[source] network::NetworkError),
    #[error(transparent)]
    Firewall(Box<VmError>),
    #[error(transparent)]
    Hide(Box<VmError>),
    #[error("cannot record the vm's state")]
    State(#[from] StateError),
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VmError {
    /// The process exit status for this failure: 127/126 when the command could not
    /// be executed, 125 for everything that is fvm's own failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmError::Command { source, .. }
            | VmError::Relay {
                source: RelayError::Spawn(source),
                ..
            }
            | VmError::Enter {
                source: EnterError::Spawn(source),
                ..
            } => source.exit_code(),
            VmError::NoMatch { .. } => 1,
            _ => 125,
        }
    }
}

/// The engine: a store plus the host's cgroup layout (detected on first use).
#[derive(Debug)]
pub struct Engine {
    store: Store,
    cgroups: OnceLock<Cgroups>,
    /// The host's mount table, read once per command (cgroups and mount plan).
    mount_table: OnceLock<String>,
}

impl Engine {
    pub fn new(store: Store) -> Engine {
        Engine {
            store,
            cgroups: OnceLock::new(),
            mount_table: OnceLock::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cgroups(&self) -> Result<&Cgroups, CgroupError> {
        if let Some(c) = self.cgroups.get() {
            return Ok(c);
        }
        let table = self.mount_table().map_err(|source| CgroupError::Detect {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
        let detected = Cgroups::from_mountinfo(table)?;
        Ok(self.cgroups.get_or_init(|| detected))
    }

    /// The text of /proc/self/mountinfo as this command first read it.
    pub fn mount_table(&self) -> std::io::Result<&str> {
        if let Some(t) = self.mount_table.get() {
            return Ok(t);
        }
        // /proc files have no size for read_to_string to go by: without room
        // up front it reads 32 bytes, then 32, 64, ... (a read per doubling).
        let mut text = String::with_capacity(16 * 1024);
        std::io::Read::read_to_string(
            &mut std::fs::File::open("/proc/self/mountinfo")?,
            &mut text,
        )?;
        Ok(self.mount_table.get_or_init(|| text))
    }

    /// The name of a VM's cgroup: `fvm-<store id>-<vm>`, so VMs of different stores
    /// never share one, and leftovers are easy to find; under its policy's
    /// `cgroup-parent` when it has one (`<parent>/fvm-<store id>-<vm>`).
    pub fn cgroup_leaf(&self, name: &VmName) -> String {
        let leaf = format!("fvm-{}-{}", self.store.id(), name);
        let parent = self
            .store
            .vm(name)
            .ok()
            .and_then(|vm| vm.load_policy().ok())
            .and_then(|p| p.cgroup_parent);
        match parent {
            Some(parent) => format!("{parent}/{leaf}"),
            None => leaf,
        }
    }

    fn cgroup(&self, name: &VmName) -> Result<VmCgroup, VmError> {
        let wrap = VmError::cgroup(name);
        self.cgroups()
            .map_err(wrap)?
            .vm(&self.cgroup_leaf(name))
            .map_err(wrap)
    }

    fn vm(&self, name: &VmName) -> Result<VmDir, VmError> {
        Ok(self.store.vm(name)?)
    }

    fn load_state(&self, vm: &VmDir) -> Result<State, VmError> {
        vm.load_state().map_err(VmError::state(vm.name()))
    }

    fn save_state(&self, vm: &VmDir, state: &State) -> Result<(), VmError> {
        vm.save_state(state).map_err(VmError::state(vm.name()))
    }

    /// Make the state file tell the truth. The caller holds the VM's lock.
    fn reconcile(&self, vm: &VmDir) -> Result<State, VmError> {
        self.reconcile_with(vm, None, false)
    }

    /// [`Engine::reconcile`], recording `end` as how the VM ended if it is found
    /// gone (a command's end that was its VM's, or a stop's); without one, how it
    /// ended is worked out from the state (see [`gone_end`]). `stopped_here`:
    /// the caller's `fvm stop` ended the VM's init, which it found running;
    /// then only the VM's own firewall rules go. Every other cleanup after a
    /// VM found gone (a crash, a command killed midway, whose rules may be
    /// anything from none to all) rebuilds the whole firewall from the VMs
    /// that run.
    fn reconcile_with(
        &self,
        vm: &VmDir,
        end: Option<End>,
        stopped_here: bool,
    ) -> Result<State, VmError> {
        // A VM left frozen by a command of fvm's that died is thawed first.
        self.thaw_abandoned(vm)?;
        let state = match vm.load_state() {
            Ok(s) => s,
            // A damaged state file of a VM with no process left can only mean
            // "stopped"; say so and start over rather than leave the VM unusable.
            Err(e @ StateError::Corrupt { .. })
                if self.cgroup(vm.name())?.pids().is_ok_and(|p| p.is_empty()) =>
            {
                tracing::warn!(
                    "vm {:?}: {}; it runs no process, so it is treated as stopped",
                    vm.name().as_str(),
                    crate::error_line(&e)
                );
                State::default()
            }
            Err(source) => {
                return Err(VmError::state(vm.name())(source));
            }
        };
        if state.live_init(&self.cgroup_leaf(vm.name())).is_some() {
            return Ok(state);
        }
        let cgroup = self.cgroup(vm.name())?;
        if state.status != crate::store::Status::Stopped || cgroup.exists() {
            tracing::debug!(vm = %vm.name(), "cleaning up after a vm that is gone");
            self.release_cgroup(vm.name(), &cgroup)?;
            // (A policy that can't be read doesn't stop the cleanup; the next
            // start reports it.)
            let policy = vm.load_policy().ok();
            if let Some(policy) = &policy {
                self.settle_volatile(vm, &vm.layers_path(policy))?;
            }
            let end = match (end, state.status) {
                (Some(end), _) => Some(end),
                (None, crate::store::Status::Running) => {
                    Some(gone_end(&state, policy.as_ref(), SystemTime::now()))
                }
                (None, crate::store::Status::Stopped) => None,
            };
            // Its rules go with it (its veth went with its network namespace).
            // After this command's own stop, its own pieces go (the firewall
            // is rebuilt if they aren't as its policy says). After anything
            // else (or without its policy) the firewall is rebuilt from the
            // VMs that run (not this one: its init is gone), under the network
            // lock, which a killed command's `nft` holds until it is gone: so
            // whatever a killed command left or was still adding goes. Before
            // the state says it stopped: a command killed in between leaves a
            // state that still sends the next one here, never rules no one
            // removes. (A firewall that can't be changed, nft gone, say, is
            // reported after the state is saved, so it doesn't hold every
            // command here.)
            let firewall = match &policy {
                Some(p) if p.network.mode != crate::net::NetMode::Bridge => Ok(()),
                Some(p) if stopped_here => {
                    self.refresh_firewall(vm.name(), network::FirewallChange::Stop(&p.network))
                }
                _ => self.rebuild_firewall(),
            };
            let stopped = state.stopped(end);
            self.save_state(vm, &stopped)?;
            firewall?;
            return Ok(stopped);
        }
        Ok(state)
    }

    /// After a VM with volatile layers stopped, in the boot of the host it started
    /// in: whatever its layers hold is still in the page cache. A detached process
    /// syncs the layers' filesystem and drops overlayfs's markers (see
    /// [`crate::mounts::volatile`]) once this command lets go of the VM's lock, so
    /// the stop doesn't wait for the host's dirty data to reach the disk. Until it
    /// has, the next command on the VM waits for the lock, or settles the layers
    /// itself ([`Engine::check_layers_trusted`]).
    fn settle_volatile(&self, vm: &VmDir, layers: &Path) -> Result<(), VmError> {
        let marked =
            crate::mounts::volatile::markers(layers).map_err(VmError::layers_sync(vm.name()))?;
        if marked.is_empty() {
            return Ok(());
        }
        let this_boot = crate::mounts::volatile::recorded_this_boot(&vm.volatile_boot_path())
            .map_err(VmError::layers_sync(vm.name()))?;
        if !this_boot {
            tracing::warn!(
                "vm {:?} ran with volatile layers when the host went down",
                vm.name().as_str()
            );
            return Ok(());
        }
        let settle = || {
            // Once the command that stopped the VM is done with it; unless the VM
            // was started again meanwhile (its next stop settles it then).
            let Ok(_lock) = vm.lock() else { return 1 };
            let running = vm
                .load_state()
                .is_ok_and(|s| s.live_init(&self.cgroup_leaf(vm.name())).is_some());
            if running {
                return 0;
            }
            match crate::mounts::volatile::settle(layers) {
                Ok(_) => 0,
                Err(_) => 1,
            }
        };
        crate::os::detach::spawn_detached(c"fvm-settle", settle)
            .map_err(VmError::layers_sync(vm.name()))?;
        tracing::debug!(vm = %vm.name(), "volatile layers: sync started");
        Ok(())
    }

    /// Check the layers of a VM that is not running, under its lock, before they are
    /// mounted, copied or committed. Overlayfs's volatile markers left by a run in
    /// this boot of the host (their sync in the background hasn't happened yet) are
    /// settled now; markers from an earlier boot mean the host went down while the
    /// VM ran, and the layers are refused.
    pub(super) fn check_layers_trusted(&self, vm: &VmDir, layers: &Path) -> Result<(), VmError> {
        let wrap = VmError::layers_check(vm.name());
        let markers = crate::mounts::volatile::markers(layers).map_err(wrap)?;
        if markers.is_empty() {
            return Ok(());
        }
        if crate::mounts::volatile::recorded_this_boot(&vm.volatile_boot_path()).map_err(wrap)? {
            crate::mounts::volatile::settle(layers).map_err(VmError::layers_sync(vm.name()))?;
            return Ok(());
        }
        Err(VmError::VolatileLost {
            name: vm.name().to_string(),
            markers,
        })
    }

    /// Kill whatever is left in a VM's cgroup (only ever its own processes) and
    /// remove it.
    fn release_cgroup(&self, name: &VmName, cgroup: &VmCgroup) -> Result<(), VmError> {
        let wrap = VmError::cgroup(name);
        // Usually the VM's init took everything down with it: then one rmdir per
        // hierarchy is all it takes.
        if cgroup.remove_if_empty().map_err(wrap)? {
            return Ok(());
        }
        cgroup.kill_all().map_err(wrap)?;
        cgroup.remove().map_err(wrap)
    }
}

/// How a VM whose init is found gone ended, when no command of fvm's saw it end:
/// `fvm stop` if the state says a stop was under way; its timeout if that had run
/// out by now (the init ends the VM then, and nobody else is told); else
/// something outside fvm (the host shutting down, or a kill of the init).
fn gone_end(state: &State, policy: Option<&crate::store::Policy>, now: SystemTime) -> End {
    // `fvm run` saw its command end and the VM with it (see `State::ending`).
    if let Some(ending) = &state.ending {
        return ending.said_of(Subject::Vm);
    }
    if state.stopping {
        return End {
            hung_up: state.hanging_up,
            ..End::now(Cause::Stop, Subject::Vm)
        };
    }
    let timeout = policy.and_then(|p| p.limits.timeout);
    let started = state
        .started_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    if let (Some(timeout), Some(started)) = (timeout, started)
        && started
            .checked_add(std::time::Duration::from_secs(timeout.0))
            .is_some_and(|deadline| deadline <= now)
    {
        return End {
            limit: Some(timeout.0),
            ..End::now(Cause::Timeout, Subject::Vm)
        };
    }
    End::now(Cause::Outside, Subject::Vm)
}

#[cfg(test)]
mod end_tests {
    use super::*;
    use crate::store::{Policy, Status};

    #[test]
    fn a_vm_found_gone_ended_by_stop_timeout_or_from_outside() {
        let started = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let state = State {
            status: Status::Running,
            started_at: Some(humantime::format_rfc3339_seconds(started).to_string()),
            ..State::default()
        };
        let mut policy = Policy::new(VmName::new("v").unwrap(), None);
        policy.limits.timeout = Some(crate::limits::Seconds(60));
        let at = |secs| started + std::time::Duration::from_secs(secs);
        assert_eq!(
            gone_end(&state, Some(&policy), at(59)).cause,
            Cause::Outside
        );
        let end = gone_end(&state, Some(&policy), at(61));
        assert_eq!((end.cause, end.limit), (Cause::Timeout, Some(60)));
        assert_eq!(gone_end(&state, None, at(61)).cause, Cause::Outside);
        let stopping = State {
            stopping: true,
            hanging_up: Some(1),
            ..state.clone()
        };
        let end = gone_end(&stopping, Some(&policy), at(61));
        // The stop's intent says how many sessions it hangs up.
        assert_eq!((end.cause, end.hung_up), (Cause::Stop, Some(1)));
        // A start time that can't be read proves no timeout.
        let odd = State {
            started_at: Some("yesterday".into()),
            ..state
        };
        assert_eq!(gone_end(&odd, Some(&policy), at(61)).cause, Cause::Outside);
    }
}

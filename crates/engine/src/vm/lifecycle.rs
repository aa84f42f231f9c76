//! create, start, stop, delete, and the launch they share with `run`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::network::FirewallChange;
use super::{Engine, StartError, VmError};
use crate::error_line;
use crate::layers::Layers;
use crate::limits::Limits;
use crate::mounts::{self, Layout, MountPlan, volatile};
use crate::os::procid::ProcId;
use crate::os::sys;
use crate::runtime::command::CommandSpec;
use crate::runtime::enter;
use crate::runtime::launch::{self, LaunchSpec, Launched};
use crate::runtime::stdio::{Pipes, StdioPlan};
use crate::runtime::stop::{self, Stopped};
use crate::store::{
    Cause, End, Policy, StartMode, State, StateError, Status, Subject, VmDir, VmName,
};

/// What `create` takes besides the name.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub description: Option<String>,
    /// Keep the VM's layers here instead of inside the store.
    pub dir: Option<PathBuf>,
    /// Resource limits, checked against this host before the VM is created.
    pub limits: Limits,
    pub security: crate::confine::Security,
    /// How durable the VM's layers are.
    pub layers: Layers,
    /// The network; a bridged VM without an address gets the lowest free one.
    pub network: crate::net::NetPolicy,
    /// A throw-away VM (`run --rm`): its layers are a tmpfs, which takes any
    /// `disk` and `inodes` limit on any host.
    pub temporary: bool,
    /// Make the VM's cgroup in this cgroup (a path from the hierarchy's root),
    /// which must exist in every hierarchy in use.
    pub cgroup_parent: Option<String>,
}

/// Whether a VM being started is a throw-away one, and where its layers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Throwaway {
    /// A VM of the store, kept after it stops.
    No,
    /// Deleted after its command, its layers on a tmpfs private to the VM.
    Tmpfs,
    /// Deleted after its command, its layers in the store until then, so that
    /// what it changed can be read once it has stopped (`run --diff-out`).
    OnDisk,
}

/// How a VM is launched.
#[derive(Debug)]
pub(super) struct How {
    pub throwaway: Throwaway,
    /// The init waits for a start message before the command (see
    /// `runtime::launch::LaunchSpec::parked`).
    pub parked: bool,
    /// An OCI container's mounts and masked paths.
    pub container: mounts::plan::ContainerMounts,
    /// The VM's only lower layer, instead of the host (an OCI container's
    /// rootfs).
    pub rootfs: Option<mounts::plan::Rootfs>,
    /// A network namespace the VM joins (an OCI container's, by path).
    pub netns: Option<std::os::fd::OwnedFd>,
}

impl From<Throwaway> for How {
    fn from(throwaway: Throwaway) -> How {
        How {
            throwaway,
            parked: false,
            container: Default::default(),
            rootfs: None,
            netns: None,
        }
    }
}

/// How long `delete --force` lets a VM shut down before killing it.
const FORCE_GRACE: Duration = Duration::ZERO;

/// On cgroup v1 a VM's init moves itself into the VM's cgroup, its first step
/// after the clone (on v2 it is made there). Until it has, nothing takes it for
/// the VM's init (see [`ProcId::is_vm_init`]): not `status`, and not a rebuild
/// of the store's firewall by any command, which would leave the VM's rules out
/// while it runs. So a start records its init only once it is in (or gone,
/// which the start then finds out from the init's channel).
fn wait_until_in_cgroup(pid: i32, leaf: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_micros(50);
    while !crate::os::procid::in_cgroup(pid, leaf)
        && ProcId::of(pid).is_ok_and(|p| p.is_alive())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

impl Engine {
    pub fn create(&self, name: &VmName, opts: &CreateOptions) -> Result<VmDir, VmError> {
        self.check_limits(&opts.limits)?;
        let cgroup_parent = match &opts.cgroup_parent {
            Some(given) => {
                let parent = crate::cgroup::parent_path(given).map_err(VmError::cgroup(name))?;
                self.cgroups()
                    .and_then(|c| c.check_parent(&parent))
                    .map_err(VmError::cgroup(name))?;
                Some(parent)
            }
            None => None,
        };
        let dir = opts.dir.as_deref().map(canonical_dir).transpose()?;
        if !opts.temporary {
            let layers = dir.clone().unwrap_or_else(|| self.store.root().join("vms"));
            self.check_disk(&layers, &opts.limits)?;
        }
        let mut policy = Policy::new(name.clone(), dir);
        if let Some(d) = &opts.description {
            policy.description = d.clone();
        }
        policy.limits = opts.limits.clone();
        policy.security = opts.security;
        policy.layers = opts.layers;
        policy.cgroup_parent = cgroup_parent;
        let mut network = opts.network.clone();
        let made = self.with_network(name, &mut network, |net| {
            policy.network = net.clone();
            if !opts.temporary {
                return Ok(self.store.create_vm(&policy)?);
            }
            // A throw-away VM is marked so in the directory that becomes it: a
            // crash at any point leaves a VM the next cleanup deletes.
            let marked = State {
                temporary: true,
                ..State::default()
            };
            Ok(self.store.create_vm_with(&policy, |tmp| {
                marked
                    .save(&tmp.join("state.json"))
                    .map_err(|e| std::io::Error::other(crate::error_line(&e)))
            })?)
        })?;
        // The VM was made with a `hide-pending` mark: until the VMs that already
        // run cover its `--dir` (and it has a new inode, which nothing a VM
        // opened before can reach), it can't start. A create killed before the
        // mark goes leaves a VM whose next start (or `run`) does both first.
        if let Some(dir) = &policy.dir {
            let hidden = self
                .hide_from_running(name, dir)
                .and_then(|()| Ok(self.store.renew_dir(dir, name)?));
            if let Err(e) = hidden {
                let _ = self.delete(name, true);
                return Err(e);
            }
            self.clear_hide_pending(&made)?;
        }
        Ok(made)
    }

    fn clear_hide_pending(&self, vm: &VmDir) -> Result<(), VmError> {
        let path = vm.hide_pending_path();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(VmError::Store(crate::store::StoreError::Open {
                    path,
                    source: e,
                }))
            }
            _ => Ok(()),
        }
    }

    /// Cover `dir` (a new VM's layers) inside every other VM that runs now: those
    /// started before it was in the store's index of `dir`s. Each VM is locked
    /// while it is covered (for at most [`enter::HIDE_DEADLINE`]), so one that is
    /// starting is covered once it is assembled, and a VM that starts later has
    /// `dir` in its mount plan (or covers it itself, see [`Engine::launch`]).
    /// Any VM that can't be covered is an error: fail closed.
    fn hide_from_running(&self, new: &VmName, dir: &Path) -> Result<(), VmError> {
        let mut plan = None;
        for other in self.store.names()? {
            if &other == new {
                continue;
            }
            let Ok(vm) = self.vm(&other) else { continue };
            let leaf = self.cgroup_leaf(&other);
            let live = |vm: &VmDir| {
                vm.load_state()
                    .ok()
                    .and_then(|s| s.live_init(&leaf).cloned())
            };
            if live(&vm).is_none() {
                continue;
            }
            let failed = |source| VmError::HideDir {
                dir: dir.to_owned(),
                name: other.to_string(),
                source: Box::new(source),
            };
            let _lock = match lock_within(&vm, enter::HIDE_DEADLINE) {
                Ok(Some(lock)) => lock,
                Ok(None) => return Err(failed(enter::EnterError::Timeout(enter::HIDE_DEADLINE))),
                // Deleted meanwhile.
                Err(crate::store::StoreError::NoSuchVm { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(init) = live(&vm) else { continue };
            if plan.is_none() {
                plan = Some(self.hide_points(new, &[dir.to_owned()])?);
            }
            let paths = plan.as_deref().unwrap_or_default();
            enter::hide_paths(&init, paths, enter::Missing::Error).map_err(failed)?;
            tracing::debug!(vm = %other, dir = %dir.display(), "new vm dir hidden in running vm");
        }
        Ok(())
    }

    /// After the VM is assembled and before its processes run: every `--dir` of
    /// the store is covered in it, checked against its mount table (read from the
    /// host). One made after its mount plan was read (a create that found this VM
    /// not yet running) is covered now, as the create does. Under the store lock,
    /// so that no `--dir` is half renewed ([`crate::store::Store::renew_dir`])
    /// meanwhile. The VM's view is fresh: a path it doesn't show at all is hidden
    /// by its own layer for good and needs no cover.
    fn cover_new_dirs(&self, name: &VmName, init: &ProcId) -> Result<(), VmError> {
        let _lock = self.store.lock()?;
        let dirs: Vec<PathBuf> = self
            .store
            .dirs()
            .into_iter()
            .filter(|d| d.is_dir())
            .collect();
        if dirs.is_empty() {
            return Ok(());
        }
        let covered = enter::covered(init);
        let missing: Vec<PathBuf> = self
            .hide_points(name, &dirs)?
            .into_iter()
            .filter(|p| !covered.contains(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        enter::hide_paths(init, &missing, enter::Missing::Hidden).map_err(|source| {
            VmError::HideDir {
                dir: missing[0].clone(),
                name: name.to_string(),
                source: Box::new(source),
            }
        })?;
        Ok(())
    }

    /// Where the host's mount table shows `dirs` (paths as a VM sees them).
    fn hide_points(&self, name: &VmName, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, VmError> {
        let text = self
            .mount_table()
            .map_err(|e| self.start_error(name, StartError::MountTable(e)))?;
        let table = mounts::mountinfo::parse(text).map_err(|e| {
            self.start_error(
                name,
                StartError::MountTable(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            )
        })?;
        let built = mounts::plan::build(&table, dirs, &|p: &Path| p.is_dir())
            .map_err(|e| self.start_error(name, e.into()))?;
        Ok(built.hide)
    }

    /// Start a stopped VM in the background.
    pub fn start(&self, name: &VmName) -> Result<ProcId, VmError> {
        self.start_stopped(name, StartMode::Background, None, Throwaway::No.into())
            .map(|(_, init)| init)
    }

    /// Start stopped VM `name` as `mode`, with `command` (see [`Engine::launch`]).
    pub(super) fn start_stopped(
        &self,
        name: &VmName,
        mode: StartMode,
        command: Option<(CommandSpec, StdioPlan, Pipes<'_>)>,
        how: How,
    ) -> Result<(Launched, ProcId), VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        let policy = self.policy(&vm)?;
        if self
            .reconcile(&vm)?
            .live_init(&self.cgroup_leaf(name))
            .is_some()
        {
            return Err(VmError::AlreadyRunning {
                name: name.to_string(),
            });
        }
        self.launch(&vm, &policy, mode, command, how)
    }

    pub(super) fn policy(&self, vm: &VmDir) -> Result<Policy, VmError> {
        vm.load_policy().map_err(VmError::policy(vm.name()))
    }

    fn start_error(&self, name: &VmName, source: StartError) -> VmError {
        VmError::start(name)(source)
    }

    /// Assemble and launch a VM. The caller holds its lock and has checked it is
    /// stopped. On success the state file names the new init, which waits for
    /// [`Launched::go`].
    pub(super) fn launch(
        &self,
        vm: &VmDir,
        policy: &Policy,
        mode: StartMode,
        command: Option<(CommandSpec, StdioPlan, Pipes<'_>)>,
        how: impl Into<How>,
    ) -> Result<(Launched, ProcId), VmError> {
        let How {
            throwaway,
            parked,
            container,
            rootfs,
            netns,
        } = how.into();
        let name = vm.name();
        let temporary = throwaway != Throwaway::No;
        let tmpfs = throwaway == Throwaway::Tmpfs;
        let fail = |e: StartError| self.start_error(name, e);
        // A policy written on another host, or by hand, may ask for what this one
        // can't enforce: refuse to start rather than run without the limit.
        self.check_limits(&policy.limits)?;
        if let Some(dir) = &policy.dir {
            // Made again empty, it would be a directory no VM hides and `delete`
            // leaves behind.
            if !self.store.owns_dir(dir, name) {
                return Err(VmError::DirGone {
                    name: name.to_string(),
                    dir: dir.clone(),
                });
            }
            if vm.hide_pending_path().exists() {
                self.hide_from_running(name, dir)?;
                self.store.renew_dir(dir, name)?;
                self.clear_hide_pending(vm)?;
            }
        }
        let policy = &self.ensure_address(vm, policy)?;
        self.check_host_ports(&policy.network)
            .map_err(VmError::Network)?;
        // The plan is of the host's mounts: read them before a VM's image is
        // mounted (in a mount namespace of this process; the VM's init is cloned
        // into a copy of it, which keeps the image mounted while the VM runs).
        let mut plan = match &rootfs {
            None => self.plan(policy.dir.as_deref()).map_err(fail)?,
            Some(r) => {
                let mut plan = mounts::plan::of_rootfs(r).map_err(|e| fail(e.into()))?;
                plan.cgroups = self.cgroups().map_err(|e| fail(e.into()))?.view();
                plan
            }
        };
        plan.container = container;
        let image = if tmpfs {
            None
        } else {
            self.image_layers(vm, &vm.layers_path(policy), &policy.limits)?
        };
        // Nothing of the VM runs now: entries committed while it last ran can go.
        self.settle_commits(vm)?;
        // The debug events' names are what bench/ times (`fvm -vv`); the info
        // lines say the same in words (`fvm -v`).
        tracing::debug!(vm = %name, overlays = plan.overlays.len(), "mount plan built");
        tracing::info!(
            "starting vm {name}: mounting {} layers",
            plan.overlays.len()
        );
        let layout = Layout {
            staging: vm.staging_path(),
            layers: vm.layers_path(policy),
            tmpfs_layers: tmpfs,
            tmpfs_limits: if tmpfs {
                mounts::disk::tmpfs_options(&policy.limits)
            } else {
                String::new()
            },
            volatile: policy.layers == Layers::Volatile && !temporary,
        };
        // The VM is not running, so a volatile marker left in its layers means
        // the host went down while it ran (see `mounts::volatile`).
        self.check_layers_trusted(vm, &layout.layers)?;
        if layout.volatile {
            volatile::record_boot(&vm.volatile_boot_path())
                .map_err(|source| VmError::layers_sync(name)(source))?;
        }
        make_dir(&layout.staging).map_err(fail)?;
        make_dir(&vm.logs_path()).map_err(fail)?;
        if tmpfs {
            make_dir(&layout.layers).map_err(fail)?;
        } else {
            mounts::apply::prepare_layers(&plan, &layout.layers).map_err(|e| fail(e.into()))?;
            if image.is_none() {
                self.limit_layers(vm, &layout.layers, &policy.limits)?;
            }
        }
        let confinement = self.confinement(name, policy)?;
        let cgroup = self.cgroup(name)?;
        cgroup.create().map_err(|e| fail(e.into()))?;
        if let Err(e) = cgroup.set_limits(&policy.limits, false) {
            let _ = cgroup.remove();
            return Err(fail(e.into()));
        }
        tracing::debug!(vm = %name, "layers and cgroup ready");
        let pipes = command.as_ref().map_or(Pipes::default(), |(_, _, p)| *p);
        let spec = LaunchSpec {
            name: name.to_string(),
            plan,
            layout,
            mode,
            stdio: command
                .as_ref()
                .map_or(StdioPlan::inherit(), |(_, s, _)| *s),
            command: command.map(|(mut c, _, _)| {
                c.limits = policy.limits.per_process();
                c.confine = confinement
                    .clone()
                    .with_no_new_privs(c.confine.no_new_privs);
                c
            }),
            namespaces: sys::ns::MOUNT
                | sys::ns::PID
                | sys::ns::IPC
                | sys::ns::UTS
                | if policy.network.mode.own_namespace() {
                    sys::ns::NET
                } else {
                    0
                },
            // A bridged VM asks the store's resolver (the bridge's address),
            // unless its policy names its own servers.
            dns: if policy.network.dns.is_empty()
                && policy.network.mode == crate::net::NetMode::Bridge
            {
                vec![self.store_network()?.gateway().addr]
            } else {
                policy.network.dns.clone()
            },
            timeout: policy.limits.timeout.map(|t| t.0),
            confined: confinement.is_confined(),
            services: policy.services.clone(),
            service_limits: policy.limits.per_process(),
            service_confine: confinement.clone(),
            logs: Some(vm.logs_path()),
            end_with_caller: temporary,
            parked,
            netns,
        };
        let launched = match launch::launch(&spec, pipes, &cgroup) {
            Ok(l) => l,
            Err(e) => {
                let _ = cgroup.kill_all().and_then(|()| cgroup.remove());
                return Err(fail(e.into()));
            }
        };
        // The init has its copy of the image's mount: this process goes back to
        // the host's mount namespace before it starts anything else.
        drop(image);
        // Record the init while it assembles the VM, then let it go on.
        wait_until_in_cgroup(launched.pid.as_raw_nonzero().get(), &self.cgroup_leaf(name));
        let started = ProcId::of(launched.pid.as_raw_nonzero().get())
            .map_err(|e| StartError::Launch(launch::LaunchError::Channel(e)))
            .and_then(|init| {
                let state = State {
                    status: Status::Running,
                    init: Some(init.clone()),
                    mode: Some(mode),
                    started_at: Some(
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                    ),
                    temporary,
                    control_fd: Some(launched.control_fd),
                    stopping: false,
                    hanging_up: None,
                    // How it ended last time stays for `inspect` until it ends again.
                    end: vm.load_state().ok().and_then(|s| s.end),
                    request_fd: Some(launched.request_fd),
                    ending: None,
                };
                vm.save_state(&state).map_err(StartError::State)?;
                tracing::debug!(vm = %name, pid = init.pid, "init cloned and recorded");
                // The store's watcher learns of the VM before its firewall
                // rules go in: if this command is killed from here on, the
                // watcher finds the VM's init gone (or its state saying it runs
                // without one) and rebuilds the firewall without it.
                if policy.network.mode == crate::net::NetMode::Bridge {
                    self.ensure_watcher();
                }
                // The VM's processes start only after `Go`: by then its network is up
                // and the firewall knows it.
                self.connect_vm(vm, &policy.network, init.pid)
                    .map_err(StartError::Network)?;
                if policy.network.mode == crate::net::NetMode::Bridge {
                    self.refresh_firewall(name, FirewallChange::Start(&policy.network))
                        .map_err(|e| StartError::Firewall(Box::new(e)))?;
                }
                Ok(init)
            })
            .and_then(|init| {
                // The init reports the VM assembled, then waits for `Go` before
                // anything of the VM runs.
                launched.ready()?;
                tracing::debug!(vm = %name, "vm assembled");
                tracing::info!("vm {name} runs");
                Ok(init)
            });
        // A `--dir` VM made while this one started may have missed its mount plan
        // (and the create, this VM's lock): cover it before the VM's processes run.
        let started = started.and_then(|init| {
            self.cover_new_dirs(name, &init)
                .map_err(|e| StartError::Hide(Box::new(e)))?;
            launched
                .go()
                .map_err(|e| StartError::Launch(launch::LaunchError::Channel(e)))?;
            Ok(init)
        });
        match started {
            Ok(init) => {
                self.ensure_watcher();
                Ok((launched, init))
            }
            Err(e) => {
                // Without `Go` the init exits after setup; either way, reap it.
                let pid = launched.pid;
                drop(launched.chan);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                let _ = cgroup.kill_all().and_then(|()| cgroup.remove());
                // The rules before the state (see `Engine::reconcile`): the
                // whole firewall rebuilt from the VMs that run (not this one:
                // its init is gone), whatever of this VM's pieces went in.
                if policy.network.mode == crate::net::NetMode::Bridge {
                    let _ = self.rebuild_firewall();
                }
                let _ = vm.save_state(&State {
                    temporary,
                    ..State::default()
                });
                Err(fail(e))
            }
        }
    }

    /// The mount plan for a VM of this store, from the host's mount table now.
    /// `own_dir` is the VM's `dir`, hidden too even if the store's index of `dir`s
    /// misses it (after a hand edit of the policy).
    pub fn plan(&self, own_dir: Option<&Path>) -> Result<MountPlan, StartError> {
        let text = self.mount_table().map_err(StartError::MountTable)?;
        let table = mounts::mountinfo::parse(text).map_err(|e| {
            StartError::MountTable(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        let mut private = self.store.private_paths();
        private.extend(own_dir.map(Path::to_path_buf));
        let mut plan = mounts::plan::build(&table, &private, &|p: &Path| p.is_dir())?;
        plan.cgroups = self.cgroups()?.view();
        Ok(plan)
    }

    /// Stop a running VM: SIGTERM, then SIGKILL after `grace`. A suspended VM is
    /// resumed first, so its processes can take the SIGTERM.
    pub fn stop(&self, name: &VmName, grace: Duration) -> Result<Stopped, VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        self.thaw_abandoned(&vm)?;
        let state = match vm.load_state() {
            Ok(state) => state,
            // A damaged state file names no init to stop; the VM's cgroup still
            // holds every process it has. End them, then clean up as after a crash.
            Err(e @ StateError::Corrupt { .. }) => {
                let cgroup = self.cgroup(name)?;
                if cgroup.pids().is_ok_and(|p| p.is_empty()) {
                    self.reconcile(&vm)?;
                    return Ok(Stopped::NotRunning);
                }
                tracing::warn!(
                    "vm {name}: {}; ending its processes through its cgroup",
                    error_line(&e)
                );
                self.unfreeze(name, &cgroup)?;
                cgroup.kill_all().map_err(VmError::cgroup(name))?;
                let end = End {
                    killed: Some(true),
                    ..End::now(Cause::Stop, Subject::Vm)
                };
                self.reconcile_with(&vm, Some(end), false)?;
                return Ok(Stopped::Killed);
            }
            Err(source) => {
                return Err(VmError::state(name)(source));
            }
        };
        let leaf = self.cgroup_leaf(name);
        let init = state.live_init(&leaf);
        let mut hung_up = 0;
        if init.is_some() {
            let cgroup = self.cgroup(name)?;
            self.unfreeze(name, &cgroup)?;
            let sessions = if grace.is_zero() {
                Vec::new()
            } else {
                stop::pty_sessions(&cgroup.pids().unwrap_or_default(), &leaf)
            };
            // Recorded before the first signal: whoever finds the init gone
            // (this command, a `run` or `shell` whose command it ends, the
            // watcher) knows fvm stopped it, and how many sessions it hangs
            // up. A stop goes on without it (a full disk): only the reason
            // others see is at stake, and this command records its own.
            let intent = State {
                stopping: true,
                hanging_up: Some(u32::try_from(sessions.len()).unwrap_or(u32::MAX)),
                ..state.clone()
            };
            if let Err(e) = self.save_state(&vm, &intent) {
                tracing::debug!(vm = %name, "cannot record the stop's intent: {}", error_line(&e));
            }
            hung_up = stop::hang_up(&sessions);
        }
        if let Some(init) = init {
            tracing::info!("stopping vm {name}");
            // Its services first, in reverse order, within the grace time.
            self.stop_services(name, init, &state, grace);
        }
        let outcome = match init {
            Some(init) => match stop::stop(init, grace) {
                // Found running above, gone before its first signal: the
                // hang-up of its sessions ended it (a shell as its command).
                Ok(Stopped::NotRunning) => Stopped::Terminated,
                Ok(outcome) => outcome,
                Err(e) => {
                    // Not stopped: the VM's end, when it comes, is not this stop's.
                    if vm
                        .load_state()
                        .is_ok_and(|now| now.init.as_ref() == Some(init))
                    {
                        let _ = self.save_state(&vm, &state);
                    }
                    return Err(VmError::stop(name)(e));
                }
            },
            None => Stopped::NotRunning,
        };
        let end = (outcome != Stopped::NotRunning).then(|| End {
            hung_up: Some(u32::try_from(hung_up).unwrap_or(u32::MAX)),
            killed: Some(outcome == Stopped::Killed),
            ..End::now(Cause::Stop, Subject::Vm)
        });
        // Cleans up after the init, the VM's firewall rules included. The VM has
        // stopped either way: a cleanup that fails now (a full disk) is reported,
        // and the next command on the VM finishes it.
        if let Err(e) = self.reconcile_with(&vm, end, init.is_some()) {
            if outcome == Stopped::NotRunning {
                return Err(e);
            }
            tracing::warn!(
                "vm {name} stopped, but cleaning up after it failed: {}; the next command on it finishes that",
                error_line(&e)
            );
        }
        Ok(outcome)
    }

    /// Suspend a running VM: every process of it is frozen (cgroup freezer) until
    /// [`Engine::resume`]. Suspending a suspended VM does nothing.
    pub fn suspend(&self, name: &VmName) -> Result<(), VmError> {
        let (_lock, cgroup) = self.live_cgroup(name)?;
        if cgroup.frozen() {
            return Ok(());
        }
        cgroup.freeze().map_err(VmError::cgroup(name))
    }

    /// Let a suspended VM's processes run again. Resuming a VM that isn't
    /// suspended does nothing.
    pub fn resume(&self, name: &VmName) -> Result<(), VmError> {
        let (_lock, cgroup) = self.live_cgroup(name)?;
        cgroup.thaw().map_err(VmError::cgroup(name))
    }

    /// Thaw a suspended VM about to be stopped: a frozen process takes no signal,
    /// not even SIGKILL, until it is thawed.
    fn unfreeze(&self, name: &VmName, cgroup: &crate::cgroup::VmCgroup) -> Result<(), VmError> {
        if !cgroup.frozen() {
            return Ok(());
        }
        cgroup.thaw().map_err(VmError::cgroup(name))
    }

    /// The cgroup of running VM `name`, with the VM locked; an error if it isn't
    /// running.
    fn live_cgroup(
        &self,
        name: &VmName,
    ) -> Result<(crate::store::Lock, crate::cgroup::VmCgroup), VmError> {
        let vm = self.vm(name)?;
        let lock = vm.lock()?;
        let state = self.reconcile(&vm)?;
        if state.live_init(&self.cgroup_leaf(name)).is_none() {
            return Err(VmError::NotRunning {
                name: name.to_string(),
            });
        }
        Ok((lock, self.cgroup(name)?))
    }

    /// Delete a VM and its layers. A running VM is refused unless `force`, which
    /// kills it first. A stopped VM is always deletable, even with a broken policy
    /// or state file.
    pub fn delete(&self, name: &VmName, force: bool) -> Result<(), VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        self.delete_locked(&vm, force)
    }

    /// [`Engine::delete`] of `vm`, whose lock the caller holds (and lets go of
    /// when it is done: the layers' remover waits for it).
    pub(super) fn delete_locked(&self, vm: &VmDir, force: bool) -> Result<(), VmError> {
        let name = vm.name();
        let cgroup = self.cgroup(name)?;
        let state = vm.load_state().unwrap_or_default();
        let running = state.live_init(&self.cgroup_leaf(name)).is_some()
            || cgroup.pids().map(|p| !p.is_empty()).unwrap_or(false);
        if running {
            if !force {
                return Err(VmError::Running {
                    name: name.to_string(),
                });
            }
            self.unfreeze(name, &cgroup)?;
            if let Some(init) = state.live_init(&self.cgroup_leaf(name)) {
                stop::stop(init, FORCE_GRACE).map_err(VmError::stop(name))?;
            }
        }
        self.release_cgroup(name, &cgroup)?;
        // Its temp files on the host are known only from its journal.
        if let Some(done) = self.settle_unfinished_commit(vm, false)? {
            tracing::warn!("vm {:?}: {done}", name.as_str());
        }
        // With an unreadable policy only the store directory is known to be ours.
        let policy = vm.load_policy().ok();
        self.release_disk_limits(vm, policy.as_ref());
        // The VM leaves the store at once; its layers (many thousands of files
        // after an upgrade) are removed by a process of their own, which takes
        // the VM's lock, moved into the trash with its directory, when this
        // command lets go of it. A crash before the trash is empty leaves it to
        // the next command on the store (or `doctor --cleanup`). A `--dir` VM's
        // layers, in its dir, go the same way: the dir stays in the store's
        // index (hidden in every VM) until it is gone.
        let trash = self.store.trash_vm(vm)?;
        if let Err(e) = self.store.empty_trash_in_background(&trash) {
            tracing::debug!("removing the deleted vm's layers here: {e}");
            self.store.empty_trash(&trash)?;
        }
        if policy.is_some_and(|p| p.network.mode == crate::net::NetMode::Bridge) {
            self.release_network()?;
        }
        Ok(())
    }
}

/// The VM's lock, if it can be had within `deadline`.
fn lock_within(
    vm: &VmDir,
    deadline: Duration,
) -> Result<Option<crate::store::Lock>, crate::store::StoreError> {
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(lock) = vm.try_lock()? {
            return Ok(Some(lock));
        }
        if std::time::Instant::now() >= end {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--dir` as an absolute path whose parent has no symlinks (the directory itself
/// may not exist yet), so that hiding it inside VMs, which works on the host's
/// mount table, finds it.
fn canonical_dir(dir: &Path) -> Result<PathBuf, VmError> {
    let bad = |source| {
        VmError::Store(crate::store::StoreError::Open {
            path: dir.to_owned(),
            source,
        })
    };
    let abs = std::path::absolute(dir).map_err(bad)?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Err(bad(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a directory a vm can own",
        )));
    };
    Ok(std::fs::canonicalize(parent).map_err(bad)?.join(name))
}

fn make_dir(path: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(StartError::Dir {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

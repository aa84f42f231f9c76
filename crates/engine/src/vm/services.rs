//! Services, detached commands (`fvm run -d`), logs and autostart: the host's
//! side. The VM's init keeps the services (see `runtime::services`); these
//! operations reach it through its request socket (`runtime::control`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Engine, VmError};
use crate::logs::Logs;
use crate::os::procid::ProcId;
use crate::runtime::control;
use crate::runtime::services::{Answer, Request, ServiceState};
use crate::store::service::{Service, ServiceName};
use crate::store::{State, VmDir, VmName};

pub use crate::runtime::services::{ServiceStatus, describe};

/// What `fvm service` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

/// A detached command that runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// Its pid inside the VM.
    pub pid: i32,
    /// The VM was stopped and had to be started for it.
    pub started_vm: bool,
}

/// How `fvm start --autostart` went for one VM.
#[derive(Debug)]
pub struct Autostarted {
    pub name: VmName,
    /// `Ok(true)`: started; `Ok(false)`: it was running already.
    pub result: Result<bool, VmError>,
}

/// How often a stop or restart looks whether its services have stopped.
const SETTLE_POLL: Duration = Duration::from_millis(50);

impl Engine {
    /// The init's answer to `req`, for running VM `name` whose state is `state`.
    fn ask(
        &self,
        name: &VmName,
        init: &ProcId,
        state: &State,
        req: &Request,
    ) -> Result<Answer, VmError> {
        let fd = state.request_fd.ok_or_else(|| VmError::Services {
            name: name.to_string(),
            message: "it was started by an older fvm; restart it to use services".into(),
        })?;
        match control::request::<Request, Answer>(init, fd, req).map_err(VmError::control(name))? {
            None => Err(VmError::NotRunning {
                name: name.to_string(),
            }),
            Some(Answer::Error { message }) => Err(VmError::Services {
                name: name.to_string(),
                message,
            }),
            Some(a) => Ok(a),
        }
    }

    /// The running VM's init and state, under its lock, or `NotRunning`.
    fn running(&self, vm: &VmDir) -> Result<(ProcId, State), VmError> {
        let state = self.reconcile(vm)?;
        match state.live_init(&self.cgroup_leaf(vm.name())) {
            Some(init) => Ok((init.clone(), state)),
            None => Err(VmError::NotRunning {
                name: vm.name().to_string(),
            }),
        }
    }

    /// `fvm run -d`: start `argv` in VM `name` (starting the VM first if it is
    /// stopped, and leaving it running); its output goes to the VM's logs.
    pub fn run_detached(
        &self,
        name: &VmName,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
    ) -> Result<Detached, VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        let policy = self.policy(&vm)?;
        let mut started_vm = false;
        let state = self.reconcile(&vm)?;
        if state.live_init(&self.cgroup_leaf(name)).is_none() {
            self.launch(
                &vm,
                &policy,
                crate::store::StartMode::Background,
                None,
                super::lifecycle::Throwaway::No,
            )?;
            started_vm = true;
        }
        let (init, state) = self.running(&vm)?;
        if self.cgroup(name)?.frozen() {
            return Err(VmError::Suspended {
                name: name.to_string(),
            });
        }
        match self.ask(name, &init, &state, &Request::Detach { argv, env, cwd })? {
            Answer::Detached { pid } => Ok(Detached { pid, started_vm }),
            _ => Err(unexpected(name)),
        }
    }

    /// `fvm service VM [NAME] start|stop|restart`: `names` empty is every
    /// service of the policy. A stop or restart waits until the services have
    /// stopped (at most `grace` and a little more).
    pub fn service(
        &self,
        name: &VmName,
        action: ServiceAction,
        names: &[ServiceName],
        grace: Duration,
    ) -> Result<Vec<ServiceStatus>, VmError> {
        let vm = self.vm(name)?;
        let lock = vm.lock()?;
        let policy = self.policy(&vm)?;
        let (init, state) = self.running(&vm)?;
        let defs = |names: &[ServiceName]| -> Result<Vec<Service>, VmError> {
            if names.is_empty() {
                return Ok(policy.services.clone());
            }
            names
                .iter()
                .map(|n| {
                    policy
                        .services
                        .iter()
                        .find(|s| &s.name == n)
                        .cloned()
                        .ok_or_else(|| VmError::Services {
                            name: name.to_string(),
                            message: format!("it has no service {n} (fvm config {name} --service {n}='CMD' adds one)"),
                        })
                })
                .collect()
        };
        let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
        let req = match action {
            ServiceAction::Start => Request::Start {
                services: defs(names)?,
            },
            ServiceAction::Restart => Request::Restart {
                services: defs(names)?,
                grace_ms,
            },
            ServiceAction::Stop => Request::Stop {
                names: names.to_vec(),
                grace_ms,
            },
        };
        self.ask(name, &init, &state, &req)?;
        // Let other commands on the VM go while its services stop.
        drop(lock);
        let deadline = Instant::now() + grace + Duration::from_secs(5);
        loop {
            let now = self.ask(name, &init, &state, &Request::Status)?;
            let Answer::Status { services } = now else {
                return Err(unexpected(name));
            };
            let settling = services.iter().any(|s| {
                (names.is_empty() || names.iter().any(|n| n.as_str() == s.name))
                    && s.state == ServiceState::Stopping
            });
            if !settling || Instant::now() >= deadline {
                return Ok(services);
            }
            std::thread::sleep(SETTLE_POLL);
        }
    }

    /// `fvm service VM status`: from the init while the VM runs, else the last
    /// the init recorded (a service that was running is shown stopped), with
    /// the policy's services that never ran.
    pub fn service_status(&self, name: &VmName) -> Result<(bool, Vec<ServiceStatus>), VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        let policy = self.policy(&vm)?;
        let state = self.reconcile(&vm)?;
        let mut list = match state.live_init(&self.cgroup_leaf(name)) {
            Some(init) => match self.ask(name, &init.clone(), &state, &Request::Status)? {
                Answer::Status { services } => services,
                _ => return Err(unexpected(name)),
            },
            None => {
                let path = vm.logs_path().join(crate::logs::STATUS_FILE);
                let mut known: Vec<ServiceStatus> = crate::os::files::read_regular(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
                for s in &mut known {
                    if s.state.is_active() {
                        s.state = ServiceState::Stopped;
                        s.pid = None;
                    }
                }
                known
            }
        };
        let running = state.live_init(&self.cgroup_leaf(name)).is_some();
        for s in &policy.services {
            if !list.iter().any(|k| k.name == s.name.as_str()) {
                list.push(ServiceStatus {
                    name: s.name.to_string(),
                    state: ServiceState::Stopped,
                    pid: None,
                    restarts: 0,
                    since: None,
                    last_exit: None,
                    error: None,
                });
            }
        }
        Ok((running, list))
    }

    /// Before a stop: the init stops the services in reverse order within
    /// `grace`. A VM that can't be asked is stopped all the same.
    pub(super) fn stop_services(
        &self,
        name: &VmName,
        init: &ProcId,
        state: &State,
        grace: Duration,
    ) {
        if state.request_fd.is_none() || grace.is_zero() {
            return;
        }
        let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
        if let Err(e) = self.ask(name, init, state, &Request::StopAll { grace_ms }) {
            tracing::debug!(vm = %name, "services not stopped in order: {}", crate::error_line(&e));
        }
    }

    /// A VM's logs.
    pub fn logs(&self, name: &VmName) -> Result<Logs, VmError> {
        let vm = self.vm(name)?;
        Ok(Logs::new(vm.logs_path()))
    }

    /// A pidfd of the running VM's init (readable once it has ended), for
    /// `fvm logs -f` to end with the VM; `None` if it isn't running.
    pub fn init_pidfd(&self, name: &VmName) -> Result<Option<std::os::fd::OwnedFd>, VmError> {
        let vm = self.vm(name)?;
        let state = self.load_state(&vm)?;
        let Some(init) = state.live_init(&self.cgroup_leaf(name)) else {
            return Ok(None);
        };
        Ok(crate::runtime::stop::InitHandle::open(init)
            .ok()
            .flatten()
            .and_then(|h| h.pidfd().try_clone().ok()))
    }

    /// `fvm start --autostart`: start every VM of the store marked `autostart`
    /// that isn't running. One that fails doesn't stop the others.
    pub fn start_autostart(&self) -> Result<Vec<Autostarted>, VmError> {
        let mut out = Vec::new();
        for name in self.store.names()? {
            let marked = self
                .vm(&name)
                .and_then(|vm| self.policy(&vm))
                .map(|p| p.autostart);
            let result = match marked {
                Ok(false) => continue,
                Ok(true) => match self.start(&name) {
                    Ok(_) => Ok(true),
                    Err(VmError::AlreadyRunning { .. }) => Ok(false),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            out.push(Autostarted { name, result });
        }
        Ok(out)
    }

    /// `fvm stop --autostart`: stop every running VM marked `autostart`.
    pub fn stop_autostart(&self, grace: Duration) -> Result<Vec<Autostarted>, VmError> {
        let mut out = Vec::new();
        for name in self.store.names()? {
            let marked = self
                .vm(&name)
                .and_then(|vm| self.policy(&vm))
                .is_ok_and(|p| p.autostart);
            if !marked {
                continue;
            }
            let result = self
                .stop(&name, grace)
                .map(|s| s != crate::runtime::stop::Stopped::NotRunning);
            out.push(Autostarted { name, result });
        }
        Ok(out)
    }
}

fn unexpected(name: &VmName) -> VmError {
    VmError::Services {
        name: name.to_string(),
        message: "the vm's init gave an answer fvm doesn't know".into(),
    }
}

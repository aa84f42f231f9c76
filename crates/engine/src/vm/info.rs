//! What `list` and `inspect` show: each VM's policy, its true status, and what it
//! uses now. Reads take no lock; state files are replaced atomically.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Engine, VmError};
use crate::error_line;
use crate::os::procid::ProcId;
use crate::store::{Policy, StartMode, State, VmName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    Running,
    /// Running, with every process frozen (`fvm suspend`).
    Suspended,
    Stopped,
    /// The VM's policy or state file can't be read; `delete` still works.
    Broken,
}

impl VmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Running => "running",
            VmStatus::Suspended => "suspended",
            VmStatus::Stopped => "stopped",
            VmStatus::Broken => "broken",
        }
    }
}

/// Everything known about one VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    pub name: VmName,
    pub status: VmStatus,
    /// Why the VM is broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub description: String,
    pub created: Option<String>,
    pub started_at: Option<String>,
    pub mode: Option<StartMode>,
    /// How the last command `fvm run` waited for, or the VM itself, ended.
    pub end: Option<crate::store::End>,
    pub temporary: bool,
    pub init: Option<ProcId>,
    /// Host pids in the VM's cgroup.
    pub processes: Option<usize>,
    /// Memory charged to the VM's cgroup, in bytes.
    pub memory: Option<u64>,
    /// What the running VM has used since it started (see `fvm stats`).
    pub usage: Option<crate::cgroup::Usage>,
    /// Disk used by the VM's private layers, in bytes.
    pub disk: u64,
    /// The layers' use against their `disk` and `inodes` limits, where the
    /// kernel counts it (project quota, tmpfs, image); else none.
    pub disk_limits: Option<crate::mounts::disk::DiskUse>,
    /// The VM's network address (host mode: it has none of its own).
    pub ip: Option<String>,
    /// The policy's resource limits (see docs/limits.md).
    pub limits: crate::limits::Limits,
    pub network: NetInfo,
    pub paths: Paths,
    pub cgroup: Vec<PathBuf>,
    /// Started when the host boots (`fvm start --autostart`).
    pub autostart: bool,
    /// The policy's services (`fvm service VM status` shows how they run).
    pub services: Vec<crate::store::service::Service>,
    /// Where the VM's logs are (`fvm logs`).
    pub logs: PathBuf,
}

/// How the VM is networked.
#[derive(Debug, Clone, Serialize)]
pub struct NetInfo {
    pub mode: crate::net::NetMode,
    /// The address with its prefix (bridge mode).
    pub ip: Option<crate::net::Ipv4Net>,
    /// The host side of its veth, while it runs (bridge mode).
    pub link: Option<String>,
    /// The rest of the policy's `[network]` table: masquerading, name servers,
    /// what the VM may and may not reach, and the host ports forwarded to it.
    pub nat: bool,
    pub dns: Vec<std::net::Ipv4Addr>,
    pub allow: Vec<crate::net::Rule>,
    pub deny: Vec<crate::net::Rule>,
    pub publish: Vec<crate::net::Publish>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Paths {
    pub dir: PathBuf,
    pub policy: PathBuf,
    pub state: PathBuf,
    pub layers: PathBuf,
}

impl Engine {
    /// All VMs of the store, sorted by name.
    /// A throw-away VM whose command has ended is left out while the process
    /// that cleans up after it (and deletes it) holds its lock.
    pub fn list(&self) -> Result<Vec<VmInfo>, VmError> {
        let names = self.store.names()?;
        let mut all = Vec::with_capacity(names.len());
        for name in &names {
            match self.info(name) {
                Ok(info) if info.temporary && self.being_deleted(name) => {}
                // Deleted since the names were read.
                Err(VmError::Store(crate::store::StoreError::NoSuchVm { .. })) => {}
                other => all.push(other?),
            }
        }
        Ok(all)
    }

    /// Whether the VM's command ended, taking the VM with it, and the process
    /// that cleans up after it still holds its lock (see `State::ending`).
    fn being_deleted(&self, name: &VmName) -> bool {
        let Ok(vm) = self.vm(name) else {
            return true;
        };
        vm.load_state()
            .is_ok_and(|s| s.ending.is_some() && s.live_init(&self.cgroup_leaf(name)).is_none())
            && crate::os::files::is_locked(&vm.lock_path())
    }

    pub fn info(&self, name: &VmName) -> Result<VmInfo, VmError> {
        let vm = self.vm(name)?;
        let policy = vm.load_policy();
        let state = match vm.load_state() {
            // The rule every command follows (`reconcile`): a damaged state file
            // of a VM that runs no process means stopped.
            Err(crate::store::StateError::Corrupt { .. })
                if self
                    .cgroup(name)
                    .is_ok_and(|c| c.pids().is_ok_and(|p| p.is_empty())) =>
            {
                Ok(State::default())
            }
            other => other,
        };
        let error = match (&policy, &state) {
            (Err(e), _) => Some(error_line(e)),
            (_, Err(e)) => Some(error_line(e)),
            _ => None,
        };
        let policy = policy.ok();
        let state: Option<State> = state.ok();
        let leaf = self.cgroup_leaf(name);
        let init = state.as_ref().and_then(|s| s.live_init(&leaf)).cloned();
        let cgroup = self.cgroup(name).ok();
        let status = match (&error, &init) {
            // Frozen by a command of fvm's at work (a commit) is not suspended.
            (_, Some(_))
                if cgroup.as_ref().is_some_and(|c| c.frozen()) && !self.frozen_by_fvm(&vm) =>
            {
                VmStatus::Suspended
            }
            (_, Some(_)) => VmStatus::Running,
            (Some(_), None) => VmStatus::Broken,
            (None, None) => VmStatus::Stopped,
        };
        let running = init.is_some();
        let layers = match &policy {
            Some(p) => vm.layers_path(p),
            None => vm.path().join("layers"),
        };
        let temporary = state.as_ref().is_some_and(|s| s.temporary);
        let disk_limits = self.disk_use(
            &vm,
            &layers,
            policy.as_ref().map(|p| &p.limits),
            init.as_ref()
                .filter(|_| temporary || vm.image_path().exists()),
        );
        Ok(VmInfo {
            name: name.clone(),
            status,
            error,
            description: policy
                .as_ref()
                .map(|p| p.description.clone())
                .unwrap_or_default(),
            created: policy.as_ref().map(|p| p.created.clone()),
            started_at: state
                .as_ref()
                .filter(|_| running)
                .and_then(|s| s.started_at.clone()),
            mode: state.as_ref().filter(|_| running).and_then(|s| s.mode),
            end: state.as_ref().and_then(|s| match s.status {
                // Its init is gone and no command has cleaned up yet: what the
                // next one will record.
                crate::store::Status::Running if !running => Some(super::gone_end(
                    s,
                    policy.as_ref(),
                    std::time::SystemTime::now(),
                )),
                _ => s.end.clone(),
            }),
            temporary,
            processes: cgroup
                .as_ref()
                .filter(|_| running)
                .and_then(|c| c.pids().ok())
                .map(|p| p.len()),
            memory: cgroup
                .as_ref()
                .filter(|_| running)
                .and_then(|c| c.memory_current()),
            usage: cgroup.as_ref().filter(|_| running).map(|c| c.usage()),
            disk: disk_limits.map_or_else(|| disk_usage(&layers), |d| d.bytes),
            disk_limits,
            ip: policy
                .as_ref()
                .and_then(|p| p.network.address())
                .map(|a| a.to_string()),
            network: NetInfo {
                mode: policy.as_ref().map(|p| p.network.mode).unwrap_or_default(),
                ip: policy
                    .as_ref()
                    .filter(|p| p.network.mode == crate::net::NetMode::Bridge)
                    .and_then(|p| p.network.ip),
                link: policy
                    .as_ref()
                    .filter(|p| running && p.network.mode == crate::net::NetMode::Bridge)
                    .map(|_| crate::net::veth_name(self.store.id(), name.as_str())),
                nat: policy.as_ref().is_some_and(|p| p.network.nat()),
                dns: policy
                    .as_ref()
                    .map(|p| p.network.dns.clone())
                    .unwrap_or_default(),
                allow: policy
                    .as_ref()
                    .map(|p| p.network.allow.clone())
                    .unwrap_or_default(),
                deny: policy
                    .as_ref()
                    .map(|p| p.network.deny.clone())
                    .unwrap_or_default(),
                publish: policy
                    .as_ref()
                    .map(|p| p.network.publish.clone())
                    .unwrap_or_default(),
            },
            limits: policy
                .as_ref()
                .map(|p| p.limits.clone())
                .unwrap_or_default(),
            paths: Paths {
                dir: vm.path().to_owned(),
                policy: vm.policy_path(),
                state: vm.state_path(),
                layers,
            },
            cgroup: cgroup.map(|c| c.dirs().to_vec()).unwrap_or_default(),
            autostart: policy.as_ref().is_some_and(|p| p.autostart),
            services: policy
                .as_ref()
                .map(|p| p.services.clone())
                .unwrap_or_default(),
            logs: vm.logs_path(),
            init,
        })
    }

    /// What the VM's layers use of their limits, as the kernel counts it: the
    /// filesystem of a running VM's tmpfs or image (`mounted`: its init), a
    /// stopped VM's image file, or its project quota.
    fn disk_use(
        &self,
        vm: &crate::store::VmDir,
        layers: &Path,
        limits: Option<&crate::limits::Limits>,
        mounted: Option<&ProcId>,
    ) -> Option<crate::mounts::disk::DiskUse> {
        use crate::mounts::disk;
        let none = crate::limits::Limits::default();
        let limits = limits.unwrap_or(&none);
        let image = vm.image_path();
        if let Some(init) = mounted {
            let all = image.exists();
            return disk::mounted_use(init.pid, limits, all)
                .filter(|u| all || u.bytes_limit.is_some() || u.inodes_limit.is_some());
        }
        if image.exists() {
            return disk::image_use(&image);
        }
        disk::recorded_id(&vm.project_path()).and_then(|id| disk::project_use(layers, id))
    }

    /// The VM's policy as stored.
    pub fn policy_of(&self, name: &VmName) -> Result<Policy, VmError> {
        self.policy(&self.vm(name)?)
    }
}

/// Bytes allocated under `dir`, without following symlinks or crossing into other
/// filesystems. The layers are the VM's to write, also while this runs, so the
/// walk goes by directory fd with `O_NOFOLLOW` (`layers::walk`): a
/// directory swapped for a symlink to a host path is counted as the symlink.
/// Entries that vanish meanwhile count as zero; an error ends the count early.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let _ = crate::layers::walk(
        dir,
        &mut |e| {
            total += e.stat.st_blocks as u64 * 512;
            Ok(crate::layers::Descend::Yes)
        },
        &mut |_| Ok(()),
    );
    total
}

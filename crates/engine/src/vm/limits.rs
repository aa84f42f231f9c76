//! Resource limits of VMs: checked against this host before they are stored or
//! used, set on a VM's cgroup as it starts (see `lifecycle`), and changed on a
//! running VM by `configure`.

use std::path::Path;

use super::{Engine, VmError};
use crate::limits::{Key, Limits};
use crate::mounts::disk;
use crate::runtime::control;
use crate::store::{Policy, VmDir, VmName};

/// What `configure` did.
#[derive(Debug, Clone)]
pub struct Configured {
    /// The policy as now stored.
    pub policy: Policy,
    /// Limits that changed while the VM ran: applied to it at once.
    pub applied: Vec<Key>,
    /// Per-process limits that changed while the VM ran: they reach processes
    /// started from now on (`fvm run`, `fvm shell`); running ones keep theirs.
    pub for_new_processes: Vec<Key>,
    /// Network rules (allow, deny, publish, nat) changed on the running VM.
    pub network_applied: bool,
    /// Services changed while the VM ran: they take their new definitions when
    /// next (re)started (`fvm service`).
    pub services_changed: bool,
}

impl Engine {
    /// Check `limits` for this host: their floors, its CPU count, and the cgroup
    /// controllers and files they need.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), VmError> {
        limits.validate()?;
        if limits.is_empty() {
            return Ok(());
        }
        // Only a CPU limit is checked against the host's CPUs (counting them reads
        // the cgroup's CPU quota: a dozen system calls every start).
        if limits.cpus.is_some() {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            limits.validate_for_host(u32::try_from(cpus).unwrap_or(u32::MAX))?;
        }
        let cgroups = self.cgroups().map_err(VmError::HostLimit)?;
        cgroups.check_limits(limits).map_err(VmError::HostLimit)
    }

    /// Change a VM's policy. `change` edits a copy; the result is checked, applied
    /// to the VM if it is running, and only then stored (written and read back
    /// before it replaces the old file). On any failure the stored policy and the
    /// running VM keep their old limits.
    pub fn configure(
        &self,
        name: &VmName,
        change: impl FnOnce(&mut Policy) -> Result<(), VmError>,
    ) -> Result<Configured, VmError> {
        let vm = self.vm(name)?;
        let _lock = vm.lock()?;
        let old = self.policy(&vm)?;
        let mut policy = old.clone();
        change(&mut policy)?;
        let changed = old.limits.changed(&policy.limits);
        if !changed.is_empty() {
            self.check_limits(&policy.limits)?;
        }
        let state = self.reconcile(&vm)?;
        let running = state.live_init(&self.cgroup_leaf(name)).cloned();
        if running.is_some() && policy.layers != old.layers {
            return Err(VmError::LayersWhileRunning {
                name: name.to_string(),
                layers: policy.layers.as_str(),
            });
        }
        // `disk` and `inodes`: checked against how the layers are held to them; on
        // a running VM with project quotas they change at once.
        let layers = vm.layers_path(&policy);
        let disk_changed = changed.iter().any(|k| k.on_disk());
        let (live_disk, rebuild) = if disk_changed {
            self.check_disk_change(&vm, &layers, &policy.limits, &state, running.is_some())?
        } else {
            (None, false)
        };
        // Network settings are checked against the store under its network lock,
        // held until the firewall has the change.
        let net_lock = self
            .reconfigure_network(name, &old.network, &mut policy.network, running.is_some())
            .map_err(VmError::Network)?;
        let mut done = Configured {
            policy: policy.clone(),
            applied: Vec::new(),
            for_new_processes: Vec::new(),
            network_applied: false,
            services_changed: running.is_some() && policy.services != old.services,
        };
        let live_limits = running.is_some() && !changed.is_empty();
        let cgroup = self.cgroup(name)?;
        // Put the running VM back as it was, after a later step failed.
        let undo = |timeout_sent: bool| {
            if live_limits {
                let _ = cgroup.set_limits(&old.limits, true);
            }
            if let Some(id) = live_disk {
                let _ = disk::set_limits(&layers, id, &old.limits);
            }
            if let (true, Some(init)) = (timeout_sent, &running) {
                let _ = self.send_timeout(name, init, state.control_fd, &old.limits);
            }
        };
        let mut timeout_sent = false;
        if let Some(init) = &running
            && live_limits
        {
            if changed.iter().any(|k| is_cgroup_key(*k))
                && let Err(source) = cgroup.set_limits(&policy.limits, true)
            {
                undo(false);
                return Err(VmError::cgroup(name)(source));
            }
            if let Some(id) = live_disk
                && let Err(source) = disk::set_limits(&layers, id, &policy.limits)
            {
                undo(false);
                return Err(VmError::disk(name)(source));
            }
            if changed.contains(&Key::Timeout) {
                if let Err(e) = self.send_timeout(name, init, state.control_fd, &policy.limits) {
                    undo(false);
                    return Err(e);
                }
                timeout_sent = true;
            }
            done.applied = changed
                .iter()
                .copied()
                .filter(|k| !k.per_process() || *k == Key::Priority)
                .collect();
            done.for_new_processes = changed
                .iter()
                .copied()
                .filter(|k| k.per_process())
                .collect();
        }
        // A stopped VM whose layers are (or must become) an image: moved now, with
        // the VM's lock held; on failure they stay as they were.
        if rebuild {
            self.rebuild_layers(&vm, &layers, &policy.limits)?;
        }
        if let Err(source) = vm.save_policy(&policy) {
            undo(timeout_sent);
            return Err(VmError::policy(name)(source));
        }
        if let (Some(lock), Some(_)) = (&net_lock, &running) {
            let change = super::network::FirewallChange::Change(&old.network, &policy.network);
            if let Err(e) = self.change_firewall(name, change, lock) {
                undo(timeout_sent);
                let _ = vm.save_policy(&old);
                let _ = self.sync_firewall(None, lock);
                return Err(VmError::Network(e));
            }
            done.network_applied = true;
        }
        Ok(done)
    }

    /// Check that layers at `layers` (made there if they don't exist yet) can be
    /// held to `limits`' `disk` and `inodes`. Not for a throw-away VM, whose tmpfs
    /// takes them anywhere.
    pub(super) fn check_disk(&self, layers: &Path, limits: &Limits) -> Result<(), VmError> {
        disk::backing(layers, limits, false)
            .map(drop)
            .map_err(VmError::HostDisk)
    }

    /// Check a change of VM `vm`'s `disk` or `inodes` to `limits`. Returns the
    /// project id to set them on at once (running, with project quotas), and
    /// whether the stopped VM's layers must move (into an image, into another, or
    /// out of one).
    fn check_disk_change(
        &self,
        vm: &VmDir,
        layers: &Path,
        limits: &Limits,
        state: &crate::store::State,
        running: bool,
    ) -> Result<(Option<u32>, bool), VmError> {
        let name = vm.name().to_string();
        if state.temporary {
            return Err(VmError::DiskWhileRunning {
                name,
                why: "the tmpfs of a throw-away vm keeps the size it started with",
            });
        }
        let image = vm.image_path().exists();
        let backing = if image && !limits.limits_disk() {
            None
        } else {
            disk::backing(layers, limits, image).map_err(VmError::HostDisk)?
        };
        // Layers in an image, or files that must move into one.
        let moves = image || (backing == Some(disk::Backing::Image) && has_files(layers));
        match (moves, running) {
            (true, true) => Err(VmError::DiskWhileRunning {
                name,
                why: "its layers live in a filesystem image (this host has no project quotas), which is made again for new disk and inodes once it is stopped",
            }),
            (true, false) => Ok((None, true)),
            (false, false) => Ok((None, false)),
            (false, true) => match disk::recorded_id(&vm.project_path()) {
                Some(id) => Ok((Some(id), false)),
                None if limits.limits_disk() && backing == Some(disk::Backing::Quota) => {
                    Err(VmError::DiskWhileRunning {
                        name,
                        why: "its layers get the project that holds them to disk and inodes as it starts: stop it first",
                    })
                }
                None => Ok((None, false)),
            },
        }
    }

    /// Move a stopped VM's layers to where `limits` puts them on a host without
    /// project quotas: from its image or its layers directory into a new image
    /// made for `limits`, or (no limits left) out of its image into the layers
    /// directory. The layers are copied as `fvm copy` copies them; only once the
    /// copy is complete does it replace the old (the image renamed over, the old
    /// files removed), so a copy that doesn't fit (ENOSPC) changes nothing.
    fn rebuild_layers(&self, vm: &VmDir, layers: &Path, limits: &Limits) -> Result<(), VmError> {
        use super::copy::{CopyVmError, copy_layers};
        let fail = VmError::rebuild(vm.name());
        let image = vm.image_path();
        let next = vm.path().join("disk.img.next");
        let old_mount = vm.path().join("layers.old");
        let next_mount = vm.path().join("layers.next");
        let from_image = image.exists();
        let to_image = limits.limits_disk();
        let copied = (|| {
            let _src = match from_image {
                true => Some(disk::ImageMount::enter(&image, &old_mount)?),
                false => None,
            };
            let src_dir = if from_image { &old_mount } else { layers };
            let src = crate::layers::layers(src_dir).map_err(|source| CopyVmError::Layers {
                path: src_dir.to_owned(),
                source,
            })?;
            let _dst = match to_image {
                true => {
                    disk::make_image(&next, limits)?;
                    Some(disk::ImageMount::enter(&next, &next_mount)?)
                }
                false => None,
            };
            copy_layers(
                &src,
                if to_image { &next_mount } else { layers },
                &mut |_| {},
            )
            .map(drop)
        })();
        let _ = std::fs::remove_dir(&old_mount);
        let _ = std::fs::remove_dir(&next_mount);
        let done = copied.and_then(|()| {
            let io = |path: &Path| {
                let path = path.to_owned();
                move |source| CopyVmError::Dir { path, source }
            };
            match (from_image, to_image) {
                (_, true) => std::fs::rename(&next, &image).map_err(io(&image))?,
                (true, false) => std::fs::remove_file(&image).map_err(io(&image))?,
                (false, false) => {}
            }
            if !from_image {
                clear_layers(layers).map_err(io(layers))?;
            }
            Ok(())
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&next);
            if from_image && !to_image {
                let _ = clear_layers(layers);
            }
        }
        done.map_err(fail)
    }

    /// As a VM starts, before anything reads its layers: on a host without project
    /// quotas, a VM with `disk` or `inodes` (or an image already) gets its layers
    /// from its image, mounted in a private mount namespace of this process until
    /// the guard is dropped (see `disk::ImageMount`).
    pub(super) fn image_layers(
        &self,
        vm: &VmDir,
        layers: &Path,
        limits: &Limits,
    ) -> Result<Option<disk::ImageMount>, VmError> {
        let fail = VmError::disk(vm.name());
        let image = vm.image_path();
        let exists = image.exists();
        if disk::backing(layers, limits, exists).map_err(VmError::HostDisk)?
            != Some(disk::Backing::Image)
        {
            return Ok(None);
        }
        if !exists {
            // Limits set by hand in the policy of a VM with files: they move in now.
            if has_files(layers) {
                self.rebuild_layers(vm, layers, limits)?;
            } else {
                disk::make_image(&image, limits).map_err(fail)?;
            }
        }
        disk::ImageMount::enter(&image, layers)
            .map(Some)
            .map_err(fail)
    }

    /// The VM's layers as they are, for reading or writing them from the host:
    /// its image mounted, if it has one, while the guard lives.
    pub(super) fn layers_image(&self, vm: &VmDir) -> Result<Option<disk::ImageMount>, VmError> {
        let image = vm.image_path();
        if !image.exists() {
            return Ok(None);
        }
        let policy = self.policy(vm)?;
        disk::ImageMount::enter(&image, &vm.layers_path(&policy))
            .map(Some)
            .map_err(VmError::disk(vm.name()))
    }

    /// As a VM starts: hold its layers (made already) to its `disk` and `inodes`
    /// with project quotas (a VM whose layers are an image has nothing to do).
    /// The first time, the VM gets a project id and everything in its layers is
    /// labeled with it; every time, the project's limits are set from `limits`
    /// (none: removed, the id stays, so use is still counted).
    pub(super) fn limit_layers(
        &self,
        vm: &VmDir,
        layers: &Path,
        limits: &Limits,
    ) -> Result<(), VmError> {
        let fail = VmError::disk(vm.name());
        // The filesystem may have lost its quotas since the id was recorded.
        if limits.limits_disk() && !disk::has_project_quotas(layers) {
            return Err(VmError::DiskFixed {
                name: vm.name().to_string(),
                why: "the filesystem of its layers no longer enforces project quotas",
            });
        }
        match disk::recorded_id(&vm.project_path()) {
            Some(id) => disk::set_limits(layers, id, limits).map_err(fail),
            None if !limits.limits_disk() => Ok(()),
            None => {
                let id = disk::new_id(layers).map_err(fail)?;
                disk::label(layers, id).map_err(fail)?;
                disk::set_limits(layers, id, limits).map_err(fail)?;
                disk::record_id(&vm.project_path(), id).map_err(fail)
            }
        }
    }

    /// As a VM is deleted: clear its project's limits, so that with its files gone
    /// the filesystem keeps nothing of it. A failure is only logged (the VM goes
    /// anyway; its id is never picked again while the limits stay).
    pub(super) fn release_disk_limits(&self, vm: &VmDir, policy: Option<&Policy>) {
        let Some(id) = disk::recorded_id(&vm.project_path()) else {
            return;
        };
        let layers = match policy {
            Some(p) => vm.layers_path(p),
            None => vm.path().join("layers"),
        };
        if let Err(e) = disk::set_limits(&layers, id, &Limits::default()) {
            tracing::warn!(vm = %vm.name(), "cannot clear the disk limits of its project {id}: {e}");
        }
    }

    /// What commands in VM `name` are confined by, from its policy; warns when the
    /// policy turns confinement off.
    pub(super) fn confinement(
        &self,
        name: &VmName,
        policy: &Policy,
    ) -> Result<crate::confine::Confinement, VmError> {
        use crate::confine::{Confinement, Security};
        if policy.security == Security::Unconfined {
            tracing::warn!(
                "vm {name} is unconfined (security = \"unconfined\"): root in it has every capability and no seccomp filter, and can take over the host"
            );
        }
        Ok(Confinement::new(policy.security)?)
    }

    /// Tell a running VM's init its new timeout.
    fn send_timeout(
        &self,
        name: &VmName,
        init: &crate::runtime::ProcId,
        control_fd: Option<i32>,
        limits: &Limits,
    ) -> Result<(), VmError> {
        let fail = VmError::control(name);
        let fd = control_fd.ok_or_else(|| {
            fail(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "it was started by an older fvm; restart it to change its timeout",
            ))
        })?;
        control::send_timeout(init, fd, limits.timeout.map(|t| t.0)).map_err(fail)?;
        Ok(())
    }
}

/// Remove what a VM's layers directory holds, but a `--dir`'s owner mark.
fn clear_layers(layers: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(layers)? {
        let entry = entry?;
        if entry.file_name() == crate::store::OWNER_MARK {
            continue;
        }
        if entry.file_type()?.is_dir() {
            crate::os::files::remove_tree(&entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Whether a VM's layers directory holds anything of the VM's (any layer; a
/// `--dir`'s owner mark is fvm's).
fn has_files(layers: &Path) -> bool {
    std::fs::read_dir(layers).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name() != crate::store::OWNER_MARK)
    })
}

/// Whether `key` lives in the VM's cgroup (else it is per process, or the timeout).
fn is_cgroup_key(key: Key) -> bool {
    matches!(
        key,
        Key::Memory | Key::Swap | Key::Processes | Key::Cpus | Key::CpuWeight | Key::Priority
    )
}

//! Freezes fvm makes for itself, told apart from a user's `fvm suspend`.
//!
//! A commit of a running VM freezes it for the whole commit. If that command dies
//! (SIGKILL, a crash) while the VM is frozen, nothing would ever thaw it: to
//! everything else it looks suspended. So before freezing, the command records
//! itself (pid, start time, boot) in `vms/NAME/freeze-owner`, and removes the
//! record only after thawing. Every command that takes the VM's lock first
//! thaws a freeze whose recorded owner is gone ([`Engine::thaw_abandoned`]), and
//! `list` does the same whenever it can take the lock. A VM the user suspended
//! has no record and stays suspended; a VM frozen by a command still at work is
//! shown as running.

use std::io;
use std::path::PathBuf;

use super::{Engine, VmError};
use crate::cgroup::VmCgroup;
use crate::os::procid::ProcId;
use crate::store::VmDir;

fn owner_path(vm: &VmDir) -> PathBuf {
    vm.path().join("freeze-owner")
}

/// Who froze the VM, if fvm did; `None` without a record. A record that can't be
/// read names nobody alive.
fn owner(vm: &VmDir) -> Option<Option<ProcId>> {
    match crate::os::files::read_regular_max(&owner_path(vm), 4096) {
        Ok(text) => Some(serde_json::from_str(&text).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(_) => Some(None),
    }
}

/// What [`Engine::thaw_abandoned`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnFreeze {
    /// No freeze of fvm's own.
    None,
    /// A command that is still running froze the VM for its work.
    Live,
    /// The command that froze the VM had died: the VM was thawed.
    Thawed,
}

impl Engine {
    /// Freeze running VM `vm` for this command's own work, recording the command
    /// as the freeze's owner first; undo with [`Engine::thaw_own`]. On failure
    /// nothing stays frozen or recorded.
    pub(super) fn freeze_own(&self, vm: &VmDir, cgroup: &VmCgroup) -> Result<(), VmError> {
        let path = owner_path(vm);
        let me = ProcId::of(std::process::id() as i32).map_err(|source| VmError::Freeze {
            name: vm.name().to_string(),
            path: path.clone(),
            source,
        })?;
        let text = serde_json::to_vec(&me).expect("a process id always serializes");
        crate::os::files::write_durable(&path, &text, 0o600).map_err(|source| VmError::Freeze {
            name: vm.name().to_string(),
            path: path.clone(),
            source,
        })?;
        if let Err(source) = cgroup.freeze() {
            let _ = std::fs::remove_file(&path);
            return Err(VmError::cgroup(vm.name())(source));
        }
        Ok(())
    }

    /// Thaw what [`Engine::freeze_own`] froze, then drop the record.
    pub(super) fn thaw_own(&self, vm: &VmDir, cgroup: &VmCgroup) -> Result<(), VmError> {
        cgroup.thaw().map_err(VmError::cgroup(vm.name()))?;
        match std::fs::remove_file(owner_path(vm)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(VmError::Freeze {
                name: vm.name().to_string(),
                path: owner_path(vm),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// With the VM's lock held: thaw a freeze fvm made for a command that died
    /// before it could thaw it. A user's suspend (no record) stays.
    pub(super) fn thaw_abandoned(&self, vm: &VmDir) -> Result<OwnFreeze, VmError> {
        let Some(owner) = owner(vm) else {
            return Ok(OwnFreeze::None);
        };
        if owner.is_some_and(|o| o.is_alive()) {
            return Ok(OwnFreeze::Live);
        }
        tracing::warn!(
            "vm {:?}: the command that froze it is gone; thawing it",
            vm.name().as_str()
        );
        let cgroup = self.cgroup(vm.name())?;
        self.thaw_own(vm, &cgroup)?;
        Ok(OwnFreeze::Thawed)
    }

    /// For `list` and `inspect`, which don't wait for the VM's lock: thaw an
    /// abandoned freeze if the lock is free, and say whether the VM's freeze is
    /// fvm's own (a command at work, or one just thawed), not a user's suspend.
    pub(super) fn frozen_by_fvm(&self, vm: &VmDir) -> bool {
        match owner(vm) {
            None => false,
            Some(Some(o)) if o.is_alive() => true,
            Some(_) => match vm.try_lock() {
                Ok(Some(_lock)) => self.thaw_abandoned(vm).is_ok_and(|f| f != OwnFreeze::None),
                // Someone holds the lock: it thaws the freeze when it gets there.
                _ => true,
            },
        }
    }
}

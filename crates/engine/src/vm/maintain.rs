//! `fvm doctor --cleanup` and `fvm config`: housekeeping across the store.

use super::{Engine, VmError};
use crate::store::VmName;

impl Engine {
    /// Bring the whole store in line with reality: finish crashed creates and
    /// deletes, clean up after VMs whose init died, delete stopped throw-away VMs,
    /// and remove cgroups of this store that belong to no running VM. Returns what
    /// was done, one line each.
    pub fn cleanup(&self) -> Result<Vec<String>, VmError> {
        let mut done: Vec<String> = self
            .store
            .sweep()?
            .into_iter()
            .map(|p| format!("removed leftover {}", p.display()))
            .collect();
        let names = self.store.names()?;
        for name in &names {
            // A VM deleted since the names were read (a throw-away VM, by the
            // process that cleaned up after its command) is done with.
            let gone = |e: &crate::store::StoreError| {
                matches!(e, crate::store::StoreError::NoSuchVm { .. })
            };
            let vm = match self.store.vm(name) {
                Err(e) if gone(&e) => continue,
                other => other?,
            };
            let lock = match vm.lock() {
                Err(e) if gone(&e) => continue,
                other => other?,
            };
            let before = vm.load_state().ok();
            let state = match self.reconcile(&vm) {
                Ok(s) => s,
                Err(e) => {
                    done.push(format!(
                        "vm {name} left alone: {} (`fvm stop {name}` ends its processes)",
                        crate::error_line(&e)
                    ));
                    continue;
                }
            };
            if before.as_ref() != Some(&state) {
                done.push(format!("vm {name} was not running any more: cleaned up"));
            }
            // Its temp files on the host are known only from its journal.
            let running = state.live_init(&self.cgroup_leaf(name)).is_some();
            match self.settle_unfinished_commit(&vm, running) {
                Ok(Some(line)) => done.push(format!("vm {name}: {line}")),
                Ok(None) => {}
                Err(e) => done.push(format!(
                    "vm {name}: its unfinished commit was left alone: {}",
                    crate::error_line(&e)
                )),
            }
            if state.temporary && state.live_init(&self.cgroup_leaf(name)).is_none() {
                drop(lock);
                self.delete(name, false)?;
                done.push(format!("deleted throw-away vm {name}"));
            }
        }
        done.extend(self.cleanup_network()?);
        let prefix = format!("fvm-{}-", self.store.id());
        let cgroups = match self.cgroups() {
            Ok(c) => c,
            Err(_) => return Ok(done),
        };
        for leaf in cgroups.leaves_with_prefix(&prefix) {
            // A VM being started or deleted holds its lock: its cgroup may exist
            // before (or after) its state names an init. Leave those alone.
            let owner = VmName::new(&leaf[prefix.len()..])
                .ok()
                .and_then(|n| self.store.vm(&n).ok());
            let _held = match &owner {
                Some(vm) => match vm.try_lock() {
                    Ok(Some(lock)) => Some(lock),
                    _ => continue,
                },
                None => None,
            };
            // A VM whose state can't be read may well be running: its cgroup is
            // left alone (`fvm stop` ends it), as the loop above said.
            let alive = owner.as_ref().is_some_and(|vm| {
                vm.load_state()
                    .map_or(true, |s| s.live_init(&leaf).is_some())
            });
            if alive {
                continue;
            }
            let cg = cgroups.vm(&leaf).map_err(VmError::cgroup(&leaf))?;
            cg.kill_all()
                .and_then(|()| cg.remove())
                .map_err(VmError::cgroup(&leaf))?;
            done.push(format!("removed orphaned cgroup {leaf}"));
        }
        Ok(done)
    }
}

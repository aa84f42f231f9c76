//! The engine's side of the store's watcher ([`crate::watch::watcher`]): which
//! VMs run, and the cleanup after one that ended with no command to do it.

use super::Engine;
use crate::os::procid::ProcId;
use crate::store::VmName;
use crate::watch::watcher::{StoreVms, Watcher, WatcherHealth};

impl StoreVms for Engine {
    fn running(&self) -> Vec<(VmName, ProcId)> {
        let mut out = Vec::new();
        for name in self.store.names().unwrap_or_default() {
            let Ok(vm) = self.store.vm(&name) else {
                continue;
            };
            if let Some(init) = vm
                .load_state()
                .ok()
                .and_then(|s| s.live_init(&self.cgroup_leaf(&name)).cloned())
            {
                out.push((name, init));
            }
        }
        out
    }

    fn ended(&self) -> Vec<VmName> {
        let mut out = Vec::new();
        for name in self.store.names().unwrap_or_default() {
            let Ok(vm) = self.store.vm(&name) else {
                continue;
            };
            if vm.load_state().is_ok_and(|s| {
                s.status == crate::store::Status::Running
                    && s.live_init(&self.cgroup_leaf(&name)).is_none()
            }) {
                out.push(name);
            }
        }
        out
    }

    /// A VM whose state still says running is reconciled; one whose lock is
    /// held is left for another try (the command holding it may have looked
    /// before the init went).
    fn clean_up_after_exit(&self, gone: &[VmName]) -> Vec<VmName> {
        let mut left = Vec::new();
        for name in gone {
            let Ok(vm) = self.store.vm(name) else {
                continue;
            };
            let lock = match vm.try_lock() {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    left.push(name.clone());
                    continue;
                }
                Err(_) => continue,
            };
            if vm
                .load_state()
                .is_ok_and(|s| s.status == crate::store::Status::Running)
                && let Err(e) = self.reconcile(&vm)
            {
                tracing::debug!(vm = %name, "cleanup after the vm's end failed: {}", crate::error_line(&e));
                left.push(name.clone());
            }
            drop(lock);
        }
        left
    }
}

impl Engine {
    fn watcher(&self) -> Watcher<'_> {
        Watcher {
            store: &self.store,
            vms: self,
        }
    }

    /// After a VM started: make sure the store's watcher runs and knows it.
    pub(super) fn ensure_watcher(&self) {
        self.watcher().ensure();
    }

    /// For commands that look at the store: start the watcher again if VMs run
    /// without it, and the store's resolver if bridged VMs run without it, and
    /// say so.
    pub fn keep_watcher(&self) {
        self.watcher().keep();
        self.keep_resolver();
    }

    /// The state of the store's watcher; a missing one is started again (and
    /// so is a missing resolver of running bridged VMs).
    pub fn watcher_health(&self) -> WatcherHealth {
        let health = self.watcher().health();
        self.keep_resolver();
        health
    }
}

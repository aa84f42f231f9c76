//! VM networks in the engine: addresses handed out at create, the store's
//! settings, and which VMs the bridge and firewall are for. The store-wide
//! pieces are changed only under the store's network lock (`STORE/net.lock`);
//! the mechanics (links, the ruleset) are `net::attach`'s.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::{Engine, VmError};
use crate::net::attach::{self, AttachError};
use crate::net::link::LinkError;
use crate::net::nft::{NftError, VmRules};
use crate::net::{self as netcfg, Ipv4Net, NetMode, NetPolicy, StoreNet};
use crate::os::files::Lock;
use crate::store::{Policy, VmDir, VmName};

/// What happened to a VM, for the firewall.
#[derive(Debug, Clone, Copy)]
pub(super) enum FirewallChange<'a> {
    /// It started with this network.
    Start(&'a NetPolicy),
    /// It stopped (or was found gone); it ran with this network.
    Stop(&'a NetPolicy),
    /// Its network changed from the first to the second while it runs.
    Change(&'a NetPolicy, &'a NetPolicy),
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Policy(#[from] netcfg::NetError),
    #[error("{0}")]
    Store(String),
    #[error("address {ip} is already used by vm {owner:?}")]
    AddressInUse { ip: Ipv4Addr, owner: String },
    #[error("no free address left in the bridge subnet {0}")]
    Exhausted(Ipv4Net),
    #[error("host port {port}/{proto} is already published by vm {owner:?}")]
    PortInUse {
        port: u16,
        proto: &'static str,
        owner: String,
    },
    #[error(
        "host port {port}/{proto} is in use on the host{by}: publishing it would take its connections over"
    )]
    PortBusy {
        port: u16,
        proto: &'static str,
        by: &'static str,
    },
    #[error("--{key} changes what vm {name:?} was started with: stop it first")]
    Running { key: &'static str, name: String },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("cannot take the store's network lock {}", .path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<AttachError> for NetworkError {
    fn from(e: AttachError) -> NetworkError {
        match e {
            AttachError::Policy(e) => NetworkError::Policy(e),
            AttachError::Link(e) => NetworkError::Link(e),
        }
    }
}

impl Engine {
    pub(super) fn net_lock(&self) -> Result<Lock, NetworkError> {
        let path = self.store.root().join("net.lock");
        Lock::exclusive(&path).map_err(|source| NetworkError::Lock { path, source })
    }

    /// The network lock if nobody holds it (for the store's resolver, which
    /// answers from what it knows rather than wait).
    pub(super) fn try_net_lock(&self) -> Result<Option<Lock>, NetworkError> {
        let path = self.store.root().join("net.lock");
        Lock::try_exclusive(&path).map_err(|source| NetworkError::Lock { path, source })
    }

    fn network_path(&self) -> PathBuf {
        self.store.root().join("network.toml")
    }

    /// The store's bridge and subnet.
    pub fn store_network(&self) -> Result<StoreNet, VmError> {
        StoreNet::load(&self.network_path()).map_err(|e| VmError::Network(NetworkError::Store(e)))
    }

    /// Change the store's bridge and subnet (refused while a bridged VM runs,
    /// or if a VM's address would fall outside the new subnet) and its
    /// resolver's upstreams (at any time: a running resolver reads them again).
    pub fn set_store_network(
        &self,
        bridge: Option<String>,
        subnet: Option<Ipv4Net>,
        upstream_dns: Option<Vec<std::net::SocketAddrV4>>,
    ) -> Result<StoreNet, VmError> {
        let net_lock = self.net_lock().map_err(VmError::Network)?;
        let old = self.store_network()?;
        let new = StoreNet {
            bridge: bridge.unwrap_or_else(|| old.bridge.clone()),
            subnet: subnet.unwrap_or(old.subnet),
            upstream_dns: upstream_dns.unwrap_or_else(|| old.upstream_dns.clone()),
        };
        new.validate()
            .map_err(|e| VmError::Network(NetworkError::Store(e)))?;
        if new == old {
            return Ok(new);
        }
        let path = self.network_path();
        if new.bridge == old.bridge && new.subnet == old.subnet {
            crate::os::files::write_atomic(&path, new.to_toml().as_bytes(), 0o644)
                .map_err(|source| VmError::Network(NetworkError::Write { path, source }))?;
            if let Some(pid) = self.resolver_pid() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGHUP,
                );
            }
            return Ok(new);
        }
        for (name, policy) in self.policies() {
            if policy.network.mode != NetMode::Bridge {
                continue;
            }
            let vm = self.vm(&name)?;
            if vm
                .load_state()
                .is_ok_and(|s| s.live_init(&self.cgroup_leaf(&name)).is_some())
            {
                return Err(VmError::Network(NetworkError::Store(format!(
                    "vm {name} runs on bridge {}: stop it before changing the store's network",
                    old.bridge
                ))));
            }
            if let Some(ip) = policy.network.ip
                && let Err(e) = new.check_vm_ip(ip)
            {
                return Err(VmError::Network(NetworkError::Store(format!(
                    "vm {name}: {e}; give it another address first (fvm config {name} --ip …)"
                ))));
            }
        }
        // The old bridge has no VM left on it; it goes if it is ours, and the
        // firewall's skeleton, made for the old settings, goes too.
        if new.bridge != old.bridge {
            self.remove_bridge(&old).map_err(VmError::Network)?;
        }
        attach::remove_tables(self.store.id(), net_lock.as_fd())
            .map_err(|e| VmError::Network(e.into()))?;
        crate::os::files::write_atomic(&path, new.to_toml().as_bytes(), 0o644)
            .map_err(|source| VmError::Network(NetworkError::Write { path, source }))?;
        Ok(new)
    }

    /// Every VM's policy that can be read, by name.
    pub(super) fn policies(&self) -> Vec<(VmName, Policy)> {
        self.store
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| {
                let p = self.store.vm(&n).ok()?.load_policy().ok()?;
                Some((n, p))
            })
            .collect()
    }

    /// Check `net` for VM `name` against the store (subnet, other VMs' addresses
    /// and published ports) and give a bridged VM without an address the lowest
    /// free one. The caller holds the network lock.
    fn settle_network(&self, name: &VmName, net: &mut NetPolicy) -> Result<(), NetworkError> {
        net.validate()?;
        if net.mode != NetMode::Bridge {
            return Ok(());
        }
        let store = StoreNet::load(&self.network_path()).map_err(NetworkError::Store)?;
        let others: Vec<(VmName, Policy)> = self
            .policies()
            .into_iter()
            .filter(|(n, p)| n != name && p.network.mode == NetMode::Bridge)
            .collect();
        match net.ip {
            Some(ip) => {
                store.check_vm_ip(ip).map_err(|reason| {
                    NetworkError::Policy(netcfg::NetError { key: "ip", reason })
                })?;
                if let Some((owner, _)) = others
                    .iter()
                    .find(|(_, p)| p.network.ip.map(|i| i.addr) == Some(ip.addr))
                {
                    return Err(NetworkError::AddressInUse {
                        ip: ip.addr,
                        owner: owner.to_string(),
                    });
                }
            }
            None => {
                let used: Vec<Ipv4Addr> = others
                    .iter()
                    .filter_map(|(_, p)| p.network.ip.map(|i| i.addr))
                    .collect();
                net.ip = Some(
                    store
                        .allocate(&used)
                        .ok_or(NetworkError::Exhausted(store.subnet))?,
                );
            }
        }
        for p in &net.publish {
            if let Some((owner, _)) = others.iter().find(|(_, o)| {
                o.network
                    .publish
                    .iter()
                    .any(|q| q.host_port == p.host_port && q.proto == p.proto)
            }) {
                return Err(NetworkError::PortInUse {
                    port: p.host_port,
                    proto: p.proto.as_str(),
                    owner: owner.to_string(),
                });
            }
        }
        self.check_host_ports(net)
    }

    /// Refuse a published host port that a host process listens on, or that a
    /// running VM of another store publishes (checked at create, config and
    /// every start: a port can become busy in between).
    pub(super) fn check_host_ports(&self, net: &NetPolicy) -> Result<(), NetworkError> {
        if net.mode != NetMode::Bridge || net.publish.is_empty() {
            return Ok(());
        }
        let elsewhere = crate::net::nft::published_by_other_stores(&attach::table(self.store.id()));
        for p in &net.publish {
            let by = if elsewhere.contains(&(p.host_port, p.proto)) {
                " (by a vm of another store)"
            } else if attach::port_in_use(p.host_port, p.proto) {
                ""
            } else {
                continue;
            };
            return Err(NetworkError::PortBusy {
                port: p.host_port,
                proto: p.proto.as_str(),
                by,
            });
        }
        Ok(())
    }

    /// Settle a new VM's network under the network lock, then run `create` (which
    /// makes the VM) while still holding it, so no two VMs get one address.
    pub(super) fn with_network<T>(
        &self,
        name: &VmName,
        net: &mut NetPolicy,
        create: impl FnOnce(&NetPolicy) -> Result<T, VmError>,
    ) -> Result<T, VmError> {
        if net.is_default() {
            return create(net);
        }
        let _net = self.net_lock().map_err(VmError::Network)?;
        self.settle_network(name, net).map_err(VmError::Network)?;
        create(net)
    }

    /// A bridged VM without an address (a copy) gets the lowest free one now,
    /// recorded in its policy. The caller holds the VM's lock.
    pub(super) fn ensure_address(&self, vm: &VmDir, policy: &Policy) -> Result<Policy, VmError> {
        let mut policy = policy.clone();
        if policy.network.mode != NetMode::Bridge || policy.network.ip.is_some() {
            return Ok(policy);
        }
        let _lock = self.net_lock().map_err(VmError::Network)?;
        self.settle_network(vm.name(), &mut policy.network)
            .map_err(VmError::Network)?;
        vm.save_policy(&policy).map_err(|source| VmError::Policy {
            name: vm.name().to_string(),
            source,
        })?;
        Ok(policy)
    }

    /// The network part of `configure`: check the new settings; on a running VM
    /// only the host-side rules may change, and the firewall is rebuilt at once.
    pub(super) fn reconfigure_network(
        &self,
        name: &VmName,
        old: &NetPolicy,
        new: &mut NetPolicy,
        running: bool,
    ) -> Result<Option<Lock>, NetworkError> {
        if old == new {
            return Ok(None);
        }
        if running {
            let start_only = [
                ("net", old.mode != new.mode),
                ("ip", old.ip != new.ip),
                ("dns", old.dns != new.dns),
            ];
            if let Some((key, _)) = start_only.iter().find(|(_, changed)| *changed) {
                return Err(NetworkError::Running {
                    key,
                    name: name.to_string(),
                });
            }
        }
        // A VM leaving bridge mode gives its address back.
        if new.mode != NetMode::Bridge && old.mode == NetMode::Bridge && new.ip == old.ip {
            new.ip = None;
        }
        let lock = self.net_lock()?;
        self.settle_network(name, new)?;
        Ok(Some(lock))
    }

    /// Rebuild the store's firewall from the bridged VMs that run now (VM
    /// `pending` counts as running with `pending_policy`, for a change being
    /// made). The caller holds the network lock.
    pub(super) fn sync_firewall(
        &self,
        pending: Option<(&VmName, &NetPolicy)>,
        lock: &Lock,
    ) -> Result<(), NetworkError> {
        let store = StoreNet::load(&self.network_path()).map_err(NetworkError::Store)?;
        let vms: Vec<VmRules> = self
            .running_bridged(pending)
            .into_iter()
            .map(|(rules, _)| rules)
            .collect();
        attach::firewall(&store, self.store.id(), &vms, lock.as_fd())?;
        self.sync_resolver(&store, !vms.is_empty());
        Ok(())
    }

    /// Apply one VM's change to the firewall, touching nothing of the other
    /// VMs; if that can't be done (no skeleton yet, or one made for other
    /// settings, or pieces not as expected after a crash), rebuild it whole
    /// from the VMs that run now. The caller holds the network lock, and has
    /// recorded the VM as running (for a start) or stopped (for a stop).
    pub(super) fn change_firewall(
        &self,
        name: &VmName,
        change: FirewallChange<'_>,
        lock: &Lock,
    ) -> Result<(), NetworkError> {
        let store = StoreNet::load(&self.network_path()).map_err(NetworkError::Store)?;
        let rules = |net: &NetPolicy| self.vm_rules(name, net);
        let (old, new) = match change {
            FirewallChange::Start(net) => (None, rules(net)),
            FirewallChange::Stop(net) => (rules(net), None),
            FirewallChange::Change(old, new) => (rules(old), rules(new)),
        };
        // After the store's last running VM the resolver goes (and its
        // address from the firewall's set).
        let last = new.is_none() && !self.any_bridged_running(name);
        let step = match (&old, &new) {
            (None, Some(new)) => Some(attach::Change::Add(new)),
            (Some(old), None) => Some(attach::Change::Remove(old, last)),
            (Some(old), Some(new)) => Some(attach::Change::Replace(old, new)),
            (None, None) => None,
        };
        let Some(step) = step else {
            return Ok(());
        };
        if last {
            // Ended before its rule stops matching its address.
            self.sync_resolver(&store, false);
        }
        match attach::change_firewall(&store, self.store.id(), step, lock.as_fd()) {
            Ok(()) => {
                if !last {
                    self.sync_resolver(&store, true);
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!(vm = %name, "rebuilding the store's firewall: {e}");
                self.sync_firewall(None, lock)
            }
        }
    }

    /// What the firewall holds for VM `name` with network `net`, if bridged.
    fn vm_rules(&self, name: &VmName, net: &NetPolicy) -> Option<VmRules> {
        Some(VmRules {
            name: name.to_string(),
            link: netcfg::veth_name(self.store.id(), name.as_str()),
            ip: net.address()?,
            nat: net.nat(),
            allow: net.allow.clone(),
            deny: net.deny.clone(),
            publish: net.publish.clone(),
        })
    }

    /// Connect a just-cloned VM (its init is `pid`, our unreaped child) to its
    /// network: `lo` up in its namespace, and for a bridged VM the veth, address
    /// and default route, then the firewall rules.
    pub(super) fn connect_vm(
        &self,
        vm: &VmDir,
        net: &NetPolicy,
        pid: i32,
    ) -> Result<(), NetworkError> {
        if net.mode != NetMode::Bridge {
            let none = StoreNet::default();
            return Ok(attach::connect(
                pid,
                net,
                &none,
                self.store.id(),
                vm.name().as_str(),
            )?);
        }
        let _lock = self.net_lock()?;
        let store = StoreNet::load(&self.network_path()).map_err(NetworkError::Store)?;
        Ok(attach::connect(
            pid,
            net,
            &store,
            self.store.id(),
            vm.name().as_str(),
        )?)
    }

    /// After VM `name` started (its state says it runs) or stopped (its
    /// state says so): its pieces of the firewall go in or out.
    pub(super) fn refresh_firewall(
        &self,
        name: &VmName,
        change: FirewallChange<'_>,
    ) -> Result<(), VmError> {
        let net = match change {
            FirewallChange::Start(net) | FirewallChange::Stop(net) => net,
            FirewallChange::Change(_, net) => net,
        };
        if net.mode != NetMode::Bridge {
            return Ok(());
        }
        let lock = self.net_lock().map_err(VmError::Network)?;
        self.change_firewall(name, change, &lock)
            .map_err(VmError::Network)
    }

    /// Rebuild the firewall whole from the VMs that run (after a VM whose
    /// policy can't be read stopped).
    pub(super) fn rebuild_firewall(&self) -> Result<(), VmError> {
        let lock = self.net_lock().map_err(VmError::Network)?;
        self.sync_firewall(None, &lock).map_err(VmError::Network)
    }

    /// After a bridged VM was deleted: with no bridged VM left in the store, the
    /// bridge and the tables go too.
    pub(super) fn release_network(&self) -> Result<(), VmError> {
        let lock = self.net_lock().map_err(VmError::Network)?;
        let store = self.store_network()?;
        self.sync_firewall(None, &lock).map_err(VmError::Network)?;
        if self
            .policies()
            .iter()
            .all(|(_, p)| p.network.mode != NetMode::Bridge)
        {
            self.remove_bridge(&store).map_err(VmError::Network)?;
            attach::remove_tables(self.store.id(), lock.as_fd())
                .map_err(|e| VmError::Network(e.into()))?;
        }
        Ok(())
    }

    fn remove_bridge(&self, store: &StoreNet) -> Result<bool, NetworkError> {
        Ok(attach::remove_bridge(store, self.store.id())?)
    }

    /// For `doctor --cleanup`: rebuild the firewall, and remove the bridge if no
    /// bridged VM is left. Returns what was done.
    pub(super) fn cleanup_network(&self) -> Result<Vec<String>, VmError> {
        let mut done = Vec::new();
        let lock = self.net_lock().map_err(VmError::Network)?;
        let store = self.store_network()?;
        let table = attach::table(self.store.id());
        let had_tables = attach::has_tables(self.store.id());
        let bridged = self
            .policies()
            .iter()
            .any(|(_, p)| p.network.mode == NetMode::Bridge);
        if bridged {
            self.sync_firewall(None, &lock).map_err(VmError::Network)?;
        } else {
            if had_tables {
                attach::remove_tables(self.store.id(), lock.as_fd())
                    .map_err(|e| VmError::Network(e.into()))?;
                done.push(format!("removed nft tables {table}"));
            }
            if self.remove_bridge(&store).map_err(VmError::Network)? {
                done.push(format!("removed bridge {}", store.bridge));
            }
            if self.resolver_pid().is_some() {
                done.push("stopped the store's resolver".into());
            }
            self.stop_resolver();
        }
        Ok(done)
    }
}

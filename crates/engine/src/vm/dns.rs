//! The engine's side of the store's resolver ([`crate::net::dns`]): it runs
//! while a bridged VM of the store runs, one per store.
//!
//! Started, told of changes and stopped by whoever rebuilds the store's
//! firewall ([`Engine::sync_firewall`], under the store's network lock): a
//! VM's start, stop, crash cleanup (by a command or the store's watcher), a
//! change of its rules, `doctor --cleanup`. The command binds the sockets (so a
//! port that can't be had is reported where someone reads it), then forks the
//! resolver off, detached like the watcher, with only those sockets open. The
//! resolver holds `STORE/dns.lock` for its life and writes its pid to
//! `STORE/dns.pid`; SIGHUP makes it read the store again, SIGTERM ends it. It
//! also looks every second whether the VMs it serves still run, and exits,
//! under the network lock, when none does.
//!
//! It is a process of its own, not a part of the watcher: it parses every
//! packet a VM sends it, so it runs with nothing the watcher needs (no
//! capability at all, no_new_privs, no other fd), and a DNS query never waits
//! for an invalidation of the VMs' overlays.

use std::cell::RefCell;
use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::Engine;
use crate::net::StoreNet;
use crate::net::dns::{self, Upstream, Zone, ZoneRead, ZoneSource};
use crate::net::nft::VmRules;
use crate::os::files::Lock;
use crate::os::procid::ProcId;
use crate::os::sys;

/// The resolver's process name (`/proc/PID/comm`).
const COMM: &str = "fvm-dns";

/// How long a command waits for a resolver it asked to end (SIGTERM), before
/// it kills it (a resolver waiting for the network lock the command holds can't
/// read its signals; it has nothing to save), and then for the kill.
const TERM_WAIT: Duration = Duration::from_millis(200);
const STOP_WAIT: Duration = Duration::from_secs(1);

impl Engine {
    fn dns_lock_path(&self) -> PathBuf {
        self.store.root().join("dns.lock")
    }

    fn dns_pid_path(&self) -> PathBuf {
        self.store.root().join("dns.pid")
    }

    /// The pid in the resolver's pid file, if it is a live `fvm-dns` that
    /// holds the resolver's lock (a pid file outliving its resolver, or a
    /// zombie not yet reaped, never gets a signal meant for a resolver).
    pub fn resolver_pid(&self) -> Option<i32> {
        if !self.resolver_alive() {
            return None;
        }
        crate::os::procid::from_pid_file(&self.dns_pid_path(), COMM)
    }

    fn resolver_alive(&self) -> bool {
        Lock::try_exclusive(&self.dns_lock_path()).is_ok_and(|l| l.is_none())
    }

    /// Wait until the resolver's lock is free, up to `wait`; whether it is.
    /// With `pidfd`, the resolver's, woken by its exit rather than by a
    /// timer (a stop of the last bridged VM waits for it).
    fn resolver_gone_within(&self, wait: Duration, pidfd: Option<&std::os::fd::OwnedFd>) -> bool {
        let until = Instant::now() + wait;
        loop {
            if !self.resolver_alive() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let step = left.min(Duration::from_millis(5));
            match pidfd {
                Some(fd) => {
                    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                    let timeout = rustix::event::Timespec {
                        tv_sec: 0,
                        tv_nsec: i64::from(step.subsec_nanos()),
                    };
                    let _ = rustix::event::poll(&mut fds, Some(&timeout));
                }
                None => std::thread::sleep(step),
            }
        }
    }

    /// After the firewall was rebuilt for `running` bridged VMs: the resolver
    /// runs and knows them, or, with none, is gone with its pid file. The
    /// caller holds the network lock. Never fails the caller: a resolver that
    /// can't be started is a warning (the VMs' names don't resolve).
    pub(super) fn sync_resolver(&self, store: &StoreNet, running: bool) {
        if running {
            if let Err(e) = self.ensure_resolver(store) {
                tracing::warn!(
                    "names on bridge {} won't resolve: cannot start the store's resolver: {e}",
                    store.bridge
                );
            }
        } else {
            self.stop_resolver();
        }
    }

    fn ensure_resolver(&self, store: &StoreNet) -> std::io::Result<()> {
        if let Some(pid) = self.resolver_pid() {
            tracing::debug!(pid, "the store's resolver reads the store again");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP);
            return Ok(());
        }
        // Held without a pid file: one on its way out (or in its first
        // instants: then it reads the store after this VM was recorded).
        if self.resolver_alive() && !self.resolver_gone_within(STOP_WAIT, None) {
            return Ok(());
        }
        let _ = std::fs::remove_file(self.dns_pid_path());
        let at = SocketAddrV4::new(store.gateway().addr, dns::PORT);
        let udp = UdpSocket::bind(at)
            .map_err(|e| std::io::Error::new(e.kind(), format!("udp {at}: {e}")))?;
        let tcp = TcpListener::bind(at)
            .map_err(|e| std::io::Error::new(e.kind(), format!("tcp {at}: {e}")))?;
        let keep = [udp.as_fd(), tcp.as_fd()];
        crate::os::detach::spawn_detached_keeping(c"fvm-dns", &keep, || {
            self.run_resolver(&udp, &tcp)
        })
    }

    /// For commands that look at the store (with the watcher's check): if
    /// bridged VMs run but the resolver doesn't (it was killed), start it
    /// again, and say so.
    pub(super) fn keep_resolver(&self) {
        if self.resolver_alive() {
            return;
        }
        let Ok(_lock) = self.net_lock() else {
            return;
        };
        let vms = self.running_bridged(None).len();
        if vms == 0 {
            return;
        }
        let Ok(store) = self.store_network() else {
            return;
        };
        tracing::warn!(
            "the store's resolver was not running while {vms} bridged vm(s) ran (their names did not resolve): restarted it"
        );
        self.sync_resolver(&store, true);
    }

    /// End the resolver, if one runs, and remove what it leaves.
    pub(super) fn stop_resolver(&self) {
        let found = self.resolver_pid();
        match found {
            Some(pid) => tracing::debug!(pid, "no bridged vm runs: the store's resolver goes"),
            None => tracing::debug!("no bridged vm runs, and no resolver is left"),
        }
        if let Some(pid) = found {
            let pidfd = rustix::process::Pid::from_raw(pid).and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
            });
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            if !self.resolver_gone_within(TERM_WAIT, pidfd.as_ref()) {
                // Stuck (waiting for the network lock this command holds).
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                self.resolver_gone_within(STOP_WAIT, pidfd.as_ref());
            }
        }
        if !self.resolver_alive() {
            let _ = std::fs::remove_file(self.dns_pid_path());
        }
    }

    /// The resolver process's work; its exit status.
    fn run_resolver(&self, udp: &UdpSocket, tcp: &TcpListener) -> i32 {
        let Ok(Some(_lock)) = Lock::try_exclusive(&self.dns_lock_path()) else {
            return 0;
        };
        let signals = match sys::catch_and_block(&[Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT])
            .and_then(|set| {
                SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
                    .map_err(Into::into)
            }) {
            Ok(s) => s,
            Err(_) => return 1,
        };
        if crate::os::files::write_atomic(
            &self.dns_pid_path(),
            format!("{}\n", std::process::id()).as_bytes(),
            0o600,
        )
        .is_err()
            || drop_privileges().is_err()
        {
            let _ = std::fs::remove_file(self.dns_pid_path());
            return 1;
        }
        let source = Source {
            engine: self,
            inits: RefCell::new(Vec::new()),
            held: RefCell::new(None),
        };
        let code = i32::from(dns::serve(udp, tcp, &signals, &source).is_err());
        if self.resolver_pid() == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(self.dns_pid_path());
        }
        code
    }

    /// Whether a bridged VM other than `except` runs (the search stops at the
    /// first one found).
    pub(super) fn any_bridged_running(&self, except: &crate::store::VmName) -> bool {
        self.store
            .names()
            .unwrap_or_default()
            .into_iter()
            .any(|name| {
                if name == *except {
                    return false;
                }
                let Ok(vm) = self.store.vm(&name) else {
                    return false;
                };
                vm.load_policy()
                    .is_ok_and(|p| p.network.address().is_some())
                    && vm
                        .load_state()
                        .is_ok_and(|s| s.live_init(&self.cgroup_leaf(&name)).is_some())
            })
    }

    /// The running bridged VMs as the firewall and the resolver see them (VM
    /// `pending` with `pending_policy`, for a change being made), with their
    /// inits. The caller holds the network lock.
    pub(super) fn running_bridged(
        &self,
        pending: Option<(&crate::store::VmName, &crate::net::NetPolicy)>,
    ) -> Vec<(VmRules, ProcId)> {
        let mut vms = Vec::new();
        for (name, policy) in self.policies() {
            let net = match pending {
                Some((n, p)) if *n == name => p.clone(),
                _ => policy.network.clone(),
            };
            let Some(ip) = net.address() else { continue };
            let Some(init) = self
                .store
                .vm(&name)
                .ok()
                .and_then(|vm| vm.load_state().ok())
                .and_then(|s| s.live_init(&self.cgroup_leaf(&name)).cloned())
            else {
                continue;
            };
            vms.push((
                VmRules {
                    name: name.to_string(),
                    link: crate::net::veth_name(self.store.id(), name.as_str()),
                    ip,
                    nat: net.nat(),
                    allow: net.allow.clone(),
                    deny: net.deny.clone(),
                    publish: net.publish.clone(),
                },
                init,
            ));
        }
        vms
    }
}

/// No capability in any set (the bounding set too) and no_new_privs: the
/// resolver needs none once its sockets are bound. It keeps uid 0, to read the
/// store's policies.
fn drop_privileges() -> std::io::Result<()> {
    crate::confine::caps::drop_to(rustix::thread::CapabilitySet::empty())?;
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}

/// The store, as the resolver reads it.
struct Source<'a> {
    engine: &'a Engine,
    inits: RefCell<Vec<ProcId>>,
    /// The network lock, kept from the read that found no VM until the
    /// process ends: no VM can start in between and miss its resolver.
    held: RefCell<Option<Lock>>,
}

impl ZoneSource for Source<'_> {
    fn zone(&self, wait: bool) -> ZoneRead {
        // A store that can't be locked or read any more (deleted, damaged)
        // ends the resolver, as no VM would.
        let lock = if wait {
            self.engine.net_lock().ok()
        } else {
            match self.engine.try_net_lock() {
                Ok(Some(lock)) => Some(lock),
                Ok(None) => return ZoneRead::Busy,
                Err(_) => None,
            }
        };
        let Some(lock) = lock else {
            return ZoneRead::Done;
        };
        let Ok(store) = self.engine.store_network() else {
            return ZoneRead::Done;
        };
        let running = self.engine.running_bridged(None);
        if running.is_empty() {
            let _ = std::fs::remove_file(self.engine.dns_pid_path());
            *self.held.borrow_mut() = Some(lock);
            return ZoneRead::Done;
        }
        let (vms, inits): (Vec<VmRules>, Vec<ProcId>) = running.into_iter().unzip();
        *self.inits.borrow_mut() = inits;
        drop(lock);
        ZoneRead::Zone(Zone {
            subnet: Some(store.subnet),
            vms,
            upstreams: upstreams(&store),
        })
    }

    fn gone(&self, _zone: &Zone) -> bool {
        self.inits.borrow().iter().any(|p| !p.is_alive())
    }
}

/// The store's `upstream-dns`, or else the host's resolv.conf name servers.
fn upstreams(store: &StoreNet) -> Vec<Upstream> {
    let addrs = if store.upstream_dns.is_empty() {
        dns::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    } else {
        store.upstream_dns.clone()
    };
    // Never itself (a host whose resolv.conf names the bridge).
    addrs
        .into_iter()
        .filter(|a| *a.ip() != store.gateway().addr)
        .map(|addr| Upstream {
            addr,
            local: dns::is_local(*addr.ip()),
        })
        .collect()
}

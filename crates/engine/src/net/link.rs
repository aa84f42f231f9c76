//! Links, addresses and routes through netlink (rtnetlink), never by running `ip`.
//!
//! rtnetlink is asynchronous; each [`Netlink`] runs its own current-thread tokio
//! runtime, so fvm stays single-threaded (it forks VM processes). A netlink
//! socket belongs to the network namespace it was opened in: to configure a
//! VM's namespace, fvm enters it, opens a socket, and returns to its own
//! ([`Netlink::open_in`]); the socket stays in the VM's namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{BorrowedFd, OwnedFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot talk to the kernel over netlink")]
    Socket(#[source] io::Error),
    #[error("cannot enter the vm's network namespace")]
    Setns(#[source] io::Error),
    #[error("netlink: cannot {what}: {message}")]
    Netlink { what: String, message: String },
    #[error(
        "bridge {name} exists but fvm didn't make it for this store (it is marked {alias:?}); choose another with fvm network --bridge"
    )]
    ForeignBridge { name: String, alias: String },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |e| LinkError::Netlink {
        what,
        message: e.to_string(),
    }
}

/// A netlink connection in one network namespace.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

impl Netlink {
    /// A connection in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, LinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(LinkError::Socket)?;
        let (conn, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection().map_err(LinkError::Socket)?
        };
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }

    /// A connection in the network namespace `netns`, made by entering it and
    /// coming back to `home` (this process's own), single-threaded.
    pub fn open_in(netns: BorrowedFd<'_>, home: BorrowedFd<'_>) -> Result<Netlink, LinkError> {
        use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
        move_into_link_name_space(netns, Some(LinkNameSpaceType::Network))
            .map_err(|e| LinkError::Setns(e.into()))?;
        let opened = Netlink::open();
        move_into_link_name_space(home, Some(LinkNameSpaceType::Network))
            .map_err(|e| LinkError::Setns(e.into()))?;
        opened
    }

    /// The link named `name`, if there is one.
    pub fn get(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match self.rt.block_on(async { req.try_next().await }) {
            Ok(link) => Ok(link),
            // The kernel answers a lookup of a missing name with ENODEV.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::ENODEV || e.raw_code() == -libc::ENOENT =>
            {
                Ok(None)
            }
            Err(e) => Err(nl(format!("look up {name}"))(e)),
        }
    }

    /// Names of all links, in this namespace.
    pub fn names(&self) -> Result<Vec<String>, LinkError> {
        let req = self.handle.link().get().execute();
        let links: Vec<LinkMessage> = self
            .rt
            .block_on(req.try_collect())
            .map_err(nl("list links"))?;
        Ok(links.iter().filter_map(name_of).collect())
    }

    /// Make sure bridge `name` exists, is up, carries `gateway`, and is marked
    /// with `alias` (the store that owns it). A bridge with another mark is not
    /// ours: refused.
    pub fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Net,
        alias: &str,
    ) -> Result<u32, LinkError> {
        let link = match self.get(name)? {
            Some(link) => {
                let mark = alias_of(&link).unwrap_or_default();
                if mark != alias {
                    return Err(LinkError::ForeignBridge {
                        name: name.to_owned(),
                        alias: mark,
                    });
                }
                link
            }
            None => {
                let add = self
                    .handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute();
                match self.rt.block_on(add) {
                    Ok(()) => {}
                    // Made meanwhile by another fvm: checked below.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    Err(e) => return Err(nl(format!("create bridge {name}"))(e)),
                }
                let link = self.get(name)?.ok_or_else(|| LinkError::Netlink {
                    what: format!("create bridge {name}"),
                    message: "it vanished".into(),
                })?;
                let mark = alias_of(&link).unwrap_or_default();
                if mark.is_empty() {
                    let set = self
                        .handle
                        .link()
                        .set(
                            LinkUnspec::new_with_index(link.header.index)
                                .alias(alias)
                                .build(),
                        )
                        .execute();
                    self.rt
                        .block_on(set)
                        .map_err(nl(format!("mark bridge {name}")))?;
                } else if mark != alias {
                    return Err(LinkError::ForeignBridge {
                        name: name.to_owned(),
                        alias: mark,
                    });
                }
                link
            }
        };
        let index = link.header.index;
        self.add_address(index, gateway, name)?;
        self.up(index, name)?;
        Ok(index)
    }

    /// Add `ip` to link `index`; an address it already has is fine.
    fn add_address(&self, index: u32, ip: Ipv4Net, name: &str) -> Result<(), LinkError> {
        let req = self
            .handle
            .address()
            .add(index, IpAddr::V4(ip.addr), ip.prefix)
            .execute();
        match self.rt.block_on(req) {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(nl(format!("add {ip} to {name}"))(e)),
        }
    }

    fn up(&self, index: u32, name: &str) -> Result<(), LinkError> {
        let req = self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute();
        self.rt
            .block_on(req)
            .map_err(nl(format!("bring {name} up")))
    }

    /// Delete link `name` if it carries `alias` (so only what fvm made for this
    /// store). Returns whether it was deleted.
    pub fn delete_marked(&self, name: &str, alias: &str) -> Result<bool, LinkError> {
        let Some(link) = self.get(name)? else {
            return Ok(false);
        };
        if alias_of(&link).as_deref() != Some(alias) {
            return Ok(false);
        }
        self.delete(link.header.index, name)?;
        Ok(true)
    }

    /// Delete link `index` (a missing one is fine).
    pub fn delete(&self, index: u32, name: &str) -> Result<(), LinkError> {
        match self.rt.block_on(self.handle.link().del(index).execute()) {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(nl(format!("delete {name}"))(e)),
        }
    }

    /// Create the veth pair `host` / `peer`, the host end attached to bridge
    /// `bridge` and up, the peer moved into the namespace `netns`. A leftover
    /// pair of the same name (a crash between create and move) is replaced.
    pub fn add_veth(
        &self,
        host: &str,
        peer: &str,
        bridge: u32,
        netns: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        if let Some(old) = self.get(host)? {
            self.delete(old.header.index, host)?;
        }
        // One request: the pair, the host end on the bridge and up, the peer made
        // directly inside the VM's namespace (moving it there afterwards costs the
        // kernel several times more).
        let fd = std::os::fd::AsRawFd::as_raw_fd(&netns);
        let peer_msg = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer)
            .setns_by_fd(fd)
            .build();
        let pair = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .controller(bridge)
            .up()
            .build();
        let add = self.handle.link().add(pair).execute();
        self.rt
            .block_on(add)
            .map_err(nl(format!("create veth {host}")))
    }

    /// In a VM's namespace: `lo` up; `peer` renamed `eth0`, given `ip` and up;
    /// a default route via `gateway` (if any).
    pub fn configure_vm_side(
        &self,
        peer: &str,
        ip: Option<Ipv4Net>,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), LinkError> {
        if let Some(lo) = self.get("lo")? {
            self.up(lo.header.index, "lo")?;
        }
        let Some(ip) = ip else {
            return Ok(());
        };
        let link = self.get(peer)?.ok_or_else(|| LinkError::Netlink {
            what: "configure the vm's eth0".into(),
            message: format!("{peer} is not in the vm"),
        })?;
        let index = link.header.index;
        if peer != "eth0" {
            let rename = self
                .handle
                .link()
                .set(LinkUnspec::new_with_index(index).name("eth0").build())
                .execute();
            self.rt.block_on(rename).map_err(nl("name the vm's eth0"))?;
        }
        self.add_address(index, ip, "eth0")?;
        self.up(index, "eth0")?;
        if let Some(gw) = gateway {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build();
            let add = self.handle.route().add(route).execute();
            self.rt
                .block_on(add)
                .map_err(nl(format!("add the default route via {gw}")))?;
        }
        Ok(())
    }
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn alias_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.clone()),
        _ => None,
    })
}

/// This process's own network namespace, to come back to.
pub fn own_netns() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/proc/thread-self/ns/net",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// The network namespace of `pid`, a child of ours that we have not reaped (so
/// its pid can't have been reused).
pub fn netns_of_child(pid: i32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        format!("/proc/{pid}/ns/net"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

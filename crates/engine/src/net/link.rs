//! Links, addresses and routes through netlink, never by running `ip`.
//!
//! Each request is one message on a blocking `NETLINK_ROUTE` socket, answered
//! before the next is sent: no runtime and no threads, so fvm stays a single
//! thread that can fork VM processes. The messages are built with
//! `netlink-packet-route`. A netlink socket belongs to the network namespace it
//! was opened in: to configure a VM's namespace, fvm enters it, opens a socket,
//! and returns to its own ([`Netlink::open_in`]); the socket stays in the VM's
//! namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rustix::net::{
    AddressFamily as SocketFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
    netlink::SocketAddrNetlink,
};

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

/// Why one netlink request failed.
#[derive(Debug)]
enum Failure {
    /// The kernel refused the request, with this error.
    Refused(io::Error),
    /// The request or its answer did not get through, or could not be read.
    Transport(String),
}

impl Failure {
    /// The kernel refused the request with `errno`.
    fn is(&self, errno: i32) -> bool {
        matches!(self, Failure::Refused(e) if e.raw_os_error() == Some(errno))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(e) => write!(f, "{e}"),
            Failure::Transport(what) => f.write_str(what),
        }
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(Failure) -> LinkError {
    let what = what.into();
    move |e| LinkError::Netlink {
        what,
        message: e.to_string(),
    }
}

/// A netlink message header: the least a reply can be.
const HEADER_LEN: usize = 16;

/// A netlink connection in one network namespace: one blocking socket,
/// connected to the kernel, and the sequence number of the last request.
pub struct Netlink {
    socket: OwnedFd,
    sequence: u32,
    /// Room for one datagram from the kernel; grown when one is larger.
    buf: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("socket", &self.socket.as_raw_fd())
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl Netlink {
    /// A connection in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, LinkError> {
        let socket = rustix::net::socket_with(
            SocketFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None, // NETLINK_ROUTE
        )
        .map_err(|e| LinkError::Socket(e.into()))?;
        // Connected to the kernel (port 0), the socket takes datagrams from the
        // kernel only: no process of the namespace (a VM's, for one opened in
        // it) can slip forged answers in.
        rustix::net::connect(&socket, &SocketAddrNetlink::new(0, 0))
            .map_err(|e| LinkError::Socket(e.into()))?;
        Ok(Netlink {
            socket,
            sequence: 0,
            buf: vec![0; 32 * 1024],
        })
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

    /// Send `message` with `flags` (besides `NLM_F_REQUEST`) and read the
    /// kernel's answer to it: the messages it returns, up to the end of a dump
    /// (`NLMSG_DONE`), the acknowledgement (`NLMSG_ERROR` with no error) or a
    /// single reply for a plain lookup. An `NLMSG_ERROR` with an error is
    /// [`Failure::Refused`]. Answers to an earlier request (one given up on
    /// half-read) are skipped by their sequence number.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut packet = NetlinkMessage::from(message);
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = sequence;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let sent = retry(|| rustix::net::send(&self.socket, &bytes, SendFlags::empty()))
            .map_err(|e| Failure::Transport(format!("send a request: {e}")))?;
        if sent != bytes.len() {
            return Err(Failure::Transport(format!(
                "the kernel took {sent} of a request's {} bytes",
                bytes.len()
            )));
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let acked = flags & NLM_F_ACK != 0;
        let mut replies = Vec::new();
        loop {
            let len = self.receive()?;
            let mut rest = &self.buf[..len];
            while !rest.is_empty() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| Failure::Transport(format!("unreadable answer: {e}")))?;
                // Messages in one datagram start at 4-byte boundaries.
                let size = (reply.header.length as usize).max(HEADER_LEN);
                rest = rest.get(size.next_multiple_of(4)..).unwrap_or_default();
                if reply.header.sequence_number != sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(Failure::Refused(e.to_io()));
                    }
                    NetlinkPayload::Error(_) => return Ok(replies),
                    NetlinkPayload::Done(done) if done.code != 0 => {
                        return Err(Failure::Refused(io::Error::from_raw_os_error(
                            done.code.saturating_neg(),
                        )));
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && !acked {
                            return Ok(replies);
                        }
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(Failure::Transport("the kernel's answer overran".into()));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Take the next datagram into `buf`, made large enough for it first.
    /// Returns its length.
    fn receive(&mut self) -> Result<usize, Failure> {
        let failed = |e: rustix::io::Errno| Failure::Transport(format!("read the answer: {e}"));
        // With MSG_TRUNC, the datagram's whole length, whatever the room given.
        let (_, whole) = retry(|| {
            rustix::net::recv(
                &self.socket,
                &mut [0u8; 0][..],
                RecvFlags::PEEK | RecvFlags::TRUNC,
            )
        })
        .map_err(failed)?;
        if whole > self.buf.len() {
            self.buf.resize(whole, 0);
        }
        let (_, len) =
            retry(|| rustix::net::recv(&self.socket, &mut self.buf[..], RecvFlags::empty()))
                .map_err(failed)?;
        Ok(len.min(self.buf.len()))
    }

    /// The link named `name`, if there is one.
    pub fn get(&mut self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut lookup = LinkMessage::default();
        lookup
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(lookup), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link),
                _ => None,
            })),
            // The kernel answers a lookup of a missing name with ENODEV.
            Err(e) if e.is(libc::ENODEV) || e.is(libc::ENOENT) => Ok(None),
            Err(e) => Err(nl(format!("look up {name}"))(e)),
        }
    }

    /// Names of all links, in this namespace.
    pub fn names(&mut self) -> Result<Vec<String>, LinkError> {
        let links = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(nl("list links"))?;
        Ok(links
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => name_of(link),
                _ => None,
            })
            .collect())
    }

    /// Send `message`, which makes or changes something, and wait for the
    /// kernel's acknowledgement.
    fn change(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<(), Failure> {
        self.request(message, NLM_F_ACK | flags).map(drop)
    }

    /// Set the attributes of link `index` (`RTM_SETLINK`).
    fn set_link(&mut self, link: LinkMessage) -> Result<(), Failure> {
        self.change(
            RouteNetlinkMessage::SetLink(link),
            NLM_F_EXCL | NLM_F_CREATE,
        )
    }

    /// Make sure bridge `name` exists, is up, carries `gateway`, and is marked
    /// with `alias` (the store that owns it). A bridge with another mark is not
    /// ours: refused.
    pub fn ensure_bridge(
        &mut self,
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
                // An address of its own, set at creation: a bridge without
                // one takes the lowest of its ports' addresses, and changes it
                // as VMs come and go. A VM that learned the gateway's old
                // address then sends to a port's address, which the host's IP
                // stack drops as not its own, until the VM asks again: seconds
                // without its resolver or its gateway.
                let mut bridge = up_link(0);
                bridge.attributes = vec![
                    LinkAttribute::IfName(name.to_owned()),
                    LinkAttribute::Address(random_mac().to_vec()),
                    LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
                ];
                match self.change(
                    RouteNetlinkMessage::NewLink(bridge),
                    NLM_F_CREATE | NLM_F_EXCL,
                ) {
                    Ok(()) => {}
                    // Made meanwhile by another fvm: checked below.
                    Err(e) if e.is(libc::EEXIST) => {}
                    Err(e) => return Err(nl(format!("create bridge {name}"))(e)),
                }
                let link = self.get(name)?.ok_or_else(|| LinkError::Netlink {
                    what: format!("create bridge {name}"),
                    message: "it vanished".into(),
                })?;
                let mark = alias_of(&link).unwrap_or_default();
                if mark.is_empty() {
                    let mut set = LinkMessage::default();
                    set.header.index = link.header.index;
                    set.attributes
                        .push(LinkAttribute::IfAlias(alias.to_owned()));
                    self.set_link(set)
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
    fn add_address(&mut self, index: u32, ip: Ipv4Net, name: &str) -> Result<(), LinkError> {
        let mut address = AddressMessage::default();
        address.header.family = AddressFamily::Inet;
        address.header.prefix_len = ip.prefix;
        address.header.index = index;
        address.attributes = vec![
            AddressAttribute::Address(ip.addr.into()),
            AddressAttribute::Local(ip.addr.into()),
        ];
        if ip.prefix < 31 {
            let broadcast = u32::MAX >> ip.prefix | u32::from(ip.addr);
            address
                .attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(broadcast)));
        }
        match self.change(
            RouteNetlinkMessage::NewAddress(address),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e.is(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl(format!("add {ip} to {name}"))(e)),
        }
    }

    fn up(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        self.set_link(up_link(index))
            .map_err(nl(format!("bring {name} up")))
    }

    /// Delete link `name` if it carries `alias` (so only what fvm made for this
    /// store). Returns whether it was deleted.
    pub fn delete_marked(&mut self, name: &str, alias: &str) -> Result<bool, LinkError> {
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
    pub fn delete(&mut self, index: u32, name: &str) -> Result<(), LinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        match self.change(RouteNetlinkMessage::DelLink(link), 0) {
            Ok(()) => Ok(()),
            Err(e) if e.is(libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(format!("delete {name}"))(e)),
        }
    }

    /// Create the veth pair `host` / `peer`, the host end attached to bridge
    /// `bridge`, in interface group `group` and up, the peer moved into the
    /// namespace `netns`. A leftover
    /// pair of the same name (a crash between create and move) is replaced.
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        bridge: u32,
        group: u32,
        netns: BorrowedFd<'_>,
    ) -> Result<(), LinkError> {
        if let Some(old) = self.get(host)? {
            self.delete(old.header.index, host)?;
        }
        // One request: the pair, the host end on the bridge and up, the peer made
        // directly inside the VM's namespace (moving it there afterwards costs the
        // kernel several times more).
        let mut peer_link = LinkMessage::default();
        peer_link.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::NetNsFd(netns.as_raw_fd()),
        ];
        let mut pair = up_link(0);
        pair.attributes = vec![
            LinkAttribute::IfName(host.to_owned()),
            LinkAttribute::Controller(bridge),
            LinkAttribute::Group(group),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_link))),
            ]),
        ];
        self.change(
            RouteNetlinkMessage::NewLink(pair),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(nl(format!("create veth {host}")))
    }

    /// In a VM's namespace: `lo` up; `peer` renamed `eth0`, given `ip` and up;
    /// a default route via `gateway` (if any).
    pub fn configure_vm_side(
        &mut self,
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
            let mut rename = LinkMessage::default();
            rename.header.index = index;
            rename.attributes.push(LinkAttribute::IfName("eth0".into()));
            self.set_link(rename).map_err(nl("name the vm's eth0"))?;
        }
        self.add_address(index, ip, "eth0")?;
        self.up(index, "eth0")?;
        if let Some(gw) = gateway {
            let mut route = RouteMessage::default();
            route.header.address_family = AddressFamily::Inet;
            route.header.table = RouteHeader::RT_TABLE_MAIN;
            route.header.protocol = RouteProtocol::Static;
            route.header.scope = RouteScope::Universe;
            route.header.kind = RouteType::Unicast;
            route.attributes = vec![
                RouteAttribute::Gateway(RouteAddress::Inet(gw)),
                RouteAttribute::Oif(index),
            ];
            self.change(
                RouteNetlinkMessage::NewRoute(route),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(nl(format!("add the default route via {gw}")))?;
        }
        Ok(())
    }
}

/// A link message for link `index` (0: one being made) that brings it up.
/// A random unicast, locally administered MAC address.
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // Up to 256 bytes, getrandom(2) fills the buffer whole and is never
    // interrupted; should it fail, a fixed address still keeps the bridge's
    // address from moving.
    let _ = rustix::rand::getrandom(&mut mac, rustix::rand::GetRandomFlags::empty());
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

fn up_link(index: u32) -> LinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link
}

/// Run a socket call again when a signal interrupted it.
fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match call() {
            Err(rustix::io::Errno::INTR) => continue,
            done => return done,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::sys;
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    use std::os::fd::AsFd;

    /// Run `f` on a thread of its own in a network namespace of its own, which
    /// goes away with the thread (and every link made in it).
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            sys::unshare(sys::ns::NET).expect("unshare a network namespace");
            f()
        })
        .join()
        .expect("the test thread")
    }

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn a_bridge_is_made_marked_found_and_deleted_only_by_its_store() {
        if !crate::testing::require_root(
            "a_bridge_is_made_marked_found_and_deleted_only_by_its_store",
        ) {
            return;
        }
        in_private_netns(|| {
            let mut nl = Netlink::open().unwrap();
            assert_eq!(nl.names().unwrap(), vec!["lo".to_owned()]);
            let gateway = net("10.200.250.1/24");
            let index = nl.ensure_bridge("fvmnl0", gateway, "fvm-a").unwrap();
            let link = nl.get("fvmnl0").unwrap().expect("the bridge");
            assert_eq!(link.header.index, index);
            assert_eq!(alias_of(&link).as_deref(), Some("fvm-a"));
            assert!(link.header.flags.contains(LinkFlags::Up));
            // Again: the same bridge, its address already there.
            assert_eq!(nl.ensure_bridge("fvmnl0", gateway, "fvm-a").unwrap(), index);
            let foreign = nl.ensure_bridge("fvmnl0", gateway, "fvm-b").unwrap_err();
            assert!(
                matches!(foreign, LinkError::ForeignBridge { .. }),
                "{foreign}"
            );
            assert!(!nl.delete_marked("fvmnl0", "fvm-b").unwrap());
            assert!(nl.delete_marked("fvmnl0", "fvm-a").unwrap());
            assert!(nl.get("fvmnl0").unwrap().is_none());
            assert!(!nl.delete_marked("fvmnl0", "fvm-a").unwrap());
            // A refusal is one line naming what failed and why.
            let refused = nl
                .get("a-name-longer-than-ifnamsiz")
                .unwrap_err()
                .to_string();
            assert!(refused.starts_with("netlink: cannot look up "), "{refused}");
            assert!(!refused.contains('\n'), "{refused}");
        });
    }

    #[test]
    fn a_dump_larger_than_one_datagram_is_read_to_its_end() {
        if !crate::testing::require_root("a_dump_larger_than_one_datagram_is_read_to_its_end") {
            return;
        }
        in_private_netns(|| {
            let mut nl = Netlink::open().unwrap();
            let mut want = vec!["lo".to_owned()];
            for i in 0..120 {
                let name = format!("fvmnl{i}");
                let mut bridge = up_link(0);
                bridge.attributes = vec![
                    LinkAttribute::IfName(name.clone()),
                    LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
                ];
                nl.change(
                    RouteNetlinkMessage::NewLink(bridge),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .unwrap();
                want.push(name);
            }
            let mut names = nl.names().unwrap();
            names.sort();
            want.sort();
            assert_eq!(names, want);
            // The socket is in step afterwards: the next request gets its own answer.
            assert!(nl.get("fvmnl7").unwrap().is_some());
        });
    }

    #[test]
    fn a_veth_joins_a_bridge_with_its_peer_made_inside_another_namespace() {
        if !crate::testing::require_root(
            "a_veth_joins_a_bridge_with_its_peer_made_inside_another_namespace",
        ) {
            return;
        }
        in_private_netns(|| {
            let home = own_netns().unwrap();
            sys::unshare(sys::ns::NET).unwrap();
            let vm = own_netns().unwrap();
            move_into_link_name_space(home.as_fd(), Some(LinkNameSpaceType::Network)).unwrap();

            let mut host = Netlink::open().unwrap();
            let gateway = net("10.200.251.1/24");
            let bridge = host.ensure_bridge("fvmnlbr", gateway, "fvm-a").unwrap();
            host.add_veth("fvmnlveth", "eth0", bridge, 0, vm.as_fd())
                .unwrap();
            let veth = host.get("fvmnlveth").unwrap().expect("the host end");
            assert!(veth.attributes.contains(&LinkAttribute::Controller(bridge)));
            assert!(
                host.get("eth0").unwrap().is_none(),
                "the peer is not on the host"
            );
            // Made again over a leftover of the same name: the old pair goes first.
            host.add_veth("fvmnlveth", "eth0", bridge, 0, vm.as_fd())
                .unwrap();
            assert_ne!(
                host.get("fvmnlveth").unwrap().unwrap().header.index,
                veth.header.index
            );

            let mut inside = Netlink::open_in(vm.as_fd(), home.as_fd()).unwrap();
            let missing = inside
                .configure_vm_side("fvmnone", Some(net("10.200.251.2/24")), None)
                .unwrap_err()
                .to_string();
            assert_eq!(
                missing,
                "netlink: cannot configure the vm's eth0: fvmnone is not in the vm"
            );
            inside
                .configure_vm_side("eth0", Some(net("10.200.251.2/24")), Some(gateway.addr))
                .unwrap();
            let mut names = inside.names().unwrap();
            names.sort();
            assert_eq!(names, vec!["eth0".to_owned(), "lo".to_owned()]);
            let lo = inside.get("lo").unwrap().unwrap();
            assert!(lo.header.flags.contains(LinkFlags::Up));
            // A default route via the gateway was added: adding it again is refused.
            let again = inside
                .configure_vm_side("eth0", Some(net("10.200.251.2/24")), Some(gateway.addr))
                .unwrap_err()
                .to_string();
            assert!(
                again.starts_with("netlink: cannot add the default route via 10.200.251.1: "),
                "{again}"
            );
        });
    }

    #[test]
    fn no_other_process_can_slip_an_answer_into_the_socket() {
        if !crate::testing::require_root("no_other_process_can_slip_an_answer_into_the_socket") {
            return;
        }
        in_private_netns(|| {
            let mut nl = Netlink::open().unwrap();
            let port = SocketAddrNetlink::try_from(rustix::net::getsockname(&nl.socket).unwrap())
                .unwrap()
                .pid();
            assert_ne!(port, 0);
            // What root in a VM could send to fvm's socket in the VM's namespace: a
            // refusal of the next request, before fvm has even made it.
            let mut refusal = netlink_packet_core::ErrorMessage::default();
            refusal.code = std::num::NonZeroI32::new(-libc::EPERM);
            let mut forged = NetlinkMessage::<RouteNetlinkMessage>::new(
                Default::default(),
                NetlinkPayload::Error(refusal),
            );
            forged.header.sequence_number = nl.sequence + 1;
            forged.finalize();
            let mut bytes = vec![0; forged.buffer_len()];
            forged.serialize(&mut bytes);
            let forger = rustix::net::socket(SocketFamily::NETLINK, SocketType::RAW, None).unwrap();
            let sent = rustix::net::sendto(
                &forger,
                &bytes,
                SendFlags::empty(),
                &SocketAddrNetlink::new(port, 0),
            );
            assert_eq!(sent, Err(rustix::io::Errno::CONNREFUSED));
            // The next request gets the kernel's own answer (no such link: fine).
            let deleted = nl.delete(987_654, "fvmnone");
            assert!(deleted.is_ok(), "{deleted:?}");
            assert!(nl.get("fvmnone").unwrap().is_none());
        });
    }
}

//! The store's resolver: names on the bridge.
//!
//! While bridged VMs of a store run, one process of fvm (`fvm-dns`) listens on
//! the bridge's own address, port 53, UDP and TCP. It answers
//!
//! - a VM's name (as `hostname` sets it: `web1`, or `web.1` for a name with a
//!   dot) with the VM's address (A; other types of a VM's name have no data), and the reverse
//!   (PTR) of a VM's address with its name; another one-label name, or another
//!   address of the subnet, is NXDOMAIN at once;
//! - anything else by forwarding it, over UDP, to the upstreams the asking VM's
//!   egress policy lets it reach on port 53 (see
//!   [`super::nft::VmRules::reaches`]), one after another: REFUSED at once when
//!   there is none, so DNS is no channel around `--deny`. An upstream that
//!   refuses the packet, or doesn't answer within its share of
//!   [`UPSTREAM_TIMEOUT`], makes way for the next; SERVFAIL when none is left.
//!
//! Every packet is hostile: it is read into a fixed buffer and parsed by
//! `hickory-proto`; a packet that is not a query is dropped, and one that
//! can't be parsed gets a bare FORMERR (never more bytes than it sent, so no
//! amplification). Only the addresses of the store's running bridged VMs are
//! answered (the bridge's anti-spoofing makes source addresses true). Forwards
//! in flight are bounded ([`MAX_FORWARDS`], [`MAX_FORWARDS_PER_VM`]), each on a
//! socket of its own (a fresh random port, connected to the upstream, so only
//! the upstream's answers reach it), and so are TCP connections
//! ([`MAX_TCP`], [`MAX_TCP_PER_VM`], each with a deadline).
//!
//! The protocol work ([`Resolver::handle`]) is pure; [`serve`] is the loop
//! around it, a single thread in `poll`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rustix::event::{PollFd, PollFlags};

use super::Ipv4Net;
use super::nft::VmRules;

/// The resolver's port, on the bridge's address.
pub const PORT: u16 = 53;
/// How long a forwarded query waits for its upstreams (shared among them)
/// before the VM gets SERVFAIL: well under a client's own timeout (glibc: 5 s).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(2000);
/// Upstreams a query is tried at, at most (as many as glibc reads).
const MAX_UPSTREAMS: usize = 3;
/// Forwards in flight, and per VM: past them a query gets SERVFAIL at once.
pub const MAX_FORWARDS: usize = 256;
pub const MAX_FORWARDS_PER_VM: usize = 64;
/// TCP connections at once, and per VM (so one VM can't hold them all), and
/// how long one may take to send its query.
pub const MAX_TCP: usize = 32;
pub const MAX_TCP_PER_VM: usize = 8;
pub const TCP_DEADLINE: Duration = Duration::from_secs(3);
/// How long a VM may cache an answer about a VM (names move when VMs do).
const TTL: u32 = 5;
/// The largest UDP message read from a VM; a longer one is cut and fails to
/// parse. (An upstream's answer may be as large as UDP allows.)
const UDP_MAX: usize = 4096;
/// The largest TCP message read (RFC 1035's own limit is 65535).
const TCP_MAX: usize = 8192;

/// A name server the resolver forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddrV4,
    /// One of the host's own addresses (loopback included): a VM reaches those
    /// without NAT unless a rule denies them.
    pub local: bool,
}

/// What the resolver knows: the running bridged VMs (names, addresses and
/// egress policies) and the upstreams.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    pub subnet: Option<Ipv4Net>,
    pub vms: Vec<VmRules>,
    pub upstreams: Vec<Upstream>,
}

impl Zone {
    fn by_ip(&self, ip: Ipv4Addr) -> Option<&VmRules> {
        self.vms.iter().find(|v| v.ip == ip)
    }

    fn by_name(&self, name: &str) -> Option<&VmRules> {
        self.vms.iter().find(|v| v.name.eq_ignore_ascii_case(name))
    }

    /// The upstreams `vm` may reach on UDP port 53, in order.
    fn upstreams_for(&self, vm: &VmRules) -> Vec<SocketAddrV4> {
        let Some(subnet) = self.subnet else {
            return Vec::new();
        };
        self.upstreams
            .iter()
            .filter(|u| {
                vm.reaches(
                    subnet,
                    *u.addr.ip(),
                    u.addr.port(),
                    super::Proto::Udp,
                    u.local,
                )
            })
            .map(|u| u.addr)
            .take(MAX_UPSTREAMS)
            .collect()
    }
}

/// What to do with one packet from a VM.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Reply(Vec<u8>),
    /// Send `query` (the VM's, as it came) to `upstreams`, one after another;
    /// `id` is the VM's id.
    Forward {
        upstreams: Vec<SocketAddrV4>,
        query: Vec<u8>,
        id: u16,
    },
    Drop,
}

/// The protocol, without sockets.
#[derive(Debug, Default)]
pub struct Resolver {
    pub zone: Zone,
}

impl Resolver {
    /// Answer, forward or drop one message `packet` from `from`.
    pub fn handle(&self, from: Ipv4Addr, packet: &[u8]) -> Action {
        let Some(vm) = self.zone.by_ip(from) else {
            return Action::Drop;
        };
        // A response (QR set) is never answered: no loops between resolvers.
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return Action::Drop;
        }
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        let Ok(msg) = Message::from_vec(packet) else {
            return error(id, OpCode::Query, ResponseCode::FormErr, None);
        };
        let op = msg.metadata.op_code;
        if msg.metadata.message_type != MessageType::Query {
            return Action::Drop;
        }
        if op != OpCode::Query {
            return error(id, op, ResponseCode::NotImp, Some(&msg));
        }
        let [query] = msg.queries.as_slice() else {
            return error(id, op, ResponseCode::FormErr, Some(&msg));
        };
        if query.query_class() != DNSClass::IN {
            return error(id, op, ResponseCode::Refused, Some(&msg));
        }
        let name = query.name();
        let kind = query.query_type();
        // A VM's name, whole (VM names may hold dots: `web.1`).
        let full = name.to_ascii();
        if let Some(target) = self.zone.by_name(full.strip_suffix('.').unwrap_or(&full)) {
            let answer = (kind == RecordType::A || kind == RecordType::ANY)
                .then(|| Record::from_rdata(name.clone(), TTL, RData::A(A(target.ip))));
            return reply(&msg, ResponseCode::NoError, answer);
        }
        if name.num_labels() == 1 {
            return reply(&msg, ResponseCode::NXDomain, None);
        }
        if let Some(subnet) = self.zone.subnet
            && let Some(ip) = reverse_v4(name)
            && subnet.contains(ip)
        {
            return match self.zone.by_ip(ip) {
                Some(target) => {
                    let answer = (kind == RecordType::PTR).then(|| {
                        Name::from_ascii(format!("{}.", target.name))
                            .map(|n| Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(n))))
                    });
                    match answer {
                        Some(Err(_)) => reply(&msg, ResponseCode::ServFail, None),
                        Some(Ok(r)) => reply(&msg, ResponseCode::NoError, Some(r)),
                        None => reply(&msg, ResponseCode::NoError, None),
                    }
                }
                None => reply(&msg, ResponseCode::NXDomain, None),
            };
        }
        if self.zone.upstreams.is_empty() {
            return reply(&msg, ResponseCode::ServFail, None);
        }
        let upstreams = self.zone.upstreams_for(vm);
        if upstreams.is_empty() {
            return reply(&msg, ResponseCode::Refused, None);
        }
        Action::Forward {
            upstreams,
            query: packet.to_vec(),
            id,
        }
    }
}

/// `d.c.b.a.in-addr.arpa.` → a.b.c.d.
fn reverse_v4(name: &Name) -> Option<Ipv4Addr> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let [d, c, b, a, inaddr, arpa] = labels.as_slice() else {
        return None;
    };
    if !inaddr.eq_ignore_ascii_case(b"in-addr") || !arpa.eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    let octet = |l: &[u8]| std::str::from_utf8(l).ok()?.parse::<u8>().ok();
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

/// A response to `msg` with `code` and at most one answer.
fn reply(msg: &Message, code: ResponseCode, answer: Option<Record>) -> Action {
    let mut r = Message::response(msg.metadata.id, msg.metadata.op_code);
    r.metadata.response_code = code;
    r.metadata.recursion_desired = msg.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.authoritative = answer.is_some() || code == ResponseCode::NXDomain;
    r.add_queries(msg.queries.iter().cloned());
    if let Some(a) = answer {
        r.add_answer(a);
    }
    r.to_vec().map_or(Action::Drop, Action::Reply)
}

/// An error response: with the question when the query could be read, bare
/// (12 bytes) when not.
fn error(id: u16, op: OpCode, code: ResponseCode, msg: Option<&Message>) -> Action {
    match msg {
        Some(m) if m.queries.len() == 1 => reply(m, code, None),
        _ => Message::error_msg(id, op, code)
            .to_vec()
            .map_or(Action::Drop, Action::Reply),
    }
}

/// SERVFAIL for the VM's query `query` (which parsed before it was
/// forwarded), under the VM's id `id`.
pub fn servfail(query: &[u8], id: u16) -> Vec<u8> {
    let action = match Message::from_vec(query) {
        Ok(mut m) => {
            m.metadata.id = id;
            error(id, m.metadata.op_code, ResponseCode::ServFail, Some(&m))
        }
        Err(_) => error(id, OpCode::Query, ResponseCode::ServFail, None),
    };
    match action {
        Action::Reply(b) => b,
        _ => Vec::new(),
    }
}

/// An upstream's answer to `query` (sent with id `sent`), for the VM that
/// asked with id `id`: the same question, answered, with the VM's id put
/// back. Anything else (a stray or forged packet) is `None`.
pub fn relay_answer(query: &[u8], sent: u16, answer: &[u8], id: u16) -> Option<Vec<u8>> {
    if answer.len() < 12 || u16::from_be_bytes([answer[0], answer[1]]) != sent {
        return None;
    }
    let a = Message::from_vec(answer).ok()?;
    let q = Message::from_vec(query).ok()?;
    if a.metadata.message_type != MessageType::Response || a.queries != q.queries {
        return None;
    }
    let mut out = answer.to_vec();
    out[..2].copy_from_slice(&id.to_be_bytes());
    Some(out)
}

/// The name servers of a resolv.conf: IPv4 ones, port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddrV4> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            let ip: Ipv4Addr = w.next()?.parse().ok()?;
            Some(SocketAddrV4::new(ip, PORT))
        })
        .collect()
}

/// Whether `ip` is one of this host's addresses (loopback included): a socket
/// can be bound to it.
pub fn is_local(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || UdpSocket::bind((ip, 0)).is_ok()
}

/// What [`ZoneSource::zone`] found.
#[derive(Debug)]
pub enum ZoneRead {
    Zone(Zone),
    /// No bridged VM runs: the resolver exits.
    Done,
    /// The store can't be read without waiting (a command is changing it):
    /// the resolver answers from what it knows and asks again shortly.
    Busy,
}

/// Where the resolver gets its zone from, and learns that it is done.
pub trait ZoneSource {
    /// The store's running bridged VMs and the upstreams now. Called at the
    /// start (`wait`), and without waiting at every SIGHUP and when
    /// [`ZoneSource::gone`] says a VM went.
    fn zone(&self, wait: bool) -> ZoneRead;
    /// Cheap: whether a VM of `zone` has ended since it was read.
    fn gone(&self, zone: &Zone) -> bool;
}

/// Where a forwarded query came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Udp(SocketAddrV4),
    Tcp(u64),
}

/// A query waiting for its upstream.
#[derive(Debug)]
struct Forward {
    socket: UdpSocket,
    query: Vec<u8>,
    sent: u16,
    id: u16,
    client: Ipv4Addr,
    origin: Origin,
    /// When the current upstream has had its share of the time.
    deadline: Instant,
    /// The upstreams left to try, and when the VM gets SERVFAIL at the latest.
    next: Vec<SocketAddrV4>,
    until: Instant,
}

impl Forward {
    /// The current upstream's share of the time left: the rest, split evenly
    /// between it and the ones after it.
    fn share(now: Instant, until: Instant, left: usize) -> Instant {
        now + until.saturating_duration_since(now) / (left as u32 + 1)
    }

    /// Move on to the next upstream that takes the query; false when none is
    /// left, or no time.
    fn retry(&mut self, now: Instant) -> bool {
        while !self.next.is_empty() && now < self.until {
            let upstream = self.next.remove(0);
            if let Ok((socket, query, sent)) = forward(upstream, &self.query) {
                self.socket = socket;
                self.query = query;
                self.sent = sent;
                self.deadline = Forward::share(now, self.until, self.next.len());
                return true;
            }
        }
        false
    }
}

/// A VM's TCP connection: a query being read, or waiting for its forward.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    client: Ipv4Addr,
    buf: Vec<u8>,
    deadline: Instant,
    waiting: bool,
}

/// How often the resolver looks whether the VMs it serves still run.
const CHECK: Duration = Duration::from_secs(1);
/// How soon it asks again for a store that was busy.
const RETRY: Duration = Duration::from_millis(10);
/// Queries held, from addresses of the subnet it doesn't know yet, while a
/// read of the store is due (a VM that has just started asks at once).
const HELD: usize = 64;

/// The resolver's loop, on `udp` and `tcp` (bound to the bridge's address),
/// until SIGTERM (`signals` reports it) or until no bridged VM runs. SIGHUP
/// reads the zone again.
pub fn serve(
    udp: &UdpSocket,
    tcp: &TcpListener,
    signals: &nix::sys::signalfd::SignalFd,
    source: &dyn ZoneSource,
) -> std::io::Result<()> {
    use nix::sys::signal::Signal;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let zone = loop {
        match source.zone(true) {
            ZoneRead::Zone(z) => break z,
            ZoneRead::Done => return Ok(()),
            ZoneRead::Busy => std::thread::sleep(RETRY),
        }
    };
    let mut resolver = Resolver { zone };
    // When the store is to be read again, and the queries held until then.
    let mut reload_at: Option<Instant> = None;
    let mut held: Vec<(SocketAddrV4, Vec<u8>)> = Vec::new();
    let mut forwards: Vec<Forward> = Vec::new();
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut next_conn = 0u64;
    let mut next_check = Instant::now() + CHECK;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        let wake = forwards
            .iter()
            .map(|f| f.deadline)
            .chain(conns.values().map(|c| c.deadline))
            .chain(reload_at)
            .chain([next_check])
            .min()
            .unwrap_or(next_check);
        let d = wake.saturating_duration_since(now);
        let timeout = rustix::event::Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        };
        let conn_ids: Vec<u64> = conns.keys().copied().collect();
        let ready: Vec<bool> = {
            let mut fds = vec![
                PollFd::new(signals, PollFlags::IN),
                PollFd::new(udp, PollFlags::IN),
                PollFd::new(tcp, PollFlags::IN),
            ];
            fds.extend(
                forwards
                    .iter()
                    .map(|f| PollFd::new(&f.socket, PollFlags::IN)),
            );
            fds.extend(
                conn_ids
                    .iter()
                    .map(|id| PollFd::new(&conns[id].stream, PollFlags::IN)),
            );
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            fds.iter().map(|f| !f.revents().is_empty()).collect()
        };
        if ready[0] {
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGHUP) => {
                        reload_at.get_or_insert_with(Instant::now);
                    }
                    _ => return Ok(()),
                }
            }
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + CHECK;
            if source.gone(&resolver.zone) {
                reload_at.get_or_insert_with(Instant::now);
            }
        }
        if reload_at.is_some_and(|at| at <= Instant::now()) {
            match source.zone(false) {
                ZoneRead::Zone(z) => {
                    resolver.zone = z;
                    reload_at = None;
                    for (from, query) in std::mem::take(&mut held) {
                        let action = resolver.handle(*from.ip(), &query);
                        dispatch(
                            action,
                            *from.ip(),
                            Origin::Udp(from),
                            udp,
                            &mut conns,
                            &mut forwards,
                        );
                    }
                }
                ZoneRead::Done => return Ok(()),
                ZoneRead::Busy => reload_at = Some(Instant::now() + RETRY),
            }
        }
        // Answers from upstreams (before new queries: they free slots).
        let nf = forwards.len();
        let mut done = vec![false; nf];
        let now = Instant::now();
        for (i, f) in forwards.iter_mut().enumerate() {
            // None: wait on; Some(None): this upstream failed; Some(answer).
            let outcome = if ready[3 + i] {
                match f.socket.recv(&mut buf) {
                    Ok(n) => relay_answer(&f.query, f.sent, &buf[..n], f.id).map(Some),
                    // Refused (ICMP unreachable): on to the next at once.
                    Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => Some(None),
                    Err(_) => None,
                }
            } else {
                None
            };
            let outcome = match outcome {
                None if f.deadline <= now => Some(None),
                o => o,
            };
            match outcome {
                Some(Some(answer)) => {
                    respond(udp, &mut conns, f.origin, &answer);
                    done[i] = true;
                }
                Some(None) if !f.retry(now) => {
                    respond(udp, &mut conns, f.origin, &servfail(&f.query, f.id));
                    done[i] = true;
                }
                _ => {}
            }
        }
        let mut i = 0;
        forwards.retain(|_| {
            i += 1;
            !done[i - 1]
        });
        // TCP: reads, and the connections past their deadline.
        for (k, id) in conn_ids.iter().enumerate() {
            if !ready[3 + nf + k] {
                continue;
            }
            let Some(conn) = conns.get_mut(id) else {
                continue;
            };
            let mut chunk = [0u8; 2048];
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    conns.remove(id);
                    continue;
                }
                Ok(n) if !conn.waiting && conn.buf.len() + n <= TCP_MAX + 2 => {
                    conn.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // Too much, a second query before the first's answer, an error.
                _ => {
                    conns.remove(id);
                    continue;
                }
            }
            if conn.buf.len() < 2 {
                continue;
            }
            let len = usize::from(u16::from_be_bytes([conn.buf[0], conn.buf[1]]));
            if len > TCP_MAX {
                conns.remove(id);
                continue;
            }
            if conn.buf.len() < 2 + len {
                continue;
            }
            let query: Vec<u8> = conn.buf.drain(..2 + len).skip(2).collect();
            let Ok(SocketAddr::V4(peer)) = conn.stream.peer_addr() else {
                conns.remove(id);
                continue;
            };
            conn.waiting = true;
            let action = resolver.handle(*peer.ip(), &query);
            dispatch(
                action,
                *peer.ip(),
                Origin::Tcp(*id),
                udp,
                &mut conns,
                &mut forwards,
            );
        }
        let now = Instant::now();
        conns.retain(|_, c| c.deadline > now);
        if ready[2] {
            while let Ok((stream, peer)) = tcp.accept() {
                let client = match peer {
                    SocketAddr::V4(p) if resolver.zone.by_ip(*p.ip()).is_some() => *p.ip(),
                    _ => continue,
                };
                let mine = conns.values().filter(|c| c.client == client).count();
                if conns.len() >= MAX_TCP
                    || mine >= MAX_TCP_PER_VM
                    || stream.set_nonblocking(true).is_err()
                {
                    continue;
                }
                next_conn += 1;
                conns.insert(
                    next_conn,
                    Conn {
                        stream,
                        client,
                        buf: Vec::new(),
                        deadline: Instant::now() + TCP_DEADLINE,
                        waiting: false,
                    },
                );
            }
        }
        // UDP queries: a bounded batch per wake, so forwards and TCP get turns.
        if ready[1] {
            for _ in 0..64 {
                let (n, from) = match udp.recv_from(&mut buf[..UDP_MAX]) {
                    Ok((n, SocketAddr::V4(from))) => (n, from),
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let action = resolver.handle(*from.ip(), &buf[..n]);
                // From an address of the subnet it doesn't know, while the
                // store is to be read again: kept for after the read.
                if action == Action::Drop
                    && reload_at.is_some()
                    && held.len() < HELD
                    && resolver.zone.subnet.is_some_and(|s| s.contains(*from.ip()))
                {
                    held.push((from, buf[..n].to_vec()));
                    continue;
                }
                dispatch(
                    action,
                    *from.ip(),
                    Origin::Udp(from),
                    udp,
                    &mut conns,
                    &mut forwards,
                );
            }
        }
    }
}

/// Carry out `action` for a query from `client`.
fn dispatch(
    action: Action,
    client: Ipv4Addr,
    origin: Origin,
    udp: &UdpSocket,
    conns: &mut HashMap<u64, Conn>,
    forwards: &mut Vec<Forward>,
) {
    match action {
        Action::Drop => {
            if let Origin::Tcp(id) = origin {
                conns.remove(&id);
            }
        }
        Action::Reply(bytes) => respond(udp, conns, origin, &bytes),
        Action::Forward {
            mut upstreams,
            query,
            id,
        } => {
            let mine = forwards.iter().filter(|f| f.client == client).count();
            let room = forwards.len() < MAX_FORWARDS && mine < MAX_FORWARDS_PER_VM;
            let now = Instant::now();
            let until = now + UPSTREAM_TIMEOUT;
            while room && !upstreams.is_empty() {
                let upstream = upstreams.remove(0);
                if let Ok((socket, query, sent)) = forward(upstream, &query) {
                    forwards.push(Forward {
                        socket,
                        query,
                        sent,
                        id,
                        client,
                        origin,
                        deadline: Forward::share(now, until, upstreams.len()),
                        next: upstreams,
                        until,
                    });
                    return;
                }
            }
            respond(udp, conns, origin, &servfail(&query, id));
        }
    }
}

/// Send `query` to `upstream` from a socket of its own (a random port,
/// connected, so only the upstream's answers reach it), under a random id.
fn forward(upstream: SocketAddrV4, query: &[u8]) -> std::io::Result<(UdpSocket, Vec<u8>, u16)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(upstream)?;
    socket.set_nonblocking(true)?;
    let mut id = [0u8; 2];
    let _ = rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty());
    let mut out = query.to_vec();
    out[..2].copy_from_slice(&id);
    socket.send(&out)?;
    Ok((socket, out, u16::from_be_bytes(id)))
}

/// Send an answer back where its query came from.
fn respond(udp: &UdpSocket, conns: &mut HashMap<u64, Conn>, origin: Origin, bytes: &[u8]) {
    match origin {
        Origin::Udp(to) => {
            let _ = udp.send_to(bytes, to);
        }
        Origin::Tcp(id) => {
            let Some(conn) = conns.get_mut(&id) else {
                return;
            };
            let Ok(len) = u16::try_from(bytes.len()) else {
                conns.remove(&id);
                return;
            };
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(bytes);
            // A client that doesn't read its answer loses its connection.
            if conn.stream.write_all(&framed).is_err() {
                conns.remove(&id);
                return;
            }
            conn.waiting = false;
            conn.deadline = Instant::now() + TCP_DEADLINE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn vm(name: &str, ip: [u8; 4]) -> VmRules {
        VmRules {
            name: name.into(),
            link: String::new(),
            ip: Ipv4Addr::from(ip),
            nat: true,
            allow: vec![],
            deny: vec![],
            publish: vec![],
        }
    }

    fn resolver() -> Resolver {
        let mut denied = vm("denied", [10, 77, 0, 4]);
        denied.deny = vec!["192.0.2.0/24:53".parse().unwrap()];
        let mut isolated = vm("isolated", [10, 77, 0, 5]);
        isolated.nat = false;
        Resolver {
            zone: Zone {
                subnet: Some("10.77.0.0/24".parse().unwrap()),
                vms: vec![
                    vm("web1", [10, 77, 0, 2]),
                    vm("Db", [10, 77, 0, 3]),
                    denied,
                    isolated,
                ],
                upstreams: vec![Upstream {
                    addr: "192.0.2.53:53".parse().unwrap(),
                    local: false,
                }],
            },
        }
    }

    fn query(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn answer(action: Action) -> Message {
        match action {
            Action::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("not a reply: {other:?}"),
        }
    }

    const WEB1: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

    #[test]
    fn a_vm_name_is_answered_with_its_address_any_case() {
        let r = resolver();
        for name in ["db.", "DB", "Db."] {
            let m = answer(r.handle(WEB1, &query(name, RecordType::A)));
            assert_eq!(m.metadata.id, 0x1234);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(m.answers.len(), 1);
            assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 77, 0, 3))));
        }
        // Its own name too, and a name with a dot in it.
        let m = answer(r.handle(WEB1, &query("web1.", RecordType::A)));
        assert_eq!(m.answers[0].data, RData::A(A(WEB1)));
        let mut dotted = resolver();
        dotted.zone.vms.push(vm("web.2", [10, 77, 0, 9]));
        let m = answer(dotted.handle(WEB1, &query("web.2.", RecordType::A)));
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 77, 0, 9))));
        // No IPv6 address: no data, not NXDOMAIN.
        let m = answer(r.handle(WEB1, &query("db.", RecordType::AAAA)));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unknown_names_fail_at_once_and_addresses_reverse() {
        let r = resolver();
        let m = answer(r.handle(WEB1, &query("nosuchvm.", RecordType::A)));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = answer(r.handle(WEB1, &query("3.0.77.10.in-addr.arpa.", RecordType::PTR)));
        assert_eq!(
            m.answers[0].data,
            RData::PTR(PTR(Name::from_ascii("Db.").unwrap()))
        );
        let m = answer(r.handle(WEB1, &query("99.0.77.10.in-addr.arpa.", RecordType::PTR)));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn other_names_go_upstream_within_the_egress_policy() {
        let r = resolver();
        let q = query("deb.debian.org.", RecordType::A);
        assert_eq!(
            r.handle(WEB1, &q),
            Action::Forward {
                upstreams: vec!["192.0.2.53:53".parse().unwrap()],
                query: q.clone(),
                id: 0x1234
            }
        );
        for refused in [Ipv4Addr::new(10, 77, 0, 4), Ipv4Addr::new(10, 77, 0, 5)] {
            let m = answer(r.handle(refused, &q));
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{refused}");
            // VM names still resolve.
            let m = answer(r.handle(refused, &query("web1.", RecordType::A)));
            assert_eq!(m.answers.len(), 1);
        }
        // A host address upstream is reached without NAT.
        let mut local = resolver();
        local.zone.upstreams[0].local = true;
        assert!(matches!(
            local.handle(Ipv4Addr::new(10, 77, 0, 5), &q),
            Action::Forward { .. }
        ));
    }

    #[test]
    fn strangers_and_responses_are_dropped() {
        let r = resolver();
        let q = query("web1.", RecordType::A);
        assert_eq!(r.handle(Ipv4Addr::new(10, 77, 0, 99), &q), Action::Drop);
        assert_eq!(r.handle(Ipv4Addr::new(192, 0, 2, 1), &q), Action::Drop);
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert_eq!(r.handle(WEB1, &resp), Action::Drop);
        assert_eq!(r.handle(WEB1, &q[..5]), Action::Drop);
    }

    #[test]
    fn hostile_packets_get_at_most_what_they_sent() {
        let r = resolver();
        // A name whose first label points at itself: a compression loop.
        let mut looped = query("web1.", RecordType::A);
        looped.truncate(12);
        looped.extend([0xc0, 0x0c, 0, 1, 0, 1]);
        let m = answer(r.handle(WEB1, &looped));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        crate::testing::cases("dns packets", 3000, |rng| {
            let mut p = if rng.bool() {
                query("web1.", RecordType::A)
            } else {
                crate::testing::bytes(rng, 600, &[0, 0xc0, 0x0c, 0xff])
            };
            for _ in 0..rng.usize(0..4) {
                if !p.is_empty() {
                    let at = rng.usize(..p.len());
                    p[at] = rng.u8(..);
                }
            }
            p.truncate(rng.usize(..=p.len()));
            match r.handle(WEB1, &p) {
                Action::Reply(b) => {
                    // Answers to a VM name may carry one record; errors never
                    // more than the question back.
                    assert!(b.len() <= p.len() + 16, "{} for {}", b.len(), p.len());
                }
                Action::Forward { query, .. } => assert_eq!(query, p),
                Action::Drop => {}
            }
        });
    }

    #[test]
    fn only_the_upstreams_answer_to_the_question_is_relayed() {
        let q = query("deb.debian.org.", RecordType::A);
        let mut sent = q.clone();
        sent[..2].copy_from_slice(&0x9999u16.to_be_bytes());
        let mut a = Message::from_vec(&sent).unwrap();
        a.metadata.message_type = MessageType::Response;
        a.add_answer(Record::from_rdata(
            Name::from_ascii("deb.debian.org.").unwrap(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 80))),
        ));
        let bytes = a.to_vec().unwrap();
        let relayed = relay_answer(&sent, 0x9999, &bytes, 0x1234).unwrap();
        assert_eq!(Message::from_vec(&relayed).unwrap().metadata.id, 0x1234);
        assert_eq!(relay_answer(&sent, 0x9998, &bytes, 0x1234), None);
        let other = query("evil.example.", RecordType::A);
        assert_eq!(relay_answer(&other, 0x9999, &bytes, 0x1234), None);
        // A SERVFAIL for the forwarded query carries the VM's id, not the
        // one the upstream was sent.
        let m = Message::from_vec(&servfail(&sent, 0x1234)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, 0x1234);
    }

    /// A zone whose one VM is 127.0.0.1 (the test itself), with `upstream`,
    /// until `done` is set.
    struct Loopback {
        upstreams: Vec<SocketAddrV4>,
        done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl ZoneSource for Loopback {
        fn zone(&self, _wait: bool) -> ZoneRead {
            if self.done.load(std::sync::atomic::Ordering::SeqCst) {
                return ZoneRead::Done;
            }
            let mut me = vm("me", [127, 0, 0, 1]);
            me.nat = true;
            ZoneRead::Zone(Zone {
                subnet: Some("127.0.0.0/8".parse().unwrap()),
                vms: vec![me],
                upstreams: self
                    .upstreams
                    .iter()
                    .map(|&addr| Upstream { addr, local: true })
                    .collect(),
            })
        }
        fn gone(&self, _: &Zone) -> bool {
            self.done.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn rcode(answer: &[u8]) -> ResponseCode {
        Message::from_vec(answer).unwrap().metadata.response_code
    }

    #[test]
    fn the_loop_answers_over_udp_and_tcp_and_moves_past_a_refusing_upstream() {
        // The upstream: answers deb.debian.org, stays silent for the rest.
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let upstream_addr = match upstream.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = upstream.recv_from(&mut buf) {
                let Ok(mut m) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if m.queries[0].name().to_ascii() != "deb.debian.org." {
                    continue;
                }
                m.metadata.message_type = MessageType::Response;
                m.add_answer(Record::from_rdata(
                    m.queries[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 80))),
                ));
                let _ = upstream.send_to(&m.to_vec().unwrap(), peer);
            }
        });
        // A closed port: the kernel refuses what is sent there.
        let closed = {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            match s.local_addr().unwrap() {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => unreachable!(),
            }
        };
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(at).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = {
            let done = done.clone();
            std::thread::spawn(move || {
                let signals = nix::sys::signalfd::SignalFd::with_flags(
                    &nix::sys::signal::SigSet::empty(),
                    nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
                )
                .unwrap();
                serve(
                    &udp,
                    &tcp,
                    &signals,
                    &Loopback {
                        // The first refuses every query: the next answers.
                        upstreams: vec![closed, upstream_addr],
                        done,
                    },
                )
            })
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(at).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let ask = |name: &str| {
            client.send(&query(name, RecordType::A)).unwrap();
            let mut buf = [0u8; 1500];
            let n = client.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        };
        let a = ask("me.");
        assert_eq!(Message::from_vec(&a).unwrap().answers.len(), 1);
        // Past the upstream that refuses, to the one that answers.
        let a = ask("deb.debian.org.");
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.metadata.id, 0x1234, "the vm's id comes back");
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(192, 0, 2, 80))));
        // Refused by one upstream, unanswered by the other: SERVFAIL after
        // UPSTREAM_TIMEOUT, not silence.
        assert_eq!(rcode(&ask("silent.example.")), ResponseCode::ServFail);

        // TCP: a length-prefixed query, a length-prefixed answer.
        let mut stream = TcpStream::connect(at).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let q = query("me.", RecordType::A);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend(&q);
        stream.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(Message::from_vec(&answer).unwrap().answers.len(), 1);
        // A claimed length past the limit closes the connection.
        stream.write_all(&[0xff, 0xff, 0, 0]).unwrap();
        assert!(matches!(stream.read(&mut len), Ok(0) | Err(_)));

        done.store(true, std::sync::atomic::Ordering::SeqCst);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn nameservers_of_a_resolv_conf() {
        let text = "# x\nnameserver 192.0.2.1\nnameserver ::1\nsearch example\nnameserver 127.0.0.53 # stub\n";
        assert_eq!(
            nameservers(text),
            vec![
                "192.0.2.1:53".parse::<SocketAddrV4>().unwrap(),
                "127.0.0.53:53".parse().unwrap()
            ]
        );
    }
}

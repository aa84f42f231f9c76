//! The escape suite, new surfaces (docs/security.md): what a hostile VM tries
//! against the parts fvm gained with services, the resolver, the web console and
//! the OCI runtime.
//!
//! - The store's resolver (`fvm-dns`): one VM that opens every TCP connection
//!   the resolver takes, and keeps each alive with a query now and then, must
//!   not leave the other VMs without DNS over TCP.
//! - The resolver on the host's loopback: a VM without NAT can't reach the
//!   host's loopback stub (systemd-resolved's 127.0.0.53) itself, so the
//!   resolver must not forward for it there (the stub would carry its queries,
//!   and what they encode, out to the internet).
//! - The web console (`fvm ui`): a file name the VM chose, shown in the
//!   changes tree, has its invisible and direction-changing characters escaped
//!   as `fvm diff` escapes them, so it can't pass for another name.
//! - The service starter (`fvm-starter`): root in a VM can stop it (SIGSTOP);
//!   the init, waiting for it to start a service, must not hang with it, or the
//!   VM's `timeout` would never stop the VM.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{COMMAND_TIMEOUT, FVM, TestStore, needs_root};

use fvm_engine::net::dns::{self, Action, Resolver, Upstream, Zone, ZoneRead, ZoneSource};
use fvm_engine::net::nft::VmRules;

/// Two VMs on loopback: `hog` (127.0.0.1) and `other` (127.0.0.2), no
/// upstreams, until `done` is set.
struct TwoVms {
    done: Arc<AtomicBool>,
}

impl ZoneSource for TwoVms {
    fn zone(&self, _wait: bool) -> ZoneRead {
        if self.done.load(Ordering::SeqCst) {
            return ZoneRead::Done;
        }
        let vm = |name: &str, ip: Ipv4Addr| VmRules {
            name: name.into(),
            link: String::new(),
            ip,
            nat: true,
            allow: vec![],
            deny: vec![],
            publish: vec![],
        };
        ZoneRead::Zone(Zone {
            subnet: Some("127.0.0.0/8".parse().unwrap()),
            vms: vec![
                vm("hog", Ipv4Addr::new(127, 0, 0, 1)),
                vm("other", Ipv4Addr::new(127, 0, 0, 2)),
            ],
            upstreams: vec![],
        })
    }

    fn gone(&self, _: &Zone) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

/// A query for `name`'s A record (id 0x1234, recursion desired).
fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The same, length-prefixed for TCP.
fn tcp_query(name: &str) -> Vec<u8> {
    let q = query(name);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    framed
}

/// Ask `name` on `stream`: whether an answer came (a dropped connection gives
/// none).
fn asked(stream: &mut TcpStream, name: &str) -> bool {
    if stream.write_all(&tcp_query(name)).is_err() {
        return false;
    }
    let mut len = [0u8; 2];
    if stream.read_exact(&mut len).is_err() {
        return false;
    }
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).is_ok()
}

/// A TCP connection to `to` from `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddrV4) -> TcpStream {
    let fd: OwnedFd = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    rustix::net::bind(&fd, &SocketAddrV4::new(from, 0)).unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn one_vm_cannot_take_every_tcp_connection_of_the_resolver() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = match udp.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!(),
    };
    let tcp = TcpListener::bind(at).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let server = {
        let done = done.clone();
        std::thread::spawn(move || {
            let signals = nix::sys::signalfd::SignalFd::with_flags(
                &nix::sys::signal::SigSet::empty(),
                nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
            )
            .unwrap();
            dns::serve(&udp, &tcp, &signals, &TwoVms { done })
        })
    };
    // The hog opens as many connections as the resolver takes in all, and
    // asks on each (an answer resets a connection's deadline: it could go on).
    let hog = Ipv4Addr::new(127, 0, 0, 1);
    let mut held: Vec<TcpStream> = (0..dns::MAX_TCP).map(|_| connect_from(hog, at)).collect();
    let answered = held
        .iter_mut()
        .map(|s| asked(s, "other"))
        .filter(|&a| a)
        .count();
    // Another VM still gets its answer over TCP.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), at);
    let ok = asked(&mut other, "hog");
    done.store(true, Ordering::SeqCst);
    drop(held);
    drop(other);
    server.join().unwrap().unwrap();
    assert!(
        ok,
        "another vm got no answer over tcp while one vm held {answered} connections"
    );
    assert!(
        answered <= dns::MAX_TCP_PER_VM,
        "one vm holds {answered} of the resolver's connections"
    );
}

#[test]
fn a_vm_without_nat_gets_no_answers_from_the_hosts_loopback_stub() {
    let mut offline = VmRules {
        name: "offline".into(),
        link: String::new(),
        ip: Ipv4Addr::new(10, 77, 0, 5),
        nat: false,
        allow: vec![],
        deny: vec![],
        publish: vec![],
    };
    let resolver = |vm: &VmRules| Resolver {
        zone: Zone {
            subnet: Some("10.77.0.0/24".parse().unwrap()),
            vms: vec![vm.clone()],
            upstreams: vec![Upstream {
                addr: "127.0.0.53:53".parse().unwrap(),
                local: true,
            }],
        },
    };
    // A query for exfiltrated-secret.example.: the stub would resolve it on the
    // internet.
    let q = query("exfiltrated-secret.example");
    match resolver(&offline).handle(offline.ip, &q) {
        // REFUSED (rcode 5), as for an upstream its policy denies.
        Action::Reply(r) => assert_eq!(r[3] & 0x0f, 5, "{r:?}"),
        other => {
            panic!("a vm without nat had its query forwarded to the host's loopback: {other:?}")
        }
    }
    // With NAT it reaches the internet anyway: the stub serves it.
    offline.nat = true;
    assert!(matches!(
        resolver(&offline).handle(offline.ip, &q),
        Action::Forward { .. }
    ));
}

/// Every process of the VM named `fvm-starter` gets SIGSTOP, then the service
/// fails (so it is restarted: through the stopped starter).
const STOP_THE_STARTER: &str = "stopper=for p in /proc/[0-9]*; do \
    [ \"$(cat $p/comm 2>/dev/null)\" = fvm-starter ] && kill -STOP ${p#/proc/}; done; exit 1";

#[test]
fn a_stopped_service_starter_does_not_keep_the_vm_past_its_timeout() {
    if !needs_root("a_stopped_service_starter_does_not_keep_the_vm_past_its_timeout") {
        return;
    }
    let store = TestStore::new("esc-starter");
    store.create_with("starter1", &["--timeout", "4s"]);
    store
        .fvm(&[
            "config",
            "starter1",
            "--service",
            STOP_THE_STARTER,
            "--service",
            "stopper.restart=always",
        ])
        .ok();
    store.start("starter1");
    // No lower bound: only that the timeout still stops the VM (without the
    // fix its init waits for the stopped starter for ever).
    let start = Instant::now();
    while store.status("starter1") != "stopped" {
        assert!(
            start.elapsed() < COMMAND_TIMEOUT,
            "a vm with a 4 s timeout still runs after {COMMAND_TIMEOUT:?}: its init waits for the stopped service starter"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    store.assert_clean();
}

/// One HTTP/1.1 GET (`Connection: close`) with the console's token; the body.
fn console_get(host: &str, token: &str, path: &str) -> String {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_console_escapes_a_vm_file_name_that_would_read_as_another() {
    if !needs_root("the_console_escapes_a_vm_file_name_that_would_read_as_another") {
        return;
    }
    let store = TestStore::new("esc-ui");
    store.create("ui1");
    // "fvm-esc-<RIGHT-TO-LEFT OVERRIDE>txt.sh" reads as "fvm-esc-hs.txt".
    store
        .fvm(&[
            "run",
            "ui1",
            "--",
            "sh",
            "-c",
            "touch \"/etc/fvm-esc-$(printf '\\342\\200\\256')txt.sh\"",
        ])
        .ok();
    let backend =
        fvm_ui::real::RealBackend::open(&store.root, std::path::PathBuf::from(FVM)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = fvm_ui::Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        socket: None,
        allow_remote: false,
        read_only: true,
        allow_uids: Vec::new(),
        allow_gids: Vec::new(),
        audit: None,
    };
    std::thread::spawn(move || {
        let _ = fvm_ui::run(opts, Arc::new(backend), move |url| {
            let _ = tx.send(url.to_owned());
        });
    });
    let url = rx.recv_timeout(COMMAND_TIMEOUT).unwrap();
    let (host, token) = url
        .strip_prefix("http://")
        .and_then(|u| u.split_once("/#token="))
        .unwrap();
    let page = console_get(host, token, "/vm/ui1/changes");
    // Shown (as element text) escaped; the attributes that name it for a
    // request keep it as it is.
    assert!(
        !page.contains(">fvm-esc-\u{202e}"),
        "the changes tree shows a vm's file name with its direction override as it is:\n{page}"
    );
    assert!(
        page.contains("fvm-esc-\\u{202e}txt.sh"),
        "the changes tree lacks the escaped name:\n{page}"
    );
}

//! Helpers for the network tests (docs/network.md): a store with a bridge and a /24 of
//! its own ([`Net`]), an "outside world" network namespace the test makes
//! ([`Outside`]), TCP and HTTP probes from the host and from inside a VM, and the
//! host-side checks (links, addresses, routes, nftables).
//!
//! Rules every helper keeps: traffic goes only to loopback and to VMs and
//! namespaces the test made; every host-side object carries "fvm" in its name; each
//! fixture picks its own bridge name (`fvmt` + 6 hex digits) and its own /24 in
//! 10.200.0.0/13, not covered by any host address or route, so tests can run in
//! parallel; and each removes what it made on drop, even after a failure (the VMs
//! first, through fvm, then as a last resort the bridge, the store's nft tables and
//! any namespace or link the test made).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Out, Spawned, TestStore, WAIT, needs_root, needs_tool, spawn_host, try_run};

/// How long one probe waits to connect and for an answer. A dropped packet shows
/// as a timeout; this only bounds how long the test waits for it.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The checks a network test makes first: root, `ip`, python3, and any other tool.
pub fn ready(test: &str, tools: &[&str]) -> bool {
    needs_root(test)
        && needs_tool(test, "ip")
        && needs_tool(test, "python3")
        && tools.iter().all(|t| needs_tool(test, t))
}

pub use crate::common::python;

/// `n` random lowercase hex digits.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex[..n].to_owned()
}

/// A random number in `lo..hi`.
fn random_in(lo: u32, hi: u32) -> u32 {
    let n = u32::from_str_radix(&random_hex(8), 16).expect("hex");
    lo + n % (hi - lo)
}

/// Run a host command (not fvm) with the usual deadline; never panics.
pub fn host(argv: &[&str]) -> Out {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    try_run(cmd, None, Duration::from_secs(60)).unwrap_or_else(|e| Out {
        code: -1,
        stdout: String::new(),
        stderr: e,
        what: format!("{argv:?}"),
    })
}

// ---------------------------------------------------------------------------
// subnets

/// /24s claimed by the fixtures of this test process (so that two tests running
/// at the same time never pick the same one before either has made it).
static CLAIMED: Mutex<BTreeSet<(u8, u8)>> = Mutex::new(BTreeSet::new());

/// A /24 in 10.200.0.0/13 (`10.B.C.0/24`, B in 200..=207) that this test claimed
/// and that no host address or route covered when it was picked. The claim is
/// released on drop.
#[derive(Debug)]
pub struct Subnet {
    pub b: u8,
    pub c: u8,
}

impl Subnet {
    #[track_caller]
    pub fn claim() -> Subnet {
        for _ in 0..500 {
            let b = u8::try_from(random_in(200, 208)).expect("octet");
            let c = u8::try_from(random_in(0, 256)).expect("octet");
            let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
            if claimed.contains(&(b, c)) {
                continue;
            }
            let net = u32::from(Ipv4Addr::new(10, b, c, 0));
            if host_prefixes()
                .iter()
                .any(|&(p, len)| overlaps(p, len, net, 24))
            {
                continue;
            }
            claimed.insert((b, c));
            return Subnet { b, c };
        }
        panic!("no free /24 in 10.200.0.0/13: host addresses or routes cover them all");
    }

    /// `10.B.C.0/24`.
    pub fn cidr(&self) -> String {
        format!("10.{}.{}.0/24", self.b, self.c)
    }

    /// `10.B.C.<host>`.
    pub fn addr(&self, host: u8) -> String {
        format!("10.{}.{}.{host}", self.b, self.c)
    }

    /// The bridge's address, the VMs' gateway: the first host address.
    pub fn gateway(&self) -> String {
        self.addr(1)
    }

    /// `10.B.C.`: what every address of the subnet starts with.
    pub fn prefix(&self) -> String {
        format!("10.{}.{}.", self.b, self.c)
    }

    pub fn contains(&self, ip: &str) -> bool {
        ip.strip_prefix(&self.prefix())
            .and_then(|h| h.parse::<u8>().ok())
            .is_some()
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        CLAIMED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(self.b, self.c));
    }
}

/// Every IPv4 address or prefix in the host's addresses and routes (all tables).
fn host_prefixes() -> Vec<(u32, u8)> {
    let mut text = host(&["ip", "-4", "-o", "addr"]).stdout;
    text.push_str(&host(&["ip", "-4", "route", "show", "table", "all"]).stdout);
    text.split_whitespace()
        .filter_map(|tok| {
            let (addr, len) = tok.split_once('/').unwrap_or((tok, "32"));
            let addr: Ipv4Addr = addr.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            // A default route covers everything and says nothing about local use.
            (1..=32).contains(&len).then_some((u32::from(addr), len))
        })
        .collect()
}

fn overlaps(a: u32, alen: u8, b: u32, blen: u8) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == b & mask
}

/// A random free host TCP port for `--publish`, below the ephemeral range (so an
/// outgoing connection can't take it meanwhile); checked by binding it.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let port = u16::try_from(random_in(20_000, 32_000)).expect("port");
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in 20000..32000");
}

/// A bridge name (`fvmt` + 6 hex digits) that no host link has.
fn free_bridge_name() -> String {
    loop {
        let name = format!("fvmt{}", random_hex(6));
        if !link_exists(&name) {
            return name;
        }
    }
}

// ---------------------------------------------------------------------------
// host-side views

/// A host network link: its name and the bridge it is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub master: Option<String>,
    pub line: String,
}

/// The links `ip -o link` shows in the host's network namespace.
pub fn links() -> Vec<Link> {
    let out = host(&["ip", "-o", "link"]);
    assert_eq!(out.code, 0, "ip -o link:\n{out}");
    parse_links(&out.stdout)
}

/// Parse `ip -o link` output (`7: name@if6: <…> … master br0 …`).
pub fn parse_links(text: &str) -> Vec<Link> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.nth(1)?.trim_end_matches(':');
            let name = name.split('@').next()?.to_owned();
            let words: Vec<&str> = line.split_whitespace().collect();
            let master = words
                .windows(2)
                .find(|w| w[0] == "master")
                .map(|w| w[1].to_owned());
            Some(Link {
                name,
                master,
                line: line.to_owned(),
            })
        })
        .collect()
}

pub fn link_exists(name: &str) -> bool {
    host(&["ip", "link", "show", "dev", name]).code == 0
}

/// Whether `text` mentions `word` as a whole (an address or a link name): the
/// characters around it are not letters, digits, `_` or `.` (so 10.1.2.3 is not
/// found in 10.1.2.30).
pub fn mentions(text: &str, word: &str) -> bool {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

/// Whether `text` mentions an address starting with `prefix` (`10.B.C.`).
fn mentions_prefix(text: &str, prefix: &str) -> bool {
    text.match_indices(prefix).any(|(i, _)| {
        !text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
    })
}

/// The host's whole nftables ruleset.
pub fn ruleset() -> String {
    let out = host(&["nft", "list", "ruleset"]);
    assert_eq!(out.code, 0, "nft list ruleset:\n{out}");
    out.stdout
}

/// `nft list table FAMILY NAME`, or None when there is no such table.
pub fn nft_table(family: &str, name: &str) -> Option<String> {
    let out = host(&["nft", "list", "table", family, name]);
    (out.code == 0).then_some(out.stdout)
}

/// The lines of an nft table listing that are rules, set elements or a dropping
/// policy: what makes a table more than an empty shell.
pub fn nft_content(table: &str) -> Vec<String> {
    table
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let shell = l.starts_with("table ")
                || l.starts_with("chain ")
                || l.starts_with("set ")
                || l.starts_with("map ")
                || l.starts_with("flags ")
                || l.starts_with('}')
                || (l.starts_with("type ") && !l.contains("policy drop"));
            !shell
        })
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// probes

/// One TCP probe: connect, or `GET /` over HTTP/1.0, optionally from a given
/// source address.
#[derive(Debug, Clone)]
pub struct Probe {
    verb: &'static str,
    host: String,
    port: u16,
    src: Option<String>,
}

impl Probe {
    /// `GET /` from `host:port`; the answer is the body, trimmed.
    pub fn get(host: &str, port: u16) -> Probe {
        Probe {
            verb: "get",
            host: host.to_owned(),
            port,
            src: None,
        }
    }

    /// A TCP connect to `host:port` (nothing sent); the answer is "connected".
    pub fn connect(host: &str, port: u16) -> Probe {
        Probe {
            verb: "connect",
            ..Probe::get(host, port)
        }
    }

    /// The same from source address `src` (bound before connecting).
    pub fn from(self, src: &str) -> Probe {
        Probe {
            src: Some(src.to_owned()),
            ..self
        }
    }

    fn arg(&self) -> String {
        format!(
            "{},{},{},{}",
            self.verb,
            self.host,
            self.port,
            self.src.as_deref().unwrap_or_default()
        )
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.verb, self.host, self.port)?;
        if let Some(src) = &self.src {
            write!(f, " from {src}")?;
        }
        Ok(())
    }
}

/// A small HTTP server: `python3 -c SERVER_PY BIND PORT BODY` answers every
/// `GET` with BODY, or with the client's address when BODY is `=client`. Not
/// `python3 -m http.server`: that looks its bind address up in DNS at start, which
/// would send queries to the host's name server (an address no test made).
pub const SERVER_PY: &str = r#"
import http.server, socketserver, sys
bind, port, body = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        text = self.client_address[0] if body == "=client" else body
        data = (text + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S((bind, port), H).serve_forever()
"#;

/// Start [`SERVER_PY`] in the background of the running VM `vm` (it keeps the VM
/// running), on `bind:port`, answering `body`.
#[track_caller]
pub fn start_server_in(store: &TestStore, vm: &str, bind: &str, port: u16, body: &str) {
    let port = port.to_string();
    store
        .fvm(&[
            "run",
            vm,
            "--",
            "sh",
            "-c",
            r#"nohup "$0" -c "$1" "$2" "$3" "$4" >/dev/null 2>&1 &"#,
            python(),
            SERVER_PY,
            bind,
            &port,
            body,
        ])
        .ok();
}

/// The probes, in python3, run inside a VM: one line per argument, `OK <answer>`
/// or `ERR <why>`, in the order given. Exit status 0 unless python itself fails.
/// The probes run at the same time: a batch with dropped destinations takes one
/// PROBE_TIMEOUT, not one per drop.
const PROBE_PY: &str = r#"
import socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(arg):
    verb, host, port, src = arg.split(",")
    try:
        s = socket.create_connection(
            (host, int(port)), timeout=TIMEOUT, source_address=(src, 0) if src else None
        )
        if verb == "get":
            s.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = head.split(b"\r\n")[0].decode(errors="replace")
            if status.split()[1:2] != ["200"]:
                raise RuntimeError("answer: " + status)
            answer = "OK " + " ".join(body.decode(errors="replace").split())
        else:
            answer = "OK connected"
        s.close()
        return answer
    except Exception as e:
        return "ERR " + type(e).__name__ + " " + " ".join(str(e).split())
with ThreadPoolExecutor(max(1, len(sys.argv) - 1)) as pool:
    for line in pool.map(probe, sys.argv[1:]):
        print(line)
"#;

/// Run the probes inside the VM `vm` (a command in it; a stopped VM is started for
/// it). Each answer is `Ok(answer)` or `Err(why)`.
#[track_caller]
pub fn probe_in(store: &TestStore, vm: &str, probes: &[Probe]) -> Vec<Result<String, String>> {
    let script = PROBE_PY.replace("TIMEOUT", &PROBE_TIMEOUT.as_secs().to_string());
    let args: Vec<String> = probes.iter().map(Probe::arg).collect();
    let mut argv = vec!["run", vm, "--", python(), "-c", &script];
    argv.extend(args.iter().map(String::as_str));
    let out = store.fvm(&argv);
    assert_eq!(out.code, 0, "the probes did not run in vm {vm}:\n{out}");
    let answers: Vec<Result<String, String>> = out
        .stdout
        .lines()
        .map(|l| match l.split_once(' ') {
            Some(("OK", rest)) => Ok(rest.to_owned()),
            Some((_, rest)) => Err(rest.to_owned()),
            None => Err(l.to_owned()),
        })
        .collect();
    assert_eq!(answers.len(), probes.len(), "one answer per probe:\n{out}");
    answers
}

/// `GET /` from `ip:port` on the host; the body, trimmed.
pub fn host_get(ip: &str, port: u16) -> Result<String, String> {
    let mut s = host_stream(ip, port)?;
    let request = format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send to {ip}:{port}: {e}"))?;
    let mut data = Vec::new();
    s.read_to_end(&mut data)
        .map_err(|e| format!("read from {ip}:{port}: {e}"))?;
    let text = String::from_utf8_lossy(&data);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{ip}:{port}: not an HTTP answer: {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{ip}:{port}: answer {status:?}"));
    }
    Ok(body.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A TCP connect from the host to `ip:port`.
pub fn host_connect(ip: &str, port: u16) -> Result<(), String> {
    host_stream(ip, port).map(drop)
}

fn host_stream(ip: &str, port: u16) -> Result<TcpStream, String> {
    let addr: SocketAddr = format!("{ip}:{port}")
        .parse()
        .map_err(|e| format!("{ip}:{port}: {e}"))?;
    let s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(s)
}

/// Poll `attempt` until it succeeds; panic with `what` and its last error after
/// [`WAIT`].
#[track_caller]
pub fn wait_for(what: &str, mut attempt: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(()) => return,
            Err(e) if start.elapsed() > WAIT => panic!("timed out waiting until {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------------------
// the store with its own bridge and subnet

/// A test's store, set to its own bridge (`fvmt` + 6 hex digits) and /24 right
/// after it is made. On drop: every VM is deleted through fvm, then, as a last
/// resort, whatever of the store's network is still on the host (the links on its
/// bridges, the bridges, the store's nft tables) is removed.
#[derive(Debug)]
pub struct Net {
    pub store: TestStore,
    pub subnet: Subnet,
    /// Every bridge name the store was given, the current one last.
    bridges: Mutex<Vec<String>>,
}

impl Net {
    #[track_caller]
    pub fn new(tag: &str) -> Net {
        let net = Net {
            store: TestStore::new(tag),
            subnet: Subnet::claim(),
            bridges: Mutex::new(vec![free_bridge_name()]),
        };
        net.fvm(&[
            "network",
            "--bridge",
            &net.bridge(),
            "--subnet",
            &net.subnet.cidr(),
        ])
        .ok();
        net
    }

    /// The store's current bridge name.
    pub fn bridge(&self) -> String {
        self.bridge_names().last().cloned().expect("a bridge name")
    }

    fn bridge_names(&self) -> Vec<String> {
        self.bridges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new unused bridge name, remembered for the cleanup (whether or not fvm
    /// takes it).
    pub fn fresh_bridge_name(&self) -> String {
        let name = free_bridge_name();
        self.bridges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        name
    }

    pub fn fvm(&self, args: &[&str]) -> Out {
        self.store.fvm(args)
    }

    /// `fvm create NAME FLAGS…`, asserting success; notes the VM's cgroups (and
    /// the store's id) for the cleanup checks.
    #[track_caller]
    pub fn create(&self, name: &str, flags: &[&str]) {
        let mut args = vec!["create", name];
        args.extend_from_slice(flags);
        let out = self.fvm(&args).ok();
        assert_eq!(out.out(), name, "{out}");
        self.store.inspect(name);
    }

    /// `fvm create NAME --net bridge FLAGS…`; returns the VM's address.
    #[track_caller]
    pub fn bridged(&self, name: &str, flags: &[&str]) -> String {
        let mut all = vec!["--net", "bridge"];
        all.extend_from_slice(flags);
        self.create(name, &all);
        self.ip(name)
    }

    #[track_caller]
    pub fn inspect(&self, name: &str) -> Value {
        self.store.inspect(name)
    }

    /// The VM's address (no prefix) as `inspect` shows it.
    #[track_caller]
    pub fn ip(&self, name: &str) -> String {
        let v = self.inspect(name);
        let ip = v["ip"]
            .as_str()
            .unwrap_or_else(|| panic!("inspect {name} shows no ip:\n{v:#}"))
            .to_owned();
        assert!(
            self.subnet.contains(&ip),
            "vm {name} has {ip}, outside the store's subnet {}",
            self.subnet.cidr()
        );
        ip
    }

    /// The host-side link of a running bridged VM, from `inspect`.
    #[track_caller]
    pub fn link(&self, name: &str) -> String {
        let v = self.inspect(name);
        let link = v["network"]["link"]
            .as_str()
            .unwrap_or_else(|| panic!("inspect {name} shows no network.link:\n{v:#}"))
            .to_owned();
        assert!(
            link.starts_with("fvm") && link.len() <= 15,
            "vm {name}: host-side link {link:?} is not fvm + hex digits, at most 15 characters"
        );
        link
    }

    /// The store's nft tables (`inet` and `bridge` families) that exist.
    pub fn tables(&self) -> Vec<(String, String)> {
        let Some(id) = self.store.id() else {
            return Vec::new();
        };
        ["inet", "bridge"]
            .iter()
            .filter_map(|family| {
                let name = format!("fvm-{id}");
                nft_table(family, &name).map(|text| (format!("{family} {name}"), text))
            })
            .collect()
    }

    /// Start an HTTP server on port 80 of the running VM `name` that answers with
    /// the VM's name, and wait until the host gets that from the VM's address.
    /// Returns the address.
    #[track_caller]
    pub fn serve(&self, name: &str) -> String {
        let ip = self.ip(name);
        start_server_in(&self.store, name, "0.0.0.0", 80, name);
        wait_for(
            &format!("vm {name} serves its page at {ip}:80"),
            || match host_get(&ip, 80)? {
                body if body == name => Ok(()),
                body => Err(format!("{ip}:80 answered {body:?}")),
            },
        );
        ip
    }

    /// Run probes inside the VM `vm`.
    #[track_caller]
    pub fn probe(&self, vm: &str, probes: &[Probe]) -> Vec<Result<String, String>> {
        probe_in(&self.store, vm, probes)
    }

    /// One probe inside the VM `vm`.
    #[track_caller]
    pub fn probe1(&self, vm: &str, probe: Probe) -> Result<String, String> {
        self.probe(vm, &[probe]).remove(0)
    }

    /// `ip -4 -o addr` and `ip -4 route show table all` lines that mention an
    /// address of the store's subnet and are not on one of its bridges.
    pub fn subnet_off_bridge(&self) -> Vec<String> {
        let bridges = self.bridge_names();
        let prefix = self.subnet.prefix();
        let on_bridge = |dev: Option<&str>| dev.is_some_and(|d| bridges.iter().any(|b| b == d));
        let mut stray = Vec::new();
        for line in host(&["ip", "-4", "-o", "addr"]).stdout.lines() {
            let dev = line.split_whitespace().nth(1);
            if mentions_prefix(line, &prefix) && !on_bridge(dev) {
                stray.push(format!("address: {line}"));
            }
        }
        for line in host(&["ip", "-4", "route", "show", "table", "all"])
            .stdout
            .lines()
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let dev = words.windows(2).find(|w| w[0] == "dev").map(|w| w[1]);
            if mentions_prefix(line, &prefix) && !on_bridge(dev) {
                stray.push(format!("route: {line}"));
            }
        }
        stray
    }

    /// Assert that nothing of a VM that stopped (or crashed, or was deleted) is
    /// left on the host: its link `link` is gone (the kernel tears a namespace
    /// down in the background, hence the wait), no nft rule mentions the link or
    /// its address `ip`, and no address or route of the subnet is on anything but
    /// the bridge.
    #[track_caller]
    pub fn assert_vm_gone(&self, what: &str, link: &str, ip: &str) {
        wait_for(
            &format!("{what}: the link {link} is gone"),
            || match links().into_iter().find(|l| l.name == link) {
                Some(l) => Err(format!("still there: {}", l.line)),
                None => Ok(()),
            },
        );
        // Rules of a VM that crashed are rebuilt away by the store's watcher as
        // soon as it sees the init go, or by the next command on the VM.
        wait_for(
            &format!("{what}: no nft rule mentions {link} or {ip}"),
            || {
                let rules = ruleset();
                if mentions(&rules, link) || mentions(&rules, ip) {
                    Err(rules)
                } else {
                    Ok(())
                }
            },
        );
        let rules = ruleset();
        assert!(
            !mentions(&rules, link),
            "{what}: nft rules still mention the vm's link {link}:\n{rules}"
        );
        assert!(
            !mentions(&rules, ip),
            "{what}: nft rules still mention the vm's address {ip}:\n{rules}"
        );
        let stray = self.subnet_off_bridge();
        assert!(
            stray.is_empty(),
            "{what}: the subnet {} is on more than the bridge:\n{}",
            self.subnet.cidr(),
            stray.join("\n")
        );
    }

    /// Delete every VM and assert that nothing of the store is left on the host:
    /// the store's own checks (cgroups, processes, mounts, files), and no bridge
    /// of it, no link on one, no address or route of its subnet, and no nft table
    /// of the store with anything in it.
    #[track_caller]
    pub fn assert_clean(&self) {
        self.store.assert_clean();
        for bridge in self.bridge_names() {
            let attached: Vec<String> = links()
                .into_iter()
                .filter(|l| l.master.as_deref() == Some(bridge.as_str()))
                .map(|l| l.line)
                .collect();
            assert!(
                attached.is_empty(),
                "links left on bridge {bridge}:\n{}",
                attached.join("\n")
            );
            assert!(
                !link_exists(&bridge),
                "the bridge {bridge} is left after its store's last vm was deleted"
            );
        }
        let prefix = self.subnet.prefix();
        let mut left: Vec<String> = host(&["ip", "-4", "-o", "addr"])
            .stdout
            .lines()
            .chain(
                host(&["ip", "-4", "route", "show", "table", "all"])
                    .stdout
                    .lines(),
            )
            .filter(|l| mentions_prefix(l, &prefix))
            .map(str::to_owned)
            .collect();
        left.sort();
        assert!(
            left.is_empty(),
            "addresses or routes of {} left:\n{}",
            self.subnet.cidr(),
            left.join("\n")
        );
        for (table, text) in self.tables() {
            let content = nft_content(&text);
            assert!(
                content.is_empty(),
                "the store's nft table {table} still holds rules:\n{text}"
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let mut notes = self.store.delete_all();
        // Last resort, for what fvm should have removed already.
        // (Nothing here may panic: this runs while a failed test unwinds.)
        let left = parse_links(&host(&["ip", "-o", "link"]).stdout);
        for bridge in self.bridge_names() {
            for l in &left {
                if l.master.as_deref() == Some(bridge.as_str()) && l.name.starts_with("fvm") {
                    host(&["ip", "link", "del", "dev", &l.name]);
                    notes.push(format!("removed link {} left on {bridge}", l.name));
                }
            }
            if link_exists(&bridge) {
                host(&["ip", "link", "del", "dev", &bridge]);
                notes.push(format!("removed bridge {bridge}"));
            }
        }
        if let Some(id) = self.store.id() {
            for family in ["inet", "bridge"] {
                let name = format!("fvm-{id}");
                if host(&["nft", "list", "table", family, &name]).code == 0 {
                    host(&["nft", "delete", "table", family, &name]);
                    notes.push(format!("removed nft table {family} {name}"));
                }
            }
        }
        if !notes.is_empty() {
            eprintln!(
                "network cleanup of {}:\n{}",
                self.store.root.display(),
                notes.join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// an outside world the test makes

/// "The outside world": a network namespace `fvmtout<hex>` joined to the host by
/// a veth pair (`fvmtox<hex>` on the host) on a /30 of a /24 of its own, with an
/// HTTP server on port 80 that answers with the client's address, and a route
/// back to the VMs' subnet through the host (so that only the host's policy, not
/// a missing route, decides whether a VM gets an answer). Removed on drop.
#[derive(Debug)]
pub struct Outside {
    pub netns: String,
    /// The host end of the veth pair.
    pub link: String,
    /// The host's address on the link.
    pub host_addr: String,
    /// The outside's address, where its server listens.
    pub addr: String,
    pub subnet: Subnet,
    server: Option<Spawned>,
}

impl Outside {
    /// The outside world, routing `vms` back through the host.
    #[track_caller]
    pub fn new(vms: &Subnet) -> Outside {
        let hex = random_hex(6);
        let subnet = Subnet::claim();
        let mut outside = Outside {
            netns: format!("fvmtout{hex}"),
            link: format!("fvmtox{hex}"),
            host_addr: subnet.addr(1),
            addr: subnet.addr(2),
            subnet,
            server: None,
        };
        let peer = format!("fvmtoy{hex}");
        let ns = outside.netns.clone();
        let host_cidr = format!("{}/30", outside.host_addr);
        let cidr = format!("{}/30", outside.addr);
        for argv in [
            &["ip", "netns", "add", &ns][..],
            &[
                "ip",
                "link",
                "add",
                &outside.link,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
            &["ip", "link", "set", &peer, "netns", &ns],
            &["ip", "addr", "add", &host_cidr, "dev", &outside.link],
            &["ip", "link", "set", &outside.link, "up"],
            &["ip", "-n", &ns, "link", "set", "lo", "up"],
            &["ip", "-n", &ns, "addr", "add", &cidr, "dev", &peer],
            &["ip", "-n", &ns, "link", "set", &peer, "up"],
            &[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                &vms.cidr(),
                "via",
                &outside.host_addr,
            ],
        ] {
            host(argv).ok();
        }
        outside.server = Some(spawn_host(&[
            "ip",
            "netns",
            "exec",
            &ns,
            python(),
            "-c",
            SERVER_PY,
            &outside.addr,
            "80",
            "=client",
        ]));
        let (addr, from) = (outside.addr.clone(), outside.host_addr.clone());
        wait_for(
            &format!("the outside answers the host at {addr}:80"),
            || match host_get(&addr, 80)? {
                seen if seen == from => Ok(()),
                seen => Err(format!("it saw the host as {seen}, not {from}")),
            },
        );
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // The server (`ip netns exec` execs python3, so this is its pid).
        drop(self.server.take());
        host(&["ip", "netns", "del", &self.netns]);
        if link_exists(&self.link) {
            host(&["ip", "link", "del", "dev", &self.link]);
        }
    }
}

/// A host link a test tries to make from inside a VM (which must fail); removed
/// on drop should it exist.
#[derive(Debug)]
pub struct ForbiddenLink(pub String);

impl Drop for ForbiddenLink {
    fn drop(&mut self) {
        if link_exists(&self.0) {
            host(&["ip", "link", "del", "dev", &self.0]);
        }
    }
}

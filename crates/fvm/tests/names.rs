//! Names on the bridge (docs/network.md, "The store's resolver") end to end, and
//! the network defaults around servers: NAT on by default, `run --rm` with
//! network flags, busy host ports, and README's quick tour step by step.
//!
//! What a user would check: bridged VMs reach each other by name; an unknown
//! name fails at once (NXDOMAIN, not a timeout); other names are answered by
//! the store's upstream, unless the VM's `--deny` covers it (REFUSED); a server
//! in a bridged VM starts without waiting on DNS; the resolver is gone with the
//! last bridged VM (and after a SIGKILL, and after `doctor --cleanup`), and
//! survives garbage; a host port in use can't be published; and the tour's
//! `apt-get install -y nginx` works, through fvm's resolver and NAT.
//!
//! The "internet" is a network namespace the test makes ([`Outside`]): the
//! store's upstream DNS (`fvm network --upstream-dns`) is a small server the test
//! runs there, and so is the package mirror of the tour. No query goes anywhere
//! else: every resolver queried is one the test started, or the store's.

mod common;
#[allow(dead_code)]
mod network_support;

use std::path::Path;

use common::{Spawned, TestStore, is_alive_as, kill9, python, spawn_host};
use network_support::{Net, Outside, Probe, free_port, host, host_get, ready, wait_for};

/// A DNS server for the tests: `python3 -c DNS_PY BIND PORT NAME=IP…` answers
/// A queries for the names given, no data for their other types, NXDOMAIN for
/// anything else.
const DNS_PY: &str = r#"
import socket, struct, sys
bind, port = sys.argv[1], int(sys.argv[2])
names = dict(a.split("=") for a in sys.argv[3:])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, port))
while True:
    d, peer = s.recvfrom(4096)
    try:
        i, labels = 12, []
        while d[i]:
            labels.append(d[i + 1:i + 1 + d[i]].decode().lower())
            i += d[i] + 1
        qtype = struct.unpack(">H", d[i + 1:i + 3])[0]
        q = d[12:i + 5]
        ip = names.get(".".join(labels))
        an = b""
        if ip and qtype == 1:
            an = struct.pack(">HHHLH", 0xc00c, 1, 1, 60, 4) + socket.inet_aton(ip)
        flags = 0x8180 if ip else 0x8183
        s.sendto(d[:2] + struct.pack(">HHHHH", flags, 1, 1 if an else 0, 0, 0) + q + an, peer)
    except Exception:
        pass
"#;

/// Queries, run inside a VM: `python3 -c QUERY_PY SERVER NAME…`; one line per
/// name: `NAME rcode=N ips=A,B` or `NAME timeout` (after 4 s: longer than the
/// resolver's own upstream timeout, shorter than nothing).
const QUERY_PY: &str = r#"
import socket, struct, sys
server = sys.argv[1]
for n, name in enumerate(sys.argv[2:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(4)
    qid = 0x1000 + n
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"
    q += struct.pack(">HH", 1, 1)
    s.sendto(q, (server, 53))
    try:
        while True:
            d, _ = s.recvfrom(4096)
            if struct.unpack(">H", d[:2])[0] == qid:
                break
    except socket.timeout:
        print(name, "timeout")
        continue
    an = struct.unpack(">H", d[6:8])[0]
    i = 12
    while d[i]:
        i += d[i] + 1
    i += 5
    ips = []
    for _ in range(an):
        if d[i] & 0xc0 == 0xc0:
            i += 2
        else:
            while d[i]:
                i += d[i] + 1
            i += 1
        rtype, _, _, rdlen = struct.unpack(">HHLH", d[i:i + 10])
        if rtype == 1:
            ips.append(socket.inet_ntoa(d[i + 10:i + 14]))
        i += 10 + rdlen
    print(name, "rcode=%d" % (d[3] & 15), "ips=" + ",".join(ips))
"#;

/// Start [`DNS_PY`] in the network namespace `netns` on `addr:53`, answering
/// `names`; waits until it answers.
#[track_caller]
fn upstream_in(netns: &str, addr: &str, names: &[(&str, &str)]) -> Spawned {
    let mut argv = vec![
        "ip".to_owned(),
        "netns".into(),
        "exec".into(),
        netns.into(),
        python().into(),
        "-c".into(),
        DNS_PY.into(),
        addr.into(),
        "53".into(),
    ];
    argv.extend(names.iter().map(|(n, ip)| format!("{n}={ip}")));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let server = spawn_host(&argv);
    let probe = names
        .first()
        .map_or("fvm-probe.test", |(n, _)| n)
        .to_owned();
    wait_for(&format!("the test's upstream answers on {addr}"), || {
        let out = host(&[
            "ip",
            "netns",
            "exec",
            netns,
            python(),
            "-c",
            QUERY_PY,
            addr,
            &probe,
        ]);
        if out.stdout.contains("rcode=") {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    server
}

/// Run [`QUERY_PY`] in the VM against `server`: name → (rcode, ips), or None
/// for a timeout.
#[track_caller]
fn query_in(
    store: &TestStore,
    vm: &str,
    server: &str,
    names: &[&str],
) -> Vec<Option<(u8, Vec<String>)>> {
    let mut args = vec!["run", vm, "--", python(), "-c", QUERY_PY, server];
    args.extend_from_slice(names);
    let out = store.fvm(&args).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), names.len(), "{out}");
    lines
        .iter()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let rcode = words.get(1)?.strip_prefix("rcode=")?.parse().ok()?;
            let ips = words
                .get(2)
                .and_then(|w| w.strip_prefix("ips="))
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            Some((rcode, ips))
        })
        .collect()
}

const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;
const REFUSED: u8 = 5;

/// The pid of the store's resolver, from its pid file, if it is alive.
fn resolver_pid(store: &TestStore) -> Option<i32> {
    let pid = std::fs::read_to_string(store.root.join("dns.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_alive_as(pid, "fvm-dns").then_some(pid)
}

/// The resolver's pid, once it has written it (it is forked off by the start
/// that needed it, and writes its pid file a moment later).
#[track_caller]
fn wait_resolver(store: &TestStore, what: &str) -> i32 {
    let mut pid = None;
    wait_for(what, || {
        pid = resolver_pid(store);
        pid.map(|_| ())
            .ok_or_else(|| "no live fvm-dns in dns.pid".to_owned())
    });
    pid.unwrap_or_default()
}

/// Wait until `pid` is no live `comm` (gone, or a zombie).
#[track_caller]
fn wait_gone(pid: i32, comm: &str) {
    wait_for(&format!("{comm} {pid} is gone"), || {
        if is_alive_as(pid, comm) {
            Err("alive".into())
        } else {
            Ok(())
        }
    });
}

/// Whether a socket listens on `ip` port 53 (UDP or TCP) in the host's namespace.
fn listening_on_53(ip: &str) -> Vec<String> {
    let needle = format!("{ip}:53");
    host(&["ss", "-Hlnut"])
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == needle))
        .map(str::to_owned)
        .collect()
}

/// Nothing of the resolver is left: no live `fvm-dns` at `pid`, no pid file, no
/// socket on the bridge's port 53, no nft rule for it.
#[track_caller]
fn assert_resolver_gone(net: &Net, what: &str, pid: Option<i32>) {
    let gw = net.subnet.gateway();
    wait_for(&format!("{what}: the resolver is gone"), || {
        let mut left = Vec::new();
        if let Some(pid) = pid.filter(|p| is_alive_as(*p, "fvm-dns")) {
            left.push(format!("process {pid}"));
        }
        if net.store.root.join("dns.pid").exists() {
            left.push("dns.pid".into());
        }
        left.extend(listening_on_53(&gw));
        let rules = network_support::ruleset();
        if rules
            .lines()
            .any(|l| l.contains(&gw) && l.contains("dport 53"))
        {
            left.push(format!("nft rule for {gw}:53"));
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        }
    });
}

#[test]
fn bridged_vms_reach_each_other_by_name_and_other_names_go_upstream_within_the_policy() {
    let test = "bridged_vms_reach_each_other_by_name_and_other_names_go_upstream_within_the_policy";
    if !ready(test, &["ss"]) {
        return;
    }
    let net = Net::new("names");
    let outside = Outside::new(&net.subnet);
    let _upstream = upstream_in(
        &outside.netns,
        &outside.addr,
        &[("mirror.fvm-test.example", &outside.addr)],
    );
    net.fvm(&["network", "--upstream-dns", &outside.addr]).ok();
    let gw = net.subnet.gateway();
    let vms = ["vm1", "vm2", "vm3", "vm4", "vm5"];
    let mut ips = Vec::new();
    for vm in vms {
        ips.push(net.bridged(vm, &[]));
        net.store.start(vm);
        net.serve(vm);
    }
    let denied = net.bridged("denied", &["--deny", &format!("{}:53", outside.addr)]);
    net.store.start("denied");
    let pid = wait_resolver(&net.store, "a resolver runs while bridged vms run");

    // Every VM reaches every other by name, and the names are theirs.
    for from in ["vm1", "vm4"] {
        let probes: Vec<Probe> = vms.iter().map(|to| Probe::get(to, 80)).collect();
        let got = net.probe(from, &probes);
        for (to, answer) in vms.iter().zip(&got) {
            assert_eq!(answer.as_deref(), Ok(*to), "{from} fetching http://{to}/");
        }
    }
    let out = net
        .store
        .fvm(&[
            "run",
            "vm2",
            "--",
            "sh",
            "-c",
            "cat /etc/resolv.conf; getent hosts vm3 $(hostname)",
        ])
        .ok();
    assert!(
        out.stdout.contains(&format!("nameserver {gw}")),
        "a bridged vm's resolv.conf names the bridge:\n{out}"
    );
    assert!(
        out.stdout.contains(ips[2].as_str()) && out.stdout.contains("vm3"),
        "{out}"
    );
    assert!(
        out.stdout.contains(&ips[1]) && out.stdout.contains("vm2"),
        "a vm's own name resolves in it:\n{out}"
    );

    // Unknown names fail at once, with NXDOMAIN: not a timeout.
    let got = query_in(
        &net.store,
        "vm1",
        &gw,
        &[
            "vm5",
            "nosuchvm",
            "mirror.fvm-test.example",
            "nosuch.fvm-test.example",
        ],
    );
    assert_eq!(got[0], Some((NOERROR, vec![ips[4].clone()])));
    assert_eq!(got[1], Some((NXDOMAIN, vec![])), "an unknown vm name");
    assert_eq!(
        got[2],
        Some((NOERROR, vec![outside.addr.clone()])),
        "a name the upstream knows, forwarded"
    );
    assert_eq!(got[3], Some((NXDOMAIN, vec![])), "the upstream's NXDOMAIN");
    let out = net
        .store
        .fvm(&[
            "run",
            "vm1",
            "--",
            python(),
            "-c",
            "import socket\ntry:\n    socket.getaddrinfo('nosuchvm', 80)\nexcept socket.gaierror as e:\n    print('errno', e.errno == socket.EAI_NONAME)",
        ])
        .ok();
    assert_eq!(
        out.out(),
        "errno True",
        "getaddrinfo of an unknown name: not found, not 'try again':\n{out}"
    );

    // The egress policy holds for DNS: REFUSED for forwarded names, VM names
    // still answered.
    let got = query_in(
        &net.store,
        "denied",
        &gw,
        &["mirror.fvm-test.example", "vm1"],
    );
    assert_eq!(
        got[0],
        Some((REFUSED, vec![])),
        "--deny of the upstream's port 53"
    );
    assert_eq!(got[1], Some((NOERROR, vec![ips[0].clone()])));
    assert!(net.subnet.contains(&denied));

    // Nothing else answers on the resolver's address from the host itself.
    let from_host = host(&[python(), "-c", QUERY_PY, &gw, "vm1"]);
    assert!(
        from_host.stdout.contains("timeout"),
        "the resolver answers only the bridge's vms:\n{from_host}"
    );

    for vm in vms.iter().chain(&["denied"]) {
        net.store.stop(vm);
    }
    assert_resolver_gone(&net, "after the last bridged vm stopped", Some(pid));
    net.assert_clean();
    drop(outside);
}

/// `ip -j link show ARGS…`: each link's name and MAC address.
fn macs(args: &[&str]) -> Vec<(String, String)> {
    let mut argv = vec!["ip", "-j", "link", "show"];
    argv.extend_from_slice(args);
    let out = host(&argv);
    let links: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ip -j link show {args:?}: {e}:\n{out}"));
    links
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap_or_default().to_owned(),
                l["address"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A bridge without an address of its own takes its lowest port's, and moves
/// as VMs come and go; a VM that learned the gateway's old address then sends
/// to a port's address, which the host drops, and loses its resolver and its
/// gateway for seconds. The store's bridge keeps the address it was made with.
#[test]
fn the_bridge_keeps_its_own_address_as_vms_come_and_go() {
    let test = "the_bridge_keeps_its_own_address_as_vms_come_and_go";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("bridgemac");
    let vms = ["m1", "m2", "m3", "m4"];
    for vm in vms {
        net.bridged(vm, &[]);
    }
    net.store.start("m1");
    let bridge = net.bridge();
    let address = || {
        let own = macs(&[&bridge]);
        assert_eq!(own.len(), 1, "bridge {bridge}: {own:?}");
        let ports = macs(&["master", &bridge]);
        assert!(
            ports.iter().all(|(_, mac)| *mac != own[0].1),
            "the bridge {bridge} has a port's address {}: {ports:?}",
            own[0].1
        );
        own[0].1.clone()
    };
    let first = address();
    let gw = net.subnet.gateway();
    let asks = |what: &str| {
        let got = query_in(&net.store, "m1", &gw, &["m2"]);
        assert!(
            got[0].is_some(),
            "{what}: m1 asking the resolver for m2 got no answer"
        );
    };
    asks("with m1 alone");
    for round in 0..2 {
        for vm in &vms[1..] {
            net.store.start(vm);
            assert_eq!(address(), first, "round {round}: after {vm} started");
        }
        asks(&format!("round {round}, all running"));
        for vm in &vms[1..] {
            net.store.stop(vm);
            assert_eq!(address(), first, "round {round}: after {vm} stopped");
        }
        asks(&format!("round {round}, m1 alone again"));
    }
    net.store.stop("m1");
    net.assert_clean();
}

#[test]
fn the_resolver_survives_garbage_and_leaves_nothing_after_a_sigkill() {
    let test = "the_resolver_survives_garbage_and_leaves_nothing_after_a_sigkill";
    if !ready(test, &["ss"]) {
        return;
    }
    let net = Net::new("namesjunk");
    let ip = net.bridged("junk", &[]);
    net.bridged("other", &[]);
    net.store.start("junk");
    let gw = net.subnet.gateway();
    let pid = wait_resolver(&net.store, "a resolver runs");
    // Random bytes, a compression loop, truncated headers, over UDP and TCP,
    // then 10,000 queries as fast as python sends them.
    let hostile = r#"
import os, socket, struct, sys
gw = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range(2000):
    u.sendto(os.urandom(n % 700), (gw, 53))
loop = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
for _ in range(100):
    u.sendto(loop, (gw, 53))
    u.sendto(loop[:5], (gw, 53))
q = struct.pack(">HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x05other\x00\x00\x01\x00\x01"
for _ in range(10000):
    u.sendto(q, (gw, 53))
for payload in (os.urandom(3000), struct.pack(">H", 65535) + os.urandom(100), loop):
    try:
        t = socket.create_connection((gw, 53), timeout=2)
        t.sendall(payload)
        t.close()
    except OSError:
        pass
print("sent")
"#;
    let out = net
        .store
        .fvm(&["run", "junk", "--", python(), "-c", hostile, &gw])
        .ok();
    assert_eq!(out.out(), "sent", "{out}");
    assert!(is_alive_as(pid, "fvm-dns"), "the resolver died of garbage");
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(rss_kib < 64 * 1024, "the resolver grew to {rss_kib} KiB");
    let got = query_in(&net.store, "junk", &gw, &["other", "junk"]);
    assert_eq!(
        got[1],
        Some((NOERROR, vec![ip.clone()])),
        "answers after the garbage"
    );

    // A SIGKILL leaves a pid file; the next start makes a new resolver, and
    // the last stop removes everything.
    kill9(&[pid]);
    wait_gone(pid, "fvm-dns");
    // `list` (like `stats`, `run` and `doctor`) starts a missing one again.
    let out = net.fvm(&["list"]).ok();
    assert!(out.stderr.contains("restarted it"), "{out}");
    let again = wait_resolver(&net.store, "a new resolver runs after the kill");
    net.store.start("other");
    assert_ne!(again, pid);
    let got = query_in(&net.store, "other", &gw, &["junk"]);
    assert_eq!(got[0], Some((NOERROR, vec![ip.clone()])));
    net.store.stop("junk");
    net.store.stop("other");
    assert_resolver_gone(&net, "after stop", Some(again));

    // Killed with no bridged VM left to stop: `doctor --cleanup` removes its
    // pid file.
    net.store.start("junk");
    let third = wait_resolver(&net.store, "a third resolver runs");
    kill9(&[third]);
    let init = net.inspect("junk")["init"]["pid"].as_i64().unwrap_or(0) as i32;
    kill9(&[init]);
    wait_gone(init, "fvm-init");
    net.fvm(&["doctor", "--cleanup"]);
    assert_resolver_gone(&net, "after a SIGKILL and doctor --cleanup", Some(third));
    net.assert_clean();
}

#[test]
fn a_server_in_a_bridged_vm_needs_no_lookup_that_can_time_out() {
    let test = "a_server_in_a_bridged_vm_needs_no_lookup_that_can_time_out";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("namesrv");
    let ip = net.bridged("srv", &[]);
    net.store.start("srv");
    // `python3 -m http.server` looks its own name up (getfqdn) before it
    // listens; with the resolver that is answered at once. Its "Serving HTTP"
    // line comes after the lookup: once it is there, it answers.
    net.store
        .fvm(&[
            "run",
            "srv",
            "--",
            "sh",
            "-c",
            r#"cd /tmp && nohup "$0" -u -m http.server 80 >/tmp/fvm-serving.log 2>&1 &"#,
            python(),
        ])
        .ok();
    wait_for("http.server says it serves", || {
        let out = net
            .store
            .fvm(&["run", "srv", "--", "cat", "/tmp/fvm-serving.log"]);
        if out.stdout.contains("Serving HTTP") {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    let page = host_get(&ip, 80);
    assert!(
        page.is_ok(),
        "http.server answers once it says so: {page:?}"
    );
    // It resolved its own name through the bridge's resolver (no timeout).
    let got = query_in(&net.store, "srv", &net.subnet.gateway(), &["srv"]);
    assert_eq!(got[0], Some((NOERROR, vec![ip.clone()])));
    net.assert_clean();
}

#[test]
fn busy_host_ports_are_refused_at_config_and_at_start() {
    let test = "busy_host_ports_are_refused_at_config_and_at_start";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("namesport");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a host listener");
    let port = busy.local_addr().expect("its address").port();
    net.bridged("web", &[]);
    let out = net.fvm(&["config", "web", "--publish", &format!("{port}:80")]);
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr
            .contains(&format!("host port {port}/tcp is in use")),
        "{out}"
    );
    let out = net.fvm(&[
        "create",
        "web2",
        "--net",
        "bridge",
        "--publish",
        &format!("{port}:80"),
    ]);
    assert_ne!(out.code, 0, "{out}");
    drop(busy);

    // Free at config, busy by the start.
    let port = free_port();
    net.fvm(&["config", "web", "--publish", &format!("{port}:80")])
        .ok();
    let busy = std::net::TcpListener::bind(("0.0.0.0", port)).expect("the port again");
    let out = net.fvm(&["start", "web"]);
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("in use"), "{out}");
    drop(busy);
    net.store.start("web");
    // Published by a running VM of another store: refused too.
    let other = Net::new("namesport2");
    let out = other.fvm(&[
        "create",
        "web",
        "--net",
        "bridge",
        "--publish",
        &format!("{port}:80"),
    ]);
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("another store"), "{out}");
    other.assert_clean();
    net.assert_clean();
}

#[test]
fn run_rm_takes_the_network_flags() {
    let test = "run_rm_takes_the_network_flags";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("namesrm");
    let out = net
        .fvm(&[
            "run",
            "--rm",
            "--net",
            "none",
            "--",
            "sh",
            "-c",
            "ls /sys/class/net",
        ])
        .ok();
    assert_eq!(out.out(), "lo", "{out}");
    let port = free_port();
    let out = net
        .fvm(&[
            "run",
            "--rm",
            "--net",
            "bridge",
            "--publish",
            &format!("{port}:80"),
            "--",
            "sh",
            "-c",
            "ip -4 -o addr show eth0; getent hosts $(hostname)",
        ])
        .ok();
    assert!(
        out.stdout.contains(&net.subnet.prefix()),
        "a bridged throw-away vm gets an address:\n{out}"
    );
    let out = net.fvm(&["run", "--net", "none", "--", "true"]);
    assert_ne!(out.code, 0, "--net without --rm: {out}");
    net.assert_clean();
}

#[test]
fn copy_says_what_it_leaves_with_the_source() {
    let test = "copy_says_what_it_leaves_with_the_source";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("namescopy");
    let port = free_port();
    let ip = net.bridged("src", &["--publish", &format!("{port}:80")]);
    let out = net.fvm(&["copy", "src", "dst"]).ok();
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{out}");
    assert!(
        lines[0].contains(&ip) && lines[0].contains(&format!("{port}:80")),
        "{out}"
    );
    let copy = net.inspect("dst");
    assert_ne!(copy["ip"].as_str(), Some(ip.as_str()), "{copy:#}");
    net.assert_clean();
}

/// A package named `name` whose `/usr/sbin/nginx` answers `-v` like nginx, in a
/// flat apt repository at `dir` (Packages and an unsigned Release).
fn fake_repo(dir: &Path) {
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).expect("mkdir");
    std::fs::create_dir_all(pkg.join("usr/sbin")).expect("mkdir");
    std::fs::create_dir_all(pkg.join("etc/nginx")).expect("mkdir");
    std::fs::write(pkg.join("etc/nginx/fvm-test.conf"), "# fvm tests\n").expect("conf");
    let arch = host(&["dpkg", "--print-architecture"])
        .ok()
        .out()
        .to_owned();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: nginx\nVersion: 99.0-fvmtest\nArchitecture: {arch}\nMaintainer: fvm tests <fvm@localhost>\nDescription: a stand-in nginx for fvm's tests\n"
        ),
    )
    .expect("control");
    let bin = pkg.join("usr/sbin/nginx");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'nginx version: nginx/99.0-fvmtest' >&2\n",
    )
    .expect("bin");
    host(&["chmod", "0755", &bin.to_string_lossy()]).ok();
    let deb = dir.join("nginx_99.0-fvmtest.deb");
    host(&[
        "dpkg-deb",
        "--root-owner-group",
        "-b",
        &pkg.to_string_lossy(),
        &deb.to_string_lossy(),
    ])
    .ok();
    let bytes = std::fs::read(&deb).expect("the deb");
    let sha = host(&["sha256sum", &deb.to_string_lossy()])
        .ok()
        .out()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    let control = std::fs::read_to_string(pkg.join("DEBIAN/control")).expect("control");
    let packages = format!(
        "{control}Filename: ./nginx_99.0-fvmtest.deb\nSize: {}\nSHA256: {sha}\n\n",
        bytes.len()
    );
    std::fs::write(dir.join("Packages"), &packages).expect("Packages");
    let psha = host(&["sha256sum", &dir.join("Packages").to_string_lossy()])
        .ok()
        .out()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    std::fs::write(
        dir.join("Release"),
        format!(
            "Suite: fvmtest\nCodename: fvmtest\nSHA256:\n {psha} {} Packages\n",
            packages.len()
        ),
    )
    .expect("Release");
}

/// A static file server (no name lookups at start, unlike `-m http.server`).
const FILES_PY: &str = r#"
import functools, http.server, socketserver, sys
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
S((sys.argv[1], int(sys.argv[2])), h).serve_forever()
"#;

#[test]
fn the_readme_tour_works_as_written() {
    let test = "the_readme_tour_works_as_written";
    if !ready(test, &["dpkg-deb", "apt-get", "sha256sum"]) {
        return;
    }
    let net = Net::new("tour");
    let outside = Outside::new(&net.subnet);
    let repo = common::temp_dir("tour-repo");
    fake_repo(repo.path());
    let repo_dir = repo.path().to_string_lossy().into_owned();
    let _mirror = spawn_host(&[
        "ip",
        "netns",
        "exec",
        &outside.netns,
        python(),
        "-c",
        FILES_PY,
        &outside.addr,
        "8080",
        &repo_dir,
    ]);
    let _upstream = upstream_in(
        &outside.netns,
        &outside.addr,
        &[("deb.debian.org", &outside.addr)],
    );
    net.fvm(&["network", "--upstream-dns", &outside.addr]).ok();
    let vm = "web1";
    let step = |args: &[&str]| net.fvm(args);

    step(&["create", vm]).ok();
    step(&[
        "config",
        vm,
        "--memory",
        "512M",
        "--cpus",
        "0.5",
        "--processes",
        "200",
    ])
    .ok();
    let port = free_port();
    let publish = format!("{port}:80");
    step(&["config", vm, "--net", "bridge", "--publish", &publish]).ok();
    // The one step the tour doesn't have: the VM's apt gets the test's mirror
    // (the same host name, deb.debian.org, on port 8080) instead of Debian's.
    step(&[
        "run", vm, "--", "sh", "-c",
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; \
         echo 'deb [trusted=yes] http://deb.debian.org:8080/ ./' > /etc/apt/sources.list.d/fvm-test.list; \
         apt-get update -q",
    ])
    .ok();
    let out = step(&["run", vm, "--", "apt-get", "install", "-y", "nginx"]).ok();
    assert!(out.stdout.contains("nginx"), "{out}");
    let out = step(&["run", vm, "--", "nginx", "-v"]).ok();
    assert!(out.stderr.contains("nginx/99.0-fvmtest"), "{out}");
    assert!(
        !Path::new("/usr/sbin/nginx").exists()
            || !std::fs::read_to_string("/usr/sbin/nginx")
                .unwrap_or_default()
                .contains("fvmtest"),
        "the host never saw it"
    );
    step(&["start", vm]).ok();
    step(&["run", vm, "--", "ps", "-e"]).ok();
    step(&["list"]).ok();
    step(&["ps", vm]).ok();
    step(&["stats"]).ok();
    step(&["suspend", vm]).ok();
    step(&["resume", vm]).ok();
    step(&["inspect", vm]).ok();
    step(&["stop", vm]).ok();
    let out = step(&["diff", vm]).ok();
    assert!(out.stdout.contains("/usr/sbin/nginx"), "{out}");
    // (`fvm commit web1 /etc/nginx` would write to this host's /etc: only its
    // dry run here. `fvm shell` and `stats --watch` need a terminal: left out.)
    let out = step(&["commit", "--dry-run", vm, "/etc/nginx"]).ok();
    assert!(out.stdout.contains("/etc/nginx/fvm-test.conf"), "{out}");
    step(&["copy", vm, "web2"]).ok();
    step(&["delete", "web2"]).ok();
    step(&["create", "scratch", "--layers", "volatile"]).ok();
    step(&[
        "run",
        "--rm",
        "--",
        "sh",
        "-c",
        "rm -rf /usr/share/doc && ls /usr/share >/dev/null",
    ])
    .ok();
    step(&["delete", "scratch"]).ok();
    step(&["delete", vm]).ok();
    net.assert_clean();
    drop(outside);
}

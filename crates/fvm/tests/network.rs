//! Network (docs/network.md) end to end: `--net bridge|none|host`, addresses, the
//! egress policy (`--deny`, `--allow`, `--nat`), `--publish`, the store's bridge
//! and subnet (`fvm network`), and what a VM leaves on the host after stop, crash
//! and delete.
//!
//! What a user would check: twenty VMs each serve port 80 at their own address and
//! the host and the other VMs reach each one; a VM without a network has only
//! `lo`; a denied destination stays unreachable whatever root in the VM does; a
//! published port answers on the host's loopback; without `--nat` the outside
//! world is out of reach and with it the outside sees the host's address; and no
//! link, address, route or nft rule of a VM outlives it.
//!
//! Every test has its own store, set at once to its own bridge (`fvmt` + 6 hex
//! digits) and /24 in 10.200.0.0/13, so tests run in parallel. Traffic goes only to
//! loopback, to the test's VMs and to namespaces the test makes. `network_support`
//! has the fixtures ([`Net`], [`Outside`]), which remove what they made even when a
//! test fails, and the probes.

mod common;
mod network_support;

use std::collections::BTreeMap;
use std::net::TcpListener;

use common::{Out, TestStore, is_alive_as, kill9, wait_until};
use network_support::{
    ForbiddenLink, Net, Outside, Probe, Subnet, free_port, host, host_connect, host_get, links,
    mentions, nft_content, parse_links, random_hex, ready, ruleset, start_server_in, wait_for,
};
use serde_json::Value;

// ---------------------------------------------------------------------------
// helpers

/// The `[network]` table of a VM's policy file: key → value (as written, with
/// quotes removed).
fn policy_network(store: &TestStore, name: &str) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(&policy_bytes(store, name)).into_owned();
    let mut table = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[network]";
            continue;
        }
        if !inside || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.split('#').next().unwrap_or_default().trim();
            table.insert(
                key.trim().trim_matches('"').to_owned(),
                value.trim_matches('"').to_owned(),
            );
        }
    }
    table
}

/// The VM's policy file, as bytes.
fn policy_bytes(store: &TestStore, name: &str) -> Vec<u8> {
    let path = store.root.join("vms").join(name).join("vm.toml");
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Assert fvm's own failure: status 125 and one `fvm: ` line on stderr that names
/// the flag (without its dashes) or the value at fault (an address may be named
/// without its prefix length).
#[track_caller]
fn assert_refused(out: &Out, flag: &str, value: &str) {
    assert_eq!(out.code, 125, "`{}` was not refused:\n{out}", out.what);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error expected:\n{out}");
    assert!(lines[0].starts_with("fvm: "), "{out}");
    let key = flag.trim_start_matches('-');
    let addr = value.split('/').next().unwrap_or(value);
    assert!(
        lines[0].contains(key) || lines[0].contains(value) || lines[0].contains(addr),
        "the error should name {key:?} or {value:?}:\n{out}"
    );
}

/// Run fvm with `args`, expect it refused (see [`assert_refused`]), and check
/// that the store (every VM's policy, the store's network settings) is byte for
/// byte as it was.
#[track_caller]
fn refused(net: &Net, args: &[&str], flag: &str, value: &str) {
    let before = net.store.snapshot();
    let out = net.fvm(args);
    assert_refused(&out, flag, value);
    assert_eq!(
        before,
        net.store.snapshot(),
        "`fvm {}` changed the store",
        args.join(" ")
    );
}

/// `fvm --json network` of a store.
#[track_caller]
fn network_settings(store: &TestStore) -> Value {
    let out = store.fvm(&["--json", "network"]).ok();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("network --json: not JSON ({e}):\n{out}"))
}

/// Assert that every probe answered, with the given answers.
#[track_caller]
fn assert_answers(what: &str, probes: &[Probe], got: &[Result<String, String>], want: &[&str]) {
    for ((p, got), want) in probes.iter().zip(got).zip(want) {
        assert_eq!(
            got.as_deref(),
            Ok(*want),
            "{what}: `{p}` should answer {want:?}"
        );
    }
}

/// Assert that a probe failed (no connection, or no answer).
#[track_caller]
fn assert_blocked(what: &str, got: &Result<String, String>) {
    assert!(got.is_err(), "{what} should fail, but got {got:?}");
}

// ---------------------------------------------------------------------------
// bridge mode: many servers on port 80

#[test]
fn twenty_vms_each_serve_port_80_at_their_own_address() {
    let test = "twenty_vms_each_serve_port_80_at_their_own_address";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("net20");
    let names: Vec<String> = (1..=20).map(|i| format!("web{i:02}")).collect();
    let mut ips = Vec::new();
    for name in &names {
        ips.push(net.bridged(name, &[]));
    }
    let distinct: std::collections::BTreeSet<&String> = ips.iter().collect();
    assert_eq!(
        distinct.len(),
        ips.len(),
        "addresses handed out twice: {ips:?}"
    );
    assert!(
        !ips.contains(&net.subnet.gateway()),
        "a vm got the gateway address: {ips:?}"
    );

    for name in &names {
        net.store.start(name);
        net.serve(name);
    }
    // From the host: each address answers with its own VM's name.
    for (name, ip) in names.iter().zip(&ips) {
        assert_eq!(
            host_get(ip, 80).as_deref(),
            Ok(name.as_str()),
            "{ip}:80 from the host"
        );
    }
    // VM to VM: the first reaches every other; the last reaches the first.
    let probes: Vec<Probe> = ips[1..].iter().map(|ip| Probe::get(ip, 80)).collect();
    let want: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    let got = net.probe(&names[0], &probes);
    assert_answers("from web01", &probes, &got, &want);
    let back = Probe::get(&ips[0], 80);
    assert_eq!(
        net.probe1(&names[19], back.clone()).as_deref(),
        Ok("web01"),
        "from web20: `{back}`"
    );
    // Inside, each VM has its own eth0 address and its own port 80.
    let own = net.store.sh(&names[5], "ip -4 -o addr show dev eth0").ok();
    assert!(
        own.stdout.contains(&format!(" {}/24 ", ips[5])),
        "web06's eth0 does not carry {}:\n{own}",
        ips[5]
    );
    assert_eq!(
        net.probe1(&names[5], Probe::get("127.0.0.1", 80))
            .as_deref(),
        Ok("web06"),
        "web06's own port 80"
    );
    net.assert_clean();
}

// ---------------------------------------------------------------------------
// none and host modes

#[test]
fn a_vm_without_network_has_only_loopback_and_host_mode_cannot_reconfigure() {
    let test = "a_vm_without_network_has_only_loopback_and_host_mode_cannot_reconfigure";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("netnone");
    net.create("alone", &["--net", "none"]);
    net.create("hosted", &["--net", "host"]);
    net.bridged("bridged", &[]);
    assert_eq!(net.inspect("alone")["network"]["mode"], "none");
    assert_eq!(net.inspect("hosted")["network"]["mode"], "host");

    // Only `lo`, and it is up: through netlink, /proc/net and /sys.
    let out = net
        .store
        .sh(
            "alone",
            "ip -o link; echo ---; tail -n +3 /proc/net/dev | cut -d: -f1; echo ---; ls /sys/class/net",
        )
        .ok();
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    let inside = parse_links(parts[0]);
    let names: Vec<&str> = inside.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo"], "links in a --net none vm:\n{out}");
    assert!(
        inside[0].line.contains("UP"),
        "lo is not up in a --net none vm:\n{out}"
    );
    let proc_net: Vec<&str> = parts[1].split_whitespace().collect();
    assert_eq!(proc_net, ["lo"], "/proc/net/dev of a --net none vm:\n{out}");
    let sys: Vec<&str> = parts[2].split_whitespace().collect();
    assert_eq!(sys, ["lo"], "/sys/class/net of a --net none vm:\n{out}");

    // Loopback inside works: a server on the VM's own 127.0.0.1.
    net.store.start("alone");
    start_server_in(&net.store, "alone", "127.0.0.1", 8080, "alone");
    wait_for("the --net none vm serves itself on 127.0.0.1:8080", || {
        net.probe1("alone", Probe::get("127.0.0.1", 8080))
            .and_then(|b| (b == "alone").then_some(()).ok_or(b))
    });

    // Host listeners: one on loopback, one on the bridge's address (the gateway,
    // which exists once a bridged VM runs).
    let on_lo = TcpListener::bind("127.0.0.1:0").expect("a host listener on loopback");
    let lo_port = on_lo.local_addr().unwrap().port();
    net.store.start("bridged");
    let gw = net.subnet.gateway();
    let on_gw = TcpListener::bind((gw.as_str(), 0)).expect("a host listener on the gateway");
    let gw_port = on_gw.local_addr().unwrap().port();

    // host mode shares the host's loopback; the bridged VM reaches the host.
    assert_eq!(
        net.probe1("hosted", Probe::connect("127.0.0.1", lo_port))
            .as_deref(),
        Ok("connected"),
        "a --net host vm reaches the host's loopback"
    );
    assert_eq!(
        net.probe1("bridged", Probe::connect(&gw, gw_port))
            .as_deref(),
        Ok("connected"),
        "a bridged vm reaches the host at its gateway"
    );
    // The --net none VM reaches neither: its 127.0.0.1 is its own, and nothing
    // but loopback is there at all.
    let got = net.probe(
        "alone",
        &[
            Probe::connect("127.0.0.1", lo_port),
            Probe::connect(&gw, gw_port),
            Probe::connect(&net.ip("bridged"), 80),
        ],
    );
    for (what, got) in ["host's loopback port", "gateway", "bridged vm"]
        .iter()
        .zip(&got)
    {
        assert_blocked(&format!("from a --net none vm, the {what}"), got);
    }

    // host mode: the host's network namespace, without CAP_NET_ADMIN.
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let out = net.store.sh("hosted", "readlink /proc/self/ns/net").ok();
    assert_eq!(out.out(), host_ns.to_str().unwrap(), "host mode's netns");
    let out = net.store.sh("alone", "readlink /proc/self/ns/net").ok();
    assert_ne!(out.out(), host_ns.to_str().unwrap(), "none mode's netns");
    let dummy = ForbiddenLink(format!("fvmtq{}", random_hex(6)));
    let out = net
        .store
        .sh("hosted", &format!("ip link add {} type dummy", dummy.0));
    assert_ne!(
        out.code, 0,
        "root in a --net host vm made a host link:\n{out}"
    );
    assert!(
        !links().iter().any(|l| l.name == dummy.0),
        "root in a --net host vm made the host link {}",
        dummy.0
    );
    drop((on_lo, on_gw, dummy));
    net.assert_clean();
}

// ---------------------------------------------------------------------------
// bad input

#[test]
fn bad_network_input_is_refused_and_changes_nothing() {
    let test = "bad_network_input_is_refused_and_changes_nothing";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("netbad");
    let s = &net.subnet;
    let first = s.addr(10);
    net.bridged("first", &["--ip", &format!("{first}/24")]);
    let second = net.bridged("second", &[]);
    net.create("hostvm", &[]);
    let outside = Subnet::claim();

    let bad: Vec<(&str, String)> = vec![
        ("--ip", format!("{}300/24", s.prefix())),
        ("--ip", s.addr(5)),
        ("--ip", format!("{}/24", outside.addr(5))),
        ("--ip", format!("{first}/24")),
        ("--ip", format!("{}/24", s.gateway())),
        ("--ip", format!("{}/24", s.addr(0))),
        ("--ip", format!("{}/24", s.addr(255))),
        ("--ip", "bogus".to_owned()),
        ("--allow", "10.0.0.0/33".to_owned()),
        ("--deny", "300.1.1.0/24".to_owned()),
        ("--deny", "10.0.0.0/8:70000".to_owned()),
        ("--deny", "10.0.0.0/8:80/icmp".to_owned()),
        ("--publish", "99999:80".to_owned()),
        ("--publish", "18080:0".to_owned()),
        ("--publish", "18080:80/sctp".to_owned()),
        ("--dns", "not-an-address".to_owned()),
    ];
    // (`second` is the VM changed by config, so `first`'s address is another's.)
    for (flag, value) in &bad {
        refused(
            &net,
            &["create", "nope", "--net", "bridge", flag, value],
            flag,
            value,
        );
        refused(&net, &["config", "second", flag, value], flag, value);
    }
    refused(&net, &["create", "nope", "--net", "bogus"], "net", "bogus");
    refused(
        &net,
        &["config", "second", "--net", "bogus"],
        "net",
        "bogus",
    );
    // An address makes no sense with the host's network.
    let ip = format!("{}/24", s.addr(20));
    refused(
        &net,
        &["create", "nope", "--net", "host", "--ip", &ip],
        "ip",
        &ip,
    );
    refused(&net, &["config", "hostvm", "--ip", &ip], "ip", &ip);
    // A good flag next to a bad one is not applied either.
    refused(
        &net,
        &["config", "second", "--ip", &ip, "--publish", "99999:80"],
        "publish",
        "99999:80",
    );
    assert!(!net.store.vm_dirs().contains(&"nope".to_owned()));
    assert_eq!(
        policy_network(&net.store, "first")["ip"],
        format!("{first}/24")
    );
    assert_eq!(net.ip("second"), second);

    // A running VM: policy flags apply at once, but the network itself can't be
    // changed under it.
    net.store.start("first");
    let init = net.store.init_pid("first");
    let other = format!("{}/24", s.addr(30));
    refused(&net, &["config", "first", "--net", "none"], "net", "none");
    refused(&net, &["config", "first", "--ip", &other], "ip", &other);
    refused(
        &net,
        &["config", "first", "--dns", &s.gateway()],
        "dns",
        &s.gateway(),
    );
    assert_eq!(
        net.store.init_pid("first"),
        init,
        "the running vm was disturbed"
    );
    assert_eq!(net.store.status("first"), "running");
    // Once stopped, the same change is fine.
    net.store.stop("first");
    net.fvm(&["config", "first", "--ip", &other]).ok();
    assert_eq!(policy_network(&net.store, "first")["ip"], other);
    assert_eq!(net.ip("first"), s.addr(30));
    net.assert_clean();
}

// ---------------------------------------------------------------------------
// egress policy

#[test]
fn a_denied_destination_stays_unreachable_whatever_root_in_the_vm_does() {
    let test = "a_denied_destination_stays_unreachable_whatever_root_in_the_vm_does";
    if !ready(test, &["nft"]) {
        return;
    }
    let net = Net::new("netdeny");
    let b = net.bridged("b", &[]);
    let c = net.bridged("c", &[]);
    let deny = format!("{b}/32:80/tcp");
    // a: confined as usual; u: root with every capability, so its attacks really
    // change its own network namespace.
    net.bridged("a", &["--deny", &deny]);
    net.bridged("u", &["--deny", &deny, "--security", "unconfined"]);
    for vm in ["b", "c", "a", "u"] {
        net.store.start(vm);
    }
    net.serve("b");
    net.serve("c");

    let to_b = Probe::get(&b, 80);
    let to_c = Probe::get(&c, 80);
    let gw = net.subnet.gateway();
    let listener = TcpListener::bind((gw.as_str(), 0)).expect("a host listener on the gateway");
    let port = listener.local_addr().unwrap().port();
    let to_host = Probe::connect(&gw, port);
    let got = net.probe("c", &[to_b.clone(), to_host.clone()]);
    assert_eq!(got[0].as_deref(), Ok("b"), "c reaches b");
    assert_eq!(got[1].as_deref(), Ok("connected"), "c reaches the host");

    // c's policy is its own, and a and u only reach c: c's checks run beside
    // theirs. Policy changes reach running VMs at once: a deny covers the host
    // itself, another --deny adds to the list, and `none` lifts them.
    let net = &net;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            net.fvm(&["config", "c", "--deny", &format!("{gw}/32")])
                .ok();
            let got = net.probe("c", &[to_host.clone(), to_b.clone()]);
            assert_blocked("c reaching the host after --deny of it", &got[0]);
            assert_eq!(got[1].as_deref(), Ok("b"), "c still reaches b");
            net.fvm(&["config", "c", "--deny", &deny]).ok();
            let got = net.probe("c", &[to_host.clone(), to_b.clone()]);
            assert_blocked("c reaching the host after a second --deny", &got[0]);
            assert_blocked("c fetching b after a second --deny", &got[1]);
            net.fvm(&["config", "c", "--deny", "none"]).ok();
            let got = net.probe("c", &[to_b.clone(), to_host.clone()]);
            assert_eq!(got[0].as_deref(), Ok("b"), "after --deny none");
            assert_eq!(got[1].as_deref(), Ok("connected"), "after --deny none");
        });

        // Meanwhile, a and u: probes that must find a destination dropped wait
        // out PROBE_TIMEOUT, so the VMs' checks run side by side, to wait at the
        // same time.
        let checks: Vec<_> = ["a", "u"]
            .map(|vm| {
                (
                    vm,
                    scope.spawn(|| net.probe(vm, &[to_b.clone(), to_c.clone()])),
                )
            })
            .into_iter()
            .collect();
        for (vm, check) in checks {
            let got = check.join().unwrap();
            assert_blocked(&format!("{vm} (--deny {deny}) fetching b's page"), &got[0]);
            assert_eq!(got[1].as_deref(), Ok("c"), "{vm} still reaches c");
        }
        // The rule lives on the host, tied to a's link.
        let a_link = net.link("a");
        let rules = ruleset();
        assert!(
            mentions(&rules, &a_link) || mentions(&rules, &net.ip("a")),
            "no nft rule on the host mentions a's link {a_link} or address:\n{rules}"
        );
        assert!(
            mentions(&rules, &b),
            "no nft rule mentions the denied {b}:\n{rules}"
        );

        // Root in the VM tries to get around it: flush its own firewall, route
        // everything out of eth0 on-link, and take another address. (Only ever in a
        // network namespace of the VM's own: never run that on the host's.)
        let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
        for vm in ["a", "u"] {
            let ns = net.store.sh(vm, "readlink /proc/self/ns/net").ok();
            assert!(
                !ns.out().is_empty() && ns.out() != host_ns.to_str().unwrap(),
                "bridged vm {vm} is in the host's network namespace:\n{ns}"
            );
        }
        let mut attacks = Vec::new();
        for (vm, spoof) in [("a", net.subnet.addr(200)), ("u", net.subnet.addr(201))] {
            let attack = format!(
                "nft flush ruleset; ip route flush table main; ip route add default dev eth0; \
                 ip addr add {spoof}/24 dev eth0; exit 0"
            );
            let tried = net.store.sh(vm, &attack).ok();
            attacks.push((vm, spoof, attack, tried));
        }
        // u really has the spoofed address (the attack took), yet can't use it even
        // towards a VM it may reach; with its own address it still reaches c.
        let spoof = net.subnet.addr(201);
        let out = net.store.sh("u", "ip -4 -o addr show dev eth0").ok();
        assert!(
            out.stdout.contains(&format!(" {spoof}/24 ")),
            "root in the unconfined vm u could not add {spoof}, so the spoofing check means nothing:\n{out}"
        );
        let checks: Vec<_> = attacks
            .iter()
            .map(|(vm, spoof, _, _)| {
                let vm = vm.to_string();
                let probes = [
                    to_b.clone(),
                    to_b.clone().from(spoof),
                    to_c.clone(),
                    to_c.clone().from(spoof),
                ];
                scope.spawn(move || net.probe(&vm, &probes))
            })
            .collect();
        for ((vm, spoof, attack, tried), check) in attacks.iter().zip(checks) {
            let got = check.join().unwrap();
            assert_blocked(
                &format!("{vm} after `{attack}` ({tried}), fetching b"),
                &got[0],
            );
            assert_blocked(
                &format!("{vm} fetching b from the spoofed {spoof}"),
                &got[1],
            );
            assert_eq!(
                got[2].as_deref(),
                Ok("c"),
                "{vm} reaches c with its own address"
            );
            assert_blocked(
                &format!("{vm} fetching c from the spoofed {spoof}"),
                &got[3],
            );
        }
        let rules = ruleset();
        assert!(
            mentions(&rules, &a_link) || mentions(&rules, &net.ip("a")),
            "a's rules are gone from the host after root in a tried:\n{rules}"
        );
    });

    // a loses its deny.
    net.fvm(&["config", "a", "--deny", "none"]).ok();
    assert_eq!(
        net.probe1("a", to_b.clone()).as_deref(),
        Ok("b"),
        "a after --deny none"
    );
    drop(listener);
    net.assert_clean();
}

#[test]
fn nat_and_allow_decide_what_outside_the_host_a_vm_reaches() {
    let test = "nat_and_allow_decide_what_outside_the_host_a_vm_reaches";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("netnat");
    let outside = Outside::new(&net.subnet);
    // NAT is on by default: `plain` and `allowed` turn it off.
    net.bridged("plain", &["--nat", "false"]);
    net.bridged("natted", &[]);
    let allowed = net.bridged(
        "allowed",
        &["--nat", "false", "--allow", &outside.subnet.cidr()],
    );
    for vm in ["plain", "natted", "allowed"] {
        net.store.start(vm);
    }
    let there = Probe::get(&outside.addr, 80);

    // The outside answers with the address it saw the request come from.
    assert_eq!(
        net.probe1("natted", there.clone()).as_deref(),
        Ok(outside.host_addr.as_str()),
        "with --nat the outside is reached, from the host's address"
    );
    assert_blocked(
        "without --nat, the outside",
        &net.probe1("plain", there.clone()),
    );
    assert_eq!(
        net.probe1("allowed", there.clone()).as_deref(),
        Ok(allowed.as_str()),
        "--allow of the outside reaches it, from the vm's own address (no nat)"
    );

    // nat on and off on a running VM.
    net.fvm(&["config", "plain", "--nat"]).ok();
    assert_eq!(
        net.probe1("plain", there.clone()).as_deref(),
        Ok(outside.host_addr.as_str()),
        "after `config --nat`"
    );
    net.fvm(&["config", "plain", "--nat", "false"]).ok();
    assert_blocked(
        "after `config --nat false`",
        &net.probe1("plain", there.clone()),
    );
    // The default is no key; off is written out, so it stays off.
    assert_eq!(
        policy_network(&net.store, "natted")
            .get("nat")
            .map(String::as_str),
        None
    );
    assert_eq!(
        policy_network(&net.store, "plain")
            .get("nat")
            .map(String::as_str),
        Some("false")
    );
    net.assert_clean();
    drop(outside);
}

#[test]
fn a_published_port_reaches_the_vm_from_the_hosts_loopback() {
    let test = "a_published_port_reaches_the_vm_from_the_hosts_loopback";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("netpub");
    let port = free_port();
    let publish = format!("{port}:80");
    net.bridged("web", &["--publish", &publish]);
    net.bridged("other", &[]);
    net.store.start("web");
    net.store.start("other");
    net.serve("web");
    net.serve("other");

    let gw = net.subnet.gateway();
    assert_eq!(
        host_get("127.0.0.1", port).as_deref(),
        Ok("web"),
        "127.0.0.1:{port}"
    );
    assert_eq!(host_get(&gw, port).as_deref(), Ok("web"), "{gw}:{port}");

    // Changed on the running VM: gone at once, then on another port.
    net.fvm(&["config", "web", "--publish", "none"]).ok();
    assert!(
        host_get("127.0.0.1", port).is_err(),
        "127.0.0.1:{port} still answers after --publish none"
    );
    let port2 = free_port();
    net.fvm(&["config", "web", "--publish", &format!("{port2}:80")])
        .ok();
    assert_eq!(
        host_get("127.0.0.1", port2).as_deref(),
        Ok("web"),
        "127.0.0.1:{port2}"
    );
    // The other VM is untouched, and can't take a host port already published.
    assert_eq!(host_get(&net.ip("other"), 80).as_deref(), Ok("other"));
    let taken = format!("{port2}:80");
    refused(
        &net,
        &["config", "other", "--publish", &taken],
        "publish",
        &port2.to_string(),
    );
    refused(
        &net,
        &["create", "dup", "--net", "bridge", "--publish", &taken],
        "publish",
        &port2.to_string(),
    );

    // Stopped, nothing answers there any more.
    net.store.stop("web");
    assert!(
        host_get("127.0.0.1", port2).is_err() && host_connect("127.0.0.1", port2).is_err(),
        "127.0.0.1:{port2} still answers after the vm stopped"
    );
    net.assert_clean();
}

// ---------------------------------------------------------------------------
// lifecycle: nothing outlives a VM

/// Start the bridged VM `name` (address `ip`) and check that it is on the host:
/// its link on the store's bridge, and nft rules that mention the link or the
/// address (so that their absence later means something). Returns the link.
#[track_caller]
fn start_on_host(net: &Net, name: &str, ip: &str) -> String {
    net.store.start(name);
    let link = net.link(name);
    let l = links()
        .into_iter()
        .find(|l| l.name == link)
        .unwrap_or_else(|| panic!("running vm {name}: no host link {link}"));
    assert_eq!(
        l.master.as_deref(),
        Some(net.bridge().as_str()),
        "vm {name}'s link is not on the store's bridge: {}",
        l.line
    );
    let rules = ruleset();
    assert!(
        mentions(&rules, &link) || mentions(&rules, ip),
        "running vm {name}: no nft rule mentions its link {link} or address {ip}:\n{rules}"
    );
    link
}

#[test]
fn no_link_address_or_rule_outlives_a_stop_or_a_delete() {
    let test = "no_link_address_or_rule_outlives_a_stop_or_a_delete";
    if !ready(test, &["nft"]) {
        return;
    }
    let net = Net::new("netlife");
    let publish = format!("{}:80", free_port());
    let ip = net.bridged("x", &["--deny", "10.0.0.0/8:9/udp", "--publish", &publish]);
    let y_ip = net.bridged("y", &[]);
    net.create("h", &[]); // host mode: no reason to keep the bridge
    let y_link = start_on_host(&net, "y", &y_ip);

    let link = start_on_host(&net, "x", &ip);
    net.store.stop("x");
    let v = net.inspect("x");
    assert!(
        v["network"]["link"].is_null(),
        "a stopped vm has no link:\n{v:#}"
    );
    net.assert_vm_gone("after stop", &link, &ip);

    let link = start_on_host(&net, "x", &ip);
    net.fvm(&["delete", "--force", "x"]).ok();
    net.assert_vm_gone("after delete --force", &link, &ip);

    // y is untouched by all of that, and keeps the bridge.
    assert!(
        links()
            .iter()
            .any(|l| l.name == y_link && l.master.as_deref() == Some(net.bridge().as_str())),
        "y's link {y_link} left the bridge"
    );
    // Deleting the last bridged VM removes the bridge and the store's rules, though
    // a host-mode VM is left.
    net.fvm(&["delete", "--force", "y"]).ok();
    net.assert_vm_gone("after deleting y", &y_link, &y_ip);
    assert!(
        !network_support::link_exists(&net.bridge()),
        "the bridge {} is left after the store's last bridged vm was deleted",
        net.bridge()
    );
    for (table, text) in net.tables() {
        assert!(
            nft_content(&text).is_empty(),
            "the store's nft table {table} still holds rules with no bridged vm left:\n{text}"
        );
    }
    assert_eq!(net.store.vm_dirs(), ["h"]);
    net.assert_clean();
}

#[test]
fn a_crashed_vm_leaves_no_link_or_rule_once_fvm_runs_again() {
    let test = "a_crashed_vm_leaves_no_link_or_rule_once_fvm_runs_again";
    if !ready(test, &["nft"]) {
        return;
    }
    let net = Net::new("netcrash");
    let port = free_port();
    let ip = net.bridged("x", &["--publish", &format!("{port}:80")]);

    let link = start_on_host(&net, "x", &ip);
    net.serve("x");
    assert_eq!(host_get("127.0.0.1", port).as_deref(), Ok("x"));
    let init = net.store.init_pid("x").expect("a running vm has an init");
    kill9(&[init]);
    wait_until("the init is gone", || !is_alive_as(init, "fvm-init"));
    // `list` tells the truth at once; the store's watcher, which saw the init go,
    // has taken the VM's rules out (a link goes with the VM's network namespace).
    assert_eq!(net.store.status("x"), "stopped");
    net.assert_vm_gone("after a crash and `fvm list`", &link, &ip);

    // The VM works again.
    start_on_host(&net, "x", &ip);
    net.serve("x");
    assert_eq!(host_get("127.0.0.1", port).as_deref(), Ok("x"));
    net.store.stop("x");
    net.assert_vm_gone("after the restarted vm stopped", &link, &ip);
    net.assert_clean();
}

#[test]
fn a_vm_that_ended_unseen_by_the_watcher_loses_its_rules_without_a_command_on_it() {
    let test = "a_vm_that_ended_unseen_by_the_watcher_loses_its_rules_without_a_command_on_it";
    if !ready(test, &["nft"]) {
        return;
    }
    let net = Net::new("netunseen");
    let y_ip = net.bridged("y", &[]);
    let x_ip = net.bridged("x", &[]);
    let y = start_on_host(&net, "y", &y_ip);
    let x = start_on_host(&net, "x", &x_ip);
    // The watcher goes first, then x's init: x's state says it runs, its
    // rules are in, and no watcher saw its init go (as after a start killed
    // before the watcher ever saw the VM run).
    let watcher = net.store.watcher_pid().expect("the store's watcher runs");
    kill9(&[watcher]);
    wait_until("the watcher is gone", || !is_alive_as(watcher, "fvm-watch"));
    let init = net.store.init_pid("x").expect("a running vm has an init");
    kill9(&[init]);
    wait_until("the init is gone", || !is_alive_as(init, "fvm-init"));
    assert!(
        mentions(&ruleset(), &x),
        "x's rules went with no command or watcher to remove them"
    );
    // `list` starts a new watcher (a VM runs), which finds x ended from its
    // state and cleans up after it: no command on x is needed.
    net.store.fvm(&["list"]).ok();
    net.assert_vm_gone("after a new watcher found x ended", &x, &x_ip);
    let rules = ruleset();
    assert!(
        mentions(&rules, &y) && mentions(&rules, &y_ip),
        "y's rules are gone:\n{rules}"
    );
    net.store.stop("y");
    net.assert_vm_gone("after y stopped", &y, &y_ip);
    for name in ["x", "y"] {
        net.fvm(&["delete", "--force", name]).ok();
    }
    net.assert_clean();
}

/// The chains of the store's tables that mention `word` (a VM's link), as
/// `nft -a list` prints them, handles included, and the tables' own lines
/// and base chains.
fn chains_with_handles(net: &Net) -> (Vec<String>, Vec<String>) {
    let id = net.store.id().expect("the store has an id");
    let mut chains = Vec::new();
    let mut heads = Vec::new();
    for family in ["bridge", "inet"] {
        let out = host(&["nft", "-a", "list", "table", family, &format!("fvm-{id}")]);
        assert_eq!(out.code, 0, "{out}");
        let text = out.stdout;
        heads.push(text.lines().next().unwrap_or_default().to_owned());
        for chain in text.split("\n\tchain ").skip(1) {
            let chain = &chain[..chain.find("\n\t}").unwrap_or(chain.len())];
            if chain.contains(" hook ") {
                heads.push(chain.to_owned());
            } else {
                chains.push(format!("{family} {chain}"));
            }
        }
    }
    (chains, heads)
}

#[test]
fn a_vms_start_and_stop_touch_no_other_vms_rules() {
    let test = "a_vms_start_and_stop_touch_no_other_vms_rules";
    if !ready(test, &["nft"]) {
        return;
    }
    let net = Net::new("netown");
    let port = free_port();
    let a_ip = net.bridged("a", &["--deny", "10.0.0.0/8:9/udp"]);
    let b_ip = net.bridged("b", &["--publish", &format!("{port}:80")]);
    let c_ip = net.bridged("c", &["--nat", "false", "--allow", "192.0.2.0/24"]);
    let a = start_on_host(&net, "a", &a_ip);
    let b = start_on_host(&net, "b", &b_ip);
    let (before, heads) = chains_with_handles(&net);
    let of = |chains: &[String], link: &str| -> Vec<String> {
        chains
            .iter()
            .filter(|c| mentions(c, link) || c.contains(&format!("_{link} ")))
            .cloned()
            .collect()
    };
    assert_eq!(of(&before, &a).len(), 4, "a's chains:\n{before:#?}");
    assert_eq!(of(&before, &b).len(), 4, "b's chains:\n{before:#?}");

    // The third start adds its own chains; a's and b's, the tables and their
    // base chains are as they were, handles included (nothing was made again).
    let c = start_on_host(&net, "c", &c_ip);
    let (after, heads_after) = chains_with_handles(&net);
    assert_eq!(heads, heads_after, "the skeleton was made again");
    assert_eq!(of(&after, &c).len(), 4, "c's chains:\n{after:#?}");
    let others: Vec<String> = after
        .iter()
        .filter(|ch| !of(&after, &c).contains(ch))
        .cloned()
        .collect();
    assert_eq!(before, others, "c's start changed other vms' chains");

    // b's stop deletes only b's pieces; its published port goes with it.
    net.serve("b");
    assert_eq!(host_get("127.0.0.1", port).as_deref(), Ok("b"));
    net.store.stop("b");
    net.assert_vm_gone("after b stopped", &b, &b_ip);
    let (stopped, heads_stopped) = chains_with_handles(&net);
    assert_eq!(heads, heads_stopped, "the skeleton was made again");
    let mut want = of(&before, &a);
    want.extend(of(&after, &c));
    want.sort();
    let mut stopped = stopped;
    stopped.sort();
    assert_eq!(stopped, want, "b's stop changed other vms' chains");
    assert!(
        host_get("127.0.0.1", port).is_err(),
        "b's port is still published"
    );

    // A live change of c's rules replaces only c's pieces.
    net.fvm(&["config", "c", "--deny", "10.0.0.0/8:7/tcp"]).ok();
    let (changed, _) = chains_with_handles(&net);
    assert_eq!(of(&changed, &a), of(&before, &a), "c's change touched a");
    assert!(
        of(&changed, &c)
            .iter()
            .any(|ch| ch.contains("dport 7 drop")),
        "c's change is not in its chains:\n{changed:#?}"
    );

    // a crashes: the store's watcher (or the next command) rebuilds the whole
    // firewall from the VMs that run, as after anything abnormal: a's pieces
    // go, c's are made again as they were (with new handles).
    let init = net.store.init_pid("a").expect("a running vm has an init");
    kill9(&[init]);
    wait_until("a's init is gone", || !is_alive_as(init, "fvm-init"));
    assert_eq!(net.store.status("a"), "stopped");
    net.assert_vm_gone("after a crashed", &a, &a_ip);
    let (crashed, _) = chains_with_handles(&net);
    let unhandled = |chains: &[String]| -> Vec<String> {
        chains
            .iter()
            .map(|ch| {
                ch.lines()
                    .map(|l| l.split(" # handle ").next().unwrap_or(l))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect()
    };
    assert_eq!(
        unhandled(&crashed),
        unhandled(&of(&changed, &c)),
        "a's cleanup changed c's rules"
    );
    net.serve("c");
    net.store.stop("c");
    net.assert_vm_gone("after c stopped", &c, &c_ip);
    for name in ["a", "b", "c"] {
        net.fvm(&["delete", "--force", name]).ok();
    }
    net.assert_clean();
}

#[test]
fn a_damaged_firewall_is_made_whole_again_by_the_next_start_or_doctor() {
    let test = "a_damaged_firewall_is_made_whole_again_by_the_next_start_or_doctor";
    if !ready(test, &["nft"]) {
        return;
    }
    let net = Net::new("netheal");
    let a_ip = net.bridged("a", &[]);
    let b_ip = net.bridged("b", &[]);
    let a = start_on_host(&net, "a", &a_ip);
    let id = net.store.id().expect("the store has an id");
    let table = format!("fvm-{id}");
    let has = |family: &str, word: &str| {
        network_support::nft_table(family, &table).is_some_and(|t| mentions(&t, word))
    };
    // The inet table is gone (a hand's `nft delete table`): b's start can't add
    // its pieces to it, and rebuilds the whole firewall, a's rules included.
    host(&["nft", "delete", "table", "inet", &table]).ok();
    let b = start_on_host(&net, "b", &b_ip);
    for (who, ip) in [("a", &a_ip), ("b", &b_ip)] {
        assert!(
            has("inet", ip),
            "vm {who}'s rules are not back in the inet table"
        );
    }
    // The bridge table is gone: `doctor --cleanup` makes it again, with both
    // VMs' ports in it.
    host(&["nft", "delete", "table", "bridge", &table]).ok();
    net.fvm(&["doctor", "--cleanup"]).ok();
    for (who, link) in [("a", &a), ("b", &b)] {
        assert!(
            has("bridge", link),
            "vm {who}'s port is not back in the bridge table"
        );
    }
    net.store.stop("a");
    net.assert_vm_gone("after a stopped", &a, &a_ip);
    assert!(
        has("bridge", &b) && has("inet", &b_ip),
        "b's rules went with a's"
    );
    net.store.stop("b");
    net.assert_vm_gone("after b stopped", &b, &b_ip);
    for name in ["a", "b"] {
        net.fvm(&["delete", "--force", name]).ok();
    }
    net.assert_clean();
}

#[test]
fn a_bridged_start_or_stop_killed_midway_leaves_at_most_its_own_rules() {
    let test = "a_bridged_start_or_stop_killed_midway_leaves_at_most_its_own_rules";
    if !ready(test, &["nft"]) {
        return;
    }
    let net = Net::new("netkill");
    let y_ip = net.bridged("y", &[]);
    let x_ip = net.bridged("x", &["--publish", &format!("{}:80", free_port())]);
    let y = start_on_host(&net, "y", &y_ip);
    let x = start_on_host(&net, "x", &x_ip);
    for (round, delay) in [1u64, 3, 5, 8, 11, 15, 20, 26, 33, 40]
        .into_iter()
        .enumerate()
    {
        let op = if net.store.status("x") == "running" {
            "stop"
        } else {
            "start"
        };
        let bg = net.store.background(&[op, "x"]);
        std::thread::sleep(std::time::Duration::from_millis(delay));
        kill9(&[bg.pid()]);
        let _ = bg.finish();
        let when = format!("round {round}: {op} x killed after {delay} ms");
        // The next command tells the truth about x and cleans up after it.
        let running = net.store.status("x") == "running";
        let rules = ruleset();
        if running {
            assert!(
                mentions(&rules, &x),
                "{when}: x runs without its rules:\n{rules}"
            );
        } else {
            net.assert_vm_gone(&when, &x, &x_ip);
        }
        // y's rules stay, whatever happened to x's.
        assert!(
            mentions(&rules, &y) && mentions(&rules, &y_ip),
            "{when}: y's rules are gone:\n{rules}"
        );
    }
    if net.store.status("x") == "running" {
        net.store.stop("x");
    }
    net.assert_vm_gone("after x stopped", &x, &x_ip);
    start_on_host(&net, "x", &x_ip);
    net.serve("x");
    net.store.stop("x");
    net.store.stop("y");
    net.assert_vm_gone("after y stopped", &y, &y_ip);
    for name in ["x", "y"] {
        net.fvm(&["delete", "--force", name]).ok();
    }
    net.assert_clean();
}

/// A network namespace `fvmtpn<hex>` with a veth whose host end
/// (`fvmtpx<hex>`) is on a bridge: a port no VM of the store owns. Removed on
/// drop.
struct StrayPort {
    netns: String,
    link: String,
}

impl StrayPort {
    #[track_caller]
    fn new(bridge: &str, group: &str, addr: &str) -> StrayPort {
        let hex = random_hex(6);
        let port = StrayPort {
            netns: format!("fvmtpn{hex}"),
            link: format!("fvmtpx{hex}"),
        };
        let peer = format!("fvmtpy{hex}");
        let ns = port.netns.clone();
        for argv in [
            &["ip", "netns", "add", &ns][..],
            &[
                "ip", "link", "add", &port.link, "type", "veth", "peer", "name", &peer,
            ],
            &["ip", "link", "set", &peer, "netns", &ns],
            &[
                "ip", "link", "set", &port.link, "master", bridge, "group", group, "up",
            ],
            &["ip", "-n", &ns, "link", "set", "lo", "up"],
            &["ip", "-n", &ns, "addr", "add", addr, "dev", &peer],
            &["ip", "-n", &ns, "link", "set", &peer, "up"],
        ] {
            host(argv).ok();
        }
        port
    }

    /// Whether a TCP connection from the namespace to `ip:port` is made.
    fn connects(&self, ip: &str, port: u16) -> bool {
        let script = format!(
            "import socket,sys\ns=socket.socket()\ns.settimeout(2)\n\
             sys.exit(0 if s.connect_ex(('{ip}',{port}))==0 else 1)"
        );
        host(&[
            "ip",
            "netns",
            "exec",
            &self.netns,
            common::python(),
            "-c",
            &script,
        ])
        .code
            == 0
    }
}

impl Drop for StrayPort {
    fn drop(&mut self) {
        host(&["ip", "netns", "del", &self.netns]);
        if network_support::link_exists(&self.link) {
            host(&["ip", "link", "del", "dev", &self.link]);
        }
    }
}

#[test]
fn a_port_of_the_store_without_its_vms_rules_sends_nothing() {
    let test = "a_port_of_the_store_without_its_vms_rules_sends_nothing";
    if !ready(test, &["nft"]) {
        return;
    }
    let net = Net::new("netport");
    let ip = net.bridged("x", &[]);
    let link = start_on_host(&net, "x", &ip);
    net.serve("x");
    // The VM's port is in the store's interface group.
    let shown = host(&["ip", "-o", "link", "show", "dev", &link]).stdout;
    let group = shown
        .split_whitespace()
        .skip_while(|w| *w != "group")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        group.parse::<u32>().is_ok_and(|g| g != 0),
        "vm x's port is in no group of the store's:\n{shown}"
    );
    let free = net.subnet.addr(250);
    // A port in the store's group that no VM's rules know: nothing passes,
    // not to a VM, not to the host.
    let stray = StrayPort::new(&net.bridge(), &group, &format!("{free}/24"));
    assert!(
        !stray.connects(&ip, 80),
        "a port of the store without rules reached vm x"
    );
    drop(stray);
    // The same port outside the store's group (another bridge's business to
    // police) gets through: the test's port works.
    let other = StrayPort::new(&net.bridge(), "default", &format!("{free}/24"));
    assert!(other.connects(&ip, 80), "the test's port does not work");
    drop(other);
    net.store.stop("x");
    net.assert_vm_gone("after stop", &link, &ip);
    net.fvm(&["delete", "--force", "x"]).ok();
    net.assert_clean();
}

// ---------------------------------------------------------------------------
// addresses: allocation, list, inspect, the policy file, the VM's own view

#[test]
fn list_and_inspect_show_the_address_and_no_address_is_given_twice() {
    let test = "list_and_inspect_show_the_address_and_no_address_is_given_twice";
    if !ready(test, &[]) {
        return;
    }
    let net = Net::new("netaddr");
    let s = &net.subnet;
    let gw = s.gateway();
    // The lowest free address from .2 up, skipping one given by --ip.
    assert_eq!(net.bridged("a", &["--dns", &gw]), s.addr(2));
    assert_eq!(
        net.bridged("b", &["--ip", &format!("{}/24", s.addr(3))]),
        s.addr(3)
    );
    assert_eq!(net.bridged("c", &[]), s.addr(4));
    net.create("h", &[]);
    net.create("n", &["--net", "none"]);

    // The policy file records it.
    let policy = policy_network(&net.store, "a");
    assert_eq!(
        policy.get("mode").map(String::as_str),
        Some("bridge"),
        "{policy:?}"
    );
    assert_eq!(
        policy.get("ip"),
        Some(&format!("{}/24", s.addr(2))),
        "{policy:?}"
    );

    // list --json, the list table and inspect, stopped and running.
    let check = |when: &str| {
        let vms = net.store.list();
        let ip_of = |name: &str| {
            vms.iter()
                .find(|v| v["name"] == name)
                .map(|v| v["ip"].clone())
                .unwrap_or_else(|| panic!("{name} is not in the list"))
        };
        assert_eq!(ip_of("a"), s.addr(2).as_str(), "{when}: list --json");
        assert_eq!(ip_of("b"), s.addr(3).as_str(), "{when}: list --json");
        assert!(
            ip_of("h").is_null(),
            "{when}: a host-mode vm has no ip of its own"
        );
        assert!(ip_of("n").is_null(), "{when}: a --net none vm has no ip");
        let table = net.fvm(&["list"]).ok();
        let rows: BTreeMap<&str, Vec<&str>> = table
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((*cols.first()?, cols))
            })
            .collect();
        assert!(
            table
                .stdout
                .lines()
                .next()
                .unwrap_or_default()
                .contains("IP"),
            "{table}"
        );
        assert_eq!(
            rows["a"][2],
            s.addr(2),
            "{when}: list's IP column:\n{table}"
        );
        assert_eq!(
            rows["c"][2],
            s.addr(4),
            "{when}: list's IP column:\n{table}"
        );
        assert_eq!(rows["h"][2], "-", "{when}: list's IP column:\n{table}");
        let v = net.inspect("a");
        assert_eq!(v["ip"], s.addr(2).as_str(), "{when}: inspect:\n{v:#}");
        assert_eq!(v["network"]["mode"], "bridge", "{when}: inspect:\n{v:#}");
        assert_eq!(
            v["network"]["ip"],
            format!("{}/24", s.addr(2)).as_str(),
            "{when}"
        );
        v
    };
    let stopped = check("stopped");
    assert!(
        stopped["network"]["link"].is_null(),
        "a stopped vm has no link:\n{stopped:#}"
    );
    net.store.start("a");
    check("running");
    let link = net.link("a");
    let host_side = links().into_iter().find(|l| l.name == link);
    assert_eq!(
        host_side.as_ref().and_then(|l| l.master.clone()),
        Some(net.bridge()),
        "a's link {link} on the host: {host_side:?}"
    );

    // The VM's own view: lo up, eth0 with its address, the default route via the
    // bridge's address (which the bridge holds), and its DNS server; the host's
    // resolv.conf is untouched.
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let out = net
        .store
        .sh(
            "a",
            "ip -o link show lo; ip -4 -o addr show dev eth0; ip -4 route show default; \
             echo ---; cat /etc/resolv.conf",
        )
        .ok();
    let (ip_view, resolv) = out.stdout.split_once("---\n").expect("marker");
    assert!(
        ip_view.lines().next().unwrap_or_default().contains("UP"),
        "lo:\n{out}"
    );
    assert!(
        ip_view.contains(&format!(" {}/24 ", s.addr(2))),
        "eth0:\n{out}"
    );
    assert!(
        ip_view.contains(&format!("default via {gw} ")),
        "route:\n{out}"
    );
    assert!(
        resolv
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["nameserver", &gw]),
        "--dns {gw} is not in the vm's /etc/resolv.conf:\n{out}"
    );
    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        host_resolv,
        "the host's resolv.conf"
    );
    let bridge_addr = host(&["ip", "-4", "-o", "addr", "show", "dev", &net.bridge()]).ok();
    assert!(
        bridge_addr.stdout.contains(&format!(" {gw}/24 ")),
        "the bridge does not hold {gw}/24:\n{bridge_addr}"
    );
    net.store.stop("a");

    // Never two VMs on one address: VMs made at the same time, and a copy.
    let names: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    let jobs: Vec<_> = names
        .iter()
        .map(|n| net.store.background(&["create", n, "--net", "bridge"]))
        .collect();
    for job in jobs {
        job.finish().ok();
    }
    // (A copy may get its address when it first starts.)
    net.fvm(&["copy", "c", "c2"]).ok();
    net.store.start("c2");
    net.store.stop("c2");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for vm in net.store.list() {
        let name = vm["name"].as_str().unwrap_or_default().to_owned();
        let Some(ip) = vm["ip"].as_str() else {
            continue;
        };
        assert!(s.contains(ip) && ip != gw, "{name} has {ip}");
        if let Some(other) = seen.insert(ip.to_owned(), name.clone()) {
            panic!("{name} and {other} both have {ip}");
        }
    }
    assert_eq!(
        seen.len(),
        3 + names.len() + 1,
        "every bridged vm has an address: {seen:?}"
    );
    net.assert_clean();
}

// ---------------------------------------------------------------------------
// the store's bridge and subnet

#[test]
fn the_store_network_settings_show_defaults_and_refuse_unsafe_changes() {
    let test = "the_store_network_settings_show_defaults_and_refuse_unsafe_changes";
    if !ready(test, &[]) {
        return;
    }
    // Defaults of a new store (read only: nothing is made on the host).
    let fresh = TestStore::new("netdefaults");
    let out = fresh.fvm(&["network"]).ok();
    assert!(
        out.stdout.contains("fvm0") && out.stdout.contains("10.77.0.0/24"),
        "{out}"
    );
    let v = network_settings(&fresh);
    assert_eq!(v["bridge"], "fvm0", "{v:#}");
    assert_eq!(v["subnet"], "10.77.0.0/24", "{v:#}");
    assert_eq!(v["gateway"], "10.77.0.1", "{v:#}");
    fresh.assert_clean();
    drop(fresh);

    let net = Net::new("netset");
    let v = network_settings(&net.store);
    assert_eq!(v["bridge"], net.bridge().as_str(), "{v:#}");
    assert_eq!(v["subnet"], net.subnet.cidr().as_str(), "{v:#}");
    assert_eq!(v["gateway"], net.subnet.gateway().as_str(), "{v:#}");

    let bridge = net.bridge();
    let cidr = net.subnet.cidr();
    let long = format!("fvmt{}", "a".repeat(12));
    for (flag, value, args) in [
        (
            "subnet",
            "10.200.0.0/33",
            [bridge.as_str(), "10.200.0.0/33"],
        ),
        ("subnet", "bogus", [bridge.as_str(), "bogus"]),
        ("subnet", "300.1.1.0/24", [bridge.as_str(), "300.1.1.0/24"]),
        (
            "subnet",
            "10.200.0.1/32",
            [bridge.as_str(), "10.200.0.1/32"],
        ),
        ("bridge", long.as_str(), [long.as_str(), cidr.as_str()]),
        ("bridge", "fvm/x", ["fvm/x", cidr.as_str()]),
    ] {
        refused(
            &net,
            &["network", "--bridge", args[0], "--subnet", args[1]],
            flag,
            value,
        );
    }

    net.bridged("v", &[]);
    net.store.start("v");
    let elsewhere = Subnet::claim();
    let renamed = net.fresh_bridge_name();
    // Not while a bridged VM runs.
    for (b, c) in [(&bridge, elsewhere.cidr()), (&renamed, cidr.clone())] {
        let before = net.store.snapshot();
        let out = net.fvm(&["network", "--bridge", b, "--subnet", &c]);
        assert_eq!(out.code, 125, "changed under a running vm:\n{out}");
        assert!(
            out.stderr.starts_with("fvm: ") && out.stderr.lines().count() == 1,
            "{out}"
        );
        assert_eq!(before, net.store.snapshot());
    }
    net.store.stop("v");
    // Not to a subnet that leaves a VM's address out.
    let before = net.store.snapshot();
    let out = net.fvm(&[
        "network",
        "--bridge",
        &bridge,
        "--subnet",
        &elsewhere.cidr(),
    ]);
    assert_eq!(out.code, 125, "v's address left outside the subnet:\n{out}");
    assert!(
        out.stderr.contains("\"v\"") || out.stderr.contains(&net.ip("v")),
        "{out}"
    );
    assert_eq!(before, net.store.snapshot());

    // A new bridge name is fine while nothing runs, and is what VMs use next.
    net.fvm(&["network", "--bridge", &renamed, "--subnet", &cidr])
        .ok();
    assert_eq!(network_settings(&net.store)["bridge"], renamed.as_str());
    net.store.start("v");
    let link = net.link("v");
    assert!(
        links()
            .iter()
            .any(|l| l.name == link && l.master.as_deref() == Some(renamed.as_str())),
        "v's link {link} is not on the new bridge {renamed}"
    );
    let gw = net.subnet.gateway();
    let ip = net.serve("v");
    assert_eq!(host_get(&ip, 80).as_deref(), Ok("v"));
    let held = host(&["ip", "-4", "-o", "addr", "show", "dev", &renamed]).ok();
    assert!(held.stdout.contains(&format!(" {gw}/24 ")), "{held}");
    net.assert_clean();
}

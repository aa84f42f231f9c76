//! The "Names on the bridge" section of docs/BENCHMARKS.md: lookups per second
//! through a store's resolver (`fvm-dns`, on the bridge's address), from inside
//! a bridged VM, for a VM's name (answered by the resolver) and for a name it
//! forwards to an upstream, next to the same lookups made by a host process
//! straight to that upstream on loopback.
//!
//! The upstream is the benchmark's own: a thread of this process answering
//! every query on 127.0.0.1 (a port the kernel picks) with one A record, which
//! the store is set to forward to (`fvm network --upstream-dns`). The lookups
//! are sequential UDP queries, each waiting for its answer, made by this
//! benchmark's own helper (`fvm-bench dns-query`, run in the VM with `fvm run`,
//! which the VM sees on the host's filesystem); only the loop is timed. Rounds
//! alternate the three subjects. Traffic goes only to loopback and to the
//! benchmark's own bridge.

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::measure::{Stats, check_output, median_ratio, stdout_of};
use crate::store::Store;
use crate::table::{Align, Table, ratio};

pub const BEGIN: &str = "<!-- bench:dns:begin -->";
pub const END: &str = "<!-- bench:dns:end -->";

const VM: &str = "dns-client";
const PEER: &str = "dns-peer";
/// The forwarded name (the upstream answers any).
const FORWARDED: &str = "mirror.fvm-bench.example";

#[derive(Debug, Clone)]
pub struct Params {
    pub rounds: usize,
    /// Lookups per subject per round.
    pub lookups: usize,
    pub subnet: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DnsBench {
    pub rounds: usize,
    pub lookups: usize,
    /// Lookups per second, per round.
    pub vm_name: Vec<f64>,
    pub forwarded: Vec<f64>,
    pub host: Vec<f64>,
}

/// A DNS server on 127.0.0.1 answering every query with one A record
/// (192.0.2.1), on a thread that lives as long as the process.
fn start_upstream() -> Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("binding the upstream")?;
    let addr = socket.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if let Some(answer) = answer(&buf[..n]) {
                let _ = socket.send_to(&answer, peer);
            }
        }
    });
    Ok(addr)
}

/// The answer to one query: its header and question, QR and RA set, one A record.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += usize::from(query[i]) + 1;
    }
    let end = i + 5;
    let mut out = query.get(..end)?.to_vec();
    out[2] |= 0x80;
    out[3] = 0x80;
    out[6..8].copy_from_slice(&1u16.to_be_bytes());
    out[8..12].fill(0);
    out.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    Some(out)
}

/// One A query for `name` with id `id`.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// `fvm-bench dns-query`: `count` lookups of `name` at `server`, one after
/// another; prints the nanoseconds they took. Fails on a timeout or an error
/// answer.
pub fn lookups(server: &str, name: &str, count: usize) -> Result<()> {
    let server: SocketAddr = match server.parse() {
        Ok(a) => a,
        Err(_) => format!("{server}:53").parse().context("--server")?,
    };
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 1500];
    let began = Instant::now();
    for n in 0..count {
        let id = n as u16;
        socket.send(&query(name, id))?;
        loop {
            let got = socket
                .recv(&mut buf)
                .with_context(|| format!("lookup {n} of {name} at {server}"))?;
            if got >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                if buf[3] & 0x0f != 0 {
                    bail!("{name} at {server}: rcode {}", buf[3] & 0x0f);
                }
                break;
            }
        }
    }
    println!("{}", began.elapsed().as_nanos());
    Ok(())
}

fn per_second(ns_text: &str, lookups: usize) -> Result<f64> {
    let ns: f64 = ns_text.trim().parse().context("the helper's nanoseconds")?;
    Ok(lookups as f64 / (ns / 1e9))
}

pub fn measure(store: &Store, p: &Params) -> Result<DnsBench> {
    let upstream = start_upstream()?;
    let bridge = crate::network::free_bridge_name()?;
    let subnet = crate::network::choose_subnet(p.subnet.as_deref(), 4)?;
    eprintln!("fvm-bench: dns: bridge {bridge}, subnet {subnet}, upstream {upstream}");
    check_output(store.fvm().args([
        "network",
        "--bridge",
        &bridge,
        "--subnet",
        &subnet.to_string(),
        "--upstream-dns",
        &upstream.to_string(),
    ]))?;
    let helper = std::env::current_exe().context("locating fvm-bench")?;
    let helper = helper.to_string_lossy().into_owned();
    for vm in [VM, PEER] {
        check_output(store.create_command(vm).args(["--net", "bridge"]))?;
        store.start(vm)?;
    }
    let result = (|| {
        let gateway = stdout_of(store.fvm().args([
            "run",
            VM,
            "--",
            "sh",
            "-c",
            "sed -n 's/^nameserver //p' /etc/resolv.conf",
        ]))?
        .trim()
        .to_owned();
        let count = p.lookups.to_string();
        let in_vm = |name: &str| -> Result<f64> {
            let out = stdout_of(store.fvm().args([
                "run",
                VM,
                "--",
                &helper,
                "dns-query",
                "--server",
                &gateway,
                "--name",
                name,
                "--count",
                &count,
            ]))?;
            per_second(&out, p.lookups)
        };
        let on_host = || -> Result<f64> {
            let out = stdout_of(Command::new(&helper).args([
                "dns-query",
                "--server",
                &upstream.to_string(),
                "--name",
                FORWARDED,
                "--count",
                &count,
            ]))?;
            per_second(&out, p.lookups)
        };
        // A warm-up of each, untimed.
        in_vm(PEER)?;
        in_vm(FORWARDED)?;
        on_host()?;
        let mut b = DnsBench {
            rounds: p.rounds,
            lookups: p.lookups,
            ..DnsBench::default()
        };
        for round in 0..p.rounds {
            eprintln!("fvm-bench: dns: round {}/{}", round + 1, p.rounds);
            // A B C, then C B A: each subject first as often as last.
            if round % 2 == 0 {
                b.vm_name.push(in_vm(PEER)?);
                b.forwarded.push(in_vm(FORWARDED)?);
                b.host.push(on_host()?);
            } else {
                b.host.push(on_host()?);
                b.forwarded.push(in_vm(FORWARDED)?);
                b.vm_name.push(in_vm(PEER)?);
            }
        }
        Ok(b)
    })();
    for vm in [VM, PEER] {
        store.stop(vm)?;
        store.delete(vm)?;
    }
    result
}

pub fn render(b: &DnsBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n## Names on the bridge\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- store: {store}\n- rounds: {} timed, after 1 \
         warm-up, alternating the subjects (A B C, then C B A); {} sequential lookups per \
         subject per round\n",
        b.rounds, b.lookups
    );
    let _ = writeln!(
        s,
        "Lookups per second, each waiting for its answer (UDP, one A query at a time). \
         `vm name`: from a bridged VM, another VM's name, answered by the store's \
         resolver. `forwarded`: from a bridged VM, a name the resolver forwards to the \
         upstream. `host → upstream`: a host process asking that upstream (the \
         benchmark's own, on 127.0.0.1) directly: the baseline.\n"
    );
    let mut table = Table::of_stats("lookups/s", &[("vs host", Align::Right)]);
    for (name, shown, samples) in [
        (
            "vm name",
            "fvm run VM -- fvm-bench dns-query --server GATEWAY --name PEER",
            &b.vm_name,
        ),
        (
            "forwarded",
            "fvm run VM -- fvm-bench dns-query --server GATEWAY --name NAME",
            &b.forwarded,
        ),
        (
            "host → upstream",
            "fvm-bench dns-query --server 127.0.0.1:PORT --name NAME",
            &b.host,
        ),
    ] {
        if let Some(st) = Stats::of(samples) {
            let vs =
                median_ratio(samples, &b.host).map_or("–".to_owned(), |r| ratio(r, Some(1.0)));
            table.stats_row(name, shown, &st, 0, [vs]);
        }
    }
    s.push_str(&table.render());
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_answers_a_query_with_one_record() {
        let q = query("a.example", 7);
        let a = answer(&q).unwrap();
        assert_eq!(&a[..2], &7u16.to_be_bytes());
        assert_eq!(a[2] & 0x80, 0x80);
        assert_eq!(&a[6..8], &1u16.to_be_bytes());
        assert_eq!(&a[a.len() - 4..], &[192, 0, 2, 1]);
        assert!(answer(&q[..12]).is_none());
    }

    #[test]
    fn renders_with_ratios_against_the_host() {
        let b = DnsBench {
            rounds: 2,
            lookups: 10,
            vm_name: vec![1000.0, 1000.0],
            forwarded: vec![500.0, 500.0],
            host: vec![2000.0, 2000.0],
        };
        let s = render(&b, "fvm-bench --dns-only", "d", "k", "s");
        assert!(s.starts_with(BEGIN) && s.trim_end().ends_with(END), "{s}");
        assert!(s.contains("vm name"), "{s}");
    }
}

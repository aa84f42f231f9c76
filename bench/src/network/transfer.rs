//! TCP throughput from the host into a bridged VM, next to loopback on the host.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use anyhow::{Context, Result};

use super::{BRIDGED, NetworkBench, Params};
use crate::measure::Stats;
use crate::store::Store;
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, code, factor as x, ratio};
use crate::throughput::{self, Receiver};

/// Throughput: the VM runs a receiver per transfer (through `fvm run`, which execs
/// into the running VM), the host another; the paths take turns going first.
pub(super) fn measure(store: &Store, p: &Params, b: &mut NetworkBench) -> Result<()> {
    let bytes = p.mib as u64 * (1 << 20);
    let gib = bytes as f64 / f64::from(1u32 << 30);
    let exe = std::env::current_exe().context("locating fvm-bench")?;
    let ip: Ipv4Addr = b.vm_ip.parse().context("the VM's address")?;
    store.start(BRIDGED).context("starting the bridged VM")?;
    let into_vm = || -> Result<f64> {
        let mut cmd = store.fvm();
        cmd.args(["run", BRIDGED, "--"])
            .arg(&exe)
            .args(["recv", "--listen", &format!("{ip}:0")]);
        let receiver = Receiver::spawn(&mut cmd)?;
        let took = throughput::send(SocketAddr::from((ip, receiver.port)), bytes)?;
        receiver.finish()?;
        Ok(gib / took.as_secs_f64())
    };
    let over_lo = || -> Result<f64> {
        let mut cmd = Command::new(&exe);
        cmd.args(["recv", "--listen", "127.0.0.1:0"]);
        let receiver = Receiver::spawn(&mut cmd)?;
        let took = throughput::send(SocketAddr::from(([127, 0, 0, 1], receiver.port)), bytes)?;
        receiver.finish()?;
        Ok(gib / took.as_secs_f64())
    };
    eprintln!(
        "fvm-bench: network: throughput, 1 warm-up + {} timed transfers of {} MiB each way",
        p.transfers, p.mib
    );
    for round in 0..=p.transfers {
        let (veth, lo) = if round % 2 == 0 {
            let v = into_vm().context("sending into the VM")?;
            (v, over_lo().context("sending over loopback")?)
        } else {
            let l = over_lo().context("sending over loopback")?;
            (into_vm().context("sending into the VM")?, l)
        };
        if round > 0 {
            b.rates.bridge.push(veth);
            b.rates.host.push(lo);
        }
    }
    store.stop(BRIDGED).context("stopping the bridged VM")?;
    Ok(())
}

/// The throughput table.
pub fn render(s: &mut String, b: &NetworkBench) {
    let size = if b.mib.is_multiple_of(1024) {
        format!("{} GiB", b.mib / 1024)
    } else {
        format!("{} MiB", b.mib)
    };
    let _ = writeln!(
        s,
        "\nThroughput: {size} over one TCP connection per transfer, from the benchmark on \
         the host to a receiver that reads and discards (`fvm-bench recv`, the benchmark's \
         own binary, run inside the VM by its host path); {} transfers on each path after 1 \
         warm-up, the two paths taking turns going first. Time from connect until the \
         receiver has acknowledged the last byte.\n",
        b.transfers
    );
    let mut table = Table::new(&[
        ("path", L),
        ("receiver", L),
        ("median GiB/s", R),
        ("p10 GiB/s", R),
        ("p90 GiB/s", R),
        ("vs loopback", R),
    ]);
    let lo = Stats::of(&b.rates.host).map(|st| st.median);
    for (path, receiver, rates) in [
        (
            "host → bridged VM (veth, bridge)",
            format!(
                "fvm --root DIR run VM -- fvm-bench recv --listen {}:0",
                b.vm_ip
            ),
            &b.rates.bridge,
        ),
        (
            "loopback on the host",
            "fvm-bench recv --listen 127.0.0.1:0".to_owned(),
            &b.rates.host,
        ),
    ] {
        let Some(st) = Stats::of(rates) else {
            continue;
        };
        table.row([
            path.to_owned(),
            code(&receiver),
            format!("{:.2}", st.median),
            format!("{:.2}", st.p10),
            format!("{:.2}", st.p90),
            ratio(st.median, lo),
        ]);
    }
    s.push_str(&table.render());
    let _ = writeln!(
        s,
        "\nMedian of the per-round ratios into the VM / loopback: {} ({}).\n",
        x(b.rates.ratio()),
        b.rates
            .ratios()
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

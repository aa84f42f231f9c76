//! The "Web console" section of docs/BENCHMARKS.md: what `fvm ui` costs the host
//! while it serves a store of running VMs, with no page open (A) and with the VM
//! list open in a browser (B), in alternating windows A B A B.
//!
//! N VMs are created and started, then `fvm --root DIR ui` serves them on a free
//! loopback port. In each window the server's CPU time (utime + stime of
//! /proc/PID/stat) is read at its start and end, and its resident memory
//! (VmRSS) at the end. For a B window the list page is opened in chromium by
//! playwright-core (installed with `npm ci` from crates/ui/tests/browser's
//! lockfile into the store's directory), and the window starts once the page
//! has loaded and its WebSocket is live. The section is skipped, with why, where
//! node, npm or chromium is missing or fvm was built without the console's
//! scripts.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::store::Store;
use crate::table::Align::Right as R;
use crate::table::Table;

pub const BEGIN: &str = "<!-- bench:ui:begin -->";
pub const END: &str = "<!-- bench:ui:end -->";

const CHROMIUM: &str = "/usr/bin/chromium";

#[derive(Debug, Clone)]
pub struct Params {
    pub vms: usize,
    /// Length of each window.
    pub window: Duration,
    /// Windows of each kind (A and B alternate).
    pub rounds: usize,
}

/// One window's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub page_open: bool,
    /// CPU time of the server over the window, in percent of one CPU.
    pub cpu_percent: f64,
    pub rss_kib: u64,
}

#[derive(Debug, Clone)]
pub struct UiBench {
    pub vms: usize,
    pub window_s: f64,
    pub windows: Vec<Window>,
    /// Why nothing was measured.
    pub skipped: Option<String>,
}

/// The server's CPU time so far, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("a /proc stat line")? + 2..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Fields 14 and 15 of the line; `rest` starts at field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_ascii_whitespace().next()?.parse().ok())
        .context("VmRSS in /proc/PID/status")
}

/// Clock ticks a second (USER_HZ): 100 on Linux.
const TICKS: f64 = 100.0;

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The page-opening script and its node_modules, in `dir`.
fn browser(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/ui/tests/browser");
    std::fs::create_dir_all(dir)?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(src.join(f), dir.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let status = Command::new("npm")
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--silent",
        ])
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .current_dir(dir)
        .status()
        .context("running npm ci")?;
    if !status.success() {
        bail!("npm ci in {} failed", dir.display());
    }
    let script = dir.join("open.mjs");
    std::fs::write(
        &script,
        "import { chromium } from 'playwright-core';\n\
         const b = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox'] });\n\
         const p = await b.newPage();\n\
         await p.goto(process.env.URL);\n\
         await p.waitForSelector('table.vms');\n\
         await p.waitForFunction(() => document.getElementById('conn').textContent === 'live');\n\
         console.log('ready');\n\
         process.stdin.resume();\n\
         process.stdin.on('end', async () => { await b.close(); process.exit(0); });\n",
    )?;
    Ok(script)
}

/// Kills and reaps the child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn measure(store: &Store, p: &Params) -> Result<UiBench> {
    let skipped = |why: &str| UiBench {
        vms: p.vms,
        window_s: p.window.as_secs_f64(),
        windows: Vec::new(),
        skipped: Some(why.to_owned()),
    };
    if !on_path("node") || !on_path("npm") || !Path::new(CHROMIUM).is_file() {
        return Ok(skipped("needs node, npm and chromium"));
    }
    let names: Vec<String> = (0..p.vms).map(|i| format!("ui-{i}")).collect();
    eprintln!("fvm-bench: ui: {} running VMs", p.vms);
    for n in &names {
        store.create(n)?;
        store.start(n)?;
    }
    let mut server = store
        .fvm()
        .args(["ui", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting fvm ui")?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().context("its stdout")?).read_line(&mut line)?;
    let Some(url) = line.trim().strip_prefix("fvm ui: ").map(str::to_owned) else {
        let mut err = String::new();
        let _ = server.stderr.take().map(|mut e| e.read_to_string(&mut err));
        let _ = server.wait();
        return Ok(skipped(&format!("fvm ui did not start: {}", err.trim())));
    };
    let pid = server.id();
    let server = Reaped(server);
    let script = browser(&store.root().join("ui-browser"))?;
    let mut windows = Vec::new();
    for round in 0..p.rounds * 2 {
        let page_open = round % 2 == 1;
        let page = if page_open {
            let mut child = Command::new("node")
                .arg(&script)
                .env("URL", &url)
                .env("CHROMIUM", CHROMIUM)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting node")?;
            let mut ready = String::new();
            BufReader::new(child.stdout.take().context("its stdout")?).read_line(&mut ready)?;
            if ready.trim() != "ready" {
                bail!("the page did not load");
            }
            Some(Reaped(child))
        } else {
            // The settle after a page closed: its WebSocket's end.
            std::thread::sleep(Duration::from_secs(1));
            None
        };
        let (t0, c0) = (Instant::now(), cpu_ticks(pid)?);
        std::thread::sleep(p.window);
        let (t1, c1) = (Instant::now(), cpu_ticks(pid)?);
        let rss = rss_kib(pid)?;
        drop(page);
        let secs = t1.duration_since(t0).as_secs_f64();
        windows.push(Window {
            page_open,
            cpu_percent: (c1 - c0) as f64 / TICKS / secs * 100.0,
            rss_kib: rss,
        });
    }
    drop(server);
    for n in &names {
        store.stop(n)?;
        store.delete(n)?;
    }
    Ok(UiBench {
        vms: p.vms,
        window_s: p.window.as_secs_f64(),
        windows,
        skipped: None,
    })
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The section, markers included.
pub fn render(b: &UiBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n## Web console\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(s, "- date: {date}\n- kernel: {kernel}\n- store: {store}\n");
    if let Some(why) = &b.skipped {
        let _ = writeln!(s, "Not measured: {why}.\n{END}");
        return s;
    }
    let _ = writeln!(
        s,
        "`fvm --root DIR ui` serving {} running VMs (host network, each started with \
         `fvm --root DIR start VM-N`). Windows of {:.0} s alternate: A with no page \
         open, B with the VM list open in chromium (playwright-core), counted from when \
         the page has loaded and its WebSocket is live. CPU: the server's utime + stime \
         (/proc/PID/stat) over the window, in % of one CPU; memory: its VmRSS at the \
         window's end.\n",
        b.vms, b.window_s
    );
    let mut table = Table::new(&[
        ("window", R),
        ("page", R),
        ("server CPU %", R),
        ("server RSS MiB", R),
    ]);
    for (i, w) in b.windows.iter().enumerate() {
        table.row([
            (i + 1).to_string(),
            if w.page_open { "open" } else { "none" }.to_owned(),
            format!("{:.2}", w.cpu_percent),
            format!("{:.1}", w.rss_kib as f64 / 1024.0),
        ]);
    }
    s.push_str(&table.render());
    let a = mean(
        b.windows
            .iter()
            .filter(|w| !w.page_open)
            .map(|w| w.cpu_percent),
    );
    let bb = mean(
        b.windows
            .iter()
            .filter(|w| w.page_open)
            .map(|w| w.cpu_percent),
    );
    if let (Some(a), Some(bb)) = (a, bb) {
        let _ = writeln!(
            s,
            "\nMean server CPU: {a:.2} % with no page, {bb:.2} % with the list open ({} \
             the idle server's).",
            crate::table::factor((a > 0.0).then(|| bb / a))
        );
    }
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_windows_and_a_skip() {
        let b = UiBench {
            vms: 100,
            window_s: 20.0,
            windows: vec![
                Window {
                    page_open: false,
                    cpu_percent: 1.0,
                    rss_kib: 10240,
                },
                Window {
                    page_open: true,
                    cpu_percent: 2.0,
                    rss_kib: 11264,
                },
            ],
            skipped: None,
        };
        let md = render(&b, "bench/run --ui-only", "d", "k", "s");
        assert!(
            md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")),
            "{md}"
        );
        assert!(md.contains("| 2 | open | 2.00 | 11.0 |"), "{md}");
        assert!(
            md.contains("1.00 % with no page, 2.00 % with the list open"),
            "{md}"
        );
        let skip = UiBench {
            skipped: Some("needs node".into()),
            ..b
        };
        assert!(render(&skip, "i", "d", "k", "s").contains("Not measured: needs node."));
    }
}

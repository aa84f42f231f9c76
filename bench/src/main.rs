//! fvm-bench: how long VM startup takes, next to the host baselines it competes with,
//! how long `fvm copy` takes next to `cp -a`, what a VM's own network costs, and how
//! soon host changes show in running VMs and at what cost to the host, and how many
//! idle VMs one machine holds.
//!
//! One invocation times `/bin/true` alone, under `unshare`, under bubblewrap, under the
//! peers that are installed (firejail, systemd-nspawn, podman; see peers.rs), and through
//! `fvm` (create, cold run, exec into a running VM, run --rm), interleaved round by
//! round, then copies of a VM with 1 GiB of changes, diff and commit, bridged VMs
//! next to host VMs, and host changes seen from a VM and a host workload with and
//! without running VMs, and fleets of up to 1000 idle VMs, then replaces the "VM
//! startup", phases, "VM copy", "Diff and commit", "Network", "Host changes" and
//! "Density" sections of docs/BENCHMARKS.md with what it measured. Run it as root through `bench/run`.
//!
//! Two sections run only alone: `--oci-only` (fvm as containerd's runtime) and
//! `--scale-only` (a store of 1000 bridged VMs, each serving a TCP port: does the
//! thousandth start as fast as the first?).

mod changes;
mod copy;
mod density;
mod dns;
mod host_changes;
mod io;
mod measure;
mod network;
mod oci;
mod peers;
mod phases;
mod report;
mod scale;
mod section;
mod services;
mod startup;
mod store;
mod table;
mod throughput;
mod tree;
mod ui;
mod watcher_cost;

use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Parser;

use measure::{Subject, run_interleaved};
use section::Section;
use startup::{Kind, Report, baselines, disk, fvm_subjects, rows};
use store::Store;

#[derive(Debug, Parser)]
#[command(about = "Benchmark fvm VM startup and write docs/BENCHMARKS.md")]
struct Args {
    /// The fvm binary [default: fvm next to this binary, else fvm on PATH]
    #[arg(long)]
    fvm: Option<PathBuf>,
    /// Timed rounds; every subject runs once per round
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Untimed rounds before the timed ones
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Smoke test: 20 rounds
    #[arg(long, conflicts_with = "runs")]
    quick: bool,
    /// Markdown file whose "VM startup" section is replaced [default: docs/BENCHMARKS.md
    /// in the workspace]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory in which the temporary VM store is made [default: $TMPDIR or /tmp]
    #[arg(long)]
    store_in: Option<PathBuf>,
    /// Time the baselines only and write nothing (for testing without a working fvm)
    #[arg(long, hide = true)]
    baselines_only: bool,
    /// Files of 1 MiB that the VM copied by the copy benchmark holds [--quick: 64]
    #[arg(long, default_value_t = 1024)]
    copy_files: usize,
    /// Timed rounds of the copy benchmark [--quick: 2]
    #[arg(long, default_value_t = 5)]
    copy_rounds: usize,
    /// Run only the startup rounds (and the phases of a cold run), and replace only
    /// their sections
    #[arg(long, conflicts_with = "baselines_only")]
    startup_only: bool,
    /// Run only the copy benchmark, and replace only its section
    #[arg(long, conflicts_with = "baselines_only")]
    copy_only: bool,
    /// Changed files in the VM that `fvm diff` reads [--quick: 5000]
    #[arg(long, default_value_t = 100_000)]
    diff_files: usize,
    /// Files of 16 KiB that `fvm commit` writes back [--quick: 1000]
    #[arg(long, default_value_t = 10_000)]
    commit_files: usize,
    /// Rounds of the diff and commit benchmarks [--quick: 1]
    #[arg(long, default_value_t = 5)]
    changes_rounds: usize,
    /// Empty files in one new directory whose commit is planned (`--dry-run`),
    /// for its time and peak memory [--quick: 100000]
    #[arg(long, default_value_t = 1_000_000)]
    plan_files: usize,
    /// Run only the diff and commit benchmarks, and replace only their section
    #[arg(long, conflicts_with_all = ["baselines_only", "copy_only"])]
    changes_only: bool,
    /// Start/stop rounds of a bridged and a host VM [--quick: 5]
    #[arg(long, default_value_t = 20)]
    net_rounds: usize,
    /// MiB sent over one TCP connection per throughput transfer [--quick: 256]
    #[arg(long, default_value_t = 1024)]
    net_mib: usize,
    /// Timed throughput transfers on each path [--quick: 2]
    #[arg(long, default_value_t = 10)]
    net_transfers: usize,
    /// VMs in each fleet started one after another (bridged, then host) [--quick: 10]
    #[arg(long, default_value_t = 100)]
    net_vms: usize,
    /// Subnet of the benchmark's bridge [default: the first 10.231.x.0/22 that no route
    /// of the host overlaps]
    #[arg(long, value_name = "CIDR")]
    net_subnet: Option<String>,
    /// Run only the network benchmark, and replace only its section
    #[arg(long, conflicts_with_all = ["baselines_only", "copy_only", "changes_only"])]
    network_only: bool,
    /// Host changes a running VM's reader watches for, for the latency [default: 1000
    /// with --host-changes-only, 300 in the full run; --quick: 50]
    #[arg(long)]
    host_changes: Option<usize>,
    /// Rounds of the host workload, each with 0 and with --host-vms running VMs
    /// [--quick: 2]
    #[arg(long, default_value_t = 5)]
    host_rounds: usize,
    /// Idle VMs running during the host workload's loaded runs [--quick: 10]
    #[arg(long, default_value_t = 50)]
    host_vms: usize,
    /// MiB of small files in the tree the host workload untars [--quick: 20]
    #[arg(long, default_value_t = 100)]
    host_tree_mib: usize,
    /// Run only the host-changes benchmark, and replace only its section
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only"
    ])]
    host_changes_only: bool,
    /// The largest fleet of the density benchmark: fleets of 100, 500 and 1000 VMs
    /// up to it [--quick: fleets of 50 and 100]
    #[arg(long, default_value_t = 1000)]
    density_max: usize,
    /// Run only the density benchmark, and replace only its section
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only", "host_changes_only"
    ])]
    density_only: bool,
    /// Rounds of the I/O benchmark [--quick: 1]
    #[arg(long, default_value_t = 3)]
    io_rounds: usize,
    /// MiB of small files in the tree the I/O benchmark untars [--quick: 20]
    #[arg(long, default_value_t = 100)]
    io_tree_mib: usize,
    /// Existing files the I/O benchmark writes to twice [--quick: 200]
    #[arg(long, default_value_t = 2000)]
    io_files: usize,
    /// Run only the I/O benchmark, and replace only its section
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only", "host_changes_only",
        "density_only"
    ])]
    io_only: bool,
    /// Timed rounds of the services benchmark [--quick: 3]
    #[arg(long, default_value_t = 10)]
    services_rounds: usize,
    /// MiB a detached command writes through the logs in the services benchmark
    /// [--quick: 8]
    #[arg(long, default_value_t = 64)]
    services_log_mib: usize,
    /// Run only the services benchmark (logging path, start with services), and
    /// replace only its section
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only", "host_changes_only",
        "density_only", "io_only"
    ])]
    services_only: bool,
    /// Rounds of the names-on-the-bridge benchmark [--quick: 2]
    #[arg(long, default_value_t = 5)]
    dns_rounds: usize,
    /// Lookups per subject per round [--quick: 500]
    #[arg(long, default_value_t = 5000)]
    dns_lookups: usize,
    /// Run only the names-on-the-bridge benchmark (the store's resolver), and
    /// replace only its section
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only", "host_changes_only",
        "density_only", "io_only", "services_only"
    ])]
    dns_only: bool,
    /// Rounds of the watcher benchmark (an untar on the host and one in a VM each)
    /// [--quick: 2]
    #[arg(long, default_value_t = 5)]
    watcher_rounds: usize,
    /// MiB of small files in the tree the watcher benchmark untars [--quick: 20]
    #[arg(long, default_value_t = 100)]
    watcher_tree_mib: usize,
    /// VMs untarring at once in the watcher benchmark [--quick: 10]
    #[arg(long, default_value_t = 50)]
    watcher_vms: usize,
    /// An earlier fvm binary whose watcher the watcher benchmark measures too, in the
    /// same rounds (its VMs in a store of their own)
    #[arg(long)]
    watcher_fvm_before: Option<PathBuf>,
    /// Run only the watcher benchmark, and replace only its section
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only", "host_changes_only",
        "density_only", "io_only", "services_only", "dns_only"
    ])]
    watcher_only: bool,
    /// Running VMs the web console benchmark serves [--quick: 10]
    #[arg(long, default_value_t = 100)]
    ui_vms: usize,
    /// Seconds of each window of the web console benchmark [--quick: 5]
    #[arg(long, default_value_t = 20)]
    ui_window: u64,
    /// Run only the web console benchmark, and replace only its section
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only", "host_changes_only",
        "density_only", "io_only", "services_only", "dns_only", "watcher_only"
    ])]
    ui_only: bool,
    /// Timed rounds of the containerd benchmark [--quick: 3]
    #[arg(long, default_value_t = 20)]
    oci_rounds: usize,
    /// Run only the containerd benchmark (fvm-runc against runc under ctr; needs
    /// containerd, runc and busybox-static), and replace only its section. Not
    /// part of a full run.
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only", "host_changes_only",
        "density_only", "io_only", "services_only", "dns_only", "watcher_only", "ui_only"
    ])]
    oci_only: bool,
    /// Bridged VMs of the scale benchmark, each serving a TCP port [--quick: 20]
    #[arg(long, default_value_t = 1000)]
    scale_vms: usize,
    /// Run only the scale benchmark (a store of --scale-vms bridged VMs, started
    /// one after another, then by 8 parallel starters), and replace only its
    /// section. Not part of a full run.
    #[arg(long, conflicts_with_all = [
        "baselines_only", "copy_only", "changes_only", "network_only", "host_changes_only",
        "density_only", "io_only", "services_only", "dns_only", "watcher_only", "ui_only",
        "oci_only"
    ])]
    scale_only: bool,
    #[command(subcommand)]
    helper: Option<Helper>,
}

/// Helpers the benchmark runs itself, inside VMs too.
#[derive(Debug, clap::Subcommand)]
enum Helper {
    /// Accept one TCP connection on ADDR, read it to EOF, answer with the byte count
    #[command(hide = true)]
    Recv {
        /// Address to listen on; port 0 picks one, printed on stdout
        #[arg(long)]
        listen: String,
    },
    /// Re-read FILE every EVERY_US microseconds; print its content and the time (ns
    /// since the epoch) whenever it changed, until it reads "stop"
    #[command(hide = true)]
    WatchFile {
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 1000)]
        every_us: u64,
        /// Give up (and fail) after this long
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// Run ARGV (or append a byte to each file listed in --append) REPEAT times and
    /// print the nanoseconds each took, one per line
    #[command(hide = true)]
    IoOp {
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        #[arg(long)]
        append: Option<PathBuf>,
        #[arg(last = true)]
        argv: Vec<std::ffi::OsString>,
    },
    /// COUNT sequential DNS lookups of NAME at SERVER (IP[:PORT]); print the
    /// nanoseconds they took
    #[command(hide = true)]
    DnsQuery {
        #[arg(long)]
        server: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Listen on ADDR and answer every connection with LINE and a newline, until
    /// killed
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        line: String,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fvm-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    match &args.helper {
        Some(Helper::Recv { listen }) => return throughput::receive(listen),
        Some(Helper::WatchFile {
            file,
            every_us,
            max_secs,
        }) => {
            return host_changes::watch_file(
                file,
                std::time::Duration::from_micros(*every_us),
                std::time::Duration::from_secs(*max_secs),
            );
        }
        Some(Helper::IoOp {
            repeat,
            append,
            argv,
        }) => return io::io_op(*repeat, append.as_deref(), argv),
        Some(Helper::DnsQuery {
            server,
            name,
            count,
        }) => return dns::lookups(server, name, *count),
        Some(Helper::Serve { listen, line }) => return scale::serve(listen, line),
        None => {}
    }
    let runs = if args.quick { 20 } else { args.runs };
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let euid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if euid != 0 {
        bail!("must run as root (fvm and `unshare -m` need it); try `sudo bench/run`");
    }
    if let Some(section) = Section::only(&args) {
        return run_one_section(&args, section);
    }
    let mut notes = Vec::new();
    let baselines = baselines(&mut notes)?;
    let fvm = if args.baselines_only {
        None
    } else {
        Some(match &args.fvm {
            Some(path) => std::path::absolute(path).context("resolving --fvm")?,
            None => default_fvm()?,
        })
    };
    let parent = args.store_in.clone().unwrap_or_else(std::env::temp_dir);
    // Declared before the subjects, which borrow it; dropping it cleans everything up.
    let store = fvm
        .as_deref()
        .map(|fvm| Store::new(fvm, &parent))
        .transpose()?;

    // Filled in by the subjects' after-hooks, outside the timing.
    let disk_bytes = RefCell::new(Vec::new());
    let leaked = RefCell::new(0usize);
    let mut subjects = baselines;
    if let Some(store) = &store {
        eprintln!("fvm-bench: store {}", store.root().display());
        store.create("cold").context("setting up the cold-run VM")?;
        store.create("warm").context("setting up the running VM")?;
        store.start("warm").context("starting the running VM")?;
        subjects.extend(fvm_subjects(store, &disk_bytes, &leaked));
    }
    let (kinds, mut subjects): (Vec<Kind>, Vec<Subject>) = subjects.into_iter().unzip();

    eprintln!(
        "fvm-bench: {} subjects, {} warm-up + {runs} timed rounds",
        subjects.len(),
        args.warmup
    );
    let samples = run_interleaved(&mut subjects, args.warmup, runs)?;
    drop(subjects);

    let phases = match (&store, &fvm) {
        (Some(store), Some(fvm)) => {
            let rounds = runs.min(100);
            eprintln!("fvm-bench: {rounds} cold runs with fvm -vv, for the phases");
            Some(phases::measure(fvm, store.root(), "cold", rounds)?)
        }
        _ => None,
    };
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let kernel = read_trimmed("/proc/sys/kernel/osrelease")?;
    let mut sections = Vec::new();
    if let Some(store) = &store {
        store.stop("warm").context("stopping the running VM")?;
        store.delete("warm").context("deleting the running VM")?;
        store.delete("cold").context("deleting the cold-run VM")?;
        let place = store_description(&parent);
        if !args.startup_only {
            for section in Section::ALL {
                sections.push(section.measure(&args, store, false, &date, &kernel, &place)?);
            }
        }
    }
    if *leaked.borrow() > 0 {
        notes.push(format!(
            "`fvm run --rm` left {} VMs in the store",
            leaked.borrow()
        ));
    }

    let report = Report {
        invocation: invocation(),
        date,
        kernel,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rounds: runs,
        warmup: args.warmup,
        store: match &store {
            Some(_) => store_description(&parent),
            None => "none (baselines only)".to_owned(),
        },
        rows: rows(&kinds, &samples)?,
        disk: disk(&disk_bytes.borrow()),
        notes,
    };
    let section = report.render();
    for line in section.lines() {
        if line != startup::BEGIN && line != startup::END {
            println!("{line}");
        }
    }

    // Clean up before writing, so that a failed cleanup is not reported as a success.
    drop(store);
    if args.baselines_only {
        eprintln!("fvm-bench: --baselines-only: not writing a report");
        return Ok(());
    }
    let out = args.out.unwrap_or_else(default_out);
    report::write_section(&out, &section)?;
    if let Some(p) = &phases {
        let section = phases::render(p, &invocation());
        print!("{section}");
        report::write_section(&out, &section)?;
    }
    for section in &sections {
        print!("{section}");
        report::write_section(&out, section)?;
    }
    eprintln!("fvm-bench: wrote {}", out.display());
    Ok(())
}

/// `--X-only`: measure one section in a store of its own, print it and replace it
/// in the report.
fn run_one_section(args: &Args, section: Section) -> Result<()> {
    let fvm = match &args.fvm {
        Some(path) => std::path::absolute(path).context("resolving --fvm")?,
        None => default_fvm()?,
    };
    let parent = args.store_in.clone().unwrap_or_else(std::env::temp_dir);
    let store = Store::new(&fvm, &parent)?;
    eprintln!("fvm-bench: store {}", store.root().display());
    let kernel = read_trimmed("/proc/sys/kernel/osrelease")?;
    let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let text = section.measure(
        args,
        &store,
        true,
        &date,
        &kernel,
        &store_description(&parent),
    )?;
    drop(store);
    print!("{text}");
    let out = args.out.clone().unwrap_or_else(default_out);
    report::write_section(&out, &text)?;
    eprintln!("fvm-bench: wrote {}", out.display());
    Ok(())
}

/// `bench/run` passes the command the user typed; otherwise show our own argv.
fn invocation() -> String {
    if let Ok(cmd) = std::env::var("FVM_BENCH_INVOCATION") {
        return cmd;
    }
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map_or("fvm-bench".into(), |n| n.to_string_lossy());
    std::iter::once(name.into_owned())
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

fn store_description(parent: &Path) -> String {
    match store::fs_type(parent) {
        Ok(fstype) => format!("temporary directory under {} ({fstype})", parent.display()),
        Err(_) => format!("temporary directory under {}", parent.display()),
    }
}

fn default_fvm() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating fvm-bench")?;
    if let Some(sibling) = exe.parent().map(|dir| dir.join("fvm"))
        && sibling.is_file()
    {
        return Ok(sibling);
    }
    find_on_path("fvm").context(
        "no fvm next to fvm-bench nor on PATH; build it (`cargo build --release -p fvm`) \
         or pass --fvm",
    )
}

fn default_out() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).join("docs/BENCHMARKS.md")
}

/// The first executable file called `name` in PATH, so timed runs skip the PATH search.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

fn read_trimmed(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_owned())
}

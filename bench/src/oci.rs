//! fvm as containerd's runtime against runc: `ctr run --rm ... /bin/true` with
//! `--runc-binary fvm-runc` (a clone of the host) and with runc (a one-binary
//! rootfs), interleaved, on a containerd of the benchmark's own; then the
//! memory one container costs: its shim's resident memory, and the memory its
//! cgroup charges (fvm: the whole VM), with a `sleep` running in each.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::measure::{Stats, Subject, check_output, run_interleaved, stdout_of};
use crate::store::Store;
use crate::table::Align::Right as R;
use crate::table::{Table, ratio};

pub const BEGIN: &str = "<!-- bench:oci:begin -->";
pub const END: &str = "<!-- bench:oci:end -->";

#[derive(Debug)]
pub struct Params {
    pub rounds: usize,
}

#[derive(Debug)]
pub struct OciBench {
    pub rounds: usize,
    /// (subject, command shown, seconds)
    pub rows: Vec<(String, String, Stats)>,
    /// (subject, shim RSS bytes, container cgroup bytes)
    pub memory: Vec<(String, u64, u64)>,
}

/// containerd on a directory of its own, killed (by pid) on drop.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("fvm-bench-oci-")
            .tempdir()
            .context("making containerd's directory")?;
        let d = dir.path();
        for sub in [
            "root",
            "state",
            "empty",
            "rootfs/bin",
            "bin",
            "fvm-root",
            "runc-root",
        ] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.ttrpc.sock\"\n",
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting containerd (apt-get install containerd)")?;
        let c = Containerd { dir, child };
        let start = Instant::now();
        while c
            .ctr()
            .arg("version")
            .output()
            .map(|o| !o.status.success())?
        {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("containerd did not come up in 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.path("containerd.sock"));
        cmd
    }

    /// `ctr run` of `argv` as container `id` with runtime `binary` (fvm-runc
    /// gets the host-clone annotation and an empty rootfs).
    fn run(&self, fvm: bool, flags: &[&str], id: &str, argv: &[&str]) -> Command {
        let mut cmd = self.ctr();
        cmd.arg("run")
            .args(flags)
            .arg("--cgroup")
            .arg(format!("/{CGROUP_PARENT}/{id}"));
        if fvm {
            cmd.arg("--runc-binary")
                .arg(self.path("bin/fvm-runc"))
                .arg("--runc-root")
                .arg(self.path("fvm-root"))
                .args(["--annotation", "org.featherweight.rootfs=host"])
                .arg("--rootfs")
                .arg(self.path("empty"));
        } else {
            cmd.args(["--runc-binary", "runc", "--runc-root"])
                .arg(self.path("runc-root"))
                .arg("--rootfs")
                .arg(self.path("rootfs"));
        }
        cmd.arg(id).args(argv);
        cmd
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The containers' parent cgroup, which runc and fvm-runc made.
        for root in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(root.path().join(CGROUP_PARENT));
        }
    }
}

/// The cgroup the benchmark's containers are put in (`/PARENT/ID`).
const CGROUP_PARENT: &str = "fvm-bench-oci";

/// A rootfs for runc: the static busybox as /bin/busybox, `true` and `sleep`.
fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no busybox for runc's rootfs (apt-get install busybox-static)")?;
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for applet in ["true", "sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    Ok(())
}

pub fn measure(store: &Store, params: &Params) -> Result<OciBench> {
    let fvm = store.fvm_binary();
    let c = Containerd::start()?;
    std::os::unix::fs::symlink(fvm, c.path("bin/fvm-runc"))?;
    busybox_rootfs(&c.path("rootfs"))?;
    let id = |who: &str, round: usize| format!("fvm-bench-{who}-{round}");
    let subjects_of = |fvm: bool| {
        let who = if fvm { "fvm" } else { "runc" };
        let shown = if fvm {
            "ctr run --rm --runc-binary fvm-runc --annotation org.featherweight.rootfs=host --rootfs EMPTY ID /bin/true"
        } else {
            "ctr run --rm --runc-binary runc --rootfs BUSYBOX ID /bin/true"
        };
        let c = &c;
        Subject::new(if fvm { "fvm-runc" } else { "runc" }, shown, move |round| {
            c.run(fvm, &["--rm"], &id(who, round), &["/bin/true"])
        })
    };
    let mut subjects = vec![subjects_of(true), subjects_of(false)];
    eprintln!(
        "fvm-bench: ctr run --rm /bin/true, 1 warm-up + {} timed rounds",
        params.rounds
    );
    let samples = run_interleaved(&mut subjects, 1, params.rounds)?;
    drop(subjects);
    let rows = samples
        .into_iter()
        .map(|s| {
            let secs: Vec<f64> = s.ms.iter().map(|ms| ms / 1000.0).collect();
            let stats = Stats::of(&secs).with_context(|| format!("no samples for {}", s.name))?;
            Ok((s.name, s.shown, stats))
        })
        .collect::<Result<_>>()?;
    let mut memory = Vec::new();
    for (fvm, name) in [(true, "fvm-runc"), (false, "runc")] {
        let cid = id(if fvm { "fvm-mem" } else { "runc-mem" }, 0);
        check_output(&mut c.run(fvm, &["-d"], &cid, &["/bin/sleep", "1000"]))?;
        // Let the container settle before reading its memory.
        std::thread::sleep(Duration::from_secs(1));
        let shim = shim_rss(&cid).unwrap_or(0);
        let charged = cgroup_memory(&c, &cid).unwrap_or(0);
        let _ = check_output(c.ctr().args(["task", "kill", "-a", "-s", "SIGKILL", &cid]));
        let start = Instant::now();
        while stdout_of(c.ctr().args(["task", "ls"]))?.contains("RUNNING") {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("container {cid} did not stop");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        check_output(c.ctr().args(["task", "delete", &cid]))?;
        check_output(c.ctr().args(["container", "delete", &cid]))?;
        memory.push((name.to_owned(), shim, charged));
    }
    Ok(OciBench {
        rounds: params.rounds,
        rows,
        memory,
    })
}

/// Resident memory of the shim of container `id` (its command line names it).
fn shim_rss(id: &str) -> Option<u64> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        if is_shim
            && args
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
        {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            return Some(kb * 1024);
        }
    }
    None
}

/// The memory the container's cgroup is charged: runc's `/default/ID`, or the
/// VM's cgroup fvm made under `/default`.
fn cgroup_memory(c: &Containerd, id: &str) -> Option<u64> {
    let pid = stdout_of(c.ctr().args(["task", "ls"]))
        .ok()?
        .lines()
        .find(|l| l.starts_with(id))?
        .split_whitespace()
        .nth(1)?
        .parse::<u32>()
        .ok()?;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if ctrls.split(',').any(|x| x == "memory") {
            let f = Path::new("/sys/fs/cgroup/memory")
                .join(path)
                .join("memory.usage_in_bytes");
            return std::fs::read_to_string(f).ok()?.trim().parse().ok();
        }
        if ctrls.is_empty() {
            let f = Path::new("/sys/fs/cgroup")
                .join(path)
                .join("memory.current");
            if let Ok(t) = std::fs::read_to_string(f) {
                return t.trim().parse().ok();
            }
        }
    }
    None
}

pub fn render(b: &OciBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n## fvm as containerd's runtime\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- store: {store}\n- containerd: the \
         benchmark's own (its CRI plugin off), with the io.containerd.runc.v2 shim; \
         `fvm-runc` is a symlink to the fvm measured, runc is Debian's, with a rootfs \
         of the static busybox\n- rounds: {} timed, after 1 warm-up; each round runs \
         both subjects once, in a new random order, each container under a new ID\n",
        b.rounds
    );
    let _ = writeln!(
        s,
        "Wall-clock time of the whole `ctr run --rm`, in seconds: containerd starts \
         a shim, which calls the runtime's create and start, waits for `/bin/true`, \
         then the runtime's delete.\n"
    );
    let mut table = Table::of_stats("s", &[("vs runc", R)]);
    let runc = b
        .rows
        .iter()
        .find(|(name, _, _)| name == "runc")
        .map(|(_, _, st)| st.median);
    for (name, shown, st) in &b.rows {
        table.stats_row(name, shown, st, 3, [ratio(st.median, runc)]);
    }
    s.push_str(&table.render());
    let _ = writeln!(
        s,
        "\nMemory of one container running `sleep`: the resident memory of its shim \
         (`containerd-shim-runc-v2`, one a container), and what the container's \
         cgroup is charged (fvm: the whole VM, its init included).\n"
    );
    let mut mem = Table::new(&[
        ("runtime", crate::table::Align::Left),
        ("shim RSS MiB", R),
        ("cgroup MiB", R),
    ]);
    let mib = |b: u64| format!("{:.1}", b as f64 / f64::from(1u32 << 20));
    for (name, shim, charged) in &b.memory {
        mem.row([name.clone(), mib(*shim), mib(*charged)]);
    }
    s.push_str(&mem.render());
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_times_against_runc_and_memory() {
        let st = |m: f64| Stats {
            median: m,
            p10: m / 2.0,
            p90: m * 2.0,
        };
        let b = OciBench {
            rounds: 3,
            rows: vec![
                ("fvm-runc".into(), "ctr run fvm".into(), st(0.3)),
                ("runc".into(), "ctr run runc".into(), st(0.2)),
            ],
            memory: vec![
                ("fvm-runc".into(), 10 << 20, 3 << 20),
                ("runc".into(), 10 << 20, 1 << 20),
            ],
        };
        let md = render(
            &b,
            "bench/run --oci-only",
            "2000-01-01",
            "6.0",
            "/tmp (ext4)",
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        assert!(
            md.contains("| fvm-runc | `ctr run fvm` | 0.300 | 0.150 | 0.600 | 1.50× |"),
            "{md}"
        );
        assert!(md.contains("| runc | 10.0 | 1.0 |"), "{md}");
    }
}

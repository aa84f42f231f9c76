//! The "I/O inside a VM" section of docs/BENCHMARKS.md: file work done inside a VM
//! next to the same work done on the host, for each kind of private layer fvm offers.
//!
//! Subjects, every one running the same program (`fvm-bench io-op`, this binary, by
//! its host path) that times each repetition of a command from inside:
//! - the host itself;
//! - a named VM with the default disk layers (`fvm create VM`);
//! - a named VM with volatile layers (`fvm create VM --layers volatile`);
//! - a throw-away VM (`fvm run --rm`), whose layers are on a tmpfs.
//!
//! The work, in rounds; in each round every step runs once per subject, the
//! subjects in a new random order each time, and every run starts after `sync`
//! (untimed), the cold ones also after dropping the kernel's caches:
//! - untar a tree of small files copied from /usr (100 MiB of content);
//! - `find /usr`, `du -s /usr`, and `cat` of every file under /usr/share, each
//!   twice in a row: cold (after the caches were dropped) and warm;
//! - a first write (open for appending, one byte, close) to each of 2,000 existing
//!   host files (copied from /usr/share into the benchmark's directory before the
//!   section), which in a VM copies each file up into its layer, then a second
//!   write to the same files; on the host, the same writes in place, and `cp
//!   --parents` of the same files, which is what a copy-up has to do.
//!
//! The named VMs of a round are fresh (so the first write is the first), keep their
//! layers in a directory of their own (`--dir`), and are kept until the section
//! ends, like the host's untarred trees: on ext4 an untar into a block group where a
//! `rm -rf` just freed inodes is several times slower (see the host-changes
//! section), so nothing is removed between runs, and the directories that receive
//! trees have ext4's TOPDIR attribute where the filesystem supports it.
//!
//! Everything the section makes on the host is in one directory under /var/tmp
//! (visible to VMs, unlike a tmpfs /tmp), removed at the end, also on failure,
//! after the section's VMs are deleted.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::measure::{SplitMix64, check_output, describe, median_ratio, percentile, stdout_of};
use crate::store::Store;
use crate::table::Align::{self, Left as L, Right as R};
use crate::table::Table;
use crate::tree::{make_tarball, walk_sorted};

pub const BEGIN: &str = "<!-- bench:io:begin -->";
pub const END: &str = "<!-- bench:io:end -->";

/// Files bigger than this are not picked for the write steps.
const WRITE_FILE_MAX: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Params {
    pub rounds: usize,
    /// MiB of file content in the untarred tree.
    pub tree_mib: usize,
    /// Existing files written to by the write steps.
    pub files: usize,
}

/// Where the work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Host,
    Disk,
    Volatile,
    Throwaway,
}

pub const PLACES: [Place; 4] = [Place::Host, Place::Disk, Place::Volatile, Place::Throwaway];

impl Place {
    fn label(self) -> &'static str {
        match self {
            Place::Host => "host",
            Place::Disk => "VM, disk layers",
            Place::Volatile => "VM, volatile layers",
            Place::Throwaway => "run --rm (tmpfs layers)",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Place::Host => "host",
            Place::Disk => "disk",
            Place::Volatile => "vol",
            Place::Throwaway => "rm",
        }
    }
}

/// What is timed: one row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Untar,
    FindCold,
    FindWarm,
    DuCold,
    DuWarm,
    CatCold,
    CatWarm,
    FirstWrite,
    SecondWrite,
}

pub const OPS: [Op; 9] = [
    Op::Untar,
    Op::FindCold,
    Op::FindWarm,
    Op::DuCold,
    Op::DuWarm,
    Op::CatCold,
    Op::CatWarm,
    Op::FirstWrite,
    Op::SecondWrite,
];

impl Op {
    fn label(self, b: &IoBench) -> String {
        match self {
            Op::Untar => format!("untar {:.0} MiB ({} files)", b.tree_mib(), b.tree_files),
            Op::FindCold => "`find /usr`, cold".into(),
            Op::FindWarm => "`find /usr`, warm".into(),
            Op::DuCold => "`du -s /usr`, cold".into(),
            Op::DuWarm => "`du -s /usr`, warm".into(),
            Op::CatCold => "`cat` of every file in /usr/share, cold".into(),
            Op::CatWarm => "`cat` of every file in /usr/share, warm".into(),
            Op::FirstWrite => format!("first write to {} host files", b.write_files),
            Op::SecondWrite => format!("second write to the {} files", b.write_files),
        }
    }
}

/// One spawn of `io-op`: the ops it times, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Untar,
    Find,
    Du,
    Cat,
    Write,
}

const STEPS: [Step; 5] = [Step::Untar, Step::Find, Step::Du, Step::Cat, Step::Write];

impl Step {
    fn ops(self) -> &'static [Op] {
        match self {
            Step::Untar => &[Op::Untar],
            Step::Find => &[Op::FindCold, Op::FindWarm],
            Step::Du => &[Op::DuCold, Op::DuWarm],
            Step::Cat => &[Op::CatCold, Op::CatWarm],
            Step::Write => &[Op::FirstWrite, Op::SecondWrite],
        }
    }
    fn cold(self) -> bool {
        matches!(self, Step::Find | Step::Du | Step::Cat)
    }
}

#[derive(Debug, Clone, Default)]
pub struct IoBench {
    pub rounds: usize,
    pub tree_files: usize,
    pub tree_bytes: u64,
    pub write_files: usize,
    pub write_bytes: u64,
    /// `samples[op][place][round]`, seconds.
    pub samples: Vec<Vec<Vec<f64>>>,
    /// `cp --parents` of the write files on the host, seconds per round.
    pub cp: Vec<f64>,
    pub topdir: bool,
    /// Filesystem type of /var/tmp, which holds the files and the named VMs' layers.
    pub var_tmp_fs: String,
    pub took_s: f64,
}

impl IoBench {
    fn tree_mib(&self) -> f64 {
        self.tree_bytes as f64 / f64::from(1u32 << 20)
    }
    fn get(&self, op: Op, place: Place) -> &[f64] {
        let o = OPS.iter().position(|x| *x == op).expect("known op");
        let p = PLACES
            .iter()
            .position(|x| *x == place)
            .expect("known place");
        &self.samples[o][p]
    }
}

/// The section's directory under /var/tmp and its VMs: deleted and removed on drop.
struct Scratch<'a> {
    store: &'a Store,
    dir: PathBuf,
    vms: Vec<String>,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for name in &self.vms {
            let res = check_output(self.store.fvm().args(["delete", "--force", name]));
            if let Err(err) = res
                && self.store.vm_dir(name).exists()
            {
                eprintln!("fvm-bench: cleanup: deleting VM {name}: {err:#}");
            }
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("fvm-bench: cleanup: removing {}: {err}", self.dir.display());
        }
    }
}

pub fn measure(store: &Store, p: &Params) -> Result<IoBench> {
    let started = Instant::now();
    let me = std::env::current_exe().context("locating fvm-bench")?;
    let dir = tempfile::Builder::new()
        .prefix("fvm-bench-io-")
        .tempdir_in("/var/tmp")
        .context("creating a directory under /var/tmp")?
        .keep();
    let mut scratch = Scratch {
        store,
        dir: dir.clone(),
        vms: Vec::new(),
    };
    let mut b = IoBench {
        rounds: p.rounds,
        samples: vec![vec![Vec::new(); PLACES.len()]; OPS.len()],
        var_tmp_fs: crate::store::fs_type(Path::new("/var/tmp")).unwrap_or_else(|_| "?".into()),
        ..IoBench::default()
    };
    eprintln!(
        "fvm-bench: io: a tarball of {} MiB of small files",
        p.tree_mib
    );
    let tarball = make_tarball(&dir, p.tree_mib)?;
    (b.tree_files, b.tree_bytes) = (tarball.files, tarball.file_bytes);
    eprintln!("fvm-bench: io: copying {} files from /usr/share", p.files);
    let files = copy_write_files(&dir, p.files)?;
    b.write_files = files.len();
    b.write_bytes = files
        .iter()
        .map(|f| fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let list = dir.join("files.list");
    let mut text = Vec::new();
    for f in &files {
        text.extend_from_slice(f.as_os_str().as_bytes());
        text.push(b'\n');
    }
    fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
    // Where trees and layers go, each new one in a block group of its own.
    let trees = dir.join("trees");
    let layers = dir.join("layers");
    let copies = dir.join("copies");
    for d in [&trees, &layers, &copies] {
        fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    b.topdir = [&trees, &layers, &copies]
        .iter()
        .all(|d| check_output(Command::new("chattr").arg("+T").arg(d)).is_ok());

    let mut rng = SplitMix64::from_clock();
    for round in 0..p.rounds {
        eprintln!("fvm-bench: io: round {}/{}", round + 1, p.rounds);
        let disk = format!("io-disk-{round}");
        let vol = format!("io-vol-{round}");
        for (name, extra) in [(&disk, None), (&vol, Some("volatile"))] {
            scratch.vms.push(name.clone());
            let mut cmd = store.create_command(name);
            cmd.arg("--dir").arg(layers.join(name));
            if let Some(l) = extra {
                cmd.args(["--layers", l]);
            }
            check_output(&mut cmd)?;
            store.start(name)?;
        }
        for step in STEPS {
            let mut order = PLACES.to_vec();
            shuffle(&mut order, &mut rng);
            if step == Step::Write {
                // The copy a copy-up has to make, on the host, among the others.
                let at = (rng.next() % (order.len() as u64 + 1)) as usize;
                order.insert(at, Place::Host);
            }
            let mut host_done = false;
            for place in order {
                prepare(step.cold())?;
                if step == Step::Write && place == Place::Host && host_done {
                    let dest = copies.join(format!("r{round}"));
                    fs::create_dir(&dest)?;
                    let t = Instant::now();
                    check_output(
                        Command::new("cp")
                            .arg("--parents")
                            .arg("-t")
                            .arg(&dest)
                            .args(&files),
                    )?;
                    b.cp.push(t.elapsed().as_secs_f64());
                    continue;
                }
                host_done |= place == Place::Host;
                let mut args: Vec<OsString> = vec!["io-op".into()];
                args.extend(step_args(step, &tarball.path, &trees, &list, place, round));
                let mut cmd = match place {
                    Place::Host => Command::new(&me),
                    Place::Disk | Place::Volatile => {
                        let name = if place == Place::Disk { &disk } else { &vol };
                        let mut c = store.fvm();
                        c.args(["run", name.as_str(), "--"]).arg(&me);
                        c
                    }
                    Place::Throwaway => {
                        let mut c = store.fvm();
                        c.args(["run", "--rm", "--"]).arg(&me);
                        c
                    }
                };
                cmd.args(&args);
                let secs = run_op(&mut cmd, step.ops().len())?;
                for (op, s) in step.ops().iter().zip(secs) {
                    let o = OPS.iter().position(|x| x == op).expect("known op");
                    let pl = PLACES
                        .iter()
                        .position(|x| *x == place)
                        .expect("known place");
                    b.samples[o][pl].push(s);
                }
            }
        }
        for name in [&disk, &vol] {
            store.stop(name)?;
        }
    }
    drop(scratch);
    b.took_s = started.elapsed().as_secs_f64();
    Ok(b)
}

/// `sync`, and for a cold run, drop the page, dentry and inode caches too.
fn prepare(cold: bool) -> Result<()> {
    check_output(&mut Command::new("sync"))?;
    if cold {
        fs::write("/proc/sys/vm/drop_caches", "3\n").context("dropping the caches")?;
    }
    Ok(())
}

/// The `io-op` arguments of one step.
fn step_args(
    step: Step,
    tar: &Path,
    trees: &Path,
    list: &Path,
    place: Place,
    round: usize,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    match step {
        Step::Untar => {
            let dest = trees.join(format!("{}-{round}", place.tag()));
            let script = "mkdir \"$1\" && exec tar -xf \"$2\" -C \"$1\"";
            a.extend(["--", "sh", "-c", script, "sh"].map(OsString::from));
            a.push(dest.into());
            a.push(tar.into());
        }
        Step::Find => a.extend(["--repeat", "2", "--", "find", "/usr"].map(OsString::from)),
        Step::Du => a.extend(["--repeat", "2", "--", "du", "-s", "/usr"].map(OsString::from)),
        Step::Cat => a.extend(
            [
                "--repeat",
                "2",
                "--",
                "sh",
                "-c",
                "find /usr/share -type f -print0 | xargs -0 cat",
            ]
            .map(OsString::from),
        ),
        Step::Write => {
            a.extend(["--repeat", "2", "--append"].map(OsString::from));
            a.push(list.into());
        }
    }
    a
}

/// Run an `io-op` command and read the seconds it printed, one line per repetition.
pub(crate) fn run_op(cmd: &mut Command, want: usize) -> Result<Vec<f64>> {
    let text = stdout_of(cmd)?;
    let secs: Vec<f64> = text
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .map(|ns| ns as f64 / 1e9)
        .collect();
    if secs.len() != want {
        bail!(
            "{} printed {} times, not {want}: {}",
            describe(cmd),
            secs.len(),
            text.trim()
        );
    }
    Ok(secs)
}

/// Copy the first `n` regular files of at most [`WRITE_FILE_MAX`] under
/// /usr/share (path order) into `dir/files`, keeping their paths; returns the copies.
fn copy_write_files(dir: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let base = Path::new("/usr/share");
    let mut picked = Vec::new();
    walk_sorted(base, &[""], |rel, meta| {
        if meta.is_file() && meta.len() <= WRITE_FILE_MAX {
            picked.push(rel);
        }
        picked.len() < n
    });
    if picked.len() < n {
        bail!(
            "found only {} files of at most 1 MiB under /usr/share, not {n}",
            picked.len()
        );
    }
    let files = dir.join("files");
    fs::create_dir(&files)?;
    check_output(
        Command::new("cp")
            .current_dir(base)
            .arg("--parents")
            .arg("-t")
            .arg(&files)
            .args(&picked),
    )?;
    check_output(&mut Command::new("sync"))?;
    Ok(picked.iter().map(|r| files.join(r)).collect())
}

fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// `fvm-bench io-op`: run `argv` (or the append work on the files listed in
/// `append`) `repeat` times, printing the nanoseconds each took, one per line.
pub fn io_op(repeat: usize, append: Option<&Path>, argv: &[OsString]) -> Result<()> {
    let files: Vec<PathBuf> = match append {
        Some(list) => fs::read(list)
            .with_context(|| format!("reading {}", list.display()))?
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l)))
            .collect(),
        None => Vec::new(),
    };
    if append.is_none() && argv.is_empty() {
        bail!("io-op needs a command or --append");
    }
    let mut stdout = std::io::stdout().lock();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        if append.is_some() {
            for f in &files {
                let mut file = fs::OpenOptions::new()
                    .append(true)
                    .open(f)
                    .with_context(|| format!("opening {}", f.display()))?;
                file.write_all(b"x")
                    .with_context(|| format!("writing {}", f.display()))?;
            }
        } else {
            let status = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .with_context(|| format!("running {:?}", argv[0]))?;
            if !status.success() {
                bail!("{:?} exited with {status}", argv[0]);
            }
        }
        writeln!(stdout, "{}", t.elapsed().as_nanos())?;
    }
    Ok(())
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

pub fn render(b: &IoBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n## I/O inside a VM\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- store: {store}; the benchmark's files and \
         the named VMs' layers (`--dir`) in a temporary directory under /var/tmp ({})\n\
         - rounds: {}; in each, every step once per subject, in a new random order, each \
         run after `sync`; the section took {:.0} s\n",
        b.var_tmp_fs, b.rounds, b.took_s
    );
    let _ = writeln!(
        s,
        "Each figure is the time a command took, measured inside the VM (or on the host) \
         by the program that ran it (`fvm-bench io-op`, started by `fvm --root DIR run VM \
         -- …` or `fvm --root DIR run --rm -- …`), so VM startup is not in it: the median \
         over rounds in seconds, and in parentheses the median of the per-round ratios to \
         the host. Cold: right after `echo 3 > /proc/sys/vm/drop_caches`; warm: the same \
         command again at once. The tree untarred holds {} files of at most 32 KiB \
         ({:.0} MiB) from /usr/share and /usr/lib (`tar -xf` into a new directory). The \
         writes open each of {} files ({:.1} MiB, copied from /usr/share into the \
         benchmark's directory beforehand) for appending, write one byte and close it; \
         in a VM the first write copies the file up into the VM's layer. VMs: `fvm \
         create VM --dir D` (disk layers) and `fvm create VM --dir D --layers volatile`, \
         new in every round and started before it.\n",
        b.tree_files,
        b.tree_mib(),
        b.write_files,
        b.write_bytes as f64 / f64::from(1u32 << 20)
    );
    let columns: Vec<(String, Align)> = std::iter::once(("operation".to_owned(), L))
        .chain(PLACES.iter().map(|p| (format!("{} s", p.label()), R)))
        .collect();
    let mut table = Table::new(&columns);
    for op in OPS {
        let host = b.get(op, Place::Host);
        let cells = PLACES.iter().map(|&p| {
            let v = b.get(op, p);
            match (median(v), p) {
                (None, _) => "–".to_owned(),
                (Some(m), Place::Host) => format!("{m:.3}"),
                (Some(m), _) => match median_ratio(v, host) {
                    Some(r) => format!("{m:.3} ({r:.2}×)"),
                    None => format!("{m:.3}"),
                },
            }
        });
        table.row(std::iter::once(op.label(b)).chain(cells));
    }
    s.push_str(&table.render());
    let _ = writeln!(s);
    if let Some(cp) = median(&b.cp) {
        let first = |p| {
            median_ratio(b.get(Op::FirstWrite, p), &b.cp)
                .map_or("–".into(), |r| format!("{r:.2}×"))
        };
        let _ = writeln!(
            s,
            "A copy-up is a copy: `cp --parents` of the same {} files to a new directory on \
             the same filesystem took {cp:.3} s on the host (median). The first write took \
             {} of that with disk layers, {} with volatile layers and {} with a throw-away \
             VM's tmpfs layers (medians of per-round ratios).\n",
            b.write_files,
            first(Place::Disk),
            first(Place::Volatile),
            first(Place::Throwaway)
        );
    }
    if !b.topdir {
        let _ = writeln!(
            s,
            "Note: the directories receiving trees and layers could not be given ext4's \
             TOPDIR attribute (`chattr +T`), so untar times may include the effect of \
             recently freed inodes.\n"
        );
    }
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_medians_and_ratios() {
        let mut b = IoBench {
            rounds: 2,
            tree_files: 100,
            tree_bytes: 100 << 20,
            write_files: 2000,
            write_bytes: 10 << 20,
            samples: vec![vec![Vec::new(); PLACES.len()]; OPS.len()],
            cp: vec![2.0, 2.0],
            topdir: true,
            var_tmp_fs: "ext4".to_owned(),
            took_s: 60.0,
        };
        for o in 0..OPS.len() {
            for (p, f) in [1.0, 2.0, 1.5, 0.5].iter().enumerate() {
                b.samples[o][p] = vec![*f, *f];
            }
        }
        let md = render(&b, "bench/run --io-only", "d", "k", "s");
        assert_eq!(
            md,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/io.md"))
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        assert!(md.contains("| untar 100 MiB (100 files) | 1.000 | 2.000 (2.00×) | 1.500 (1.50×) | 0.500 (0.50×) |"), "{md}");
        assert!(md.contains("took 2.000 s on the host"), "{md}");
        assert!(
            md.contains("1.00× of that with disk layers, 0.75× with volatile"),
            "{md}"
        );
    }
}

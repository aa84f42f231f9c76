//! The "VM copy" section of docs/BENCHMARKS.md: `fvm copy` of a VM with 1 GiB of
//! changes, next to `cp -a --reflink=auto` of the same layer directory onto the
//! same filesystem, measured in the same run, round by round.
//!
//! Each round starts from the same state: `sync` has written everything out,
//! outside the timing, so neither subject pays for the other's dirty pages. The
//! copies are kept until the end: ext4 skips inodes freed in the last minutes
//! when it allocates new ones, and deleting 1024 files per round made the next
//! round's creates scan past them, by luck of which block group each copy landed
//! in.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::measure::{Stats, Subject, check_output, run_interleaved};
use crate::store::Store;
use crate::table::Align::Right as R;
use crate::table::{Table, ratio};

pub const BEGIN: &str = "<!-- bench:copy:begin -->";
pub const END: &str = "<!-- bench:copy:end -->";

/// The VM being copied.
const VM: &str = "big";

/// What the copy benchmark measured.
#[derive(Debug)]
pub struct CopyBench {
    pub files: usize,
    pub rounds: usize,
    /// Bytes in the VM's layers (file content).
    pub bytes: u64,
    /// Whether fvm shared the content by reflink (from its `-v` log).
    pub reflinked: bool,
    /// (subject, command as shown, seconds).
    pub rows: Vec<(String, String, Stats)>,
}

/// Fill a VM with `files` files of 1 MiB of random data, then time both copies.
pub fn measure(store: &Store, files: usize, rounds: usize) -> Result<CopyBench> {
    store.create(VM).context("creating the VM to copy")?;
    eprintln!("fvm-bench: writing {files} MiB inside VM {VM}");
    let script = format!(
        "mkdir -p /opt/fvm-bench-copy && cd /opt/fvm-bench-copy && i=0 && \
         while [ $i -lt {files} ]; do head -c 1048576 /dev/urandom > f$i || exit 1; \
         i=$((i+1)); done"
    );
    check_output(store.fvm().args(["run", VM, "--", "sh", "-c", &script]))?;
    sync()?;
    let layers = store.vm_dir(VM).join("layers");
    let bytes = crate::store::disk_usage(&layers)?;

    // One untimed copy with -v tells how the content was copied.
    let probe = store
        .fvm()
        .args(["-v", "copy", VM, "probe"])
        .output()
        .context("running fvm -v copy")?;
    if !probe.status.success() {
        bail!(
            "fvm copy failed: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
    }
    let reflinked = String::from_utf8_lossy(&probe.stderr).contains("reflinked=true");
    sync()?;

    let cp_dir = |round: usize| store.root().join(format!("cp-{round}"));
    let fvm = Subject::new(
        "fvm copy",
        format!("fvm --root DIR copy {VM} VM-N"),
        |round| {
            let mut cmd = store.fvm();
            cmd.args(["copy", VM, &format!("copy-{round}")]);
            cmd
        },
    )
    .after(|_| sync());
    let cp = Subject::new(
        "cp -a --reflink=auto",
        format!("cp -a --reflink=auto DIR/vms/{VM}/layers DIR/cp-N"),
        |round| {
            let mut cmd = Command::new("cp");
            cmd.args(["-a", "--reflink=auto"])
                .arg(&layers)
                .arg(cp_dir(round));
            cmd
        },
    )
    .after(|_| sync());
    let mut subjects = vec![fvm, cp];
    eprintln!("fvm-bench: copy, 1 warm-up + {rounds} timed rounds");
    let samples = run_interleaved(&mut subjects, 1, rounds)?;
    drop(subjects);
    for round in 0..=rounds {
        store.delete(&format!("copy-{round}"))?;
        let dir = cp_dir(round);
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    store.delete("probe")?;
    store.delete(VM)?;
    let rows = samples
        .into_iter()
        .map(|s| {
            let secs: Vec<f64> = s.ms.iter().map(|ms| ms / 1000.0).collect();
            let stats = Stats::of(&secs).with_context(|| format!("no samples for {}", s.name))?;
            Ok((s.name, s.shown, stats))
        })
        .collect::<Result<_>>()?;
    Ok(CopyBench {
        files,
        rounds,
        bytes,
        reflinked,
        rows,
    })
}

fn sync() -> Result<()> {
    check_output(&mut Command::new("sync"))
}

/// The section, markers included.
pub fn render(b: &CopyBench, invocation: &str, date: &str, kernel: &str, store: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}\n## VM copy\n");
    let _ = writeln!(s, "Produced by `{invocation}`.\n");
    let gib = b.bytes as f64 / f64::from(1u32 << 30);
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {kernel}\n- store: {store}\n- the VM: {} files of \
         1 MiB of random data written inside it ({gib:.2} GiB on disk in its layers)\n\
         - rounds: {} timed, after 1 warm-up; each round runs both subjects once, in a new \
         random order, with `sync` after each copy, untimed; the copies are deleted at the end\n",
        b.files, b.rounds
    );
    let _ = writeln!(
        s,
        "Wall-clock time of the whole command, in seconds. `cp -a` copies the VM's \
         layer directory to the same filesystem; `fvm copy` also checks the VM is \
         stopped and makes the new VM atomically.\n"
    );
    let mut table = Table::of_stats("s", &[("GiB/s (median)", R), ("vs cp", R)]);
    let cp = b
        .rows
        .iter()
        .find(|(name, _, _)| name.starts_with("cp"))
        .map(|(_, _, st)| st.median);
    for (name, shown, st) in &b.rows {
        table.stats_row(
            name,
            shown,
            st,
            3,
            [format!("{:.2}", gib / st.median), ratio(st.median, cp)],
        );
    }
    s.push_str(&table.render());
    let how = if b.reflinked {
        "by reflink (the filesystem shares the blocks)"
    } else {
        "by `copy_file_range` (this filesystem has no reflinks)"
    };
    let _ = writeln!(s, "\n`fvm copy` copied the file content {how}.");
    let _ = writeln!(s, "{END}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_section_with_ratios_against_cp() {
        let st = |m: f64| Stats {
            median: m,
            p10: m / 2.0,
            p90: m * 2.0,
        };
        let b = CopyBench {
            files: 4,
            rounds: 3,
            bytes: 1 << 30,
            reflinked: false,
            rows: vec![
                ("fvm copy".into(), "fvm copy".into(), st(1.0)),
                ("cp -a --reflink=auto".into(), "cp -a".into(), st(2.0)),
            ],
        };
        let md = render(&b, "bench/run", "2000-01-01", "6.0", "/tmp (ext4)");
        assert_eq!(
            md,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/copy.md"))
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        assert!(
            md.contains("| fvm copy | `fvm copy` | 1.000 | 0.500 | 2.000 | 1.00 | 0.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| 2.000 | 1.000 | 4.000 | 0.50 | 1.00× |"),
            "{md}"
        );
        assert!(md.contains("copy_file_range"));
    }
}

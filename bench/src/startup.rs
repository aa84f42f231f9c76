//! The "VM startup" section of docs/BENCHMARKS.md: `/bin/true` alone, under
//! `unshare`, under bubblewrap and the installed peers, and through `fvm` (create,
//! cold run, exec into a running VM, run --rm), the targets, and the markdown.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, Result};

use crate::measure::{Samples, Stats, Subject, percentile};
use crate::store::{self, Store};
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, ratio};
use crate::{find_on_path, peers};

pub const BEGIN: &str = "<!-- bench:startup:begin -->";
pub const END: &str = "<!-- bench:startup:end -->";

/// What a row measures; decides its ratios' meaning and its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    True,
    Unshare,
    Bwrap,
    /// Another tool's throw-away sandbox (firejail, systemd-nspawn, podman): ratios, no
    /// target.
    Peer,
    Create,
    ColdRun,
    Exec,
    RunRm,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub kind: Kind,
    pub subject: String,
    pub command: String,
    pub stats: Stats,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disk {
    pub median_kib: f64,
    pub vms: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub invocation: String,
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub rounds: usize,
    pub warmup: usize,
    pub store: String,
    pub rows: Vec<Row>,
    pub disk: Option<Disk>,
    pub notes: Vec<String>,
}

pub const DISK_TARGET_KIB: f64 = 64.0;

impl Report {
    fn median(&self, kind: Kind) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.kind == kind)
            .map(|r| r.stats.median)
    }

    /// The target cell for a row: empty when the row has no target.
    pub fn target(&self, row: &Row) -> String {
        let m = row.stats.median;
        let (goal, met) = match row.kind {
            Kind::ColdRun => ("≤ bwrap", self.median(Kind::Bwrap).map(|b| m <= b)),
            Kind::Exec => (
                "≤ 2× unshare",
                self.median(Kind::Unshare).map(|u| m <= 2.0 * u),
            ),
            Kind::Create => ("< 5 ms", Some(m < 5.0)),
            _ => return String::new(),
        };
        format!("{}: {goal}", verdict(met))
    }

    /// The section, markers included.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let (unshare, bwrap) = (self.median(Kind::Unshare), self.median(Kind::Bwrap));
        let _ = writeln!(s, "{BEGIN}\n## VM startup\n");
        let _ = writeln!(s, "Produced by `{}`.\n", self.invocation);
        let _ = writeln!(
            s,
            "- date: {}\n- kernel: {}\n- CPUs: {}\n- rounds: {} timed, after {} warm-up; \
             each round runs every subject once, in a new random order\n- store: {}\n",
            self.date, self.kernel, self.cpus, self.rounds, self.warmup, self.store
        );
        let _ = writeln!(
            s,
            "Wall-clock time of the whole command, from spawn to exit, in milliseconds.\n"
        );
        if self.rows.iter().any(|r| r.kind == Kind::Peer) {
            let _ = writeln!(
                s,
                "Peers run `/bin/true` in the nearest thing each has to a throw-away \
                 copy-on-write view of the host; `bench/src/peers.rs` says why each command \
                 has the options it has.\n"
            );
        }
        let mut table = Table::of_stats("ms", &[("vs unshare", R), ("vs bwrap", R), ("target", L)]);
        for row in &self.rows {
            let st = row.stats;
            table.stats_row(
                &row.subject,
                &row.command,
                &st,
                2,
                [
                    ratio(st.median, unshare),
                    ratio(st.median, bwrap),
                    self.target(row),
                ],
            );
        }
        s.push_str(&table.render());
        if let Some(disk) = self.disk {
            let met = disk.median_kib < DISK_TARGET_KIB;
            let _ = writeln!(
                s,
                "\nDisk use of a freshly created VM (st_blocks × 512 of everything under \
                 `DIR/vms/NAME`): **{:.1} KiB**, median over {} VMs; target < {DISK_TARGET_KIB} \
                 KiB: {}.",
                disk.median_kib,
                disk.vms,
                verdict(Some(met))
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for note in &self.notes {
                let _ = writeln!(s, "Note: {note}");
            }
        }
        let _ = writeln!(s, "{END}");
        s
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "n/a",
    }
}

/// The host commands fvm is compared with; bwrap and each peer (firejail, systemd-nspawn,
/// podman) are skipped, with a note, if missing.
pub fn baselines(notes: &mut Vec<String>) -> Result<Vec<(Kind, Subject<'static>)>> {
    let unshare = find_on_path("unshare").context("unshare (util-linux) not found on PATH")?;
    let mut subjects = vec![
        (
            Kind::True,
            Subject::new("host process", "/bin/true", |_| Command::new("/bin/true")),
        ),
        (
            Kind::Unshare,
            Subject::new("unshare", "unshare -mpiuf /bin/true", move |_| {
                let mut cmd = Command::new(&unshare);
                cmd.args(["-mpiuf", "/bin/true"]);
                cmd
            }),
        ),
    ];
    if let Some(bwrap) = find_on_path("bwrap") {
        let bwrap_args = [
            "--bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--unshare-all",
            "--share-net",
            "/bin/true",
        ];
        let shown = format!("bwrap {}", bwrap_args.join(" "));
        subjects.push((
            Kind::Bwrap,
            Subject::new("bubblewrap", shown, move |_| {
                let mut cmd = Command::new(&bwrap);
                cmd.args(bwrap_args);
                cmd
            }),
        ));
    } else {
        notes.push(
            "bwrap is not installed, so its baseline, the ratios against it and the cold-run \
             target are missing; `bench/run` installs it"
                .to_owned(),
        );
    }
    subjects.extend(peers::subjects(notes));
    Ok(subjects)
}

/// The fvm commands, in a store that already holds a stopped `cold` and a running `warm`.
pub fn fvm_subjects<'a>(
    store: &'a Store,
    disk_bytes: &'a RefCell<Vec<u64>>,
    leaked: &'a RefCell<usize>,
) -> Vec<(Kind, Subject<'a>)> {
    let fvm_cmd = move |args: &[&str]| {
        let mut cmd = store.fvm();
        cmd.args(args);
        cmd
    };
    let create = Subject::new("fvm create", "fvm --root DIR create VM-N", |round| {
        store.create_command(&format!("c{round}"))
    })
    .after(|round| {
        // Outside the timing: account the fresh VM's disk use, then delete it so the
        // store stays the same size from round to round.
        let name = format!("c{round}");
        let bytes = store::disk_usage(&store.vm_dir(&name))?;
        disk_bytes.borrow_mut().push(bytes);
        store.delete(&name)
    });
    let cold = Subject::new(
        "fvm cold run",
        "fvm --root DIR run cold -- /bin/true",
        move |_| fvm_cmd(&["run", "cold", "--", "/bin/true"]),
    );
    let exec = Subject::new(
        "fvm exec into running VM",
        "fvm --root DIR run warm -- /bin/true",
        move |_| fvm_cmd(&["run", "warm", "--", "/bin/true"]),
    );
    let run_rm = Subject::new(
        "fvm run --rm",
        "fvm --root DIR run --rm -- /bin/true",
        move |_| fvm_cmd(&["run", "--rm", "--", "/bin/true"]),
    )
    .after(|_| {
        // Only `cold` and `warm` should be left between rounds, once the
        // throw-away VM's teardown (which deletes it after `run` returned)
        // is done: given up to 2 s, outside the timing.
        let mut extra = store.listed().len().saturating_sub(2);
        for _ in 0..200 {
            if extra == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            extra = store.listed().len().saturating_sub(2);
        }
        let mut leaked = leaked.borrow_mut();
        *leaked = (*leaked).max(extra);
        Ok(())
    });
    vec![
        (Kind::Create, create),
        (Kind::ColdRun, cold),
        (Kind::Exec, exec),
        (Kind::RunRm, run_rm),
    ]
}

pub fn rows(kinds: &[Kind], samples: &[Samples]) -> Result<Vec<Row>> {
    kinds
        .iter()
        .zip(samples)
        .map(|(&kind, s)| {
            Ok(Row {
                kind,
                subject: s.name.clone(),
                command: s.shown.clone(),
                stats: Stats::of(&s.ms).with_context(|| format!("no samples for {}", s.name))?,
            })
        })
        .collect()
}

pub fn disk(bytes: &[u64]) -> Option<Disk> {
    let mut kib: Vec<f64> = bytes.iter().map(|&b| b as f64 / 1024.0).collect();
    kib.sort_by(f64::total_cmp);
    Some(Disk {
        median_kib: percentile(&kib, 50.0)?,
        vms: kib.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: Kind, median: f64) -> Row {
        Row {
            kind,
            subject: format!("{kind:?}"),
            command: "cmd | x".to_owned(),
            stats: Stats {
                median,
                p10: median / 2.0,
                p90: median * 2.0,
            },
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            invocation: "sudo bench/run".to_owned(),
            date: "2000-01-01T00:00:00Z".to_owned(),
            kernel: "6.0".to_owned(),
            cpus: 2,
            rounds: 10,
            warmup: 2,
            store: "/tmp (ext4)".to_owned(),
            rows,
            disk: Some(Disk {
                median_kib: 12.0,
                vms: 10,
            }),
            notes: vec!["a note".to_owned()],
        }
    }

    #[test]
    fn targets_and_ratios() {
        let r = report(vec![
            row(Kind::Unshare, 2.0),
            row(Kind::Bwrap, 4.0),
            row(Kind::Create, 5.0),
            row(Kind::ColdRun, 4.0),
            row(Kind::Exec, 4.5),
        ]);
        let targets: Vec<String> = r.rows.iter().map(|row| r.target(row)).collect();
        assert_eq!(
            targets,
            [
                "",
                "",
                "missed: < 5 ms",
                "met: ≤ bwrap",
                "missed: ≤ 2× unshare"
            ]
        );
        let md = r.render();
        assert_eq!(
            md,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/startup.md"))
        );
        assert!(md.starts_with(BEGIN) && md.ends_with(&format!("{END}\n")));
        assert!(
            md.contains(
                "| ColdRun | `cmd \\| x` | 4.00 | 2.00 | 8.00 | 2.00× | 1.00× | met: ≤ bwrap |"
            ),
            "{md}"
        );
        assert!(md.contains("**12.0 KiB**, median over 10 VMs; target < 64 KiB: met."));
        assert!(md.contains("Note: a note"));
    }

    #[test]
    fn peers_get_ratios_and_no_target() {
        let r = report(vec![
            row(Kind::Unshare, 2.0),
            row(Kind::Bwrap, 4.0),
            row(Kind::Peer, 10.0),
        ]);
        assert_eq!(r.target(&r.rows[2]), "");
        let md = r.render();
        assert_eq!(
            md,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/snapshots/startup-peers.md"
            ))
        );
        assert!(
            md.contains("| Peer | `cmd \\| x` | 10.00 | 5.00 | 20.00 | 5.00× | 2.50× |  |"),
            "{md}"
        );
        assert!(md.contains("Peers run `/bin/true`"), "{md}");
        let without = report(vec![row(Kind::Unshare, 2.0)]).render();
        assert!(!without.contains("Peers run"), "{without}");
    }

    #[test]
    fn missing_bwrap_makes_ratio_and_target_unavailable() {
        let r = report(vec![row(Kind::Unshare, 2.0), row(Kind::ColdRun, 3.0)]);
        assert_eq!(r.target(&r.rows[1]), "n/a: ≤ bwrap");
        assert!(r.render().contains("| 1.50× | – | n/a: ≤ bwrap |"));
    }
}

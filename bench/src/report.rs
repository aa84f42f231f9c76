//! The "VM startup" section of docs/BENCHMARKS.md: targets, markdown, marker splicing.
//!
//! The file is shared with other benchmarks, so this module only ever replaces the text
//! between its own markers and refuses to touch a file whose markers are malformed.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::measure::Stats;
use crate::table::Align::{Left as L, Right as R};
use crate::table::{Table, code, ratio};

pub const BEGIN: &str = "<!-- bench:startup:begin -->";
pub const END: &str = "<!-- bench:startup:end -->";
const HEADER: &str = "# Benchmarks\n\nRerun everything with `sudo bench/run`.\n";

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
        let mut table = Table::new(&[
            ("subject", L),
            ("command", L),
            ("median ms", R),
            ("p10 ms", R),
            ("p90 ms", R),
            ("vs unshare", R),
            ("vs bwrap", R),
            ("target", L),
        ]);
        for row in &self.rows {
            let st = row.stats;
            table.row([
                row.subject.clone(),
                code(&row.command),
                format!("{:.2}", st.median),
                format!("{:.2}", st.p10),
                format!("{:.2}", st.p90),
                ratio(st.median, unshare),
                ratio(st.median, bwrap),
                self.target(row),
            ]);
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

/// Puts `section` (markers included) into `existing`, replacing an earlier version of it
/// and keeping everything else. A missing file gets a short header first. The section's
/// first line is its begin marker (`<!-- bench:NAME:begin -->`); its end marker is the
/// same with `end`.
pub fn splice(existing: Option<&str>, section: &str) -> Result<String> {
    let begin = section.lines().next().unwrap_or_default();
    if !begin.starts_with("<!-- bench:") || !begin.ends_with(":begin -->") {
        bail!("a section must start with a <!-- bench:NAME:begin --> marker");
    }
    let end = begin.replace(":begin -->", ":end -->");
    let (begin, end) = (begin, end.as_str());
    let Some(text) = existing else {
        return Ok(format!("{HEADER}\n{section}"));
    };
    let begins: Vec<usize> = text.match_indices(begin).map(|(i, _)| i).collect();
    let ends: Vec<usize> = text.match_indices(end).map(|(i, _)| i).collect();
    match (begins.as_slice(), ends.as_slice()) {
        ([], []) => {
            let sep = match text {
                "" => "",
                t if t.ends_with("\n\n") => "",
                t if t.ends_with('\n') => "\n",
                _ => "\n\n",
            };
            Ok(format!("{text}{sep}{section}"))
        }
        ([b], [e]) if b < e => {
            let mut after = &text[e + end.len()..];
            // The section ends with its own newline; don't let them pile up.
            after = after.strip_prefix('\n').unwrap_or(after);
            Ok(format!("{}{section}{after}", &text[..*b]))
        }
        _ => bail!(
            "expected at most one {begin} followed by one {end}, found {} and {}",
            begins.len(),
            ends.len()
        ),
    }
}

/// Replaces this benchmark's section of the file at `path`, atomically.
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let text = splice(existing.as_deref(), section)
        .with_context(|| format!("updating {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTION: &str = "<!-- bench:startup:begin -->\nnew\n<!-- bench:startup:end -->\n";

    #[test]
    fn missing_file_gets_header() {
        let out = splice(None, SECTION).unwrap();
        assert!(out.starts_with("# Benchmarks\n"));
        assert!(out.contains("sudo bench/run"));
        assert!(out.ends_with(SECTION));
    }

    #[test]
    fn section_is_appended_when_absent() {
        let out = splice(Some("# Benchmarks\n\n## Other\nx\n"), SECTION).unwrap();
        assert_eq!(out, format!("# Benchmarks\n\n## Other\nx\n\n{SECTION}"));
        let out = splice(Some("no newline"), SECTION).unwrap();
        assert_eq!(out, format!("no newline\n\n{SECTION}"));
    }

    #[test]
    fn section_is_replaced_and_the_rest_kept() {
        let old = format!(
            "# Benchmarks\n\nintro\n\n{BEGIN}\nold\nlines\n{END}\n\n## Later\n\
             <!-- bench:other:begin -->\nkeep\n<!-- bench:other:end -->\n"
        );
        let out = splice(Some(&old), SECTION).unwrap();
        assert_eq!(
            out,
            format!(
                "# Benchmarks\n\nintro\n\n{SECTION}\n## Later\n\
                 <!-- bench:other:begin -->\nkeep\n<!-- bench:other:end -->\n"
            )
        );
        // Splicing is idempotent.
        assert_eq!(splice(Some(&out), SECTION).unwrap(), out);
    }

    #[test]
    fn malformed_markers_are_refused() {
        for bad in [
            format!("{BEGIN}\nno end\n"),
            format!("{END}\n{BEGIN}\n"),
            format!("{BEGIN}\n{END}\n{BEGIN}\n{END}\n"),
        ] {
            assert!(splice(Some(&bad), SECTION).is_err(), "{bad}");
        }
    }

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

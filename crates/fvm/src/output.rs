//! Human output: tables, sizes and progress bars. JSON output goes through serde
//! directly.

use std::io::{self, IsTerminal, Write};

use comfy_table::{Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A table with a header row and no borders, like `podman ps`.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    let mut s = String::new();
    for line in t.to_string().lines() {
        s.push_str(line.trim());
        s.push('\n');
    }
    s
}

/// Bytes as a short human size: 0B, 512B, 4.0K, 12.3M, 2.1G.
/// A VM's disk use, against its `disk` limit if it has one (`1.2M/64.0M`).
pub fn disk(vm: &fvm_engine::vm::VmInfo) -> String {
    match vm.disk_limits.and_then(|d| d.bytes_limit) {
        Some(limit) => format!("{}/{}", size(vm.disk), size(limit)),
        None => size(vm.disk),
    }
}

/// A VM's files and directories, against its `inodes` limit if it has one.
pub fn inodes(vm: &fvm_engine::vm::VmInfo) -> String {
    match vm.disk_limits.map(|d| (d.inodes, d.inodes_limit)) {
        Some((Some(n), Some(limit))) => format!("{n}/{limit}"),
        Some((Some(n), None)) => n.to_string(),
        _ => "-".to_owned(),
    }
}

pub use fvm_engine::limits::human_bytes as size;

/// Work smaller than this finishes too soon for a bar to be worth drawing...
const PROGRESS_MIN_BYTES: u64 = 64 << 20;
/// ... unless it has taken this long already (many small files).
pub const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// A progress bar in bytes on stderr, for long operations (copy). Only made when
/// stderr is a terminal, drawn only once the work is known to be big, and
/// cleared when done or dropped, so that output and errors stay on clean lines.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    bar: Option<ProgressBar>,
    started: std::time::Instant,
}

impl Progress {
    pub fn on_terminal(what: &'static str) -> Option<Progress> {
        io::stderr().is_terminal().then(|| Progress {
            what,
            bar: None,
            started: std::time::Instant::now(),
        })
    }

    pub fn set(&mut self, done: u64, total: u64) {
        if self.bar.is_none()
            && (total >= PROGRESS_MIN_BYTES || self.started.elapsed() >= PROGRESS_AFTER)
        {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.what);
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            // The total is an estimate; never let the bar run past its end.
            if done > bar.length().unwrap_or(0) {
                bar.set_length(done);
            }
            bar.set_position(done);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A count of things done, on stderr, for work whose total isn't known ahead
/// (reading a large layer): only on a terminal, drawn once the work has taken
/// [`PROGRESS_AFTER`], cleared when done or dropped.
#[derive(Debug)]
pub struct Counter {
    what: &'static str,
    bar: Option<ProgressBar>,
    started: std::time::Instant,
}

impl Counter {
    pub fn on_terminal(what: &'static str) -> Option<Counter> {
        io::stderr().is_terminal().then(|| Counter {
            what,
            bar: None,
            started: std::time::Instant::now(),
        })
    }

    pub fn set(&mut self, done: u64) {
        if self.bar.is_none() && self.started.elapsed() >= PROGRESS_AFTER {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{msg}: {human_pos} entries {elapsed}")
            {
                bar.set_style(style);
            }
            bar.set_message(self.what);
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Standard output was closed by its reader (`fvm list | head -1`): not an error
/// worth a message, as in other Unix tools.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

pub fn print(text: &str) -> anyhow::Result<()> {
    print_bytes(text.as_bytes())
}

pub fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => Ok(other?),
    }
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_ls_h() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(1023), "1023B");
        assert_eq!(size(4096), "4.0K");
        assert_eq!(size(12 * 1024 * 1024 + 300 * 1024), "12.3M");
    }

    #[test]
    fn table_has_no_borders_and_an_uppercase_header() {
        let t = table(
            &["name", "status"],
            vec![vec!["web1".into(), "running".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{t}");
        assert!(lines[1].starts_with("web1"), "{t}");
        assert!(!t.contains('|') && !t.contains('+'), "{t}");
    }
}

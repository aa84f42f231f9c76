//! Human output: tables and sizes. JSON output goes through serde directly.

use std::io::{self, Write};

use comfy_table::{Table, presets};

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
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
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

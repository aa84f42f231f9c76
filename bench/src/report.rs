//! Writing a section into docs/BENCHMARKS.md: marker splicing.
//!
//! The file is shared by every section, so a section only ever replaces the text
//! between its own markers, and a file whose markers are malformed is refused.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

const HEADER: &str = "# Benchmarks\n\nRerun everything with `sudo bench/run`.\n";

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
    use crate::startup::{BEGIN, END};

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
}

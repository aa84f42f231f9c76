//! `fvm diff`: what a VM changed, as `A`/`C`/`D` lines, a `--stat` summary, or
//! each change in full (`-u`).
//!
//! A VM may create any name and put anything in a file: names and link targets
//! are quoted where they could mislead (see `fvm_engine::os::quote`), so that
//! every change is exactly one line; in `-u` the content lines of a text file are
//! written as they are to a pipe (a patch that applies), and with control
//! characters escaped on a terminal or in colour, so a VM's file can't send
//! escape sequences to the reviewer's terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result};
use fvm_engine::changes::diff::{Change, Kind, bytes_hex_unless_utf8, hex_unless_utf8};
use fvm_engine::changes::show::{Content, Detail, Side};
use fvm_engine::os::quote;
use fvm_engine::vm::Selection;
use serde::Serialize;

use super::{Context, vm_name};
use crate::cli::{DiffArgs, ReviewArgs};
use crate::output;

pub fn run(ctx: &Context<'_>, args: &DiffArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let engine = ctx.engine_for(&name)?;
    let sel = Selection::paths(&vm_path_args(&args.paths)?);
    let review = &args.review;
    if review.unified {
        // Printed change by change: a layer of many large files is never held
        // in memory at once.
        let style = Style::new(review);
        let json = ctx.json();
        let mut first = true;
        let mut closed = false;
        let mut each = |d: Detail| -> std::io::Result<()> {
            let text = if json {
                let v = serde_json::to_string_pretty(&JsonDetail::from(&d))
                    .map_err(std::io::Error::other)?;
                format!("{}{v}", if first { "[\n" } else { ",\n" })
            } else {
                unified(std::slice::from_ref(&d), &style)
            };
            first = false;
            output::print(&text).map_err(|e| {
                closed = e.is::<output::StdoutClosed>();
                std::io::Error::other(format!("{e:#}"))
            })
        };
        let done = engine.diff_details(&name, &sel, review.all, &mut each);
        if closed {
            return Err(output::StdoutClosed.into());
        }
        done?;
        if json {
            output::print(if first { "[]\n" } else { "\n]\n" })?;
        }
        return Ok(0);
    }
    let changes = {
        // A layer of a million entries takes seconds to read: say how far it got.
        let mut counter = output::Counter::on_terminal("reading the vm's layers");
        engine.diff(&name, &sel, review.all, &mut |n| {
            if let Some(c) = &mut counter {
                c.set(n);
            }
        })?
    };
    if review.stat {
        let stat = Stat::of(&changes);
        if ctx.json() {
            output::print_json(&stat)?;
        } else {
            output::print(&stat.render())?;
        }
        return Ok(0);
    }
    if ctx.json() {
        output::print_json(&changes)?;
        return Ok(0);
    }
    let mut text = String::new();
    for c in &changes {
        text.push(c.kind.letter());
        text.push(' ');
        text.push_str(&quote::path(&c.path));
        text.push('\n');
    }
    output::print(&text)?;
    Ok(0)
}

/// Paths into a VM's filesystem as given on the command line: a relative one is
/// read from the current directory, as `cp` and git read it (the engine then
/// resolves `.` and `..` by name, and refuses a path that leads above `/`).
pub(super) fn vm_path_args(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.iter().all(|p| p.is_absolute()) {
        return Ok(paths.to_vec());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(paths.iter().map(|p| cwd.join(p)).collect())
}

/// `--stat`: counts and bytes per directory two levels down (`/usr/lib`,
/// `/etc/nginx`), which splits an upgrade of a hundred packages into a screen
/// of lines, and a total.
#[derive(Debug, Default, Serialize)]
struct Stat {
    dirs: Vec<StatRow>,
    total: StatRow,
}

#[derive(Debug, Default, Clone, Serialize)]
struct StatRow {
    #[serde(serialize_with = "lossy")]
    dir: PathBuf,
    /// The directory's bytes in hex when it is not UTF-8 (`dir` then shows
    /// U+FFFD for the bad bytes), as `path_hex` in `diff --json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    dir_hex: Option<String>,
    added: u64,
    changed: u64,
    deleted: u64,
    /// Size of the VM's version of the files and symlinks added or changed.
    bytes: u64,
}

fn lossy<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

impl StatRow {
    fn add(&mut self, c: &Change) {
        match c.kind {
            Kind::Added => self.added += 1,
            Kind::Changed => self.changed += 1,
            Kind::Deleted => self.deleted += 1,
        }
        self.bytes += c.size;
    }
}

impl Stat {
    fn of(changes: &[Change]) -> Stat {
        let mut by_dir: BTreeMap<PathBuf, StatRow> = BTreeMap::new();
        let mut total = StatRow {
            dir: PathBuf::from("total"),
            ..StatRow::default()
        };
        for c in changes {
            let dir = group(&c.path);
            by_dir
                .entry(dir.clone())
                .or_insert_with(|| StatRow {
                    dir_hex: hex_unless_utf8(&dir),
                    dir,
                    ..StatRow::default()
                })
                .add(c);
            total.add(c);
        }
        Stat {
            dirs: by_dir.into_values().collect(),
            total,
        }
    }

    fn render(&self) -> String {
        let row = |r: &StatRow, name: String| {
            vec![
                name,
                r.added.to_string(),
                r.changed.to_string(),
                r.deleted.to_string(),
                output::size(r.bytes),
            ]
        };
        let mut rows: Vec<Vec<String>> = self
            .dirs
            .iter()
            .map(|r| row(r, quote::path(&r.dir).into_owned()))
            .collect();
        rows.push(row(&self.total, "total".to_owned()));
        output::table(&["dir", "A", "C", "D", "bytes"], rows)
    }
}

/// The directory a change counts under: its first two levels (`/usr/lib` for
/// `/usr/lib/x/y`), or its own directory when it is higher (`/etc` for
/// `/etc/hosts`, `/` for `/a`).
fn group(path: &Path) -> PathBuf {
    let names: Vec<_> = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let depth = names.len().saturating_sub(1).min(2);
    let mut dir = PathBuf::from("/");
    for n in &names[..depth] {
        dir.push(n);
    }
    dir
}

/// Colour and escaping for `-u`.
#[derive(Debug)]
struct Style {
    color: bool,
    /// Escape control characters in content lines.
    escape: bool,
}

impl Style {
    fn new(r: &ReviewArgs) -> Style {
        let tty = std::io::stdout().is_terminal();
        let color = match r.color.as_str() {
            "always" => true,
            "never" => false,
            _ => tty,
        };
        Style {
            color,
            escape: tty || color,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[m")
        } else {
            text.to_owned()
        }
    }

    /// A line of a VM's (or the host's) file.
    fn content(&self, line: &str) -> String {
        if self.escape {
            // Tabs stay tabs; every other control character is shown escaped.
            line.split('\t')
                .map(quote::line)
                .collect::<Vec<_>>()
                .join("\t")
        } else {
            line.to_owned()
        }
    }
}

fn unified(details: &[Detail], style: &Style) -> String {
    let mut out = String::new();
    for d in details {
        let shown = quote::path(&d.path);
        out.push_str(&style.paint("1", &format!("diff --fvm {shown}")));
        out.push('\n');
        for line in metadata(d.host.as_ref(), d.vm.as_ref()) {
            out.push_str(&line);
            out.push('\n');
        }
        content(d, style, &mut out);
    }
    out
}

fn mode(s: &Side) -> String {
    format!("{} {:04o} {}:{}", s.kind, s.mode, s.uid, s.gid)
}

/// The metadata lines: what each side is, and what differs.
fn metadata(host: Option<&Side>, vm: Option<&Side>) -> Vec<String> {
    let mut out = Vec::new();
    match (host, vm) {
        (None, Some(v)) => out.push(format!("new {}", mode(v))),
        (Some(h), None) => out.push(format!("deleted {}", mode(h))),
        (Some(h), Some(v)) => {
            if (h.kind, h.mode, h.uid, h.gid) != (v.kind, v.mode, v.uid, v.gid) {
                out.push(format!("old {}", mode(h)));
                out.push(format!("new {}", mode(v)));
            }
        }
        (None, None) => out.push("gone from both sides since it was listed".to_owned()),
    }
    let target = |s: Option<&Side>| s.and_then(|s| s.target.clone());
    let (ht, vt) = (target(host), target(vm));
    if ht != vt {
        let show = |t: &Option<Vec<u8>>| {
            t.as_deref()
                .map_or_else(|| "(none)".to_owned(), |t| quote::bytes(t).into_owned())
        };
        out.push(format!("symlink target {} -> {}", show(&ht), show(&vt)));
    }
    let none = Vec::new();
    let hx = host.map_or(&none, |s| &s.xattrs);
    let vx = vm.map_or(&none, |s| &s.xattrs);
    let names: std::collections::BTreeSet<_> = hx.iter().chain(vx).map(|(n, _)| n).collect();
    for n in names {
        let get = |x: &Vec<(std::ffi::CString, Vec<u8>)>| {
            x.iter().find(|(m, _)| m == n).map(|(_, v)| v.clone())
        };
        let (a, b) = (get(hx), get(vx));
        if a != b {
            let show = |v: &Option<Vec<u8>>| {
                v.as_deref()
                    .map_or_else(|| "(none)".to_owned(), |v| quote::bytes(v).into_owned())
            };
            out.push(format!(
                "xattr {} {} -> {}",
                quote::bytes(n.to_bytes()),
                show(&a),
                show(&b)
            ));
        }
    }
    out
}

/// The content part: a unified diff of text, else sizes and checksums.
fn content(d: &Detail, style: &Style, out: &mut String) {
    fn text(s: Option<&Side>) -> Option<&str> {
        match s.map(|s| &s.content) {
            None | Some(Content::None) => Some(""),
            Some(Content::Text(t)) => Some(t.as_str()),
            Some(_) => None,
        }
    }
    let regular = |s: Option<&Side>| s.is_some_and(|s| s.kind == "file");
    if !regular(d.host.as_ref()) && !regular(d.vm.as_ref()) {
        return;
    }
    if let (Some(a), Some(b)) = (text(d.host.as_ref()), text(d.vm.as_ref())) {
        if a == b {
            return;
        }
        // `host/PATH` and `vm/PATH`, like git's `a/` and `b/`, quoted as a whole.
        let side = |s: Option<&Side>, prefix: &str| {
            if regular(s) {
                let mut p = prefix.as_bytes().to_vec();
                p.extend_from_slice(d.path.as_os_str().as_encoded_bytes());
                quote::bytes(&p).into_owned()
            } else {
                "/dev/null".to_owned()
            }
        };
        let (from, to) = (side(d.host.as_ref(), "host"), side(d.vm.as_ref(), "vm"));
        let diff = similar::TextDiff::from_lines(a, b);
        out.push_str(&style.paint("1", &format!("--- {from}")));
        out.push('\n');
        out.push_str(&style.paint("1", &format!("+++ {to}")));
        out.push('\n');
        for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
            out.push_str(&style.paint("36", &hunk.header().to_string()));
            out.push('\n');
            for change in hunk.iter_changes() {
                let (sign, code) = match change.tag() {
                    similar::ChangeTag::Delete => ('-', Some("31")),
                    similar::ChangeTag::Insert => ('+', Some("32")),
                    similar::ChangeTag::Equal => (' ', None),
                };
                let value = change.value();
                let body = value.strip_suffix('\n').unwrap_or(value);
                let line = format!("{sign}{}", style.content(body));
                match code {
                    Some(c) => out.push_str(&style.paint(c, &line)),
                    None => out.push_str(&line),
                }
                out.push('\n');
                if change.missing_newline() {
                    out.push_str("\\ No newline at end of file\n");
                }
            }
        }
        return;
    }
    let describe = |s: Option<&Side>| match s {
        None => "none".to_owned(),
        Some(s) => match &s.content {
            Content::Digest(h) => format!("{} bytes, sha256 {h}", s.size),
            Content::Text(_) => format!("{} bytes of text", s.size),
            Content::Unreadable(why) => format!("unreadable ({})", quote::line(why)),
            Content::None => s.kind.to_owned(),
        },
    };
    out.push_str(&format!(
        "binary: host {} -> vm {}\n",
        describe(d.host.as_ref()),
        describe(d.vm.as_ref())
    ));
}

/// `diff -u --json`: each side's metadata and content as data. A path or link
/// target that is not UTF-8 has its bytes in hex beside it (`path_hex`,
/// `target_hex`), as in `diff --json`.
#[derive(Debug, Serialize)]
struct JsonDetail {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    kind: Kind,
    host: Option<JsonSide>,
    vm: Option<JsonSide>,
}

#[derive(Debug, Serialize)]
struct JsonSide {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

impl From<&Detail> for JsonDetail {
    fn from(d: &Detail) -> JsonDetail {
        let side = |s: &Side| JsonSide {
            kind: s.kind,
            mode: s.mode,
            uid: s.uid,
            gid: s.gid,
            size: s.size,
            xattrs: s
                .xattrs
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string_lossy().into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
            target: s
                .target
                .as_deref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            target_hex: s.target.as_deref().and_then(bytes_hex_unless_utf8),
            text: match &s.content {
                Content::Text(t) => Some(t.clone()),
                _ => None,
            },
            sha256: match &s.content {
                Content::Digest(h) => Some(h.clone()),
                _ => None,
            },
        };
        JsonDetail {
            path: d.path.to_string_lossy().into_owned(),
            path_hex: hex_unless_utf8(&d.path),
            kind: d.kind,
            host: d.host.as_ref().map(side),
            vm: d.vm.as_ref().map(side),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_groups_two_levels_down() {
        assert_eq!(group(Path::new("/usr/lib/x/y")), Path::new("/usr/lib"));
        assert_eq!(group(Path::new("/etc/hosts")), Path::new("/etc"));
        assert_eq!(group(Path::new("/a")), Path::new("/"));
        assert_eq!(group(Path::new("/usr/lib")), Path::new("/usr"));
    }

    #[test]
    fn content_lines_are_escaped_only_for_a_terminal() {
        let plain = Style {
            color: false,
            escape: false,
        };
        let tty = Style {
            color: false,
            escape: true,
        };
        assert_eq!(plain.content("a\x1b[2Jb\tc"), "a\x1b[2Jb\tc");
        assert_eq!(tty.content("a\x1b[2Jb\tc"), "a\\x1b[2Jb\tc");
    }
}

//! Parse `/proc/self/mountinfo`: the host's mount table, the input of every VM's
//! mount plan.
//!
//! Hand-written rather than procfs's parser because paths must be unescaped (the
//! kernel writes space, tab, newline and backslash as `\040`, `\011`, `\012`,
//! `\134`) and start latency matters: this runs on every VM start.

use std::path::PathBuf;

/// One line of mountinfo, reduced to what fvm uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem.
    pub dev: (u32, u32),
    /// The directory of the filesystem that is the root of this mount (not `/` for
    /// bind mounts of a subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`, `nosuid`, `nodev`, `noexec`, `relatime`, ...).
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
}

impl MountEntry {
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.iter().any(|o| o == opt)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot parse mountinfo line {line}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
}

/// Parse the whole table, in the kernel's order (mount order: later mounts come
/// after, and may hide, earlier ones).
pub fn parse(text: &str) -> Result<Vec<MountEntry>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).ok_or_else(|| ParseError {
                line: i + 1,
                text: l.to_owned(),
            })
        })
        .collect()
}

/// Read this process's mount table.
pub fn read_self() -> std::io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    parse(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let id = l.next()?.parse().ok()?;
    let parent = l.next()?.parse().ok()?;
    let (major, minor) = l.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let root = unescape(l.next()?);
    let mount_point = unescape(l.next()?);
    let options = l.next()?.split(',').map(str::to_owned).collect();
    let mut r = right.split(' ');
    let fs_type = r.next()?.to_owned();
    let source = r.next().unwrap_or("").to_owned();
    Some(MountEntry {
        id,
        parent,
        dev,
        root,
        mount_point,
        options,
        fs_type,
        source,
    })
}

fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // `\ooo` is one byte; a value past 0o377 (which the kernel never writes)
        // is no escape, and stays as it is.
        let byte = b
            .get(i + 1..i + 4)
            .filter(|_| b[i] == b'\\')
            .and_then(|digits| {
                digits.iter().try_fold(0u16, |value, &c| {
                    (b'0'..=b'7')
                        .contains(&c)
                        .then(|| value * 8 + u16::from(c - b'0'))
                })
            });
        if let Some(byte) = byte.and_then(|v| u8::try_from(v).ok()) {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Where mounts of filesystem type `fs_type` are in the mount table of the
/// process `init` (a VM's init), as it sees them; empty if it is gone.
pub fn mount_points_of(init: &crate::os::procid::ProcId, fs_type: &str) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{}/mountinfo", init.pid)) else {
        return Vec::new();
    };
    // Checked after reading: the pid still names the VM's init.
    if !init.is_alive() {
        return Vec::new();
    }
    parse(&text)
        .map(|table| {
            table
                .iter()
                .filter(|m| m.fs_type == fs_type)
                .map(|m| m.mount_point.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    #[test]
    fn parses_a_line_with_optional_fields_and_escapes() {
        let t = "36 35 98:0 /mnt\\040a /mnt/my\\040disk rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n";
        let m = parse(t).unwrap();
        assert_eq!(m.len(), 1);
        let e = &m[0];
        assert_eq!((e.id, e.parent, e.dev), (36, 35, (98, 0)));
        assert_eq!(e.root, PathBuf::from("/mnt a"));
        assert_eq!(e.mount_point, PathBuf::from("/mnt/my disk"));
        assert!(e.has_option("noatime") && !e.has_option("ro"));
        assert_eq!(
            (e.fs_type.as_str(), e.source.as_str()),
            ("ext3", "/dev/root")
        );
    }

    #[test]
    fn unescapes_backslash_and_keeps_trailing_backslash() {
        assert_eq!(unescape("/a\\134b"), PathBuf::from("/a\\b"));
        assert_eq!(unescape("/a\\"), PathBuf::from("/a\\"));
        assert_eq!(unescape("/a\\01"), PathBuf::from("/a\\01"));
    }

    #[test]
    fn rejects_garbage_with_its_line_number() {
        let e = parse("22 27 0:21 / /proc rw - proc proc rw\nnonsense\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn reads_this_machine() {
        let m = read_self().unwrap();
        assert!(m.iter().any(|e| e.mount_point == Path::new("/")));
    }

    /// The kernel's escaping of a path in mountinfo (`seq_path` with " \t\n\\").
    fn escape(path: &[u8]) -> String {
        let mut out = String::new();
        for &b in path {
            match b {
                b' ' | b'\t' | b'\n' | b'\\' => out.push_str(&format!("\\{b:03o}")),
                _ => out.push(char::from(b)),
            }
        }
        out
    }

    #[test]
    fn any_escaped_path_reads_back_as_itself() {
        // ASCII bytes (the line is text), the escaped ones often, and the
        // characters that look like escapes without being one.
        let special = b" \t\n\\01234567/89";
        crate::testing::cases("mountinfo paths", 3000, |rng| {
            let mut root = crate::testing::bytes(rng, 12, special);
            let mut point = crate::testing::bytes(rng, 12, special);
            for path in [&mut root, &mut point] {
                path.retain(|b| b.is_ascii() && *b != 0);
                path.insert(0, b'/');
            }
            let line = format!(
                "36 35 98:0 {} {} rw,noatime shared:7 - ext4 /dev/sda1 rw",
                escape(&root),
                escape(&point)
            );
            let e = &parse(&line).unwrap()[0];
            assert_eq!(e.root.as_os_str().as_bytes(), root, "{line:?}");
            assert_eq!(e.mount_point.as_os_str().as_bytes(), point, "{line:?}");
        });
    }

    #[test]
    fn any_text_is_parsed_or_refused_without_a_panic() {
        let valid =
            "36 35 98:0 /mnt\\040a /mnt/my\\134disk rw,noatime master:1 - ext3 /dev/root rw\n";
        crate::testing::cases("mountinfo text", 3000, |rng| {
            let mut text = valid.as_bytes().to_vec();
            // Random edits of a valid line, with what the parser looks for.
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(..=text.len());
                let piece = crate::testing::bytes(rng, 5, b"\\7770 -:\n9");
                if rng.bool() && at < text.len() {
                    let end = (at + piece.len()).min(text.len());
                    text.splice(at..end, piece);
                } else {
                    text.splice(at..at, piece);
                }
            }
            let text = String::from_utf8_lossy(&text);
            if let Ok(entries) = parse(&text) {
                assert!(entries.len() <= text.lines().count());
            }
        });
        // The escape of a value past a byte, which the kernel never writes.
        assert_eq!(unescape("/a\\777b"), PathBuf::from("/a\\777b"));
        assert_eq!(unescape("/a\\400"), PathBuf::from("/a\\400"));
        assert_eq!(
            unescape("/a\\377"),
            PathBuf::from(std::ffi::OsStr::from_bytes(b"/a\xff"))
        );
        assert_eq!(unescape("/mnt/x\\040"), PathBuf::from("/mnt/x "));
    }
}

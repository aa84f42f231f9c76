//! How fvm shows a person a string that came from a VM: file names, link targets,
//! command lines, anything a VM could have chosen.
//!
//! Such a string is hostile: a name with an escape sequence can erase lines of a
//! review on a terminal, a newline can forge a whole line, a right-to-left
//! override can reverse what follows, and invalid UTF-8 would be shown as U+FFFD,
//! the same for any bytes. The rule, in the spirit of git's `core.quotePath` and
//! `ls --quoting-style=c`:
//!
//! - A string is shown as it is when it is valid UTF-8 with no control character
//!   (C0, DEL, C1), no invisible formatting or direction character (U+061C,
//!   U+180E, U+200B-U+200F, U+2028-U+202E, U+2060-U+206F, U+FEFF, U+FFF9-U+FFFB),
//!   no `"` and no `\`, is not empty and doesn't begin or end with white space.
//! - Otherwise it is shown between double quotes, with `\"` and `\\` for the quote
//!   and the backslash, `\t`, `\n`, `\r` for those, `\xHH` for any other control
//!   byte and for each byte that is not valid UTF-8, and `\u{HHHH}` for the
//!   formatting and direction characters and the C1 controls.
//!
//! So every shown string is one line of printable text, and two different
//! strings are never shown the same. JSON output is not quoted: JSON has its own
//! exact escapes.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `bytes` as a person should see them (see the module's rule).
pub fn bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && is_plain(text)
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if (c as u32) < 0x20 || c == '\x7f' => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() || is_hidden(c) => {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// A path as a person should see it.
pub fn path(path: &Path) -> Cow<'_, str> {
    bytes(path.as_os_str().as_bytes())
}

/// Text as a person should see it: [`bytes`] for a `str`.
pub fn text(text: &str) -> Cow<'_, str> {
    bytes(text.as_bytes())
}

/// A message that may carry pieces of a VM's text, made safe to print as one
/// line: control and formatting characters become `\xHH` / `\u{HHHH}`, the rest
/// is left as it is. For messages whose VM-made parts were not quoted where they
/// were put in (error chains from the system); a quoted part passes unchanged.
pub fn line(message: &str) -> Cow<'_, str> {
    if !message.chars().any(|c| c.is_control() || is_hidden(c)) {
        return Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if (c as u32) < 0x20 || c == '\x7f' {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else if c.is_control() || is_hidden(c) {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_plain(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with(char::is_whitespace)
        && !text.ends_with(char::is_whitespace)
        && !text
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\' || is_hidden(c))
}

/// Characters that print as nothing, or change how the text around them is
/// shown: the Unicode format characters that matter on a terminal, and the line
/// and paragraph separators. C1 controls count as controls already.
fn is_hidden(c: char) -> bool {
    matches!(c as u32,
        0x00ad            // soft hyphen
        | 0x061c          // Arabic letter mark
        | 0x180e          // Mongolian vowel separator
        | 0x200b..=0x200f // zero-width space/joiners, LRM, RLM
        | 0x2028..=0x202e // line/paragraph separators, LRE/RLE/PDF/LRO/RLO
        | 0x2060..=0x206f // word joiner, invisible operators, isolates
        | 0xfeff          // zero-width no-break space
        | 0xfff9..=0xfffb // interlinear annotation
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_shown_as_they_are() {
        for s in [
            "/usr/local/bin/rtsh",
            "a b",
            "résumé",
            "日本語",
            "x\u{fffd}y",
        ] {
            assert_eq!(bytes(s.as_bytes()), s);
        }
    }

    #[test]
    fn hostile_names_are_quoted_on_one_line() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"/usr/local/bin/rtsh\x1b[2K\x1b[1A",
                r#""/usr/local/bin/rtsh\x1b[2K\x1b[1A""#,
            ),
            (b"a\nA /etc/shadow", r#""a\nA /etc/shadow""#),
            (b"cr\rbs\x08tab\t", r#""cr\rbs\x08tab\t""#),
            ("csi\u{9b}31m".as_bytes(), r#""csi\u{009b}31m""#),
            (b"bad\xff\xfeutf8", r#""bad\xff\xfeutf8""#),
            ("evil\u{202e}txt.exe".as_bytes(), r#""evil\u{202e}txt.exe""#),
            (b"q\"uote", r#""q\"uote""#),
            (b"back\\slash", r#""back\\slash""#),
            (b"", r#""""#),
            (b" lead", r#"" lead""#),
            (b"trail ", r#""trail ""#),
        ];
        for (raw, want) in cases {
            let got = bytes(raw);
            assert_eq!(got, *want, "{raw:?}");
            assert!(!got.chars().any(|c| c.is_control() || is_hidden(c)));
        }
    }

    #[test]
    fn different_names_never_look_the_same() {
        let names: &[&[u8]] = &[
            b"a\xff",
            "a\u{fffd}".as_bytes(),
            b"a\\xff",
            b"\"a\\xff\"",
            b"a\n",
            b"a\\n",
            b"a",
            b"\"a\"",
        ];
        let shown: std::collections::BTreeSet<String> =
            names.iter().map(|n| bytes(n).into_owned()).collect();
        assert_eq!(shown.len(), names.len(), "{shown:?}");
    }

    #[test]
    fn a_message_keeps_its_text_and_loses_its_controls() {
        assert_eq!(
            line("cannot read /a: No such file"),
            "cannot read /a: No such file"
        );
        assert_eq!(line("x\x1b[2Ky\nz\u{202e}"), r"x\x1b[2Ky\x0az\u{202e}");
    }
}

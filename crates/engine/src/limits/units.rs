//! The units limits are written in: sizes (`512M`, `2G`, bytes), durations
//! (`90s`, `10m`, `1h30m`, seconds) and CPU counts (`0.5`, `2`).
//!
//! Each parses from the text a user types and prints back in the shortest form
//! that means the same, so a policy file written by `fvm config` reads the way a
//! person would have written it. In TOML each is a string, or a bare number
//! (bytes, seconds, CPUs).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// A whole number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

/// CPU capacity in hundredths of a core (`0.5` is 50). Finer steps mean nothing
/// to the scheduler's 100 ms quota period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cpus(pub u32);

/// `text` as an error message quotes it: a hostile or mistyped value of any
/// length stays a short, one-line message (at most 24 characters of it, and
/// control characters escaped).
pub fn shown(text: &str) -> String {
    const MAX: usize = 24;
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX).collect();
    if chars.next().is_some() {
        format!("{:?}", format!("{head}…"))
    } else {
        format!("{head:?}")
    }
}

/// A number from a TOML file as an error message shows it: `1e308`, not 309 digits.
fn float(v: f64) -> String {
    if v.is_finite() && v.abs() < 1e9 {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

const UNITS: [(char, u64); 5] = [
    ('T', 1 << 40),
    ('G', 1 << 30),
    ('M', 1 << 20),
    ('K', 1 << 10),
    ('B', 1),
];

impl Size {
    /// `4096`, `512K`, `512M`, `2G`, `1T` (binary units; `M`, `m`, `MB`, `MiB`
    /// all mean 2^20 bytes, as in `ulimit`, docker and systemd).
    pub fn parse(text: &str) -> Result<Size, String> {
        let t = text.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(digits);
        let bad = || {
            format!(
                "{} is not a size (use bytes, or a number with K, M, G or T, as in 512M)",
                shown(text)
            )
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        let unit = unit.trim();
        let factor = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            u => {
                let letter = u.chars().next().ok_or_else(bad)?;
                let rest = &u[letter.len_utf8()..];
                if !matches!(rest, "" | "B" | "IB") {
                    return Err(bad());
                }
                UNITS
                    .iter()
                    .find(|(c, _)| *c == letter)
                    .map(|(_, f)| *f)
                    .ok_or_else(bad)?
            }
        };
        n.checked_mul(factor)
            .map(Size)
            .ok_or_else(|| format!("{} is too large", shown(text)))
    }
}

/// `bytes` for a person to read: `512B`, `1.5K`, `3.2G` (powers of 1024, one
/// decimal), as `list`, `stats` and the web console show use.
pub fn human_bytes(bytes: u64) -> String {
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

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (letter, factor) in UNITS {
            if factor > 1 && self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{letter}", self.0 / factor);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Seconds {
    /// `90`, `90s`, `10m`, `1h`, `1h30m`, `2d`: a sum of numbers with units.
    pub fn parse(text: &str) -> Result<Seconds, String> {
        let bad = || {
            format!(
                "{} is not a duration (use seconds, or units as in 90s, 10m, 1h30m)",
                shown(text)
            )
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad());
        }
        if let Ok(n) = t.parse::<u64>() {
            return Ok(Seconds(n));
        }
        let mut total: u64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let factor = match rest[..unit_len].trim() {
                "s" | "sec" | "secs" => 1,
                "m" | "min" | "mins" => 60,
                "h" | "hr" | "hrs" => 3600,
                "d" => 86400,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_mul(factor)
                .and_then(|s| total.checked_add(s))
                .ok_or_else(|| format!("{} is too long", shown(text)))?;
        }
        Ok(Seconds(total))
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s == 0 {
            return f.write_str("0s");
        }
        let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if sec > 0 {
            write!(f, "{sec}s")?;
        }
        Ok(())
    }
}

impl Cpus {
    /// `0.5`, `1`, `1.25`: at most two decimals.
    pub fn parse(text: &str) -> Result<Cpus, String> {
        let bad = || format!("{} is not a number of CPUs (as in 0.5 or 2)", shown(text));
        let t = text.trim();
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        if frac.len() > 2 {
            return Err(format!(
                "{}: CPUs are counted in hundredths, as in 0.25",
                shown(text)
            ));
        }
        let whole: u32 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
        whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac))
            .map(Cpus)
            .ok_or_else(bad)
    }

    fn from_float(v: f64) -> Result<Cpus, String> {
        if !v.is_finite() || v < 0.0 || v > f64::from(u32::MAX / 100) {
            return Err(format!("{} is not a number of CPUs", float(v)));
        }
        let hundredths = v * 100.0;
        if (hundredths - hundredths.round()).abs() > 1e-6 {
            return Err(format!(
                "{}: CPUs are counted in hundredths, as in 0.25",
                float(v)
            ));
        }
        Ok(Cpus(hundredths.round() as u32))
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole}"),
            n if n.is_multiple_of(10) => write!(f, "{whole}.{}", n / 10),
            n => write!(f, "{whole}.{n:02}"),
        }
    }
}

/// Serde for a unit that reads from a string (its own syntax) or a bare number.
macro_rules! serde_unit {
    ($ty:ident, $expecting:literal, $from_u64:expr, $from_f64:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::parse(v).map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        let v =
                            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
                        $from_u64(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        $from_u64(v).map_err(E::custom)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        $from_f64(v).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

fn no_fraction<T>(v: f64) -> Result<T, String> {
    Err(format!("{} must be a whole number", float(v)))
}

serde_unit!(
    Size,
    "a size such as \"512M\" or a number of bytes",
    |v| Ok::<_, String>(Size(v)),
    no_fraction
);
serde_unit!(
    Seconds,
    "a duration such as \"90s\" or a number of seconds",
    |v| Ok::<_, String>(Seconds(v)),
    no_fraction
);
serde_unit!(
    Cpus,
    "a number of CPUs such as 0.5",
    |v: u64| u32::try_from(v)
        .ok()
        .and_then(|v| v.checked_mul(100))
        .map(Cpus)
        .ok_or_else(|| format!("{v} CPUs is too many")),
    Cpus::from_float
);

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("512K", 512 << 10),
            ("512M", 512 << 20),
            ("512m", 512 << 20),
            ("512MB", 512 << 20),
            ("512MiB", 512 << 20),
            (" 2G ", 2 << 30),
            ("1T", 1 << 40),
            ("10B", 10),
        ] {
            assert_eq!(Size::parse(text), Ok(Size(bytes)), "{text}");
        }
        for bad in [
            "",
            "M",
            "12Q",
            "1.5G",
            "-1M",
            "1 G B",
            "1MX",
            "99999999999999999999",
            "20000000T",
            // A unit that starts with a character of more than one byte.
            "9…",
            "9éB",
            "1\u{661}",
        ] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Size(512 << 20).to_string(), "512M");
        assert_eq!(Size(2 << 30).to_string(), "2G");
        assert_eq!(Size(1536 << 20).to_string(), "1536M");
        assert_eq!(Size(1000).to_string(), "1000");
        assert_eq!(Size(0).to_string(), "0");
    }

    #[test]
    fn durations() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("10m", 600),
            ("1h", 3600),
            ("1h30m", 5400),
            ("1h 30m 5s", 5405),
            ("2d", 172_800),
            ("3sec", 3),
        ] {
            assert_eq!(Seconds::parse(text), Ok(Seconds(secs)), "{text}");
        }
        for bad in ["", "5x", "s", "1.5h", "-3s", "h1", "99999999999999999999d"] {
            assert!(Seconds::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Seconds(5405).to_string(), "1h30m5s");
        assert_eq!(Seconds(3).to_string(), "3s");
        assert_eq!(Seconds(600).to_string(), "10m");
    }

    #[test]
    fn absurd_values_give_short_errors() {
        let long = "9".repeat(10_000);
        for e in [
            Size::parse(&long).unwrap_err(),
            Size::parse(&format!("{long}X")).unwrap_err(),
            Seconds::parse(&format!("{long}s")).unwrap_err(),
            Cpus::parse(&long).unwrap_err(),
            Cpus::parse(&format!("1.{long}")).unwrap_err(),
            Cpus::from_float(1e308).unwrap_err(),
            Cpus::from_float(f64::INFINITY).unwrap_err(),
            Cpus::from_float(f64::NAN).unwrap_err(),
            Cpus::from_float(-1e300).unwrap_err(),
            no_fraction::<Size>(1e308).unwrap_err(),
            Size::parse("\n\u{1b}[2J").unwrap_err(),
        ] {
            assert!(e.len() < 100 && !e.contains(['\n', '\u{1b}']), "{e}");
        }
        assert_eq!(
            Cpus::from_float(1e308).unwrap_err(),
            "1e308 is not a number of CPUs"
        );
    }

    #[test]
    fn cpus() {
        for (text, h) in [
            ("0.5", 50),
            ("2", 200),
            ("1.25", 125),
            (".5", 50),
            ("0.05", 5),
        ] {
            assert_eq!(Cpus::parse(text), Ok(Cpus(h)), "{text}");
        }
        for bad in ["", ".", "-1", "0.125", "1e3", "half", "99999999999"] {
            assert!(Cpus::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cpus(50).to_string(), "0.5");
        assert_eq!(Cpus(125).to_string(), "1.25");
        assert_eq!(Cpus(200).to_string(), "2");
        assert_eq!(Cpus::from_float(0.5), Ok(Cpus(50)));
        assert!(Cpus::from_float(0.333).is_err());
    }
}

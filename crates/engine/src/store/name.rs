//! VM names: the one identifier users type, and a path component in the store, a
//! cgroup name and (later) a network link name, so it is kept deliberately narrow.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest name: 63 characters, like a DNS label, so it always fits a hostname.
pub const MAX_LEN: usize = 63;

/// A validated VM name: `[a-z0-9][a-z0-9_.-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

/// Why a string is not a VM name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid vm name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

impl VmName {
    pub fn new(name: &str) -> Result<VmName, NameError> {
        check_narrow(
            name,
            MAX_LEN,
            "_.-",
            "it is longer than 63 characters",
            "only a-z, 0-9, '_', '.' and '-' are allowed",
        )
        .map_err(|reason| NameError {
            name: name.to_owned(),
            reason,
        })?;
        Ok(VmName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Check a narrow name: `[a-z0-9]`, then up to `max - 1` of `[a-z0-9]` and
/// `others`. The reason it isn't one, in words (`too_long`, `bad_char` for
/// those cases).
pub(crate) fn check_narrow(
    name: &str,
    max: usize,
    others: &str,
    too_long: &'static str,
    bad_char: &'static str,
) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("it is empty"),
        Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
            return Err("it must start with a lowercase letter or a digit");
        }
        Some(_) => {}
    }
    if name.len() > max {
        return Err(too_long);
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || others.contains(c)) {
        return Err(bad_char);
    }
    Ok(())
}

impl TryFrom<String> for VmName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        VmName::new(&s)
    }
}

impl From<VmName> for String {
    fn from(n: VmName) -> String {
        n.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in ["a", "web1", "0", "a.b-c_d", &"x".repeat(63)] {
            assert!(VmName::new(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for n in [
            "",
            "-a",
            ".",
            "..",
            "_x",
            "Web",
            "a/b",
            "a b",
            "ä",
            "a\n",
            &"x".repeat(64),
        ] {
            assert!(VmName::new(n).is_err(), "{n:?}");
        }
    }

    #[test]
    fn error_names_the_input_and_reason() {
        let e = VmName::new("Bad/Name").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid vm name \"Bad/Name\": it must start with a lowercase letter or a digit"
        );
    }
}

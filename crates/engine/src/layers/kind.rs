//! What a VM's layers are written to, as its policy says.

use serde::{Deserialize, Serialize};

/// The `layers` key of a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layers {
    /// Written like any file: what the VM syncs is on disk.
    #[default]
    Disk,
    /// No syncs while the VM runs; synced once when it stops.
    Volatile,
}

impl Layers {
    pub fn parse(text: &str) -> Result<Layers, String> {
        match text.trim() {
            "disk" => Ok(Layers::Disk),
            "volatile" => Ok(Layers::Volatile),
            other => Err(format!("invalid layers {other:?}: use disk or volatile")),
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Layers::Disk
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Layers::Disk => "disk",
            Layers::Volatile => "volatile",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_values_and_refuses_others() {
        assert_eq!(Layers::parse("disk"), Ok(Layers::Disk));
        assert_eq!(Layers::parse(" volatile "), Ok(Layers::Volatile));
        let err = Layers::parse("tmpfs").unwrap_err();
        assert!(err.contains("use disk or volatile"), "{err}");
        assert!(Layers::parse("").is_err());
    }
}

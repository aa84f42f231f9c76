//! Confinement: what keeps root in a VM from tampering with the host.
//!
//! Namespaces and the overlay decide what a VM sees; this decides what its
//! processes may do with the one kernel they share with the host. Every command
//! fvm starts in a VM (and so everything that command starts) gets, just before
//! it execs:
//! - the seccomp filters of [`seccomp`], loaded without `no_new_privs` (see below);
//! - only the capabilities of [`caps::KEPT`], in every set, the bounding set too.
//!
//! The VM's init drops to the same capabilities once it has started the VM.
//!
//! `no_new_privs` stays off: setuid programs in the VM (`su`, `sudo`, `passwd`,
//! `ping` on older systems) must work for its own users, and root inside is
//! already root. What a setuid program can gain is bounded by the bounding set,
//! so it never gets a dropped capability. Loading a filter without
//! `no_new_privs` needs CAP_SYS_ADMIN, which the command still has at that point
//! and drops right after.
//!
//! `security = "unconfined"` in a policy turns both off, for trusted work that
//! needs a full root (fvm warns every time such a VM starts or runs a command).
//! docs/security.md lists what a VM protects against and what it doesn't.

pub mod caps;
pub mod seccomp;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The `security` key of a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Dropped capabilities and the seccomp filter.
    #[default]
    Default,
    /// Neither: root in the VM is root on the host, minus what namespaces hide.
    Unconfined,
}

impl Security {
    pub fn parse(text: &str) -> Result<Security, String> {
        match text.trim() {
            "default" => Ok(Security::Default),
            "unconfined" => Ok(Security::Unconfined),
            other => Err(format!(
                "invalid security {other:?}: use default or unconfined"
            )),
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Security::Default
    }
}

/// What a command applies to itself before exec, prepared before the fork so the
/// child only makes system calls.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// `None`: unconfined.
    filters: Option<Arc<seccomp::Filters>>,
    /// Set `no_new_privs` too (an OCI process's `noNewPrivileges`): setuid
    /// programs then run without their privileges.
    pub no_new_privs: bool,
}

impl Confinement {
    /// The confinement for a VM with this `security` setting.
    pub fn new(security: Security) -> Result<Confinement, seccomp::FilterError> {
        Ok(Confinement {
            filters: match security {
                Security::Default => Some(Arc::new(seccomp::compile()?)),
                Security::Unconfined => None,
            },
            no_new_privs: false,
        })
    }

    /// This confinement, with `no_new_privs` as given.
    pub fn with_no_new_privs(self, no_new_privs: bool) -> Confinement {
        Confinement {
            no_new_privs,
            ..self
        }
    }

    /// No confinement at all.
    pub fn none() -> Confinement {
        Confinement::default()
    }

    pub fn is_confined(&self) -> bool {
        self.filters.is_some()
    }

    /// In the command's process, just before exec: load the filters, then drop
    /// the capabilities (in that order: loading needs CAP_SYS_ADMIN). Allocates
    /// nothing.
    pub fn apply(&self) -> std::io::Result<()> {
        if let Some(filters) = &self.filters {
            for program in &filters.0 {
                crate::os::sys::load_seccomp(program)?;
            }
            caps::drop_to_kept()?;
        }
        if self.no_new_privs {
            rustix::thread::set_no_new_privs(true)?;
        }
        Ok(())
    }
}

//! Runtime state of one VM, as JSON. Machine-written, replaced atomically.
//!
//! The file records what fvm last did; the truth is whether the recorded init still
//! lives ([`crate::os::procid::ProcId`]). Commands that change a VM reconcile
//! the two first (see `crate::vm`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::end::End;
use crate::os::procid::ProcId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Stopped,
    Running,
}

/// How the running VM was started, which decides when its init exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// `fvm start`: runs until `fvm stop`.
    Background,
    /// `fvm run`/`shell` on a stopped VM: stops when its last process exits.
    Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<ProcId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StartMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// A throw-away VM (`run --rm`): deleted as soon as it is found stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub temporary: bool,
    /// The init's end of its control pipe (see `runtime::control`), by fd number
    /// in the init, for changes to the running VM such as a new timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_fd: Option<i32>,
    /// `fvm stop` is ending this VM: written before its first signal, so that
    /// an init found gone with this set was stopped by fvm, and one found gone
    /// without it ended some other way (see [`End`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// With `stopping`: how many terminal sessions the stop hangs up first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hanging_up: Option<u32>,
    /// How the last command `fvm run` waited for, or the VM itself, ended.
    /// (Read apart from the rest, leniently: see [`State::load`].)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<End>,
    /// The init's request socket (see `runtime::control`), by fd number in the
    /// init: services and `fvm run -d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_fd: Option<i32>,
    /// The command `fvm run` started the VM for has ended and the VM with it:
    /// how (said of the VM). Written by `fvm run` under the VM's lock just
    /// before it returns, while a process of its own (which holds the lock
    /// until it is done) waits for the init to exit and records the VM
    /// stopped. Whoever finds the init gone with this set records this end;
    /// `list` shows it meanwhile. (Read apart, leniently, as `end`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<End>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl State {
    /// Load; a missing file means "never started". One rule for a damaged
    /// file: whatever is there but can't be read as a state (not a regular
    /// file, too large, not UTF-8, not the JSON of a state) is corrupt; only a
    /// failure to read at all (EIO, EACCES) is a read error.
    pub fn load(path: &Path) -> Result<State, StateError> {
        let corrupt = |message: String| StateError::Corrupt {
            path: path.to_owned(),
            message,
        };
        match crate::os::files::read_regular(path) {
            Ok(text) => {
                // The recorded end is read apart: one that can't be read is
                // dropped with a warning, and the rest of the state stands.
                let mut value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
                let end = value.as_object_mut().and_then(|o| o.remove("end"));
                let ending = value.as_object_mut().and_then(|o| o.remove("ending"));
                let mut state: State =
                    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
                state.end = end
                    .filter(|e| !e.is_null())
                    .and_then(|e| super::end::read_recorded(e, path));
                state.ending = ending
                    .filter(|e| !e.is_null())
                    .and_then(|e| super::end::read_recorded(e, path));
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(corrupt(e.to_string())),
            Err(source) => Err(StateError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut text = serde_json::to_vec_pretty(self).expect("state always serializes");
        text.push(b'\n');
        crate::os::files::write_atomic(path, &text, 0o600).map_err(|source| StateError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// The init this state claims is running, if it really is: alive, and the
    /// init of the VM whose cgroup is `leaf` (see [`ProcId::is_vm_init`]).
    pub fn live_init(&self, leaf: &str) -> Option<&ProcId> {
        match (&self.status, &self.init) {
            (Status::Running, Some(init)) if init.is_vm_init(leaf) => Some(init),
            _ => None,
        }
    }

    /// The state a stopped VM is left in (keeping whether it is temporary), and
    /// how it ended.
    pub fn stopped(&self, end: Option<End>) -> State {
        State {
            temporary: self.temporary,
            end: end.or_else(|| self.end.clone()),
            ..State::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_stopped_and_garbage_is_corrupt() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        assert_eq!(State::load(&p).unwrap(), State::default());
        for bad in [
            b"{\"status\": \"flying\"}".to_vec(),
            b"\xff\xfe not utf-8".to_vec(),
            vec![b' '; 2 << 20],
        ] {
            std::fs::write(&p, &bad).unwrap();
            let e = State::load(&p).unwrap_err();
            assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        }
        std::fs::remove_file(&p).unwrap();
        std::fs::create_dir(&p).unwrap();
        let e = State::load(&p).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn a_damaged_end_leaves_the_rest_of_the_state() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::fs::write(
            &p,
            r#"{"status": "stopped", "temporary": true, "end": {"cause": "\u001b]0;pwned", "of": "vm"}}"#,
        )
        .unwrap();
        let st = State::load(&p).unwrap();
        assert!(st.temporary);
        assert_eq!(st.end, None);
    }

    #[test]
    fn round_trip_and_a_dead_init_is_not_live() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let st = State {
            status: Status::Running,
            init: Some(ProcId {
                pid: i32::MAX,
                start_time: 1,
                boot_id: "b".into(),
            }),
            mode: Some(StartMode::Background),
            started_at: Some("2026-01-01T00:00:00Z".into()),
            temporary: true,
            control_fd: Some(7),
            stopping: true,
            hanging_up: Some(2),
            end: Some(crate::store::end::End::now(
                crate::store::end::Cause::Oom,
                crate::store::end::Subject::Vm,
            )),
            request_fd: Some(8),
            ending: Some(crate::store::end::End::now(
                crate::store::end::Cause::Exited,
                crate::store::end::Subject::Vm,
            )),
        };
        st.save(&p).unwrap();
        let back = State::load(&p).unwrap();
        assert_eq!(back, st);
        assert!(back.live_init("fvm-x-y").is_none());
        assert!(back.stopped(None).temporary);
        assert_eq!(back.stopped(None).end, st.end);
        assert!(!back.stopped(None).stopping);
        assert_eq!(back.stopped(None).ending, None);
        assert_eq!(back.stopped(None).hanging_up, None);
    }
}

//! The user's policy for one VM: a commented, human-editable TOML file.
//!
//! Unknown keys are rejected with the line they are on, because a silently ignored
//! typo in a limit is the complaint users of peer tools raise most.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::VmName;
use super::service::{self, Service, ServiceError};
use crate::confine::Security;
use crate::layers::Layers;
use crate::limits::{LimitError, Limits};
use crate::net::{NetError, NetPolicy};

/// What the user asked for. Runtime facts live in [`super::State`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Policy {
    pub name: VmName,
    #[serde(default)]
    pub description: String,
    /// When the VM was created (RFC 3339, UTC).
    pub created: String,
    /// Where the VM's private layers live, if not inside the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// `unconfined` turns off capability dropping and seccomp; see [`crate::confine`].
    #[serde(default, skip_serializing_if = "Security::is_default")]
    pub security: Security,
    /// `volatile` skips syncing the VM's layers while it runs; see
    /// [`crate::mounts::volatile`].
    #[serde(default, skip_serializing_if = "Layers::is_default")]
    pub layers: Layers,
    /// Start the VM when the host boots (`fvm start --autostart`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub autostart: bool,
    /// Resource limits; see [`crate::limits`].
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// How the VM is networked; see [`crate::net`].
    #[serde(default, skip_serializing_if = "NetPolicy::is_default")]
    pub network: NetPolicy,
    /// Services the VM's init starts, in this order; see [`super::service`].
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// The cgroup the VM's own cgroup is made in (`a/b`, from the root of the
    /// hierarchy; see [`crate::cgroup::parent_path`]) instead of the root: a
    /// batch scheduler's job cgroup, whose accounting and kill then reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<String>,
}

/// A policy file that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write policy file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("policy file {path} names vm {found:?}, but it is stored as {expected:?}")]
    WrongName {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "policy file {path}: `cgroup-parent` {parent:?} is not a cgroup path of plain names (a/b)"
    )]
    CgroupParent { path: PathBuf, parent: String },
    #[error("policy file {path}: `dir` must be an absolute path, not {dir:?}")]
    RelativeDir { path: PathBuf, dir: PathBuf },
    #[error("policy file {path}: {source}")]
    Limit {
        path: PathBuf,
        #[source]
        source: LimitError,
    },
    #[error("policy file {path}: {source}")]
    Service {
        path: PathBuf,
        #[source]
        source: ServiceError,
    },
    #[error("policy file {path}: {source}")]
    Network {
        path: PathBuf,
        #[source]
        source: NetError,
    },
}

const HEADER: &str = "\
# featherweight VM policy. Edit it by hand or with `fvm config`; fvm checks every
# key when it reads this file and refuses unknown ones.
#
# name         the VM's name (must match its directory in the store)
# description  free text shown by `fvm inspect`
# created      when the VM was created (RFC 3339, UTC)
# dir          where the VM's private layers live, if not inside the store
# security     unconfined gives root in the VM every capability and no seccomp
#              filter (for trusted work only); by default both confine it
# cgroup-parent the cgroup (from the hierarchy's root) the VM's cgroup is made in
# layers       disk (default) or volatile: nothing the VM writes is synced while it
#              runs (fsync returns at once; faster), it is synced when the VM stops;
#              if the host goes down while it runs, its changes can't be trusted
#
# [limits]       resource limits; a missing key is no limit
# memory         memory of the whole VM (512M, 2G, or bytes)
# swap           swap on top of memory (default 0 once memory is set)
# processes      processes and threads in the VM
# cpus           CPU time, in cores (0.5 is half a core)
# cpu-weight     share under contention, 1-10000 (100 is the default)
# priority       low, normal or high: a CPU share and the nice value of commands
# process-memory address space of each process
# cpu-time       CPU time of each process (SIGXCPU, then SIGKILL a second later)
# open-files     open files of each process
# timeout        wall-clock lifetime of the VM (90s, 10m, 1h30m), then it is stopped
# disk           disk space of the VM's layers (10G); writes past it fail
# inodes         files and directories in the VM's layers
#
# [network]      how the VM is networked (see `fvm network` for the store's bridge)
# mode           host (the host's network), none (only lo) or bridge (its own address)
# ip             bridge: the VM's address and prefix, e.g. 10.77.0.5/24
# nat            bridge: masquerade traffic to beyond the bridge's subnet; absent
#                means on, `nat = false` turns it off
# dns            bridge: name servers for the VM's own /etc/resolv.conf (absent:
#                the store's resolver on the bridge, which knows the VMs' names)
# allow, deny    bridge: egress rules, CIDR[:PORT[/tcp|udp]]
# publish        bridge: host ports forwarded to the VM, HOSTPORT:VMPORT[/tcp|udp]
#
# autostart      true: `fvm start --autostart` (run at host boot) starts this VM
# [[service]]    a service the VM's init starts when the VM starts, in file order
#                (stopped in reverse order); see `fvm service` and `fvm logs`
# name           [a-z0-9][a-z0-9_-]{0,31}
# command        run by /bin/sh -c
# env            a table of variables set for it
# workdir        its working directory (default /)
# user           who it runs as (a name in the VM's /etc/passwd or a uid)
# restart        no (default), on-failure or always
# pidfile        for a daemon that forks: where its main process writes its pid
";

impl Policy {
    pub fn new(name: VmName, dir: Option<PathBuf>) -> Policy {
        Policy {
            name,
            description: String::new(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            dir,
            security: Security::Default,
            layers: Layers::Disk,
            limits: Limits::default(),
            network: NetPolicy::default(),
            autostart: false,
            services: Vec::new(),
            cgroup_parent: None,
        }
    }

    /// Parse policy text; `path` is only used in messages, `expected` is the VM's name.
    pub fn parse(text: &str, path: &Path, expected: &VmName) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            line: e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            }),
            message: short_message(e.message()),
        })?;
        if &policy.name != expected {
            return Err(PolicyError::WrongName {
                path: path.to_owned(),
                found: policy.name.to_string(),
                expected: expected.to_string(),
            });
        }
        if let Some(dir) = &policy.dir
            && !dir.is_absolute()
        {
            return Err(PolicyError::RelativeDir {
                path: path.to_owned(),
                dir: dir.clone(),
            });
        }
        if let Some(parent) = &policy.cgroup_parent
            && crate::cgroup::parent_path(parent).ok().as_ref() != Some(parent)
        {
            return Err(PolicyError::CgroupParent {
                path: path.to_owned(),
                parent: parent.clone(),
            });
        }
        policy
            .limits
            .validate()
            .map_err(|source| PolicyError::Limit {
                path: path.to_owned(),
                source,
            })?;
        policy
            .network
            .validate()
            .map_err(|source| PolicyError::Network {
                path: path.to_owned(),
                source,
            })?;
        service::validate_all(&policy.services).map_err(|source| PolicyError::Service {
            path: path.to_owned(),
            source,
        })?;
        Ok(policy)
    }

    pub fn load(path: &Path, expected: &VmName) -> Result<Policy, PolicyError> {
        let text = crate::os::files::read_regular(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, expected)
    }

    /// The file text: the explanatory header, then the keys.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a policy always serializes");
        format!("{HEADER}\n{body}")
    }
}

/// A parser's message as one short line: a value of absurd length in the file
/// (serde quotes `1e308` as 309 digits) is cut to its first characters.
fn short_message(message: &str) -> String {
    const WORD: usize = 32;
    message
        .split_whitespace()
        .map(|word| match word.char_indices().nth(WORD) {
            Some((at, _)) => format!("{}…", &word[..at]),
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> VmName {
        VmName::new(n).unwrap()
    }

    #[test]
    fn round_trips_with_comments() {
        let mut p = Policy::new(name("web1"), Some("/data/web1".into()));
        p.description = "a \"quoted\" test".into();
        let text = p.to_toml();
        assert!(text.starts_with("# featherweight VM policy"));
        let back = Policy::parse(&text, Path::new("vm.toml"), &name("web1")).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn limits_round_trip_and_are_checked() {
        let mut p = Policy::new(name("web1"), None);
        p.limits.set(crate::limits::Key::Memory, "512M").unwrap();
        p.limits.set(crate::limits::Key::Timeout, "90s").unwrap();
        let text = p.to_toml();
        assert!(
            text.contains("[limits]\nmemory = \"512M\"\ntimeout = \"1m30s\""),
            "{text}"
        );
        assert_eq!(
            Policy::parse(&text, Path::new("p"), &name("web1")).unwrap(),
            p
        );
        let low = text.replace("512M", "1K");
        let e = Policy::parse(&low, Path::new("p"), &name("web1")).unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        let typo = text.replace("timeout", "timeuot");
        let e = Policy::parse(&typo, Path::new("p"), &name("web1")).unwrap_err();
        assert!(
            matches!(e, PolicyError::Parse { .. }) && e.to_string().contains("timeuot"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_its_line() {
        let text = "name = \"a\"\ncreated = \"2026-01-01T00:00:00Z\"\nmemroy = \"1G\"\n";
        let e = Policy::parse(text, Path::new("/s/vm.toml"), &name("a")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("policy file /s/vm.toml, line 3: "), "{msg}");
        assert!(msg.contains("memroy"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn absurd_numbers_give_one_short_line() {
        let head = "name = \"a\"\ncreated = \"2026-01-01T00:00:00Z\"\n[limits]\n";
        let huge = "9".repeat(400);
        for line in [
            "cpus = 1e308".to_owned(),
            "cpus = -1e308".to_owned(),
            "cpus = inf".to_owned(),
            "memory = 1e308".to_owned(),
            "timeout = 1e308".to_owned(),
            "processes = 1e308".to_owned(),
            format!("memory = {huge}"),
            format!("memory = \"{huge}\""),
            format!("cpus = \"{huge}\""),
            format!("timeout = \"{huge}s\""),
            format!("open-files = {huge}"),
        ] {
            let text = format!("{head}{line}\n");
            let e = Policy::parse(&text, Path::new("p"), &name("a")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.len() < 160 && !msg.contains('\n'), "{line}: {msg}");
        }
    }

    #[test]
    fn syntax_error_names_its_line() {
        let text = "name = \"a\"\n\ncreated = \n";
        let e = Policy::parse(text, Path::new("p"), &name("a")).unwrap_err();
        assert!(matches!(e, PolicyError::Parse { line: 3, .. }), "{e}");
    }

    #[test]
    fn rejects_bad_name_mismatch_and_relative_dir() {
        let bad = "name = \"Bad!\"\ncreated = \"x\"\n";
        assert!(matches!(
            Policy::parse(bad, Path::new("p"), &name("a")),
            Err(PolicyError::Parse { .. })
        ));
        let other = "name = \"b\"\ncreated = \"x\"\n";
        assert!(matches!(
            Policy::parse(other, Path::new("p"), &name("a")),
            Err(PolicyError::WrongName { .. })
        ));
        let rel = "name = \"a\"\ncreated = \"x\"\ndir = \"data\"\n";
        assert!(matches!(
            Policy::parse(rel, Path::new("p"), &name("a")),
            Err(PolicyError::RelativeDir { .. })
        ));
        for bad in ["../x", "/a/b", "a/./b", ""] {
            let text = format!("name = \"a\"\ncreated = \"x\"\ncgroup-parent = {bad:?}\n");
            assert!(
                matches!(
                    Policy::parse(&text, Path::new("p"), &name("a")),
                    Err(PolicyError::CgroupParent { .. })
                ),
                "{bad}"
            );
        }
    }

    /// A random policy that is valid: random text where the file takes any, and
    /// values of every limit and network setting.
    fn random_policy(rng: &mut fastrand::Rng) -> Policy {
        use crate::limits::Key;
        use crate::net::NetMode;
        let mut p = Policy::new(name("web1"), None);
        p.description = crate::testing::text(rng, 40);
        p.created = crate::testing::text(rng, 30);
        if rng.bool() {
            p.dir = Some(PathBuf::from(format!("/{}", crate::testing::text(rng, 20))));
        }
        p.security = [Security::Default, Security::Unconfined][rng.usize(..2)];
        p.layers = [Layers::Disk, Layers::Volatile][rng.usize(..2)];
        p.autostart = rng.bool();
        for i in 0..rng.usize(..4) {
            let mut s = Service::new(
                service::ServiceName::new(&format!("s{i}")).unwrap(),
                &format!("x{}", crate::testing::text(rng, 30).replace('\0', "")),
            )
            .unwrap();
            if rng.bool() {
                s.set(
                    "env",
                    &format!("V{i}={}", crate::testing::text(rng, 10).replace('\0', "")),
                )
                .unwrap();
            }
            s.restart = [
                service::Restart::No,
                service::Restart::OnFailure,
                service::Restart::Always,
            ][rng.usize(..3)];
            if rng.bool() {
                s.pidfile = Some("/run/x.pid".into());
                s.workdir = Some("/srv".into());
                s.user = Some("www-data".into());
            }
            p.services.push(s);
        }
        if rng.bool() {
            p.cgroup_parent = Some("slurm/job_1/step_0".into());
        }
        const VALUES: &[(Key, &[&str])] = &[
            (Key::Memory, &["64M", "512M", "2G", "1073741824", "1T"]),
            (Key::Swap, &["0", "128M", "1G"]),
            (Key::Processes, &["1", "64", "100000"]),
            (Key::Cpus, &["0.5", "1", "0.01", "1.25"]),
            (Key::CpuWeight, &["1", "100", "10000"]),
            (Key::Priority, &["low", "normal", "high"]),
            (Key::ProcessMemory, &["64M", "4G"]),
            (Key::CpuTime, &["1s", "90s", "1h30m"]),
            (Key::OpenFiles, &["16", "1024", "65536"]),
            (Key::Timeout, &["1s", "10m", "1h30m", "36h"]),
            (Key::Disk, &["64M", "10G"]),
            (Key::Inodes, &["1000", "100000"]),
        ];
        for (key, values) in VALUES {
            if rng.bool() {
                let mut limits = p.limits.clone();
                limits.set(*key, values[rng.usize(..values.len())]).unwrap();
                if limits.validate().is_ok() {
                    p.limits = limits;
                }
            }
        }
        p.network.mode = [NetMode::Host, NetMode::None, NetMode::Bridge][rng.usize(..3)];
        if p.network.mode == NetMode::Bridge {
            if rng.bool() {
                p.network.ip = Some(
                    format!("10.77.{}.{}/24", rng.u8(..), rng.u8(1..255))
                        .parse()
                        .unwrap(),
                );
            }
            p.network.nat = [None, Some(false), Some(true)][rng.usize(..3)];
            p.network.dns = (0..rng.usize(..3)).map(|_| rng.u32(..).into()).collect();
            p.network.allow = (0..rng.usize(..4))
                .map(|_| crate::testing::rule(rng))
                .collect();
            p.network.deny = (0..rng.usize(..4))
                .map(|_| crate::testing::rule(rng))
                .collect();
            for _ in 0..rng.usize(..4) {
                let publish = crate::testing::publish(rng);
                if !p
                    .network
                    .publish
                    .iter()
                    .any(|q| (q.host_port, q.proto) == (publish.host_port, publish.proto))
                {
                    p.network.publish.push(publish);
                }
            }
        }
        p
    }

    #[test]
    fn any_policy_reads_back_as_itself() {
        crate::testing::cases("policy round trip", 500, |rng| {
            let p = random_policy(rng);
            let text = p.to_toml();
            let back = Policy::parse(&text, Path::new("vm.toml"), &name("web1"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, p, "{text}");
        });
    }

    #[test]
    fn any_edit_of_a_policy_file_is_read_or_refused_in_one_line() {
        crate::testing::cases("policy edits", 1500, |rng| {
            let mut text: Vec<char> = random_policy(rng).to_toml().chars().collect();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..=text.len());
                let piece: Vec<char> = crate::testing::text(rng, 6).chars().collect();
                let end = if rng.bool() {
                    (at + piece.len()).min(text.len())
                } else {
                    at
                };
                text.splice(at..end, piece);
            }
            let text: String = text.into_iter().collect();
            match Policy::parse(&text, Path::new("vm.toml"), &name("web1")) {
                Ok(p) => {
                    // What was read is written and read back the same.
                    let again = Policy::parse(&p.to_toml(), Path::new("vm.toml"), &name("web1"));
                    assert_eq!(again.ok().as_ref(), Some(&p), "{text}");
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        !msg.contains('\n') && !msg.contains('\r'),
                        "{msg:?} for\n{text}"
                    );
                    if let PolicyError::Parse { line, .. } = e {
                        assert!(
                            line >= 1 && line <= text.split('\n').count(),
                            "line {line}: {msg}"
                        );
                    }
                }
            }
        });
    }
}

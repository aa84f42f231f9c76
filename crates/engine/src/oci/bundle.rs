//! A bundle's config.json, read into what fvm does with it: the VM's command,
//! its network, and the annotations that choose fvm's own behaviour.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::OciError;
use crate::net::NetMode;
use crate::runtime::command::{CommandSpec, Program};
use crate::runtime::stdio::TtyMode;

/// The annotation that makes the container a clone of the live host. Only this
/// annotation does: a bundle whose `root.path` is `/` still gets its rootfs, so
/// a container sent to another runtime by mistake never runs on the host.
pub const ROOTFS: &str = "org.featherweight.rootfs";
/// Write the container's diff (JSON) into this host directory at `delete`.
pub const EXPORT: &str = "org.featherweight.export";

/// The largest config.json read (the runtime spec's files are kilobytes).
const MAX_CONFIG: u64 = 4 << 20;

/// A bundle as fvm runs it.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    pub spec: Spec,
    /// `org.featherweight.rootfs=host`.
    pub host_clone: bool,
    /// `org.featherweight.export=DIR`, checked.
    pub export: Option<PathBuf>,
}

impl Bundle {
    /// Read `dir/config.json`. `store` is the runtime's store, which an export
    /// directory must not be inside.
    pub fn load(dir: &Path, store: &Path) -> Result<Bundle, OciError> {
        let dir = std::fs::canonicalize(dir).map_err(|e| OciError::Bundle {
            path: dir.to_owned(),
            why: e.to_string(),
        })?;
        let path = dir.join("config.json");
        let text = crate::os::files::read_regular_max(&path, MAX_CONFIG).map_err(|e| {
            OciError::Bundle {
                path: path.clone(),
                why: e.to_string(),
            }
        })?;
        let spec: Spec = serde_json::from_str(&text).map_err(|e| OciError::Bundle {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Bundle::from_spec(dir, spec, store)
    }

    pub fn from_spec(dir: PathBuf, spec: Spec, store: &Path) -> Result<Bundle, OciError> {
        let empty = HashMap::new();
        let annotations = spec.annotations().as_ref().unwrap_or(&empty);
        let host_clone = match annotations.get(ROOTFS).map(String::as_str) {
            None => false,
            Some("host") => true,
            Some(other) => {
                return Err(OciError::Annotation {
                    key: ROOTFS,
                    why: format!("{other:?} is not \"host\""),
                });
            }
        };
        if !host_clone {
            return Err(OciError::Annotation {
                key: ROOTFS,
                why: "fvm runs a container as a clone of its host: set it to \"host\" (a container of its own image is run by another runtime)".into(),
            });
        }
        let export = annotations
            .get(EXPORT)
            .map(|d| export_dir(d, store))
            .transpose()?;
        let bundle = Bundle {
            dir,
            spec,
            host_clone,
            export,
        };
        // Checked now, so that `create` fails rather than the VM.
        bundle.command()?;
        bundle.network()?;
        Ok(bundle)
    }

    /// The container's process as the VM's command.
    pub fn command(&self) -> Result<CommandSpec, OciError> {
        let process = self.spec.process().as_ref().ok_or(OciError::Config {
            why: "it has no process".into(),
        })?;
        command(process)
    }
    /// The VM's network: the host's when the config has no network namespace,
    /// its own (only `lo`) when it asks for a new one.
    pub fn network(&self) -> Result<NetMode, OciError> {
        let namespaces = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        match namespaces
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
        {
            None => Ok(NetMode::Host),
            Some(n) if n.path().is_none() => Ok(NetMode::None),
            Some(n) => Err(OciError::Config {
                why: format!(
                    "it joins the network namespace {}, and fvm makes a vm's network itself (host, or its own with only lo)",
                    n.path().as_deref().unwrap_or(Path::new("")).display()
                ),
            }),
        }
    }

    /// Where the engine mounts its own files into the container (hosts,
    /// resolv.conf, secrets, /proc, /dev...): left out of an export, as they are
    /// not the container's work.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().clone())
            .filter(|d| d != Path::new("/"))
            .collect()
    }
}

/// An OCI process (a bundle's, or `exec --process`'s) as a command in the VM.
pub fn command(process: &Process) -> Result<CommandSpec, OciError> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(OciError::Config {
            why: "process.args is empty".into(),
        });
    }
    if process.terminal().unwrap_or(false) {
        return Err(OciError::Config {
                why: "process.terminal is set, and fvm's runtime gives a container no terminal (run it without -t)".into(),
            });
    }
    let mut env = Vec::new();
    for var in process.env().iter().flatten() {
        let (k, v) = var.split_once('=').unwrap_or((var.as_str(), ""));
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(OciError::Config {
                why: format!("process.env has a bad entry {var:?}"),
            });
        }
        env.push((k.to_owned(), v.to_owned()));
    }
    let cwd = process.cwd().clone();
    if !cwd.is_absolute() {
        return Err(OciError::Config {
            why: format!("process.cwd {} is not absolute", cwd.display()),
        });
    }
    let user = process.user();
    if user.uid() != 0 || user.gid() != 0 {
        return Err(OciError::Config {
            why: format!(
                "process.user is {}:{}, and fvm runs a container's process as root of its vm (with the vm's capabilities and seccomp filter)",
                user.uid(),
                user.gid()
            ),
        });
    }
    Ok(CommandSpec {
        program: Program::Argv(args),
        env,
        cwd,
        tty: TtyMode::Never,
        limits: Default::default(),
        confine: Default::default(),
    })
}

/// An export directory: an operator's path on the host, absolute, an existing
/// directory, and not inside the runtime's store.
fn export_dir(given: &str, store: &Path) -> Result<PathBuf, OciError> {
    let bad = |why: &str| OciError::Annotation {
        key: EXPORT,
        why: format!("{given:?}: {why}"),
    };
    let path = Path::new(given);
    if !path.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    let real = std::fs::canonicalize(path).map_err(|e| bad(&e.to_string()))?;
    if !real.is_dir() {
        return Err(bad("not a directory"));
    }
    let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_owned());
    if real.starts_with(&store) {
        return Err(bad("inside the runtime's store"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"user":{"uid":0,"gid":0},"args":["/bin/sh","-c","exit 3"],
                   "env":["PATH=/usr/bin:/bin","A=b=c"],"cwd":"/srv"},
        "mounts":[{"destination":"/proc","type":"proc"},{"destination":"/etc/hosts","type":"bind","source":"/x"}],
        "annotations":{"org.featherweight.rootfs":"host"}}"#;

    #[test]
    fn a_host_clone_bundle_becomes_a_command() {
        let tmp = tempfile::tempdir().unwrap();
        let b = Bundle::from_spec("/b".into(), spec(BASE), tmp.path()).unwrap();
        assert!(b.host_clone);
        let c = b.command().unwrap();
        assert_eq!(
            c.program,
            Program::Argv(vec!["/bin/sh".into(), "-c".into(), "exit 3".into()])
        );
        assert_eq!(c.env[1], ("A".into(), "b=c".into()));
        assert_eq!(c.cwd, Path::new("/srv"));
        assert_eq!(b.network().unwrap(), NetMode::Host);
        assert_eq!(
            b.mount_points(),
            [Path::new("/proc"), Path::new("/etc/hosts")]
        );
    }

    #[test]
    fn only_the_annotation_makes_a_host_clone() {
        let tmp = tempfile::tempdir().unwrap();
        // A bundle of the host's own root, without the annotation: refused.
        let plain = BASE
            .replace(r#""org.featherweight.rootfs":"host""#, r#""x":"y""#)
            .replace(r#""path":"rootfs""#, r#""path":"/""#);
        assert!(matches!(
            Bundle::from_spec("/b".into(), spec(&plain), tmp.path()),
            Err(OciError::Annotation { key: ROOTFS, .. })
        ));
        let other = BASE.replace(r#"rootfs":"host""#, r#"rootfs":"Host""#);
        assert!(Bundle::from_spec("/b".into(), spec(&other), tmp.path()).is_err());
    }

    #[test]
    fn network_namespaces_map_to_the_vms_network() {
        let tmp = tempfile::tempdir().unwrap();
        let with = |ns: &str| {
            let json = BASE.replace(
                r#""annotations""#,
                &format!(r#""linux":{{"namespaces":[{ns}]}},"annotations""#),
            );
            Bundle::from_spec("/b".into(), spec(&json), tmp.path()).map(|b| b.network().unwrap())
        };
        assert_eq!(with(r#"{"type":"pid"}"#).unwrap(), NetMode::Host);
        assert_eq!(with(r#"{"type":"network"}"#).unwrap(), NetMode::None);
        assert!(with(r#"{"type":"network","path":"/proc/1/ns/net"}"#).is_err());
    }

    #[test]
    fn export_dirs_are_checked() {
        let store = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let with = |dir: &str| {
            let json = BASE.replace(
                r#""org.featherweight.rootfs":"host""#,
                &format!(r#""org.featherweight.rootfs":"host","org.featherweight.export":{dir:?}"#),
            );
            Bundle::from_spec("/b".into(), spec(&json), store.path())
        };
        let ok = with(out.path().to_str().unwrap()).unwrap();
        assert_eq!(ok.export.unwrap(), out.path().canonicalize().unwrap());
        std::fs::create_dir(store.path().join("in")).unwrap();
        for bad in [
            "relative/dir".to_owned(),
            "/fvm-no-such-dir".to_owned(),
            store.path().join("in").display().to_string(),
            "/etc/hostname".to_owned(),
        ] {
            assert!(
                matches!(with(&bad), Err(OciError::Annotation { key: EXPORT, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn processes_fvm_cant_honour_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for (from, to) in [
            (r#""uid":0"#, r#""uid":1000"#),
            (r#""cwd":"/srv""#, r#""cwd":"srv""#),
            (r#""args":["/bin/sh","-c","exit 3"]"#, r#""args":[]"#),
            (r#""cwd":"/srv""#, r#""cwd":"/srv","terminal":true"#),
        ] {
            let json = BASE.replace(from, to);
            assert!(
                matches!(
                    Bundle::from_spec("/b".into(), spec(&json), tmp.path()),
                    Err(OciError::Config { .. })
                ),
                "{to}"
            );
        }
    }
}

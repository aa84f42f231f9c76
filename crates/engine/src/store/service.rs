//! A VM's services: named commands its init starts when the VM starts, in the
//! order of the policy's `[[service]]` tables, and stops in reverse order when it
//! stops (see `runtime::services` and docs/services.md).
//!
//! Every field is checked when the policy is read and when `fvm config` sets
//! it, with a one-line error naming the service and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The longest service name.
pub const MAX_NAME: usize = 32;
/// The most services a VM may have (each has its own log files, see `logs`).
pub const MAX_SERVICES: usize = 32;
/// The longest command line.
pub const MAX_COMMAND: usize = 4096;

/// A service name: `[a-z0-9][a-z0-9_-]{0,31}` (no `.`, which `fvm config`
/// uses for `NAME.key=value`; no `/`; no control characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn new(name: &str) -> Result<ServiceName, ServiceError> {
        super::name::check_narrow(
            name,
            MAX_NAME,
            "_-",
            "it is longer than 32 characters",
            "only a-z, 0-9, '_' and '-' are allowed",
        )
        .map_err(|why| {
            ServiceError(format!(
                "invalid service name {}: {why}",
                crate::os::quote::text(name)
            ))
        })?;
        Ok(ServiceName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = ServiceError;
    fn try_from(s: String) -> Result<Self, ServiceError> {
        ServiceName::new(&s)
    }
}

impl From<ServiceName> for String {
    fn from(n: ServiceName) -> String {
        n.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service definition that can't be used: one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

/// When the init starts a service again after its process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Never.
    #[default]
    No,
    /// When it exited with a status other than 0 or was killed by a signal.
    OnFailure,
    /// Whenever it ended (but not when it was stopped).
    Always,
}

impl Restart {
    pub fn parse(text: &str) -> Result<Restart, ServiceError> {
        match text {
            "no" => Ok(Restart::No),
            "on-failure" => Ok(Restart::OnFailure),
            "always" => Ok(Restart::Always),
            other => Err(ServiceError(format!(
                "invalid restart {}: use no, on-failure or always",
                crate::os::quote::text(other)
            ))),
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Restart::No
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
    }
}

/// One service of a VM's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Service {
    pub name: ServiceName,
    /// Run by `/bin/sh -c` in the VM.
    pub command: String,
    /// Set on top of the clean environment every command in a VM starts from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// The user (a name from the VM's /etc/passwd, or a number) it runs as
    /// (default root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Restart::is_default")]
    pub restart: Restart,
    /// For a daemon that forks itself: the file (in the VM) its main process
    /// writes its pid to. Once the command exits 0, that process is the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,
}

/// The keys of `fvm config VM --service NAME.KEY=VALUE`.
pub const KEYS: &[&str] = &["env", "workdir", "user", "restart", "pidfile"];

impl Service {
    pub fn new(name: ServiceName, command: &str) -> Result<Service, ServiceError> {
        let s = Service {
            name,
            command: command.to_owned(),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            restart: Restart::No,
            pidfile: None,
        };
        s.validate()?;
        Ok(s)
    }

    /// Check every field: one line naming the service and what is wrong.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let name = &self.name;
        let fail = |what: String| Err(ServiceError(format!("service {name}: {what}")));
        if self.command.trim().is_empty() {
            return fail("the command is empty".into());
        }
        if self.command.len() > MAX_COMMAND {
            return fail(format!("the command is longer than {MAX_COMMAND} bytes"));
        }
        if self.command.contains('\0') {
            return fail("the command has a NUL byte".into());
        }
        for (k, v) in &self.env {
            check_env(k, v).or_else(&fail)?;
        }
        for (key, path) in [("workdir", &self.workdir), ("pidfile", &self.pidfile)] {
            if let Some(p) = path {
                check_path(p).or_else(|why| fail(format!("{key} {why}")))?;
            }
        }
        if let Some(u) = &self.user {
            check_user(u).or_else(fail)?;
        }
        Ok(())
    }

    /// The command line the init runs.
    pub fn argv(&self) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), self.command.clone()]
    }

    /// Set one key from `fvm config --service NAME.KEY=VALUE`. An empty value
    /// clears `workdir`, `user` and `pidfile`; `env` takes `VAR=VALUE` to set
    /// and `VAR` to remove.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ServiceError> {
        let mut next = self.clone();
        let path = |v: &str| (!v.is_empty()).then(|| PathBuf::from(v));
        match key {
            "env" => match value.split_once('=') {
                Some((k, v)) => {
                    next.env.insert(k.to_owned(), v.to_owned());
                }
                None if value.is_empty() => next.env.clear(),
                None => {
                    next.env.remove(value);
                }
            },
            "workdir" => next.workdir = path(value),
            "pidfile" => next.pidfile = path(value),
            "user" => next.user = (!value.is_empty()).then(|| value.to_owned()),
            "restart" => next.restart = Restart::parse(value)?,
            other => {
                return Err(ServiceError(format!(
                    "unknown service key {}: use {}",
                    crate::os::quote::text(other),
                    KEYS.join(", ")
                )));
            }
        }
        next.validate()?;
        *self = next;
        Ok(())
    }
}

fn check_env(k: &str, v: &str) -> Result<(), String> {
    if k.is_empty() || k.contains(['=', '\0']) || k.chars().any(|c| c.is_whitespace()) {
        return Err(format!(
            "invalid env name {}: it must be non-empty, with no '=', white space or NUL",
            crate::os::quote::text(k)
        ));
    }
    if v.contains('\0') {
        return Err(format!("env {k}: the value has a NUL byte"));
    }
    Ok(())
}

fn check_path(p: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let shown = crate::os::quote::path(p);
    if !p.is_absolute() {
        return Err(format!("{shown} is not an absolute path"));
    }
    if p.as_os_str().as_bytes().contains(&0) || p.as_os_str().len() > 4096 {
        return Err(format!("{shown} is not a usable path"));
    }
    Ok(())
}

/// A user name as `useradd` takes it, or a number.
fn check_user(u: &str) -> Result<(), String> {
    let numeric =
        !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()) && u.parse::<u32>().is_ok();
    let named = !u.is_empty()
        && u.len() <= 32
        && u.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
    if numeric || named {
        Ok(())
    } else {
        Err(format!(
            "invalid user {}: a name ([a-z_][a-z0-9_-]*, at most 32) or a number",
            crate::os::quote::text(u)
        ))
    }
}

/// The whole table: at most [`MAX_SERVICES`], names unique, each valid.
pub fn validate_all(services: &[Service]) -> Result<(), ServiceError> {
    if services.len() > MAX_SERVICES {
        return Err(ServiceError(format!("more than {MAX_SERVICES} services")));
    }
    for (i, s) in services.iter().enumerate() {
        s.validate()?;
        if services[..i].iter().any(|o| o.name == s.name) {
            return Err(ServiceError(format!("service {} is defined twice", s.name)));
        }
    }
    Ok(())
}

/// Apply one `--service` argument of `fvm config` to `services`:
/// `NAME=CMD` adds the service (at the end) or replaces its command, `NAME=`
/// removes it, `NAME.KEY=VALUE` sets one of [`KEYS`].
pub fn apply_arg(table: &mut Vec<Service>, arg: &str) -> Result<(), ServiceError> {
    let Some((left, value)) = arg.split_once('=') else {
        return Err(ServiceError(format!(
            "invalid --service {}: use NAME=CMD, NAME= or NAME.KEY=VALUE",
            crate::os::quote::text(arg)
        )));
    };
    let (name, key) = match left.split_once('.') {
        Some((n, k)) => (n, Some(k)),
        None => (left, None),
    };
    let name = ServiceName::new(name)?;
    let mut next = table.clone();
    let services = &mut next;
    let at = services.iter().position(|s| s.name == name);
    match (key, at) {
        (None, Some(i)) if value.is_empty() => {
            services.remove(i);
        }
        (None, None) if value.is_empty() => {
            return Err(ServiceError(format!("there is no service {name}")));
        }
        (None, Some(i)) => {
            let mut s = services[i].clone();
            s.command = value.to_owned();
            s.validate()?;
            services[i] = s;
        }
        (None, None) => services.push(Service::new(name, value)?),
        (Some(k), Some(i)) => services[i].set(k, value)?,
        (Some(_), None) => {
            return Err(ServiceError(format!(
                "there is no service {name}: add it first with --service {name}='CMD'"
            )));
        }
    }
    validate_all(services)?;
    *table = next;
    Ok(())
}

/// Remove a service (`fvm config --no-service NAME`).
pub fn remove(services: &mut Vec<Service>, name: &str) -> Result<(), ServiceError> {
    let name = ServiceName::new(name)?;
    let before = services.len();
    services.retain(|s| s.name != name);
    if services.len() == before {
        return Err(ServiceError(format!("there is no service {name}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_narrow() {
        for ok in ["web", "a", "0db", "my_svc-2"] {
            ServiceName::new(ok).unwrap();
        }
        for bad in [
            "",
            "Web",
            "-a",
            "a.b",
            "a/b",
            "a\nb",
            &"x".repeat(33),
            "a b",
        ] {
            let e = ServiceName::new(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn config_arguments_add_set_and_remove() {
        let mut v = Vec::new();
        apply_arg(&mut v, "web=python3 -m http.server").unwrap();
        apply_arg(&mut v, "db=sleep 1000").unwrap();
        apply_arg(&mut v, "web.restart=always").unwrap();
        apply_arg(&mut v, "web.env=PORT=8080").unwrap();
        apply_arg(&mut v, "web.workdir=/srv").unwrap();
        apply_arg(&mut v, "web.user=www-data").unwrap();
        apply_arg(&mut v, "db.pidfile=/run/db.pid").unwrap();
        assert_eq!(v[0].restart, Restart::Always);
        assert_eq!(v[0].env["PORT"], "8080");
        assert_eq!(v[0].user.as_deref(), Some("www-data"));
        apply_arg(&mut v, "web.env=PORT").unwrap();
        assert!(v[0].env.is_empty());
        apply_arg(&mut v, "web=other").unwrap();
        assert_eq!(
            (v[0].name.as_str(), v[0].command.as_str()),
            ("web", "other")
        );
        apply_arg(&mut v, "web=").unwrap();
        assert_eq!(v.len(), 1);
        remove(&mut v, "db").unwrap();
        assert!(v.is_empty());
    }

    #[test]
    fn bad_arguments_are_one_line_and_change_nothing() {
        let mut v = Vec::new();
        apply_arg(&mut v, "web=true").unwrap();
        let before = v.clone();
        for bad in [
            "web",
            "=x",
            "Web=x",
            "web.restart=sometimes",
            "web.colour=red",
            "web.workdir=relative",
            "web.pidfile=x/y",
            "web.user=Root!",
            "web.env=A B=1",
            "web.env==1",
            "nosuch.restart=always",
            "nosuch=",
            "web=   ",
        ] {
            let e = apply_arg(&mut v, bad).unwrap_err().to_string();
            assert!(!e.contains('\n') && !e.is_empty(), "{bad}: {e}");
            assert_eq!(v, before, "{bad}");
        }
        let e = remove(&mut v, "nosuch").unwrap_err();
        assert!(e.to_string().contains("nosuch"));
    }

    #[test]
    fn the_table_is_bounded_and_names_are_unique() {
        let mut v = Vec::new();
        for i in 0..MAX_SERVICES {
            apply_arg(&mut v, &format!("s{i}=true")).unwrap();
        }
        assert!(apply_arg(&mut v, "one-more=true").is_err());
        let mut twice = vec![v[0].clone(), v[0].clone()];
        assert!(validate_all(&twice).is_err());
        twice.pop();
        validate_all(&twice).unwrap();
    }
}

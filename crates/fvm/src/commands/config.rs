//! `fvm config`: with no flags the policy; with flags, one line per setting that
//! changed (`memory: none → 512M`), or a note that nothing did.

use anyhow::Result;
use fvm_engine::VmError;
use fvm_engine::confine::Security;
use fvm_engine::layers::Layers;
use fvm_engine::store::Policy;

use super::{Context, vm_name};
use crate::cli::ConfigArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &ConfigArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let engine = ctx.engine_for(&name)?;
    let p = &args.policy;
    let security = p
        .security
        .as_deref()
        .map(Security::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let layers = p
        .layers
        .as_deref()
        .map(Layers::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut before = None;
    let policy = if p.description.is_some()
        || security.is_some()
        || layers.is_some()
        || !p.limits.given().is_empty()
        || !p.net.given().is_empty()
        || !args.services.service.is_empty()
        || !args.services.no_service.is_empty()
        || args.services.autostart.is_some()
    {
        let done = engine.configure(&name, |policy| {
            before = Some(policy.clone());
            if let Some(d) = &p.description {
                policy.description = d.clone();
            }
            if let Some(s) = security {
                policy.security = s;
            }
            if let Some(l) = layers {
                policy.layers = l;
            }
            p.net
                .apply_to(&mut policy.network)
                .map_err(|e| VmError::Network(e.into()))?;
            apply_services(&args.services, policy)?;
            p.limits.apply_to(&mut policy.limits).map_err(VmError::from)
        })?;
        if done.services_changed {
            eprintln!(
                "fvm: services of running vm {name} take their new definitions when next (re)started: fvm service {name} SERVICE restart"
            );
        }
        if done.network_applied {
            eprintln!("fvm: network rules applied to running vm {name}");
        }
        if !done.applied.is_empty() {
            eprintln!("fvm: {} applied to running vm {name}", list(&done.applied));
        }
        if !done.for_new_processes.is_empty() {
            eprintln!(
                "fvm: {} of vm {name} apply to processes started from now on (fvm run, fvm shell); running processes keep their old limits",
                list(&done.for_new_processes)
            );
        }
        done.policy
    } else {
        engine.policy_of(&name)?
    };
    if ctx.json() {
        output::print_json(&policy)?;
    } else if let Some(before) = before {
        let lines = changes(&before, &policy);
        if lines.is_empty() {
            eprintln!("fvm: vm {name}: nothing changed");
        }
        output::print(&lines.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    } else {
        output::print(&policy.to_toml())?;
    }
    Ok(0)
}

/// One line per setting that differs between `old` and `new`, as `key: old → new`
/// (`none` for a setting that isn't set), in the order of the policy file.
fn changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = |key: &str, a: Option<String>, b: Option<String>| {
        if a != b {
            let shown = |v: Option<String>| {
                v.map_or_else(
                    || "none".to_owned(),
                    |v| fvm_engine::os::quote::text(&v).into_owned(),
                )
            };
            out.push(format!("{key}: {} → {}", shown(a), shown(b)));
        }
    };
    let description = |p: &Policy| Some(p.description.clone()).filter(|d| !d.is_empty());
    line("description", description(old), description(new));
    line("security", value(&old.security), value(&new.security));
    line("layers", value(&old.layers), value(&new.layers));
    for key in fvm_engine::limits::Key::ALL {
        line(key.name(), old.limits.get(key), new.limits.get(key));
    }
    let (a, b) = (
        serde_json::to_value(&old.network).unwrap_or_default(),
        serde_json::to_value(&new.network).unwrap_or_default(),
    );
    for key in ["mode", "ip", "nat", "dns", "allow", "deny", "publish"] {
        let flag = if key == "mode" { "net" } else { key };
        line(flag, shown(a.get(key)), shown(b.get(key)));
    }
    // A service by name: its whole definition as the policy file has it.
    let service = |p: &Policy, n: &str| {
        p.services
            .iter()
            .find(|s| s.name.as_str() == n)
            .map(service_words)
    };
    let mut names: Vec<&str> = old.services.iter().map(|s| s.name.as_str()).collect();
    for s in &new.services {
        if !names.contains(&s.name.as_str()) {
            names.push(s.name.as_str());
        }
    }
    for n in names {
        line(&format!("service {n}"), service(old, n), service(new, n));
    }
    line("autostart", value(&old.autostart), value(&new.autostart));
    out
}

/// A service as words: its command, then what isn't the default
/// (`restart=always, user=www-data`).
fn service_words(s: &fvm_engine::store::service::Service) -> String {
    let mut extra: Vec<String> = s.env.iter().map(|(k, v)| format!("env {k}={v}")).collect();
    if let Some(w) = &s.workdir {
        extra.push(format!("workdir={}", w.display()));
    }
    if let Some(u) = &s.user {
        extra.push(format!("user={u}"));
    }
    if !s.restart.is_default() {
        extra.push(format!("restart={}", s.restart.as_str()));
    }
    if let Some(p) = &s.pidfile {
        extra.push(format!("pidfile={}", p.display()));
    }
    if extra.is_empty() {
        s.command.clone()
    } else {
        format!("{} ({})", s.command, extra.join(", "))
    }
}

fn value(v: &impl serde::Serialize) -> Option<String> {
    shown(serde_json::to_value(v).ok().as_ref())
}

/// A setting's value as words: a string as it is, a list comma-separated; none
/// for what is unset (null, false, an empty list).
fn shown(v: Option<&serde_json::Value>) -> Option<String> {
    use serde_json::Value;
    match v? {
        Value::Null | Value::Bool(false) => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| shown(Some(i)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

/// `--service`, `--no-service` and `--autostart`, in that order; any error
/// leaves the policy as it was.
fn apply_services(
    args: &crate::cli::ServiceConfigArgs,
    policy: &mut fvm_engine::store::Policy,
) -> Result<(), VmError> {
    use fvm_engine::store::service;
    let bad = |e: service::ServiceError| VmError::Services {
        name: policy.name.to_string(),
        message: e.0,
    };
    let mut services = policy.services.clone();
    for arg in &args.service {
        service::apply_arg(&mut services, arg).map_err(bad)?;
    }
    for name in &args.no_service {
        service::remove(&mut services, name).map_err(bad)?;
    }
    policy.services = services;
    if let Some(a) = args.autostart {
        policy.autostart = a;
    }
    Ok(())
}

fn list(keys: &[fvm_engine::limits::Key]) -> String {
    keys.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fvm_engine::limits::Key;
    use fvm_engine::net::NetKey;
    use fvm_engine::store::VmName;

    #[test]
    fn changes_are_one_line_each_with_none_for_unset() {
        let old = Policy::new(VmName::new("c").unwrap(), None);
        assert!(changes(&old, &old).is_empty());
        let mut new = old.clone();
        new.description = "db\x1b[2J".into();
        new.limits.set(Key::Memory, "512M").unwrap();
        new.network.set(NetKey::Net, "bridge").unwrap();
        new.network.set(NetKey::Nat, "true").unwrap();
        new.network.set(NetKey::Dns, "192.0.2.1").unwrap();
        new.network.set(NetKey::Dns, "192.0.2.2").unwrap();
        let lines = changes(&old, &new);
        assert_eq!(lines[1], "memory: none → 512M", "{lines:?}");
        assert_eq!(lines[2], "net: host → bridge", "{lines:?}");
        assert_eq!(lines[3], "nat: none → true", "{lines:?}");
        assert_eq!(lines[4], "dns: none → 192.0.2.1, 192.0.2.2", "{lines:?}");
        // A VM's description is the user's, but shown quoted like any text.
        assert!(!lines[0].contains('\x1b'), "{lines:?}");
        let back = changes(&new, &old);
        assert_eq!(back[1], "memory: 512M → none", "{back:?}");
    }
}

//! The policy editor's form: turned into the flags of `fvm config`, checked with
//! the CLI's own parsers (`Limits::set`/`validate`, `NetPolicy::set`/
//! `validate`), and told apart by when each change takes effect.

use std::collections::HashMap;

use fvm_engine::limits::{Key, Limits};
use fvm_engine::net::{NetKey, NetPolicy};

use crate::backend::Vm;

pub const NET_KEYS: [NetKey; 7] = [
    NetKey::Net,
    NetKey::Ip,
    NetKey::Nat,
    NetKey::Dns,
    NetKey::Allow,
    NetKey::Deny,
    NetKey::Publish,
];

/// What saving the form does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edit {
    /// The flags of `fvm config NAME`.
    pub args: Vec<String>,
    /// Changes applied to the running VM at once.
    pub live: Vec<&'static str>,
    /// Per-process limits: processes started from now on get them.
    pub new_processes: Vec<&'static str>,
    /// Changes that wait for the VM's next start (or a stop, for its layers).
    pub next_start: Vec<&'static str>,
}

/// A list setting's current value: one entry a line.
pub fn net_text(net: &NetPolicy, key: NetKey) -> String {
    let lines: Vec<String> = match key {
        NetKey::Net => vec![net.mode.as_str().to_owned()],
        NetKey::Ip => net.ip.iter().map(|i| i.to_string()).collect(),
        NetKey::Nat => vec![net.nat().to_string()],
        NetKey::Dns => net.dns.iter().map(|i| i.to_string()).collect(),
        NetKey::Allow => net.allow.iter().map(|i| i.to_string()).collect(),
        NetKey::Deny => net.deny.iter().map(|i| i.to_string()).collect(),
        NetKey::Publish => net.publish.iter().map(|i| i.to_string()).collect(),
    };
    lines.join("\n")
}

fn is_list(key: NetKey) -> bool {
    matches!(
        key,
        NetKey::Dns | NetKey::Allow | NetKey::Deny | NetKey::Publish
    )
}

/// The changes the form makes to `vm`'s policy, checked; an error is one line
/// naming the setting.
pub fn edit(vm: &Vm, form: &HashMap<String, String>) -> Result<Edit, String> {
    let mut out = Edit::default();
    let mut limits = vm.limits.clone();
    for key in Key::ALL {
        let Some(new) = form.get(&format!("limit-{}", key.name())) else {
            continue;
        };
        let new = new.trim();
        let old = vm.limits.get(key).unwrap_or_default();
        if new == old {
            continue;
        }
        let value = if new.is_empty() { "none" } else { new };
        limits
            .set(key, value)
            .map_err(|e| fvm_engine::error_line(&e))?;
        out.args.push(format!("--{}", key.name()));
        out.args.push(value.to_owned());
        let when = if !vm.running() {
            &mut out.next_start
        } else if key.per_process() {
            &mut out.new_processes
        } else if key.on_disk() {
            &mut out.next_start
        } else {
            &mut out.live
        };
        when.push(key.name());
    }
    limits.validate().map_err(|e| fvm_engine::error_line(&e))?;
    let mut net = vm.network.clone();
    for key in NET_KEYS {
        let field = format!("net-{}", key.name());
        let new = match key {
            // A checkbox: absent when unticked.
            NetKey::Nat => if form.contains_key(&field) {
                "true"
            } else {
                "false"
            }
            .to_owned(),
            _ => match form.get(&field) {
                Some(v) => v.trim().to_owned(),
                None => continue,
            },
        };
        let old = net_text(&vm.network, key);
        let new_lines: Vec<&str> = new
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if new_lines.join("\n") == old {
            continue;
        }
        let flag = format!("--{}", key.name());
        let mut values: Vec<&str> = Vec::new();
        if is_list(key) {
            values.push("none");
            values.extend(&new_lines);
        } else {
            values.push(new_lines.first().copied().unwrap_or("none"));
        }
        for v in values {
            net.set(key, v).map_err(|e| fvm_engine::error_line(&e))?;
            out.args.push(flag.clone());
            out.args.push(v.to_owned());
        }
        if vm.running() && !key.at_start() {
            out.live.push(key.name());
        } else {
            out.next_start.push(key.name());
        }
    }
    net.validate().map_err(|e| fvm_engine::error_line(&e))?;
    Ok(out)
}

/// Apply `fvm config` flags (`--memory 512M ...`) to a policy's limits and
/// network: the fake backend's `config`.
pub fn apply_args(args: &[String], limits: &mut Limits, net: &mut NetPolicy) -> Result<(), String> {
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{} needs a value", pair[0]));
        };
        let name = flag.trim_start_matches("--");
        if let Some(key) = Key::ALL.into_iter().find(|k| k.name() == name) {
            limits
                .set(key, value)
                .map_err(|e| fvm_engine::error_line(&e))?;
        } else if let Some(key) = NET_KEYS.into_iter().find(|k| k.name() == name) {
            net.set(key, value)
                .map_err(|e| fvm_engine::error_line(&e))?;
        } else {
            return Err(format!("unknown setting {flag}"));
        }
    }
    limits.validate().map_err(|e| fvm_engine::error_line(&e))?;
    net.validate().map_err(|e| fvm_engine::error_line(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_vm() -> Vm {
        let dir = std::env::temp_dir();
        crate::fake::FakeBackend::new(&dir)
            .list()
            .unwrap()
            .into_iter()
            .find(|v| v.name == "web1")
            .unwrap()
    }
    use crate::backend::Backend;

    #[test]
    fn changed_fields_become_config_flags_by_when_they_apply() {
        let vm = running_vm();
        let form: HashMap<String, String> = [
            ("limit-memory", "1G"),
            ("limit-processes", "200"),
            ("limit-open-files", "64"),
            ("net-publish", "8080:80\n9090:90"),
            ("net-net", "bridge"),
            // NAT is on for a bridged VM unless its policy says otherwise: the
            // box shows checked and stays so.
            ("net-nat", "on"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let e = edit(&vm, &form).unwrap();
        assert_eq!(
            e.args,
            [
                "--memory",
                "1G",
                "--open-files",
                "64",
                "--publish",
                "none",
                "--publish",
                "8080:80",
                "--publish",
                "9090:90"
            ]
        );
        assert_eq!(e.live, ["memory", "publish"]);
        assert_eq!(e.new_processes, ["open-files"]);
    }

    #[test]
    fn a_bad_value_is_refused_by_the_cli_rules() {
        let vm = running_vm();
        let form: HashMap<String, String> = [("limit-memory".to_owned(), "lots".to_owned())]
            .into_iter()
            .collect();
        let e = edit(&vm, &form).unwrap_err();
        assert!(e.contains("memory"), "{e}");
    }
}

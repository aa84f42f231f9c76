use anyhow::Result;
use fvm_engine::VmError;
use fvm_engine::confine::Security;
use fvm_engine::layers::Layers;

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
    } else {
        output::print(&policy.to_toml())?;
    }
    Ok(0)
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

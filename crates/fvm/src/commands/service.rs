//! `fvm service VM [SERVICE] start|stop|restart|status`.

use std::time::Duration;

use anyhow::Result;
use fvm_engine::store::service::ServiceName;
use fvm_engine::vm::{ServiceAction, ServiceStatus, describe};

use super::{Context, vm_name};
use crate::cli::ServiceArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &ServiceArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let (service, action) = match args.args.as_slice() {
        [action] => (None, action.as_str()),
        [service, action] => (Some(service.as_str()), action.as_str()),
        _ => anyhow::bail!("use fvm service VM [SERVICE] start|stop|restart|status"),
    };
    let names = service
        .map(ServiceName::new)
        .transpose()?
        .into_iter()
        .collect::<Vec<_>>();
    let engine = ctx.engine_for(&name)?;
    let action = match action {
        "start" => ServiceAction::Start,
        "stop" => ServiceAction::Stop,
        "restart" => ServiceAction::Restart,
        "status" => {
            let (_, mut list) = engine.service_status(&name)?;
            if let Some(n) = &names.first() {
                list.retain(|s| s.name == n.as_str());
                if list.is_empty() {
                    anyhow::bail!("vm {:?} has no service {n}", name.as_str());
                }
            }
            show(ctx, &list)?;
            return Ok(0);
        }
        other => anyhow::bail!(
            "unknown action {}: use start, stop, restart or status",
            fvm_engine::os::quote::text(other)
        ),
    };
    let list = engine.service(&name, action, &names, Duration::from_secs(args.time))?;
    let shown: Vec<ServiceStatus> = list
        .into_iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n.as_str() == s.name))
        .collect();
    show(ctx, &shown)?;
    Ok(0)
}

fn show(ctx: &Context<'_>, list: &[ServiceStatus]) -> Result<()> {
    if ctx.json() {
        return output::print_json(&list);
    }
    let rows = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.state.as_str().to_owned(),
                s.pid.map_or("-".into(), |p| p.to_string()),
                s.restarts.to_string(),
                s.since.clone().unwrap_or_else(|| "-".into()),
                match (&s.error, s.last_exit) {
                    (Some(e), _) => fvm_engine::os::quote::line(e).into_owned(),
                    (None, Some(x)) => describe(Some(x)),
                    (None, None) => "-".into(),
                },
            ]
        })
        .collect();
    output::print(&output::table(
        &["service", "state", "pid", "restarts", "since", "last exit"],
        rows,
    ))
}

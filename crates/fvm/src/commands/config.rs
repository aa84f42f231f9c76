use anyhow::Result;

use super::{Context, vm_name};
use crate::cli::ConfigArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &ConfigArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let engine = ctx.engine_for(&name)?;
    let p = &args.policy;
    let policy = if p.description.is_some() {
        engine.configure(&name, |policy| {
            if let Some(d) = &p.description {
                policy.description = d.clone();
            }
        })?
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

use anyhow::Result;
use fvm_engine::confine::Security;
use fvm_engine::layers::Layers;
use fvm_engine::vm::CreateOptions;

use super::{Context, vm_name};
use crate::cli::CreateArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &CreateArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let engine = ctx.engine(true)?;
    let mut opts = CreateOptions {
        description: args.policy.description.clone(),
        dir: args.dir.clone(),
        ..CreateOptions::default()
    };
    args.policy.limits.apply_to(&mut opts.limits)?;
    args.policy.net.apply_to(&mut opts.network)?;
    if let Some(s) = &args.policy.security {
        opts.security = Security::parse(s).map_err(anyhow::Error::msg)?;
    }
    if let Some(l) = &args.policy.layers {
        opts.layers = Layers::parse(l).map_err(anyhow::Error::msg)?;
    }
    engine.create(&name, &opts)?;
    tracing::info!("created vm {name}");
    if ctx.json() {
        output::print_json(&engine.info(&name)?)?;
    } else {
        output::print(&format!("{name}\n"))?;
    }
    Ok(0)
}

use anyhow::Result;

use super::Context;
use crate::cli::NetworkArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &NetworkArgs) -> Result<u8> {
    let engine = ctx.engine(args.bridge.is_some() || args.subnet.is_some())?;
    let settings = if args.bridge.is_none() && args.subnet.is_none() {
        engine.store_network()?
    } else {
        let subnet = args
            .subnet
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e: String| anyhow::anyhow!("invalid --subnet: {e}"))
            })
            .transpose()?;
        engine.set_store_network(args.bridge.clone(), subnet)?
    };
    if ctx.json() {
        output::print_json(&serde_json::json!({
            "bridge": settings.bridge,
            "subnet": settings.subnet.to_string(),
            "gateway": settings.gateway().addr.to_string(),
        }))?;
    } else {
        output::print(&format!(
            "bridge   {}\nsubnet   {}\ngateway  {}\n",
            settings.bridge,
            settings.subnet,
            settings.gateway().addr
        ))?;
    }
    Ok(0)
}

use anyhow::Result;

use super::Context;
use crate::cli::NetworkArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &NetworkArgs) -> Result<u8> {
    let changes = args.bridge.is_some() || args.subnet.is_some() || !args.upstream_dns.is_empty();
    let engine = ctx.engine(changes)?;
    let settings = if !changes {
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
        let mut upstream = None;
        for text in &args.upstream_dns {
            let list: &mut Vec<_> = upstream.get_or_insert_with(Vec::new);
            if text == "none" {
                list.clear();
            } else {
                list.push(
                    fvm_engine::net::parse_upstream(text)
                        .map_err(|e| anyhow::anyhow!("invalid --upstream-dns: {e}"))?,
                );
            }
        }
        engine.set_store_network(args.bridge.clone(), subnet, upstream)?
    };
    let upstream: Vec<String> = settings
        .upstream_dns
        .iter()
        .map(ToString::to_string)
        .collect();
    if ctx.json() {
        output::print_json(&serde_json::json!({
            "bridge": settings.bridge,
            "subnet": settings.subnet.to_string(),
            "gateway": settings.gateway().addr.to_string(),
            "upstream_dns": upstream,
        }))?;
    } else {
        output::print(&format!(
            "bridge   {}\nsubnet   {}\ngateway  {}\nupstream {}\n",
            settings.bridge,
            settings.subnet,
            settings.gateway().addr,
            if upstream.is_empty() {
                "the host's /etc/resolv.conf name servers".to_owned()
            } else {
                upstream.join(", ")
            }
        ))?;
    }
    Ok(0)
}

use anyhow::Result;

use super::{Context, vm_name};
use crate::cli::CopyArgs;
use crate::output::{self, Progress};

pub fn run(ctx: &Context<'_>, args: &CopyArgs) -> Result<u8> {
    let src = vm_name(&args.src)?;
    let dst = vm_name(&args.dst)?;
    let engine = ctx.engine_for(&src)?;
    match Progress::on_terminal("copying") {
        Some(mut bar) => {
            engine.copy_with_progress(&src, &dst, Some(&mut |p| bar.set(p.copied, p.total)))?;
        }
        None => {
            engine.copy(&src, &dst)?;
        }
    }
    // What names SRC's own place on the network stays with SRC.
    if let Ok(policy) = engine.policy_of(&src) {
        let net = &policy.network;
        let mut left = Vec::new();
        if let Some(ip) = net.ip {
            left.push(format!(
                "{src}'s address {ip} (the copy gets a free one at its first start)"
            ));
        }
        if !net.publish.is_empty() {
            let ports: Vec<String> = net.publish.iter().map(ToString::to_string).collect();
            left.push(format!("{src}'s published ports {}", ports.join(", ")));
        }
        if !left.is_empty() {
            eprintln!("fvm: not copied to {dst}: {}", left.join("; "));
        }
    }
    output::print(&format!("{dst}\n"))?;
    Ok(0)
}

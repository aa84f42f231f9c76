//! `fvm discard`: drop a stopped VM's changes under some paths, so that it sees
//! the host's version there again.

use anyhow::Result;
use fvm_engine::os::quote;

use super::diff::vm_path_args;
use super::{Context, vm_name};
use crate::cli::DiscardArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &DiscardArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let engine = ctx.engine_for(&name)?;
    let paths = vm_path_args(&args.paths)?;
    let dropped = engine.discard(&name, &paths, args.dry_run)?;
    if ctx.json() {
        output::print_json(&serde_json::json!({
            "dry_run": args.dry_run,
            "changes": dropped,
        }))?;
        return Ok(0);
    }
    let mut text = String::new();
    if args.dry_run {
        for c in &dropped {
            text.push_str(&format!(
                "would discard {} {}\n",
                c.kind.letter(),
                quote::path(&c.path)
            ));
        }
    } else {
        let count = |k: char| dropped.iter().filter(|c| c.kind.letter() == k).count();
        text.push_str(&format!(
            "discarded {} change(s) of vm {:?} ({} added, {} changed, {} deleted): it sees the host's version there again\n",
            dropped.len(),
            name.as_str(),
            count('A'),
            count('C'),
            count('D'),
        ));
    }
    output::print(&text)?;
    Ok(0)
}

//! `fvm ui`: the web console (crates/ui). Prints the URL with its token, then
//! serves until interrupted.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Result, bail};

use super::Context;
use crate::cli::UiArgs;

pub fn run(ctx: &Context<'_>, args: &UiArgs) -> Result<u8> {
    if let Some(name) = &args.commit_plan {
        let engine = ctx.engine_for(&super::vm_name(name)?)?;
        println!("{}", fvm_ui::real::commit_plan(&engine, name, &args.paths)?);
        return Ok(0);
    }
    if let Some(name) = &args.preview {
        let engine = ctx.engine_for(&super::vm_name(name)?)?;
        let [path] = args.paths.as_slice() else {
            bail!("--preview takes one path, after --");
        };
        println!("{}", fvm_ui::real::preview_json(&engine, name, path)?);
        return Ok(0);
    }
    if !fvm_ui::has_assets() {
        bail!("{}", fvm_ui::NO_ASSETS);
    }
    let backend: Arc<dyn fvm_ui::backend::Backend> = match &args.fake_backend {
        Some(dir) => Arc::new(fvm_ui::fake::FakeBackend::new(dir)),
        None => {
            let engine = ctx.engine(true)?;
            let root = engine.store().root().to_owned();
            let exe = std::fs::read_link("/proc/self/exe")?;
            Arc::new(fvm_ui::real::RealBackend::open(&root, exe)?)
        }
    };
    let audit = match &args.fake_backend {
        Some(dir) => dir.join("ui-audit.log"),
        None => ctx.engine(true)?.store().root().join("ui-audit.log"),
    };
    let opts = fvm_ui::Options {
        listen: args.listen,
        socket: args.socket.clone(),
        allow_remote: args.allow_remote,
        read_only: args.read_only,
        allow_uids: args.allow_uid.clone(),
        allow_gids: args.allow_gid.clone(),
        audit: Some(audit),
    };
    fvm_ui::run(opts, backend, |url| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "fvm ui: {url}");
        let _ = out.flush();
    })?;
    Ok(0)
}

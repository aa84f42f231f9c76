//! `fvm logs VM [SERVICE] [-f] [--since TIME] [--tail N]`.

use std::io::IsTerminal;

use anyhow::Result;
use fvm_engine::logs::{Entry, Query, parse_since};

use super::{Context, vm_name};
use crate::cli::LogsArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &LogsArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let engine = ctx.engine_for(&name)?;
    let source = match args.service.as_deref() {
        None => None,
        Some(s) if s == fvm_engine::logs::DETACHED => Some(s.to_owned()),
        Some(s) => Some(fvm_engine::store::service::ServiceName::new(s)?.to_string()),
    };
    let query = Query {
        source,
        since: args
            .since
            .as_deref()
            .map(parse_since)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        tail: args.tail,
    };
    // Made before the entries so far are read, so that none is missed between.
    let wake = if args.follow {
        engine.init_pidfd(&name)?
    } else {
        None
    };
    let logs = engine.logs(&name)?;
    let terminal = std::io::stdout().is_terminal();
    let json = ctx.json();
    let mut emit = |e: &Entry| -> std::io::Result<()> {
        let mut line = if json {
            serde_json::to_string(e).map_err(std::io::Error::other)?
        } else {
            e.show(terminal)
        };
        line.push('\n');
        output::print(&line).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    };
    for e in logs.read(&query) {
        if emit(&e).is_err() {
            return Ok(0);
        }
    }
    if !args.follow {
        return Ok(0);
    }
    // Follows until ^C (which ends fvm), or the VM's init ends.
    let Some(wake) = wake else {
        return Ok(0);
    };
    let follow_query = Query {
        tail: None,
        since: None,
        ..query
    };
    let result = logs.follow(&follow_query, &mut emit, std::os::fd::AsFd::as_fd(&wake));
    match result {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(anyhow::anyhow!("cannot follow the logs of vm {name}: {e}")),
    }
}

//! `run` and `shell`.

use std::path::PathBuf;

use anyhow::Result;
use fvm_engine::runtime::command::DEFAULT_PATH;
use fvm_engine::runtime::{CommandSpec, Program, TtyMode};

use super::{Context, vm_name};
use crate::cli::{NameArg, RunArgs};

pub fn run(ctx: &Context<'_>, args: &RunArgs) -> Result<u8> {
    let name = args.name.as_deref().map(vm_name).transpose()?;
    let tty = if args.tty {
        TtyMode::Always
    } else if args.no_tty {
        TtyMode::Never
    } else {
        TtyMode::Auto
    };
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k != "FVM_NAME" && k != "FVM_ROOT")
        .collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let given = args.limits.given();
    if !args.rm && !given.is_empty() {
        anyhow::bail!(
            "--{} is for throw-away vms (--rm); set a named vm's limits with fvm config",
            given[0].0
        );
    }
    let exit = if args.rm {
        let engine = ctx.engine(true)?;
        let mut opts = fvm_engine::vm::CreateOptions::default();
        args.limits.apply_to(&mut opts.limits)?;
        let spec_for = |vm: &str, mut env: Vec<(String, String)>| {
            env.push(("FVM_NAME".into(), vm.to_owned()));
            CommandSpec {
                program: Program::Argv(args.command.clone()),
                env,
                cwd: cwd.clone(),
                tty,
                limits: Default::default(),
                confine: Default::default(),
            }
        };
        // The name of a throw-away VM is only known once it is picked.
        let name = match name {
            Some(n) => n,
            None => engine.temporary_name()?,
        };
        let spec = spec_for(name.as_str(), env);
        engine.run_temporary(Some(name), &opts, spec)?
    } else {
        let Some(name) = name else {
            anyhow::bail!("a vm name is required (or use --rm for a throw-away vm)");
        };
        env.push(("FVM_NAME".into(), name.to_string()));
        let spec = CommandSpec {
            program: Program::Argv(args.command.clone()),
            env,
            cwd,
            tty,
            limits: Default::default(),
            confine: Default::default(),
        };
        ctx.engine_for(&name)?.run(&name, spec)?
    };
    Ok(status(exit.code()))
}

pub fn shell(ctx: &Context<'_>, args: &NameArg) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let mut env = vec![
        ("HOME".to_owned(), "/root".to_owned()),
        ("USER".into(), "root".into()),
        ("LOGNAME".into(), "root".into()),
        ("PATH".into(), DEFAULT_PATH.into()),
        ("FVM_NAME".into(), name.to_string()),
        // Debian's default bash prompt shows this in front of user@host.
        ("debian_chroot".into(), "fvm".into()),
        (
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
        ),
    ];
    for key in ["LANG", "LC_ALL", "COLORTERM"] {
        if let Ok(v) = std::env::var(key) {
            env.push((key.into(), v));
        }
    }
    let spec = CommandSpec {
        program: Program::LoginShell,
        env,
        cwd: "/root".into(),
        tty: TtyMode::Always,
        limits: Default::default(),
        confine: Default::default(),
    };
    let exit = ctx.engine_for(&name)?.run(&name, spec)?;
    Ok(status(exit.code()))
}

fn status(code: i32) -> u8 {
    u8::try_from(code.clamp(0, 255)).unwrap_or(125)
}

//! `run` and `shell`.

use std::path::PathBuf;

use anyhow::Result;
use fvm_engine::vm::{CommandSpec, Ended, Program, TtyMode};

use super::{Context, vm_name};
use crate::cli::{RunArgs, ShellArgs};

pub fn run(ctx: &Context<'_>, args: &RunArgs) -> Result<u8> {
    let name = args.name.as_deref().map(vm_name).transpose()?;
    let tty = if args.tty {
        TtyMode::Always
    } else if args.no_tty {
        TtyMode::Never
    } else {
        TtyMode::Auto
    };
    let mut env = terminal_env();
    for file in &args.env_file {
        env.extend(env_file(file)?);
    }
    for given in &args.env {
        env.extend(
            env_arg(given).map_err(|why| anyhow::anyhow!("invalid --env {given:?}: {why}"))?,
        );
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let given = args.limits.given();
    if !args.rm && !given.is_empty() {
        anyhow::bail!(
            "--{} is for throw-away vms (--rm); set a named vm's limits with fvm config",
            given[0].0
        );
    }
    if let Some((key, _)) = args.net.given().first().filter(|_| !args.rm) {
        anyhow::bail!(
            "--{} is for throw-away vms (--rm); set a named vm's network with fvm config",
            key.name()
        );
    }
    if args.detach {
        let Some(name) = name else {
            anyhow::bail!("a vm name is required with -d");
        };
        env.push(("FVM_NAME".into(), name.to_string()));
        let engine = ctx.engine_for(&name)?;
        let done = engine.run_detached(&name, args.command.clone(), env, cwd)?;
        if ctx.json() {
            crate::output::print_json(&serde_json::json!({
                "name": name,
                "pid": done.pid,
                "started_vm": done.started_vm,
                "logs": format!("fvm logs {name} run"),
            }))?;
        } else {
            if done.started_vm {
                eprintln!("fvm: started vm {name}");
            }
            crate::output::print(&format!("{name} {}\n", done.pid))?;
            eprintln!(
                "fvm: its output: fvm logs {name} run; it is pid {} in the vm",
                done.pid
            );
        }
        return Ok(0);
    }
    let ended = if args.rm {
        let engine = ctx.engine(true)?;
        let mut opts = fvm_engine::vm::CreateOptions::default();
        args.limits.apply_to(&mut opts.limits)?;
        args.net.apply_to(&mut opts.network)?;
        opts.cgroup_parent = args.job.cgroup_parent.clone();
        if let Some(out) = &args.job.diff_out {
            check_diff_out(out)?;
        }
        let job = fvm_engine::vm::JobOptions {
            diff: args.job.diff_out.is_some(),
            stop_grace: std::time::Duration::from_secs(args.job.stop_time),
        };
        let spec_for = |vm: &str, mut env: Vec<(String, String)>| {
            env.push(("FVM_NAME".into(), vm.to_owned()));
            CommandSpec {
                program: Program::Argv(args.command.clone()),
                env,
                cwd: cwd.clone(),
                tty,
                limits: Default::default(),
                confine: Default::default(),
                user: args.user.clone(),
                process: Default::default(),
            }
        };
        // The name of a throw-away VM is only known once it is picked.
        let name = match name {
            Some(n) => n,
            None => engine.temporary_name()?,
        };
        let spec = spec_for(name.as_str(), env);
        let outcome = engine.run_job(Some(name), &opts, spec, &job)?;
        if let (Some(out), Some(diff)) = (&args.job.diff_out, outcome.diff) {
            write_diff(out, &diff?)?;
        }
        outcome.ended
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
            user: args.user.clone(),
            process: Default::default(),
        };
        ctx.engine_for(&name)?.run(&name, spec)?
    };
    Ok(report(&ended))
}

pub fn shell(ctx: &Context<'_>, args: &ShellArgs) -> Result<u8> {
    let name = vm_name(&args.name)?;
    let mut env = terminal_env();
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    env.extend([
        ("FVM_NAME".to_owned(), name.to_string()),
        // Debian's default bash prompt shows this in front of user@host.
        ("debian_chroot".into(), "fvm".into()),
    ]);
    let spec = CommandSpec {
        program: Program::LoginShell,
        env,
        // The user's home.
        cwd: PathBuf::new(),
        tty: TtyMode::Always,
        limits: Default::default(),
        confine: Default::default(),
        user: args.user.clone(),
        process: Default::default(),
    };
    let ended = ctx.engine_for(&name)?.run(&name, spec)?;
    Ok(report(&ended))
}

/// Say why the command ended, in one line on stderr, when a limit or fvm ended
/// it (not for its own exit status or a signal it got for its own reasons), and
/// give its status: the command's, or 128 + the signal that ended it.
fn report(ended: &Ended) -> u8 {
    if ended.end.worth_saying() {
        eprintln!("fvm: {}", ended.end);
    }
    u8::try_from(ended.exit.code().clamp(0, 255)).unwrap_or(125)
}

/// `--diff-out FILE` must be a file in an existing directory: checked before the
/// command runs, not found out after it.
fn check_diff_out(path: &std::path::Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if path.file_name().is_none() {
        anyhow::bail!("--diff-out {}: not a file name", path.display());
    }
    if !dir.is_dir() {
        anyhow::bail!(
            "--diff-out {}: no directory {}",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!("--diff-out {}: is a directory", path.display());
    }
    Ok(())
}

/// The diff as `fvm diff --json` prints it, written to a temporary file beside
/// `path`, synced, and renamed over it: a reader sees all of it or nothing.
fn write_diff(path: &std::path::Path, diff: &[fvm_engine::changes::diff::Change]) -> Result<()> {
    let mut text = serde_json::to_string_pretty(diff)?;
    text.push('\n');
    fvm_engine::os::files::write_durable(path, text.as_bytes(), 0o644)
        .map_err(|e| anyhow::anyhow!("cannot write --diff-out {}: {e}", path.display()))
}

/// What the caller's terminal is, which a command on it needs: TERM and
/// COLORTERM. Nothing else of the caller's environment reaches a VM unless the
/// user names it with `--env`.
fn terminal_env() -> Vec<(String, String)> {
    ["TERM", "COLORTERM"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
        .collect()
}

/// One `--env` value (or env-file line): `NAME=VALUE`, or `NAME` for the
/// caller's value (nothing when the caller has none).
fn env_arg(given: &str) -> Result<Option<(String, String)>, String> {
    let (name, value) = match given.split_once('=') {
        Some((n, v)) => (n, Some(v.to_owned())),
        None => (given, None),
    };
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.contains(['\0', '=']) || name.chars().any(char::is_whitespace) {
        return Err("a name has no '=', white space or NUL".into());
    }
    if value.as_deref().is_some_and(|v| v.contains('\0')) {
        return Err("the value has a NUL byte".into());
    }
    let value = match value {
        Some(v) => Some(v),
        None => std::env::var(name).ok(),
    };
    Ok(value.map(|v| (name.to_owned(), v)))
}

/// The variables of an `--env-file`.
fn env_file(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read env file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let var = env_arg(line)
            .map_err(|why| anyhow::anyhow!("env file {} line {}: {why}", path.display(), i + 1))?;
        out.extend(var);
    }
    Ok(out)
}

//! `fvm oci ...` and `fvm-runc ...`: fvm as an OCI runtime, with runc's command
//! line (as containerd's runc shim and conmon call it). The work is the engine's
//! (`fvm_engine::oci`); this parses, prints, and reports errors the way runc's
//! callers read them: one line on stderr, and with `--log FILE --log-format
//! json` a JSON line `{"level":"error","msg":...}` appended to FILE, exit 1.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use fvm_engine::oci::{self, Runtime};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

/// Where state lives without `--root`.
pub const DEFAULT_ROOT: &str = "/run/fvm-runc";

#[derive(Debug, Parser)]
#[command(
    name = "fvm-runc",
    version,
    about = "fvm as an OCI runtime: a container is a copy-on-write clone of this host (annotation org.featherweight.rootfs=host) or of its bundle's rootfs"
)]
struct OciCli {
    #[command(flatten)]
    global: GlobalOpts,
    /// Accepted for runc's callers and ignored (fvm does not checkpoint)
    #[arg(long, hide = true, value_name = "PATH")]
    criu: Option<PathBuf>,
    /// Accepted for runc's callers and ignored
    #[arg(long, hide = true, value_name = "BOOL")]
    rootless: Option<String>,
    #[command(subcommand)]
    command: OciCommand,
}

#[derive(Debug, Subcommand)]
enum OciCommand {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
}

/// Run the runtime's command line `args` (without the program name); returns
/// the exit status.
pub fn main(args: Vec<OsString>) -> u8 {
    let parsed = OciCli::try_parse_from(std::iter::once(OsString::from("fvm-runc")).chain(args));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    if cli.global.debug {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
    if !fvm_engine::running_as_root() {
        report(&cli, "fvm-runc must run as root");
        return 1;
    }
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            let line = fvm_engine::error_line(e.as_ref());
            report(&cli, &fvm_engine::os::quote::line(&line));
            1
        }
    }
}

/// An error: on stderr, and as runc writes it to `--log` in JSON.
fn report(cli: &OciCli, msg: &str) {
    eprintln!("fvm-runc: {msg}");
    let Some(log) = &cli.global.log else {
        return;
    };
    let line = if cli.global.log_format.as_deref() == Some("json") {
        let time = rfc3339_now();
        format!(
            "{}\n",
            serde_json::json!({"level": "error", "msg": msg, "time": time})
        )
    } else {
        format!("fvm-runc: {msg}\n")
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Now, in RFC 3339 (as runc's log has it, and containerd parses it).
fn rfc3339_now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

fn runtime(cli: &OciCli) -> Result<Runtime> {
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    Ok(Runtime::open(&root)?)
}

fn dispatch(cli: &OciCli) -> Result<u8> {
    match &cli.command {
        OciCommand::Standard(cmd) => match cmd.as_ref() {
            StandardCmd::Create(a) => {
                create(
                    cli,
                    &a.container_id,
                    &a.bundle,
                    a.pid_file.as_deref(),
                    a.console_socket.as_deref(),
                )?;
                Ok(0)
            }
            StandardCmd::Start(a) => {
                runtime(cli)?.start(&a.container_id)?;
                Ok(0)
            }
            StandardCmd::State(a) => {
                let state = runtime(cli)?.state(&a.container_id)?;
                print_json(&state)
            }
            StandardCmd::Kill(a) => {
                let sig = oci::parse_signal(&a.signal)?;
                runtime(cli)?.kill(&a.container_id, sig, a.all)?;
                Ok(0)
            }
            StandardCmd::Delete(a) => {
                runtime(cli)?.delete(&a.container_id, a.force)?;
                Ok(0)
            }
        },
        OciCommand::Common(cmd) => match cmd.as_ref() {
            CommonCmd::Features(_) => print_json(&oci::features()),
            CommonCmd::Pause(a) => {
                runtime(cli)?.pause(&a.container_id, true)?;
                Ok(0)
            }
            CommonCmd::Resume(a) => {
                runtime(cli)?.pause(&a.container_id, false)?;
                Ok(0)
            }
            CommonCmd::Ps(a) => {
                let pids = runtime(cli)?.pids(&a.container_id)?;
                if a.format == "json" {
                    return print_json(&pids);
                }
                let mut text = String::from("PID\n");
                for p in pids {
                    text.push_str(&format!("{p}\n"));
                }
                crate::output::print(&text)?;
                Ok(0)
            }
            CommonCmd::Run(a) => {
                let (rt, pid) = create(
                    cli,
                    &a.container_id,
                    &a.bundle,
                    a.pid_file.as_deref(),
                    a.console_socket.as_deref(),
                )?;
                rt.start(&a.container_id)?;
                if a.detach {
                    return Ok(0);
                }
                // In the foreground: the init is this process's child; its exit
                // status is the container process's. A SIGTERM (a scheduler's
                // cancel), SIGINT or SIGHUP to this process is passed on to the
                // container, as runc's run does, instead of leaving it running.
                let status = oci::wait_init_forwarding(pid, |sig| {
                    let _ = rt.kill(&a.container_id, sig, false);
                })
                .with_context(|| format!("cannot wait for container {}", a.container_id))?;
                if !a.keep {
                    rt.delete(&a.container_id, true)?;
                }
                Ok(u8::try_from(status.clamp(0, 255)).unwrap_or(1))
            }
            CommonCmd::Exec(a) => {
                let Some(process) = &a.process else {
                    anyhow::bail!("exec needs --process FILE (the OCI process to run)");
                };
                let rt = runtime(cli)?;
                let pid = rt.exec(
                    &a.container_id,
                    process,
                    a.pid_file.as_deref(),
                    a.console_socket.as_deref(),
                    a.tty,
                )?;
                if a.detach {
                    return Ok(0);
                }
                let status = oci::wait_init(pid).with_context(|| {
                    format!("cannot wait for the process in {}", a.container_id)
                })?;
                Ok(u8::try_from(status.clamp(0, 255)).unwrap_or(1))
            }
            CommonCmd::List(a) => {
                let all = runtime(cli)?.list()?;
                if a.format == "json" {
                    return print_json(&all);
                }
                let mut text = String::new();
                if a.quiet {
                    for s in &all {
                        text.push_str(&s.id);
                        text.push('\n');
                    }
                } else {
                    let rows = all
                        .iter()
                        .map(|s| {
                            vec![
                                s.id.clone(),
                                s.pid.map_or("0".into(), |p| p.to_string()),
                                s.status.clone(),
                                s.bundle.display().to_string(),
                                s.created.clone(),
                            ]
                        })
                        .collect();
                    text =
                        crate::output::table(&["ID", "PID", "STATUS", "BUNDLE", "CREATED"], rows);
                }
                crate::output::print(&text)?;
                Ok(0)
            }
            CommonCmd::Update(a) => {
                let resources = update_resources(a)?;
                runtime(cli)?.update(&a.container_id, &resources)?;
                Ok(0)
            }
            other => anyhow::bail!(
                "{}: fvm's runtime does not {}",
                command_name(other),
                match other {
                    CommonCmd::Checkpointt(_) => "checkpoint containers",
                    CommonCmd::Events(_) =>
                        "stream container events (read `fvm stats` of the container's vm)",
                    _ =>
                        "write a config.json (a host clone's bundle needs the annotation org.featherweight.rootfs=host)",
                }
            ),
        },
    }
}

/// `update`'s resources: the JSON of `--resources FILE` (`-`: stdin), with
/// runc's single-value flags on top.
fn update_resources(a: &liboci_cli::Update) -> Result<oci_spec::runtime::LinuxResources> {
    use oci_spec::runtime::{LinuxPids, LinuxResources};
    let mut res: LinuxResources = match &a.resources {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(std::io::stdin(), 1 << 20),
                    &mut t,
                )
                .context("cannot read --resources from stdin")?;
                t
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --resources {}", path.display()))?
            };
            serde_json::from_str(&text).context("--resources is not OCI linux.resources JSON")?
        }
        None => LinuxResources::default(),
    };
    if let Some(m) = a.memory {
        let mut mem = res.memory().unwrap_or_default();
        mem.set_limit(Some(i64::try_from(m).context("--memory is too large")?));
        if let Some(s) = a.memory_swap {
            mem.set_swap(Some(s));
        }
        res.set_memory(Some(mem));
    }
    if a.cpu_quota.is_some() || a.cpu_period.is_some() || a.cpu_share.is_some() {
        let mut cpu = res.cpu().clone().unwrap_or_default();
        if let Some(q) = a.cpu_quota {
            cpu.set_quota(Some(i64::try_from(q).context("--cpu-quota is too large")?));
        }
        if let Some(p) = a.cpu_period {
            cpu.set_period(Some(p));
        }
        if let Some(s) = a.cpu_share {
            cpu.set_shares(Some(s));
        }
        res.set_cpu(Some(cpu));
    }
    if let Some(p) = a.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(p);
        res.set_pids(Some(pids));
    }
    Ok(res)
}

fn command_name(cmd: &CommonCmd) -> &'static str {
    match cmd {
        CommonCmd::Checkpointt(_) => "checkpoint",
        CommonCmd::Events(_) => "events",
        CommonCmd::Exec(_) => "exec",
        CommonCmd::Features(_) => "features",
        CommonCmd::List(_) => "list",
        CommonCmd::Pause(_) => "pause",
        CommonCmd::Ps(_) => "ps",
        CommonCmd::Resume(_) => "resume",
        CommonCmd::Run(_) => "run",
        CommonCmd::Update(_) => "update",
        CommonCmd::Spec(_) => "spec",
    }
}

/// `create` (and the first half of `run`): the container, and its init's pid
/// in `pid_file`.
fn create(
    cli: &OciCli,
    id: &str,
    bundle: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
) -> Result<(Runtime, i32)> {
    let rt = runtime(cli)?;
    let pid = rt.create(id, bundle, console_socket)?;
    if let Some(file) = pid_file {
        write_pid(file, pid)?;
    }
    Ok((rt, pid))
}

fn write_pid(file: &Path, pid: i32) -> Result<()> {
    fvm_engine::os::files::write_atomic(file, pid.to_string().as_bytes(), 0o644)
        .with_context(|| format!("cannot write --pid-file {}", file.display()))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<u8> {
    crate::output::print_json(value)?;
    Ok(0)
}

/// The runtime's arguments when fvm was called as one: `fvm-runc ARGS` (by the
/// program's file name) or `fvm oci ARGS`.
pub fn runtime_args() -> Option<Vec<OsString>> {
    runtime_args_from(std::env::args_os())
}

fn runtime_args_from(argv: impl IntoIterator<Item = OsString>) -> Option<Vec<OsString>> {
    let mut args = argv.into_iter();
    let argv0 = args.next()?;
    if Path::new(&argv0).file_name() == Some("fvm-runc".as_ref()) {
        return Some(args.collect());
    }
    let rest: Vec<OsString> = args.collect();
    if rest.first().is_some_and(|a| a == "oci") {
        return Some(rest[1..].to_vec());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_runtime_is_chosen_by_program_name_or_oci() {
        assert_eq!(
            runtime_args_from(args(&[
                "/usr/local/bin/fvm-runc",
                "--root",
                "/r",
                "state",
                "x"
            ])),
            Some(args(&["--root", "/r", "state", "x"]))
        );
        assert_eq!(
            runtime_args_from(args(&["fvm", "oci", "features"])),
            Some(args(&["features"]))
        );
        assert_eq!(runtime_args_from(args(&["fvm", "list"])), None);
        assert_eq!(
            runtime_args_from(args(&["/bin/fvm-runc-old", "list"])),
            None
        );
        assert_eq!(runtime_args_from(args(&["fvm", "run", "oci"])), None);
    }

    #[test]
    fn runcs_command_lines_parse() {
        // As containerd's runc shim (go-runc) and conmon build them.
        for line in [
            "--root /run/containerd/runc/k8s.io --log /b/log.json --log-format json --systemd-cgroup create --bundle /b --pid-file /b/init.pid abc",
            "--root /r --log /b/log.json --log-format json start abc",
            "--root /r state abc",
            "--root /r kill --all abc 9",
            "--root /r kill abc SIGTERM",
            "--root /r delete --force abc",
            "--root /r exec --process /tmp/p.json --detach --pid-file /b/e.pid abc",
            "--root /r ps --format json abc",
            "--root /r pause abc",
            "--root /r resume abc",
            "--root /r --debug --criu /usr/sbin/criu features",
            "--root /r run --bundle /b --detach abc",
            "--root /r update --resources - abc",
            "--root /r list --format json",
        ] {
            let argv = std::iter::once("fvm-runc").chain(line.split(' '));
            if let Err(e) = OciCli::try_parse_from(argv) {
                panic!("{line}: {e}");
            }
        }
    }
}

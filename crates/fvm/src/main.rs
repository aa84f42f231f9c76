//! `fvm`: the command-line front end of the featherweight VM engine.
//!
//! Parses the command line, checks that it runs as root, runs one verb, and turns
//! the outcome into an exit status: the command's own status for `run` and
//! `shell`, 125 for fvm's own failures, 126/127 when a command can't be executed.
//! Errors are printed once, as one line: `fvm: <what failed>: <why>`.

mod cli;
mod commands;
mod output;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Exit status for fvm's own failures (as podman does).
const FAILURE: u8 = 125;

fn main() -> ExitCode {
    // Called as an OCI runtime (`fvm-runc ...`, `fvm oci ...`): runc's command
    // line, not fvm's.
    if let Some(args) = commands::oci::runtime_args() {
        return ExitCode::from(commands::oci::main(args));
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(FAILURE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose);
    if !fvm_engine::running_as_root() {
        eprintln!("fvm: fvm must run as root (try sudo)");
        return ExitCode::from(FAILURE);
    }
    match commands::dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let code = err
                .chain()
                .find_map(|e| e.downcast_ref::<fvm_engine::VmError>())
                .map_or(i32::from(FAILURE), fvm_engine::VmError::exit_code);
            let _ = std::io::stdout().flush();
            // One line, whatever a VM put in the pieces of the message.
            let line = fvm_engine::error_line(err.as_ref());
            eprintln!("fvm: {}", fvm_engine::os::quote::line(&line));
            ExitCode::from(u8::try_from(code).unwrap_or(FAILURE))
        }
    }
}

/// Only a closed standard output is quiet; a broken pipe anywhere else (the
/// channel to a VM's init, say) is a real failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<output::StdoutClosed>())
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // With -v, time since start, so `fvm -vv run VM -- true` shows where the
    // time of a VM start goes.
    if verbose > 0 {
        builder
            .with_timer(tracing_subscriber::fmt::time::Uptime::default())
            .init();
    } else {
        builder.without_time().init();
    }
}

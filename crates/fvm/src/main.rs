//! `fvm`: the command-line front end of the featherweight VM engine.
//!
//! Parses the command line, checks that it runs as root, runs one verb, and turns
//! the outcome into an exit status: the command's own status for `run` and
//! `shell`, 125 for fvm's own failures, 126/127 when a command can't be executed
//! (the whole list: `help::EXIT_STATUS`). Errors are printed once, as one line:
//! `fvm: <what failed>: <why>`, or with `--json` as one JSON object
//! `{"error": "<what failed>: <why>", "exit_code": N}`.

mod cli;
mod commands;
mod complete;
mod help;
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
    // A TAB in a shell whose completion script `fvm completions` printed: answer
    // it and exit (see `complete`).
    clap_complete::CompleteEnv::with_factory(<cli::Cli as clap::CommandFactory>::command)
        .complete();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // The flags could not be parsed, so --json is looked for by hand.
            if std::env::args_os().skip(1).any(|a| a == "--json") {
                let text = e.render().to_string();
                let line = text
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("invalid command line")
                    .trim_start_matches("error: ");
                print_json_error(line, i32::from(FAILURE));
            } else {
                let _ = e.print();
            }
            return ExitCode::from(FAILURE);
        }
    };
    init_logging(cli.verbose);
    if commands::needs_root(&cli.command) && !fvm_engine::running_as_root() {
        let err = anyhow::anyhow!("fvm {} needs root (try sudo)", command_name());
        return ExitCode::from(report_error(cli.json, &err));
    }
    match commands::dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => ExitCode::from(report_error(cli.json, &err)),
    }
}

/// The subcommand's name (the first word of the command line that names one).
fn command_name() -> String {
    let cmd = <cli::Cli as clap::CommandFactory>::command();
    std::env::args()
        .skip(1)
        .find_map(|a| cmd.find_subcommand(&a).map(|s| s.get_name().to_owned()))
        .unwrap_or_default()
}

/// Print the failure `err` on stderr, once, as one line (or one JSON object with
/// `json`), and return its exit status. A closed standard output is no failure
/// worth a message: status 0.
pub fn report_error(json: bool, err: &anyhow::Error) -> u8 {
    if is_broken_pipe(err) {
        return 0;
    }
    let code = err
        .chain()
        .find_map(|e| e.downcast_ref::<fvm_engine::VmError>())
        .map_or(i32::from(FAILURE), fvm_engine::VmError::exit_code);
    let _ = std::io::stdout().flush();
    // One line, whatever a VM put in the pieces of the message.
    let line = fvm_engine::error_line(err.as_ref());
    if json {
        print_json_error(&line, code);
    } else {
        eprintln!("fvm: {}", fvm_engine::os::quote::line(&line));
    }
    u8::try_from(code).unwrap_or(FAILURE)
}

/// `{"error": LINE, "exit_code": CODE}` on one line of stderr.
fn print_json_error(line: &str, code: i32) {
    let value = serde_json::json!({ "error": line, "exit_code": code });
    eprintln!("{value}");
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

//! Shell completion: commands and flags from the command line's definition, VM
//! names from the store. The scripts `fvm completions SHELL` prints call fvm
//! back with `COMPLETE=SHELL` set (clap_complete's dynamic completion), so the
//! names are those of the store at the time of the TAB, from `--root` on the
//! line being completed, else `FVM_ROOT`, else /var/lib/fvm.

use std::ffi::OsStr;
use std::path::PathBuf;

use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};

/// The completer of a VM name argument.
pub fn vm_names() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| -> Vec<CompletionCandidate> {
        let Some(prefix) = current.to_str() else {
            return Vec::new();
        };
        names_in(&store_root(std::env::args_os().skip(1)))
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(CompletionCandidate::new)
            .collect()
    })
}

/// The store named on the command line being completed (the words after `--`),
/// else by `FVM_ROOT`, else the default.
fn store_root(args: impl Iterator<Item = std::ffi::OsString>) -> PathBuf {
    let words: Vec<_> = args.skip_while(|a| a != "--").skip(1).collect();
    let mut given = None;
    for (i, w) in words.iter().enumerate() {
        let Some(w) = w.to_str() else { continue };
        if w == "--root" {
            given = words.get(i + 1).map(PathBuf::from);
        } else if let Some(v) = w.strip_prefix("--root=") {
            given = Some(PathBuf::from(v));
        }
    }
    given
        .or_else(|| std::env::var_os("FVM_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(fvm_engine::store::DEFAULT_ROOT))
}

/// The VMs of the store at `root`, none if it can't be read (not root, say).
fn names_in(root: &std::path::Path) -> Vec<String> {
    fvm_engine::store::Store::open(root)
        .and_then(|s| s.names())
        .map(|names| names.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default()
}

/// The registration script for `shell`: it calls `fvm` (from PATH) to complete.
pub fn script(shell: &str, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap_complete::env::EnvCompleter;
    let shell: &dyn EnvCompleter = match shell {
        "bash" => &clap_complete::env::Bash,
        "zsh" => &clap_complete::env::Zsh,
        _ => &clap_complete::env::Fish,
    };
    shell.write_registration("COMPLETE", "fvm", "fvm", "fvm", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> impl Iterator<Item = std::ffi::OsString> {
        w.iter()
            .map(std::ffi::OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_store_comes_from_the_line_being_completed() {
        assert_eq!(
            store_root(words(&["--", "fvm", "--root", "/s", "start", ""])),
            PathBuf::from("/s")
        );
        assert_eq!(
            store_root(words(&["--", "fvm", "--root=/t", "start", ""])),
            PathBuf::from("/t")
        );
        // fvm's own flags before `--` are not the line's.
        let fallback = std::env::var_os("FVM_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(fvm_engine::store::DEFAULT_ROOT));
        assert_eq!(store_root(words(&["--root", "/x", "--", "fvm"])), fallback);
    }

    #[test]
    fn every_shell_gets_a_script_that_calls_fvm() {
        for shell in ["bash", "zsh", "fish"] {
            let mut out = Vec::new();
            script(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("COMPLETE"), "{shell}: {text}");
            assert!(text.contains("fvm"), "{shell}: {text}");
        }
    }
}

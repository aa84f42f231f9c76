//! `fvm man --dir DIR` (hidden): the man pages of fvm and of each command, made
//! from the command line's definition (clap_mangen) plus the sections it can't
//! know: EXIT STATUS, FILES, ENVIRONMENT, EXAMPLES and SEE ALSO (crate::help).

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use super::Context;
use crate::cli::{Cli, ManArgs};
use crate::help;
use crate::output;

pub fn run(_ctx: &Context<'_>, args: &ManArgs) -> Result<u8> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut written = Vec::new();
    for (file, page) in pages()? {
        let path = args.dir.join(&file);
        write_file(&path, &page)?;
        written.push(path);
    }
    let mut text = String::new();
    for p in written {
        text.push_str(&format!("{}\n", p.display()));
    }
    output::print(&text)?;
    Ok(0)
}

fn write_file(path: &Path, page: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(page)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Every page, as (file name, roff text): fvm.1 and fvm-COMMAND.1 for each command
/// that isn't hidden.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = vec![("fvm.1".to_owned(), page(cmd.clone(), "")?)];
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = sub.get_name().to_owned();
        let sub = sub
            .clone()
            .name(format!("fvm-{name}"))
            .bin_name(format!("fvm {name}"))
            .version(env!("CARGO_PKG_VERSION"));
        out.push((format!("fvm-{name}.1"), page(sub, &name)?));
    }
    Ok(out)
}

fn page(cmd: clap::Command, name: &str) -> Result<Vec<u8>> {
    let version = cmd
        .get_version()
        .map(str::to_owned)
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    let man = clap_mangen::Man::new(cmd)
        .source(format!("fvm {version}"))
        .manual("fvm manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if name.is_empty() {
        man.render_subcommands_section(&mut out)?;
    }
    out.extend(extra_sections(name).as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Text safe in roff: a backslash is `\e`, and no line starts with a control
/// character.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    text.lines()
        .map(|l| {
            if l.starts_with(['.', '\'']) {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn tagged(out: &mut String, tag: &str, text: &str) {
    out.push_str(&format!(".TP\n.B {}\n{}\n", roff(tag), roff(text)));
}

/// The sections clap_mangen has no source for.
fn extra_sections(name: &str) -> String {
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    for (code, text) in exit_codes() {
        tagged(&mut out, &code, &text);
    }
    out.push_str(".SH FILES\n");
    for (file, text) in help::FILES {
        tagged(&mut out, file, text);
    }
    out.push_str(".SH ENVIRONMENT\n");
    for (var, text) in help::ENVIRONMENT {
        tagged(&mut out, var, text);
    }
    let examples = help::examples(name);
    if !examples.is_empty() {
        out.push_str(".SH EXAMPLES\n");
        for (line, what) in examples {
            out.push_str(&format!(".TP\n.B {}\n{}\n", roff(line), roff(what)));
        }
    }
    out.push_str(".SH \"SEE ALSO\"\n");
    if name.is_empty() {
        out.push_str(&roff(
            "fvm-COMMAND(1) for each command; docs/ in /usr/share/doc/fvm",
        ));
    } else {
        out.push_str(&roff("fvm(1)"));
    }
    out.push('\n');
    out
}

/// The exit statuses of `fvm --help` as (status, meaning): an entry starts at
/// column 2, its continuation lines are indented further.
fn exit_codes() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in help::EXIT_STATUS.lines().skip(1) {
        if let Some(entry) = line.strip_prefix("  ")
            && !entry.starts_with(' ')
        {
            let (code, text) = entry.split_once(char::is_whitespace).unwrap_or((entry, ""));
            out.push((code.to_owned(), text.trim().to_owned()));
        } else if let Some(last) = out.last_mut() {
            last.1.push(' ');
            last.1.push_str(line.trim());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_page_with_every_section() {
        let pages = pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in ["fvm.1", "fvm-start.1", "fvm-run.1", "fvm-completions.1"] {
            assert!(names.contains(&want), "{names:?}");
        }
        assert!(
            !names.contains(&"fvm-man.1"),
            "the hidden command has no page"
        );
        for (name, page) in &pages {
            let text = String::from_utf8(page.clone()).unwrap();
            for section in [
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH \"EXIT STATUS\"",
                ".SH FILES",
                ".SH ENVIRONMENT",
                ".SH EXAMPLES",
            ] {
                assert!(text.contains(section), "{name} lacks {section}");
            }
        }
    }

    #[test]
    fn the_exit_codes_are_those_of_the_help() {
        let codes: Vec<String> = exit_codes().into_iter().map(|(c, _)| c).collect();
        assert_eq!(codes, ["0", "1-124", "125", "126", "127", "128+N"]);
        let (_, ok) = &exit_codes()[0];
        assert!(ok.contains("already"), "{ok}");
    }

    #[test]
    fn roff_text_cannot_start_a_request() {
        assert_eq!(roff(".x\n'y\nz\\"), "\\&.x\n\\&'y\nz\\e");
    }
}

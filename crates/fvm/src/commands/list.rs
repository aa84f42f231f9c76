use anyhow::Result;
use fvm_engine::vm::VmInfo;

use super::Context;
use crate::cli::ListArgs;
use crate::output;

pub fn run(ctx: &Context<'_>, args: &ListArgs) -> Result<u8> {
    let mut vms = match ctx.engine_if_any()? {
        Some(engine) => {
            engine.keep_watcher();
            engine.list()?
        }
        None => Vec::new(),
    };
    vms.retain(|vm| {
        (args.status.is_empty() || args.status.iter().any(|s| s == vm.status.as_str()))
            && args
                .pattern
                .as_deref()
                .is_none_or(|p| glob_match(p.as_bytes(), vm.name.as_str().as_bytes()))
    });
    if ctx.json() {
        output::print_json(&vms)?;
        return Ok(0);
    }
    let rows = vms.iter().map(row).collect();
    output::print(&output::table(
        &[
            "name",
            "status",
            "ip",
            "processes",
            "memory",
            "disk",
            "created",
        ],
        rows,
    ))?;
    Ok(0)
}

fn row(vm: &VmInfo) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        vm.name.to_string(),
        status(vm),
        vm.ip.clone().unwrap_or_else(dash),
        vm.processes.map_or_else(dash, |p| p.to_string()),
        vm.memory.map_or_else(dash, output::size),
        output::disk(vm),
        vm.created.clone().unwrap_or_else(dash),
    ]
}

/// The status, with the processes the OOM killer ended in a running VM (the VM
/// itself goes on; its memory limit is what ended them), or how a stopped VM
/// ended (`stopped (oom)`, `stopped (fvm stop)`).
fn status(vm: &VmInfo) -> String {
    match vm.usage.and_then(|u| u.oom_kills) {
        Some(1) => format!("{} (1 oom kill)", vm.status.as_str()),
        Some(n) if n > 1 => format!("{} ({n} oom kills)", vm.status.as_str()),
        _ => match (&vm.end, vm.status) {
            (Some(end), fvm_engine::vm::VmStatus::Stopped) => {
                format!("{} ({})", vm.status.as_str(), end.short())
            }
            _ => vm.status.as_str().to_owned(),
        },
    }
}

/// Whether `name` matches the shell glob `pattern`: `*` (any run), `?` (any one
/// character), `[abc]`, `[a-z]`, `[!a]` (a set, or not); `\\` takes the next
/// character as it is. VM names are ASCII, so bytes are characters.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    // The last `*` seen and where the name stood then: on a mismatch, that star
    // takes one more character (linear backtracking, as in fnmatch).
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, n));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => set_match(pattern, p, name[n]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == name[n]).then_some(p + 2),
            Some(&c) => (c == name[n]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                n += 1;
            }
            (None, Some((after, from))) => {
                p = after;
                n = from + 1;
                star = Some((after, from + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The set at `pattern[start]` (a `[`): where the pattern goes on if `c` is in it.
/// A `[` without its `]` is a plain character.
fn set_match(pattern: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        match pattern.get(i) {
            None => return (c == b'[').then_some(start + 1),
            Some(b']') if !first => break,
            Some(&lo) => {
                if pattern.get(i + 1) == Some(&b'-')
                    && pattern.get(i + 2).is_some_and(|&h| h != b']')
                {
                    let hi = pattern[i + 2];
                    found |= lo <= c && c <= hi;
                    i += 3;
                } else {
                    found |= lo == c;
                    i += 1;
                }
            }
        }
        first = false;
    }
    (found != negate).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    fn m(p: &str, n: &str) -> bool {
        glob_match(p.as_bytes(), n.as_bytes())
    }

    #[test]
    fn globs_match_like_the_shell() {
        assert!(m("web*", "web1") && m("web*", "web") && !m("web*", "db1"));
        assert!(m("*1", "web1") && !m("*1", "web2"));
        assert!(m("w?b*", "wxb-2") && !m("w?b", "wb"));
        assert!(m("*", "") && m("**a", "a") && m("a*b*c", "axxbyyc") && !m("a*b*c", "axxbyy"));
        assert!(m("db[0-9]", "db7") && !m("db[0-9]", "dbx"));
        assert!(m("db[!0-9]", "dbx") && !m("db[!0-9]", "db1"));
        assert!(m("x[ab]y", "xby") && !m("x[ab]y", "xcy"));
        assert!(m("[", "[") && m("a\\*", "a*") && !m("a\\*", "ab"));
        assert!(m("web1", "web1") && !m("web1", "web10"));
    }
}

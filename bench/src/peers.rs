//! Other tools that run a command in a throw-away view of the host, timed next to fvm
//! where they are installed.
//!
//! Each peer runs `/bin/true` in the nearest thing it has to a copy-on-write view of the
//! running host, sharing the host's network as fvm's default VM does. A peer that is not
//! on PATH, or whose trial run fails, is left out of the table with a note saying why.
//!
//! Why each command has the options it has:
//!
//! - firejail: `--overlay-tmpfs` puts a tmpfs overlay over the host's files. Debian's
//!   firejail is built without overlayfs support and rejects the option; it then runs its
//!   plain sandbox, which works on the host's own files, and a note says so. `--noprofile`
//!   leaves out firejail's default profile, as the bubblewrap baseline has none.
//! - systemd-nspawn: `--volatile=overlay` is refused for `-D /`, so `--overlay=/::/`
//!   mounts an overlay over the host's root with a throw-away upper directory (under
//!   /var/tmp, removed on exit). nspawn accepts `-D /` only with `--volatile=yes|state` or
//!   `--ephemeral` (a copy of the whole tree unless it is on btrfs); `--volatile=state` is
//!   there only for that, as the overlay hides what it mounts.
//!   `--register=no --keep-unit` leave out machined and a transient scope unit, which
//!   are not part of running the command and need a system bus; `--link-journal=no`
//!   leaves out the journal link, which nspawn refuses with a warning when the machine id
//!   is the host's; `--pipe` hands the command the caller's stdio instead of a
//!   pseudo-terminal.
//! - podman: `--rootfs /:O` is an overlay over the host's root, and `--rm` deletes the
//!   container before `podman run` returns, so no after-hook is needed. For root, podman
//!   raises the container's open-file and process limits to 1048576, which fails where
//!   root lacks CAP_SYS_RESOURCE (raising a hard limit needs it); 1024 of each is below
//!   any usual hard limit and plenty for `/bin/true`. If the default OCI runtime fails
//!   (crun refuses a cgroup v1/v2 hybrid host with controllers on the v2 side), runc is
//!   tried.

use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::find_on_path;
use crate::measure::Subject;
use crate::startup::Kind;

/// How long a trial run may take before its peer is skipped.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(60);

/// A tool fvm is compared with, and the ways to run `/bin/true` under it.
#[derive(Debug)]
struct Peer {
    /// Looked up on PATH; also the subject's name in the table.
    program: &'static str,
    /// The Debian package that installs `program`.
    package: &'static str,
    /// Argument lists, best first: the first whose trial run succeeds is timed.
    variants: &'static [Variant],
}

#[derive(Debug)]
struct Variant {
    args: &'static [&'static str],
    /// Appended to the note that says this variant is timed because an earlier one
    /// failed: what the row then measures.
    fallback: &'static str,
}

const PEERS: &[Peer] = &[
    Peer {
        program: "firejail",
        package: "firejail",
        variants: &[
            Variant {
                args: &["--quiet", "--noprofile", "--overlay-tmpfs", "/bin/true"],
                fallback: "",
            },
            Variant {
                args: &["--quiet", "--noprofile", "/bin/true"],
                fallback: "; that is its plain sandbox, which works on the host's own files \
                           instead of a copy-on-write view of them",
            },
        ],
    },
    Peer {
        program: "systemd-nspawn",
        package: "systemd-container",
        variants: &[Variant {
            args: &[
                "--quiet",
                "-D",
                "/",
                "--volatile=state",
                "--overlay=/::/",
                "--register=no",
                "--keep-unit",
                "--link-journal=no",
                "--pipe",
                "/bin/true",
            ],
            fallback: "",
        }],
    },
    Peer {
        program: "podman",
        package: "podman",
        variants: &[
            Variant {
                args: &[
                    "run",
                    "--rm",
                    "--network=host",
                    "--ulimit=nofile=1024:1024",
                    "--ulimit=nproc=1024:1024",
                    "--rootfs",
                    "/:O",
                    "/bin/true",
                ],
                fallback: "",
            },
            Variant {
                args: &[
                    "run",
                    "--rm",
                    "--runtime=runc",
                    "--network=host",
                    "--ulimit=nofile=1024:1024",
                    "--ulimit=nproc=1024:1024",
                    "--rootfs",
                    "/:O",
                    "/bin/true",
                ],
                fallback: "",
            },
        ],
    },
];

/// The installed peers whose trial run succeeded, in table order. Every peer left out,
/// and every peer timed in a fallback form, gets a note.
pub fn subjects(notes: &mut Vec<String>) -> Vec<(Kind, Subject<'static>)> {
    let mut subjects = Vec::new();
    let mut note = |note: String| {
        eprintln!("fvm-bench: {note}");
        notes.push(note);
    };
    for peer in PEERS {
        let Some(path) = find_on_path(peer.program) else {
            note(missing(peer));
            continue;
        };
        match choose(peer, &path) {
            Choice::Use { variant, fallback } => {
                if let Some(why) = fallback {
                    note(why);
                }
                subjects.push((Kind::Peer, subject(peer, variant, path)));
            }
            Choice::Skip(why) => note(why),
        }
    }
    subjects
}

fn subject(peer: &Peer, variant: &'static Variant, path: PathBuf) -> Subject<'static> {
    Subject::new(peer.program, shown(peer, variant), move |_| {
        let mut cmd = Command::new(&path);
        cmd.args(variant.args);
        cmd
    })
}

/// The command as shown in the report.
fn shown(peer: &Peer, variant: &Variant) -> String {
    format!("{} {}", peer.program, variant.args.join(" "))
}

#[derive(Debug)]
enum Choice {
    /// Time this variant; `fallback` says why it is not the first.
    Use {
        variant: &'static Variant,
        fallback: Option<String>,
    },
    /// Leave the peer out, for the reason given.
    Skip(String),
}

/// The note for a peer that is not on PATH.
fn missing(peer: &Peer) -> String {
    format!(
        "{} is not installed (Debian package {}); skipped",
        peer.program, peer.package
    )
}

/// Which variant of `peer`, found at `path`, to time: the first whose trial run succeeds.
fn choose(peer: &'static Peer, path: &Path) -> Choice {
    let mut failures: Vec<(&Variant, String)> = Vec::new();
    for variant in peer.variants {
        eprintln!("fvm-bench: trial run of {}", shown(peer, variant));
        match trial(path, variant.args) {
            Ok(()) => {
                let fallback = failures.first().map(|(first, err)| {
                    format!(
                        "{}: `{}` failed its trial run ({err}), so its row times the command \
                         shown instead{}",
                        peer.program,
                        shown(peer, first),
                        variant.fallback
                    )
                });
                return Choice::Use { variant, fallback };
            }
            Err(err) => failures.push((variant, err)),
        }
    }
    let why = match failures.as_slice() {
        [(_, err)] => format!("failed its trial run: {err}"),
        _ => {
            let each: Vec<String> = failures
                .iter()
                .map(|(variant, err)| format!("`{}`: {err}", shown(peer, variant)))
                .collect();
            format!("failed its trial runs ({})", each.join("; "))
        }
    };
    Choice::Skip(format!("{} {why}; skipped", peer.program))
}

/// Runs `path args` once, with stdin and stdout on /dev/null as in the timed rounds.
/// On failure, the first line of its stderr (or its exit status if it wrote none).
fn trial(path: &Path, args: &[&str]) -> Result<(), String> {
    let mut stderr = tempfile::tempfile().map_err(|e| format!("no temporary file: {e}"))?;
    let child_stderr = stderr
        .try_clone()
        .map_err(|e| format!("no temporary file: {e}"))?;
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(child_stderr)
        .spawn()
        .map_err(|e| format!("could not be started: {e}"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < TRIAL_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "still running after {} s, so it was killed",
                    TRIAL_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("could not be waited for: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut text = String::new();
    let _ = stderr.rewind();
    let _ = stderr.read_to_string(&mut text);
    Err(first_line(&text).map_or_else(|| format!("exited with {status}"), str::to_owned))
}

/// The first line of `text` that is not blank, trimmed.
fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|line| !line.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SH: &str = "/bin/sh";

    fn peer(variants: &'static [Variant]) -> &'static Peer {
        Box::leak(Box::new(Peer {
            program: "sh",
            package: "dash",
            variants,
        }))
    }

    #[test]
    fn missing_peer_is_skipped_with_its_package() {
        let p = peer(&[Variant {
            args: &["-c", "exit 0"],
            fallback: "",
        }]);
        assert_eq!(
            missing(p),
            "sh is not installed (Debian package dash); skipped"
        );
    }

    #[test]
    fn first_working_variant_is_used() {
        let p = peer(&[Variant {
            args: &["-c", "exit 0"],
            fallback: "",
        }]);
        match choose(p, Path::new(SH)) {
            Choice::Use { variant, fallback } => {
                assert_eq!(variant.args, ["-c", "exit 0"]);
                assert_eq!(fallback, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fallback_variant_is_noted() {
        let p = peer(&[
            Variant {
                args: &[
                    "-c",
                    "echo; echo '  no overlay here  ' >&2; echo more >&2; exit 1",
                ],
                fallback: "",
            },
            Variant {
                args: &["-c", "exit 0"],
                fallback: "; plain",
            },
        ]);
        match choose(p, Path::new(SH)) {
            Choice::Use { variant, fallback } => {
                assert_eq!(variant.args, ["-c", "exit 0"]);
                let note = fallback.unwrap();
                assert!(note.starts_with("sh: `sh -c echo; echo"), "{note}");
                let tail = "failed its trial run (no overlay here), so its row times the \
                            command shown instead; plain";
                assert!(note.ends_with(tail), "{note}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failing_peer_is_skipped_with_its_error() {
        let p = peer(&[Variant {
            args: &["-c", "echo 'Error: no runtime' >&2; exit 126"],
            fallback: "",
        }]);
        match choose(p, Path::new(SH)) {
            Choice::Skip(note) => {
                assert_eq!(note, "sh failed its trial run: Error: no runtime; skipped");
            }
            other => panic!("{other:?}"),
        }
        let p = peer(&[
            Variant {
                args: &["-c", "exit 3"],
                fallback: "",
            },
            Variant {
                args: &["-c", "echo second >&2; exit 1"],
                fallback: "",
            },
        ]);
        match choose(p, Path::new(SH)) {
            Choice::Skip(note) => assert_eq!(
                note,
                "sh failed its trial runs (`sh -c exit 3`: exited with exit status: 3; \
                 `sh -c echo second >&2; exit 1`: second); skipped"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_peer_times_bin_true_and_names_its_package() {
        for peer in PEERS {
            assert!(!peer.variants.is_empty(), "{}", peer.program);
            assert!(!peer.package.is_empty(), "{}", peer.program);
            for variant in peer.variants {
                assert_eq!(variant.args.last(), Some(&"/bin/true"), "{}", peer.program);
            }
        }
    }
}

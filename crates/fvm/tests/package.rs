//! The Debian package, end to end: `scripts/package` builds it (a release build,
//! so this is slow: ignored unless asked for with `--ignored`), dpkg installs it on
//! this machine, the installed fvm runs `doctor` and a VM, its man pages and
//! completions are where man and the shells look, and `dpkg --purge` leaves
//! nothing of it behind.
//!
//!   cargo test -p fvm --test package -- --ignored
//!
//! Needs root, dpkg and cargo-deb; refuses to touch a machine that already has a
//! package named fvm installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Out, TestStore, needs_root, needs_tool, skip, try_run};

/// A package build can take minutes (a release build with LTO).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

fn host(argv: &[&str]) -> Out {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    try_run(cmd, None, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

fn installed() -> bool {
    host(&["dpkg-query", "-W", "-f=${Status}", "fvm"])
        .stdout
        .contains("ok installed")
}

/// Purges the package when the test ends, passed or not.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = host(&["dpkg", "--purge", "fvm"]);
    }
}

#[test]
#[ignore = "slow: builds the release binary and the package (run with --ignored)"]
fn the_package_installs_runs_and_purges_cleanly() {
    let test = "the_package_installs_runs_and_purges_cleanly";
    if !needs_root(test)
        || !needs_tool(test, "dpkg")
        || !needs_tool(test, "cargo-deb")
        || !needs_tool(test, "man")
    {
        return;
    }
    if installed() {
        skip(
            test,
            "a package named fvm is installed on this machine already",
        );
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let started = Instant::now();
    let mut cmd = Command::new(repo.join("scripts/package"));
    cmd.current_dir(&repo);
    let built = try_run(cmd, None, BUILD_TIMEOUT).expect("scripts/package");
    assert_eq!(built.code, 0, "scripts/package failed:\n{built}");
    eprintln!(
        "scripts/package took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let deb = PathBuf::from(built.stdout.lines().last().expect("the package's path"));
    let deb = if deb.is_absolute() {
        deb
    } else {
        repo.join(deb)
    };
    assert!(deb.is_file(), "{}:\n{built}", deb.display());
    let deb = deb.to_str().unwrap().to_owned();

    // What it holds and needs.
    let info = host(&["dpkg-deb", "--field", &deb, "Depends"]);
    assert!(info.stdout.contains("nftables"), "{info}");
    let listing = host(&["dpkg-deb", "--contents", &deb]);
    let files: Vec<String> = listing
        .stdout
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    for want in [
        "/usr/bin/fvm",
        "/usr/lib/debug/usr/bin/fvm.debug",
        "/usr/share/man/man1/fvm.1.gz",
        "/usr/share/man/man1/fvm-start.1.gz",
        "/usr/share/bash-completion/completions/fvm",
        "/usr/share/zsh/vendor-completions/_fvm",
        "/usr/share/fish/vendor_completions.d/fvm.fish",
        "/usr/share/doc/fvm/README.md",
        "/usr/share/doc/fvm/copyright",
        "/usr/share/doc/fvm/vm-lifecycle.md",
        "/usr/share/doc/fvm/security.md",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "{want} missing:\n{listing}"
        );
    }
    // The autostart unit, wherever the tree has it.
    assert_eq!(
        files
            .iter()
            .any(|f| f == "/usr/lib/systemd/system/fvm-autostart.service"),
        repo.join("dist/systemd/fvm-autostart.service").exists(),
        "{listing}"
    );

    let store_existed = Path::new(fvm_engine::store::DEFAULT_ROOT).exists();
    let _purge = Purge;
    let out = host(&["dpkg", "--install", &deb]);
    assert_eq!(out.code, 0, "dpkg --install:\n{out}");

    // The installed binary: stripped, its debug info beside it in /usr/lib/debug.
    let sections = host(&["readelf", "-S", "-W", "/usr/bin/fvm"]);
    assert!(!sections.stdout.contains(" .debug_line"), "{sections}");
    assert!(sections.stdout.contains(".gnu_debuglink"), "{sections}");
    let doctor = host(&["/usr/bin/fvm", "doctor"]);
    assert!(doctor.stdout.contains("kernel"), "{doctor}");
    let store = TestStore::new("package");
    let root = store.root.to_str().unwrap().to_owned();
    let fvm = |args: &[&str]| {
        let mut all = vec!["/usr/bin/fvm", "--root", &root];
        all.extend_from_slice(args);
        host(&all)
    };
    let out = fvm(&["create", "pkgvm"]);
    assert_eq!(out.code, 0, "{out}");
    let out = fvm(&["run", "pkgvm", "--", "sh", "-c", "echo from-$FVM_NAME"]);
    assert_eq!(out.stdout.trim(), "from-pkgvm", "{out}");
    let out = fvm(&["delete", "pkgvm"]);
    assert_eq!(out.code, 0, "{out}");

    let man = host(&["man", "-w", "fvm"]);
    assert_eq!(man.stdout.trim(), "/usr/share/man/man1/fvm.1.gz", "{man}");
    let man = host(&["man", "-w", "fvm-run"]);
    assert_eq!(man.code, 0, "{man}");

    let out = host(&["dpkg", "--purge", "fvm"]);
    assert_eq!(out.code, 0, "dpkg --purge:\n{out}");
    assert!(!installed());
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert!(!Path::new("/usr/share/doc/fvm").exists());
    if !store_existed {
        assert!(
            !Path::new(fvm_engine::store::DEFAULT_ROOT).exists(),
            "the package or its fvm made the default store"
        );
    }
    store.assert_clean();
}

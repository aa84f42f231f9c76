//! The browser tests of the console (tests/browser/ui.test.mjs): playwright-core
//! drives the system's chromium against a console served by this process. The
//! fake backend's suite always runs where node, npm and chromium are; the real
//! engine's suite also needs root and the fvm binary. Skipped visibly
//! (`SKIP (...)`, a failure under FVM_MUST_RUN=1) where something is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use fvm_engine::testing::skip;

mod common;
use common::serve;

const CHROMIUM: &str = "/usr/bin/chromium";

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The test's node project in the target directory: package.json, its lockfile
/// and the script, with `npm ci` run once per lockfile (node_modules never lands
/// in the source tree; nothing downloads a browser).
fn browser_dir(test: &str) -> Option<PathBuf> {
    if !on_path("node") || !on_path("npm") {
        skip(test, "needs node and npm");
        return None;
    }
    if !Path::new(CHROMIUM).is_file() {
        skip(test, "needs chromium (apt-get install chromium)");
        return None;
    }
    if !fvm_ui::has_assets() {
        skip(
            test,
            "needs the console's scripts (npm at build time, the default ui-assets feature)",
        );
        return None;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fvm-ui-browser");
    std::fs::create_dir_all(&dir).expect("the target directory is writable");
    for f in ["package.json", "package-lock.json", "ui.test.mjs"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy the browser test");
    }
    let lock = std::fs::read(src.join("package-lock.json")).expect("the lockfile");
    let stamp = dir.join("installed.lock");
    if !std::fs::read(&stamp).is_ok_and(|s| s == lock) || !dir.join("node_modules").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(&dir)
            .status()
            .expect("run npm");
        assert!(status.success(), "npm ci for the browser tests failed");
        std::fs::write(&stamp, lock).expect("write the stamp");
    }
    Some(dir)
}

fn node(dir: &Path, envs: &[(&str, String)]) {
    let out = Command::new("node")
        .arg("ui.test.mjs")
        .current_dir(dir)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser checks failed:\n{text}");
}

#[test]
fn browser_suite_on_the_fake_backend() {
    let Some(dir) = browser_dir("browser_suite_on_the_fake_backend") else {
        return;
    };
    let tmp = tempfile::Builder::new()
        .prefix("fvm-ui-fake-")
        .tempdir()
        .expect("a temp dir");
    let backend = Arc::new(fvm_ui::fake::FakeBackend::new(tmp.path()));
    let url = serve(backend, tmp.path().join("ui-audit.log"));
    // The same store again, in read-only mode.
    let ro_dir = tmp.path().join("read-only");
    std::fs::create_dir_all(&ro_dir).expect("a directory");
    let mut opts = common::options(ro_dir.join("ui-audit.log"));
    opts.read_only = true;
    let ro_url = common::serve_with(Arc::new(fvm_ui::fake::FakeBackend::new(&ro_dir)), opts);
    // The screenshots of docs/ui are retaken with FVM_UI_SCREENSHOTS=1 (they
    // differ a little on every run: times, graphs).
    let shots = if std::env::var_os("FVM_UI_SCREENSHOTS").is_some_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ui")
    } else {
        tmp.path().join("shots")
    };
    std::fs::create_dir_all(&shots).expect("a screenshot directory");
    node(
        &dir,
        &[
            ("URL", url),
            ("MODE", "fake".to_owned()),
            ("RO_URL", ro_url),
            ("FAKE_DIR", tmp.path().display().to_string()),
            ("SHOTS", shots.display().to_string()),
        ],
    );
    let audit = std::fs::read_to_string(tmp.path().join("ui-audit.log")).expect("an audit log");
    assert!(
        audit.contains("fvm commit --force web1 -- /etc/hosts"),
        "{audit}"
    );
    assert!(!audit.contains("evil"), "{audit}");
    assert!(
        audit.contains("fvm discard db -- /etc/db.conf /var/lib/db/data"),
        "{audit}"
    );
    let ro_audit = std::fs::read_to_string(ro_dir.join("ui-audit.log")).unwrap_or_default();
    assert!(!ro_audit.contains("discard"), "{ro_audit}");
}

/// Removes the test's VM and store however the test ends.
struct RealStore {
    fvm: PathBuf,
    root: tempfile::TempDir,
    vm: String,
}

impl RealStore {
    fn fvm(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.fvm)
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .output()
            .expect("run fvm")
    }
}

impl Drop for RealStore {
    fn drop(&mut self) {
        let _ = self.fvm(&["delete", "--force", &self.vm]);
        let _ = self.fvm(&["doctor", "--cleanup"]);
    }
}

#[test]
fn browser_suite_on_the_real_engine() {
    let test = "browser_suite_on_the_real_engine";
    if !fvm_engine::testing::require_root(test) {
        return;
    }
    let Some(fvm) = common::fvm_binary() else {
        skip(test, "needs the fvm binary (cargo build -p fvm)");
        return;
    };
    let Some(dir) = browser_dir(test) else {
        return;
    };
    let store = RealStore {
        fvm,
        root: tempfile::Builder::new()
            .prefix("fvm-ui-store-")
            .tempdir_in("/tmp")
            .expect("a store directory"),
        vm: format!("fvm-ui-{}", std::process::id()),
    };
    let out = store.fvm(&["create", &store.vm]);
    assert!(
        out.status.success(),
        "create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A service whose output is hostile: HTML, and an ANSI escape.
    let out = store.fvm(&[
        "config",
        &store.vm,
        "--service",
        r"hello=echo '<img src=x onerror=alert(1)>' $(printf '[31mred[0m'); exec sleep 1000",
        "--service",
        "hello.restart=always",
    ]);
    assert!(
        out.status.success(),
        "config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = store.fvm(&["start", &store.vm]);
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The host directory the commit writes into: the test's own.
    let host = tempfile::Builder::new()
        .prefix("fvm-ui-commit-")
        .tempdir_in("/tmp")
        .expect("a host directory");
    let host_file = host.path().join("from-the-vm.txt");
    // Two files the VM writes and the console then discards.
    let discarded = ["discard-a.txt", "discard-b.txt"].map(|f| host.path().join(f));
    let backend = fvm_ui::real::RealBackend::open(store.root.path(), store.fvm.clone())
        .expect("open the store");
    let url = serve(Arc::new(backend), store.root.path().join("ui-audit.log"));
    node(
        &dir,
        &[
            ("URL", url),
            ("MODE", "real".to_owned()),
            ("VM", store.vm.clone()),
            ("HOST_FILE", host_file.display().to_string()),
            ("DISCARD_A", discarded[0].display().to_string()),
            ("DISCARD_B", discarded[1].display().to_string()),
        ],
    );
    // The VM's layer no longer has the discarded files, and the host never got them.
    let out = store.fvm(&["--json", "diff", &store.vm]);
    assert!(
        out.status.success(),
        "diff: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diff = String::from_utf8_lossy(&out.stdout);
    for f in &discarded {
        assert!(
            !diff.contains(&*f.to_string_lossy()),
            "{} is still a change: {diff}",
            f.display()
        );
        assert!(!f.exists(), "{} reached the host", f.display());
    }
    assert_eq!(
        std::fs::read_to_string(&host_file).expect("committed"),
        "committed-by-ui\n"
    );
    // What the sampler reads each second: the running VM, and nothing once it
    // is stopped.
    use fvm_ui::backend::Backend;
    let reader = fvm_ui::real::RealBackend::open(store.root.path(), store.fvm.clone())
        .expect("open the store");
    let sampled = || -> Vec<String> { reader.samples().into_iter().map(|(n, _)| n).collect() };
    assert_eq!(sampled(), std::slice::from_ref(&store.vm));
    let out = store.fvm(&["stop", &store.vm]);
    assert!(
        out.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sampled().is_empty(), "{:?}", sampled());
    let audit = std::fs::read_to_string(store.root.path().join("ui-audit.log")).expect("audit");
    assert!(audit.contains(&format!("fvm stop {}", store.vm)), "{audit}");
    assert!(
        audit.contains(&format!(
            "fvm discard {} -- {} {}",
            store.vm,
            discarded[0].display(),
            discarded[1].display()
        )),
        "{audit}"
    );
}

//! With the `ui-assets` feature (the default): install the pinned third-party
//! scripts of the web console (web/package-lock.json) with `npm ci
//! --ignore-scripts` into OUT_DIR, and list the files to embed in `assets.rs`.
//! Without the feature, or where there is no npm to run (a warning says so), the
//! list is empty and `fvm ui` says how to build them in. An npm that runs and
//! fails stops the build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (URL path, file under node_modules, content type)
const VENDOR: &[(&str, &str, &str)] = &[
    (
        "htmx.min.js",
        "htmx.org/dist/htmx.min.js",
        "text/javascript",
    ),
    ("xterm.mjs", "@xterm/xterm/lib/xterm.mjs", "text/javascript"),
    ("xterm.css", "@xterm/xterm/css/xterm.css", "text/css"),
    (
        "addon-fit.mjs",
        "@xterm/addon-fit/lib/addon-fit.mjs",
        "text/javascript",
    ),
    ("uPlot.esm.js", "uplot/dist/uPlot.esm.js", "text/javascript"),
    ("uPlot.min.css", "uplot/dist/uPlot.min.css", "text/css"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed=web/package.json");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    let mut list = String::from("&[\n");
    if std::env::var_os("CARGO_FEATURE_UI_ASSETS").is_some() && npm_runs() {
        let dir = out.join("web");
        install(&manifest.join("web"), &dir);
        for (name, file, kind) in VENDOR {
            let path = dir.join("node_modules").join(file);
            assert!(path.is_file(), "npm ci did not install {}", path.display());
            list.push_str(&format!(
                "    ({name:?}, {kind:?}, include_bytes!({:?}) as &[u8]),\n",
                path.display().to_string()
            ));
        }
    }
    list.push(']');
    std::fs::write(out.join("vendor.rs"), list).expect("OUT_DIR is writable");
}

/// Whether there is an npm to run; if not, the build goes on without the scripts.
fn npm_runs() -> bool {
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".to_owned());
    println!("cargo:rerun-if-env-changed=NPM");
    println!("cargo:rerun-if-env-changed=PATH");
    let found = Command::new(&npm)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!(
            "cargo:warning=no npm ({npm}): building fvm ui without its scripts (install npm and rebuild to get them)"
        );
    }
    found
}

/// `npm ci` in a copy of web/ (package.json and its lockfile) under OUT_DIR, once
/// per lockfile: node_modules never lands in the source tree.
fn install(web: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("OUT_DIR is writable");
    let lock = std::fs::read(web.join("package-lock.json")).expect("web/package-lock.json");
    let stamp = dir.join("installed.lock");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) && dir.join("node_modules").is_dir() {
        return;
    }
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(web.join(f), dir.join(f)).expect("copy web/ into OUT_DIR");
    }
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".to_owned());
    let status = Command::new(&npm)
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| {
            panic!("the ui-assets feature needs npm ({npm}: {e}); build without it, or install npm")
        });
    assert!(
        status.success(),
        "npm ci in {} failed: {status}",
        dir.display()
    );
    std::fs::write(&stamp, lock).expect("OUT_DIR is writable");
}

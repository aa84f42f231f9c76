//! The engine's layers, checked: each top-level module of `crates/engine/src`
//! may name (`crate::x`) only modules of lower layers, so there are no import
//! cycles and the picture in docs/architecture.md stays true. Run it alone with
//! `cargo test -p fvm-engine --test architecture`; a failure lists every import
//! that breaks the order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top; a module may import modules of lower layers only. Keep in
/// step with docs/architecture.md.
const LAYERS: &[&[&str]] = &[
    // The OS: raw system calls, fds and paths, process identity, error text.
    &["os"],
    // Values and leaf mechanisms, each on its own.
    &["limits", "confine", "layers"],
    // (net holds the resolver's protocol and loop, net::dns; vm::dns runs it.)
    &["cgroup", "net"],
    // The store's files, and assembling a VM's filesystem.
    &["store", "mounts"],
    // A VM's logs: written by its init, read by `fvm logs`.
    &["logs"],
    // A VM's processes; a VM's changes.
    &["runtime", "changes"],
    // Host changes into running VMs (the store's watcher).
    &["watch"],
    // The operations, and the host check.
    &["vm"],
    // The host check; fvm as an OCI runtime (a container is a VM).
    &["doctor", "oci"],
];

/// Modules only tests use.
const TEST_ONLY: &[&str] = &["testing"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

/// Every `crate::name` a file's code (not its comments) uses, with a line number.
fn imports(file: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(file).expect("read a source file");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((name, i + 1));
            }
            rest = after;
        }
        // `use crate::{a, b::c}` names several.
        if let Some(at) = code.find("crate::{") {
            let list = &code[at + "crate::{".len()..];
            for part in list.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push((name, i + 1));
                }
            }
        }
    }
    out
}

#[test]
fn modules_import_only_lower_layers() {
    let layer: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, mods)| mods.iter().map(move |m| (*m, i)))
        .collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let from = module_of(file);
        if from == "lib" || TEST_ONLY.contains(&from.as_str()) {
            continue;
        }
        let Some(&from_layer) = layer.get(from.as_str()) else {
            unknown.insert(from.clone());
            continue;
        };
        for (to, line) in imports(file) {
            if to == from || TEST_ONLY.contains(&to.as_str()) {
                continue;
            }
            match layer.get(to.as_str()) {
                Some(&to_layer) if to_layer < from_layer => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: {from} imports {to}",
                    file.strip_prefix(src()).unwrap().display()
                )),
                // Not a module: an item of lib.rs (a re-export).
                None => {}
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from the layer table (add them to LAYERS and docs/architecture.md): {unknown:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} imports break the layers (a module may import only lower layers):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

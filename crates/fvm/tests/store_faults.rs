//! A store that was tampered with or damaged, and commands that lose a race or
//! die half-way: fvm refuses what it can't trust with one line, finishes or
//! undoes what was cut short, and never reports a done job as a failure.

mod common;

use std::path::Path;

use common::{TestStore, needs_root};

/// A VM's layer directory replaced by a symlink (to a decoy directory) is
/// refused at start with one line, and nothing is written through it.
#[test]
fn start_refuses_a_symlinked_layer_directory() {
    if !needs_root("start_refuses_a_symlinked_layer_directory") {
        return;
    }
    let store = TestStore::new("symlayer");
    store.create("sl");
    store.fvm(&["run", "sl", "--", "true"]).ok();
    let decoy = tempfile::tempdir().unwrap();
    let layers = store.root.join("vms/sl/layers");
    let root_layer = layers.join("-");
    assert!(
        root_layer.join("upper").is_dir(),
        "no root layer at {root_layer:?}"
    );
    for (what, victim) in [
        ("upper", root_layer.join("upper")),
        ("layer", root_layer.clone()),
    ] {
        let aside = victim.with_extension("aside");
        std::fs::rename(&victim, &aside).unwrap();
        std::os::unix::fs::symlink(decoy.path(), &victim).unwrap();
        if what == "upper" {
            std::fs::create_dir_all(decoy.path().join("etc")).unwrap();
        }
        for args in [
            &["run", "sl", "--", "touch", "/etc/fvm-written-through"][..],
            &["start", "sl"][..],
        ] {
            let out = store.fvm(args);
            assert_eq!(out.code, 125, "{what}: `{}`:\n{out}", args.join(" "));
            assert_eq!(out.stderr.lines().count(), 1, "{what}:\n{out}");
            assert!(out.stderr.contains("symlink"), "{what}:\n{out}");
            assert_eq!(store.status("sl"), "stopped", "{what}");
        }
        assert!(
            !decoy.path().join("etc/fvm-written-through").exists()
                && !decoy.path().join("mount-point").exists(),
            "{what}: fvm wrote through the symlink into {:?}",
            decoy.path()
        );
        std::fs::remove_file(&victim).unwrap();
        std::fs::rename(&aside, &victim).unwrap();
    }
    store.fvm(&["run", "sl", "--", "true"]).ok();
    assert!(!Path::new(&decoy.path().join("upper")).exists());
    store.assert_clean();
}

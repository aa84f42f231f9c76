//! The store on temp dirs: create, delete, sweep, `--dir`s and atomic creation.

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    (d, s)
}

fn name(n: &str) -> VmName {
    VmName::new(n).unwrap()
}

#[test]
fn missing_root_is_an_error() {
    let e = Store::open(Path::new("/nonexistent/fvm-store")).unwrap_err();
    assert_eq!(e.to_string(), "store /nonexistent/fvm-store does not exist");
}

#[test]
fn create_list_delete() {
    let (_d, s) = store();
    assert!(s.names().unwrap().is_empty());
    let vm = s.create_vm(&Policy::new(name("b"), None)).unwrap();
    s.create_vm(&Policy::new(name("a"), None)).unwrap();
    assert_eq!(s.names().unwrap(), vec![name("a"), name("b")]);
    assert_eq!(vm.load_policy().unwrap().name, name("b"));
    let e = s.create_vm(&Policy::new(name("a"), None)).unwrap_err();
    assert_eq!(e.to_string(), "vm \"a\" already exists");
    s.delete_vm(&vm).unwrap();
    assert_eq!(s.names().unwrap(), vec![name("a")]);
    assert!(matches!(s.vm(&name("b")), Err(StoreError::NoSuchVm { .. })));
    assert!(s.sweep().unwrap().is_empty());
}

#[test]
fn external_dir_is_claimed_hidden_and_released() {
    let (_d, s) = store();
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("web1");
    let vm = s
        .create_vm(&Policy::new(name("web1"), Some(dir.clone())))
        .unwrap();
    assert!(dir.is_dir());
    assert!(s.private_paths().contains(&dir));
    std::fs::write(dir.join("f"), "x").unwrap();
    // A second VM can't adopt a non-empty directory.
    let e = s
        .create_vm(&Policy::new(name("web2"), Some(dir.clone())))
        .unwrap_err();
    assert!(matches!(e, StoreError::DirInUse { .. }), "{e}");
    // Symlinks a VM planted in its layers are removed, not followed.
    let precious = outside.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("data"), "keep me").unwrap();
    std::fs::create_dir_all(dir.join("-/upper")).unwrap();
    std::os::unix::fs::symlink(&precious, dir.join("-/upper/to-dir")).unwrap();
    std::os::unix::fs::symlink(precious.join("data"), dir.join("-/upper/to-file")).unwrap();
    let trash = s.trash_vm(&vm).unwrap();
    // Out of the store at once; the dir stays hidden in VMs until it is gone.
    assert!(s.names().unwrap().is_empty());
    assert!(dir.join("-/upper").exists());
    assert!(s.private_paths().contains(&dir));
    s.empty_trash(&trash).unwrap();
    assert!(!trash.exists());
    assert!(!dir.exists());
    assert!(!s.private_paths().contains(&dir));
    assert_eq!(
        std::fs::read_to_string(precious.join("data")).unwrap(),
        "keep me"
    );
}

#[test]
fn an_interrupted_delete_releases_the_vms_dir_too() {
    let (_d, s) = store();
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("web1");
    let vm = s
        .create_vm(&Policy::new(name("web1"), Some(dir.clone())))
        .unwrap();
    std::fs::create_dir_all(dir.join("layers/a/b")).unwrap();
    // Killed after the rename into the trash, half-way through the dir (whose
    // owner mark goes last).
    std::fs::rename(vm.path(), s.vms().join(".trash-web1-4242")).unwrap();
    std::fs::remove_dir(dir.join("layers/a/b")).unwrap();
    assert!(s.private_paths().contains(&dir));
    assert_eq!(s.finish_deletes().unwrap().len(), 1);
    assert!(!dir.exists());
    assert!(!s.private_paths().contains(&dir));
    // The owner mark still decides: a trash naming someone else's dir leaves it.
    let precious = outside.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    let vm = s.create_vm(&Policy::new(name("a"), None)).unwrap();
    let mut p = vm.load_policy().unwrap();
    p.dir = Some(precious.clone());
    vm.save_policy(&p).unwrap();
    std::fs::rename(vm.path(), s.vms().join(".trash-a-1")).unwrap();
    assert_eq!(s.finish_deletes().unwrap().len(), 1);
    assert!(precious.is_dir());
}

#[test]
fn a_dir_without_the_owner_mark_is_never_deleted() {
    let (_d, s) = store();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("data"), "keep me").unwrap();
    let vm = s.create_vm(&Policy::new(name("a"), None)).unwrap();
    // As if vm.toml had been edited to point `dir` at someone's data.
    let mut p = vm.load_policy().unwrap();
    p.dir = Some(precious.clone());
    vm.save_policy(&p).unwrap();
    s.delete_vm(&vm).unwrap();
    assert_eq!(
        std::fs::read_to_string(precious.join("data")).unwrap(),
        "keep me"
    );
    assert!(s.names().unwrap().is_empty());
}

#[test]
fn sweep_removes_leftovers_of_crashed_operations() {
    let (_d, s) = store();
    std::fs::create_dir_all(s.vms().join(".new-x-1/layers")).unwrap();
    std::fs::create_dir_all(s.vms().join(".trash-y-2")).unwrap();
    assert_eq!(s.sweep().unwrap().len(), 2);
    assert!(s.names().unwrap().is_empty());
}

#[test]
fn an_interrupted_delete_or_create_is_finished_unless_one_is_under_way() {
    let (_d, s) = store();
    std::fs::create_dir_all(s.vms().join(".trash-y-2/layers/a")).unwrap();
    std::fs::create_dir_all(s.vms().join(".new-x-1/layers")).unwrap();
    // A create (or copy) still at work holds its directory's lock.
    std::fs::create_dir_all(s.vms().join(".new-z-3")).unwrap();
    let working = crate::os::files::Lock::exclusive(&s.vms().join(".new-z-3/lock")).unwrap();
    let held = s.lock().unwrap();
    assert!(s.finish_deletes().unwrap().is_empty());
    drop(held);
    let mut done = s.finish_deletes().unwrap();
    done.sort();
    assert_eq!(done, [s.vms().join(".new-x-1"), s.vms().join(".trash-y-2")]);
    assert!(s.vms().join(".new-z-3").exists());
    drop(working);
}

#[test]
fn a_vm_filled_before_it_appears_is_all_or_nothing() {
    let (_d, s) = store();
    let vm = s
        .create_vm_with(&Policy::new(name("full"), None), |tmp| {
            // Not visible while it is being filled, and safe from a sweep.
            assert!(s.names().unwrap().is_empty());
            assert!(s.vm(&name("full")).is_err());
            assert!(s.sweep().unwrap().is_empty());
            std::fs::create_dir(tmp.join("layers"))?;
            std::fs::write(tmp.join("layers/data"), "copied")
        })
        .unwrap();
    assert_eq!(s.names().unwrap(), vec![name("full")]);
    assert_eq!(
        std::fs::read_to_string(vm.path().join("layers/data")).unwrap(),
        "copied"
    );
    assert!(
        vm.try_lock().unwrap().is_some(),
        "the vm's lock is released"
    );

    let e = s
        .create_vm_with(&Policy::new(name("half"), None), |tmp| {
            std::fs::write(tmp.join("part"), "x")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
    assert!(matches!(e, StoreError::Create { .. }), "{e}");
    let left: Vec<_> = std::fs::read_dir(s.vms())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["full"]);

    let e = s
        .create_vm_with(&Policy::new(name("full"), None), |_| {
            panic!("an existing name is refused before the fill")
        })
        .unwrap_err();
    assert!(matches!(e, StoreError::Exists { .. }), "{e}");
}

#[test]
fn store_ids_differ_by_path() {
    assert_ne!(store_id(Path::new("/a")), store_id(Path::new("/b")));
    assert_eq!(store_id(Path::new("/a")).len(), 8);
}

#[test]
fn a_dir_is_in_the_index_before_its_vm_appears_and_the_vm_is_marked_pending() {
    let (_d, s) = store();
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("x");
    let vm = s
        .create_vm_with(&Policy::new(name("x"), Some(dir.clone())), |tmp| {
            assert!(s.private_paths().contains(&dir));
            assert!(tmp.join(HIDE_PENDING).is_file());
            Ok(())
        })
        .unwrap();
    assert!(vm.hide_pending_path().is_file());
    assert!(s.owns_dir(&dir, &name("x")));
    assert!(!s.owns_dir(&dir, &name("y")));

    // A create that fails after claiming its dir gives both back.
    let other = outside.path().join("y");
    s.create_vm_with(&Policy::new(name("y"), Some(other.clone())), |_| {
        Err(io::Error::other("disk full"))
    })
    .unwrap_err();
    assert!(!other.exists());
    assert!(!s.private_paths().contains(&other));
}

#[test]
fn sweep_releases_the_dir_of_a_create_that_died_before_its_vm_appeared() {
    let (_d, s) = store();
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("x");
    // What a create killed between claiming its dir and the rename leaves.
    let tmp = s.vms().join(".new-my-vm-123-0");
    std::fs::create_dir_all(&tmp).unwrap();
    let policy = Policy::new(name("my-vm"), Some(dir.clone()));
    std::fs::write(tmp.join("vm.toml"), policy.to_toml()).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(OWNER_MARK), s.owner_mark(&name("my-vm"))).unwrap();
    s.set_dirs(|d| d.push(dir.clone())).unwrap();
    // Someone else's directory named by a leftover is not touched.
    let precious = outside.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    let tmp2 = s.vms().join(".new-b-9-0");
    std::fs::create_dir_all(&tmp2).unwrap();
    let planted = Policy::new(name("b"), Some(precious.clone()));
    std::fs::write(tmp2.join("vm.toml"), planted.to_toml()).unwrap();

    assert_eq!(s.sweep().unwrap().len(), 2);
    assert!(!dir.exists());
    assert!(!s.private_paths().contains(&dir));
    assert!(precious.is_dir());
}

#[test]
fn a_dir_is_renewed_only_while_it_holds_nothing_but_its_owner_mark() {
    use std::os::unix::fs::MetadataExt;
    let (_d, s) = store();
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("x");
    s.create_vm(&Policy::new(name("x"), Some(dir.clone())))
        .unwrap();
    // As a VM's process that opened it before it was covered would hold it.
    let held = std::fs::File::open(&dir).unwrap();
    s.renew_dir(&dir, &name("x")).unwrap();
    let old = held.metadata().unwrap();
    assert_eq!(old.nlink(), 0, "the old directory is removed");
    assert_ne!(std::fs::metadata(&dir).unwrap().ino(), old.ino());
    assert!(s.owns_dir(&dir, &name("x")));
    // Nothing is left beside it.
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    // Not another VM's, and never once it holds layers.
    assert!(s.renew_dir(&dir, &name("y")).is_err());
    std::fs::create_dir(dir.join("-")).unwrap();
    let e = s.renew_dir(&dir, &name("x")).unwrap_err();
    assert!(matches!(e, StoreError::DirInUse { .. }), "{e}");
    assert!(dir.join("-").is_dir());
}

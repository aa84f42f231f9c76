//! `diff` (and later `commit`): a VM's changes, for the CLI.

use std::path::{Component, PathBuf};

use super::{Engine, VmError};
use crate::changes::diff::{self, Change, Filter};
use crate::changes::layer;
use crate::store::VmName;

impl Engine {
    /// What VM `name` changed under `paths` (all if empty), sorted by path. A
    /// running VM can be diffed; its layers are read as they are.
    pub fn diff(&self, name: &VmName, paths: &[PathBuf]) -> Result<Vec<Change>, VmError> {
        let vm = self.vm(name)?;
        let policy = self.policy(&vm)?;
        let filter = Filter::new(vm_paths(paths)?);
        let layers =
            layer::layers(&vm.layers_path(&policy)).map_err(|source| VmError::Changes {
                name: name.to_string(),
                source: source.into(),
            })?;
        diff::diff(&layers, &filter).map_err(|source| VmError::Changes {
            name: name.to_string(),
            source: source.into(),
        })
    }
}

/// Paths as the VM sees them: absolute (a relative one is taken from `/`), without
/// `.`/`..` or a trailing slash.
pub fn vm_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VmError> {
    paths
        .iter()
        .map(|p| {
            let mut clean = PathBuf::from("/");
            for c in p.components() {
                match c {
                    Component::Normal(n) => clean.push(n),
                    Component::RootDir | Component::CurDir => {}
                    Component::ParentDir | Component::Prefix(_) => {
                        return Err(VmError::BadPath { path: p.clone() });
                    }
                }
            }
            Ok(clean)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn paths_are_made_absolute_and_clean() {
        let got = vm_paths(&["etc/".into(), "/usr/./bin".into()]).unwrap();
        assert_eq!(got, [Path::new("/etc"), Path::new("/usr/bin")]);
        assert!(vm_paths(&["/etc/../root".into()]).is_err());
    }
}

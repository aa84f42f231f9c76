//! The commit plan: which host paths change and how, decided before anything is
//! written, and printed as it is by `--dry-run`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, StatxFlags};
use serde::{Deserialize, Serialize};

use crate::changes::record::{Committed, Deleted};
use crate::changes::scan::{Filter, Item, Kind, VmEntry};
use crate::changes::tree::Tree;
use crate::layers::Layer;

/// What happens to one host path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Make it a directory (kept, created, or replacing something else) with the
    /// VM's owner, mode, xattrs and times.
    Dir,
    /// The VM's file, symlink, fifo or socket: written beside it, then renamed over.
    Put,
    /// A hard link to the file of step `of` (the VM made both names one file).
    Link { of: usize },
    /// Deleted (with everything below it).
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub layer: usize,
    /// Relative to the layer's mount point (and its upper directory).
    pub rel: PathBuf,
    /// The full path, for people.
    pub path: PathBuf,
    pub action: Action,
    /// The layer has an entry for it (a whiteout, or what the VM made), to be
    /// removed from the layer once the host has it.
    pub in_layer: bool,
    /// The host had something at this path when the plan was made.
    pub host_had: bool,
    /// A directory the VM changed nothing of but what is in it: its step only
    /// gives the host's directory the VM's times after its entries landed. Not
    /// a change to report.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same: bool,
}

/// A host path that changed after the VM took its copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub path: PathBuf,
    pub host_changed: i64,
    pub vm_copied: i64,
    /// The host deleted it (after the VM had copied it up).
    pub deleted_on_host: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub conflicts: Vec<Conflict>,
    /// Changes left out, with why (device nodes).
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Choose the steps for the items `filter` selects, and for what must go with
/// them: a directory the VM replaced as a whole commits as a whole, new
/// directories above a path come too, and all names of a file the VM hard-linked
/// go together (committing one name drops it from the layer, which would split
/// it from the others in the VM).
pub fn plan(items: &[Item], layers: &[Layer], filter: &Filter) -> Plan {
    let by_path: HashMap<&Path, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.path.as_path(), i))
        .collect();
    let mut by_unit: HashMap<&Path, Vec<usize>> = HashMap::new();
    let mut by_inode: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        if let Some(u) = &it.unit {
            by_unit.entry(u.as_path()).or_default().push(i);
        }
        if let (VmEntry::File, Some(st)) = (it.vm, it.upper)
            && st.st_nlink > 1
        {
            by_inode.entry((st.st_dev, st.st_ino)).or_default().push(i);
        }
    }
    // Each item is queued once, and each replaced directory's and each inode's
    // group is added once: a layer of many thousands of entries (or levels)
    // plans in one pass over them, not one per entry.
    let mut chosen = vec![false; items.len()];
    let mut todo: Vec<usize> = Vec::new();
    let queue = |j: usize, chosen: &mut [bool], todo: &mut Vec<usize>| {
        if !std::mem::replace(&mut chosen[j], true) {
            todo.push(j);
        }
    };
    for (i, it) in items.iter().enumerate() {
        if filter.selects(&it.path) || it.unit.as_deref().is_some_and(|u| filter.reaches(u)) {
            queue(i, &mut chosen, &mut todo);
        }
    }
    let mut units_added: HashSet<&Path> = HashSet::new();
    let mut inodes_added: HashSet<(u64, u64)> = HashSet::new();
    let mut more: Vec<usize> = Vec::new();
    while let Some(i) = todo.pop() {
        let it = &items[i];
        more.extend(structure(items, layers, &by_path, &chosen, i));
        if let Some(u) = &it.unit
            && units_added.insert(u.as_path())
        {
            more.extend(&by_unit[u.as_path()]);
            more.extend(by_path.get(u.as_path()));
        }
        if let (VmEntry::File, Some(st)) = (it.vm, it.upper)
            && let Some(names) = by_inode.get(&(st.st_dev, st.st_ino))
            && inodes_added.insert((st.st_dev, st.st_ino))
        {
            more.extend(names);
        }
        for j in more.drain(..) {
            queue(j, &mut chosen, &mut todo);
        }
    }
    let mut plan = Plan::default();
    let mut first_of_inode: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for (it, _) in items.iter().zip(&chosen).filter(|(_, c)| **c) {
        let action = match it.vm {
            VmEntry::Whiteout | VmEntry::Hidden => Action::Remove,
            VmEntry::Dir { .. } => Action::Dir,
            VmEntry::File => match it.upper {
                Some(st) if st.st_nlink > 1 => {
                    let key = (st.st_dev, st.st_ino);
                    match first_of_inode.get(&key) {
                        Some(&of) => Action::Link { of },
                        None => {
                            first_of_inode.insert(key, plan.steps.len());
                            Action::Put
                        }
                    }
                }
                _ => Action::Put,
            },
            VmEntry::Symlink | VmEntry::Fifo | VmEntry::Socket => Action::Put,
            VmEntry::Device => {
                plan.skipped.push((
                    it.path.clone(),
                    "device nodes are not committed to the host",
                ));
                continue;
            }
        };
        plan.steps.push(Step {
            layer: it.layer,
            rel: it.rel.clone(),
            path: it.path.clone(),
            action,
            in_layer: it.vm != VmEntry::Hidden,
            host_had: it.host.is_some(),
            same: it.same,
        });
    }
    plan
}

/// The directories the host lacks (or has as something else) above item `i`, up
/// to the first one queued already (it brings those above it): a VM's tree
/// thousands of levels deep costs one step up per entry, not one per level.
fn structure<'a>(
    items: &'a [Item],
    layers: &[Layer],
    by_path: &'a HashMap<&Path, usize>,
    queued: &'a [bool],
    i: usize,
) -> impl Iterator<Item = usize> + 'a {
    let it = &items[i];
    let mount = layers[it.layer].mount_point.clone();
    it.path
        .ancestors()
        .skip(1)
        .take_while(move |a| a.starts_with(&mount) && *a != mount)
        .filter_map(|a| by_path.get(a).copied())
        .take_while(|&j| !queued[j])
        .filter(|&j| needs_structure(&items[j]))
}

/// A directory whose children can't land on the host without it.
fn needs_structure(it: &Item) -> bool {
    matches!(it.vm, VmEntry::Dir { .. })
        && (it.kind == Kind::Added
            || it
                .host
                .is_some_and(|h| FileType::from_raw_mode(h.st_mode) != FileType::Directory))
}

/// Host paths among `steps` that changed after the VM took its copy: host ctime
/// newer than the birth of the layer's entry (its ctime where the filesystem has
/// no birth times). Directories merged with the host's are not compared (their
/// ctime moves whenever anything in them changes); a replaced one is.
pub fn conflicts(
    items: &[Item],
    plan: &Plan,
    layers: &[Layer],
    uppers: &mut [Tree],
    committed: &Committed,
    deleted: &Deleted,
) -> std::io::Result<Vec<Conflict>> {
    let by_path: HashMap<&Path, &Item> = items.iter().map(|it| (it.path.as_path(), it)).collect();
    let mut out = Vec::new();
    for s in &plan.steps {
        let it = by_path[s.path.as_path()];
        let Some(host) = it.host else {
            // The host has nothing there. If the layer's entry is a copy-up of a host
            // file (overlayfs records its origin) that is gone from the host, the host
            // deleted it after the VM copied it. (A copy-up the VM renamed or linked
            // elsewhere names a host file that still exists.)
            if it.kind == Kind::Added
                && it.vm != VmEntry::Hidden
                && origin_gone(
                    &mut uppers[s.layer],
                    &it.rel,
                    &layers[s.layer].mount_point,
                    deleted,
                )?
            {
                out.push(Conflict {
                    path: s.path.clone(),
                    host_changed: 0,
                    vm_copied: 0,
                    deleted_on_host: true,
                });
            }
            continue;
        };
        let base = match it.vm {
            VmEntry::Dir { opaque: true } => Some(&it.rel),
            VmEntry::Dir { opaque: false } => None,
            VmEntry::Hidden => it
                .unit
                .as_ref()
                .and_then(|u| by_path.get(u.as_path()))
                .map(|u| &u.rel),
            _ => Some(&it.rel),
        };
        let Some(base) = base else { continue };
        let mut vm_copied = birth(&mut uppers[s.layer], base)?;
        // The host's version may be one an earlier commit of this entry wrote.
        if let Some(st) = uppers[s.layer].lstat(base)?
            && let Some(at) = committed.committed_at(&layers[s.layer].dir, base, st.st_ino)
        {
            vm_copied = vm_copied.max(at);
        }
        let host_changed = host.st_ctime;
        let host_ns = (host.st_ctime, host.st_ctime_nsec as i64);
        if host_ns > vm_copied {
            out.push(Conflict {
                path: s.path.clone(),
                host_changed,
                vm_copied: vm_copied.0,
                deleted_on_host: false,
            });
        }
    }
    Ok(out)
}

/// Whether the layer's entry is a copy-up (overlayfs recorded the host file it
/// came from) of a host file that no longer exists.
fn origin_gone(
    upper: &mut Tree,
    rel: &Path,
    mount: &Path,
    deleted: &Deleted,
) -> std::io::Result<bool> {
    let (dir, name) = upper.parent(rel)?;
    let path = crate::changes::data::at_path(std::os::fd::AsFd::as_fd(dir), &name);
    let mut buf = [0u8; 256];
    let n = match rustix::fs::lgetxattr(&path, c"trusted.overlay.origin", &mut buf) {
        Ok(n) => n,
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::OPNOTSUPP) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    // struct ovl_fb: version 0, magic 0xfb, length, flags, fid type, 16-byte uuid,
    // then the fid (the file handle's bytes).
    let fb = &buf[..n];
    if fb.len() < 21 || fb[0] != 0 || fb[1] != 0xfb || usize::from(fb[2]) != fb.len() {
        return Ok(false);
    }
    let (kind, fid) = (i32::from(fb[4]), fb[21..].to_vec());
    // A host file the VM's own committed deletion removed is no host change.
    if deleted.contains(&(kind, fid.clone())) {
        return Ok(false);
    }
    let host = std::fs::File::open(mount)?;
    let exists = crate::os::sys::handle_exists(
        std::os::fd::AsFd::as_fd(&host),
        i32::from(fb[4]),
        &fb[21..],
    )?;
    Ok(!exists)
}

/// When the layer's entry was made: birth time, or ctime without birth times.
fn birth(upper: &mut Tree, rel: &Path) -> std::io::Result<(i64, i64)> {
    let (dir, name) = upper.parent(rel)?;
    let sx = rustix::fs::statx(
        dir,
        &name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BTIME | StatxFlags::CTIME,
    )?;
    let t = if sx.stx_mask & StatxFlags::BTIME.bits() != 0 {
        sx.stx_btime
    } else {
        sx.stx_ctime
    };
    Ok((t.tv_sec, i64::from(t.tv_nsec)))
}

impl Step {
    /// The line `--dry-run` prints for this step.
    pub fn describe(&self, steps: &[Step]) -> String {
        let what = match (self.action, self.host_had) {
            (Action::Dir, true) => "update dir",
            (Action::Dir, false) => "create dir",
            (Action::Put, true) => "replace",
            (Action::Put, false) => "create",
            (Action::Link { .. }, _) => "link",
            (Action::Remove, _) => "delete",
        };
        let mut line = format!("{what:<11}{}", crate::os::quote::path(&self.path));
        if let Action::Link { of } = self.action {
            line.push_str(&format!(
                " (hard link to {})",
                crate::os::quote::path(&steps[of].path)
            ));
        }
        line
    }
}

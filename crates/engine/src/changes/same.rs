//! Whether a VM's upper entry is only a copy-up of the host's: the same content,
//! mode, owner, mtime and xattrs (a `chmod` to the same mode, a program that
//! rewrites a file with what it had, `apt` fetching the same lists again), or for
//! a directory, the same mode, owner and xattrs (it is in the layer only because
//! something in it changed). `diff` hides these by default, and `commit` leaves
//! them out: they change nothing on the host.
//!
//! Cheap first: the stats decide most entries, and content is read only when
//! type, size, mode, owner and mtime all match, both sides from fds opened
//! without following symlinks and checked to be regular files, in fixed-size
//! chunks (a huge file costs time, never memory). The VM's side is hostile: a
//! file that changes while it is read compares as whatever was read, which only
//! decides what is shown; a commit freezes a running VM before it scans.
//!
//! Reading is what costs (about ten system calls a file: two opens, their
//! checks, two xattr lists, two reads, two closes), so the files whose stats
//! match are compared by a few threads ([`Comparer`]) while the walk goes on.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use rustix::fs::{FileType, Stat};

use super::data;

/// Bytes compared at a time.
const CHUNK: usize = 64 << 10;

/// The same type, mode, owner, size and mtime (the stat part of a file's
/// sameness; a directory's mtime and size follow its entries, so they don't
/// count).
pub fn stats_match(vm: &Stat, host: &Stat) -> bool {
    let dir = FileType::from_raw_mode(vm.st_mode) == FileType::Directory;
    vm.st_mode == host.st_mode
        && vm.st_uid == host.st_uid
        && vm.st_gid == host.st_gid
        && (dir
            || (vm.st_size == host.st_size
                && vm.st_mtime == host.st_mtime
                && vm.st_mtime_nsec == host.st_mtime_nsec))
}

/// A regular file or a directory of the VM's upper layer (`vm`, open, as `vm_st`)
/// against the host's entry `name` in `host_dir` (`host_st`): the same but for
/// where it lives. Any error reading either side counts as a difference.
pub fn same(vm: &OwnedFd, vm_st: &Stat, host_dir: &OwnedFd, name: &CStr, host_st: &Stat) -> bool {
    if !stats_match(vm_st, host_st) {
        return false;
    }
    let kind = FileType::from_raw_mode(vm_st.st_mode);
    if !matches!(kind, FileType::RegularFile | FileType::Directory) {
        return false;
    }
    let Ok(host) = crate::layers::open_same(host_dir, name, host_st) else {
        return false;
    };
    let (Ok(a), Ok(b)) = (data::fd_xattrs(vm.as_fd()), data::fd_xattrs(host.as_fd())) else {
        return false;
    };
    if sorted(a) != sorted(b) {
        return false;
    }
    kind == FileType::Directory || same_content(vm, &host, vm_st.st_size as u64).unwrap_or(false)
}

/// [`same`] for the regular file `name` of the VM's directory `vm_dir`, against
/// the host's `name` in `host_dir`.
pub fn same_file_at(
    vm_dir: &OwnedFd,
    host_dir: &OwnedFd,
    name: &CStr,
    vm_st: &Stat,
    host_st: &Stat,
) -> bool {
    stats_match(vm_st, host_st)
        && crate::layers::open_same(vm_dir, name, vm_st)
            .is_ok_and(|fd| same(&fd, vm_st, host_dir, name, host_st))
}

/// A file to compare: the directories holding it on both sides (shared by the
/// jobs of one directory), its name, both stats, and whose answer it is.
struct Job {
    id: usize,
    vm_dir: Arc<OwnedFd>,
    host_dir: Arc<OwnedFd>,
    name: CString,
    vm_st: Stat,
    host_st: Stat,
}

/// Jobs waiting at most; each may hold its directories open (two fds).
const QUEUE: usize = 64;
/// Threads at most.
const THREADS: usize = 4;

/// Compares regular files with the host's on a few threads of `scope`, while
/// the caller goes on walking: [`Comparer::compare`] hands one over, and
/// [`Comparer::finish`] gives every answer, as (id, same). With one CPU it
/// compares on the caller's thread.
pub struct Comparer<'scope> {
    jobs: Option<SyncSender<Job>>,
    answers: Receiver<(usize, bool)>,
    /// Answers found on the caller's thread.
    inline: Sender<(usize, bool)>,
    /// The directories of the last job, by the path of the directory.
    dirs: Option<(std::path::PathBuf, Arc<OwnedFd>, Arc<OwnedFd>)>,
    _scope: std::marker::PhantomData<&'scope ()>,
}

impl std::fmt::Debug for Comparer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comparer")
            .field("threads", &self.jobs.is_some())
            .finish_non_exhaustive()
    }
}

impl<'scope> Comparer<'scope> {
    pub fn new<'env>(scope: &'scope std::thread::Scope<'scope, 'env>) -> Comparer<'scope> {
        let (inline, answers) = std::sync::mpsc::channel();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(THREADS);
        let jobs = (threads > 1).then(|| {
            let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
            let queue = Arc::new(Mutex::new(queue));
            for _ in 0..threads {
                let (queue, answer) = (Arc::clone(&queue), inline.clone());
                let spawned = std::thread::Builder::new()
                    .name("fvm-compare".into())
                    .spawn_scoped(scope, move || {
                        loop {
                            let job = match queue.lock() {
                                Ok(q) => q.recv(),
                                Err(_) => return,
                            };
                            let Ok(j) = job else { return };
                            let same =
                                same_file_at(&j.vm_dir, &j.host_dir, &j.name, &j.vm_st, &j.host_st);
                            if answer.send((j.id, same)).is_err() {
                                return;
                            }
                        }
                    });
                if spawned.is_err() {
                    break;
                }
            }
            jobs
        });
        Comparer {
            jobs,
            answers,
            inline,
            dirs: None,
            _scope: std::marker::PhantomData,
        }
    }

    /// Compare the regular file `name` in `vm_dir` (the VM's directory `dir`)
    /// with the host's in `host_dir`; its answer comes back as `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn compare(
        &mut self,
        id: usize,
        dir: &std::path::Path,
        vm_dir: &OwnedFd,
        host_dir: &OwnedFd,
        name: &CStr,
        vm_st: &Stat,
        host_st: &Stat,
    ) {
        // Most files differ in their stats: no need for a thread.
        if !stats_match(vm_st, host_st) {
            return;
        }
        let Some(jobs) = &self.jobs else {
            let same = same_file_at(vm_dir, host_dir, name, vm_st, host_st);
            let _ = self.inline.send((id, same));
            return;
        };
        if self.dirs.as_ref().is_none_or(|(d, _, _)| d != dir) {
            let dup = |fd: &OwnedFd| rustix::io::fcntl_dupfd_cloexec(fd, 0).map(Arc::new);
            match (dup(vm_dir), dup(host_dir)) {
                (Ok(v), Ok(h)) => self.dirs = Some((dir.to_owned(), v, h)),
                _ => {
                    self.dirs = None;
                    let same = same_file_at(vm_dir, host_dir, name, vm_st, host_st);
                    let _ = self.inline.send((id, same));
                    return;
                }
            }
        }
        let (_, v, h) = self.dirs.as_ref().expect("just set");
        let job = Job {
            id,
            vm_dir: Arc::clone(v),
            host_dir: Arc::clone(h),
            name: name.to_owned(),
            vm_st: *vm_st,
            host_st: *host_st,
        };
        if let Err(e) = jobs.send(job) {
            // The threads are gone: answer here.
            let j = e.0;
            let same = same_file_at(&j.vm_dir, &j.host_dir, &j.name, &j.vm_st, &j.host_st);
            let _ = self.inline.send((id, same));
        }
    }

    /// Every answer (ids of files whose stats differed have none: not the same).
    pub fn finish(mut self) -> Vec<(usize, bool)> {
        self.jobs = None;
        self.dirs = None;
        drop(self.inline);
        self.answers.iter().collect()
    }
}

/// Two symlinks with the same target, owner and mtime.
pub fn same_link(
    vm_dir: &OwnedFd,
    vm_name: &CStr,
    vm_st: &Stat,
    host_dir: &OwnedFd,
    host_name: &CStr,
    host_st: &Stat,
) -> bool {
    let link = |s: &Stat| FileType::from_raw_mode(s.st_mode) == FileType::Symlink;
    if !(link(vm_st) && link(host_st))
        || vm_st.st_uid != host_st.st_uid
        || vm_st.st_gid != host_st.st_gid
        || vm_st.st_size != host_st.st_size
        || (vm_st.st_mtime, vm_st.st_mtime_nsec) != (host_st.st_mtime, host_st.st_mtime_nsec)
    {
        return false;
    }
    match (
        rustix::fs::readlinkat(vm_dir, vm_name, Vec::new()),
        rustix::fs::readlinkat(host_dir, host_name, Vec::new()),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn sorted(mut x: data::Xattrs) -> data::Xattrs {
    x.sort();
    x
}

/// Whether two regular files hold the same `size` bytes, and no more. Both are
/// open on the inodes whose stat said regular file of `size` bytes (see
/// [`crate::layers::open_same`]).
///
/// One `pread` per chunk and side, the last asking for a byte more than is left,
/// so that a file that has grown since it was looked at shows without a read of
/// its own; a short read counts as a difference (it only ever makes a copy-up
/// that changed nothing show). The buffers are as big as the file, up to
/// [`CHUNK`]: most files in a layer are small, and zeroing two chunks for each
/// cost more than comparing them.
fn same_content(a: &OwnedFd, b: &OwnedFd, size: u64) -> io::Result<bool> {
    let len = size.min(CHUNK as u64) as usize + 1;
    let mut x = vec![0u8; len];
    let mut y = vec![0u8; len];
    let mut off = 0u64;
    loop {
        let left = size - off;
        let want = left.min(CHUNK as u64) as usize;
        let last = left <= CHUNK as u64;
        let ask = if last { want + 1 } else { want };
        if read_once(a, &mut x[..ask], off)? != want
            || read_once(b, &mut y[..ask], off)? != want
            || x[..want] != y[..want]
        {
            return Ok(false);
        }
        if last {
            return Ok(true);
        }
        off += want as u64;
    }
}

/// One `pread` at `off` (again if a signal interrupted it).
fn read_once(fd: &OwnedFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    loop {
        match rustix::io::pread(fd, &mut *buf, off) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};

    fn open(dir: &std::path::Path, name: &str) -> (OwnedFd, Stat) {
        let fd = rustix::fs::open(
            dir.join(name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let st = rustix::fs::fstat(&fd).unwrap();
        (fd, st)
    }

    #[test]
    fn same_needs_content_mode_and_mtime() {
        let vm = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        for (name, a, b) in [
            ("same", &big[..], &big[..]),
            ("empty", &b""[..], &b""[..]),
            (
                "last",
                &big[..],
                &[&big[..big.len() - 1], b"x"].concat()[..],
            ),
        ] {
            std::fs::write(vm.path().join(name), a).unwrap();
            std::fs::write(host.path().join(name), b).unwrap();
        }
        let host_dir = rustix::fs::open(host.path(), OFlags::RDONLY, Mode::empty()).unwrap();
        let check = |name: &str| {
            // Same mtime on both sides, as a copy-up keeps it.
            let t = std::fs::File::open(host.path().join(name))
                .unwrap()
                .metadata()
                .unwrap()
                .modified()
                .unwrap();
            std::fs::File::options()
                .write(true)
                .open(vm.path().join(name))
                .unwrap()
                .set_modified(t)
                .unwrap();
            let (v, vs) = open(vm.path(), name);
            let (_, hs) = open(host.path(), name);
            let c = std::ffi::CString::new(name).unwrap();
            same(&v, &vs, &host_dir, &c, &hs)
        };
        assert!(check("same"));
        assert!(check("empty"));
        assert!(!check("last"));
        // Whole chunks, and a file longer than its stat said (it grew).
        let exact = &big[..CHUNK * 2];
        std::fs::write(vm.path().join("exact"), exact).unwrap();
        std::fs::write(host.path().join("exact"), exact).unwrap();
        assert!(check("exact"));
        let (a, _) = open(vm.path(), "exact");
        let (b, _) = open(host.path(), "exact");
        assert!(same_content(&a, &b, exact.len() as u64).unwrap());
        assert!(!same_content(&a, &b, exact.len() as u64 - 1).unwrap());
        assert!(!same_content(&a, &b, 10).unwrap());
        std::fs::set_permissions(
            vm.path().join("same"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(
            host.path().join("same"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        assert!(!check("same"));
        // A fifo is never read.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            vm.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let st = rustix::fs::lstat(vm.path().join("fifo")).unwrap();
        let fd = rustix::fs::open(
            vm.path().join("fifo"),
            OFlags::RDONLY | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .unwrap();
        assert!(!same(&fd, &st, &host_dir, c"fifo", &st));
    }

    #[test]
    fn the_comparer_answers_as_same_does() {
        let vm = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        for i in 0..300 {
            let name = format!("f{i}");
            let body = format!("body {i}\n");
            std::fs::write(host.path().join(&name), &body).unwrap();
            // Every third differs in content only, every fifth in size.
            let mine = match i {
                _ if i % 5 == 0 => format!("{body}more"),
                _ if i % 3 == 0 => body.replace("body", "BODY"),
                _ => body,
            };
            std::fs::write(vm.path().join(&name), mine).unwrap();
            let t = std::fs::metadata(host.path().join(&name))
                .unwrap()
                .modified()
                .unwrap();
            std::fs::File::options()
                .write(true)
                .open(vm.path().join(&name))
                .unwrap()
                .set_modified(t)
                .unwrap();
            want.push((i, i % 5 != 0 && i % 3 != 0));
        }
        let dir = |p: &std::path::Path| rustix::fs::open(p, OFlags::RDONLY, Mode::empty()).unwrap();
        let (vm_dir, host_dir) = (dir(vm.path()), dir(host.path()));
        let mut got = std::thread::scope(|scope| {
            let mut c = Comparer::new(scope);
            for i in 0..300 {
                let name = std::ffi::CString::new(format!("f{i}")).unwrap();
                let vs = rustix::fs::statat(&vm_dir, &name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .unwrap();
                let hs =
                    rustix::fs::statat(&host_dir, &name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                        .unwrap();
                c.compare(
                    i,
                    std::path::Path::new(""),
                    &vm_dir,
                    &host_dir,
                    &name,
                    &vs,
                    &hs,
                );
            }
            c.finish()
        });
        got.sort();
        // Files whose stats differ get no answer: not the same.
        let same_ones: Vec<usize> = got.iter().filter(|(_, s)| *s).map(|(i, _)| *i).collect();
        let want_same: Vec<usize> = want.iter().filter(|(_, s)| *s).map(|(i, _)| *i).collect();
        assert_eq!(same_ones, want_same);
        assert!(got.iter().all(|(i, s)| want[*i].1 == *s));
    }
}

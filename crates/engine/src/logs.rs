//! A VM's logs: the output of its services and of its detached commands
//! (`fvm run -d`), one JSON object a line, in the VM's directory in the store
//! (`vms/<name>/logs/`), never in its layers.
//!
//! The VM's init writes them (see `runtime::services`). It opens the directory
//! before the VM's root replaces the host's and keeps that one descriptor; every
//! file it makes is named by fvm (a service name, which is narrow, or `run`) and
//! opened beneath that descriptor without following links, so nothing a VM
//! writes chooses a path. A process of the VM can't get the descriptor (it is
//! close-on-exec and the init is not dumpable).
//!
//! Bounded: each source has `NAME.log` and, once that reaches [`FILE_MAX`],
//! `NAME.log.1` (the older half), so a VM's logs take at most
//! `2 × FILE_MAX × (services + 1)` bytes. A line longer than [`LINE_MAX`] is cut
//! into several entries; output the disk can't keep up with blocks the process
//! that writes it (its pipe fills), so memory stays bounded too.
//!
//! Everything in an entry came from the VM: [`Entry::show`] escapes it for a
//! terminal (see `os::quote`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

/// When a log file is rotated (renamed to `NAME.log.1`).
pub const FILE_MAX: u64 = 2 << 20;
/// The longest line kept as one entry.
pub const LINE_MAX: usize = 16 << 10;
/// The log of detached commands (`fvm run -d`).
pub const DETACHED: &str = "run";
/// The init's last word on its services, for `fvm service` on a stopped VM.
pub const STATUS_FILE: &str = "services.json";

/// Which stream an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// A note of fvm's own (a service started, ended, was restarted).
    Fvm,
}

impl Stream {
    fn short(self) -> &'static str {
        match self {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
            Stream::Fvm => "fvm",
        }
    }
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The service, or [`DETACHED`].
    pub source: String,
    /// The process inside the VM (the service's main process, or the detached command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub stream: Stream,
    pub line: String,
}

impl Entry {
    pub fn now(source: &str, pid: Option<i32>, stream: Stream, line: &[u8]) -> Entry {
        Entry {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            source: source.to_owned(),
            pid,
            stream,
            line: String::from_utf8_lossy(line).into_owned(),
        }
    }

    /// One line for a person: time, source[pid], stream, then the text, escaped
    /// when `terminal` (control characters and escape sequences from the VM
    /// must not reach a terminal as they are).
    pub fn show(&self, terminal: bool) -> String {
        let who = match self.pid {
            Some(p) => format!("{}[{p}]", self.source),
            None => self.source.clone(),
        };
        let text = if terminal {
            crate::os::quote::line(&self.line).into_owned()
        } else {
            self.line.clone()
        };
        format!("{} {who} {}: {text}", self.time, self.stream.short())
    }

    fn parse_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.time).ok()
    }
}

/// Splits a stream's bytes into lines of at most [`LINE_MAX`].
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Feed bytes; `emit` gets each complete line (without its newline).
    pub fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            let room = LINE_MAX - self.partial.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&window[..i]);
                    emit(&self.partial);
                    self.partial.clear();
                    data = &data[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.partial.len() == LINE_MAX {
                        emit(&self.partial);
                        self.partial.clear();
                    }
                }
            }
        }
    }

    /// At end of file: the last line if it had no newline.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// The init's side: appends entries to the files of a logs directory it holds
/// open.
#[derive(Debug)]
pub struct Writer {
    dir: OwnedFd,
    open: Vec<(String, OwnedFd, u64)>,
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

impl Writer {
    /// Open `dir` (made by fvm, in the store) for the VM's lifetime.
    pub fn open(dir: &Path) -> io::Result<Writer> {
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        Ok(Writer {
            dir: fd,
            open: Vec::new(),
        })
    }

    pub fn raw_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.dir)
    }

    /// Append one entry to its source's file, rotating it first if it is full.
    /// An entry that can't be written (a full disk) is dropped: the service must
    /// not stop for its log.
    pub fn write(&mut self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let _ = self.append(&entry.source, &line);
    }

    /// Append the lines of one read of a stream, all with the same time, in one
    /// write (rotating first if they would not fit).
    pub fn write_lines(&mut self, source: &str, pid: Option<i32>, stream: Stream, lines: &[&[u8]]) {
        if lines.is_empty() {
            return;
        }
        let mut entry = Entry::now(source, pid, stream, b"");
        let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 96).sum());
        for l in lines {
            entry.line = String::from_utf8_lossy(l).into_owned();
            if serde_json::to_writer(&mut out, &entry).is_ok() {
                out.push(b'\n');
            }
        }
        let _ = self.append(source, &out);
    }

    fn append(&mut self, source: &str, line: &[u8]) -> io::Result<()> {
        let name = format!("{source}.log");
        let at = match self.open.iter().position(|(n, _, _)| *n == name) {
            Some(i) => i,
            None => {
                let fd = self.open_file(&name)?;
                let size = rustix::fs::fstat(&fd)?.st_size as u64;
                self.open.push((name.clone(), fd, size));
                self.open.len() - 1
            }
        };
        if self.open[at].2 > 0 && self.open[at].2 + line.len() as u64 > FILE_MAX {
            rustix::fs::renameat(&self.dir, &*name, &self.dir, format!("{name}.1"))?;
            let fd = self.open_file(&name)?;
            self.open[at] = (name.clone(), fd, 0);
        }
        let (_, fd, size) = &mut self.open[at];
        write_all(fd.as_fd(), line)?;
        *size += line.len() as u64;
        Ok(())
    }

    fn open_file(&self, name: &str) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat2(
            &self.dir,
            name,
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
            beneath(),
        )?)
    }

    /// Replace a small file of the directory (the services' status) atomically.
    pub fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = format!(".{name}.tmp");
        let fd = rustix::fs::openat2(
            &self.dir,
            &*tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
            beneath(),
        )?;
        write_all(fd.as_fd(), data)?;
        drop(fd);
        rustix::fs::renameat(&self.dir, &*tmp, &self.dir, name)?;
        Ok(())
    }
}

fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The host's side: a VM's logs directory.
#[derive(Debug, Clone)]
pub struct Logs {
    dir: PathBuf,
}

/// What `fvm logs` shows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// One source (a service or [`DETACHED`]); all when `None`.
    pub source: Option<String>,
    /// Entries at or after this time only.
    pub since: Option<SystemTime>,
    /// The last N entries only.
    pub tail: Option<usize>,
}

impl Logs {
    pub fn new(dir: PathBuf) -> Logs {
        Logs { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sources that have logs, sorted.
    pub fn sources(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<String> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let base = n
                    .strip_suffix(".log.1")
                    .or_else(|| n.strip_suffix(".log"))?;
                is_source(base).then(|| base.to_owned())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The entries the query asks for, oldest first.
    pub fn read(&self, q: &Query) -> Vec<Entry> {
        let sources = match &q.source {
            Some(s) => vec![s.clone()],
            None => self.sources(),
        };
        let mut all = Vec::new();
        for s in &sources {
            for file in [format!("{s}.log.1"), format!("{s}.log")] {
                if let Ok(bytes) = read_log(&self.dir.join(file)) {
                    all.extend(parse(&bytes));
                }
            }
        }
        // Each file is in order; merge the sources by time (stable).
        all.sort_by(|a, b| a.time.cmp(&b.time));
        filter(all, q)
    }

    /// Follow: emit the entries of `q` written from now on, until `until` (the
    /// VM's init's pidfd) is readable; then one last pass and return. Uses
    /// inotify on the directory: nothing is read in a loop. Follows across
    /// rotation (the file renamed to `.log.1` is read to its end, then the new
    /// one from its start).
    pub fn follow(
        &self,
        q: &Query,
        emit: &mut dyn FnMut(&Entry) -> io::Result<()>,
        until: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<()> {
        let mut ending = false;
        use rustix::fs::inotify;
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        inotify::add_watch(
            &ino,
            &self.dir,
            inotify::WatchFlags::MODIFY
                | inotify::WatchFlags::CREATE
                | inotify::WatchFlags::MOVED_TO
                | inotify::WatchFlags::CLOSE_WRITE,
        )?;
        // Where each followed file has been read to, by inode.
        let mut at: Vec<Followed> = Vec::new();
        let wanted = |s: &str| q.source.as_deref().is_none_or(|w| w == s);
        // Start at the end of what exists now (the caller printed it).
        for s in self.sources().into_iter().filter(|s| wanted(s)) {
            if let Ok(f) = Followed::open(&self.dir, &s, true) {
                at.push(f);
            }
        }
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        loop {
            // New sources, and files rotated under us.
            for s in self.sources().into_iter().filter(|s| wanted(s)) {
                match at.iter_mut().find(|f| f.source == s) {
                    Some(f) => f.catch_up(&self.dir, q, emit)?,
                    None => {
                        if let Ok(mut f) = Followed::open(&self.dir, &s, false) {
                            f.catch_up(&self.dir, q, emit)?;
                            at.push(f);
                        }
                    }
                }
            }
            if ending {
                return Ok(());
            }
            let mut fds = [
                rustix::event::PollFd::new(&ino, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&until, rustix::event::PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            ending = !fds[1].revents().is_empty();
            // Drain the events; which file changed doesn't matter, each is
            // read from where it was.
            let mut reader = inotify::Reader::new(&ino, &mut buf);
            while reader.next().is_ok() {}
        }
    }
}

/// A file being followed.
struct Followed {
    source: String,
    file: std::fs::File,
    ino: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Followed {
    fn open(dir: &Path, source: &str, at_end: bool) -> io::Result<Followed> {
        let file = open_log(&dir.join(format!("{source}.log")))?;
        let st = rustix::fs::fstat(&file)?;
        Ok(Followed {
            source: source.to_owned(),
            file,
            ino: st.st_ino,
            pos: if at_end { st.st_size as u64 } else { 0 },
            partial: Vec::new(),
        })
    }

    /// Read what was appended; if the file was rotated, the rest of the old one
    /// (now `.log.1`) and then the new one from its start.
    fn catch_up(
        &mut self,
        dir: &Path,
        q: &Query,
        emit: &mut dyn FnMut(&Entry) -> io::Result<()>,
    ) -> io::Result<()> {
        loop {
            self.read_new(q, emit)?;
            let current = dir.join(format!("{}.log", self.source));
            let Ok(now) = open_log(&current) else {
                return Ok(());
            };
            let st = rustix::fs::fstat(&now)?;
            if st.st_ino == self.ino {
                return Ok(());
            }
            self.read_new(q, emit)?;
            self.file = now;
            self.ino = st.st_ino;
            self.pos = 0;
            self.partial.clear();
        }
    }

    fn read_new(
        &mut self,
        q: &Query,
        emit: &mut dyn FnMut(&Entry) -> io::Result<()>,
    ) -> io::Result<()> {
        use std::io::{Read, Seek};
        let size = rustix::fs::fstat(&self.file)?.st_size as u64;
        if size < self.pos {
            self.pos = 0;
        }
        if size == self.pos {
            return Ok(());
        }
        self.file.seek(io::SeekFrom::Start(self.pos))?;
        // At most a file's worth at a time, however large it claims to be.
        let want = (size - self.pos).min(FILE_MAX + 8 * LINE_MAX as u64);
        let mut chunk = Vec::new();
        (&mut self.file).take(want).read_to_end(&mut chunk)?;
        self.pos += chunk.len() as u64;
        self.partial.extend_from_slice(&chunk);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            // An entry is at most a few times LINE_MAX; anything longer is not ours.
            if self.partial.len() > 8 * LINE_MAX {
                self.partial.clear();
            }
            return Ok(());
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for e in filter(parse(&complete), q) {
            emit(&e)?;
        }
        Ok(())
    }
}

/// A source name: a service name or [`DETACHED`].
fn is_source(s: &str) -> bool {
    s == DETACHED || crate::store::service::ServiceName::new(s).is_ok()
}

fn open_log(path: &Path) -> io::Result<std::fs::File> {
    crate::os::files::open_regular(path).map(|(f, _)| f)
}

/// A log file's bytes: a regular file, no link followed, at most a little over
/// [`FILE_MAX`] (the last line may go past it).
fn read_log(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    open_log(path)?
        .take(FILE_MAX + 8 * LINE_MAX as u64)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// The entries of a file's text; lines that are not entries are skipped.
fn parse(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

fn filter(mut all: Vec<Entry>, q: &Query) -> Vec<Entry> {
    if let Some(since) = q.since {
        all.retain(|e| e.parse_time().is_some_and(|t| t >= since));
    }
    if let Some(n) = q.tail {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    all
}

/// `--since`: an RFC 3339 time (`2026-01-02T03:04:05Z`), or a duration back
/// from now (`10m`, `1h30m`, `90s`).
pub fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    match humantime::parse_duration(text) {
        Ok(d) => Ok(SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)),
        Err(_) => Err(format!(
            "invalid time {}: use a time like 2026-01-02T03:04:05Z or a duration like 10m",
            crate::os::quote::text(text)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bounded() {
        let mut l = Lines::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        l.feed(b"a\nbc", &mut |x| got.push(x.to_vec()));
        l.feed(b"d\n\n", &mut |x| got.push(x.to_vec()));
        assert_eq!(got, vec![b"a".to_vec(), b"bcd".to_vec(), b"".to_vec()]);
        got.clear();
        l.feed(&vec![b'x'; LINE_MAX * 2 + 5], &mut |x| got.push(x.to_vec()));
        l.finish(&mut |x| got.push(x.to_vec()));
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![LINE_MAX, LINE_MAX, 5]
        );
    }

    #[test]
    fn writes_rotate_within_the_bound_and_read_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Writer::open(d.path()).unwrap();
        let line = vec![b'y'; 1000];
        let n = 3 * FILE_MAX as usize / 1000;
        for _ in 0..n {
            w.write(&Entry::now("web", Some(7), Stream::Stdout, &line));
        }
        w.write(&Entry::now(
            DETACHED,
            Some(9),
            Stream::Stderr,
            b"\x1b[2Jgone",
        ));
        let total: u64 = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 2 * FILE_MAX + 4096, "{total}");
        let logs = Logs::new(d.path().to_owned());
        assert_eq!(logs.sources(), vec!["run".to_owned(), "web".to_owned()]);
        let all = logs.read(&Query::default());
        assert!(all.len() > FILE_MAX as usize / 1100);
        let run = all.iter().find(|e| e.source == "run").unwrap();
        let tail = logs.read(&Query {
            source: Some("web".into()),
            tail: Some(3),
            ..Query::default()
        });
        assert_eq!(tail.len(), 3);
        let shown = run.show(true);
        assert!(!shown.contains('\x1b'), "{shown}");
        assert!(run.show(false).contains('\x1b'));
    }

    #[test]
    fn a_planted_link_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("web.log")).unwrap();
        let mut w = Writer::open(d.path()).unwrap();
        w.write(&Entry::now("web", None, Stream::Stdout, b"x"));
        assert_eq!(std::fs::read(&target).unwrap(), b"");
        assert!(
            Logs::new(d.path().to_owned())
                .read(&Query::default())
                .is_empty()
        );
    }

    #[test]
    fn since_takes_a_time_or_a_duration() {
        assert!(parse_since("2026-01-02T03:04:05Z").is_ok());
        assert!(parse_since("10m").unwrap() < SystemTime::now());
        let e = parse_since("yesterday\x1b").unwrap_err();
        assert!(!e.contains('\x1b'), "{e}");
    }
}

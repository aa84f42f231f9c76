//! A file's content, copied as cheaply as the filesystem allows.
//!
//! First a reflink (`FICLONE`): on btrfs, xfs and bcachefs the new file shares
//! the old one's blocks, so a copy costs metadata only and no space until either
//! side is written. Where the filesystem can't (ext4, tmpfs, or two different
//! filesystems) the data ranges of the file, found with `SEEK_DATA`/`SEEK_HOLE`,
//! are copied with `copy_file_range`, which stays in the kernel and may still be
//! offloaded by the filesystem; holes are left as holes, so a sparse file stays
//! sparse. Where `copy_file_range` is refused too, plain `pread`/`pwrite`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::os::sys;

/// The most one `copy_file_range` or read is asked for, so that progress is
/// reported at least this often on a big file.
const CHUNK: u64 = 8 << 20;
const BUFFER: usize = 1 << 20;

/// What copying one file did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Bytes of data (not holes) copied or shared.
    pub bytes: u64,
    pub reflinked: bool,
}

/// Copies file content, remembering across files which methods the filesystems
/// refused, so a big tree doesn't pay a failing syscall per file.
#[derive(Debug, Default)]
pub struct Copier {
    no_reflink: bool,
    no_copy_file_range: bool,
    buffer: Vec<u8>,
}

impl Copier {
    /// Give `dst` (new and empty) the content of `src`, which is `size` bytes
    /// long. `progress` gets the bytes copied since its last call.
    pub fn copy(
        &mut self,
        src: &File,
        dst: &File,
        size: u64,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<Copied> {
        if size == 0 {
            return Ok(Copied::default());
        }
        if !self.no_reflink {
            match sys::reflink(src.as_fd(), dst.as_fd()) {
                Ok(()) => {
                    // Holes are shared as holes: count what is allocated, as
                    // the other paths count the data ranges they copy.
                    let blocks = u64::try_from(rustix::fs::fstat(src)?.st_blocks).unwrap_or(0);
                    let bytes = size.min(blocks * 512);
                    progress(bytes);
                    return Ok(Copied {
                        bytes,
                        reflinked: true,
                    });
                }
                // The filesystem (or this pair of them) has no reflinks.
                Err(e) if is_errno(&e, &[Errno::OPNOTSUPP, Errno::XDEV, Errno::NOTTY]) => {
                    self.no_reflink = true;
                }
                // This file can't be cloned (e.g. a swap file, or unaligned tail
                // rules of the filesystem); others may be.
                Err(e) if is_errno(&e, &[Errno::INVAL]) => {}
                Err(e) => return Err(e),
            }
        }
        let mut bytes = 0;
        let mut off = 0;
        let mut written_to = 0;
        while off < size {
            let Some((start, end)) = next_data(src, off, size)? else {
                break;
            };
            let n = self.copy_range(src, dst, start, end, progress)?;
            bytes += n;
            written_to = start + n;
            off = end;
        }
        // A hole at the end has no data range to copy: set the length.
        if written_to < size {
            rustix::fs::ftruncate(dst, size)?;
        }
        Ok(Copied {
            bytes,
            reflinked: false,
        })
    }

    /// Copy bytes `start..end`; returns how many were copied (fewer if the file
    /// shrank under us).
    fn copy_range(
        &mut self,
        src: &File,
        dst: &File,
        start: u64,
        end: u64,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<u64> {
        let mut off = start;
        while off < end {
            let want = (end - off).min(CHUNK);
            let n = if self.no_copy_file_range {
                self.read_write(src, dst, off, want)?
            } else {
                let (mut from, mut to) = (off, off);
                match rustix::fs::copy_file_range(
                    src,
                    Some(&mut from),
                    dst,
                    Some(&mut to),
                    usize::try_from(want).unwrap_or(usize::MAX),
                ) {
                    Ok(n) => n as u64,
                    Err(Errno::INTR) => continue,
                    Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        self.no_copy_file_range = true;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if n == 0 {
                break;
            }
            progress(n);
            off += n;
        }
        Ok(off - start)
    }

    /// One buffer's worth by `pread`/`pwrite`; returns the bytes copied (0 at EOF).
    fn read_write(&mut self, src: &File, dst: &File, off: u64, want: u64) -> io::Result<u64> {
        self.buffer.resize(BUFFER, 0);
        let len = usize::try_from(want).unwrap_or(BUFFER).min(BUFFER);
        let n = loop {
            match rustix::io::pread(src, &mut self.buffer[..len], off) {
                Ok(n) => break n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        let mut done = 0;
        while done < n {
            match rustix::io::pwrite(dst, &self.buffer[done..n], off + done as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => done += w,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n as u64)
    }
}

/// The next range of data at or after `off`, as `(start, end)`, or `None` if only
/// a hole is left. A filesystem without hole support reports everything as data.
fn next_data(src: &File, off: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let start = match rustix::fs::seek(src, SeekFrom::Data(off)) {
        Ok(s) => s,
        Err(Errno::NXIO) => return Ok(None),
        Err(Errno::INVAL | Errno::OPNOTSUPP) => off,
        Err(e) => return Err(e.into()),
    };
    if start >= size {
        return Ok(None);
    }
    let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
        Ok(e) => e.min(size),
        Err(Errno::INVAL | Errno::OPNOTSUPP) => size,
        Err(e) => return Err(e.into()),
    };
    Ok(Some((start, end.max(start + 1).min(size))))
}

fn is_errno(e: &io::Error, which: &[Errno]) -> bool {
    e.raw_os_error()
        .is_some_and(|n| which.contains(&Errno::from_raw_os_error(n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::unix::fs::MetadataExt;

    fn copy(src: &std::path::Path, dst: &std::path::Path, c: &mut Copier) -> (Copied, u64) {
        let s = File::open(src).unwrap();
        let d = File::create(dst).unwrap();
        let mut reported = 0;
        let size = s.metadata().unwrap().len();
        let copied = c.copy(&s, &d, size, &mut |n| reported += n).unwrap();
        (copied, reported)
    }

    #[test]
    fn sparse_files_stay_sparse_and_equal() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("sparse");
        let mut f = File::create(&src).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(io::SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(128 << 20).unwrap();
        drop(f);
        let dst = d.path().join("copy");
        let (copied, reported) = copy(&src, &dst, &mut Copier::default());
        let m = std::fs::metadata(&dst).unwrap();
        assert_eq!(m.len(), 128 << 20);
        assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
        assert_eq!(copied.bytes, reported);
        assert!(copied.reflinked || copied.bytes < 1 << 20, "{copied:?}");
        assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
    }

    #[test]
    fn every_fallback_copies_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("data");
        let data: Vec<u8> = (0..(3 * BUFFER + 17))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        for (no_reflink, no_cfr) in [(false, false), (true, false), (true, true)] {
            let mut c = Copier {
                no_reflink,
                no_copy_file_range: no_cfr,
                buffer: Vec::new(),
            };
            let dst = d.path().join(format!("copy-{no_reflink}-{no_cfr}"));
            let (copied, reported) = copy(&src, &dst, &mut c);
            assert_eq!(std::fs::read(&dst).unwrap(), data);
            assert_eq!(copied.bytes, data.len() as u64);
            assert_eq!(reported, data.len() as u64);
        }
    }
}

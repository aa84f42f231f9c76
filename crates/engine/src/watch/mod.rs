//! Host changes seen from running VMs.
//!
//! overlayfs caches what a VM looked up: a host file replaced by rename keeps
//! its old content in a VM that had looked it up (the cached dentry still points
//! at the old inode), and a name the VM found missing stays missing after the
//! host creates it (a cached negative dentry), as does a host chmod (the overlay
//! inode copies the attributes). Nothing in the kernel revalidates a local lower
//! layer.
//!
//! What does drop those entries: reconfiguring the overlay's superblock (a
//! "remount" with unchanged options) shrinks that superblock's dcache, that is,
//! the one VM's cached overlay dentries that nothing holds, and nothing else. The
//! host's own dentries and page cache, and other VMs', are untouched; a re-lookup
//! in the VM finds the host's dentries still cached.
//!
//! So a store runs one watcher ([`watcher`]) while any of its VMs
//! runs: a fanotify group per host filesystem under the VMs' overlays reports
//! creates, deletes, renames and attribute changes (`FAN_MARK_FILESYSTEM`, with
//! the parent directory's handle and the name); changes under the store itself
//! (the VMs' own layers) are dropped by the kernel, each such directory given an
//! ignore mark at its first event, and a filesystem mounted inside the store gets
//! no mark at all; the rest, gathered for [`SETTLE`], end in
//! one reconfigure of every overlay of every running VM. In-place writes need
//! nothing: overlayfs reads the host's page cache.
//!
//! docs/host-changes.md has what was tried, the kernel's behaviour, the costs,
//! and the case this can't fix: a path whose old file a VM process still holds
//! open keeps showing that file to new lookups until it is closed.

pub mod watcher;

use std::time::Duration;

/// How long the watcher gathers host changes before invalidating: a burst (an
/// `apt-get install`, an untar) costs one invalidation per VM, not thousands, and
/// a change still shows within a fraction of a second.
pub const SETTLE: Duration = Duration::from_millis(50);

/// How often the VMs are invalidated while the host goes on changing files (an
/// untar, an upgrade): ten times a second, not at every change. Meanwhile the
/// watcher doesn't listen: it reads what queued just before each invalidation.
pub const BURST: Duration = Duration::from_millis(100);

/// How long the watcher stops listening after the kernel woke it with only
/// changes of the VMs' own (a VM writing its layer in directories it doesn't yet
/// have the kernel ignore): a VM's write burst wakes it a few times a second at
/// most, and a host change that comes meanwhile waits at most this long more.
pub const HOLD: Duration = Duration::from_millis(50);

/// Invalidations per batch of changes, [`RETRY`] apart. A dentry that a VM
/// process is using at the instant of an invalidation (open, or being looked
/// up) isn't dropped; a second pass a little later catches the ones that were
/// only busy for a moment.
pub const PASSES: u32 = 3;
pub const RETRY: Duration = Duration::from_millis(100);

/// The events that can leave a VM's view stale.
pub const MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_ATTRIB
    | libc::FAN_ONDIR;

/// One event of a `FAN_REPORT_DFID_NAME` group: what happened to `name` in the
/// directory with this file handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub mask: u64,
    pub handle_type: i32,
    pub handle: Vec<u8>,
    pub name: Vec<u8>,
}

/// `struct fanotify_event_metadata`: event_len u32, vers u8, reserved u8,
/// metadata_len u16, mask u64, fd i32, pid i32.
const METADATA_LEN: usize = 24;
/// `struct fanotify_event_info_header` (type, pad, len) + `__kernel_fsid_t`.
const INFO_HEADER_LEN: usize = 4 + 8;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parse what one `read` of the group returned. Events the watcher can't use
/// (a queue overflow, an unknown record) come back with an empty handle, which
/// means "something changed, don't know where".
pub fn parse(buf: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + METADATA_LEN <= buf.len() {
        let Some(len) = u32_at(buf, at).map(|l| l as usize) else {
            break;
        };
        let meta_len = u16_at(buf, at + 6).unwrap_or(METADATA_LEN as u16) as usize;
        if len < METADATA_LEN || at + len > buf.len() {
            break;
        }
        let mask = u64_at(buf, at + 8).unwrap_or(0);
        let event = &buf[at..at + len];
        out.push(info(event, meta_len).map_or(
            Event {
                mask,
                handle_type: 0,
                handle: Vec::new(),
                name: Vec::new(),
            },
            |(handle_type, handle, name)| Event {
                mask,
                handle_type,
                handle,
                name,
            },
        ));
        at += len;
    }
    out
}

/// The directory handle and name of one event's `FAN_EVENT_INFO_TYPE_DFID_NAME`
/// record.
fn info(event: &[u8], meta_len: usize) -> Option<(i32, Vec<u8>, Vec<u8>)> {
    let mut at = meta_len;
    while at + INFO_HEADER_LEN <= event.len() {
        let kind = event[at];
        let len = u16_at(event, at + 2)? as usize;
        if len < INFO_HEADER_LEN || at + len > event.len() {
            return None;
        }
        if kind == libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
            let fh = at + INFO_HEADER_LEN;
            let bytes = u32_at(event, fh)? as usize;
            let handle_type = u32_at(event, fh + 4)? as i32;
            let handle = event.get(fh + 8..fh + 8 + bytes)?.to_vec();
            let rest = event.get(fh + 8 + bytes..at + len)?;
            let name = rest.split(|b| *b == 0).next().unwrap_or(&[]).to_vec();
            return Some((handle_type, handle, name));
        }
        at += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event as the kernel lays it out.
    fn raw(mask: u64, handle: &[u8], name: &str) -> Vec<u8> {
        let mut info = Vec::new();
        info.push(libc::FAN_EVENT_INFO_TYPE_DFID_NAME);
        info.push(0);
        info.extend([0, 0]); // length, below
        info.extend([7u8; 8]); // fsid
        info.extend((handle.len() as u32).to_ne_bytes());
        info.extend(1i32.to_ne_bytes());
        info.extend(handle);
        info.extend(name.as_bytes());
        info.push(0);
        while info.len() % 4 != 0 {
            info.push(0);
        }
        let n = info.len() as u16;
        info[2..4].copy_from_slice(&n.to_ne_bytes());
        let mut ev = Vec::new();
        ev.extend(((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        ev.extend([3u8, 0]);
        ev.extend((METADATA_LEN as u16).to_ne_bytes());
        ev.extend(mask.to_ne_bytes());
        ev.extend((-1i32).to_ne_bytes());
        ev.extend(42i32.to_ne_bytes());
        ev.extend(info);
        ev
    }

    #[test]
    fn parses_consecutive_events() {
        let mut buf = raw(libc::FAN_CREATE, &[1, 2, 3, 4, 5, 6, 7, 8], "new.conf");
        buf.extend(raw(libc::FAN_MOVED_TO | libc::FAN_ONDIR, &[9; 12], "d"));
        let events = parse(&buf);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].mask, libc::FAN_CREATE);
        assert_eq!(events[0].handle, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(events[0].handle_type, 1);
        assert_eq!(events[0].name, b"new.conf");
        assert_eq!(events[1].name, b"d");
    }

    #[test]
    fn truncated_or_unknown_records_mean_somewhere() {
        let buf = raw(libc::FAN_DELETE, &[1; 8], "x");
        assert!(parse(&buf[..10]).is_empty());
        let mut odd = buf.clone();
        odd[METADATA_LEN] = 99; // an info type we don't know
        let e = parse(&odd);
        assert_eq!(e.len(), 1);
        assert!(e[0].handle.is_empty());
    }

    #[test]
    fn any_bytes_are_parsed_without_a_panic_or_reading_past_a_record() {
        crate::testing::cases("fanotify events", 3000, |rng| {
            // Real events, then random edits (lengths and types are what the
            // parser trusts), sometimes followed by an unknown info record.
            let mut buf = Vec::new();
            let mut made = Vec::new();
            for _ in 0..rng.usize(1..4) {
                let handle = crate::testing::bytes(rng, 20, &[]);
                let name: String = (0..rng.usize(0..10)).map(|_| rng.alphanumeric()).collect();
                buf.extend(raw(libc::FAN_CREATE, &handle, &name));
                made.push((handle, name.into_bytes()));
            }
            let clean = parse(&buf);
            let read: Vec<_> = clean
                .iter()
                .map(|e| (e.handle.clone(), e.name.clone()))
                .collect();
            assert_eq!(read, made);
            for _ in 0..rng.usize(0..6) {
                let at = rng.usize(..buf.len());
                buf[at] = crate::testing::bytes(rng, 1, &[0, 1, 0xff, 0x7f, 8, 12, 24])
                    .first()
                    .copied()
                    .unwrap_or(0);
            }
            let cut = rng.usize(..=buf.len());
            let buf = if rng.bool() { &buf[..cut] } else { &buf[..] };
            let events = parse(buf);
            assert!(events.len() <= clean.len().max(buf.len() / METADATA_LEN));
            for event in &events {
                // What an event names was read from inside one info record: the
                // record header, handle header and name come on top of it.
                assert!(
                    INFO_HEADER_LEN + 8 + event.handle.len() + event.name.len() <= buf.len(),
                    "{event:?} from {} bytes",
                    buf.len()
                );
            }
        });
    }

    #[test]
    fn a_handle_longer_than_its_record_is_no_handle() {
        // A record claiming a 40-byte handle, followed by another record of the
        // same event: the handle must not be read from the next record.
        let mut ev = raw(libc::FAN_CREATE, &[1; 8], "a");
        let info = METADATA_LEN;
        let record = usize::from(u16_at(&ev, info + 2).unwrap());
        ev[info + INFO_HEADER_LEN..info + INFO_HEADER_LEN + 4]
            .copy_from_slice(&40u32.to_ne_bytes());
        let mut next = vec![99u8, 0, 64, 0];
        next.extend([0xaa; 60]);
        ev.extend(&next);
        let len = u32::try_from(ev.len()).unwrap();
        ev[..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(info + record + next.len(), ev.len());
        let events = parse(&ev);
        assert_eq!(events.len(), 1);
        assert!(events[0].handle.is_empty(), "{:?}", events[0]);
    }
}

//! The name of a layer's directory, made from the host mount point it covers.

use std::ffi::OsStr;
use std::path::Path;

/// The longest layer directory name; longer keys are cut and end in a hash of the
/// whole mount point, so they stay distinct and fit any filesystem's name limit.
const MAX_KEY: usize = 200;

/// A layer directory name for a mount point, escaped like systemd unit names so
/// that distinct paths never collide: `/` is `-`, `/var/lib` is `var-lib`, and `-`
/// itself is `\x2d`.
pub fn layer_key(mount_point: &Path) -> String {
    let key = escaped_key(mount_point);
    if key.len() <= MAX_KEY {
        return key;
    }
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mount_point.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Escaped keys are ASCII, so any byte index is a char boundary.
    format!("{}~{h:016x}", &key[..MAX_KEY - 17])
}

fn escaped_key(mount_point: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let rel = mount_point
        .strip_prefix("/")
        .unwrap_or(mount_point)
        .as_os_str();
    if rel.is_empty() {
        return "-".to_owned();
    }
    let mut key = String::new();
    for (i, &b) in OsStr::as_bytes(rel).iter().enumerate() {
        match b {
            b'/' => key.push('-'),
            b'.' if i == 0 => key.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => key.push(b as char),
            _ => key.push_str(&format!("\\x{b:02x}")),
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys_are_unambiguous() {
        assert_eq!(layer_key(Path::new("/")), "-");
        assert_eq!(layer_key(Path::new("/home")), "home");
        assert_eq!(layer_key(Path::new("/var/lib")), "var-lib");
        assert_eq!(layer_key(Path::new("/var-lib")), "var\\x2dlib");
        assert_eq!(layer_key(Path::new("/.hidden/a b")), "\\x2ehidden-a\\x20b");
        assert_ne!(layer_key(Path::new("/a-b")), layer_key(Path::new("/a/b")));
    }

    #[test]
    fn long_layer_keys_are_cut_and_stay_distinct() {
        let long_a = format!("/mnt/{}", "a-".repeat(120));
        let long_b = format!("/mnt/{}b", "a-".repeat(120));
        let (ka, kb) = (layer_key(Path::new(&long_a)), layer_key(Path::new(&long_b)));
        assert!(ka.len() <= MAX_KEY && kb.len() <= MAX_KEY, "{ka}");
        assert_ne!(ka, kb);
        assert!(ka.contains('~'));
    }
}

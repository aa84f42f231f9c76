//! OCI container IDs: hostile input (they come from whoever drives the
//! runtime), checked before they name a file, and mapped to a VM name.

use crate::store::VmName;

/// The longest ID taken. Engines use 64 hex digits; Slurm
/// `node.user.job.step.task`.
pub const MAX_ID: usize = 128;

/// Check an OCI container ID: 1 to [`MAX_ID`] characters of `A-Z a-z 0-9 _ + - .`
/// (runc's set), not starting with `.` or `-` (so never `.`, `..` or an
/// option). It never holds a `/`, so it is safe as one file name.
pub fn check(id: &str) -> Result<&str, String> {
    if id.is_empty() {
        return Err("the container id is empty".into());
    }
    if id.len() > MAX_ID {
        return Err(format!(
            "container id {:?}... is longer than {MAX_ID} characters",
            &id[..id.char_indices().nth(16).map_or(id.len(), |(i, _)| i)]
        ));
    }
    if id.starts_with(['.', '-']) {
        return Err(format!("container id {id:?} starts with '.' or '-'"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_+-.".contains(*c)))
    {
        return Err(format!(
            "container id {:?} has {c:?}: only A-Z, a-z, 0-9, '_', '+', '-' and '.' are allowed",
            id.escape_debug().to_string()
        ));
    }
    Ok(id)
}

/// The VM of a (checked) container ID: `c-<up to 12 characters of the id,
/// lowercased, other characters as '-'>-<64-bit FNV-1a hash of the id in hex>`.
/// The hash tells apart IDs that differ only in case or past the prefix; the
/// prefix lets a person find the VM of a container.
pub fn vm_name(id: &str) -> VmName {
    let prefix: String = id
        .chars()
        .take(12)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '.' | '-') => c,
            _ => '-',
        })
        .collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    VmName::new(&format!("c-{prefix}-{hash:016x}"))
        .expect("a-z, 0-9, '_', '.' and '-', 31 characters at most: always a valid name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_and_slurm_ids_are_taken() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(check(&hex).unwrap(), hex);
        assert!(check("node1.alice.1234.0.0").is_ok());
        assert!(check("Web_1+x").is_ok());
    }

    #[test]
    fn hostile_ids_are_refused() {
        for bad in [
            "", ".", "..", "../x", "a/b", "-rf", ".hidden", "a\0b", "a b", "a\nb", "é",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check(&"a".repeat(MAX_ID + 1)).is_err());
        assert!(check(&"a".repeat(MAX_ID)).is_ok());
    }

    #[test]
    fn vm_names_are_valid_and_distinct() {
        let hex = "0123456789abcdef".repeat(4);
        let a = vm_name(&hex);
        assert!(a.as_str().starts_with("c-0123456789ab-"));
        assert_ne!(vm_name("Web"), vm_name("web"));
        assert_ne!(vm_name("node1.alice.1.0.0"), vm_name("node1.alice.1.0.1"));
        assert_eq!(vm_name("x+y").as_str().get(..6), Some("c-x-y-"));
        assert_eq!(vm_name(&"A".repeat(MAX_ID)), vm_name(&"A".repeat(MAX_ID)));
    }
}

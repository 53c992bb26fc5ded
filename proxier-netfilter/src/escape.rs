//! What may reach a rule, a comment or a command line from an API object.
//! Names are checked, never quoted into shape: a value that is not what
//! Kubernetes allows is refused, so nothing can end a word or a line of
//! `iptables-restore` input, or read as a flag.

use proxier_core::ServicePortName;
use sha2::{Digest, Sha256};

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The first 16 characters of standard base32 of SHA-256 of `parts`
/// concatenated: the hash in kube-proxy's chain names (iptables mode
/// takes 16 characters, nftables mode 8).
pub fn hash_base32(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    // 16 base32 characters are 80 bits: the first 10 bytes.
    let mut bits: u128 = 0;
    for b in &digest[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    let mut out = [0u8; 16];
    for (i, c) in out.iter_mut().enumerate() {
        *c = BASE32[((bits >> (75 - 5 * i)) & 31) as usize];
    }
    out
}

/// What a namespace, service name or port name may carry into a comment:
/// a DNS label or subdomain (what Kubernetes allows), so nothing that
/// could end a word or a line in `iptables-restore` input, or read as a
/// flag.
pub fn safe_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
}

/// Whether every part of `name` (namespace, name, port name) is a
/// [`safe_label`]: what a rule comment `ns/name:port` may hold.
pub fn safe_service_port_name(name: &ServicePortName) -> bool {
    safe_label(&name.service.namespace)
        && safe_label(&name.service.name)
        && (name.port.is_empty() || safe_label(&name.port))
}

/// Whether `s` can be a Linux interface name (or prefix): 1 to 15 bytes
/// of letters, digits, `-`, `_`, `.` (what `ip link` accepts and what
/// cannot break a rule).
pub fn safe_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(safe_label("kube-system"));
        assert!(safe_label("a.b-c"));
        for bad in ["", "-a", "A", "a b", "a\nCOMMIT", "a\"", "a/b", "a:b"] {
            assert!(!safe_label(bad), "{bad:?}");
        }
        assert!(!safe_label(&"a".repeat(254)));
    }

    #[test]
    fn interfaces() {
        assert!(safe_interface_name("veth"));
        assert!(safe_interface_name("kube-ipvs0"));
        assert!(!safe_interface_name(""));
        assert!(!safe_interface_name("a b"));
        assert!(!safe_interface_name("0123456789abcdef"));
    }
}

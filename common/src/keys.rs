//! Inference API keys as both planes see them: a secret is `mv-` followed by 64 hex digits
//! (256 random bits, drawn by the control plane from the OS's CSPRNG); only its SHA-256 is
//! ever stored, pushed to proxies or written in a routes file.
//!
//! A plain (unkeyed) hash is enough: the secrets are uniformly random, so there is no
//! dictionary to precompute and inverting SHA-256 for a 256-bit secret is infeasible; a salt
//! or HMAC key would protect nothing more. The proxy looks a presented key up by its hash in a
//! hash map, so no comparison of secret bytes happens at all (no timing side channel to
//! guard): the lookup's timing depends only on the hash, which an attacker can compute anyway.

use ring::digest;

/// Every secret starts with this.
pub const SECRET_PREFIX: &str = "mv-";

/// Random bytes in a secret (hex-encoded after the prefix).
pub const SECRET_BYTES: usize = 32;

/// A key's SHA-256.
pub type KeyHash = [u8; 32];

/// SHA-256 of `secret` as presented (the whole string, prefix included).
pub fn hash_secret(secret: &[u8]) -> KeyHash {
    let d = digest::digest(&digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new secret from `random` (the caller's CSPRNG output).
pub fn secret_from(random: &[u8; SECRET_BYTES]) -> String {
    format!("{SECRET_PREFIX}{}", to_hex(random))
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A hash from its 64 hex digits (either case); `None` for anything else.
pub fn hash_from_hex(hex: &str) -> Option<KeyHash> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_sha256sum_and_round_trips_through_hex() {
        // printf %s 'mv-test' | sha256sum
        let h = hash_secret(b"mv-test");
        let hex = to_hex(&h);
        assert_eq!(
            hex,
            "a1da6233f7729656374164440c79567420306c83322db1b4848462cc90691aaa"
        );
        assert_eq!(hash_from_hex(&hex), Some(h));
        assert_eq!(hash_from_hex(&hex.to_uppercase()), Some(h));
        assert_eq!(hash_from_hex(&hex[1..]), None);
        assert_eq!(hash_from_hex(&format!("{}g", &hex[1..])), None);
    }

    #[test]
    fn secrets_have_the_prefix_and_256_bits() {
        let s = secret_from(&[0xab; SECRET_BYTES]);
        assert!(s.starts_with("mv-"));
        assert_eq!(s.len(), 3 + 64);
    }
}

//! The `x-request-id` rule both the proxy and the control plane's API apply: a client's id is
//! kept when it is 1 to [`MAX_LEN`] bytes of visible ASCII (`!` to `~`: no spaces, no control
//! bytes, nothing a log line or a header could be forged with); otherwise, or without one, a
//! new id is 128 random bits as 32 lowercase hex digits (the thread's user-space generator: no
//! syscall, no allocation).

/// The header's name.
pub const HEADER: &str = "x-request-id";

/// Longest client id kept (bytes).
pub const MAX_LEN: usize = 128;

/// Whether a client's id is kept.
pub fn usable(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_LEN && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// A new id: 32 lowercase hex digits.
pub fn generate() -> [u8; 32] {
    hex_digits(rand::random::<u128>())
}

/// `n` as `N` lowercase hex digits (its low `4 * N` bits).
pub fn hex_digits<const N: usize>(n: u128) -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; N];
    for (i, d) in out.iter_mut().rev().enumerate() {
        *d = DIGITS[((n >> (4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert!(usable(b"abc-123_X.y:z/="));
        assert!(usable(&[b'a'; MAX_LEN]));
        assert!(!usable(&[b'a'; MAX_LEN + 1]));
        for bad in [&b""[..], b"has space", b"tab\t", b"\xc3\xa9"] {
            assert!(!usable(bad), "{bad:?}");
        }
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(&hex_digits::<32>(0xab), b"000000000000000000000000000000ab");
        assert_eq!(&hex_digits::<4>(0x1234_5678), b"5678");
    }
}

//! Deterministic building blocks of the mocks' answers: FNV-1a 64 hashing (also used to prove
//! bodies were forwarded byte for byte), a splitmix64 stream, pseudo-embeddings derived from a
//! text's hash, cosine similarity and the base64 form OpenAI's `encoding_format: "base64"` uses.

use base64::Engine as _;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit, of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
    })
}

/// `hash` as 16 lowercase hex digits.
pub fn hex16(hash: u64) -> String {
    format!("{hash:016x}")
}

/// One step of the splitmix64 generator: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic pseudo-embedding of `text` with `dims` components.
///
/// The components come from a splitmix64 stream seeded with the FNV-1a hash of the text, each
/// mapped to `[-1, 1)`. With `normalize` the vector is scaled to unit L2 norm. The same text
/// always gives the same vector; different texts give (practically always) different ones.
pub fn embedding(text: &str, dims: usize, normalize: bool) -> Vec<f32> {
    let mut state = fnv1a64(text.as_bytes());
    let raw: Vec<f64> = (0..dims)
        .map(|_| {
            // The top 24 bits give a value in [0, 1) that f32 represents exactly.
            let unit = (splitmix64(&mut state) >> 40) as f64 / (1u64 << 24) as f64;
            unit * 2.0 - 1.0
        })
        .collect();
    let scale = if normalize {
        let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            1.0 / norm
        } else {
            1.0
        }
    } else {
        1.0
    };
    raw.into_iter().map(|x| (x * scale) as f32).collect()
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())) as f32
    }
}

/// An embedding as OpenAI's `encoding_format: "base64"` sends it: little-endian f32 bytes.
pub fn embedding_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(hex16(fnv1a64(b"a")), "af63dc4c8601ec8c");
        assert_eq!(hex16(1), "0000000000000001");
    }

    #[test]
    fn embedding_is_deterministic_and_distinct() {
        let a = embedding("hello world", 384, true);
        assert_eq!(a.len(), 384);
        assert_eq!(a, embedding("hello world", 384, true));
        assert_ne!(a, embedding("hello world!", 384, true));
        assert_ne!(embedding("x", 8, false), embedding("y", 8, false));
        assert!(embedding("", 0, true).is_empty());
    }

    #[test]
    fn embedding_normalisation() {
        let raw = embedding("some text", 64, false);
        assert!(raw.iter().all(|x| (-1.0..1.0).contains(x)));
        let norm_raw: f32 = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm_raw - 1.0).abs() > 1e-3,
            "raw vector should not be unit length"
        );
        let unit = embedding("some text", 64, true);
        let norm: f32 = unit.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm was {norm}");
        // Normalising only rescales: the direction is the same.
        assert!((cosine(&raw, &unit) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn base64_embedding_is_little_endian_f32() {
        assert_eq!(embedding_base64(&[1.0]), "AACAPw==");
    }
}

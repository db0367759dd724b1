//! Splits a batch's rows into pieces that fit every endpoint of the model: at most
//! `max_client_batch_size` inputs and `max_batch_tokens` estimated tokens per piece.
//!
//! Tokens are estimated without a tokenizer, conservatively: `bytes / 3 + 2` per text (BERT-like
//! WordPiece vocabularies average about four bytes of English per token; the 2 is `[CLS]` and
//! `[SEP]`). A row whose estimate alone exceeds the token budget travels alone, and TEI decides
//! (it truncates with `truncate`, else refuses that row).

/// TEI's default `--max-client-batch-size`, used when an endpoint's is unknown (0).
pub const DEFAULT_MAX_CLIENT_BATCH_SIZE: u32 = 32;
/// TEI's default `--max-batch-tokens`, used when an endpoint's is unknown (0).
pub const DEFAULT_MAX_BATCH_TOKENS: u32 = 16_384;

/// What one piece may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_inputs: usize,
    pub max_tokens: usize,
}

impl Limits {
    /// The tightest limits among endpoints' `(max_client_batch_size, max_batch_tokens)` (0:
    /// unknown, TEI's default), so a piece fits whichever endpoint it is sent to.
    pub fn tightest(endpoints: impl IntoIterator<Item = (u32, u32)>) -> Limits {
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        let (mut inputs, mut tokens) = (u32::MAX, u32::MAX);
        for (b, t) in endpoints {
            inputs = inputs.min(or(b, DEFAULT_MAX_CLIENT_BATCH_SIZE));
            tokens = tokens.min(or(t, DEFAULT_MAX_BATCH_TOKENS));
        }
        if inputs == u32::MAX {
            (inputs, tokens) = (DEFAULT_MAX_CLIENT_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS);
        }
        Limits {
            max_inputs: inputs as usize,
            max_tokens: tokens as usize,
        }
    }
}

/// The conservative token estimate of one text.
pub fn estimate_tokens(text: &str) -> usize {
    text.len() / 3 + 2
}

/// Groups `rows` (indices of texts, in order) into consecutive pieces within `limits`.
pub fn split(rows: &[u32], text: impl Fn(u32) -> usize, limits: Limits) -> Vec<Vec<u32>> {
    let mut pieces = Vec::new();
    let mut piece: Vec<u32> = Vec::new();
    let mut tokens = 0usize;
    for &row in rows {
        let t = text(row);
        let full = piece.len() >= limits.max_inputs.max(1)
            || (!piece.is_empty() && tokens + t > limits.max_tokens);
        if full {
            pieces.push(std::mem::take(&mut piece));
            tokens = 0;
        }
        piece.push(row);
        tokens += t;
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_keep_order_and_respect_both_limits() {
        let rows: Vec<u32> = (0..10).collect();
        let limits = Limits {
            max_inputs: 4,
            max_tokens: 1000,
        };
        let pieces = split(&rows, |_| 10, limits);
        assert_eq!(pieces, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        // 40 tokens each, 100 per piece: two rows per piece.
        let limits = Limits {
            max_inputs: 32,
            max_tokens: 100,
        };
        let pieces = split(&rows[..5], |_| 40, limits);
        assert_eq!(pieces, vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn an_oversized_row_travels_alone() {
        let limits = Limits {
            max_inputs: 8,
            max_tokens: 100,
        };
        let pieces = split(&[0, 1, 2], |r| if r == 1 { 500 } else { 10 }, limits);
        assert_eq!(pieces, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn limits_are_the_tightest_known_with_tei_defaults_for_unknown() {
        assert_eq!(
            Limits::tightest([(8, 0), (0, 512)]),
            Limits {
                max_inputs: 8,
                max_tokens: 512
            }
        );
        assert_eq!(
            Limits::tightest([]),
            Limits {
                max_inputs: 32,
                max_tokens: 16_384
            }
        );
        assert_eq!(estimate_tokens("abcdef"), 4);
    }
}

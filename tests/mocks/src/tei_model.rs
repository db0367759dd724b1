//! The deterministic "model" behind `mock-tei`, shared by its HTTP and gRPC front ends:
//! whitespace tokenization with hashed ids, dense/sparse/per-token embeddings, classification,
//! reranking and similarity scores, input validation, and TEI's error kinds with their HTTP
//! statuses and gRPC codes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;

use super::deterministic::{cosine, embedding, fnv1a64, splitmix64};
use super::tei::MAX_INPUT_LENGTH;

/// Id of the `[UNK]` token.
pub const UNK_ID: u32 = 100;
/// Id of the `[CLS]` token (added first with `add_special_tokens`).
pub const CLS_ID: u32 = 101;
/// Id of the `[SEP]` token (added last with `add_special_tokens`).
pub const SEP_ID: u32 = 102;
/// Labels of the mock classifier.
pub const LABELS: [&str; 2] = ["LABEL_0", "LABEL_1"];
/// Vocabulary entries remembered for `decode`, at most.
const VOCAB_CAP: usize = 1_000_000;

/// TEI's error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Empty input: 400 `empty`.
    Empty,
    /// Too many inputs, too long an input, too large a body: 413 `validation`.
    Validation,
    /// Malformed or mistyped JSON: 422 `validation`.
    Unprocessable,
    /// `--fail-after` triggered: 500 `backend`.
    Failed,
    /// Unhealthy or shutting down: 503 `unhealthy`.
    Unhealthy,
    /// Missing or wrong API key: 401 `unauthorized`.
    Unauthorized,
    /// More inputs in flight than `--max-concurrent-requests`: 429 `overloaded`.
    Overloaded,
}

/// An error as TEI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeiError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
}

impl TeiError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// An empty-input error.
    pub fn empty() -> Self {
        Self::new(ErrorKind::Empty, "`inputs` cannot be empty")
    }

    /// A validation error (413).
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// A malformed-request error (422).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unprocessable, message)
    }

    /// An injected backend failure (500).
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    /// An unhealthy-server error (503).
    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unhealthy, message)
    }

    /// An authentication error (401).
    pub fn unauthorized() -> Self {
        Self::new(ErrorKind::Unauthorized, "No valid auth token")
    }

    /// TEI's refusal beyond `--max-concurrent-requests` (429), with its message.
    pub fn overloaded() -> Self {
        Self::new(ErrorKind::Overloaded, "Model is overloaded")
    }

    /// The HTTP status TEI uses for this error.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::Empty => StatusCode::BAD_REQUEST,
            ErrorKind::Validation => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `error_type` string of TEI's error body.
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::Empty => "empty",
            ErrorKind::Validation | ErrorKind::Unprocessable => "validation",
            ErrorKind::Failed => "backend",
            ErrorKind::Unhealthy => "unhealthy",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Overloaded => "overloaded",
        }
    }

    /// The gRPC status TEI uses for this error.
    pub fn to_status(&self) -> tonic::Status {
        let code = match self.kind {
            ErrorKind::Empty | ErrorKind::Validation | ErrorKind::Unprocessable => {
                tonic::Code::InvalidArgument
            }
            ErrorKind::Failed | ErrorKind::Unhealthy => tonic::Code::Unavailable,
            ErrorKind::Unauthorized => tonic::Code::Unauthenticated,
            ErrorKind::Overloaded => tonic::Code::ResourceExhausted,
        };
        tonic::Status::new(code, self.message.clone())
    }
}

/// One token of [`tokenize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Deterministic id (hash of the text; 101/102 for `[CLS]`/`[SEP]`).
    pub id: u32,
    /// The token text.
    pub text: String,
    /// Whether this is a special token.
    pub special: bool,
    /// Byte offset of the first byte (none for special tokens).
    pub start: Option<u32>,
    /// Byte offset after the last byte (none for special tokens).
    pub stop: Option<u32>,
}

/// The id of a (non-special) word: a hash in `1000..30000`.
pub fn token_id(word: &str) -> u32 {
    1000 + (fnv1a64(word.as_bytes()) % 29_000) as u32
}

/// Whitespace-separated words with their byte offsets `(start, stop, word)`.
pub fn word_spans(text: &str) -> Vec<(usize, usize, &str)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                spans.push((s, i, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len(), &text[s..]));
    }
    spans
}

/// Tokens of `text` (`[CLS] words… [SEP]` with `add_special_tokens`).
pub fn tokenize(text: &str, add_special_tokens: bool) -> Vec<Token> {
    let special = |id, text: &str| Token {
        id,
        text: text.to_string(),
        special: true,
        start: None,
        stop: None,
    };
    let mut tokens = Vec::new();
    if add_special_tokens {
        tokens.push(special(CLS_ID, "[CLS]"));
    }
    tokens.extend(
        word_spans(text)
            .into_iter()
            .map(|(start, stop, word)| Token {
                id: token_id(word),
                text: word.to_string(),
                special: false,
                start: u32::try_from(start).ok(),
                stop: u32::try_from(stop).ok(),
            }),
    );
    if add_special_tokens {
        tokens.push(special(SEP_ID, "[SEP]"));
    }
    tokens
}

/// Tokens the model would see for `text` (words plus `[CLS]` and `[SEP]`).
pub fn count_tokens(text: &str) -> usize {
    word_spans(text).len() + 2
}

/// Checks the number of inputs of a request against `max` (`--max-client-batch-size`).
pub fn check_batch(n: usize, max: usize) -> Result<(), TeiError> {
    if n == 0 {
        Err(TeiError::empty())
    } else if n > max {
        Err(TeiError::validation(format!(
            "batch size {n} > maximum allowed batch size {max}"
        )))
    } else {
        Ok(())
    }
}

/// Validates one input: refuses empty text, and text longer than the maximum input length
/// unless `truncate`, in which case words are dropped on the right (or the left).
pub fn prepare(text: &str, truncate: bool, left: bool) -> Result<Cow<'_, str>, TeiError> {
    if text.is_empty() {
        return Err(TeiError::empty());
    }
    let words = word_spans(text);
    let tokens = words.len() + 2;
    if tokens <= MAX_INPUT_LENGTH {
        return Ok(Cow::Borrowed(text));
    }
    if !truncate {
        return Err(TeiError::validation(format!(
            "Input validation error: `inputs` must have less than {MAX_INPUT_LENGTH} tokens. \
             Given: {tokens}"
        )));
    }
    let keep = MAX_INPUT_LENGTH - 2;
    let kept = if left {
        &words[words.len() - keep..]
    } else {
        &words[..keep]
    };
    Ok(Cow::Owned(
        kept.iter()
            .map(|(_, _, w)| *w)
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

/// The first of TEI's Matryoshka checks (`embed_pooled` in TEI's `core/src/infer.rs`), made
/// before the input is tokenised: `dimensions` must be positive.
pub fn check_dimensions_positive(dimensions: Option<usize>) -> Result<(), TeiError> {
    if dimensions == Some(0) {
        return Err(TeiError::unprocessable(
            "Input validation error: `dimensions` should be positive",
        ));
    }
    Ok(())
}

/// The pooled embedding TEI returns for `text`: the model's `model_dims` components, cut to
/// the first `dimensions` when asked (Matryoshka), *then* normalised when `normalize` — TEI's
/// order, so a truncated vector has unit length again. More `dimensions` than the model has is
/// TEI's validation error (checked after the input, as TEI does).
///
/// The deterministic components are a stream, so the first `k` of the full vector are exactly
/// the `k`-dimensional embedding's: truncating then normalising gives `embedding(text, k, ..)`.
pub fn pooled_embedding(
    text: &str,
    model_dims: usize,
    normalize: bool,
    dimensions: Option<usize>,
) -> Result<Vec<f32>, TeiError> {
    check_dimensions_positive(dimensions)?;
    let dims = match dimensions {
        Some(d) if d > model_dims => {
            return Err(TeiError::unprocessable(
                "Input validation error: `dimensions` should be smaller than the maximum \
                 embedding dimension.",
            ))
        }
        Some(d) => d,
        None => model_dims,
    };
    Ok(embedding(text, dims, normalize))
}

/// A sparse embedding: one `(token id, weight)` per distinct word, sorted by id.
pub fn sparse(text: &str) -> Vec<(u32, f32)> {
    let mut entries: Vec<(u32, f32)> = word_spans(text)
        .into_iter()
        .map(|(_, _, word)| {
            let hash = fnv1a64(word.as_bytes());
            let weight = 0.01 + ((hash >> 11) as f64 / (1u64 << 53) as f64) as f32;
            (token_id(word), weight)
        })
        .collect();
    entries.sort_by_key(|(id, _)| *id);
    entries.dedup_by_key(|(id, _)| *id);
    entries
}

/// One raw (unnormalised) vector per whitespace word.
pub fn token_embeddings(text: &str, dims: usize) -> Vec<Vec<f32>> {
    word_spans(text)
        .into_iter()
        .map(|(_, _, word)| embedding(word, dims, false))
        .collect()
}

/// Classifies one text or one pair: `(label, score)` sorted by score, highest first. Scores are
/// softmax probabilities, or logits with `raw_scores`.
pub fn predict(parts: &[&str], raw_scores: bool) -> Vec<(&'static str, f32)> {
    let mut state = fnv1a64(parts.join("\u{1f}").as_bytes());
    let logits: Vec<f64> = LABELS
        .iter()
        .map(|_| (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64 * 8.0 - 4.0)
        .collect();
    let scores: Vec<f64> = if raw_scores {
        logits
    } else {
        let max = logits.iter().copied().fold(f64::MIN, f64::max);
        let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        exps.iter().map(|e| e / sum).collect()
    };
    let mut out: Vec<(&'static str, f32)> = LABELS
        .iter()
        .zip(scores)
        .map(|(label, score)| (*label, score as f32))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Relevance of `text` to `query`. The logit grows with the share of query words found in the
/// text (plus the cosine of their embeddings); the score is its sigmoid, or the logit itself
/// with `raw_scores`.
pub fn rerank_score(query: &str, text: &str, raw_scores: bool, dims: usize) -> f32 {
    let query_words: Vec<&str> = word_spans(query).into_iter().map(|(_, _, w)| w).collect();
    let words: Vec<&str> = word_spans(text).into_iter().map(|(_, _, w)| w).collect();
    let overlap = if query_words.is_empty() {
        0.0
    } else {
        query_words.iter().filter(|w| words.contains(w)).count() as f64 / query_words.len() as f64
    };
    let similarity = f64::from(cosine(
        &embedding(query, dims, true),
        &embedding(text, dims, true),
    ));
    let logit = 8.0 * overlap - 4.0 + similarity;
    let score = if raw_scores {
        logit
    } else {
        1.0 / (1.0 + (-logit).exp())
    };
    score as f32
}

/// `(index, score)` pairs sorted by score, highest first (ties by index).
pub fn rank(scores: impl IntoIterator<Item = f32>) -> Vec<(usize, f32)> {
    let mut ranks: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranks.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranks
}

/// Relevance of each text to `query`, as `(index, score)` sorted by score, highest first.
pub fn rerank(query: &str, texts: &[String], raw_scores: bool, dims: usize) -> Vec<(usize, f32)> {
    rank(
        texts
            .iter()
            .map(|t| rerank_score(query, t, raw_scores, dims)),
    )
}

/// Cosine similarity of `source` with each sentence (normalised embeddings).
pub fn similarity(source: &str, sentences: &[String], dims: usize) -> Vec<f32> {
    let source = embedding(source, dims, true);
    sentences
        .iter()
        .map(|s| cosine(&source, &embedding(s, dims, true)))
        .collect()
}

/// Token ids seen by `tokenize`, so `decode` can map them back to text.
#[derive(Debug, Default)]
pub struct Vocab {
    words: Mutex<HashMap<u32, String>>,
}

impl Vocab {
    /// Remembers the (non-special) tokens.
    pub fn learn(&self, tokens: &[Token]) {
        let mut words = self.words.lock().unwrap_or_else(|e| e.into_inner());
        for token in tokens.iter().filter(|t| !t.special) {
            if words.len() >= VOCAB_CAP && !words.contains_key(&token.id) {
                break;
            }
            words.insert(token.id, token.text.clone());
        }
    }

    /// Text of `ids`, space-separated; unseen ids decode to `[UNK]`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let words = self.words.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter()
            .filter_map(|id| match *id {
                CLS_ID if skip_special_tokens => None,
                SEP_ID if skip_special_tokens => None,
                CLS_ID => Some("[CLS]".to_string()),
                SEP_ID => Some("[SEP]".to_string()),
                id => Some(
                    words
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| "[UNK]".to_string()),
                ),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_offsets_and_specials() {
        let tokens = tokenize("  héllo  world", true);
        assert_eq!(tokens.len(), 4);
        assert_eq!((tokens[0].id, tokens[0].special), (CLS_ID, true));
        assert_eq!(tokens[1].text, "héllo");
        assert_eq!((tokens[1].start, tokens[1].stop), (Some(2), Some(8)));
        assert_eq!(tokens[2].id, token_id("world"));
        assert_eq!(tokens[3].id, SEP_ID);
        assert_eq!(tokenize("a b", false).len(), 2);
    }

    #[test]
    fn vocab_round_trip() {
        let vocab = Vocab::default();
        let tokens = tokenize("the quick fox", true);
        vocab.learn(&tokens);
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(vocab.decode(&ids, true), "the quick fox");
        assert_eq!(vocab.decode(&ids, false), "[CLS] the quick fox [SEP]");
        assert_eq!(vocab.decode(&[7], true), "[UNK]");
    }

    #[test]
    fn validation() {
        assert_eq!(check_batch(0, 4).map_err(|e| e.kind), Err(ErrorKind::Empty));
        assert_eq!(
            check_batch(5, 4).map_err(|e| e.status()),
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert!(check_batch(4, 4).is_ok());
        assert_eq!(
            prepare("", false, false).map_err(|e| e.kind),
            Err(ErrorKind::Empty)
        );
        let long = vec!["w"; 600].join(" ");
        assert_eq!(
            prepare(&long, false, false).map_err(|e| e.kind),
            Err(ErrorKind::Validation)
        );
        let cut = prepare(&long, true, false).expect("truncated");
        assert_eq!(count_tokens(&cut), MAX_INPUT_LENGTH);
    }

    #[test]
    fn matryoshka_truncates_then_normalises() {
        let full_raw = embedding("some text", 16, false);
        let cut = pooled_embedding("some text", 16, true, Some(4)).expect("4 of 16");
        // TEI's order: the first 4 raw components, scaled to unit length.
        let norm = full_raw[..4]
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        let expected: Vec<f32> = full_raw[..4]
            .iter()
            .map(|x| (f64::from(*x) / norm) as f32)
            .collect();
        assert_eq!(cut, expected);
        assert_ne!(cut[..], embedding("some text", 16, true)[..4]);
        let raw = pooled_embedding("some text", 16, false, Some(4)).expect("raw");
        assert_eq!(raw, full_raw[..4]);
        assert_eq!(
            pooled_embedding("some text", 16, true, Some(16)).expect("all"),
            embedding("some text", 16, true)
        );
        assert_eq!(
            pooled_embedding("some text", 16, true, None).expect("none"),
            embedding("some text", 16, true)
        );
        for bad in [0, 17] {
            let e = pooled_embedding("x", 16, true, Some(bad)).expect_err("refused");
            assert_eq!(
                (e.kind, e.error_type()),
                (ErrorKind::Unprocessable, "validation")
            );
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert!(e.message.contains("`dimensions`"), "{}", e.message);
        }
    }

    #[test]
    fn scores_are_deterministic_and_ordered() {
        let p = predict(&["some text"], false);
        assert_eq!(p, predict(&["some text"], false));
        assert!((p.iter().map(|(_, s)| s).sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(p[0].1 >= p[1].1);
        let texts = vec![
            "unrelated words".to_string(),
            "deep learning is fun".to_string(),
        ];
        let ranks = rerank("what is deep learning", &texts, false, 32);
        assert_eq!(ranks[0].0, 1);
        assert!(ranks[0].1 > ranks[1].1);
        let sims = similarity("a b", &["a b".to_string(), "c".to_string()], 32);
        assert!((sims[0] - 1.0).abs() < 1e-5 && sims[1] < 0.99);
        let sp = sparse("b a b");
        assert_eq!(sp.len(), 2);
        assert!(sp.windows(2).all(|w| w[0].0 < w[1].0));
    }
}

//! Per-message logic of `mock-tei`'s gRPC services: each function answers one `tei.v1` request
//! message (unary call or one message of a stream) from the deterministic model, with TEI's
//! `Metadata` (sizes and timings).

use std::time::Instant;

use multiverse_proto::tei::v1 as pb;

use super::tei::TeiCore;
use super::tei_batching::{Load, Timing};
use super::tei_model::{self as model, TeiError};

/// What the inference step needs of an answer: the load it puts on the model (`None` for the
/// tokenizer's answers) and where its timings go once the queue and latency are known.
pub(crate) trait Reply {
    fn load(&self) -> Option<Load>;
    fn set_timing(&mut self, _timing: Timing) {}
}

fn load_of(metadata: Option<&pb::Metadata>, inputs: usize) -> Option<Load> {
    Some(Load {
        inputs: u32::try_from(inputs).unwrap_or(u32::MAX),
        tokens: metadata.map_or(0, |m| m.compute_tokens),
    })
}

/// TEI's `Metadata` of a simulated batch: the queue and inference times, the total grown by
/// both (it was measured before them).
fn add_timing(metadata: Option<&mut pb::Metadata>, timing: Timing) {
    if let Some(m) = metadata {
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        m.queue_time_ns = ns(timing.queue);
        m.inference_time_ns = ns(timing.inference);
        m.total_time_ns = m
            .total_time_ns
            .saturating_add(m.queue_time_ns)
            .saturating_add(m.inference_time_ns);
    }
}

macro_rules! model_reply {
    ($($ty:ty => |$r:ident| $inputs:expr),* $(,)?) => {$(
        impl Reply for $ty {
            fn load(&self) -> Option<Load> {
                let $r = self;
                load_of(self.metadata.as_ref(), $inputs)
            }
            fn set_timing(&mut self, timing: Timing) {
                add_timing(self.metadata.as_mut(), timing);
            }
        }
    )*};
}

model_reply! {
    pb::EmbedResponse => |_r| 1,
    pb::EmbedSparseResponse => |_r| 1,
    pb::EmbedAllResponse => |_r| 1,
    pb::PredictResponse => |_r| 1,
    // TEI queues each (query, text) pair of a rerank.
    pb::RerankResponse => |r| r.ranks.len(),
}

impl Reply for pb::EncodeResponse {
    fn load(&self) -> Option<Load> {
        None
    }
}

impl Reply for pb::DecodeResponse {
    fn load(&self) -> Option<Load> {
        None
    }
}

pub(crate) fn metadata<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    start: Instant,
) -> Option<pb::Metadata> {
    let (chars, tokens) = texts.into_iter().fold((0usize, 0usize), |(c, t), text| {
        (c + text.chars().count(), t + model::count_tokens(text))
    });
    let total = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    Some(pb::Metadata {
        compute_chars: u32::try_from(chars).unwrap_or(u32::MAX),
        compute_tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
        total_time_ns: total,
        tokenization_time_ns: 0,
        queue_time_ns: 0,
        inference_time_ns: total,
    })
}

pub(crate) fn left(direction: i32) -> bool {
    direction == pb::TruncationDirection::Left as i32
}

pub(crate) fn embed_one(
    core: &TeiCore,
    req: pb::EmbedRequest,
    start: Instant,
) -> Result<pb::EmbedResponse, TeiError> {
    let dimensions = req.dimensions.map(|d| d as usize);
    model::check_dimensions_positive(dimensions)?;
    let text = model::prepare(&req.inputs, req.truncate, left(req.truncation_direction))?;
    // `normalize` absent means TEI's default (normalised), as on HTTP.
    let normalize = req.normalize.unwrap_or(true);
    Ok(pb::EmbedResponse {
        embeddings: model::pooled_embedding(&text, core.args.dims, normalize, dimensions)?,
        metadata: metadata([text.as_ref()], start),
    })
}

pub(crate) fn embed_sparse_one(
    _core: &TeiCore,
    req: pb::EmbedSparseRequest,
    start: Instant,
) -> Result<pb::EmbedSparseResponse, TeiError> {
    let text = model::prepare(&req.inputs, req.truncate, left(req.truncation_direction))?;
    let sparse_embeddings = model::sparse(&text)
        .into_iter()
        .map(|(index, value)| pb::SparseValue { index, value })
        .collect();
    Ok(pb::EmbedSparseResponse {
        sparse_embeddings,
        metadata: metadata([text.as_ref()], start),
    })
}

pub(crate) fn embed_all_one(
    core: &TeiCore,
    req: pb::EmbedAllRequest,
    start: Instant,
) -> Result<pb::EmbedAllResponse, TeiError> {
    let text = model::prepare(&req.inputs, req.truncate, left(req.truncation_direction))?;
    let token_embeddings = model::token_embeddings(&text, core.args.dims)
        .into_iter()
        .map(|embeddings| pb::TokenEmbedding { embeddings })
        .collect();
    Ok(pb::EmbedAllResponse {
        token_embeddings,
        metadata: metadata([text.as_ref()], start),
    })
}

pub(crate) fn predictions(parts: &[&str], raw_scores: bool) -> Vec<pb::Prediction> {
    model::predict(parts, raw_scores)
        .into_iter()
        .map(|(label, score)| pb::Prediction {
            score,
            label: label.to_string(),
        })
        .collect()
}

pub(crate) fn predict_one(
    _core: &TeiCore,
    req: pb::PredictRequest,
    start: Instant,
) -> Result<pb::PredictResponse, TeiError> {
    let text = model::prepare(&req.inputs, req.truncate, left(req.truncation_direction))?;
    Ok(pb::PredictResponse {
        predictions: predictions(&[&text], req.raw_scores),
        metadata: metadata([text.as_ref()], start),
    })
}

pub(crate) fn predict_pair_one(
    _core: &TeiCore,
    req: pb::PredictPairRequest,
    start: Instant,
) -> Result<pb::PredictResponse, TeiError> {
    if req.inputs.len() != 2 {
        return Err(TeiError::unprocessable(format!(
            "`inputs` must have exactly two elements, got {}",
            req.inputs.len()
        )));
    }
    let dir = left(req.truncation_direction);
    let first = model::prepare(&req.inputs[0], req.truncate, dir)?;
    let second = model::prepare(&req.inputs[1], req.truncate, dir)?;
    Ok(pb::PredictResponse {
        predictions: predictions(&[&first, &second], req.raw_scores),
        metadata: metadata([first.as_ref(), second.as_ref()], start),
    })
}

/// Ranks `(query, text)` pairs (one query per text, as `RerankStream` allows).
pub(crate) fn ranks(
    core: &TeiCore,
    pairs: &[(String, String)],
    truncate: bool,
    direction: i32,
    raw_scores: bool,
    return_text: bool,
) -> Result<Vec<pb::Rank>, TeiError> {
    model::check_batch(pairs.len(), core.args.max_client_batch_size)?;
    for (query, text) in pairs {
        model::prepare(query, truncate, left(direction))?;
        model::prepare(text, truncate, left(direction))?;
    }
    let scores = pairs
        .iter()
        .map(|(q, t)| model::rerank_score(q, t, raw_scores, core.args.dims));
    Ok(model::rank(scores)
        .into_iter()
        .map(|(index, score)| pb::Rank {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            text: return_text.then(|| pairs[index].1.clone()),
            score,
        })
        .collect())
}

pub(crate) fn rerank_one(
    core: &TeiCore,
    req: pb::RerankRequest,
    start: Instant,
) -> Result<pb::RerankResponse, TeiError> {
    let pairs: Vec<(String, String)> = req
        .texts
        .iter()
        .map(|t| (req.query.clone(), t.clone()))
        .collect();
    let ranks = ranks(
        core,
        &pairs,
        req.truncate,
        req.truncation_direction,
        req.raw_scores,
        req.return_text,
    )?;
    let texts = std::iter::once(req.query.as_str()).chain(req.texts.iter().map(String::as_str));
    Ok(pb::RerankResponse {
        ranks,
        metadata: metadata(texts, start),
    })
}

pub(crate) fn tokenize_one(
    core: &TeiCore,
    req: pb::EncodeRequest,
    _start: Instant,
) -> Result<pb::EncodeResponse, TeiError> {
    let tokens = model::tokenize(&req.inputs, req.add_special_tokens);
    core.vocab.learn(&tokens);
    Ok(pb::EncodeResponse {
        tokens: tokens
            .into_iter()
            .map(|t| pb::SimpleToken {
                id: t.id,
                text: t.text,
                special: t.special,
                start: t.start,
                stop: t.stop,
            })
            .collect(),
    })
}

pub(crate) fn decode_one(
    core: &TeiCore,
    req: pb::DecodeRequest,
    _start: Instant,
) -> Result<pb::DecodeResponse, TeiError> {
    Ok(pb::DecodeResponse {
        text: core.vocab.decode(&req.ids, req.skip_special_tokens),
    })
}

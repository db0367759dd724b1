//! Request handling of `mock-tei`'s HTTP model routes: TEI's request bodies (serde types), input
//! validation and the JSON answers computed from the deterministic model.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::deterministic::embedding_base64;
use super::tei::TeiCore;
use super::tei_batching::Load;
use super::tei_model::{self as model, TeiError};

/// The model routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `POST /embed`.
    Embed,
    /// `POST /embed_sparse`.
    EmbedSparse,
    /// `POST /embed_all`.
    EmbedAll,
    /// `POST /rerank`.
    Rerank,
    /// `POST /predict`.
    Predict,
    /// `POST /similarity`.
    Similarity,
    /// `POST /tokenize`.
    Tokenize,
    /// `POST /decode`.
    Decode,
    /// `POST /v1/embeddings` (OpenAI shape).
    OpenAi,
}

/// A successful answer with the sizes reported in TEI's timing headers.
pub(crate) struct Answer {
    /// The JSON body.
    pub body: Value,
    /// Characters processed.
    pub chars: usize,
    /// Tokens processed.
    pub tokens: usize,
    /// What the model is asked for (`None`: tokenizer only).
    pub load: Option<Load>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
enum Direction {
    #[default]
    #[serde(rename = "right", alias = "Right")]
    Right,
    #[serde(rename = "left", alias = "Left")]
    Left,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    #[serde(default = "yes")]
    normalize: bool,
    /// Matryoshka truncation (`/embed` only; TEI's sparse and all-token routes ignore it).
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct RerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
}

#[derive(Debug, Deserialize)]
struct PredictRequest {
    inputs: Value,
    #[serde(default)]
    raw_scores: bool,
}

#[derive(Debug, Deserialize)]
struct SimilarityInput {
    source_sentence: String,
    sentences: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SimilarityRequest {
    inputs: SimilarityInput,
}

#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ids {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
struct DecodeRequest {
    ids: Ids,
    #[serde(default = "yes")]
    skip_special_tokens: bool,
}

#[derive(Debug, Deserialize)]
struct OpenAiRequest {
    input: Inputs,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TeiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        TeiError::unprocessable(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    })
}

/// Validates a batch of texts (count, emptiness, length) and truncates where allowed.
fn prepare_all(
    core: &TeiCore,
    texts: Vec<String>,
    truncate: Option<bool>,
    direction: Direction,
) -> Result<Vec<String>, TeiError> {
    model::check_batch(texts.len(), core.args.max_client_batch_size)?;
    let truncate = truncate.unwrap_or(core.args.auto_truncate);
    let left = matches!(direction, Direction::Left);
    texts
        .iter()
        .map(|t| model::prepare(t, truncate, left).map(|t| t.into_owned()))
        .collect()
}

fn sizes<'a>(texts: impl IntoIterator<Item = &'a String>) -> (usize, usize) {
    texts.into_iter().fold((0, 0), |(chars, tokens), t| {
        (chars + t.chars().count(), tokens + model::count_tokens(t))
    })
}

/// Answers one model request body for `route`.
pub(crate) fn handle(core: &TeiCore, route: Route, bytes: &[u8]) -> Result<Answer, TeiError> {
    let dims = core.args.dims;
    // Each arm: the body, (chars, tokens), and how many inputs go to the model.
    let (body, (chars, tokens), inputs) = match route {
        Route::Embed => {
            let req: EmbedRequest = parse(bytes)?;
            let texts = req.inputs.into_vec();
            core.record_embed_batch(texts.len());
            model::check_dimensions_positive(req.dimensions)?;
            let texts = prepare_all(core, texts, req.truncate, req.truncation_direction)?;
            let vectors = texts
                .iter()
                .map(|t| model::pooled_embedding(t, dims, req.normalize, req.dimensions))
                .collect::<Result<Vec<_>, _>>()?;
            (json!(vectors), sizes(&texts), Some(texts.len()))
        }
        Route::EmbedSparse | Route::EmbedAll => {
            let req: EmbedRequest = parse(bytes)?;
            let texts = prepare_all(
                core,
                req.inputs.into_vec(),
                req.truncate,
                req.truncation_direction,
            )?;
            let body = if route == Route::EmbedAll {
                let all: Vec<Vec<Vec<f32>>> = texts
                    .iter()
                    .map(|t| model::token_embeddings(t, dims))
                    .collect();
                json!(all)
            } else {
                let sparse: Vec<Value> = texts
                    .iter()
                    .map(|t| {
                        let values: Vec<Value> = model::sparse(t)
                            .into_iter()
                            .map(|(index, value)| json!({"index": index, "value": value}))
                            .collect();
                        Value::Array(values)
                    })
                    .collect();
                Value::Array(sparse)
            };
            (body, sizes(&texts), Some(texts.len()))
        }
        Route::Rerank => {
            let req: RerankRequest = parse(bytes)?;
            let mut all = vec![req.query];
            all.extend(req.texts);
            model::check_batch(all.len() - 1, core.args.max_client_batch_size)?;
            let truncate = req.truncate.unwrap_or(core.args.auto_truncate);
            let left = matches!(req.truncation_direction, Direction::Left);
            for t in &all {
                model::prepare(t, truncate, left)?;
            }
            let ranks: Vec<Value> = model::rerank(&all[0], &all[1..], req.raw_scores, dims)
                .into_iter()
                .map(|(index, score)| {
                    let mut rank = json!({"index": index, "score": score});
                    if req.return_text {
                        rank["text"] = json!(all[index + 1]);
                    }
                    rank
                })
                .collect();
            (Value::Array(ranks), sizes(&all), Some(all.len() - 1))
        }
        Route::Predict => {
            let req: PredictRequest = parse(bytes)?;
            let (batched, seqs) = predict_inputs(req.inputs)?;
            model::check_batch(seqs.len(), core.args.max_client_batch_size)?;
            let mut results = Vec::with_capacity(seqs.len());
            for seq in &seqs {
                for t in seq {
                    model::prepare(t, true, false)?;
                }
                let parts: Vec<&str> = seq.iter().map(String::as_str).collect();
                let preds: Vec<Value> = model::predict(&parts, req.raw_scores)
                    .into_iter()
                    .map(|(label, score)| json!({"score": score, "label": label}))
                    .collect();
                results.push(Value::Array(preds));
            }
            let body = if batched {
                Value::Array(results)
            } else {
                results.into_iter().next().unwrap_or_else(|| json!([]))
            };
            (body, sizes(seqs.iter().flatten()), Some(seqs.len()))
        }
        Route::Similarity => {
            let req: SimilarityRequest = parse(bytes)?;
            let input = req.inputs;
            model::check_batch(input.sentences.len(), core.args.max_client_batch_size)?;
            model::prepare(&input.source_sentence, true, false)?;
            for s in &input.sentences {
                model::prepare(s, true, false)?;
            }
            let scores = model::similarity(&input.source_sentence, &input.sentences, dims);
            let counted = sizes(std::iter::once(&input.source_sentence).chain(&input.sentences));
            (json!(scores), counted, Some(input.sentences.len() + 1))
        }
        Route::Tokenize => {
            let req: TokenizeRequest = parse(bytes)?;
            let texts = req.inputs.into_vec();
            model::check_batch(texts.len(), core.args.max_client_batch_size)?;
            let all: Vec<Value> = texts
                .iter()
                .map(|t| {
                    let tokens = model::tokenize(t, req.add_special_tokens);
                    core.vocab.learn(&tokens);
                    let tokens: Vec<Value> = tokens
                        .into_iter()
                        .map(|t| {
                            json!({"id": t.id, "text": t.text, "special": t.special,
                                   "start": t.start, "stop": t.stop})
                        })
                        .collect();
                    Value::Array(tokens)
                })
                .collect();
            (Value::Array(all), sizes(&texts), None)
        }
        Route::Decode => {
            let req: DecodeRequest = parse(bytes)?;
            let batch = match req.ids {
                Ids::One(ids) => vec![ids],
                Ids::Many(batch) => batch,
            };
            model::check_batch(batch.len(), core.args.max_client_batch_size)?;
            let texts: Vec<String> = batch
                .iter()
                .map(|ids| core.vocab.decode(ids, req.skip_special_tokens))
                .collect();
            let tokens = batch.iter().map(Vec::len).sum();
            (json!(texts), (0, tokens), None)
        }
        Route::OpenAi => {
            let req: OpenAiRequest = parse(bytes)?;
            let base64 = match req.encoding_format.as_deref() {
                None | Some("float") => false,
                Some("base64") => true,
                Some(other) => {
                    return Err(TeiError::unprocessable(format!(
                        "unknown encoding_format `{other}`"
                    )))
                }
            };
            model::check_dimensions_positive(req.dimensions)?;
            let texts = prepare_all(core, req.input.into_vec(), None, Direction::Right)?;
            let data = texts
                .iter()
                .enumerate()
                .map(|(index, t)| {
                    let vector = model::pooled_embedding(t, dims, true, req.dimensions)?;
                    let embedding = if base64 {
                        json!(embedding_base64(&vector))
                    } else {
                        json!(vector)
                    };
                    Ok(json!({"object": "embedding", "embedding": embedding, "index": index}))
                })
                .collect::<Result<Vec<Value>, TeiError>>()?;
            let (chars, tokens) = sizes(&texts);
            let body = json!({
                "object": "list",
                "data": data,
                "model": core.served_model_name(),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            });
            (body, (chars, tokens), Some(texts.len()))
        }
    };
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(Answer {
        body,
        chars,
        tokens,
        load: inputs.map(|n| Load {
            inputs: to_u32(n),
            tokens: to_u32(tokens),
        }),
    })
}

/// `/predict` inputs: a string, a pair `[a, b]`, or a batch of `[a]` / `[a, b]`.
/// Returns whether it was a batch, and the sequences.
fn predict_inputs(inputs: Value) -> Result<(bool, Vec<Vec<String>>), TeiError> {
    let bad = || {
        TeiError::unprocessable(
            "`inputs` must be a string, a pair of strings [string, string] or a batch of \
             mixed strings and pairs [[string], [string, string], ...]",
        )
    };
    let sequence = |items: &[Value]| -> Result<Vec<String>, TeiError> {
        if items.is_empty() || items.len() > 2 {
            return Err(bad());
        }
        items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect()
    };
    match inputs {
        Value::String(s) => Ok((false, vec![vec![s]])),
        Value::Array(items) if items.is_empty() => Err(TeiError::empty()),
        Value::Array(items) if items[0].is_string() => Ok((false, vec![sequence(&items)?])),
        Value::Array(items) => {
            let seqs = items
                .iter()
                .map(|item| item.as_array().ok_or_else(bad).and_then(|s| sequence(s)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((true, seqs))
        }
        _ => Err(bad()),
    }
}

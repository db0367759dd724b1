//! `multiverse-mocks`: the two mock backends that tests, benchmarks and the demo run against as
//! stand-ins for real model servers (no GPU or model needed):
//!
//! - `mock-openai` ([`openai`]): an OpenAI-compatible server (models, chat and text completions
//!   with real SSE streaming, embeddings), with an optional simulated prefix cache
//!   ([`prefix_cache`]: faster time to first token on a hit) and engine load metrics in vLLM,
//!   llama.cpp or SGLang style with a settable fake load ([`engine_load`]).
//! - `mock-tei` ([`tei`]): a stand-in for Hugging Face TEI's `text-embeddings-router`, accepting
//!   TEI's command line ([`tei_args`]) and serving either TEI's HTTP API ([`tei_http`]) or its
//!   `tei.v1` gRPC API ([`tei_grpc`]) from a deterministic "model" ([`tei_model`]), with TEI's
//!   Prometheus metrics ([`tei_metrics`]), an optional simulation of TEI's batching queue
//!   ([`tei_batching`]) and process resources for supervisor tests ([`tei_resources`]: RSS
//!   ballast, simulated per-process VRAM).
//!
//! Both share plumbing ([`common`]), produce deterministic outputs ([`deterministic`],
//! [`embedding`]) and expose what they received ([`fnv1a64`] of each request body) so tests can
//! prove a proxy forwarded bytes unchanged. Private helper modules hold request parsing and
//! per-message logic.

pub mod common;
pub mod deterministic;
pub mod engine_load;
pub mod openai;
mod openai_request;
mod openai_stream;
pub mod prefix_cache;
pub mod tei;
pub mod tei_args;
pub mod tei_batching;
pub mod tei_grpc;
mod tei_grpc_handlers;
pub mod tei_http;
mod tei_http_handlers;
pub mod tei_metrics;
pub mod tei_model;
pub mod tei_resources;
pub mod tls;

pub use deterministic::{embedding, fnv1a64};

//! Multiverse's benchmark and test support crate.
//!
//! Its main job is to provide two mock backends that tests, benchmarks and the demo use as
//! stand-ins for real model servers:
//!
//! - `mock-openai` ([`mock::openai`]): an OpenAI-compatible server (models, chat and text
//!   completions with real SSE streaming, embeddings).
//! - `mock-tei` ([`mock::tei`]): a stand-in for Hugging Face TEI's `text-embeddings-router`,
//!   accepting TEI's command line and serving either TEI's HTTP API or its `tei.v1` gRPC API.
//!
//! Both produce deterministic outputs ([`embedding`]) and expose what they received
//! ([`fnv1a64`] of each request body) so tests can prove a proxy forwarded bytes unchanged.

pub mod load;
pub mod mock;

pub use mock::deterministic::{embedding, fnv1a64};

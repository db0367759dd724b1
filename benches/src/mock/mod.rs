//! The mock backends: shared plumbing ([`common`]), deterministic outputs ([`deterministic`]),
//! the OpenAI-compatible server ([`openai`]) and the TEI stand-in ([`tei`], with its HTTP front
//! end in [`tei_http`], its gRPC front end in [`tei_grpc`] and its deterministic "model" in
//! [`tei_model`]). Private helper modules hold request parsing and per-message logic.

pub mod common;
pub mod deterministic;
pub mod openai;
mod openai_request;
mod openai_stream;
pub mod tei;
pub mod tei_grpc;
mod tei_grpc_handlers;
pub mod tei_http;
mod tei_http_handlers;
pub mod tei_model;

//! Multiverse's wire types, shared by the control plane, the proxy and the mock backends.
//!
//! - [`discovery::v1`]: the route-discovery stream between control planes and proxies, modelled
//!   on Envoy's state-of-the-world xDS (versioned snapshots, nonces, ACK/NACK).
//! - [`embed::v1`]: the proxy's Arrow batch-embedding service (`BatchEmbed/EmbedArrow`).
//! - [`tei::v1`]: Hugging Face Text Embeddings Inference's gRPC API, wire-compatible with TEI's
//!   public `proto/tei.proto` (same packages, services and field numbers), so unmodified TEI
//!   clients work through the proxy. `tests/upstream_tei.rs` compares it, field by field, with
//!   the verbatim copy of TEI's file in `upstream/` (its commit in `upstream/README.md`).

/// The route-discovery protocol (`multiverse.discovery.v1`).
pub mod discovery {
    /// Version 1 of the protocol.
    pub mod v1 {
        tonic::include_proto!("multiverse.discovery.v1");
    }
}

/// Batch embedding over Arrow IPC (`multiverse.embed.v1`).
pub mod embed {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("multiverse.embed.v1");
    }
}

/// TEI's gRPC API (`tei.v1`).
pub mod tei {
    /// Version 1, as served by `text-embeddings-router` gRPC builds.
    pub mod v1 {
        tonic::include_proto!("tei.v1");
    }
}

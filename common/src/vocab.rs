//! The words proxy and control plane share: what a model does ([`ModelKind`]), how an endpoint
//! is spoken to ([`Protocol`]), its health ([`Health`]) and how a model's endpoints are chosen
//! ([`LbStrategy`]). Each enum has one string table, from which `as_str`, `FromStr`, `Display`
//! and serde all come, and conversions to and from its `multiverse.discovery.v1` wire enum.
//! The small predicates the request path calls (`bit`, `class`, `accepts_new`) are `#[inline]`
//! so that moving them here from the proxy costs nothing per request.

use std::fmt;
use std::str::FromStr;

use multiverse_proto::discovery::v1 as pb;

/// A name that is not in an enum's table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}` (one of: {})", .expected.join(", "))]
pub struct UnknownName {
    /// What was being named (`kind`, `protocol`, ...).
    pub what: &'static str,
    pub value: String,
    /// The names that are accepted.
    pub expected: &'static [&'static str],
}

/// Defines a fieldless enum with its one string table.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in table order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every name, in table order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name used in config files, the API, metrics labels and `config_dump`.
            #[inline]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(UnknownName {
                        what: $what,
                        value: s.to_string(),
                        expected: Self::NAMES,
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

vocabulary! {
    /// What kind of work a model does; decides which client routes reach it.
    pub enum ModelKind ("kind") {
        /// Chat completions (and text completions).
        Chat = "chat",
        /// Text completions only.
        Completion = "completion",
        /// Dense embeddings.
        Embedding = "embedding",
        /// Sparse embeddings (SPLADE).
        SparseEmbedding = "sparse_embedding",
        Rerank = "rerank",
        /// Sequence classification.
        Classify = "classify",
    }
}

impl ModelKind {
    /// The kinds a TEI process serves.
    pub const TEI: [ModelKind; 4] = [
        ModelKind::Embedding,
        ModelKind::SparseEmbedding,
        ModelKind::Rerank,
        ModelKind::Classify,
    ];

    /// This kind as one bit of a `u8` set of kinds.
    #[inline]
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether a TEI process serves this kind.
    #[inline]
    pub const fn is_tei(self) -> bool {
        !matches!(self, ModelKind::Chat | ModelKind::Completion)
    }
}

vocabulary! {
    /// The wire protocol spoken to an endpoint.
    pub enum Protocol ("protocol") {
        /// HTTP/1.1 (OpenAI-compatible servers, TEI HTTP builds).
        Http1 = "http1",
        /// HTTP/2 cleartext with prior knowledge.
        H2c = "h2c",
        /// gRPC over h2c (TEI gRPC builds).
        Grpc = "grpc",
    }
}

/// Client traffic classes: HTTP APIs (OpenAI, TEI HTTP) or gRPC (tei.v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtoClass {
    Http,
    Grpc,
}

impl Protocol {
    /// Which client traffic the endpoint can take.
    #[inline]
    pub const fn class(self) -> ProtoClass {
        match self {
            Protocol::Http1 | Protocol::H2c => ProtoClass::Http,
            Protocol::Grpc => ProtoClass::Grpc,
        }
    }
}

vocabulary! {
    /// Endpoint health, as Envoy's statuses.
    pub enum Health ("health") {
        /// Not checked yet: treated as healthy.
        Unknown = "unknown",
        Healthy = "healthy",
        Unhealthy = "unhealthy",
        /// Going away: no new requests, in-flight ones finish.
        Draining = "draining",
        Timeout = "timeout",
        /// Serving but impaired.
        Degraded = "degraded",
    }
}

impl Health {
    /// Whether the endpoint may take new requests at all.
    #[inline]
    pub const fn accepts_new(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy | Health::Degraded)
    }
}

vocabulary! {
    /// How an endpoint is chosen among a model's endpoints.
    pub enum LbStrategy ("lb") {
        RoundRobin = "round_robin",
        Weighted = "weighted",
        /// Least outstanding requests by power of two choices (the default).
        LeastRequest = "least_request",
        /// Bounded-load rendezvous hashing of the prompt prefix or session header.
        PrefixAffinity = "prefix_affinity",
        /// Peak-sensitive EWMA of response latency × (in-flight + 1), by power of two choices.
        PeakEwma = "peak_ewma",
    }
}

// The wire enums. `UNSPECIFIED` decodes to the protocol's documented default.

impl From<pb::ModelKind> for ModelKind {
    fn from(k: pb::ModelKind) -> Self {
        match k {
            pb::ModelKind::Unspecified | pb::ModelKind::Chat => ModelKind::Chat,
            pb::ModelKind::Completion => ModelKind::Completion,
            pb::ModelKind::Embedding => ModelKind::Embedding,
            pb::ModelKind::SparseEmbedding => ModelKind::SparseEmbedding,
            pb::ModelKind::Rerank => ModelKind::Rerank,
            pb::ModelKind::Classify => ModelKind::Classify,
        }
    }
}

impl From<ModelKind> for pb::ModelKind {
    fn from(k: ModelKind) -> Self {
        match k {
            ModelKind::Chat => pb::ModelKind::Chat,
            ModelKind::Completion => pb::ModelKind::Completion,
            ModelKind::Embedding => pb::ModelKind::Embedding,
            ModelKind::SparseEmbedding => pb::ModelKind::SparseEmbedding,
            ModelKind::Rerank => pb::ModelKind::Rerank,
            ModelKind::Classify => pb::ModelKind::Classify,
        }
    }
}

impl From<pb::Protocol> for Protocol {
    fn from(p: pb::Protocol) -> Self {
        match p {
            pb::Protocol::Unspecified | pb::Protocol::Http1 => Protocol::Http1,
            pb::Protocol::H2c => Protocol::H2c,
            pb::Protocol::Grpc => Protocol::Grpc,
        }
    }
}

impl From<Protocol> for pb::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Http1 => pb::Protocol::Http1,
            Protocol::H2c => pb::Protocol::H2c,
            Protocol::Grpc => pb::Protocol::Grpc,
        }
    }
}

impl From<pb::HealthStatus> for Health {
    fn from(h: pb::HealthStatus) -> Self {
        match h {
            pb::HealthStatus::Unknown => Health::Unknown,
            pb::HealthStatus::Healthy => Health::Healthy,
            pb::HealthStatus::Unhealthy => Health::Unhealthy,
            pb::HealthStatus::Draining => Health::Draining,
            pb::HealthStatus::Timeout => Health::Timeout,
            pb::HealthStatus::Degraded => Health::Degraded,
        }
    }
}

impl From<Health> for pb::HealthStatus {
    fn from(h: Health) -> Self {
        match h {
            Health::Unknown => pb::HealthStatus::Unknown,
            Health::Healthy => pb::HealthStatus::Healthy,
            Health::Unhealthy => pb::HealthStatus::Unhealthy,
            Health::Draining => pb::HealthStatus::Draining,
            Health::Timeout => pb::HealthStatus::Timeout,
            Health::Degraded => pb::HealthStatus::Degraded,
        }
    }
}

impl From<pb::LbStrategy> for LbStrategy {
    fn from(l: pb::LbStrategy) -> Self {
        match l {
            pb::LbStrategy::RoundRobin => LbStrategy::RoundRobin,
            pb::LbStrategy::Weighted => LbStrategy::Weighted,
            pb::LbStrategy::Unspecified | pb::LbStrategy::LeastRequest => LbStrategy::LeastRequest,
            pb::LbStrategy::PrefixAffinity => LbStrategy::PrefixAffinity,
            pb::LbStrategy::PeakEwma => LbStrategy::PeakEwma,
        }
    }
}

impl From<LbStrategy> for pb::LbStrategy {
    fn from(l: LbStrategy) -> Self {
        match l {
            LbStrategy::RoundRobin => pb::LbStrategy::RoundRobin,
            LbStrategy::Weighted => pb::LbStrategy::Weighted,
            LbStrategy::LeastRequest => pb::LbStrategy::LeastRequest,
            LbStrategy::PrefixAffinity => pb::LbStrategy::PrefixAffinity,
            LbStrategy::PeakEwma => pb::LbStrategy::PeakEwma,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name parses back to its value, displays and serializes as itself.
    fn round_trips<T>(all: &[T], names: &[&str])
    where
        T: Copy + Eq + fmt::Debug + fmt::Display + FromStr<Err = UnknownName>,
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        assert_eq!(all.len(), names.len());
        for (v, name) in all.iter().zip(names) {
            assert_eq!(v.to_string(), *name);
            assert_eq!(name.parse::<T>(), Ok(*v));
            assert_eq!(
                serde_json::to_string(v).expect("ser"),
                format!("\"{name}\"")
            );
            assert_eq!(
                serde_json::from_str::<T>(&format!("\"{name}\"")).expect("de"),
                *v
            );
        }
    }

    #[test]
    fn every_table_round_trips() {
        round_trips(ModelKind::ALL, ModelKind::NAMES);
        round_trips(Protocol::ALL, Protocol::NAMES);
        round_trips(Health::ALL, Health::NAMES);
        round_trips(LbStrategy::ALL, LbStrategy::NAMES);
        assert_eq!(
            ModelKind::NAMES,
            [
                "chat",
                "completion",
                "embedding",
                "sparse_embedding",
                "rerank",
                "classify"
            ]
        );
        assert_eq!(Protocol::NAMES, ["http1", "h2c", "grpc"]);
        assert_eq!(
            Health::NAMES,
            [
                "unknown",
                "healthy",
                "unhealthy",
                "draining",
                "timeout",
                "degraded"
            ]
        );
        assert_eq!(
            LbStrategy::NAMES,
            [
                "round_robin",
                "weighted",
                "least_request",
                "prefix_affinity",
                "peak_ewma"
            ]
        );
    }

    #[test]
    fn unknown_names_list_the_accepted_ones() {
        let e = "video".parse::<ModelKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown kind `video` (one of: chat, completion, embedding, sparse_embedding, rerank, classify)"
        );
        assert_eq!(e.value, "video");
        // Names are exact: no case folding, no aliases.
        assert!("Chat".parse::<ModelKind>().is_err());
        assert!("http".parse::<Protocol>().is_err());
        let e = serde_json::from_str::<Health>("\"sick\"").unwrap_err();
        assert!(e.to_string().contains("unknown health `sick`"), "{e}");
    }

    #[test]
    fn kind_bits_are_distinct_and_tei_kinds_are_the_embedding_family() {
        let mut seen = 0u8;
        for k in ModelKind::ALL {
            assert_eq!(seen & k.bit(), 0, "{k}");
            seen |= k.bit();
            assert_eq!(k.is_tei(), ModelKind::TEI.contains(k), "{k}");
        }
        assert_eq!(seen.count_ones(), 6);
    }

    #[test]
    fn classes_and_admission() {
        assert_eq!(Protocol::Http1.class(), ProtoClass::Http);
        assert_eq!(Protocol::H2c.class(), ProtoClass::Http);
        assert_eq!(Protocol::Grpc.class(), ProtoClass::Grpc);
        let admitted: Vec<_> = Health::ALL.iter().filter(|h| h.accepts_new()).collect();
        assert_eq!(
            admitted,
            [&Health::Unknown, &Health::Healthy, &Health::Degraded]
        );
    }

    #[test]
    fn wire_enums_convert_both_ways_and_unspecified_takes_the_default() {
        for &k in ModelKind::ALL {
            assert_eq!(ModelKind::from(pb::ModelKind::from(k)), k);
        }
        for &p in Protocol::ALL {
            assert_eq!(Protocol::from(pb::Protocol::from(p)), p);
        }
        for &h in Health::ALL {
            assert_eq!(Health::from(pb::HealthStatus::from(h)), h);
        }
        for &l in LbStrategy::ALL {
            assert_eq!(LbStrategy::from(pb::LbStrategy::from(l)), l);
        }
        assert_eq!(ModelKind::from(pb::ModelKind::Unspecified), ModelKind::Chat);
        assert_eq!(Protocol::from(pb::Protocol::Unspecified), Protocol::Http1);
        assert_eq!(
            LbStrategy::from(pb::LbStrategy::Unspecified),
            LbStrategy::LeastRequest
        );
        // The wire names agree with ours (`MODEL_KIND_SPARSE_EMBEDDING` ~ `sparse_embedding`).
        for &k in ModelKind::ALL {
            let wire = pb::ModelKind::from(k).as_str_name();
            assert_eq!(wire, format!("MODEL_KIND_{}", k.as_str().to_uppercase()));
        }
        for &h in Health::ALL {
            let wire = pb::HealthStatus::from(h).as_str_name();
            assert_eq!(wire, format!("HEALTH_STATUS_{}", h.as_str().to_uppercase()));
        }
    }
}

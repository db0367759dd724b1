//! OTLP/gRPC span export (`[tracing] otlp_endpoint`), shared by both planes: finished spans go
//! to OpenTelemetry's batch processor (a bounded queue, a thread of its own that sends a batch
//! every `OTEL_BSP_SCHEDULE_DELAY`, 5 s by default, or when 512 are queued) and from there to
//! the OTLP exporter (tonic, on a one-thread runtime of its own). Nothing here runs on a
//! caller's runtime, and [`Otlp::record`] never blocks: a full queue drops the span.
//!
//! Spans are recorded after the fact, with the ids and times the caller already has (the
//! proxy's request phases are pingora callbacks, not one scope a `tracing` span could cover,
//! and the ids must be the ones already sent upstream in `traceparent`), so they are handed to
//! the processor as finished `SpanData`: no tracer, no context propagation machinery.
//!
//! Also W3C `traceparent` parsing ([`parse_traceparent`]), the one rule both planes follow.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;

pub use opentelemetry::trace::SpanKind as Kind;
pub use opentelemetry::KeyValue;

/// How long an export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317`.
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
}

impl OtlpSettings {
    /// The `[tracing]` keys both planes share, checked: the key (under `tracing.`) and why
    /// when one is wrong.
    pub fn check(
        endpoint: Option<&str>,
        service_name: &str,
        sample_ratio: f64,
    ) -> Result<(), (&'static str, String)> {
        if let Some(e) = endpoint {
            let uri: Option<http::Uri> = e.parse().ok();
            let ok = uri.as_ref().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return Err((
                    "otlp_endpoint",
                    format!("`{e}` must be an http:// or https:// URL, e.g. http://127.0.0.1:4317"),
                ));
            }
        }
        if service_name.trim().is_empty() {
            return Err(("service_name", "must not be empty".into()));
        }
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err((
                "sample_ratio",
                format!("{sample_ratio} must be between 0 and 1"),
            ));
        }
        Ok(())
    }
}

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot start the OTLP exporter's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot build the OTLP exporter for `{endpoint}`: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// A running exporter. Dropping it flushes what is queued (bounded by the export timeout).
pub struct Otlp {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    /// Drives the tonic channel; stopped after the processor (in `drop`).
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp").finish_non_exhaustive()
    }
}

/// The ids of one span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0: a root span.
    pub parent_id: u64,
    /// The parent is another process's span (the client's `traceparent`).
    pub parent_remote: bool,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: &'static str,
    pub kind: SpanKind,
    pub ids: Ids,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// The operation failed (status `ERROR`).
    pub error: bool,
}

impl Otlp {
    /// Starts the exporter (the connection is made lazily, so an absent collector is not an
    /// error here: its exports fail, are logged by the SDK and dropped).
    pub fn start(settings: &OtlpSettings) -> Result<Self, OtlpError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp")
            .enable_all()
            .build()?;
        let exporter = {
            let _in = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| OtlpError::Exporter {
                    endpoint: settings.endpoint.clone(),
                    reason: e.to_string(),
                })?
        };
        // Queue size and delay from OTEL_BSP_* when set, else the SDK's defaults.
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(BatchConfigBuilder::default().build())
            .build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .build(),
        );
        let scope = InstrumentationScope::builder("multiverse")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Ok(Self {
            processor,
            scope,
            runtime: Some(runtime),
        })
    }

    /// Queues a finished span for export (never blocks; dropped when the queue is full).
    pub fn record(&self, span: Span) {
        let flags = TraceFlags::SAMPLED;
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from(span.ids.trace_id),
                SpanId::from(span.ids.span_id),
                flags,
                false,
                TraceState::NONE,
            ),
            parent_span_id: SpanId::from(span.ids.parent_id),
            parent_span_is_remote: span.ids.parent_remote,
            span_kind: span.kind,
            name: Cow::Borrowed(span.name),
            start_time: span.start,
            end_time: span.end,
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if span.error {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Sends what is queued now (at shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.processor.force_flush() {
            tracing::debug!(error = %e, "OTLP flush failed");
        }
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        if let Err(e) = self.processor.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::debug!(error = %e, "OTLP exporter shutdown");
        }
        // Without blocking, so the last handle may go from inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A random span id (never 0).
pub fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// A W3C `traceparent`'s fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub sampled: bool,
}

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// The fields of a valid `traceparent`: `version-traceid-parentid-flags` in lowercase hex,
/// version not `ff` (version `00`: exactly 55 bytes; a later version: at least 55, the fields
/// read from the first 55), trace id and parent id not all zeros.
pub fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    const LEN: usize = TRACEPARENT_LEN;
    if v.len() < LEN || (v.len() > LEN && v.get(LEN) != Some(&b'-')) {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace_id, parent_id, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    let ok = v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(version)
        && version != b"ff"
        && (version != b"00" || v.len() == LEN)
        && hex(trace_id)
        && hex(parent_id)
        && hex(flags);
    if !ok {
        return None;
    }
    // All lowercase hex digits, checked above.
    let num = |s: &[u8]| {
        s.iter().fold(0u128, |n, b| {
            (n << 4) | u128::from((*b as char).to_digit(16).unwrap_or(0))
        })
    };
    let trace_id = num(trace_id);
    let parent_id = u64::try_from(num(parent_id)).ok()?;
    (trace_id != 0 && parent_id != 0).then_some(TraceParent {
        trace_id,
        parent_id,
        sampled: num(flags) & 1 == 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_naming_the_key() {
        assert_eq!(
            OtlpSettings::check(Some("http://127.0.0.1:4317"), "p", 0.5),
            Ok(())
        );
        assert_eq!(OtlpSettings::check(None, "p", 1.0), Ok(()));
        for (endpoint, name, ratio, key) in [
            (Some("127.0.0.1:4317"), "p", 1.0, "otlp_endpoint"),
            (Some("grpc://x:4317"), "p", 1.0, "otlp_endpoint"),
            (None, " ", 1.0, "service_name"),
            (None, "p", 1.5, "sample_ratio"),
            (None, "p", f64::NAN, "sample_ratio"),
        ] {
            assert_eq!(
                OtlpSettings::check(endpoint, name, ratio).map_err(|e| e.0),
                Err(key)
            );
        }
    }

    #[test]
    fn traceparents_parse_by_the_w3c_rules() {
        let p = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.parent_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(unsampled).expect("valid").sampled);
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        ] {
            assert_eq!(parse_traceparent(bad), None);
        }
    }
}

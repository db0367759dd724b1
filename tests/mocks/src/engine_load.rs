//! `mock-openai`'s engine metrics, so the control plane's engine-aware load can be tested and
//! benchmarked without a GPU: `GET /metrics` in the style of `--engine` (`vllm`, the default;
//! `llamacpp`; `sglang`), reporting the requests it is really working on as running, plus a
//! fake load a test sets with `POST /_mock/load`:
//!
//! ```json
//! {"waiting": 50, "running": 0, "kv_cache_usage": 0.3, "metrics": true}
//! ```
//!
//! Every field is optional (omitted: unchanged). `running` is added to the real count;
//! `"metrics": false` makes `/metrics` answer 503 (an engine whose metrics stopped answering),
//! `true` brings it back. `GET /_mock/load` shows the current settings.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The metric names an engine serves its load under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EngineStyle {
    #[default]
    Vllm,
    Llamacpp,
    Sglang,
}

/// A fake load and the real count of requests being answered.
#[derive(Debug, Default)]
pub struct EngineLoad {
    pub style: EngineStyle,
    /// Model requests being answered right now (kept by [`EngineLoad::working`]).
    active: AtomicU64,
    waiting: AtomicU32,
    running: AtomicU32,
    kv_bits: AtomicU32,
    /// True: `/metrics` answers 503.
    metrics_off: AtomicBool,
}

/// `POST /_mock/load`'s body and `GET /_mock/load`'s answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadSettings {
    pub waiting: Option<u32>,
    pub running: Option<u32>,
    pub kv_cache_usage: Option<f32>,
    pub metrics: Option<bool>,
}

/// Keeps one request counted as running.
pub struct Working<'a>(&'a AtomicU64);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EngineLoad {
    pub fn new(style: EngineStyle) -> Self {
        Self {
            style,
            ..Default::default()
        }
    }

    /// Counts a model request as running until the guard is dropped.
    pub fn working(&self) -> Working<'_> {
        self.active.fetch_add(1, Ordering::SeqCst);
        Working(&self.active)
    }

    /// Applies `POST /_mock/load`.
    pub fn set(&self, s: &LoadSettings) {
        if let Some(w) = s.waiting {
            self.waiting.store(w, Ordering::SeqCst);
        }
        if let Some(r) = s.running {
            self.running.store(r, Ordering::SeqCst);
        }
        if let Some(kv) = s.kv_cache_usage {
            self.kv_bits
                .store(kv.clamp(0.0, 1.0).to_bits(), Ordering::SeqCst);
        }
        if let Some(on) = s.metrics {
            self.metrics_off.store(!on, Ordering::SeqCst);
        }
    }

    /// The current settings (`running`: the fake part only).
    pub fn settings(&self) -> LoadSettings {
        LoadSettings {
            waiting: Some(self.waiting.load(Ordering::SeqCst)),
            running: Some(self.running.load(Ordering::SeqCst)),
            kv_cache_usage: Some(f32::from_bits(self.kv_bits.load(Ordering::SeqCst))),
            metrics: Some(!self.metrics_off.load(Ordering::SeqCst)),
        }
    }

    /// The exposition text, in `style`'s names, for a server of `model`.
    pub fn render(&self, model: &str) -> String {
        let waiting = self.waiting.load(Ordering::SeqCst);
        let running =
            u64::from(self.running.load(Ordering::SeqCst)) + self.active.load(Ordering::SeqCst);
        let kv = f32::from_bits(self.kv_bits.load(Ordering::SeqCst));
        let model = model.replace('\\', "\\\\").replace('"', "\\\"");
        let gauge = |name: &str, labels: &str, v: String| {
            format!("# TYPE {name} gauge\n{name}{labels} {v}\n")
        };
        let (w, r, c, labels) = match self.style {
            EngineStyle::Vllm => (
                "vllm:num_requests_waiting",
                "vllm:num_requests_running",
                "vllm:kv_cache_usage_perc",
                format!("{{engine=\"0\",model_name=\"{model}\"}}"),
            ),
            EngineStyle::Llamacpp => (
                "llamacpp:requests_deferred",
                "llamacpp:requests_processing",
                "llamacpp:kv_cache_usage_ratio",
                String::new(),
            ),
            EngineStyle::Sglang => (
                "sglang:num_queue_reqs",
                "sglang:num_running_reqs",
                "sglang:token_usage",
                format!("{{model_name=\"{model}\"}}"),
            ),
        };
        let mut text = gauge(r, &labels, format!("{running}.0"));
        text.push_str(&gauge(w, &labels, format!("{waiting}.0")));
        text.push_str(&gauge(c, &labels, format!("{kv}")));
        text
    }

    /// `GET /metrics`.
    pub fn respond(&self, model: &str) -> Response {
        if self.metrics_off.load(Ordering::SeqCst) {
            return (StatusCode::SERVICE_UNAVAILABLE, "metrics turned off").into_response();
        }
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            self.render(model),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fake_and_real_load_in_each_style() {
        let l = EngineLoad::new(EngineStyle::Vllm);
        l.set(&LoadSettings {
            waiting: Some(50),
            running: Some(2),
            kv_cache_usage: Some(0.5),
            metrics: None,
        });
        let _busy = l.working();
        let text = l.render("m\"1");
        assert!(
            text.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"m\\\"1\"} 50.0"),
            "{text}"
        );
        assert!(
            text.contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\\\"1\"} 3.0"),
            "{text}"
        );
        assert!(
            text.contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\\\"1\"} 0.5"),
            "{text}"
        );
        drop(_busy);
        assert!(l
            .render("m")
            .contains("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0"));
        let s = EngineLoad::new(EngineStyle::Sglang);
        assert!(s
            .render("m")
            .contains("sglang:num_queue_reqs{model_name=\"m\"} 0.0"));
        let c = EngineLoad::new(EngineStyle::Llamacpp);
        assert!(c.render("m").contains("llamacpp:requests_deferred 0.0"));
        l.set(&LoadSettings {
            metrics: Some(false),
            ..Default::default()
        });
        assert_eq!(l.respond("m").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(l.settings().waiting, Some(50), "unchanged fields stay");
    }
}

//! Reads an engine's load out of its Prometheus text exposition (`GET /metrics`), and tells the
//! engine from the metric names present.
//!
//! Only the few gauges below are read, so this is a small line scanner rather than a full
//! exposition parser: `# ` lines are skipped, a sample line is `name[{labels}] value
//! [timestamp]`; samples of one name (one per model or label set) are summed. Label values are
//! skipped with their escapes (`\"` may hide a `}`), values are Prometheus floats (`NaN`,
//! `+Inf` are ignored).

/// The engines whose load is understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Vllm,
    LlamaCpp,
    Tei,
    Sglang,
}

impl Engine {
    /// As in `EndpointLoad.engine` and the `engine` tag that overrides detection.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::LlamaCpp => "llamacpp",
            Engine::Tei => "tei",
            Engine::Sglang => "sglang",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter().find(|e| e.name() == name)
    }

    /// The metrics that carry (waiting, running, kv-cache use) for this engine, in that order;
    /// each alternative name is tried in turn (vLLM renamed its cache gauge in 0.10).
    fn names(self) -> [&'static [&'static str]; 3] {
        match self {
            Engine::Vllm => [
                &["vllm:num_requests_waiting"],
                &["vllm:num_requests_running"],
                &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
            ],
            Engine::LlamaCpp => [
                &["llamacpp:requests_deferred"],
                &["llamacpp:requests_processing"],
                &["llamacpp:kv_cache_usage_ratio"],
            ],
            Engine::Tei => [&["te_queue_size"], &["te_batch_current_size"], &[]],
            Engine::Sglang => [
                &["sglang:num_queue_reqs"],
                &["sglang:num_running_reqs"],
                &["sglang:token_usage"],
            ],
        }
    }
}

const ALL: [Engine; 4] = [Engine::Vllm, Engine::LlamaCpp, Engine::Tei, Engine::Sglang];

/// One endpoint's load as its engine reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub engine: Engine,
    pub waiting: u32,
    pub running: u32,
    /// 0..1.
    pub kv_cache_usage: f32,
}

/// The load in `text`, read as `engine`'s metrics, or (`None`) as those of the first engine
/// whose waiting gauge is present. `None` when no known engine's gauges are there.
pub fn load(text: &str, engine: Option<Engine>) -> Option<Load> {
    let engine = match engine {
        Some(e) => e,
        None => ALL
            .into_iter()
            .find(|e| e.names()[0].iter().any(|n| sum(text, n).is_some()))?,
    };
    let [waiting, running, kv] = engine
        .names()
        .map(|names| names.iter().find_map(|n| sum(text, n)));
    // An engine is recognised by its queue gauge; the others may be missing.
    let waiting = waiting?;
    let count = |v: f64| v.clamp(0.0, f64::from(u32::MAX)) as u32;
    Some(Load {
        engine,
        waiting: count(waiting),
        running: running.map_or(0, count),
        kv_cache_usage: kv.map_or(0.0, |v| v.clamp(0.0, 1.0) as f32),
    })
}

/// The sum of the finite samples named `name`, or `None` when there is none.
fn sum(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The whole name: followed by labels or blanks, not by more of a longer name.
        let rest = match rest.as_bytes().first() {
            Some(b'{') => match skip_labels(rest) {
                Some(after) => after,
                None => continue,
            },
            Some(b' ' | b'\t') => rest,
            _ => continue,
        };
        let Some(value) = rest.split_ascii_whitespace().next() else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            if v.is_finite() {
                total = Some(total.unwrap_or(0.0) + v);
            }
        }
    }
    total
}

/// What follows the `{...}` at the start of `s` (quoted values may hold `}` and `\"`); `None`
/// when it is not closed.
fn skip_labels(s: &str) -> Option<&str> {
    let bytes = s.as_bytes();
    let (mut i, mut quoted) = (1, false);
    while i < bytes.len() {
        match (bytes[i], quoted) {
            (b'\\', true) => i += 1,
            (b'"', _) => quoted = !quoted,
            (b'}', false) => return s.get(i + 1..),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As vLLM 0.10 serves it (abridged).
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 99.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.42
vllm:prompt_tokens_total{model_name="a"} 1234.0
"#;

    #[test]
    fn vllm_is_detected_and_read() {
        let l = load(VLLM, None).expect("vllm");
        assert_eq!(l.engine, Engine::Vllm);
        assert_eq!(
            (l.waiting, l.running),
            (3, 7),
            "a longer name is not summed in"
        );
        assert!((l.kv_cache_usage - 0.42).abs() < 1e-6);
    }

    #[test]
    fn older_vllm_cache_gauge_and_several_models_sum() {
        let text = "vllm:num_requests_waiting{model_name=\"a\"} 2\n\
                    vllm:num_requests_waiting{model_name=\"b\"} 5\n\
                    vllm:gpu_cache_usage_perc{model_name=\"a\"} 0.5\n";
        let l = load(text, None).expect("vllm");
        assert_eq!((l.waiting, l.running), (7, 0));
        assert!((l.kv_cache_usage - 0.5).abs() < 1e-6);
    }

    #[test]
    fn llamacpp_is_detected_and_read() {
        let text =
            "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.\n\
                    # TYPE llamacpp:kv_cache_usage_ratio gauge\n\
                    llamacpp:kv_cache_usage_ratio 0.25\n\
                    llamacpp:requests_processing 2\n\
                    llamacpp:requests_deferred 9\n\
                    llamacpp:prompt_tokens_total 100\n";
        let l = load(text, None).expect("llama.cpp");
        assert_eq!(l.engine, Engine::LlamaCpp);
        assert_eq!((l.waiting, l.running), (9, 2));
        assert!((l.kv_cache_usage - 0.25).abs() < 1e-6);
    }

    #[test]
    fn tei_is_detected_and_read() {
        let text = "# TYPE te_queue_size gauge\nte_queue_size 4\n\
                    te_batch_current_size 16\nte_batch_current_max_tokens 8192\n";
        let l = load(text, None).expect("tei");
        assert_eq!(l.engine, Engine::Tei);
        assert_eq!((l.waiting, l.running, l.kv_cache_usage), (4, 16, 0.0));
    }

    #[test]
    fn sglang_is_detected_and_read() {
        let text = "sglang:num_running_reqs{model_name=\"qwen\"} 12.0\n\
                    sglang:num_queue_reqs{model_name=\"qwen\"} 1.0\n\
                    sglang:token_usage{model_name=\"qwen\"} 0.91\n";
        let l = load(text, None).expect("sglang");
        assert_eq!(l.engine, Engine::Sglang);
        assert_eq!((l.waiting, l.running), (1, 12));
        assert!((l.kv_cache_usage - 0.91).abs() < 1e-6);
    }

    #[test]
    fn an_override_reads_that_engine_only() {
        assert_eq!(load(VLLM, Some(Engine::Tei)), None);
        assert_eq!(load(VLLM, Some(Engine::Vllm)).map(|l| l.waiting), Some(3));
        assert_eq!(Engine::from_name("sglang"), Some(Engine::Sglang));
        assert_eq!(Engine::from_name("triton"), None);
    }

    #[test]
    fn odd_lines_are_tolerated() {
        let text = "vllm:num_requests_waiting{path=\"a}\\\"b\"} 2 1700000000000\n\
                    vllm:num_requests_waiting{unclosed=\"x 5\n\
                    vllm:num_requests_waiting NaN\n\
                    vllm:num_requests_waiting +Inf\n\
                    vllm:num_requests_waiting -3\n\
                    vllm:num_requests_running 1e12\n\
                    vllm:kv_cache_usage_perc 7\n";
        let l = load(text, None).expect("vllm");
        assert_eq!(
            l.waiting, 0,
            "2 - 3, clamped; NaN, Inf and the unclosed line ignored"
        );
        assert_eq!(l.running, u32::MAX);
        assert_eq!(l.kv_cache_usage, 1.0);
        assert_eq!(load("# nothing\nprocess_cpu_seconds_total 3\n", None), None);
        assert_eq!(load("", None), None);
    }
}

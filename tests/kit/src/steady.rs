//! A steady client load for tests that break things under traffic ([`SteadyLoad`]): a few
//! closed-loop clients per proxy, each cycling through a list of requests ([`Ask`]), recording
//! every outcome with its completion time and the endpoint that served it
//! (`x-multiverse-endpoint`), so a test can count the errors in any window. Not a benchmark
//! (see `benches/` for those).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

/// One request a client sends.
#[derive(Debug, Clone)]
pub enum Ask {
    /// `POST /v1/chat/completions` for this model.
    Chat(String),
    /// TEI `POST /embed` with `x-model` naming this model.
    Embed(String),
}

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it completed (or failed).
    pub at: Instant,
    /// Which of the bases it went to.
    pub target: usize,
    /// The endpoint that served it (a 200 read to its end), or what went wrong.
    pub result: Result<String, String>,
}

/// Closed-loop clients against some bases, until stopped.
pub struct SteadyLoad {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    /// One stop switch per base.
    stops: Vec<Arc<AtomicBool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SteadyLoad {
    /// Starts `clients` loops per base (`http://host:port`), each sending `asks` in turn
    /// (client `c` starts at ask `c`), with a 5 s timeout per request.
    pub fn start(bases: &[String], clients: usize, asks: &[Ask]) -> SteadyLoad {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|e| panic!("reqwest client: {e}"));
        let asks: Arc<[Ask]> = asks.into();
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        for (target, base) in bases.iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            stops.push(stop.clone());
            for c in 0..clients {
                let (client, base, stop, outcomes, asks) = (
                    client.clone(),
                    base.clone(),
                    stop.clone(),
                    outcomes.clone(),
                    asks.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) && !asks.is_empty() {
                        let result = send(&client, &base, &asks[i % asks.len()]).await;
                        let at = Instant::now();
                        outcomes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Outcome { at, target, result });
                        i += 1;
                    }
                }));
            }
        }
        SteadyLoad {
            outcomes,
            stops,
            tasks,
        }
    }

    /// Outcomes of base `target` that completed in `[from, to)`.
    pub fn between(&self, target: usize, from: Instant, to: Instant) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|o| o.target == target && o.at >= from && o.at < to)
            .cloned()
            .collect()
    }

    /// Stops the clients of base `target` (their requests in flight finish).
    pub fn stop(&self, target: usize) {
        self.stops[target].store(true, Ordering::Relaxed);
    }

    /// Stops every client and waits for them.
    pub async fn finish(mut self) {
        for s in &self.stops {
            s.store(true, Ordering::Relaxed);
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for SteadyLoad {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn send(client: &reqwest::Client, base: &str, ask: &Ask) -> Result<String, String> {
    let req = match ask {
        Ask::Chat(model) => client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})),
        Ask::Embed(model) => client
            .post(format!("{base}/embed"))
            .header("x-model", model)
            .json(&json!({"inputs": ["hello"]})),
    };
    let resp = req.send().await.map_err(|e| format!("transport: {e}"))?;
    let status = resp.status().as_u16();
    let endpoint = resp
        .headers()
        .get("x-multiverse-endpoint")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // Read the whole body: a response cut short is an error too.
    let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if status != 200 {
        return Err(format!(
            "{status} from {endpoint:?}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(endpoint)
}

/// The errors among `outcomes`.
pub fn errors(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().cloned())
        .collect()
}

/// The endpoints that served `outcomes`.
pub fn served_by(outcomes: &[Outcome]) -> BTreeSet<String> {
    outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok().cloned())
        .collect()
}

//! `lb = "prefix_affinity"` through real processes: four mock-openai endpoints with simulated
//! prefix caches behind two standalone proxies that share no state (their routes files list the
//! endpoints in different orders). The same prompt prefix reaches the same endpoint from both;
//! different prefixes spread; an endpoint over the load bound passes a request on to the next in
//! rendezvous order; a session header keys a conversation instead of its prompt.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use multiverse_tests::*;
use serde_json::{json, Value};

/// The four endpoints, each with a prefix cache; streams are slow (50 tokens, 100 ms apart) so a
/// streaming request holds its endpoint for seconds.
fn mocks(dir: &Path) -> Vec<MockOpenAi> {
    (0..4)
        .map(|i| {
            MockOpenAi::start(
                dir,
                &format!("ep-{i}"),
                &[
                    "--prefix-cache-entries",
                    "64",
                    "--tokens",
                    "50",
                    "--chunk-interval-ms",
                    "100",
                ],
            )
        })
        .collect()
}

/// A routes file for model `demo` over `mocks` in the order `order`, with `unhealthy` marked so.
fn routes(mocks: &[MockOpenAi], lb: &str, order: &[usize], unhealthy: Option<usize>) -> String {
    let eps: Vec<Ep> = order
        .iter()
        .map(|&i| {
            let health = if Some(i) == unhealthy {
                "unhealthy"
            } else {
                "healthy"
            };
            Ep::http(&mocks[i].name, mocks[i].addr, health)
        })
        .collect();
    model_toml("demo", "chat", &format!("lb = \"{lb}\""), &eps)
}

/// Two proxies over the same endpoints, listed in other orders.
async fn proxies(dir: &Path, mocks: &[MockOpenAi], lb: &str, extra: &str) -> (Proxy, Proxy) {
    let (ra, rb) = (
        routes(mocks, lb, &[0, 1, 2, 3], None),
        routes(mocks, lb, &[3, 1, 0, 2], None),
    );
    let a = Proxy::start_standalone(dir, "proxy-a", &ra, extra).await;
    let b = Proxy::start_standalone(dir, "proxy-b", &rb, extra).await;
    (a, b)
}

/// A chat body as the openai SDK writes it (`messages` first, compact).
fn model_last(system: &str, user: &str) -> String {
    json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
           "model": "demo"})
    .to_string()
}

/// The same request with `model` first, other whitespace and `role` before `content` (where
/// serde_json writes `content` first): the prefix key is the same.
fn model_first(system: &str, user: &str) -> String {
    format!(
        "{{ \"model\": \"demo\", \"stream\": false,\n  \"messages\": [ {{\"role\": \"system\", \"content\": {}}},\n    {{\"role\": \"user\", \"content\": {}}} ] }}",
        Value::from(system),
        Value::from(user)
    )
}

/// Sends `body` to `proxy` (with `headers`) and returns the endpoint that served it.
async fn served_by(
    client: &reqwest::Client,
    proxy: &Proxy,
    body: String,
    headers: &[(&str, &str)],
) -> String {
    let mut req = client
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-multiverse-endpoint")
        .and_then(|v| v.to_str().ok())
        .expect("x-multiverse-endpoint")
        .to_string();
    resp.bytes().await.expect("body");
    id
}

/// Hits and misses of every mock's prefix cache, summed.
async fn cache_totals(client: &reqwest::Client, mocks: &[MockOpenAi]) -> (u64, u64) {
    let mut totals = (0, 0);
    for m in mocks {
        let s = m.stats(client).await;
        totals.0 += s["prefix_cache"]["hits"].as_u64().expect("hits");
        totals.1 += s["prefix_cache"]["misses"].as_u64().expect("misses");
    }
    totals
}

#[tokio::test]
async fn two_proxies_send_the_same_prefix_to_the_same_endpoint_and_spread_prefixes() {
    let dir = temp_dir("prefix-same");
    let mocks = mocks(&dir);
    let (a, b) = proxies(&dir, &mocks, "prefix_affinity", "").await;
    let client = reqwest::Client::new();
    let prompts: Vec<String> = (0..24)
        .map(|i| format!("You are assistant #{i}. Answer briefly."))
        .collect();
    let mut home = HashMap::new();
    for (i, system) in prompts.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for turn in 0..2 {
            let user = format!("question {turn} of session {i}");
            seen.insert(served_by(&client, &a, model_first(system, &user), &[]).await);
            seen.insert(served_by(&client, &b, model_last(system, &user), &[]).await);
        }
        assert_eq!(seen.len(), 1, "prompt {i} went to {seen:?}");
        home.insert(i, seen.into_iter().next().expect("one"));
    }
    let used: BTreeSet<_> = home.values().collect();
    assert!(
        used.len() >= 3,
        "24 prefixes over 4 endpoints used only {used:?}"
    );
    // Each prefix missed once (on its endpoint), every later request hit.
    assert_eq!(cache_totals(&client, &mocks).await, (96 - 24, 24));
}

#[tokio::test]
async fn least_request_scatters_the_same_prefix_the_baseline() {
    // The same traffic without affinity: prefixes land on several endpoints and miss more often.
    // (What the test above would see without prefix_affinity.)
    let dir = temp_dir("prefix-baseline");
    let mocks = mocks(&dir);
    let (a, b) = proxies(&dir, &mocks, "least_request", "").await;
    let client = reqwest::Client::new();
    let mut scattered = 0;
    for i in 0..24 {
        let system = format!("You are assistant #{i}. Answer briefly.");
        let mut seen = BTreeSet::new();
        for turn in 0..2 {
            let user = format!("question {turn} of session {i}");
            seen.insert(served_by(&client, &a, model_first(&system, &user), &[]).await);
            seen.insert(served_by(&client, &b, model_last(&system, &user), &[]).await);
        }
        scattered += usize::from(seen.len() > 1);
    }
    assert!(
        scattered > 12,
        "only {scattered}/24 prefixes were scattered"
    );
    let (_, misses) = cache_totals(&client, &mocks).await;
    assert!(misses > 24, "{misses} misses");
}

#[tokio::test]
async fn an_endpoint_over_the_load_bound_spills_to_the_next_in_rendezvous_order() {
    let dir = temp_dir("prefix-spill");
    let mocks = mocks(&dir);
    let routes_a = routes(&mocks, "prefix_affinity", &[0, 1, 2, 3], None);
    let a = Proxy::start_standalone(&dir, "proxy-a", &routes_a, "").await;
    let client = reqwest::Client::new();
    let system = "You are a careful reviewer.";
    let home = served_by(&client, &a, model_last(system, "first"), &[]).await;
    let home_index = mocks.iter().position(|m| m.name == home).expect("a mock");
    // The next in rendezvous order is where a proxy without the home endpoint sends the prefix.
    let routes_b = routes(&mocks, "prefix_affinity", &[3, 2, 1, 0], Some(home_index));
    let b = Proxy::start_standalone(&dir, "proxy-b", &routes_b, "").await;
    let next = served_by(&client, &b, model_last(system, "second"), &[]).await;
    assert_ne!(next, home);

    // Hold one slow stream of the same prefix on its home endpoint through proxy a...
    let mut stream_body: Value = serde_json::from_str(&model_last(system, "slow")).expect("json");
    stream_body["stream"] = Value::Bool(true);
    let slow = client
        .post(format!("{}/v1/chat/completions", a.url()))
        .json(&stream_body)
        .send()
        .await
        .expect("stream");
    assert_eq!(slow.status(), 200);
    assert_eq!(
        slow.headers()["x-multiverse-endpoint"].to_str().ok(),
        Some(home.as_str())
    );
    // ... so taking one more would put it over ceil(1.25 × 2 / 4) = 1 in flight: the request
    // goes to the next endpoint in rendezvous order, the one proxy b chose.
    for turn in 0..3 {
        let user = format!("while busy {turn}");
        assert_eq!(
            served_by(&client, &a, model_last(system, &user), &[]).await,
            next
        );
    }
    // Once the stream is over, the prefix is back home.
    let text = slow.text().await.expect("stream body");
    assert!(text.contains("[DONE]"));
    eventually(
        READY_TIMEOUT,
        "the prefix to return to its home endpoint",
        || async {
            (served_by(&client, &a, model_last(system, "after"), &[]).await == home).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_session_header_keys_the_conversation_instead_of_its_prompt() {
    let dir = temp_dir("prefix-session");
    let mocks = mocks(&dir);
    // A configured header name, on both proxies.
    let extra = "[affinity]\nsession_header = \"x-conversation\"";
    let (a, b) = proxies(&dir, &mocks, "prefix_affinity", extra).await;
    let client = reqwest::Client::new();
    let mut homes = BTreeSet::new();
    for s in 0..16 {
        let session = format!("conversation-{s}");
        let mut seen = BTreeSet::new();
        // Every turn has another system prompt: without the header they would spread.
        for turn in 0..4 {
            let system = format!("system prompt {turn} of {s}");
            let headers = [("x-conversation", session.as_str())];
            seen.insert(served_by(&client, &a, model_last(&system, "q"), &headers).await);
            seen.insert(served_by(&client, &b, model_first(&system, "q"), &headers).await);
        }
        assert_eq!(seen.len(), 1, "session {s} went to {seen:?}");
        homes.extend(seen);
    }
    assert!(homes.len() >= 2, "16 sessions all on {homes:?}");
    // The same prompts without the header follow their prefixes, over several endpoints.
    let mut by_prompt = BTreeSet::new();
    for turn in 0..4 {
        let system = format!("system prompt {turn} of 0");
        by_prompt.insert(served_by(&client, &a, model_last(&system, "q"), &[]).await);
    }
    assert!(by_prompt.len() > 1, "4 prompts all on {by_prompt:?}");
}

#[tokio::test]
async fn model_first_with_the_prompt_in_later_chunks_is_keyed_by_the_whole_prefix() {
    // `model` is found in the first chunk; the proxy reads on (to prefix_bytes at most) for the
    // system prompt, which arrives in later chunks, and forwards the body unchanged.
    let dir = temp_dir("prefix-chunks");
    let mocks = mocks(&dir);
    let (a, _b) = proxies(&dir, &mocks, "prefix_affinity", "").await;
    let client = reqwest::Client::new();
    for i in 0..8 {
        let system = format!("You are chunked assistant #{i}, and this sentence is long.");
        let whole = model_first(&system, "q");
        let home = served_by(&client, &a, whole.clone(), &[]).await;
        // Cut after `"model": "demo",` and in the middle of the system prompt.
        let cut1 = whole.find("\"stream\"").expect("stream key");
        let cut2 = whole.find("chunked").expect("prompt text") + 3;
        let pieces = vec![
            whole[..cut1].to_string(),
            whole[cut1..cut2].to_string(),
            whole[cut2..].to_string(),
        ];
        let body = futures::stream::unfold(pieces.into_iter(), |mut rest| async move {
            let next = rest.next()?;
            // Apart in time, so the proxy reads them as separate chunks.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Some((Ok::<_, std::io::Error>(next.into_bytes()), rest))
        });
        let resp = client
            .post(format!("{}/v1/chat/completions", a.url()))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .expect("chunked request");
        assert_eq!(resp.status(), 200);
        let served = resp.headers()["x-multiverse-endpoint"].to_str().ok();
        assert_eq!(served, Some(home.as_str()), "prompt {i}");
        assert_eq!(
            resp.headers()["x-mock-body-fnv1a64"].to_str().ok(),
            Some(fnv1a64_hex(whole.as_bytes()).as_str()),
            "the body arrived unchanged"
        );
    }
}

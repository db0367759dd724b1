//! The `arrow` scenario (issue 16): rows per second of batch embedding (10 000 texts; 300 with
//! `--quick`).
//!
//! One mock-tei (HTTP, `--max-client-batch-size 32`, no latency) behind a standalone proxy with
//! `[batch_embed]` on. The same 10 000 short texts are embedded three ways through that proxy,
//! one after the other, each once: one `BatchEmbed/EmbedArrow` call (the proxy splits it into
//! pieces of 32, `concurrency` 8); `/embed` calls of one text each; `/embed` calls of 32 texts
//! each (both with 8 requests in flight, as the batch call's pieces). Reported: wall time and
//! rows/s per arm. Every row must succeed.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow_array::{RecordBatch, StringArray};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use futures::StreamExt;
use multiverse_proto::embed::v1::batch_embed_client::BatchEmbedClient;
use multiverse_proto::embed::v1::EmbedArrowRequest;
use multiverse_proxy::config::ProxyConfig;
use multiverse_proxy::standalone::RoutesFile;
use multiverse_testkit::{try_free_addr, Launch, MockTei, Proxy};
use serde::Serialize;

const BATCH: usize = 32;
const IN_FLIGHT: usize = 8;
const MODEL: &str = "arrow-bench";

#[derive(Debug, Serialize)]
pub struct ArrowRecord {
    pub rows: usize,
    pub max_client_batch_size: usize,
    pub in_flight: usize,
    pub arms: Vec<ArmRecord>,
}

#[derive(Debug, Serialize)]
pub struct ArmRecord {
    pub arm: &'static str,
    pub requests: usize,
    pub seconds: f64,
    pub rows_per_s: f64,
    pub failed_rows: usize,
}

fn texts(rows: usize) -> Vec<String> {
    (0..rows)
        .map(|i| format!("short text number {i} for the bench"))
        .collect()
}

fn ipc(texts: &[String]) -> anyhow::Result<Vec<u8>> {
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from_iter_values(texts))],
    )?;
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &schema)?;
    w.write(&batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

fn arm(
    arm: &'static str,
    rows: usize,
    requests: usize,
    took: Duration,
    failed_rows: usize,
) -> ArmRecord {
    let seconds = took.as_secs_f64();
    ArmRecord {
        arm,
        requests,
        seconds: (seconds * 1000.0).round() / 1000.0,
        rows_per_s: (rows as f64 / seconds).round(),
        failed_rows,
    }
}

/// `/embed` calls of `size` texts each, `IN_FLIGHT` at once; the rows that failed.
async fn embed_calls(http: &reqwest::Client, url: &str, texts: &[String], size: usize) -> usize {
    futures::stream::iter(texts.chunks(size))
        .map(|chunk| async move {
            let ok = match http
                .post(url)
                .header("x-model", MODEL)
                .json(&serde_json::json!({ "inputs": chunk }))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r
                    .json::<Vec<Vec<f32>>>()
                    .await
                    .is_ok_and(|v| v.len() == chunk.len()),
                _ => false,
            };
            if ok {
                0
            } else {
                chunk.len()
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .fold(0, |a, b| async move { a + b })
        .await
}

pub fn arrow_scenario(
    rt: &tokio::runtime::Runtime,
    launch: &Launch,
    client: &reqwest::Client,
    rows: usize,
) -> anyhow::Result<ArrowRecord> {
    let tei = MockTei::try_start(launch, "mock-tei-arrow", &["--max-client-batch-size", "32"])?;
    let routes: RoutesFile = toml::from_str(&format!(
        "version = \"arrow\"\n[[models]]\nname = \"{MODEL}\"\nkind = \"embedding\"\n\
         [[models.endpoints]]\nid = \"tei-1\"\naddress = \"{}\"\nmax_client_batch_size = {BATCH}\n",
        tei.addr
    ))
    .context("routes")?;
    let listen = try_free_addr()?;
    let mut config = ProxyConfig::default();
    config.batch_embed.listen = Some(listen.to_string());
    config.batch_embed.concurrency = IN_FLIGHT;
    let proxy = Proxy::try_spawn_standalone(launch, "proxy-arrow", config, &routes)?;
    rt.block_on(proxy.try_wait_ready(client))?;
    let texts = texts(rows);
    let payload = ipc(&texts)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()?;
    let url = format!("{}/embed", proxy.url());
    let mut arms = Vec::new();
    rt.block_on(async {
        let mut c = BatchEmbedClient::connect(format!("http://{listen}"))
            .await?
            .max_decoding_message_size(512 * 1024 * 1024);
        // Warm both paths (connections, the mock's vocabulary) on a few rows.
        c.embed_arrow(EmbedArrowRequest {
            model: MODEL.into(),
            arrow_ipc: ipc(&texts[..texts.len().min(64)])?,
            ..Default::default()
        })
        .await?;
        embed_calls(&http, &url, &texts[..texts.len().min(64)], BATCH).await;
        let started = Instant::now();
        let resp = c
            .embed_arrow(EmbedArrowRequest {
                model: MODEL.into(),
                arrow_ipc: payload,
                ..Default::default()
            })
            .await?
            .into_inner();
        let took = started.elapsed();
        let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(&resp.arrow_ipc), None)?;
        let mut answered = 0;
        for b in reader {
            answered += b?.num_rows();
        }
        anyhow::ensure!(
            answered == rows,
            "EmbedArrow answered {answered} rows for {rows}"
        );
        arms.push(arm("embed_arrow", rows, 1, took, resp.failed_rows as usize));
        for (name, size) in [("embed_batch_1", 1), ("embed_batch_32", BATCH)] {
            let started = Instant::now();
            let failed = embed_calls(&http, &url, &texts, size).await;
            arms.push(arm(
                name,
                rows,
                rows.div_ceil(size),
                started.elapsed(),
                failed,
            ));
        }
        anyhow::Ok(())
    })?;
    drop(proxy);
    drop(tei);
    Ok(ArrowRecord {
        rows,
        max_client_batch_size: BATCH,
        in_flight: IN_FLIGHT,
        arms,
    })
}

/// The scenario's table.
pub fn print_arrow(r: &ArrowRecord) {
    println!(
        "arrow: {} short texts, max_client_batch_size {}, {} in flight",
        r.rows, r.max_client_batch_size, r.in_flight
    );
    println!(
        "  {:<16} {:>9} {:>9} {:>10} {:>7}",
        "arm", "requests", "seconds", "rows/s", "failed"
    );
    for a in &r.arms {
        println!(
            "  {:<16} {:>9} {:>9.3} {:>10} {:>7}",
            a.arm, a.requests, a.seconds, a.rows_per_s, a.failed_rows
        );
    }
    println!();
}

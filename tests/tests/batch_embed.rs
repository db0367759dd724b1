//! Arrow batch embedding (`multiverse.embed.v1.BatchEmbed/EmbedArrow`) through real processes:
//! a standalone proxy over two mock-tei with a small `max_client_batch_size` (pieces split to
//! fit, spread over both, answered in input order, a row TEI refuses failing alone), the bad
//! inputs and their gRPC codes, inference keys (UNAUTHENTICATED, PERMISSION_DENIED), and a
//! control plane that reads a TEI instance's `/info` limits and pushes them to the proxy, whose
//! batch calls then fit them (and its `/info` reader against mock-tei over HTTP and gRPC).

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_ipc::CompressionType;
use arrow_schema::{DataType, Field, Schema};
use multiverse_proto::embed::v1::batch_embed_client::BatchEmbedClient;
use multiverse_proto::embed::v1::{EmbedArrowRequest, EmbedArrowResponse};
use multiverse_tests::*;
use serde_json::{json, Value};

/// An Arrow IPC stream (LZ4 frames when `lz4`) with an `id` column and a `text` column.
fn arrow_texts(texts: &[String], lz4: bool) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let ids = Int64Array::from_iter_values(0..texts.len() as i64);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(ids),
            Arc::new(StringArray::from_iter_values(texts)),
        ],
    )
    .expect("batch");
    let mut options = IpcWriteOptions::default();
    if lz4 {
        options = options
            .try_with_compression(Some(CompressionType::LZ4_FRAME))
            .expect("lz4");
    }
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new_with_options(&mut out, &schema, options).expect("writer");
    w.write(&batch).expect("write");
    w.finish().expect("finish");
    drop(w);
    out
}

/// The answer's rows: an embedding or an error each.
fn rows(resp: &EmbedArrowResponse) -> Vec<Result<Vec<f32>, String>> {
    let reader = StreamReader::try_new(Cursor::new(&resp.arrow_ipc[..]), None).expect("stream");
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let emb = batch
            .column_by_name("embedding")
            .expect("embedding column")
            .as_list::<i32>();
        let err = batch
            .column_by_name("error")
            .expect("error column")
            .as_string::<i32>();
        for i in 0..batch.num_rows() {
            out.push(if emb.is_valid(i) {
                assert!(err.is_null(i), "row {i} has both");
                Ok(emb.value(i).as_primitive::<Float32Type>().values().to_vec())
            } else {
                Err(err.value(i).to_string())
            });
        }
    }
    out
}

async fn client(addr: std::net::SocketAddr) -> BatchEmbedClient<tonic::transport::Channel> {
    BatchEmbedClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to batch_embed")
        .max_decoding_message_size(256 * 1024 * 1024)
}

fn request(model: &str, arrow_ipc: Vec<u8>) -> EmbedArrowRequest {
    EmbedArrowRequest {
        model: model.into(),
        arrow_ipc,
        ..Default::default()
    }
}

/// What mock-tei's `/embed` answers for `text` alone (its model is deterministic).
async fn direct(http: &reqwest::Client, tei: &MockTei, text: &str) -> Vec<f32> {
    let v: Vec<Vec<f32>> = http
        .post(format!("{}/embed", tei.url()))
        .json(&json!({"inputs": [text]}))
        .send()
        .await
        .expect("direct /embed")
        .json()
        .await
        .expect("embeddings");
    v.into_iter().next().expect("one")
}

async fn embed_batches(http: &reqwest::Client, tei: &MockTei) -> Vec<u32> {
    http.get(format!("{}/mock/embed_batches", tei.url()))
        .send()
        .await
        .expect("/mock/embed_batches")
        .json()
        .await
        .expect("a list")
}

fn texts(n: usize, long_row: Option<usize>) -> Vec<String> {
    (0..n)
        .map(|i| match long_row {
            // More words than mock-tei's 512-token maximum: refused without `truncate`.
            Some(l) if l == i => "word ".repeat(600),
            _ => format!("row {i} says hello"),
        })
        .collect()
}

#[tokio::test]
async fn embed_arrow_splits_to_fit_keeps_order_and_fails_only_bad_rows() {
    let dir = temp_dir("batch-embed");
    let args = ["--max-client-batch-size", "4", "--latency-ms", "40"];
    let a = MockTei::start(&dir, "tei-a", &args);
    let b = MockTei::start(&dir, "tei-b", &args);
    let listen = try_free_addr().expect("free port");
    let routes = format!(
        r#"version = "batch"

[[models]]
name = "embed"
kind = "embedding"
[[models.endpoints]]
id = "tei-a"
address = "{}"
max_client_batch_size = 4
[[models.endpoints]]
id = "tei-b"
address = "{}"
max_client_batch_size = 4

[[models]]
name = "chat"
kind = "chat"
[[models.endpoints]]
id = "tei-a"
address = "{}"
"#,
        a.addr, b.addr, a.addr
    );
    let proxy = Proxy::start_standalone(
        &dir,
        "proxy-batch",
        &routes,
        &format!("[batch_embed]\nlisten = \"{listen}\"\nmax_rows = 50\n"),
    )
    .await;
    let http = reqwest::Client::new();
    let mut c = client(listen).await;

    // 21 rows, row 10 too long for TEI: pieces of at most 4, both endpoints used, rows in
    // input order, and only row 10 failed (its piece was retried row by row).
    let input = texts(21, Some(10));
    let resp = c
        .embed_arrow(request("embed", arrow_texts(&input, true)))
        .await
        .unwrap_or_else(|s| panic!("EmbedArrow: {s}\n{}", proxy.proc.tail_log()))
        .into_inner();
    let got = rows(&resp);
    assert_eq!(got.len(), 21);
    assert_eq!(resp.failed_rows, 1);
    for (i, row) in got.iter().enumerate() {
        if i == 10 {
            let e = row.as_ref().expect_err("row 10 is refused");
            assert!(e.contains("413") && e.contains("tokens"), "row 10: {e}");
        } else {
            let v = row.as_ref().unwrap_or_else(|e| panic!("row {i}: {e}"));
            assert_eq!(
                v,
                &direct(&http, &a, &input[i]).await,
                "row {i} is the embedding of text {i}"
            );
        }
    }
    let (sa, sb) = (
        embed_batches(&http, &a).await,
        embed_batches(&http, &b).await,
    );
    // The direct calls above were one input each, on `a`.
    let sa: Vec<u32> = sa[..sa.len() - 20].to_vec();
    let mut all: Vec<u32> = sa.iter().chain(&sb).copied().collect();
    all.sort_unstable();
    assert!(
        !sa.is_empty() && !sb.is_empty(),
        "both endpoints: {sa:?} {sb:?}"
    );
    // Pieces [0-3] [4-7] [8-11] [12-15] [16-19] [20]; [8-11] refused, then 8, 9, 10, 11 alone.
    assert_eq!(all, [1, 1, 1, 1, 1, 4, 4, 4, 4, 4], "a: {sa:?}, b: {sb:?}");

    // Bad input: clear gRPC codes, never a panic; the proxy keeps serving.
    let cases: [(EmbedArrowRequest, tonic::Code, &str); 6] = [
        (
            request("embed", b"not arrow".to_vec()),
            tonic::Code::InvalidArgument,
            "Arrow IPC",
        ),
        (
            EmbedArrowRequest {
                text_column: "body".into(),
                ..request("embed", arrow_texts(&input, false))
            },
            tonic::Code::InvalidArgument,
            "no column `body`",
        ),
        (
            EmbedArrowRequest {
                text_column: "id".into(),
                ..request("embed", arrow_texts(&input, false))
            },
            tonic::Code::InvalidArgument,
            "Utf8",
        ),
        (
            request("nope", arrow_texts(&input, false)),
            tonic::Code::NotFound,
            "nope",
        ),
        (
            request("chat", arrow_texts(&input, false)),
            tonic::Code::InvalidArgument,
            "embedding",
        ),
        (
            request("embed", arrow_texts(&texts(51, None), false)),
            tonic::Code::InvalidArgument,
            "max_rows",
        ),
    ];
    for (req, code, says) in cases {
        let what = format!("{}/{}", req.model, req.text_column);
        let s = c.embed_arrow(req).await.expect_err(&what);
        assert_eq!(s.code(), code, "{what}: {s}");
        assert!(s.message().contains(says), "{what}: {}", s.message());
    }
    let ok = c
        .embed_arrow(request("embed", arrow_texts(&texts(3, None), false)))
        .await
        .expect("still serving");
    assert_eq!(rows(ok.get_ref()).len(), 3);
}

/// The control plane's `[instances]` running mock-tei on ports `range`.
fn control_body(range: (u16, u16)) -> String {
    format!(
        "[admin]\napi_keys = [\"k-batch-embed-key\"]\n\
         [instances]\nbinary = \"{}\"\nport_range = [{}, {}]\nstartup_probe_interval_ms = 50\n\
         liveness_interval_ms = 500\nprobe_timeout_ms = 1000\nstartup_timeout_ms = 10000\n\
         [discovery]\ncoalesce_ms = 20\n",
        bin("mock-tei").display(),
        range.0,
        range.1
    )
}

#[tokio::test]
async fn the_control_plane_pushes_tei_info_limits_that_batch_calls_fit() {
    let dir = temp_dir("batch-embed-cp");
    let base = free_port();
    let cp = Control::start(&dir, "cp-batch", &control_body((base, base + 20))).await;
    let http = reqwest::Client::new();
    // max_client_batch_size is passed to TEI; max_batch_tokens is not (the proxy can only
    // learn TEI's 16384 from /info).
    let r = http
        .post(format!("{}/instances", cp.api_url()))
        .bearer_auth("k-batch-embed-key")
        .json(&json!({"name": "tei-1", "model_id": "bge", "max_client_batch_size": 3}))
        .send()
        .await
        .expect("create");
    assert_eq!(
        r.status().as_u16(),
        201,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let listen = try_free_addr().expect("free port");
    let proxy = Proxy::start_with(
        &dir,
        "proxy-batch-cp",
        &[cp.discovery_url()],
        &format!("[batch_embed]\nlisten = \"{listen}\"\n"),
    )
    .await;
    let endpoint: Value = eventually(Duration::from_secs(30), "the instance's limits", || {
        let (http, proxy) = (&http, &proxy);
        async move {
            let dump = proxy.config_dump(http).await?;
            let e = dump["table"]["models"]["bge"]["endpoints"][0].clone();
            (e["health"] == "healthy" && e["max_batch_tokens"] == 16384).then_some(e)
        }
    })
    .await;
    assert_eq!(endpoint["max_client_batch_size"], 3, "{endpoint}");

    let mut c = client(listen).await;
    let resp = c
        .embed_arrow(request("bge", arrow_texts(&texts(7, None), false)))
        .await
        .unwrap_or_else(|s| panic!("EmbedArrow: {s}\n{}", proxy.proc.tail_log()))
        .into_inner();
    let got = rows(&resp);
    assert_eq!(got.len(), 7);
    assert!(got.iter().all(Result::is_ok), "{got:?}");
    let port = endpoint["address"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .expect("address")
        .to_string();
    let mut sizes: Vec<u32> = http
        .get(format!("http://127.0.0.1:{port}/mock/embed_batches"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("list");
    // Pieces run in parallel: arrival order is theirs.
    sizes.sort_unstable();
    assert_eq!(
        sizes,
        [1, 3, 3],
        "pieces fit the pushed max_client_batch_size"
    );
}

#[tokio::test]
async fn embed_arrow_checks_inference_keys() {
    let dir = temp_dir("batch-embed-keys");
    let tei = MockTei::start(&dir, "tei-keys", &[]);
    let random: [u8; 32] = rand::random();
    let secret = multiverse_common::keys::secret_from(&random);
    let hash =
        multiverse_common::keys::to_hex(&multiverse_common::keys::hash_secret(secret.as_bytes()));
    let mut routes = String::from("version = \"batch-keys\"\n");
    for model in ["embed", "other"] {
        routes.push_str(&format!(
            "\n[[models]]\nname = \"{model}\"\nkind = \"embedding\"\n[[models.endpoints]]\n\
             id = \"{model}-1\"\naddress = \"{}\"\n",
            tei.addr
        ));
    }
    routes.push_str(&format!(
        "\n[auth]\nmode = \"keys\"\n[[auth.keys]]\nid = \"team-a\"\nsha256 = \"{hash}\"\nmodels = [\"embed\"]\n"
    ));
    let listen = try_free_addr().expect("free port");
    let _proxy = Proxy::start_standalone(
        &dir,
        "proxy-batch-keys",
        &routes,
        &format!("[batch_embed]\nlisten = \"{listen}\"\n"),
    )
    .await;
    let mut c = client(listen).await;
    let with_key = |model: &str, key: Option<&str>| {
        let mut r = tonic::Request::new(request(model, arrow_texts(&texts(2, None), false)));
        if let Some(k) = key {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {k}").parse().expect("metadata value"),
            );
        }
        r
    };
    let s = c
        .embed_arrow(with_key("embed", None))
        .await
        .expect_err("no key");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s}");
    let s = c
        .embed_arrow(with_key("embed", Some("mv-not-a-key")))
        .await
        .expect_err("bad key");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s}");
    let s = c
        .embed_arrow(with_key("other", Some(&secret)))
        .await
        .expect_err("model not allowed");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s}");
    let ok = c
        .embed_arrow(with_key("embed", Some(&secret)))
        .await
        .expect("the key's model");
    assert_eq!(rows(ok.get_ref()).len(), 2);
}

#[tokio::test]
async fn the_info_reader_reads_tei_limits_over_http_and_grpc() {
    use multiverse_control::instances::supervisor::info::InfoReader;
    use multiverse_control::store::Protocol;
    let dir = temp_dir("batch-embed-info");
    for (name, protocol) in [("info-http", Protocol::Http), ("info-grpc", Protocol::Grpc)] {
        let mut args = vec!["--max-client-batch-size", "7", "--max-batch-tokens", "777"];
        if protocol == Protocol::Grpc {
            args.push("--grpc");
        }
        let tei = MockTei::start(&dir, name, &args);
        let reader = InfoReader {
            http: reqwest::Client::new(),
            protocol,
            host: "127.0.0.1".into(),
            port: tei.addr.port(),
            timeout: Duration::from_secs(5),
        };
        let limits = reader
            .read()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (limits.max_client_batch_size, limits.max_batch_tokens),
            (7, 777),
            "{name}"
        );
    }
}

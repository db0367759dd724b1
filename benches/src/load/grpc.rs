//! gRPC load clients for TEI's `tei.v1.Embed` service (tonic): unary `Embed` calls multiplexed
//! on one HTTP/2 connection, and a pool of long-lived bidirectional `EmbedStream` streams on
//! which each call is one message round trip.
//!
//! Every call carries `x-model` metadata when a model is given (the proxy routes by it; a mock
//! ignores it). Both clients bound the calls in flight; the wait for a free slot is measured
//! like any other. Failures are returned as text, not retried.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use multiverse_proto::tei::v1 as tei;
use tei::embed_client::EmbedClient;
use tokio::sync::{mpsc, Semaphore, SemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// Opens one HTTP/2 connection (a tonic channel) to `addr`.
pub async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))
        .context("endpoint URL")?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot open a gRPC connection to {addr}"))
}

fn request<T>(
    message: T,
    model: Option<&MetadataValue<tonic::metadata::Ascii>>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(model) = model {
        request.metadata_mut().insert("x-model", model.clone());
    }
    request
}

fn model_value(
    model: Option<&str>,
) -> anyhow::Result<Option<MetadataValue<tonic::metadata::Ascii>>> {
    model
        .map(|m| m.parse().context("x-model must be ASCII"))
        .transpose()
}

/// The request every call sends.
pub fn embed_request(text: &str) -> tei::EmbedRequest {
    tei::EmbedRequest {
        inputs: text.to_string(),
        normalize: Some(true),
        ..Default::default()
    }
}

fn check(reply: &tei::EmbedResponse) -> Result<(), String> {
    if reply.embeddings.is_empty() {
        Err("an EmbedResponse without embeddings".into())
    } else {
        Ok(())
    }
}

/// Unary `Embed` calls on one connection.
#[derive(Debug)]
pub struct UnaryClient {
    client: EmbedClient<Channel>,
    model: Option<MetadataValue<tonic::metadata::Ascii>>,
    permits: Semaphore,
}

impl UnaryClient {
    /// Connects to `addr`; at most `max_in_flight` calls at once.
    pub async fn connect(
        addr: SocketAddr,
        model: Option<&str>,
        max_in_flight: usize,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: EmbedClient::new(channel(addr).await?),
            model: model_value(model)?,
            permits: Semaphore::new(max_in_flight.max(1)),
        })
    }

    /// One `Embed` call of `text`.
    pub async fn embed(&self, text: &str) -> Result<(), String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "client closed".to_string())?;
        let mut client = self.client.clone();
        let reply = client
            .embed(request(embed_request(text), self.model.as_ref()))
            .await
            .map_err(|s| format!("Embed: {:?}: {}", s.code(), s.message()))?;
        check(reply.get_ref())
    }
}

/// One open `EmbedStream`: where requests go in and replies come out.
#[derive(Debug)]
struct BidiStream {
    tx: mpsc::Sender<tei::EmbedRequest>,
    rx: Streaming<tei::EmbedResponse>,
}

/// A pool of long-lived `EmbedStream` streams, multiplexed on one connection. A call takes a
/// free stream, sends one message and waits for its reply (per-message round trip).
#[derive(Debug)]
pub struct BidiPool {
    client: EmbedClient<Channel>,
    model: Option<MetadataValue<tonic::metadata::Ascii>>,
    idle: Mutex<Vec<Option<BidiStream>>>,
    permits: Semaphore,
    size: usize,
}

impl BidiPool {
    /// Connects to `addr` and opens `streams` (at least 1) streams now.
    pub async fn open(
        addr: SocketAddr,
        model: Option<&str>,
        streams: usize,
    ) -> anyhow::Result<Self> {
        let size = streams.max(1);
        let pool = Self {
            client: EmbedClient::new(channel(addr).await?),
            model: model_value(model)?,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
            size,
        };
        let mut opened = Vec::with_capacity(size);
        for _ in 0..size {
            opened.push(Some(pool.open_stream().await.map_err(anyhow::Error::msg)?));
        }
        *pool.lock() = opened;
        Ok(pool)
    }

    /// Streams in the pool.
    pub fn size(&self) -> usize {
        self.size
    }

    async fn open_stream(&self) -> Result<BidiStream, String> {
        let (tx, rx) = mpsc::channel(1);
        let mut client = self.client.clone();
        let replies = client
            .embed_stream(request(ReceiverStream::new(rx), self.model.as_ref()))
            .await
            .map_err(|s| format!("EmbedStream: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        Ok(BidiStream { tx, rx: replies })
    }

    /// Sends `text` on a free stream and waits for its reply.
    pub async fn round_trip(&self, text: &str) -> Result<(), String> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "pool closed".to_string())?;
        let slot = self
            .lock()
            .pop()
            .ok_or_else(|| "stream pool bookkeeping error: no idle slot".to_string())?;
        let mut lease = Lease {
            pool: self,
            stream: slot,
            _permit: permit,
        };
        let mut stream = match lease.stream.take() {
            Some(stream) => stream,
            None => self.open_stream().await?,
        };
        stream
            .tx
            .send(embed_request(text))
            .await
            .map_err(|_| "EmbedStream: the request stream is closed".to_string())?;
        let reply = stream
            .rx
            .message()
            .await
            .map_err(|s| format!("EmbedStream: {:?}: {}", s.code(), s.message()))?
            .ok_or_else(|| "EmbedStream ended early".to_string())?;
        check(&reply)?;
        // Only a stream that completed its round trip goes back for reuse.
        lease.stream = Some(stream);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<BidiStream>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A slot taken from a [`BidiPool`]; returned (with or without its stream) on drop.
struct Lease<'a> {
    pool: &'a BidiPool,
    stream: Option<BidiStream>,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.lock().push(self.stream.take());
    }
}

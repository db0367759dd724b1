//! A bounded pool of HTTP/1.1 keep-alive connections to one target, on hyper's
//! connection-level client.
//!
//! The pool holds at most `size` connections and so at most `size` requests in flight; further
//! requests wait (FIFO) for a free connection. That wait is part of what an open-loop
//! benchmark must measure — a client with a fixed number of connections sees it too — and since
//! latency is measured from the intended send time it is counted. Connections are opened up
//! front by [`Http1Pool::warm`] so connection setup does not land in the measurement, and are
//! reopened lazily (by the next request that gets the slot) after a failure or a
//! `Connection: close`. A failed request is not retried: it is reported as an error.
//!
//! hyper's pooled `Client` is not used because it opens a new connection whenever all are busy,
//! which changes the load the server sees exactly when it is slow.

use std::net::SocketAddr;
use std::sync::Mutex;

use anyhow::{anyhow, Context};
use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};

type Sender = SendRequest<Full<Bytes>>;

/// Up to `size` keep-alive HTTP/1.1 connections to one address.
#[derive(Debug)]
pub struct Http1Pool {
    addr: SocketAddr,
    host: HeaderValue,
    /// Idle slots: `Some` holds an open connection, `None` one to (re)open on next use.
    idle: Mutex<Vec<Option<Sender>>>,
    /// One permit per slot; holding a permit guarantees an entry in `idle` to take.
    permits: Semaphore,
    size: usize,
}

impl Http1Pool {
    /// A pool of `size` (at least 1) connections to `addr`; none is opened yet.
    pub fn new(addr: SocketAddr, size: usize) -> Self {
        let size = size.max(1);
        Self {
            addr,
            host: HeaderValue::from_str(&addr.to_string())
                .expect("a socket address is a valid Host"),
            idle: Mutex::new((0..size).map(|_| None).collect()),
            permits: Semaphore::new(size),
            size,
        }
    }

    /// The target address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The number of connections (and of requests in flight) the pool allows.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Opens every connection now.
    pub async fn warm(&self) -> anyhow::Result<()> {
        let permits = self
            .permits
            .acquire_many(self.size as u32)
            .await
            .context("pool closed")?;
        let mut opened = Vec::with_capacity(self.size);
        for _ in 0..self.size {
            opened.push(Some(self.connect().await?));
        }
        *self.lock() = opened;
        drop(permits);
        Ok(())
    }

    /// Sends `request` on a pooled connection (waiting for one if all are busy) and reads the
    /// whole response body. `Host` is set to the target's address unless the request has one.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> anyhow::Result<Response<Bytes>> {
        self.send_observed(request, |_| {}).await
    }

    /// Like [`Http1Pool::send`], calling `on_data` with each body frame as it arrives (before
    /// the body is complete), e.g. to time the events of a server-sent event stream.
    pub async fn send_observed(
        &self,
        mut request: Request<Full<Bytes>>,
        mut on_data: impl FnMut(&Bytes),
    ) -> anyhow::Result<Response<Bytes>> {
        if !request.headers().contains_key(HOST) {
            request.headers_mut().insert(HOST, self.host.clone());
        }
        let mut lease = self.lease().await?;
        let mut sender = match lease.conn.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender
            .ready()
            .await
            .with_context(|| format!("connection to {} failed", self.addr))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("request to {} failed", self.addr))?;
        let (parts, body) = response.into_parts();
        let body = collect(body, self.addr, &mut on_data).await?;
        // Only a connection that completed an exchange goes back for reuse; on any error above
        // the lease returns an empty slot and the connection is dropped.
        lease.conn = Some(sender);
        Ok(Response::from_parts(parts, body))
    }

    async fn lease(&self) -> anyhow::Result<Lease<'_>> {
        let permit = self.permits.acquire().await.context("pool closed")?;
        let conn = self
            .lock()
            .pop()
            .ok_or_else(|| anyhow!("connection pool bookkeeping error: no idle slot"))?;
        Ok(Lease {
            pool: self,
            conn,
            _permit: permit,
        })
    }

    async fn connect(&self) -> anyhow::Result<Sender> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {} failed", self.addr))?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes; errors surface on the sender.
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Sender>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A slot taken from the pool; returns it (with or without a connection) when dropped, which
/// also covers a request future dropped midway (e.g. by a timeout).
struct Lease<'a> {
    pool: &'a Http1Pool,
    conn: Option<Sender>,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Runs before `_permit` is released, so a waiter always finds this slot.
        self.pool.lock().push(self.conn.take());
    }
}

/// Reads a response body to its end, calling `on_data` with each data frame as it arrives.
pub(crate) async fn collect(
    mut body: hyper::body::Incoming,
    addr: SocketAddr,
    mut on_data: impl FnMut(&Bytes),
) -> anyhow::Result<Bytes> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("reading the response from {addr} failed"))?;
        if let Ok(data) = frame.into_data() {
            on_data(&data);
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

/// A GET request for `path`.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// The start of a response body, for error messages.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A tiny keep-alive HTTP/1.1 server counting accepted connections and in-flight requests.
    async fn server(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let (acc, pk) = (accepted.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                acc.fetch_add(1, Ordering::SeqCst);
                let (active, peak) = (active.clone(), pk.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let (active, peak) = (active.clone(), peak.clone());
                        async move {
                            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            active.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted, peak)
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/").body(Full::new(Bytes::new())).unwrap()
    }

    #[tokio::test]
    async fn reuses_and_bounds_connections() {
        let (addr, accepted, peak) = server(Duration::from_millis(20)).await;
        let pool = Arc::new(Http1Pool::new(addr, 3));
        pool.warm().await.unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.send(get()).await })
            })
            .collect();
        for t in tasks {
            let response = t.await.unwrap().unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.body().as_ref(), b"ok");
        }
        // Twelve requests, never more than three at once, on the three warm connections.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn cancelled_request_frees_its_slot() {
        let (addr, accepted, _) = server(Duration::from_millis(200)).await;
        let pool = Http1Pool::new(addr, 1);
        let timed_out = tokio::time::timeout(Duration::from_millis(20), pool.send(get())).await;
        assert!(timed_out.is_err());
        // The slot came back empty, so the next request reconnects instead of hanging.
        let response = pool.send(get()).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connect_failure_is_an_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let pool = Http1Pool::new(addr, 2);
        assert!(pool.send(get()).await.is_err());
        assert!(pool.warm().await.is_err());
    }
}

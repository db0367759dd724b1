//! An HTTP/2 cleartext client with prior knowledge (h2c, no upgrade), on hyper's
//! connection-level client: a few multiplexed connections to one target and a bound on the
//! requests in flight.
//!
//! Requests are spread round robin over the connections; each connection carries many
//! concurrent streams. At most `max_in_flight` requests are outstanding (later ones wait, FIFO,
//! and the wait is measured like any other). A connection that has closed is reopened by the
//! next request that picks it. Failed requests are not retried.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

type Sender = SendRequest<Full<Bytes>>;

/// h2c connections to one address.
#[derive(Debug)]
pub struct H2Client {
    addr: SocketAddr,
    authority: Authority,
    conns: Vec<Mutex<Option<Sender>>>,
    next: AtomicUsize,
    permits: Semaphore,
}

impl H2Client {
    /// Opens `connections` (at least 1) h2c connections to `addr` now.
    pub async fn connect(
        addr: SocketAddr,
        connections: usize,
        max_in_flight: usize,
    ) -> anyhow::Result<Self> {
        let mut conns = Vec::new();
        for _ in 0..connections.max(1) {
            conns.push(Mutex::new(Some(open(addr).await?)));
        }
        Ok(Self {
            addr,
            authority: addr.to_string().parse().context("authority")?,
            conns,
            next: AtomicUsize::new(0),
            permits: Semaphore::new(max_in_flight.max(1)),
        })
    }

    /// The target address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `request` (its URI's path and query are kept; scheme and authority are set to
    /// this target) and reads the whole response body.
    pub async fn send(&self, mut request: Request<Full<Bytes>>) -> anyhow::Result<Response<Bytes>> {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some("/".parse().expect("a valid path"));
        }
        *request.uri_mut() = Uri::from_parts(parts).context("request URI")?;
        let _permit = self.permits.acquire().await.context("client closed")?;
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut sender = {
            let mut slot = self.conns[index].lock().await;
            match slot.as_ref() {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let sender = open(self.addr).await?;
                    *slot = Some(sender.clone());
                    sender
                }
            }
        };
        sender
            .ready()
            .await
            .with_context(|| format!("h2c connection to {} failed", self.addr))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("h2c request to {} failed", self.addr))?;
        let (parts, body) = response.into_parts();
        let body = super::http::collect(body, self.addr, |_| {}).await?;
        Ok(Response::from_parts(parts, body))
    }
}

async fn open(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("h2c handshake with {addr} failed"))?;
    tokio::spawn(async move {
        // Ends when every sender is dropped or the peer closes; errors surface on the senders.
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn h2c_round_trips_multiplexed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                acc.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<_>| async move {
                        let body = format!("{} {:?}", req.uri().path(), req.version());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let client = Arc::new(H2Client::connect(addr, 1, 8).await.unwrap());
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    let req = Request::get(format!("/x/{i}"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    client.send(req).await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let response = t.await.unwrap().unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.body().as_ref(),
                format!("/x/{i} HTTP/2.0").as_bytes()
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one multiplexed connection"
        );
    }
}

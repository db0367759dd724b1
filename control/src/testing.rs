//! Test support: a loopback HTTP/1.1 server standing in for a backend or a webhook receiver.
//! Only built for tests; on hyper, so that the HTTP framework stays the API layer's alone.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request as the handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Serves `handler` on `addr` (port 0 for any) until the runtime ends; returns the bound
/// address. The handler answers with a status and a body; `Fut` may also never finish (a hang).
pub async fn serve<F, Fut>(addr: SocketAddr, handler: F) -> SocketAddr
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (u16, String)> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let bound = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let (status, text) = handler(Request {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_string(),
                        headers: parts.headers,
                        body,
                    })
                    .await;
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                    *resp.status_mut() =
                        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    Ok::<_, hyper::Error>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    bound
}

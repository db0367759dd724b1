//! The upstream side of an attempt: the pingora peer for an endpoint and the request rewrite it
//! needs (Host, upstream credentials, path prefix).

use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::tls::CaType;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::RequestHeader;

use crate::request::auth::CREDENTIAL_HEADERS;
use crate::routing::table::{Endpoint, Policy, Protocol};

/// Proxy-wide upstream settings, used where a model's policy sets none.
#[derive(Debug, Clone)]
pub struct UpstreamDefaults {
    pub connect_timeout: Duration,
    /// Longest wait for the response header, and between body reads unless the model sets an
    /// idle timeout.
    pub read_timeout: Duration,
    /// Concurrent streams per HTTP/2 upstream connection.
    pub max_h2_streams: usize,
    /// `[upstream] tls_ca_file`: what `https://` endpoints are verified against (`None`: the
    /// system's roots).
    pub tls_ca: Option<Arc<CaType>>,
}

/// Builds the peer for one attempt.
pub fn peer(endpoint: &Endpoint, policy: &Policy, defaults: &UpstreamDefaults) -> HttpPeer {
    let sni = if endpoint.tls {
        endpoint
            .host
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    } else {
        String::new()
    };
    // SNI and the name the certificate is verified against: the endpoint's host.
    let mut peer = HttpPeer::new(endpoint.addr, endpoint.tls, sni);
    if endpoint.tls {
        // An Arc clone; pingora builds the root store when it opens a connection.
        peer.options.ca = defaults.tls_ca.clone();
    }
    // Pool upstream connections per worker thread: a connection is driven by the reactor of the
    // thread that opened it, so lending it to another thread would bounce every read across.
    peer.group_key = worker_key();
    match endpoint.protocol {
        Protocol::Http1 => peer.options.set_http_version(1, 1),
        Protocol::H2c | Protocol::Grpc => {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = defaults.max_h2_streams;
        }
    }
    peer.options.connection_timeout =
        Some(policy.connect_timeout.unwrap_or(defaults.connect_timeout));
    // Until the response header arrives; body reads then wait at most the idle timeout
    // (`Gateway::upstream_idle_timeout`).
    let read = policy.first_byte_timeout.unwrap_or(defaults.read_timeout);
    peer.options.read_timeout = Some(read);
    peer
}

/// A key unique to the calling thread (stable for its life).
fn worker_key() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    KEY.with(|k| *k)
}

/// Rewrites the request for the endpoint. `keyed`: the client authenticated with a gateway
/// key, which the upstream must never see, so every credential header is removed (in open
/// mode a client's own `Authorization` passes through, as before keys existed); the endpoint's
/// own key, if it has one, replaces it either way.
pub fn rewrite_request(req: &mut RequestHeader, endpoint: &Endpoint, keyed: bool) -> Result<()> {
    req.insert_header(http::header::HOST, endpoint.host.as_str())?;
    if keyed {
        for h in &CREDENTIAL_HEADERS {
            req.remove_header(h.name());
        }
    }
    if let Some(auth) = &endpoint.authorization {
        // `Authorization`'s typed name: not parsed, not copied.
        req.insert_header(&CREDENTIAL_HEADERS[0], auth.clone())?;
    }
    if !endpoint.path_prefix.is_empty() {
        let path_and_query = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri = format!("{}{}", endpoint.path_prefix, path_and_query);
        match uri.parse() {
            Ok(uri) => req.set_uri(uri),
            Err(_) => {
                return pingora_error::Error::e_explain(
                    pingora_error::ErrorType::InternalError,
                    "path prefix produced an invalid URI",
                )
            }
        }
    }
    Ok(())
}

//! mTLS for operators on the operator API (`[admin.tls] client_ca_file`): who the client is,
//! by certificate. The identity is the certificate presented in the TLS handshake (verified
//! there: client CA and allow-list), or — only when the TCP peer is in `trusted_proxies`, a
//! TLS-terminating reverse proxy — the certificate that proxy forwards in `X-SSL-Client-Cert`
//! (URL-encoded PEM, nginx's `$ssl_client_escaped_cert`), verified here the same way. From any
//! other peer the header is removed unread, so nothing behind this layer ever sees it.
//!
//! With a client CA, every request but `GET /health` (load balancers' probes) needs an
//! identity: none → 401 `UNAUTHORIZED`; a forwarded certificate the CA did not sign or whose
//! names are not allowed → 403 `FORBIDDEN`. The operator API keys are still required where
//! they were (`/admin/*`, …): the certificate decides who may talk to the API at all, the key
//! what they may change.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderName;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::tls_listener::PeerCert;
use super::{ApiError, ErrorCode};
use crate::tls::ServerTls;

/// The header a TLS-terminating reverse proxy forwards the client's certificate in.
pub static FORWARDED_CERT: HeaderName = HeaderName::from_static("x-ssl-client-cert");

/// The listener's TLS and the peers trusted to forward a certificate.
pub struct ClientCerts {
    pub tls: Arc<ServerTls>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A client CA is configured: an identity is required.
    pub required: bool,
}

/// Whether `ip` (an IPv4-mapped IPv6 address as its IPv4) is in one of `nets`.
fn trusted(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|net| net.contains(&ip))
}

/// The certificate names the request was made with, put in the request's extensions (nothing
/// reads them yet: a handler or an audit log can).
#[derive(Debug, Clone)]
pub struct ClientIdentity(pub Arc<[String]>);

/// Why a forwarded certificate is not taken.
fn parse_forwarded(value: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = percent_encoding::percent_decode(value).collect::<Vec<u8>>();
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(chain)
}

/// The middleware.
pub async fn require(
    State(certs): State<Arc<ClientCerts>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // Removed whoever sent it; read only from a trusted proxy.
    let forwarded = req.headers_mut().remove(&FORWARDED_CERT);
    let forwarded =
        forwarded.filter(|_| peer.is_some_and(|ip| trusted(&certs.trusted_proxies, ip)));
    let identity = match forwarded {
        Some(value) => {
            let verified = parse_forwarded(value.as_bytes()).and_then(|chain| {
                match certs.tls.current().verify_client(&chain) {
                    Some(result) => result.map_err(|e| e.to_string()),
                    None => Err("no client CA to verify it against".into()),
                }
            });
            match verified {
                Ok(names) => Some(Arc::<[String]>::from(names)),
                Err(reason) => {
                    tracing::warn!(peer = ?peer, %reason, "forwarded client certificate refused");
                    return ApiError::new(
                        ErrorCode::Forbidden,
                        format!("the forwarded client certificate is refused: {reason}"),
                    )
                    .into_response();
                }
            }
        }
        None => req.extensions().get::<PeerCert>().and_then(|c| c.0.clone()),
    };
    match identity {
        Some(names) => {
            req.extensions_mut().insert(ClientIdentity(names));
        }
        None if certs.required && req.uri().path() != "/health" => {
            return ApiError::new(
                ErrorCode::Unauthorized,
                "a client certificate is required (signed by the configured client CA)",
            )
            .into_response();
        }
        None => {}
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_certificates_are_url_encoded_pem() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["op.example".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let escaped =
            percent_encoding::utf8_percent_encode(&cert.pem(), percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let chain = parse_forwarded(escaped.as_bytes()).expect("parses");
        assert_eq!(chain, vec![cert.der().clone()]);
        assert!(parse_forwarded(b"not%20a%20cert").is_err());
        assert!(parse_forwarded(b"").is_err());
    }

    #[test]
    fn trusted_proxies_match_by_cidr_and_mapped_ipv4() {
        let nets = [
            "127.0.0.1/32".parse().expect("net"),
            "10.0.0.0/8".parse().expect("net"),
        ];
        assert!(trusted(&nets, "127.0.0.1".parse().expect("ip")));
        assert!(trusted(&nets, "::ffff:127.0.0.1".parse().expect("ip")));
        assert!(trusted(&nets, "10.200.0.1".parse().expect("ip")));
        assert!(!trusted(&nets, "127.0.0.2".parse().expect("ip")));
        assert!(!trusted(&[], "127.0.0.1".parse().expect("ip")));
    }
}

//! The operator API over TLS (`[admin.tls]`): [`TlsListener`] is an axum listener whose
//! connections passed the connection limits ([`super::conn_limit`]) and then completed a rustls
//! handshake (each in its own task with a deadline, see [`crate::tls::accept`], so a stalled
//! handshake never blocks accept). [`ConnCert`] gives [`super::http_server`] each connection's
//! verified client certificate ([`PeerCert`]), which [`super::client_cert`] checks.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt as _;

use super::conn_limit::{Limited, LimitedIo};
use crate::tls::ServerTls;

type Io = TlsStream<LimitedIo<TcpStream>>;

/// Admitted TCP connections that completed the TLS handshake.
pub struct TlsListener {
    handshaken: tokio_stream::wrappers::ReceiverStream<io::Result<Io>>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`, handshaking with `tls`'s current pair.
    pub fn new(listener: Limited<TcpListener>, tls: Arc<ServerTls>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            handshaken: crate::tls::accept(listener, tls),
            local,
        })
    }
}

impl Listener for TlsListener {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.handshaken.next().await {
                Some(Ok(tls)) => match tls.get_ref().0.get_ref().peer_addr() {
                    Ok(peer) => return (tls, peer),
                    // Gone already.
                    Err(_) => continue,
                },
                Some(Err(_)) => continue,
                // The accept task ended (it does not while the listener lives): accept no more.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The names (CN, DNS/URI SANs) of the certificate the client presented in the handshake,
/// which the verifier accepted (client CA and allow-list); `None` without one.
#[derive(Debug, Clone, Default)]
pub struct PeerCert(pub Option<Arc<[String]>>);

/// What a connection says about its client's certificate.
pub trait ConnCert {
    fn peer_cert(&self) -> PeerCert;
}

/// Cleartext: no certificate.
impl ConnCert for LimitedIo<TcpStream> {
    fn peer_cert(&self) -> PeerCert {
        PeerCert(None)
    }
}

impl ConnCert for Io {
    fn peer_cert(&self) -> PeerCert {
        let leaf = self.get_ref().1.peer_certificates().and_then(|c| c.first());
        PeerCert(leaf.map(|der| {
            crate::tls::cert_names(der)
                .unwrap_or_default()
                .into_iter()
                .collect()
        }))
    }
}

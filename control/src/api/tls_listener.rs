//! The operator API over TLS (`[admin.tls]`): [`TlsListener`] is an axum listener whose
//! connections have completed a rustls handshake (each in its own task with a deadline, see
//! [`crate::tls::accept`], so a stalled handshake never blocks accept), and [`serve`] hands
//! every request its connection's peer address (`ConnectInfo`, as the cleartext listener does)
//! and verified client certificate ([`PeerCert`]), which [`super::client_cert`] checks.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt as _;

use crate::tls::ServerTls;

/// TCP connections that completed the TLS handshake.
pub struct TlsListener {
    handshaken: tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`, handshaking with `tls`'s current pair.
    pub fn new(listener: TcpListener, tls: Arc<ServerTls>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        Ok(TlsListener {
            handshaken: crate::tls::accept(listener, tls),
            local,
        })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.handshaken.next().await {
                Some(Ok(tls)) => match tls.get_ref().0.peer_addr() {
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

impl PeerCert {
    fn of(tls: &TlsStream<TcpStream>) -> PeerCert {
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        PeerCert(leaf.map(|der| {
            crate::tls::cert_names(der)
                .unwrap_or_default()
                .into_iter()
                .collect()
        }))
    }
}

/// Serves `router` on `listener` over TLS until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = TlsListener::new(listener, tls)?;
    axum::serve(listener, PerConnection(router))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Makes each connection's service: the router, with the connection's facts.
#[derive(Clone)]
struct PerConnection(Router);

impl tower::Service<IncomingStream<'_, TlsListener>> for PerConnection {
    type Response = WithPeer;
    type Error = Infallible;
    type Future = Ready<Result<WithPeer, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, conn: IncomingStream<'_, TlsListener>) -> Self::Future {
        ready(Ok(WithPeer {
            router: self.0.clone(),
            peer: *conn.remote_addr(),
            cert: PeerCert::of(conn.io()),
        }))
    }
}

/// One connection's service: puts its peer address and certificate in every request.
#[derive(Clone)]
struct WithPeer {
    router: Router,
    peer: SocketAddr,
    cert: PeerCert,
}

impl tower::Service<Request> for WithPeer {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <Router as tower::Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(self.cert.clone());
        self.router.call(req)
    }
}

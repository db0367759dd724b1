//! The operator API's connection limits (`[admin] max_connections`, `max_connections_per_ip`):
//! a listener wrapper ([`Limited`]) that admits or sheds each accepted connection before a byte
//! of it is read, with the same lock-free counters as the proxy's client listeners
//! ([`multiverse_common::conn_limit`]). A shed connection is closed at once and the wrapper
//! accepts the next; an admitted one carries its [`Permit`] inside its stream, so its places are
//! given back when hyper drops the connection.
//!
//! It wraps any [`axum::serve::Listener`] whose address is a `SocketAddr`, and is itself one: a
//! TLS listener wraps it in turn (limit first, then the handshake), so a flood of connections
//! costs no TLS work.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::serve::Listener;
use multiverse_common::conn_limit::{ConnLimit, Permit};

use crate::metrics::ControlMetrics;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A listener whose connections are held to a [`ConnLimit`].
pub struct Limited<L> {
    inner: L,
    limit: Arc<ConnLimit>,
    /// Counts the shed connections (`api_connections_shed_total{limit}`).
    metrics: Arc<ControlMetrics>,
}

impl<L> Limited<L> {
    pub fn new(inner: L, limit: Arc<ConnLimit>, metrics: Arc<ControlMetrics>) -> Self {
        Limited {
            inner,
            limit,
            metrics,
        }
    }
}

impl<L> Listener for Limited<L>
where
    L: Listener<Addr = SocketAddr>,
{
    type Io = LimitedIo<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.limit.admit(Some(addr.ip())) {
                Ok(permit) => {
                    return (
                        LimitedIo {
                            io,
                            _permit: permit,
                        },
                        addr,
                    )
                }
                Err(shed) => {
                    self.metrics.api_connection_shed(shed.label());
                    tracing::debug!(%addr, limit = shed.label(), "operator API connection shed");
                    drop(io);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An admitted connection: the stream, and its places until it is dropped.
pub struct LimitedIo<I> {
    io: I,
    _permit: Permit,
}

impl<I> LimitedIo<I> {
    /// The stream itself.
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for LimitedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for LimitedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The TLS listener takes limited connections (limit first, then the handshake).
impl crate::tls::Incoming for Limited<tokio::net::TcpListener> {
    type Io = LimitedIo<tokio::net::TcpStream>;
    async fn next(&mut self) -> io::Result<(Self::Io, SocketAddr)> {
        Ok(Listener::accept(self).await)
    }
}

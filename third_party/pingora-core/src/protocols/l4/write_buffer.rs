// MULTIVERSE PATCH: this file is new (not in pingora 0.9.1). See third_party/PATCHES.md.

//! The write buffer of an L4 [`Stream`](super::stream::Stream): tokio's `BufWriter`, except
//! that bytes which do not fit behind what is buffered leave *together* with it, in one
//! vectored write.
//!
//! With `BufWriter`, a response header (buffered, a few hundred bytes) followed by a body
//! larger than the buffer's free space went out in two syscalls: the buffer was flushed on
//! its own, then the body was written through. That is every HTTP/1 response or request
//! whose body exceeds the 1460-byte buffer (a TEI `/embed` answer, a long prompt): two
//! `sendto`s and two wake-ups of the peer where nginx makes one `writev`. Here the
//! buffered bytes and the new ones go in one `writev` (for plain and vectored writes alike);
//! everything else (what is buffered, when flushes happen) is as with `BufWriter`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most slices (the buffer's and the caller's) one vectored write combines.
const MAX_SLICES: usize = 8;

/// Buffers small writes up to `capacity` bytes (0: no buffering).
#[derive(Debug)]
pub(crate) struct WriteBuffer<W> {
    inner: W,
    buf: Vec<u8>,
    capacity: usize,
}

impl<W: AsyncWrite + Unpin> WriteBuffer<W> {
    pub(crate) fn with_capacity(capacity: usize, inner: W) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(capacity),
            capacity,
        }
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer; anything still buffered is lost.
    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    /// Writes out everything buffered (as `BufWriter::flush_buf`).
    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        let mut ret = Ok(());
        while written < self.buf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf[written..]) {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) => {
                    ret = Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write the buffered data",
                    ));
                    break;
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => {
                    ret = Err(e);
                    break;
                }
            }
        }
        if written > 0 {
            self.buf.drain(..written);
        }
        if self.buf.is_empty() {
            Poll::Ready(ret)
        } else {
            ret?;
            Poll::Pending
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteBuffer<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // What is buffered and `buf` together, in one vectored write, while they do not fit.
        while !this.buf.is_empty() && this.buf.len() + buf.len() > this.capacity {
            if !this.inner.is_write_vectored() {
                ready!(this.poll_flush_buf(cx))?;
                break;
            }
            let slices = [IoSlice::new(&this.buf), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write the buffered data",
                )));
            }
            let buffered = this.buf.len();
            if n > buffered {
                this.buf.clear();
                return Poll::Ready(Ok(n - buffered));
            }
            // Only (part of) the buffered bytes left: drop them and go on with the rest.
            this.buf.drain(..n);
        }
        if buf.len() >= this.capacity {
            Pin::new(&mut this.inner).poll_write(cx, buf)
        } else {
            this.buf.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // As `poll_write`: what is buffered goes out with `bufs` in one vectored write while
        // they do not fit together (a header and a body chunk written as size line, data and
        // CRLF); then large batches are written through and the rest buffered.
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        while !this.buf.is_empty() && this.buf.len() + total > this.capacity {
            if !this.inner.is_write_vectored() || bufs.len() >= MAX_SLICES {
                ready!(this.poll_flush_buf(cx))?;
                break;
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            slices[0] = IoSlice::new(&this.buf);
            slices[1..=bufs.len()].copy_from_slice(bufs);
            let n = ready!(Pin::new(&mut this.inner)
                .poll_write_vectored(cx, &slices[..=bufs.len()]))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write the buffered data",
                )));
            }
            let buffered = this.buf.len();
            if n > buffered {
                this.buf.clear();
                return Poll::Ready(Ok(n - buffered));
            }
            this.buf.drain(..n);
        }
        if total >= this.capacity {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        } else {
            for b in bufs {
                this.buf.extend_from_slice(b);
            }
            Poll::Ready(Ok(total))
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_buf(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_buf(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for WriteBuffer<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

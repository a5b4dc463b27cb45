//! A TCP listener with a cap on open connections, for axum-server.
//!
//! The accept loop takes a slot *before* it calls `accept`: at the cap it stops accepting, and
//! further connections wait in the kernel's backlog (no file descriptor, task or buffer of ours)
//! until an open one closes. The slot travels inside the accepted stream, so it is held for the
//! connection's whole life, including a WebSocket upgraded from it, and freed when the stream is
//! dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_server::{AddrListener, Address};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The address of a [`CappedListener`] (a socket address; its own type so that axum-server
/// serves with the capped listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CappedAddr(pub SocketAddr);

impl Address for CappedAddr {
    type Stream = CappedStream;
    type Listener = CappedListener;
}

/// A TCP listener that holds at most `cap` accepted connections open at once.
#[derive(Debug)]
pub struct CappedListener {
    inner: TcpListener,
    slots: Option<Arc<Semaphore>>,
    open: Option<IntGauge>,
}

impl CappedListener {
    /// Wrap `inner`; `cap` `None` means no cap. `open` (if any) counts open connections.
    pub fn new(inner: TcpListener, cap: Option<usize>, open: Option<IntGauge>) -> Self {
        Self {
            inner,
            slots: cap.map(|n| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)))),
            open,
        }
    }
}

impl AddrListener<CappedStream, CappedAddr> for CappedListener {
    async fn bind_to(addr: CappedAddr) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr.0).await?, None, None))
    }

    async fn accept_stream(&self) -> io::Result<(CappedStream, CappedAddr)> {
        // Wait for a free slot first, so that at the cap nothing more is accepted.
        let slot = match &self.slots {
            // The semaphore is never closed, so acquiring fails only in theory.
            Some(s) => Some(s.clone().acquire_owned().await.map_err(io::Error::other)?),
            None => None,
        };
        let (stream, peer) = self.inner.accept().await?;
        if let Some(g) = &self.open {
            g.inc();
        }
        Ok((
            CappedStream {
                inner: stream,
                _slot: slot,
                open: self.open.clone(),
            },
            CappedAddr(peer),
        ))
    }

    fn get_local_addr(&self) -> io::Result<CappedAddr> {
        self.inner.local_addr().map(CappedAddr)
    }
}

/// An accepted connection holding its slot until dropped.
#[derive(Debug)]
pub struct CappedStream {
    inner: TcpStream,
    _slot: Option<OwnedSemaphorePermit>,
    open: Option<IntGauge>,
}

impl Drop for CappedStream {
    fn drop(&mut self) {
        if let Some(g) = &self.open {
            g.dec();
        }
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn at_the_cap_nothing_more_is_accepted_until_one_closes() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let gauge = IntGauge::new("open", "open").unwrap();
        let l = CappedListener::new(tcp, Some(1), Some(gauge.clone()));
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap(); // completes in the kernel backlog
        let (mut first, _) = l.accept_stream().await.unwrap();
        assert_eq!(gauge.get(), 1);
        let second = tokio::time::timeout(Duration::from_millis(100), l.accept_stream()).await;
        assert!(
            second.is_err(),
            "a second connection was accepted at the cap"
        );
        first.shutdown().await.unwrap();
        drop(first);
        assert_eq!(gauge.get(), 0);
        let second = tokio::time::timeout(Duration::from_secs(10), l.accept_stream()).await;
        assert!(
            matches!(second, Ok(Ok(_))),
            "the waiting connection is accepted"
        );
    }
}

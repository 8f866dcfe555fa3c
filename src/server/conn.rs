//! Accepted connections, wrapped to measure the server's per-token overhead where it ends:
//! a handler marks the time the engine produced a token before handing its bytes to the
//! connection, and the next successful socket write observes the time from then to the
//! write call (the bytes handed to the kernel), and the call's own duration separately:
//! on a loopback socket the kernel may run the reading client before the call returns.
//! Also sets TCP_NODELAY, so a one-token chunk leaves at once instead of waiting on Nagle.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::Metrics;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The oldest token time not yet written on one connection (nanoseconds after `epoch()`,
/// plus one; 0 = nothing pending).
#[derive(Clone)]
pub struct WriteStamp {
    pending: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl WriteStamp {
    pub fn new(metrics: Arc<Metrics>) -> WriteStamp {
        WriteStamp {
            pending: Arc::default(),
            metrics,
        }
    }

    /// Records that the bytes of a token produced at `at` are ready and on their way to
    /// this socket (and how long the hand-over from the engine took). An older pending mark
    /// is kept: it is the one that waited longest.
    pub fn mark(&self, at: Instant) {
        Metrics::observe(&self.metrics.token_handoff, at.elapsed());
        let ns = at.saturating_duration_since(epoch()).as_nanos() as u64 + 1;
        let _ = self
            .pending
            .compare_exchange(0, ns, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// The pending mark's age at `now`, clearing it.
    fn take(&self, now: Instant) -> Option<Duration> {
        match self.pending.swap(0, Ordering::AcqRel) {
            0 => None,
            ns => Some(
                now.saturating_duration_since(epoch())
                    .saturating_sub(Duration::from_nanos(ns - 1)),
            ),
        }
    }
}

/// A TCP stream that reports, on each successful write, how long the marked token waited.
pub struct StampedIo {
    inner: TcpStream,
    stamp: WriteStamp,
}

impl StampedIo {
    /// A write call that began at `start` wrote `n` bytes.
    fn wrote(&self, start: Instant, n: usize) {
        if n > 0
            && let Some(d) = self.stamp.take(start)
        {
            Metrics::observe(&self.stamp.metrics.server_overhead, d);
            Metrics::observe(&self.stamp.metrics.socket_write, start.elapsed());
        }
    }
}

impl AsyncRead for StampedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StampedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let start = Instant::now();
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(start, n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let start = Instant::now();
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(start, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The TCP listener the server runs on.
pub struct StampedListener {
    inner: TcpListener,
    metrics: Arc<Metrics>,
}

impl StampedListener {
    pub fn new(inner: TcpListener, metrics: Arc<Metrics>) -> StampedListener {
        // Fix the time origin before any token can be marked.
        epoch();
        StampedListener { inner, metrics }
    }
}

impl Listener for StampedListener {
    type Io = StampedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (StampedIo, std::net::SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    let io = StampedIo {
                        inner,
                        stamp: WriteStamp::new(self.metrics.clone()),
                    };
                    return (io, addr);
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// What a handler learns about its connection (via `ConnectInfo<ConnInfo>`).
#[derive(Clone)]
pub struct ConnInfo {
    pub stamp: WriteStamp,
}

impl Connected<IncomingStream<'_, StampedListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, StampedListener>) -> Self {
        ConnInfo {
            stamp: stream.io().stamp.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_keeps_the_oldest_mark_and_takes_once() {
        epoch();
        let s = WriteStamp::new(Arc::new(Metrics::new()));
        assert!(s.take(Instant::now()).is_none());
        let old = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        s.mark(old);
        s.mark(Instant::now());
        let d = s.take(Instant::now()).expect("marked");
        assert!(d >= Duration::from_millis(2), "{d:?}");
        assert!(s.take(Instant::now()).is_none());
        let text = s.metrics.render();
        assert!(
            text.contains("tachyon_token_handoff_seconds_count 2"),
            "{text}"
        );
    }
}

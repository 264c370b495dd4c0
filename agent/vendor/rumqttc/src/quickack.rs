//! Patched (edge-agent): acknowledge at the TCP level at once what the broker sends.
//!
//! Linux delays a TCP acknowledgement (up to about 40 ms) while the receiver has nothing
//! to send back. A broker with Nagle's algorithm on (Mosquitto's default,
//! `set_tcp_nodelay false`) holds its next small PUBLISH until the previous one is
//! acknowledged. So when the client's MQTT acknowledgement waits (for a state commit's
//! flush), the broker's stream stalls with it, and the messages arrive in bursts after
//! each flush instead of as they come. `TCP_QUICKACK` after each read makes the kernel
//! acknowledge at once; it is not sticky, so it is set again after reads that returned
//! data, at most once a millisecond: under load the client sends often enough for its
//! TCP acknowledgements to ride along, and a `setsockopt` and a bare acknowledgement per
//! read cost about a tenth of the throughput at QoS 1 (measured: docs/benchmarks.md).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How often at most the quick acknowledgement is set again.
const REARM: std::time::Duration = std::time::Duration::from_millis(1);

/// A TCP stream that acknowledges reads at once (see the module).
pub(crate) struct QuickAck {
    stream: TcpStream,
    /// When it was last set.
    armed: Option<std::time::Instant>,
}

impl QuickAck {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            armed: None,
        }
    }

    fn ack_now(&mut self) {
        let now = std::time::Instant::now();
        if self.armed.is_some_and(|t| now.duration_since(t) < REARM) {
            return;
        }
        self.armed = Some(now);
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // Best effort: a failure only leaves the kernel's default in place.
        // SAFETY: a valid socket descriptor, and a c_int option of the size given.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                std::ptr::addr_of!(on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.ack_now();
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

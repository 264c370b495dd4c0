//! Guest stdout and stderr, forwarded line by line to the agent's log and tagged with the
//! function's name. Lines are cut at [`MAX_LINE`] bytes so a guest cannot make the agent
//! buffer without bound.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept; the rest of a longer line is dropped (and the cut is marked).
pub const MAX_LINE: usize = 4096;

/// Which stream a [`GuestOutput`] stands for.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// stdout: logged at info level.
    Stdout,
    /// stderr: logged at warn level.
    Stderr,
}

/// A line-buffering writer into `tracing`.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    function: Arc<str>,
    stream: Stream,
    line: Vec<u8>,
    truncated: bool,
}

impl GuestOutput {
    /// A writer for `function`'s `stream`.
    pub fn new(function: Arc<str>, stream: Stream) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LineBuffer {
                function,
                stream,
                line: Vec::new(),
                truncated: false,
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for &c in bytes {
            if c == b'\n' {
                b.emit();
            } else if b.line.len() < MAX_LINE {
                b.line.push(c);
            } else {
                b.truncated = true;
            }
        }
    }
}

impl LineBuffer {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let cut = if self.truncated {
            " [line truncated]"
        } else {
            ""
        };
        match self.stream {
            Stream::Stdout => {
                tracing::info!(function = %self.function, stream = "stdout", "{text}{cut}")
            }
            Stream::Stderr => {
                tracing::warn!(function = %self.function, stream = "stderr", "{text}{cut}")
            }
        }
        self.line.clear();
        self.truncated = false;
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

//! Guest stdout and stderr, forwarded line by line to the agent's log and tagged with the
//! function's name, and the [`LogLimiter`] that every line a guest writes (stdout, stderr
//! or the `log` import) passes: lines are cut at [`MAX_LINE`] bytes and each function may
//! write `log_rate` lines per second, so a guest cannot make the agent buffer or log
//! without bound. What the limiter drops is counted and reported in one line a second.

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

/// The log budget of one function, shared by all its instances and streams.
#[derive(Debug)]
pub struct LogLimiter {
    function: Arc<str>,
    state: Mutex<LimiterState>,
    /// Lines dropped and not yet told (kept with `dropped`, under the lock): the end of
    /// every call reads it, and takes the lock only when it is set.
    untold: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct LimiterState {
    bucket: crate::rate::TokenBucket,
    dropped: u64,
    last_report: Option<std::time::Instant>,
}

/// How often the count of dropped lines is reported, at most.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl LogLimiter {
    /// `rate` lines per second for `function`, in bursts of up to `rate`.
    pub fn new(function: Arc<str>, rate: u32) -> Self {
        Self {
            function,
            state: Mutex::new(LimiterState {
                bucket: crate::rate::TokenBucket::new(rate),
                dropped: 0,
                last_report: None,
            }),
            untold: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether one more line may be logged now; counts it as dropped if not.
    pub fn admit(&self) -> bool {
        let now = std::time::Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.bucket.take(now) {
            s.dropped += 1;
            self.untold
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        self.report(&mut s, now);
        true
    }

    /// Reports the lines dropped since the last report, if any and if a report is due:
    /// at the end of every call, so that a burst's drops are told when the call that
    /// wrote them ends, not when the function next logs a line (until 2026-12-07 a last
    /// burst's were never told).
    /// Returns how many it told.
    pub fn report_due(&self) -> u64 {
        if !self.untold.load(std::sync::atomic::Ordering::Relaxed) {
            return 0;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.report(&mut s, std::time::Instant::now())
    }

    fn report(&self, s: &mut LimiterState, now: std::time::Instant) -> u64 {
        let due = s
            .last_report
            .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY);
        if s.dropped == 0 || !due {
            return 0;
        }
        tracing::warn!(function = %self.function, dropped = s.dropped,
            "guest log lines dropped: over the function's log_rate");
        s.last_report = Some(now);
        self.untold
            .store(false, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut s.dropped)
    }

    /// Cuts `line` to [`MAX_LINE`] bytes (on a character boundary), marking the cut.
    pub fn cut(line: &mut String) {
        if line.len() > MAX_LINE {
            line.truncate(line.floor_char_boundary(MAX_LINE));
            line.push_str(" [line truncated]");
        }
    }
}

/// What was dropped and not yet told is told when the function's version goes (a reload
/// or a stop).
impl Drop for LogLimiter {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if s.dropped > 0 {
            tracing::warn!(function = %self.function, dropped = s.dropped,
                "guest log lines dropped: over the function's log_rate");
        }
    }
}

/// A line-buffering writer into `tracing`.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    limiter: Arc<LogLimiter>,
    stream: Stream,
    line: Vec<u8>,
    truncated: bool,
    /// The last [`RECENT`] lines, for the dead letter of a call that traps.
    recent: std::collections::VecDeque<String>,
}

/// Lines of a call's stderr its dead letter keeps (a Rust panic's message is the line
/// after "panicked at", before the note on backtraces; a Python traceback ends with its
/// exception).
const RECENT: usize = 4;

/// Bytes of each such line kept.
const RECENT_LINE: usize = 300;

impl GuestOutput {
    /// A writer for one of a function's streams, within its `limiter`.
    pub fn new(limiter: Arc<LogLimiter>, stream: Stream) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LineBuffer {
                limiter,
                stream,
                line: Vec::new(),
                truncated: false,
                recent: std::collections::VecDeque::new(),
            })),
        }
    }

    /// The last lines written since the last call of this (a line not yet ended
    /// included), at most [`RECENT`], each cut to [`RECENT_LINE`] bytes.
    pub fn take_recent(&self) -> Vec<String> {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !b.line.is_empty() {
            let line = String::from_utf8_lossy(&b.line).into_owned();
            b.remember(line);
        }
        b.recent.drain(..).collect()
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
    fn remember(&mut self, mut line: String) {
        // A Rust panic's text starts with an empty line.
        if line.trim().is_empty() {
            return;
        }
        if line.len() > RECENT_LINE {
            line.truncate(line.floor_char_boundary(RECENT_LINE));
            line.push_str("...");
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    fn emit(&mut self) {
        if matches!(self.stream, Stream::Stderr) {
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.remember(line);
        }
        if !self.limiter.admit() {
            self.line.clear();
            self.truncated = false;
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let cut = if self.truncated {
            " [line truncated]"
        } else {
            ""
        };
        match self.stream {
            Stream::Stdout => {
                tracing::info!(function = %self.limiter.function, stream = "stdout", "{text}{cut}")
            }
            Stream::Stderr => {
                tracing::warn!(function = %self.limiter.function, stream = "stderr", "{text}{cut}")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops are told when the call that made them ends, then at most once a second.
    #[test]
    fn dropped_lines_are_told_at_the_end_of_the_call_then_once_a_second() {
        let l = LogLimiter::new("f".into(), 2);
        let admitted = (0..5).filter(|_| l.admit()).count();
        assert_eq!(admitted, 2);
        assert_eq!(l.report_due(), 3, "told as the call ends");
        assert!(!l.admit());
        assert_eq!(l.report_due(), 0, "not again within the second");
        l.state.lock().unwrap().last_report = Some(std::time::Instant::now() - REPORT_EVERY);
        assert_eq!(l.report_due(), 1);
    }
}

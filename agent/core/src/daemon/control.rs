//! The control socket, `<data_dir>/control.sock`: a Unix socket that only the agent's
//! user (and root) may use (mode 0600, in the agent's own data directory), through which
//! `edge-agent promote FUNCTION` asks the running agent to promote a function's shadow.
//! One request per connection: a line `promote NAME`; the answer is one line, the reload
//! report (the `reload` message) as JSON.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::messages::{Message as _, ReloadReport};

/// The socket's file name in `agent.data_dir`.
pub const SOCKET: &str = "control.sock";

/// Where the agent with `data_dir` listens.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// A promotion asked for, and where its answer goes.
pub struct Request {
    /// The function whose shadow is to be promoted.
    pub function: String,
    /// The reload's report.
    pub reply: oneshot::Sender<ReloadReport>,
}

/// Listens on the socket in `data_dir` and hands each request to `ask`; `None` (logged)
/// if the socket cannot be made.
pub fn listen(data_dir: &Path, ask: mpsc::Sender<Request>) -> Option<JoinHandle<()>> {
    let path = socket_path(data_dir);
    // A socket left by an agent that was killed.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(socket = %path.display(), "control socket not available (edge-agent promote will not reach this agent): {e}");
            return None;
        }
    };
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(socket = %path.display(), "control socket closed: cannot make it private: {e}");
        return None;
    }
    Some(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, ask.clone()));
        }
    }))
}

async fn serve(stream: UnixStream, ask: mpsc::Sender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = BufReader::new(read.take(4096));
    if read.read_line(&mut line).await.is_err() {
        return;
    }
    let answer = match line.trim().split_once(' ') {
        Some(("promote", function)) if !function.trim().is_empty() => {
            let (reply, answer) = oneshot::channel();
            let function = function.trim().to_string();
            if ask.send(Request { function, reply }).await.is_err() {
                ReloadReport::refused("promote", "the agent is stopping".into())
            } else {
                answer.await.unwrap_or_else(|_| {
                    ReloadReport::refused("promote", "the agent is stopping".into())
                })
            }
        }
        _ => ReloadReport::refused(
            "control",
            format!(
                "unknown request `{}`: expected `promote FUNCTION`",
                line.trim()
            ),
        ),
    };
    let mut body = answer.to_bytes();
    body.push(b'\n');
    let _ = write.write_all(&body).await;
}

/// Asks the agent listening at `socket` to promote `function`'s shadow; its reload report.
///
/// # Errors
/// The socket cannot be reached (no agent, or not allowed), or the answer is not a report.
pub fn promote(socket: &Path, function: &str) -> Result<ReloadReport, String> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the agent at {}: {e}", socket.display()))?;
    writeln!(stream, "promote {function}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    ReloadReport::from_bytes(line.trim().as_bytes()).map_err(|e| format!("the agent's answer: {e}"))
}

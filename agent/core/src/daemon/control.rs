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

use crate::messages::{Message as _, ReadError, ReloadReport};

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
    /// Even a shadow that failed every event it was given and compared none.
    pub force: bool,
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
        // Removed when the listener goes (the agent stops, or the runtime drops the task),
        // so that a clean stop leaves no socket behind.
        let _gone = RemoveOnDrop(path);
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, ask.clone()));
        }
    }))
}

/// Removes its file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn serve(stream: UnixStream, ask: mpsc::Sender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = BufReader::new(read.take(4096));
    if read.read_line(&mut line).await.is_err() {
        return;
    }
    let request = line.trim().split_once(' ').and_then(|(verb, function)| {
        let function = function.trim().to_string();
        let force = match verb {
            "promote" => false,
            "promote!" => true,
            _ => return None,
        };
        (!function.is_empty()).then_some((function, force))
    });
    let answer = match request {
        Some((function, force)) => {
            let (reply, answer) = oneshot::channel();
            if ask
                .send(Request {
                    function,
                    force,
                    reply,
                })
                .await
                .is_err()
            {
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

/// Why `edge-agent promote` got no report from the agent.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket cannot be reached: no agent there, or not allowed.
    #[error("cannot reach the agent at {}", socket.display())]
    Connect {
        /// The control socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be sent, or the answer read.
    #[error("no answer from the agent at {}", socket.display())]
    Io {
        /// The control socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not a reload report.
    #[error("the agent's answer")]
    Answer(#[source] ReadError),
}

/// Asks the agent listening at `socket` to promote `function`'s shadow (with `force`,
/// even one that failed every event it was given); its reload report.
///
/// # Errors
/// [`ControlError`]: the socket cannot be reached (no agent, or not allowed), the request
/// or answer cannot pass through it, or the answer is not a report.
pub fn promote(socket: &Path, function: &str, force: bool) -> Result<ReloadReport, ControlError> {
    use std::io::{BufRead as _, Write as _};
    let io = |source| ControlError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|source| {
        ControlError::Connect {
            socket: socket.to_path_buf(),
            source,
        }
    })?;
    let verb = if force { "promote!" } else { "promote" };
    writeln!(stream, "{verb} {function}").map_err(io)?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .map_err(io)?;
    ReloadReport::from_bytes(line.trim().as_bytes()).map_err(ControlError::Answer)
}

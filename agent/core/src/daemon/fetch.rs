//! A module of a deployment fetched from a URL the device can reach (`http://` or
//! `https://`): one GET, redirects followed, the size bounded. What it fetched is checked
//! against the deployment's signed SHA-256 by the caller, so a plain `http://` server, a
//! proxy or a mirror can change nothing unseen; TLS adds privacy, not integrity.
//!
//! hyper's HTTP/1 client over the tokio-rustls that MQTT's TLS already uses (both in the
//! build already, for the metrics endpoint and the broker): no second HTTP stack.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Redirects followed before giving up (file servers and release hosts redirect once or
/// twice, to a CDN).
const MAX_REDIRECTS: usize = 5;

/// Why a module could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a URL.
    #[error("not a URL")]
    Url(#[source] hyper::http::uri::InvalidUri),
    /// A URL of another scheme than `http` or `https`.
    #[error("{0}: only http:// and https:// URLs are fetched")]
    Scheme(Uri),
    /// A URL without a host.
    #[error("{0}: no host")]
    NoHost(Uri),
    /// The connection could not be made.
    #[error("cannot connect to {address}")]
    Connect {
        /// `host:port`.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be made from the URL.
    #[error("{uri}")]
    Request {
        /// The URL.
        uri: Uri,
        /// Why.
        #[source]
        source: hyper::http::Error,
    },
    /// The host is not a name TLS can check.
    #[error("{host}")]
    ServerName {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// No system CA certificates to check a server with.
    #[error("no system CA certificates to check an https:// server with")]
    NoRoots,
    /// No TLS client configuration.
    #[error("TLS")]
    TlsConfig(#[source] rustls::Error),
    /// The TLS handshake failed.
    #[error("TLS with {address}")]
    Tls {
        /// `host:port`.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP")]
    Http(#[source] hyper::Error),
    /// The body could not be read.
    #[error("HTTP body")]
    Body(#[source] hyper::Error),
    /// A redirect without a `Location`.
    #[error("HTTP {0} without a Location")]
    NoLocation(StatusCode),
    /// A redirect whose `Location` is not an absolute URL or a path.
    #[error("redirect to {0}: not an absolute URL or path")]
    Location(String),
    /// A redirect to a path that makes no URL.
    #[error("redirect to {location}")]
    LocationUrl {
        /// The `Location`.
        location: String,
        /// Why.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// Redirected more than `MAX_REDIRECTS` times.
    #[error("more than {} redirects", MAX_REDIRECTS)]
    Redirects,
    /// An HTTP status other than 200 (after redirects).
    #[error("HTTP {status} from {uri}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The URL that answered it.
        uri: Uri,
    },
    /// A body longer than the deployment names.
    #[error("more than the {0} bytes the deployment names")]
    TooLarge(u64),
    /// The whole transfer took too long.
    #[error("not fetched within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Fetches `url`: its body, at most `max_bytes` long, within `timeout` for the whole
/// transfer.
///
/// # Errors
/// [`FetchError`]: not an http(s) URL, unreachable, an HTTP status other than 200 (after
/// redirects), a body over `max_bytes`, or the time out.
pub async fn fetch(url: &str, max_bytes: u64, timeout: Duration) -> Result<Vec<u8>, FetchError> {
    tokio::time::timeout(timeout, follow(url, max_bytes))
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn follow(url: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    let mut uri: Uri = url.parse().map_err(FetchError::Url)?;
    for _ in 0..=MAX_REDIRECTS {
        let response = get(&uri).await?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or(FetchError::NoLocation(status))?;
            uri = resolve(&uri, location)?;
            continue;
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status { status, uri });
        }
        return body(response, max_bytes).await;
    }
    Err(FetchError::Redirects)
}

/// Where a `Location` points, from the request it answers: an absolute URL, or a path
/// on the same server.
fn resolve(base: &Uri, location: &str) -> Result<Uri, FetchError> {
    if location.starts_with('/') && !location.starts_with("//") {
        let authority = base
            .authority()
            .ok_or_else(|| FetchError::NoHost(base.clone()))?;
        let scheme = base.scheme_str().unwrap_or("http");
        return format!("{scheme}://{authority}{location}")
            .parse()
            .map_err(|source| FetchError::LocationUrl {
                location: location.to_string(),
                source,
            });
    }
    location
        .parse::<Uri>()
        .ok()
        .filter(|u| u.scheme().is_some() && u.authority().is_some())
        .ok_or_else(|| FetchError::Location(location.to_string()))
}

async fn get(uri: &Uri) -> Result<Response<Incoming>, FetchError> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(FetchError::Scheme(uri.clone())),
    };
    let host = uri.host().ok_or_else(|| FetchError::NoHost(uri.clone()))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // `[::1]` in a URL is `::1` to connect to.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|source| FetchError::Connect {
            address: format!("{host}:{port}"),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("edge-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|source| FetchError::Request {
            uri: uri.clone(),
            source,
        })?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_string()).map_err(|source| {
            FetchError::ServerName {
                host: host.to_string(),
                source,
            }
        })?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|source| FetchError::Tls {
                address: format!("{host}:{port}"),
                source,
            })?;
        send(tls, request).await
    } else {
        send(tcp, request).await
    }
}

async fn send<T>(
    io: T,
    request: Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<Response<Incoming>, FetchError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(FetchError::Http)?;
    // Drives the connection until the body has been read (or the fetch is dropped).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(FetchError::Http)
}

/// The body, refused as soon as it passes `max_bytes`.
async fn body(response: Response<Incoming>, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    if let Some(length) = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|l| l.to_str().ok()?.parse::<u64>().ok())
        && length > max_bytes
    {
        return Err(FetchError::TooLarge(max_bytes));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(FetchError::Body)?;
        if let Some(data) = frame.data_ref() {
            if (bytes.len() + data.len()) as u64 > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok(bytes)
}

/// The system's CA certificates, read once. A failure is kept too, as what it was:
/// `None` for no certificates, or rustls's error (which clones), so that each fetch gets
/// its own [`FetchError`].
fn tls_config() -> Result<Arc<rustls::ClientConfig>, FetchError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, Option<rustls::Error>>> =
        OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = crate::mqtt::options::system_roots().ok_or(None)?;
            crate::mqtt::options::client_tls_builder()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(Some)
        })
        .clone()
        .map_err(|e| e.map_or(FetchError::NoRoots, FetchError::TlsConfig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_request() {
        let base: Uri = "http://files.local:8080/a/b.cwasm?x=1".parse().unwrap();
        assert_eq!(
            resolve(&base, "/c/d.cwasm").unwrap().to_string(),
            "http://files.local:8080/c/d.cwasm"
        );
        assert_eq!(
            resolve(&base, "https://cdn.example/e").unwrap().to_string(),
            "https://cdn.example/e"
        );
        assert!(resolve(&base, "relative/path").is_err());
        assert!(resolve(&base, "//cdn.example/e").is_err());
    }

    #[tokio::test]
    async fn only_http_and_https_are_fetched() {
        let e = fetch("ftp://host/x", 10, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("only http:// and https://"), "{e}");
    }
}

//! rumqttc client options from `[broker]`, including TLS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::MqttError;
use crate::config::{BrokerAddress, Config, TlsConfig};
use crate::messages::{Message as _, Presence, Status};

/// Requests (publishes, acks, subscriptions) buffered for the connection; when full,
/// senders wait, which is the backpressure on functions while the broker is slow.
pub const REQUEST_CHANNEL_CAPACITY: usize = 256;

/// How many queued requests (outputs, acknowledgements) a connection writes before one
/// flush (the vendored rumqttc patch; upstream flushes after each). Acknowledgements of a
/// backlog then leave as fast as events finish, not one per read of the socket, and an
/// event at a moderate rate shares its syscall with whatever else is ready.
pub const MAX_REQUEST_BATCH: usize = 64;

/// QoS 1/2 messages the output connection may have sent and not yet had confirmed. rumqttc
/// stops reading its request queue while this many are outstanding; events wait for their
/// outputs' confirmations before they are acknowledged, so this is also how many
/// output-making events can be finishing at once (about 80 KB of bookkeeping).
pub const OUTGOING_INFLIGHT: u16 = 1024;

/// The options of every connection the agent opens.
#[derive(Clone)]
pub struct Connections {
    /// The output connection: outputs, dead letters, stats and presence (with the last
    /// will), under the agent's client id. It subscribes to nothing; its session is kept
    /// (clean session off), so that after a reconnection rumqttc resends the outputs the
    /// broker had not confirmed.
    pub output: MqttOptions,
    /// One intake connection per function, in configuration order, under
    /// `<client id>.<function>` (rumqttd refuses `/` in client ids), with the session `broker.clean_session` asks for.
    pub intake: Vec<MqttOptions>,
}

/// Builds the options of the agent's connections to `addr` (`broker.url`, or where the
/// embedded broker really listens): stable client ids, manual acks (a message is
/// acknowledged only once handled), session, keep-alive, credentials, TLS.
///
/// # Errors
/// [`MqttError::Tls`] if a certificate or key file cannot be used.
pub fn connections(cfg: &Config, addr: &BrokerAddress) -> Result<Connections, MqttError> {
    let mut output = common(cfg, addr, &cfg.client_id())?;
    output
        .set_clean_session(false)
        .set_inflight(OUTGOING_INFLIGHT)
        .set_last_will(rumqttc::LastWill::new(
            cfg.status_topic(),
            Status::presence(Presence::Offline).to_bytes(),
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
    let intake = cfg
        .functions
        .iter()
        .map(|f| intake(cfg, addr, &f.name))
        .collect::<Result<_, MqttError>>()?;
    Ok(Connections { output, intake })
}

/// The options of `function`'s intake connection (see [`Connections::intake`]).
///
/// # Errors
/// [`MqttError::Tls`] if a certificate or key file cannot be used.
pub fn intake(
    cfg: &Config,
    addr: &BrokerAddress,
    function: &str,
) -> Result<MqttOptions, MqttError> {
    let mut opts = common(cfg, addr, &format!("{}.{function}", cfg.client_id()))?;
    opts.set_clean_session(cfg.broker.clean_session)
        .set_manual_acks(true);
    Ok(opts)
}

/// The options of the deployment connection (`[fleet]`): `<client id>.deploy`, a clean
/// session (the deployment and its chunks are retained: each connection reads them anew).
///
/// # Errors
/// [`MqttError::Tls`] if a certificate or key file cannot be used.
pub fn deployment(cfg: &Config, addr: &BrokerAddress) -> Result<MqttOptions, MqttError> {
    let mut opts = common(cfg, addr, &format!("{}.deploy", cfg.client_id()))?;
    opts.set_clean_session(true);
    Ok(opts)
}

fn common(cfg: &Config, addr: &BrokerAddress, client_id: &str) -> Result<MqttOptions, MqttError> {
    let b = &cfg.broker;
    let mut opts = client_options(addr, client_id, b.tls.as_ref())?;
    opts.set_keep_alive(Duration::from_secs(b.keep_alive_secs))
        .set_max_packet_size(b.max_packet_bytes, b.max_packet_bytes)
        .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY)
        .set_max_request_batch(MAX_REQUEST_BATCH);
    if let Some(user) = &b.username {
        opts.set_credentials(user.clone(), b.password.clone().unwrap_or_default());
    }
    Ok(opts)
}

/// Options for a connection to `addr` with `client_id`: host, port and, for `mqtts://`,
/// TLS with the files of `tls` (or the system's roots).
///
/// # Errors
/// [`MqttError::Tls`] if a certificate or key file cannot be used.
pub fn client_options(
    addr: &BrokerAddress,
    client_id: &str,
    tls: Option<&TlsConfig>,
) -> Result<MqttOptions, MqttError> {
    let mut opts = MqttOptions::new(client_id, addr.host.clone(), addr.port);
    if addr.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(tls.cloned().unwrap_or_default())?),
        )));
    }
    Ok(opts)
}

fn tls_config(tls: TlsConfig) -> Result<rustls::ClientConfig, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(ca) => {
            let certs = read_certs(ca, "broker.tls.ca_file")?;
            for c in certs {
                roots.add(c).map_err(|e| MqttError::Tls {
                    key: "broker.tls.ca_file",
                    what: ca.display().to_string(),
                    source: Some(e.into()),
                })?;
            }
        }
        None => {
            roots = system_roots().ok_or_else(|| MqttError::Tls {
                key: "broker.tls.ca_file",
                what: "no system CA certificates found: set broker.tls.ca_file".into(),
                source: None,
            })?;
        }
    }
    let builder = client_tls_builder()
        .map_err(|e| MqttError::Tls {
            key: "broker.tls",
            what: "no usable TLS protocol version".into(),
            source: Some(e.into()),
        })?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let provider = builder.crypto_provider().clone();
            let pair = ClientCert::load(cert, key, &provider)?;
            Ok(builder
                .with_client_cert_resolver(Arc::new(ClientCert::new(cert, key, pair, provider))))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The client certificate and its key, read again at a connection when either file has
/// changed: a certificate renewed in place (the same paths) is the one the next connection
/// shows, without a restart of the agent, before the old one expires and the broker turns
/// it away. A change that cannot be used (a file half-written or gone, a key that does not
/// fit the certificate or that the agent may not read) is said once, the last pair that
/// could be used stays, and the files are read again at every connection until they can
/// be used: a key made readable by `chown` changes no modification time, and until
/// 2026-12-08 the agent kept the old certificate after one (a probe).
#[derive(Debug)]
struct ClientCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    in_use: Mutex<InUse>,
}

/// The two files' modification times and sizes: `None` while either cannot be looked at.
type Stamp = Option<[(std::time::SystemTime, u64); 2]>;

#[derive(Debug)]
struct InUse {
    /// The pair connections show.
    pair: Arc<rustls::sign::CertifiedKey>,
    /// The files' stamp when `pair` was read from them.
    read: Stamp,
    /// The stamp at which the files last could not be used, said in the log.
    refused: Option<Stamp>,
}

impl ClientCert {
    fn new(
        cert: &Path,
        key: &Path,
        pair: rustls::sign::CertifiedKey,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Self {
        Self {
            in_use: Mutex::new(InUse {
                pair: Arc::new(pair),
                read: Self::stamp(cert, key),
                refused: None,
            }),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
        }
    }

    /// Reads the certificate chain and key (`broker.tls.cert_file`, `key_file`).
    fn load(
        cert: &Path,
        key: &Path,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<rustls::sign::CertifiedKey, MqttError> {
        let chain = read_certs(cert, "broker.tls.cert_file")?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| MqttError::Tls {
            key: "broker.tls.key_file",
            what: format!(
                "{}: no usable private key: {}",
                key.display(),
                pem_error(key, e)
            ),
            source: None,
        })?;
        rustls::sign::CertifiedKey::from_der(chain, key_der, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => MqttError::Tls {
                key: "broker.tls.key_file",
                what: "client certificate and key do not fit".into(),
                source: Some(e.into()),
            },
            // rustls words it as the peer's ("invalid peer certificate: BadEncoding"),
            // which read as the broker's (a probe, 2026-12-08).
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding) => {
                MqttError::Tls {
                    key: "broker.tls.cert_file",
                    what: format!(
                        "{}: the client certificate is not valid DER inside its PEM (damaged, \
                         or a line missing)",
                        cert.display()
                    ),
                    source: None,
                }
            }
            // The certificate itself (until 2026-12-07 blamed on the key: an X.509 v1
            // certificate, which `openssl x509 -req` without extensions makes, is refused
            // with `UnsupportedCertVersion`; v3 is needed).
            e => MqttError::Tls {
                key: "broker.tls.cert_file",
                what: format!("{}: the client certificate cannot be used", cert.display()),
                source: Some(e.into()),
            },
        })
    }

    /// When the two files were last changed, and their sizes.
    fn stamp(cert: &Path, key: &Path) -> Stamp {
        let of = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        Some([of(cert)?, of(key)?])
    }
}

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut last = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        let now = Self::stamp(&self.cert, &self.key);
        if now == last.read {
            last.refused = None;
        } else {
            match Self::load(&self.cert, &self.key, &self.provider) {
                Ok(pair) => {
                    tracing::info!(
                        cert_file = %self.cert.display(),
                        "client certificate changed on disk: connections show the new one"
                    );
                    *last = InUse {
                        pair: Arc::new(pair),
                        read: now,
                        refused: None,
                    };
                }
                Err(e) if last.refused != Some(now) => {
                    tracing::warn!(
                        error = %crate::failure::chain(&e),
                        "client certificate or key changed on disk but cannot be used: \
                         connections show the previous one until it can"
                    );
                    last.refused = Some(now);
                }
                Err(_) => {}
            }
        }
        Some(last.pair.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The system's CA certificates (the odd unparsable one skipped); `None` if there are none.
pub fn system_roots() -> Option<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        // Skip the odd unparsable system certificate rather than failing.
        let _ = roots.add(c);
    }
    (!roots.is_empty()).then_some(roots)
}

/// A TLS client configuration's start: ring, the safe protocol versions. The provider is
/// named here rather than installed process-wide, so that the library works the same
/// whoever embeds it (ring: no C toolchain beyond cc for ARM builds).
///
/// # Errors
/// When the provider has no usable protocol version.
pub fn client_tls_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
}

fn read_certs(
    path: &std::path::Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let err = |why: String| MqttError::Tls {
        key,
        what: format!("{}: {why}", path.display()),
        source: None,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_error(path, e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(pem_error(path, e)))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// What is wrong with the PEM file at `path`, in words: the parser's own text printed
/// the missing end line as a list of byte values, and an encrypted key as "no items
/// found" (a probe, 2026-12-07).
fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "the file ends before its `-----END {}-----` line (half-written, or cut short)",
            text(&end_marker)
        ),
        E::IllegalSectionStart { line } => {
            format!("a malformed PEM line: `{}`", text(&line))
        }
        E::Base64Decode(why) => {
            format!("a PEM section is not valid base64 (damaged, or half-written): {why}")
        }
        E::Io(e) => e.to_string(),
        E::NoItemsFound
            if std::fs::read(path)
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains("ENCRYPTED")) =>
        {
            "the key is encrypted with a passphrase, which the agent cannot ask for: write it \
             out unencrypted (`openssl pkey -in KEY -out KEY.plain`) and let only the \
             agent's user read it"
                .into()
        }
        E::NoItemsFound => "no PEM private key in the file (`-----BEGIN PRIVATE KEY-----`, \
             `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"
            .into(),
        e => e.to_string(),
    }
}

/// The socket of a connection to `broker`: small packets sent at once (TCP_NODELAY:
/// events and acknowledgements are small, and Nagle's algorithm meeting delayed ACKs adds
/// tens of milliseconds per hop otherwise), and `connect_timeout_secs` for a connection
/// attempt and a write (rumqttc's 5 s is under three round trips of a slow mobile link:
/// such a device never connected over TLS).
pub fn network(eventloop: &mut rumqttc::EventLoop, broker: &crate::config::BrokerConfig) {
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(broker.connect_timeout_secs);
    eventloop.set_network_options(net);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::ResolvesClientCert as _;

    /// Runs `openssl ARGS` in `dir`.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed P-256 certificate and its key, `NAME.pem` and `NAME.key` in `dir`.
    fn self_signed(dir: &Path, name: &str) {
        let (subject, key, pem) = (
            format!("/CN={name}"),
            format!("{name}.key"),
            format!("{name}.pem"),
        );
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &subject,
                "-keyout",
                &key,
                "-out",
                &pem,
            ],
        );
    }

    #[test]
    fn a_renewed_client_certificate_is_used_once_it_and_its_key_fit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "old");
        self_signed(d, "new");
        let (cert, key) = (d.join("client.pem"), d.join("client.key"));
        std::fs::copy(d.join("old.pem"), &cert).unwrap();
        std::fs::copy(d.join("old.key"), &key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = ClientCert::load(&cert, &key, &provider).unwrap();
        let resolver = ClientCert::new(&cert, &key, pair, provider);
        let shown = || resolver.resolve(&[], &[]).unwrap().cert[0].to_vec();
        let der = |name: &str| {
            CertificateDer::pem_file_iter(d.join(name))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .to_vec()
        };
        assert_eq!(shown(), der("old.pem"));
        // Half-way through a renewal: the new certificate, the old key. Not usable.
        std::fs::copy(d.join("new.pem"), &cert).unwrap();
        assert_eq!(
            shown(),
            der("old.pem"),
            "a certificate without its key is not shown"
        );
        std::fs::copy(d.join("new.key"), &key).unwrap();
        assert_eq!(
            shown(),
            der("new.pem"),
            "the renewed pair is shown once both are there"
        );
        // A file that is not PEM at all: the last good pair stays.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert_eq!(shown(), der("new.pem"));
        // A key that cannot be used at first and then can, with the same modification time
        // and size (a probe made the new key readable by `chown`): read again until usable.
        std::fs::copy(d.join("old.pem"), &cert).unwrap();
        let good = std::fs::read(d.join("old.key")).unwrap();
        let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        let put = |bytes: &[u8]| {
            std::fs::write(&key, bytes).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&key)
                .unwrap()
                .set_modified(when)
                .unwrap();
        };
        put(&vec![b'x'; good.len()]);
        assert_eq!(shown(), der("new.pem"), "a key that cannot be used");
        put(&good);
        assert_eq!(
            shown(),
            der("old.pem"),
            "the same files, usable now, are read again"
        );
    }

    /// A key that does not fit is blamed on the key; an X.509 v1 certificate, which
    /// rustls refuses, on the certificate (a probe, 2026-12-07: blamed on the key).
    #[test]
    fn a_client_certificate_that_cannot_be_used_is_blamed_on_the_right_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "a");
        self_signed(d, "b");
        let openssl = |args: &[&str]| openssl(d, args);
        openssl(&[
            "req", "-new", "-key", "a.key", "-subj", "/CN=v1", "-out", "v1.csr",
        ]);
        openssl(&[
            "x509", "-req", "-in", "v1.csr", "-signkey", "a.key", "-out", "v1.pem",
        ]);
        let provider = rustls::crypto::ring::default_provider();
        let blamed = |cert: &str, key: &str| match ClientCert::load(
            &d.join(cert),
            &d.join(key),
            &provider,
        ) {
            Ok(_) => panic!("{cert} with {key} was taken"),
            Err(MqttError::Tls { key, what, .. }) => format!("{key}: {what}"),
            Err(e) => panic!("{e}"),
        };
        let e = blamed("a.pem", "b.key");
        assert!(
            e.starts_with("broker.tls.key_file: client certificate and key do not fit"),
            "{e}"
        );
        let e = blamed("v1.pem", "a.key");
        assert!(
            e.starts_with("broker.tls.cert_file: ") && e.contains("v1.pem"),
            "{e}"
        );
        // Said in words: an encrypted key, and a certificate cut short (the parser's own
        // text had "no items found" and a list of byte values).
        openssl(&[
            "pkey", "-in", "a.key", "-aes256", "-passout", "pass:x", "-out", "enc.key",
        ]);
        let e = blamed("a.pem", "enc.key");
        assert!(
            e.starts_with("broker.tls.key_file: ") && e.contains("encrypted with a passphrase"),
            "{e}"
        );
        let pem = std::fs::read(d.join("a.pem")).unwrap();
        // One base64 line missing: still PEM, no longer a certificate.
        let text = String::from_utf8(pem.clone()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        std::fs::write(d.join("line.pem"), lines.join("\n") + "\n").unwrap();
        let e = blamed("line.pem", "a.key");
        assert!(e.contains("not valid DER inside its PEM"), "{e}");
        std::fs::write(d.join("cut.pem"), &pem[..pem.len() / 2]).unwrap();
        let e = blamed("cut.pem", "a.key");
        assert!(
            e.contains("ends before its `-----END CERTIFICATE-----` line"),
            "{e}"
        );
    }
}

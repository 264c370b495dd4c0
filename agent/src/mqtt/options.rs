//! rumqttc client options from `[broker]`, including TLS.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::MqttError;
use crate::config::{BrokerAddress, Config};

/// Requests (publishes, acks, subscriptions) buffered for the connection; when full,
/// senders wait, which is the backpressure on functions while the broker is slow.
pub const REQUEST_CHANNEL_CAPACITY: usize = 256;

/// Builds the options for the agent's connection: stable client id, manual acks (a
/// message is acknowledged only once handled), session, keep-alive, credentials, TLS.
///
/// # Errors
/// [`MqttError::Tls`] if a certificate or key file cannot be used.
pub fn agent_options(cfg: &Config) -> Result<MqttOptions, MqttError> {
    let b = &cfg.broker;
    let mut opts = client_options(&b.url, &cfg.client_id(), cfg)?;
    opts.set_keep_alive(Duration::from_secs(b.keep_alive_secs))
        .set_clean_session(b.clean_session)
        .set_manual_acks(true)
        .set_max_packet_size(b.max_packet_bytes, b.max_packet_bytes)
        .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    if let Some(user) = &b.username {
        opts.set_credentials(user.clone(), b.password.clone().unwrap_or_default());
    }
    Ok(opts)
}

/// Options for a connection to `url` with `client_id`: host, port and TLS. `cfg` supplies
/// the TLS files, if any.
///
/// # Errors
/// [`MqttError::Tls`] if a certificate or key file cannot be used.
pub fn client_options(url: &str, client_id: &str, cfg: &Config) -> Result<MqttOptions, MqttError> {
    let addr = BrokerAddress::parse(url).map_err(|message| MqttError::Tls {
        key: "broker.url",
        message,
    })?;
    let mut opts = MqttOptions::new(client_id, addr.host.clone(), addr.port);
    if addr.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(cfg)?),
        )));
    }
    Ok(opts)
}

fn tls_config(cfg: &Config) -> Result<rustls::ClientConfig, MqttError> {
    let tls = cfg.broker.tls.clone().unwrap_or_default();
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(ca) => {
            let certs = read_certs(ca, "broker.tls.ca_file")?;
            for c in certs {
                roots.add(c).map_err(|e| MqttError::Tls {
                    key: "broker.tls.ca_file",
                    message: format!("{}: {e}", ca.display()),
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                // Skip the odd unparsable system certificate rather than failing.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(MqttError::Tls {
                    key: "broker.tls.ca_file",
                    message: "no system CA certificates found: set broker.tls.ca_file".into(),
                });
            }
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "broker.tls.cert_file")?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| MqttError::Tls {
                key: "broker.tls.key_file",
                message: format!("{}: no usable private key: {e}", key.display()),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| MqttError::Tls {
                    key: "broker.tls.key_file",
                    message: format!("client certificate and key do not fit: {e}"),
                })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read_certs(
    path: &std::path::Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let err = |message: String| MqttError::Tls { key, message };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!(
            "{}: no PEM certificate in file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Sends small packets at once (TCP_NODELAY): events and acknowledgements are small, and
/// Nagle's algorithm meeting delayed ACKs adds tens of milliseconds per hop otherwise.
pub fn low_latency(eventloop: &mut rumqttc::EventLoop) {
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
}

//! `mqtts://` and credentials against a real Mosquitto: a CA made by the test (openssl),
//! server authentication, client certificates, and username/password.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Agent, Client, Mosquitto, Tls, agent_bin, guest, unique};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate.
/// A CA, a server and a client certificate, with P-256 keys (RSA key generation takes
/// seconds, at random).
fn make_pki(dir: &Path) {
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
            "/CN=edge-agent test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

/// Mosquitto (through the harness, which retries on a taken port) with a plain listener
/// for the test's client and a TLS one for the agent.
fn start(dir: &Path, require_cert: bool, password: bool) -> Mosquitto {
    let d = dir.display();
    let password_file = password.then(|| {
        let out = Command::new("mosquitto_passwd")
            .args(["-b", "-c", &format!("{d}/passwords"), "agent", "s3cret"])
            .output()
            .expect("mosquitto_passwd");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("passwords")
    });
    // Mosquitto drops to its own user when run as root: let it read the files.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX", &d.to_string()])
        .status();
    Mosquitto::start_tls(&Tls {
        cafile: dir.join("ca.pem"),
        certfile: dir.join("server.pem"),
        keyfile: dir.join("server.key"),
        require_certificate: require_cert,
        password_file,
    })
}

fn agent_config(broker: &Mosquitto, dir: &Path, host: &str, extra_broker: &str) -> String {
    format!(
        "[agent]\nid = \"{}\"\n[broker]\nurl = \"mqtts://{host}:{}\"\n{extra_broker}\n\
         [[function]]\nname = \"echo\"\nmodule = \"{}\"\ntopics = [\"in\"]\n[function.config]\nout_topic = \"out\"\n",
        unique("tls"),
        broker.tls_port.expect("a TLS listener"),
        guest("echo"),
    )
    .replace("CA_FILE", &dir.join("ca.pem").display().to_string())
    .replace("DIR", &dir.display().to_string())
}

async fn round_trip(broker: &Mosquitto) {
    let mut c = Client::connect(broker.port, &["out"]).await;
    c.publish("in", "over tls").await;
    assert_eq!(c.recv().await.text(), "over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let broker = start(dir.path(), false, false);
    for host in ["localhost", "127.0.0.1"] {
        let cfg = agent_config(
            &broker,
            dir.path(),
            host,
            "[broker.tls]\nca_file = \"CA_FILE\"",
        );
        let agent = Agent::start(&cfg).await;
        round_trip(&broker).await;
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate_and_a_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let broker = start(dir.path(), true, true);
    let cfg = agent_config(
        &broker,
        dir.path(),
        "localhost",
        "username = \"agent\"\npassword = \"s3cret\"\n[broker.tls]\nca_file = \"CA_FILE\"\n\
         cert_file = \"DIR/client.pem\"\nkey_file = \"DIR/client.key\"",
    );
    let agent = Agent::start(&cfg).await;
    round_trip(&broker).await;
    // The client commands over the same mutual TLS (until 2026-12-08 they had no client
    // certificate flags, and could not reach such a broker at all).
    let mut c = Client::connect(broker.port, &["out"]).await;
    let d = dir.path().display().to_string();
    let url = format!("mqtts://localhost:{}", broker.tls_port.expect("TLS"));
    let (ca, cert, key) = (
        format!("{d}/ca.pem"),
        format!("{d}/client.pem"),
        format!("{d}/client.key"),
    );
    let publish = move |with_cert: bool| {
        let mut args = vec![
            "publish",
            "--broker",
            &url,
            "--ca-file",
            &ca,
            "--username",
            "agent",
            "--password",
            "s3cret",
            "--topic",
            "in",
            "--payload",
            "by publish",
        ];
        if with_cert {
            args.extend(["--cert-file", &cert, "--key-file", &key]);
        }
        Command::new(agent_bin())
            .args(&args)
            .output()
            .expect("run edge-agent")
    };
    let (without, with) = tokio::task::spawn_blocking(move || (publish(false), publish(true)))
        .await
        .expect("join");
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(with.status.success(), "{}", stderr(&with));
    assert_eq!(c.recv().await.text(), "by publish");
    assert_eq!(without.status.code(), Some(69), "{}", stderr(&without));
    assert!(
        stderr(&without).contains("CertificateRequired"),
        "{}",
        stderr(&without)
    );
    agent.stop().await;
}

/// A client certificate renewed in place (the same paths, a new key and a certificate from
/// another CA) is the one the next connection shows: the broker, restarted to trust only
/// that CA for clients, takes the agent back without a restart of the agent. (Read once at
/// start, the old certificate was shown at every reconnection, and turned away for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_renewed_on_disk_is_shown_at_the_next_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let renewed = tempfile::tempdir().expect("tempdir");
    make_pki(renewed.path());
    let broker = start(dir.path(), true, false);
    let (port, tls_port) = (broker.port, broker.tls_port.expect("a TLS listener"));
    let cfg = agent_config(
        &broker,
        dir.path(),
        "localhost",
        "reconnect_max_ms = 500\n[broker.tls]\nca_file = \"CA_FILE\"\n\
         cert_file = \"DIR/client.pem\"\nkey_file = \"DIR/client.key\"",
    );
    let agent = Agent::start(&cfg).await;
    round_trip(&broker).await;
    // Renewed as a renewal tool does it: each file replaced whole.
    for f in ["client.pem", "client.key"] {
        let part = dir.path().join(format!("{f}.new"));
        std::fs::copy(renewed.path().join(f), &part).expect("copy");
        std::fs::rename(&part, dir.path().join(f)).expect("rename");
    }
    drop(broker);
    let _ = Command::new("chmod")
        .args(["-R", "a+rX", &renewed.path().display().to_string()])
        .status();
    let broker = Mosquitto::restart_tls(
        port,
        tls_port,
        &Tls {
            cafile: renewed.path().join("ca.pem"),
            certfile: dir.path().join("server.pem"),
            keyfile: dir.path().join("server.key"),
            require_certificate: true,
            password_file: None,
        },
    );
    // The broker kept no session: the agent must connect and subscribe again.
    let mut c = Client::connect(broker.port, &["out"]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        c.publish("in", "renewed").await;
        if let Some(m) = c.next(Duration::from_millis(300)).await {
            assert_eq!(m.text(), "renewed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not come back with the renewed certificate within 15 s"
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_or_password_is_reported_and_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let broker = start(dir.path(), false, true);
    // A CA that did not sign the server's certificate.
    let other = tempfile::tempdir().expect("tempdir");
    make_pki(other.path());
    let cfg = agent_config(
        &broker,
        other.path(),
        "localhost",
        "username = \"agent\"\npassword = \"s3cret\"\n[broker.tls]\nca_file = \"CA_FILE\"",
    );
    let error = first_connection_error(&cfg).await;
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    let cfg = agent_config(
        &broker,
        dir.path(),
        "localhost",
        "username = \"agent\"\npassword = \"wrong\"\n[broker.tls]\nca_file = \"CA_FILE\"",
    );
    let error = first_connection_error(&cfg).await;
    assert!(error.contains("refused"), "{error}");
}

/// Starts an agent that cannot connect; returns the error of its first attempt, once it
/// has failed twice (so it is retrying, not stuck).
async fn first_connection_error(cfg: &str) -> String {
    let agent = Agent::start_unready(cfg).await;
    let mut links = agent.links();
    let seen = tokio::time::timeout(
        crate::harness::WAIT,
        links.wait_for(|l| l.overall().failures >= 2),
    )
    .await
    .expect("connection failures in time")
    .expect("connection task alive")
    .overall();
    assert!(!seen.connected);
    agent.stop().await;
    seen.last_error.unwrap_or_default()
}

//! `mqtts://` and credentials against a real Mosquitto: a CA made by the test (openssl),
//! server authentication, client certificates, and username/password.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::harness::{Agent, Client, free_port, guest, wait_for_port};

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
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
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
                "rsa:2048",
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

struct Broker {
    child: Child,
    plain: u16,
    tls: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mosquitto with a plain listener (for the test's client) and a TLS one (for the agent).
fn start(dir: &Path, require_cert: bool, password: bool) -> Broker {
    let (plain, tls) = (free_port(), free_port());
    let d = dir.display();
    let mut conf = format!(
        "per_listener_settings true\n\
         listener {plain} 127.0.0.1\nallow_anonymous true\n\
         listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         require_certificate {require_cert}\n"
    );
    if password {
        let out = Command::new("mosquitto_passwd")
            .args(["-b", "-c", &format!("{d}/passwords"), "agent", "s3cret"])
            .output()
            .expect("mosquitto_passwd");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        conf += &format!("allow_anonymous false\npassword_file {d}/passwords\n");
    } else {
        conf += "allow_anonymous true\n";
    }
    std::fs::write(dir.join("mosquitto.conf"), conf).expect("write conf");
    // Mosquitto drops to its own user when run as root: let it read the files.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX", &d.to_string()])
        .status();
    let child = Command::new(if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    })
    .arg("-c")
    .arg(dir.join("mosquitto.conf"))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("mosquitto");
    wait_for_port(plain);
    wait_for_port(tls);
    Broker { child, plain, tls }
}

fn agent_config(broker: &Broker, dir: &Path, host: &str, extra_broker: &str) -> String {
    format!(
        "[agent]\nid = \"tls{}\"\n[broker]\nurl = \"mqtts://{host}:{}\"\n{extra_broker}\n\
         [[function]]\nname = \"echo\"\nmodule = \"{}\"\ntopics = [\"in\"]\n[function.config]\nout_topic = \"out\"\n",
        broker.tls,
        broker.tls,
        guest("echo"),
    )
    .replace("CA_FILE", &dir.join("ca.pem").display().to_string())
    .replace("DIR", &dir.display().to_string())
}

async fn round_trip(broker: &Broker) {
    let mut c = Client::connect(broker.plain, &["out"]).await;
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
        let agent = Agent::start(&cfg);
        round_trip(&broker).await;
        drop(agent);
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
    let _agent = Agent::start(&cfg);
    round_trip(&broker).await;
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
    let agent = Agent::spawn(&cfg);
    agent.wait_log("broker connection lost; reconnecting");
    assert!(
        agent.log_text().to_lowercase().contains("certificate"),
        "{}",
        agent.log_text()
    );
    drop(agent);
    let cfg = agent_config(
        &broker,
        dir.path(),
        "localhost",
        "username = \"agent\"\npassword = \"wrong\"\n[broker.tls]\nca_file = \"CA_FILE\"",
    );
    let agent = Agent::spawn(&cfg);
    agent.wait_log("broker connection lost; reconnecting");
    assert!(agent.log_text().contains("refused"), "{}", agent.log_text());
}

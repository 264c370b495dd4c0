//! The command line as a user meets it: `check` and `run` on bad configs (exit 78 and one
//! clear line), and `publish`.

use std::process::{Command, Output};

use crate::harness::{Client, agent_bin, broker_port, edge_agent, embedded, guest, repo_root};

fn run(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(agent_bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run edge-agent")
}

fn good(module: &str) -> String {
    format!(
        "[broker]\nurl = \"mqtt://127.0.0.1:1\"\n[[function]]\nname = \"f\"\nmodule = \"{module}\"\ntopics = [\"a/#\"]\n"
    )
}

/// `check` and `run` on `config` both exit 78 with one line on stderr containing `needle`.
fn rejected(config: &str, needle: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).expect("write");
    for cmd in ["check", "run"] {
        let out = run(
            &[cmd, "--config", path.to_str().expect("utf-8 path")],
            dir.path(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{cmd}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{cmd}: expected one error line:\n{stderr}");
        assert!(
            lines[0].contains("bad.toml"),
            "{cmd}: file not named: {stderr}"
        );
        assert!(
            lines[0].contains(needle),
            "{cmd}: `{needle}` not in: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

#[test]
fn check_accepts_the_demo_config() {
    crate::harness::guests();
    let out = run(&["check", "--config", "configs/demo.toml"], &repo_root());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (3 functions"));
}

/// `share` with a module that can write state is said at load (each member keeps its own
/// state); a module that cannot is not warned about.
#[test]
fn share_with_a_state_writing_module_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    let config = format!(
        "[broker]\nurl = \"mqtt://127.0.0.1:1\"\n\
         [[function]]\nname = \"c\"\nmodule = \"{}\"\nshare = \"g\"\ntopics = [\"c/#\"]\n\
         [[function]]\nname = \"e\"\nmodule = \"{}\"\nshare = \"g\"\ntopics = [\"e/#\"]\n",
        guest("counter"),
        guest("echo")
    );
    std::fs::write(&path, config).expect("write");
    let out = run(
        &["check", "--config", path.to_str().expect("utf-8")],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("can write state, and with share"))
        .collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(warned[0].contains("function=c"), "{stderr}");
}

/// Under systemd the error that stops the agent carries an error's syslog priority, as
/// its log lines do theirs, so that `journalctl -p warning` shows it.
#[test]
fn under_systemd_the_fatal_error_has_an_error_priority() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[broker]\nkeep_alive_secs = 2\n").expect("write");
    let run = |args: &[&str]| {
        let out = Command::new(agent_bin())
            .args(args)
            .args(["run", "--config", path.to_str().expect("utf-8")])
            .env("JOURNAL_STREAM", "8:1234")
            .output()
            .expect("run edge-agent");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        stderr
    };
    let stderr = run(&[]);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("<3>error: ") && l.contains("keep_alive_secs")),
        "{stderr}"
    );
    // With JSON logs, a JSON object like every other line.
    let stderr = run(&["--log-format", "json"]);
    let fatal = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("<3>"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("keep_alive_secs"))
        });
    assert!(fatal.is_some_and(|v| v["level"] == "ERROR"), "{stderr}");
}

/// Relative paths in a config file are read from the file's own directory: `check` from
/// elsewhere finds the modules, and the data directory lands beside the file.
#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    crate::harness::guests();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let demo = repo_root().join("configs/demo.toml");
    let out = run(
        &["check", "--config", demo.to_str().expect("utf-8")],
        elsewhere.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let layout = tempfile::tempdir().expect("tempdir");
    let (etc, lib) = (layout.path().join("etc"), layout.path().join("lib"));
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::create_dir_all(&lib).expect("mkdir");
    std::fs::copy(guest("echo"), lib.join("echo.wasm")).expect("copy");
    let config = etc.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndata_dir = \"state\"\n{}",
            good("../lib/echo.wasm")
        ),
    )
    .expect("write");
    let out = run(
        &["check", "--config", config.to_str().expect("utf-8")],
        elsewhere.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // data_dir too: a file where the data directory would be, beside the config.
    std::fs::write(etc.join("state"), "not a directory").expect("write");
    let out = run(
        &["check", "--config", config.to_str().expect("utf-8")],
        elsewhere.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("agent.data_dir") && stderr.contains("etc/state"),
        "{stderr}"
    );
    // A module path that is right only from the working directory is not found.
    std::fs::write(&config, good("lib/echo.wasm")).expect("write");
    let out = run(
        &["check", "--config", config.to_str().expect("utf-8")],
        layout.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("etc/lib/echo.wasm"), "{stderr}");
}

/// Without `--config`: `EDGE_AGENT_CONFIG`, then /etc/edge-agent/config.toml, then
/// ./edge-agent.toml; `check` says which file it read, and none at all is exit 78.
#[test]
fn the_config_is_found_without_flag_and_check_says_where() {
    crate::harness::guests();
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |env: Option<&std::path::Path>| {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("check")
            .current_dir(dir.path())
            .env_remove("EDGE_AGENT_CONFIG");
        if let Some(path) = env {
            cmd.env("EDGE_AGENT_CONFIG", path);
        }
        cmd.output().expect("run edge-agent")
    };
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let named = elsewhere.path().join("named.toml");
    std::fs::write(&named, good(&guest("echo"))).expect("write");
    let out = check(Some(&named));
    assert!(out.status.success(), "{}", text(&out));
    let said = format!("reading {} (from EDGE_AGENT_CONFIG)", named.display());
    assert!(text(&out).contains(&said), "{}", text(&out));
    // The defaults (only where this machine has no /etc/edge-agent/config.toml).
    if !std::path::Path::new(edge_agent_cli::cli::DEFAULT_CONFIGS[0]).exists() {
        let out = check(None);
        assert_eq!(out.status.code(), Some(78), "{}", text(&out));
        assert!(text(&out).contains("no config file"), "{}", text(&out));
        std::fs::write(dir.path().join("edge-agent.toml"), good(&guest("echo"))).expect("write");
        let out = check(None);
        assert!(out.status.success(), "{}", text(&out));
        let said = "reading ./edge-agent.toml (from the default location)";
        assert!(text(&out).contains(said), "{}", text(&out));
    }
}

/// `check` reports every mistake in the file, one line each naming its key, and every
/// module that cannot be loaded.
#[test]
fn check_reports_every_error_each_on_its_own_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("many.toml");
    let f = |name: &str, extra: &str| {
        format!(
            "[[function]]\nname = \"{name}\"\nmodule = \"{}\"\ntopics = [\"{name}/#\"]\n{extra}\n",
            guest("echo")
        )
    };
    let config = format!(
        "[broker]\nurl = \"mqtt://127.0.0.1:1\"\nkeep_alive_secs = 1\n{}{}{}",
        f("a", "qos = 5\ntimeout_ms = 0"),
        f("b", "topics = [\"b/#/x\"]").replace("topics = [\"b/#\"]\n", ""),
        f("c", "")
    );
    std::fs::write(&path, config).expect("write");
    let out = run(&["check", "--config", "many.toml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    let keys = [
        "`broker.keep_alive_secs`",
        "`function[a].qos`",
        "`function[a].timeout_ms`",
        "`function[b].topics`",
    ];
    assert_eq!(lines.len(), keys.len(), "{stderr}");
    for (line, key) in lines.iter().zip(keys) {
        assert!(
            line.contains("many.toml") && line.contains(key),
            "{key}: {stderr}"
        );
    }
    // Two modules that cannot be loaded: both named.
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, "hello").expect("write");
    let bad = |name: &str| {
        format!("[[function]]\nname = \"{name}\"\nmodule = \"not.wasm\"\ntopics = [\"{name}/#\"]\n")
    };
    let config = format!(
        "[broker]\nurl = \"mqtt://127.0.0.1:1\"\n{}{}{}",
        bad("x"),
        f("ok", ""),
        bad("y")
    );
    std::fs::write(&path, config).expect("write");
    let out = run(&["check", "--config", "many.toml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("function `x`") && lines[1].contains("function `y`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("\\x") && !stderr.contains("[104"),
        "byte dump: {stderr}"
    );
}

/// Usage errors are exit 64 (EX_USAGE) with clap's message; --help is 0.
#[test]
fn usage_errors_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["run", "--colour"][..], &["publish"], &["frobnicate"]] {
        let out = run(args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains("Usage:"), "{args:?}: {stderr}");
    }
    let out = run(&["check", "--help"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("EDGE_AGENT_CONFIG"));
}

#[test]
fn unknown_key_is_rejected() {
    rejected(
        &(good(&guest("echo")) + "colour = 1\n"),
        "`function[0].colour`: unknown key `colour`; expected one of",
    );
}

#[test]
fn wrong_type_is_rejected() {
    rejected(
        &(good(&guest("echo")) + "timeout_ms = \"soon\"\n"),
        "function[0].timeout_ms",
    );
}

#[test]
fn missing_module_is_rejected() {
    rejected(
        &good("/nonexistent/m.wasm"),
        "`function[f].module`: cannot read /nonexistent/m.wasm",
    );
}

#[test]
fn invalid_topic_filter_is_rejected() {
    rejected(
        &good(&guest("echo")).replace("a/#", "a/#/b"),
        "`function[f].topics`",
    );
}

#[test]
fn duplicate_function_names_are_rejected() {
    let echo = guest("echo");
    let text = good(&echo)
        + &format!("[[function]]\nname = \"f\"\nmodule = \"{echo}\"\ntopics = [\"b\"]\n");
    rejected(&text, "duplicate function name");
}

#[test]
fn module_without_the_export_is_rejected() {
    rejected(&good(&guest("no-handler")), "function `f`");
    rejected(&good(&guest("no-handler")), "edge:agent/handler");
}

#[test]
fn file_that_is_not_wasm_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"this is not wasm").expect("write");
    rejected(&good(junk.to_str().expect("utf-8")), "is not WebAssembly");
}

#[test]
fn embedded_broker_port_in_use_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    let text = good(&guest("echo")).replace(
        "url = \"mqtt://127.0.0.1:1\"",
        &format!("url = \"mqtt://127.0.0.1:{port}\"\nembedded = true"),
    );
    std::fs::write(&path, text).expect("write");
    let out = run(
        &["run", "--config", path.to_str().expect("utf-8")],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_command_sends_numbered_messages() {
    let broker = crate::harness::Mosquitto::start();
    let mut c = Client::connect(broker.port, &["bench/#"]).await;
    let url = broker.url();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &[
                "publish",
                "--broker",
                &url,
                "--topic",
                "bench/x",
                "--payload",
                "n={seq}",
                "--count",
                "5",
                "--rate",
                "200",
            ],
            &repo_root(),
        )
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(c.recv().await.text());
        }
        v
    };
    assert_eq!(got, ["n=0", "n=1", "n=2", "n=3", "n=4"]);
}

/// The embedded broker answers a wrong login with a CONNACK that says so, as Mosquitto
/// does: until 2026-12-08 it closed the connection unanswered, and `publish`, `top` and
/// `fleet status` said "connection closed by peer" (a probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_says_it_refused_a_login() {
    let config = embedded(&crate::harness::unique("c"))
        + &format!(
            "username = \"agent\"\npassword = \"s3cret\"\n[[function]]\nname = \"e\"\n\
             module = \"{}\"\ntopics = [\"e/#\"]\n[function.config]\nout_topic = \"o/{{topic}}\"\n",
            guest("echo")
        );
    let agent = crate::harness::Agent::start(&config).await;
    let url = format!("mqtt://127.0.0.1:{}", agent.port);
    let out = tokio::task::spawn_blocking(move || {
        let args = ["--topic", "x", "--payload", "y", "--username", "agent"];
        let args = [
            &["publish", "--broker", &url][..],
            &args,
            &["--password", "wrong"],
        ]
        .concat();
        run(&args, &repo_root())
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("BadUserNamePassword"), "{stderr}");
    agent.stop().await;
}

#[test]
fn publish_to_a_dead_broker_fails_clearly() {
    // Nothing listens there: the port is free and nothing in this process binds it.
    let port = broker_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let out = run(
        &[
            "publish",
            "--broker",
            &url,
            "--topic",
            "x",
            "--payload",
            "y",
        ],
        &repo_root(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    // How far it got: what a fault test (a broker restarted under the stream) needs.
    assert!(
        stderr.contains(&format!(
            "error: broker {url}, with 0 of 1 messages acknowledged"
        )),
        "{stderr}"
    );
}

/// `top --once`, `shadow report` and `fleet status` with no broker there, or a port that
/// takes connections and never answers: the broker's error, exit 69, not "is the agent
/// running?" after it on a line of its own, nor an empty fleet (as until 2026-12-08).
#[test]
fn top_and_shadow_report_without_a_broker_say_why() {
    let says_the_broker = |url: &str, args: &[&str], also: &str| {
        let args: Vec<&str> = args.iter().copied().chain(["--broker", url]).collect();
        let out = run(&args, &repo_root());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: broker {url}: ")) && stderr.contains(also),
            "{args:?}: {stderr}"
        );
    };
    let top = ["top", "--once", "--wait-secs", "1"];
    let shadow = ["shadow", "report", "f", "--wait-secs", "1"];
    let dead = format!("mqtt://127.0.0.1:{}", broker_port());
    // Said at once, not after the wait (until 2026-12-08 the whole wait went by).
    let (top_long, shadow_long) = (
        ["top", "--once", "--wait-secs", "60"],
        ["shadow", "report", "f", "--wait-secs", "60"],
    );
    for args in [&top_long[..], &shadow_long] {
        let started = std::time::Instant::now();
        says_the_broker(&dead, args, "so no report could be read");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{args:?}"
        );
    }
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("mqtt://{}", silent.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().collect();
        drop(held);
    });
    for args in [&top[..], &shadow] {
        says_the_broker(&url, args, "no MQTT answer (CONNACK) within 1 s");
    }
    says_the_broker(&url, &["fleet", "status", "--wait-ms", "500"], "");
}

fn precompile(target: Option<&str>, out: &std::path::Path) -> String {
    let mut args = vec![
        "precompile".to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    if let Some(t) = target {
        args.extend(["--target".into(), t.into()]);
    }
    args.push(guest("echo"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(&args, &repo_root());
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("echo.cwasm") && stdout.contains("sha256 "),
        "{stdout}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precompiled_module_runs_and_its_hash_can_be_pinned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = precompile(None, dir.path());
    let sha = stdout
        .split("sha256 ")
        .nth(1)
        .expect("hash")
        .trim()
        .to_string();
    let cwasm = dir.path().join("echo.cwasm");
    let config = format!(
        "[broker]\nurl = \"mqtt://127.0.0.1:0\"\nembedded = true\n\
         [[function]]\nname = \"pre\"\nmodule = \"{}\"\nsha256 = \"{sha}\"\ntopics = [\"in\"]\n\
         [function.config]\nout_topic = \"out\"\n",
        cwasm.display()
    );
    let agent = crate::harness::Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["out"]).await;
    c.publish("in", "precompiled").await;
    assert_eq!(c.recv().await.text(), "precompiled");
    agent.stop().await;

    // The same artifact with a wrong pin is refused.
    let wrong =
        good(cwasm.to_str().expect("utf-8")) + &format!("sha256 = \"{}\"\n", "0".repeat(64));
    rejected(&wrong, "refusing to load it");

    // Unpinned, a copy damaged in its code (a bad SD-card sector) is refused by its seal;
    // wasmtime checks only the header, and until 2026-12-08 the agent crashed running it.
    let mut bytes = std::fs::read(&cwasm).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle..middle + 512].fill(0);
    let damaged = dir.path().join("damaged.cwasm");
    std::fs::write(&damaged, bytes).expect("write");
    rejected(
        &good(damaged.to_str().expect("utf-8")),
        "damaged.cwasm is damaged: its code's CRC-32 is",
    );
    // A copy cut short loses the seal with its tail: told as not whole.
    let bytes = std::fs::read(&cwasm).expect("read");
    let cut = dir.path().join("cut.cwasm");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    rejected(
        &good(cut.to_str().expect("utf-8")),
        "it is native code but not a whole artifact",
    );
}

#[test]
fn artifact_for_another_target_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = if cfg!(target_arch = "aarch64") {
        "x86_64-unknown-linux-gnu"
    } else {
        "aarch64-unknown-linux-gnu"
    };
    precompile(Some(other), dir.path());
    let cwasm = dir.path().join("echo.cwasm");
    rejected(
        &good(cwasm.to_str().expect("utf-8")),
        "precompiled for another target",
    );
}

#[test]
fn wasm_named_cwasm_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("echo.cwasm");
    std::fs::copy(guest("echo"), &fake).expect("copy");
    rejected(
        &good(fake.to_str().expect("utf-8")),
        "is not a precompiled component: it is a WebAssembly component: name it .wasm",
    );
}

/// At least fifteen malformed configs, each refused by both `check` and `run` with exit
/// 78 and one line naming the file and the key or function.
#[test]
fn malformed_configs_table() {
    let echo = guest("echo");
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, vec![0u8; 2 * 1024 * 1024]).expect("write");
    let base = good(&echo);
    let with_fn = |line: &str| format!("{base}{line}\n");
    let with_broker = |line: &str| base.replace("[broker]\n", &format!("[broker]\n{line}\n"));
    let cases: Vec<(String, &str)> = vec![
        (with_fn("qos = 3"), "`function[f].qos`: must be 0, 1 or 2"),
        (with_fn("qos = \"high\""), "function[0].qos"),
        (with_fn("timeout_ms = 0"), "`function[f].timeout_ms`"),
        (
            with_fn("memory_limit_mb = 99999"),
            "`function[f].memory_limit_mb`",
        ),
        (
            with_fn("max_concurrency = 0"),
            "`function[f].max_concurrency`",
        ),
        (
            with_fn("queue_capacity = 0"),
            "`function[f].queue_capacity`",
        ),
        (with_fn("overflow = \"drop-everything\""), "drop-everything"),
        (with_fn("mode = \"serverful\""), "serverful"),
        (
            with_fn("instances = 3"),
            "`function[f].instances`: only applies to mode = \"persistent\"",
        ),
        (
            with_fn("sha256 = \"abc\""),
            "`function[f].sha256`: must be 64 hexadecimal digits",
        ),
        (with_fn("fuel = 0"), "`function[f].fuel`"),
        (with_fn("publish_rate = 0"), "`function[f].publish_rate`"),
        (
            with_fn("topics_extra = 1"),
            "`function[0].topics_extra`: unknown key `topics_extra`",
        ),
        (base.replace("a/#", "a/#/b"), "`function[f].topics`"),
        (
            base.replace("a/#", ""),
            "`function[f].topics`: topic filter `` is empty",
        ),
        (
            base.replace(&echo, "/nonexistent/x.wasm"),
            "`function[f].module`: cannot read",
        ),
        (
            base.replace(&echo, big.to_str().expect("utf-8")) + "[runtime]\nmax_module_mb = 1\n",
            "over runtime.max_module_mb",
        ),
        (
            base.replace("mqtt://127.0.0.1:1", "http://127.0.0.1:1"),
            "`broker.url`: unsupported scheme",
        ),
        (
            base.replace("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:0"),
            "`broker.url`",
        ),
        (
            with_broker("keep_alive_secs = 1"),
            "`broker.keep_alive_secs`",
        ),
        (
            with_broker("connect_timeout_secs = 0"),
            "`broker.connect_timeout_secs`: must be from 1 to 600",
        ),
        (with_broker("password = \"x\""), "`broker.password`"),
        (
            base.replace("mqtt://127.0.0.1:1", "mqtts://127.0.0.1:1")
                .replace(
                    "[broker]\n",
                    "[broker.tls]\nca_file = \"/nonexistent/ca.pem\"\n[broker]\n",
                ),
            "`broker.tls.ca_file`: cannot read /nonexistent/ca.pem",
        ),
        (
            base.replace(
                "[[function]]",
                "[broker.tls]\nca_file = \"/etc/hostname\"\n[[function]]",
            ),
            "`broker.tls`: is set but broker.url is not mqtts://",
        ),
        (
            with_broker("embedded = true").replace("mqtt://", "mqtts://"),
            "`broker.embedded`",
        ),
        (
            with_broker("embedded = true").replace("127.0.0.1:1", "0.0.0.0:1"),
            "`broker.embedded`: the embedded broker would listen on 0.0.0.0 with no credentials",
        ),
        (
            format!("[state]\nmax_pending_bytes_per_call = 10\n{base}"),
            "`state.max_pending_bytes_per_call`",
        ),
        (format!("[agent]\nid = \"a b\"\n{base}"), "`agent.id`"),
        (
            format!("[state]\nmin_flush_interval_ms = 60001\n{base}"),
            "`state.min_flush_interval_ms`",
        ),
        (
            format!("[state]\nmax_flushes_per_sec = 100001\n{base}"),
            "`state.max_flushes_per_sec`",
        ),
        (
            format!("[runtime]\nmax_instances = 0\n{base}"),
            "`runtime.max_instances`",
        ),
        (
            "[[function]]\nname = \"f\"\n".to_string(),
            "function[0].module",
        ),
    ];
    // What `run` needs that `check` must check too.
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "x").expect("write");
    let random = dir.path().join("random.wasm");
    std::fs::write(&random, [7u8; 100]).expect("write");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let cases: Vec<(String, String)> = cases
        .into_iter()
        .map(|(c, n)| (c, n.to_string()))
        .chain([
            (
                format!("[agent]\ndata_dir = \"{}\"\n{base}", a_file.display()),
                "`agent.data_dir`: ".to_string() + &a_file.display().to_string(),
            ),
            (
                format!("[agent]\ndata_dir = \"/proc/edge-agent\"\n{base}"),
                "`agent.data_dir`: /proc/edge-agent is in a kernel file system".to_string(),
            ),
            (
                base.replace(&echo, &guest("big-memory")),
                "needs more memory than memory_limit_mb (32 MiB) to start".to_string(),
            ),
            (
                with_fn("memory_limit_mb = 1.5"),
                "`function[0].memory_limit_mb`: 1.5 is not a whole number".to_string(),
            ),
            (
                with_fn("timeout_ms = 99999999999999999999"),
                "`function[0].timeout_ms` (line 7): number too large".to_string(),
            ),
            (
                base.replace(&echo, random.to_str().expect("utf-8")),
                "is not WebAssembly".to_string(),
            ),
            (
                base.replace(&echo, core.to_str().expect("utf-8")),
                "is a core WebAssembly module, not a component".to_string(),
            ),
            (
                with_fn("[function.config]\nout_topic = \"a/out\""),
                "`function[f].config.out_topic`: `a/out` matches the function's own topic filter `a/#`"
                    .to_string(),
            ),
        ])
        .collect();
    assert!(cases.len() >= 15);
    for (config, needle) in cases {
        rejected(&config, &needle);
    }
}

/// `compare --quick` runs both functions in both models, each in its own agent process,
/// and reports what it measured from outside: every event's output arrived once, and the
/// agent's own stats for the same run count the same events.
#[test]
fn compare_measures_both_models_and_agrees_with_the_agents_stats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let out = Command::new(agent_bin())
        .args(["compare", "--quick", "--modules"])
        .arg(crate::harness::guests())
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("run compare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: edge_agent_compare::Report =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("report JSON");
    assert_eq!(report.schema_version, edge_agent_compare::SCHEMA_VERSION);
    let names: Vec<&str> = report
        .functions
        .iter()
        .map(|f| f.function.as_str())
        .collect();
    assert_eq!(names, ["echo", "counter"]);
    for f in &report.functions {
        let models: Vec<&str> = f.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(
            models,
            ["persistent", "on-demand", "scale-to-zero", "auto"],
            "{}",
            f.function
        );
        for m in &f.models {
            let what = format!("{} {}", f.function, m.model);
            assert_eq!(m.error, None, "{what}");
            assert_eq!(m.rounds, 1, "{what}");
            assert!(
                m.idle_rss_bytes.median > 0.0 && m.peak_rss_bytes.median >= m.idle_rss_bytes.median,
                "{what}"
            );
            assert!(
                m.rss_over_time.len() > 4 && m.state_disk_bytes.median > 0.0,
                "{what}"
            );
            assert!(m.agent_call_cpu_p50_us.median > 0.0, "{what}");
            // Idle and each phase measured in one-second windows, the samples of every
            // cost figure.
            for rate in std::iter::once(0.0).chain(m.phases.iter().map(|p| p.rate)) {
                let n = m.windows.iter().filter(|w| w.rate == rate).count();
                assert!(n >= 2, "{what}: {n} windows at {rate}/s");
            }
            let mut received = 0;
            for p in &m.phases {
                assert!(p.sent > 0, "{what}: {p:?}");
                assert_eq!(
                    (p.received, p.lost, p.duplicates),
                    (p.sent, 0, 0),
                    "{what}: {p:?}"
                );
                assert!(
                    p.end_to_end_us.p50.median > 0.0 && p.cpu_per_event_us.median > 0.0,
                    "{what}: {p:?}"
                );
                // Every figure is a median inside its interval.
                for e in [
                    p.end_to_end_us.p50,
                    p.end_to_end_us.p99,
                    p.cpu_per_event_us,
                    p.cpu_seconds_per_hour,
                    p.rss_bytes,
                ] {
                    assert!(e.low <= e.median && e.median <= e.high, "{what}: {e:?}");
                }
                received += p.received;
            }
            // The cross-check: the agent handled exactly the events whose outputs arrived.
            assert_eq!(m.agent_succeeded, received, "{what}");
            // Its own latency (receive to output sent) is inside the outside view's. Not
            // for `counter`: a state-writing call's own latency runs until its writes are
            // durable, after its outputs have left (a flush of 2 ms on a slow disk put its
            // p50 past every output's arrival).
            let outside_max = m
                .phases
                .iter()
                .map(|p| p.end_to_end_us.max)
                .max()
                .unwrap_or(0);
            assert!(
                f.function == "counter" || m.agent_end_to_end_p50_us.median <= outside_max as f64,
                "{what}: the agent's p50 {} against the outside's max {outside_max}",
                m.agent_end_to_end_p50_us.median
            );
            // Priced: idle, then each rate; each model under its own billing scheme.
            assert_eq!(m.costs.len(), m.phases.len() + 1, "{what}");
            let billing = match m.model.as_str() {
                "persistent" => "reserved",
                "auto" => "per-window",
                _ => "by-use",
            };
            assert_eq!(m.billing, billing, "{what}");
            assert!(
                m.costs.iter().skip(1).all(|c| c.cpu_seconds.median > 0.0
                    && c.memory_mb.median > 0.0
                    && c.watts.median > 0.0
                    && c.dollars.median > 0.0
                    && c.watts.low <= c.watts.median
                    && c.watts.median <= c.watts.high),
                "{what}: {:?}",
                m.costs
            );
            assert!(m.latency_cdf.len() > 10, "{what}");
            // Counter's store grows while it works: memory is held above idle.
            assert!(
                !f.stateful || m.memory_mb_seconds_above_idle.median > 0.0,
                "{what}: {:?}",
                m.memory_mb_seconds_above_idle
            );
            // The agent's split: every event queues; only counter's calls commit state.
            assert!(m.agent_queue_p50_us.median > 0.0, "{what}");
            assert_eq!(m.agent_commit_p50_us.median > 0.0, f.stateful, "{what}");
            // Scaled to zero during the idle phase: the first event loads the module again.
            let full = m.agent_full_cold_starts;
            if m.model == "scale-to-zero" {
                assert!(
                    full >= 1 && m.agent_full_cold_start_load_p50_us.median > 0.0,
                    "{what}"
                );
            } else {
                assert_eq!(full, 0, "{what}");
            }
        }
        let names: Vec<&str> = f.tradeoffs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cold start",
                "statelessness",
                "resource limits",
                "resource efficiency",
                "cost predictability"
            ]
        );
        // At least the low rate keeps up, even on a busy CI machine.
        assert!(
            f.models.iter().all(|m| m.max_sustained_rate >= Some(20.0)),
            "{f:?}"
        );
        let kinds: Vec<&str> = f.verdicts.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["cpu", "memory", "energy", "money"],
            "{}",
            f.function
        );
        for v in &f.verdicts {
            // A winner is named only where the interval of the difference lies beyond the
            // noise threshold (25% for one round).
            let (d, t) = (v.persistent_saves, v.noise_threshold);
            assert_eq!(t, 0.25, "{v:?}");
            match v.winner.as_str() {
                "persistent" => assert!(d.low > t, "{v:?}"),
                "on-demand" => assert!(d.high < -t, "{v:?}"),
                w => assert!(
                    w == edge_agent_compare::verdict::EVEN && d.low <= t && d.high >= -t,
                    "{v:?}"
                ),
            }
            assert!(stdout.contains(&v.text), "{stdout}");
        }
        // The card: at the workload's mean rate (20 and 200 events/s for 2 s each), and
        // --quick's two windows per rate make it weak, and it says so.
        assert!((f.card.rate - 110.0).abs() < 1.0, "{:?}", f.card);
        assert!(f.card.weak, "{:?}", f.card);
        assert!(f.verdict.starts_with(&f.function), "{}", f.verdict);
        assert!(stdout.contains(&f.verdict), "{stdout}");
        // Auto, with its defaults, against the cheaper fixed model, per kind of cost.
        let kinds: Vec<&str> = f.auto.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["cpu", "memory", "energy", "money"], "{:?}", f.auto);
        assert!(
            f.auto
                .iter()
                .all(|a| a.auto > 0.0 && a.persistent > 0.0 && a.on_demand > 0.0),
            "{:?}",
            f.auto
        );
        assert!(
            f.verdict
                .contains("auto against the cheaper fixed model: cpu "),
            "{}",
            f.verdict
        );
    }
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.contains("<p class=\"auto\">"), "the page shows auto");
    charts_show_the_report(&page, &report, 1);

    // Back to back, the verdict holds still: a second run may say "about even" where the
    // first named a winner, but never the other winner with both sure.
    let second = dir.path().join("second.json");
    let out = Command::new(agent_bin())
        .args(["compare", "--quick", "--modules"])
        .arg(crate::harness::guests())
        .arg("--json")
        .arg(&second)
        .output()
        .expect("run compare again");
    assert!(out.status.success(), "{out:?}");
    let again = edge_agent_compare::load(&second).expect("second report");
    let contradictions = edge_agent_compare::contradictions(&report, &again);
    assert!(
        contradictions.is_empty(),
        "two back-to-back runs contradict each other: {contradictions:?}\nfirst: {:?}\nsecond: {:?}",
        report
            .functions
            .iter()
            .map(|f| &f.verdicts)
            .collect::<Vec<_>>(),
        again
            .functions
            .iter()
            .map(|f| &f.verdicts)
            .collect::<Vec<_>>()
    );

    // Saved reports re-render side by side (here the same one twice, as two devices).
    let both = dir.path().join("both.html");
    let out = Command::new(agent_bin())
        .args(["compare", "--from"])
        .arg(&json)
        .arg("--from")
        .arg(&json)
        .arg("--html")
        .arg(&both)
        .output()
        .expect("run compare --from");
    assert!(out.status.success(), "{out:?}");
    charts_show_the_report(&std::fs::read_to_string(&both).expect("html"), &report, 2);
    // Several agents' reports from one run: in one file as a JSON array, or as the files
    // of one directory; each named by its host.
    let fleet = dir.path().join("fleet");
    std::fs::create_dir(&fleet).expect("fleet dir");
    std::fs::copy(&json, fleet.join("a.json")).expect("copy");
    std::fs::copy(&second, fleet.join("b.json")).expect("copy");
    let array = dir.path().join("array.json");
    std::fs::write(
        &array,
        serde_json::to_vec(&[&report, &again]).expect("an array"),
    )
    .expect("write the array");
    assert!(report.host.is_some(), "the report names its host");
    for from in [&fleet, &array] {
        let out = Command::new(agent_bin())
            .args(["compare", "--from"])
            .arg(from)
            .output()
            .expect("run compare --from over several agents");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.contains("reports 1 and 2"), "{stdout}");
        assert!(stdout.contains(&report.place()), "{stdout}");
    }
    // `compare ARGS --from` the saved report.
    let judged = |args: &[&str]| {
        Command::new(agent_bin())
            .arg("compare")
            .args(args)
            .arg("--from")
            .arg(&json)
            .output()
            .expect("run compare --from")
    };
    // A saved report is judged again at another rate, without measuring again.
    let out = judged(&["--rate", "1000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("at 1000 events/s"), "{stdout}");
    let out = judged(&["--rate", "1e6"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[extrapolated: 1000000 events/s is past the highest rate measured"),
        "{stdout}"
    );
    // A rate that is none: refused with exit 64, not judged ("3626% less money at -5
    // events/s" until 2026-12-07).
    for bad in ["-5", "0", "NaN", "inf"] {
        let out = judged(&[&format!("--rate={bad}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "--rate {bad}: {stderr}");
        assert!(stderr.contains("events a second, from"), "{stderr}");
    }
    let out = judged(&["--power", "toaster"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    // A file that is not a report is named, with exit 66.
    let out = Command::new(agent_bin())
        .args(["compare", "--from"])
        .arg(&html)
        .output()
        .expect("run compare --from");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{stderr}");
    assert!(stderr.contains("report.html: not JSON"), "{stderr}");
}

/// Parses the page and checks that every chart has axes, a title and data, and that the
/// points drawn are the report's figures (`copies` times: once per device shown).
fn charts_show_the_report(html: &str, report: &edge_agent_compare::Report, copies: usize) {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true, // <!DOCTYPE html>
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(html, options)
        .expect("the page is well-formed XML");
    let charts: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("svg") && n.attribute("class") == Some("chart"))
        .collect();
    assert_eq!(
        charts.len(),
        report.functions.len() * 6,
        "six charts per function"
    );
    // The answer first: a card per function (and device) before any chart, naming the
    // report's recommendation.
    let cards: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("card"))
        .collect();
    assert_eq!(cards.len(), report.functions.len() * copies);
    let first_chart = charts[0].range().start;
    for (card, f) in cards.iter().zip(report.functions.iter().cycle()) {
        assert!(card.range().start < first_chart, "a card after the charts");
        assert_eq!(card.attribute("data-function"), Some(f.function.as_str()));
        assert_eq!(
            card.attribute("data-recommended"),
            Some(f.card.recommended.as_str())
        );
    }
    // The raw figures folded away, as a table (no preformatted lines running off the page).
    assert!(
        doc.descendants()
            .any(|n| n.has_tag_name("details") && n.descendants().any(|t| t.has_tag_name("table"))),
        "no folded table"
    );
    assert!(
        !doc.descendants().any(|n| n.has_tag_name("pre")),
        "a <pre> is left"
    );
    let chart = |id: &str| {
        *charts
            .iter()
            .find(|c| c.attribute("data-chart") == Some(id))
            .unwrap_or_else(|| panic!("no chart {id}"))
    };
    // (x, y) of every point drawn in a chart.
    let points = |c: roxmltree::Node| -> Vec<(String, f64)> {
        c.descendants()
            .filter(|n| n.attribute("class") == Some("point"))
            .map(|n| {
                let v = |a| {
                    n.attribute(a)
                        .unwrap_or_else(|| panic!("point without {a}"))
                };
                (
                    v("data-x").to_string(),
                    v("data-y").parse::<f64>().expect("y"),
                )
            })
            .collect()
    };
    for c in &charts {
        let id = c.attribute("data-chart").unwrap_or_default();
        assert!(
            c.children()
                .any(|n| n.has_tag_name("title") && n.text().is_some_and(|t| !t.is_empty())),
            "{id}: no title"
        );
        for axis in ["axis x", "axis y"] {
            assert!(
                c.descendants().any(|n| n.attribute("class") == Some(axis)
                    && n.attribute("data-label").is_some_and(|l| !l.is_empty())),
                "{id}: no labelled {axis}"
            );
        }
        let drawn: usize = c
            .descendants()
            .filter(|n| n.attribute("class") == Some("series"))
            .map(|n| {
                n.attribute("data-n")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
            })
            .sum();
        assert!(drawn > 0, "{id}: no data drawn");
    }
    // The same points, up to the last digit a JSON round trip may change.
    let same = |drawn: Vec<(String, f64)>, json: Vec<(String, f64)>, what: &str| {
        let close = drawn.len() == json.len()
            && drawn.iter().zip(&json).all(|(a, b)| {
                a.0.parse::<f64>().ok() == b.0.parse::<f64>().ok()
                    && (a.1 - b.1).abs() <= 1e-9 * a.1.abs().max(1.0)
            });
        assert!(close, "{what}: drawn {drawn:?}, in the report {json:?}");
    };
    let sorted = |mut v: Vec<(String, f64)>| {
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v
    };
    for f in &report.functions {
        let name = &f.function;
        let expected = |each: &dyn Fn(&edge_agent_compare::ModelRun) -> Vec<(String, f64)>| {
            sorted(
                (0..copies)
                    .flat_map(|_| f.models.iter().flat_map(each))
                    .collect(),
            )
        };
        let cpu = expected(&|m| {
            m.phases
                .iter()
                .map(|p| (p.rate.to_string(), p.cpu_per_event_us.median))
                .collect()
        });
        same(
            sorted(points(chart(&format!("cpu-per-event-{name}")))),
            cpu,
            name,
        );
        // Each with its interval drawn as an error bar around it.
        let c = chart(&format!("cpu-per-event-{name}"));
        let bars = c
            .descendants()
            .filter(|n| n.attribute("class") == Some("interval"))
            .count();
        assert_eq!(bars, points(c).len(), "{name}: error bars");
        let cdf = expected(&|m| {
            m.latency_cdf
                .iter()
                .map(|&(q, us)| ((us as f64 / 1000.0).to_string(), q))
                .collect()
        });
        same(
            sorted(points(chart(&format!("latency-cdf-{name}")))),
            cdf,
            name,
        );
        let cold = expected(&|m| {
            [
                ("queue", m.agent_queue_p50_us),
                ("full cold start: load", m.agent_full_cold_start_load_p50_us),
                ("instantiate", m.agent_instantiate_p50_us),
                ("execute", m.agent_execute_p50_us),
                ("commit", m.agent_commit_p50_us),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.median))
            .collect()
        });
        same(
            sorted(points(chart(&format!("cold-start-{name}")))),
            cold,
            name,
        );
        // Money: the measured points at each rate (rate 0 has no place on a log axis).
        let money = points(chart(&format!("cost-money-{name}")));
        let measured: usize = f.models.iter().map(|m| m.phases.len()).sum();
        assert_eq!(money.len(), measured * copies, "{name}: {money:?}");
        let rss = chart(&format!("rss-{name}"));
        let lines: Vec<usize> = rss
            .descendants()
            .filter(|n| n.attribute("class") == Some("series"))
            .map(|n| {
                n.attribute("data-n")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        let samples: Vec<usize> = (0..copies)
            .flat_map(|_| f.models.iter().map(|m| m.rss_over_time.len()))
            .collect();
        assert_eq!(lines, samples, "{name}");
    }
}

#[test]
fn compare_runs_a_workload_file_against_mosquitto() {
    // Every pattern but the sweep (the test above runs that), outputs matched both ways
    // and not at all, three sensor topics, QoS 0, and an existing broker (Mosquitto).
    let broker = crate::harness::Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let guests = crate::harness::guests();
    let module = |name: &str| guests.join(format!("{name}.wasm")).display().to_string();
    let workload = format!(
        "duration_secs = 2\nqos = 0\nsensors = 3\npower = \"pi5\"\n\
         [broker]\nurl = \"{}\"\n\
         [[function]]\nname = \"echo\"\nmodule = \"{}\"\n\
         [function.config]\nout_topic = \"compare/out/{{topic}}\"\n\
         [function.traffic]\npattern = \"poisson\"\nrate = 50\n\
         [[function]]\nname = \"counter\"\nmodule = \"{}\"\noutputs = \"count\"\ninstances = 2\n\
         [function.config]\nout_topic = \"compare/out/{{topic}}\"\n\
         [function.traffic]\npattern = \"burst\"\nevents = 60\nevery_secs = 1\n\
         [[function]]\nname = \"threshold\"\nmodule = \"{}\"\noutputs = \"none\"\n\
         [function.config]\nthreshold = \"30\"\nalert_topic = \"compare/out/{{1..}}\"\n\
         [function.traffic]\npattern = \"ramp\"\nfrom = 10\nto = 90\n",
        broker.url(),
        module("echo"),
        module("counter"),
        module("threshold-alert"),
    );
    let file = dir.path().join("workload.toml");
    std::fs::write(&file, workload).expect("write workload");
    let json = dir.path().join("report.json");
    // One round (not the default three): this test checks the patterns, not the verdict.
    let out = Command::new(agent_bin())
        .args(["compare", "--repeat", "1", "--config"])
        .arg(&file)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run compare");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: edge_agent_compare::Report =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("report JSON");
    assert_eq!((report.qos, report.power.name.as_str()), (0, "pi5"));
    let patterns: Vec<&str> = report
        .functions
        .iter()
        .map(|f| f.models[0].phases[0].pattern.as_str())
        .collect();
    assert_eq!(
        patterns,
        ["poisson 50/s", "burst 60 every 1 s", "ramp 10/s to 90/s"]
    );
    for f in &report.functions {
        for m in &f.models {
            let what = format!("{} {}", f.function, m.model);
            assert_eq!(m.error, None, "{what}");
            let p = &m.phases[0];
            assert!(p.sent >= 60, "{what}: {p:?}");
            // QoS 0 on a quiet loopback: nothing is lost, but say so if something is.
            assert_eq!(
                (p.received, p.lost, p.duplicates),
                (p.sent, 0, 0),
                "{what}: {p:?}"
            );
            assert_eq!(m.agent_succeeded, p.sent, "{what}");
            // Outside latency only where outputs name their events.
            assert_eq!(p.end_to_end_us.max > 0, f.function != "threshold", "{what}");
        }
    }
    let stateful: Vec<bool> = report.functions.iter().map(|f| f.stateful).collect();
    assert_eq!(stateful, [false, true, false]);
}

#[test]
fn compare_names_the_key_of_a_bad_workload_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("workload.toml");
    for (text, key) in [
        ("qos = 2\n", "`qos`"),
        ("[traffic]\npattern = \"zigzag\"\n", "zigzag"),
        ("sensors = \"many\"\n", "sensors"),
    ] {
        std::fs::write(&file, text).expect("write workload");
        let out = Command::new(agent_bin())
            .args(["compare", "--config"])
            .arg(&file)
            .output()
            .expect("run compare");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            line.contains("workload.toml") && line.contains(key),
            "{text}: {stderr}"
        );
    }
}

#[test]
fn compare_without_modules_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(agent_bin())
        .args(["compare", "--quick", "--modules"])
        .arg(dir.path())
        .output()
        .expect("run compare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("no echo and counter modules") && stderr.contains("modules/build.sh"),
        "{stderr}"
    );
}

/// A broker that does not answer is named at once (exit 69), not waited for in every model:
/// the device build has no embedded broker and looks for the device's Mosquitto.
#[test]
fn compare_without_a_broker_says_so_at_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let started = std::time::Instant::now();
    let out = Command::new(agent_bin())
        .args(["compare", "--quick", "--modules"])
        .arg(repo_root().join("modules/dist"))
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .output()
        .expect("run compare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!("no broker at mqtt://127.0.0.1:{port}"))
            && stderr.contains("--broker URL"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{stderr}"
    );
}

/// An agent that exits at start (here: a module that is not WebAssembly, which the
/// workload's own checks cannot see) fails its model at once with the agent's reason,
/// rather than after the 600 s that a slow first compile may take; a run with failed
/// models exits 1.
#[test]
fn compare_says_at_once_why_an_agent_exited_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.wasm"), "not wasm").expect("write module");
    let file = dir.path().join("workload.toml");
    std::fs::write(
        &file,
        "duration_secs = 2\n[traffic]\npattern = \"steady\"\nrate = 10\n\
         [[function]]\nname = \"bad\"\nmodule = \"bad.wasm\"\n",
    )
    .expect("write workload");
    let started = std::time::Instant::now();
    let out = Command::new(agent_bin())
        .args(["compare", "--quick", "--config"])
        .arg(&file)
        .output()
        .expect("run compare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The report is printed, and the exit status says that it is incomplete.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: 4 could not be measured")
            && stderr.contains("bad persistent, bad on-demand, bad scale-to-zero, bad auto"),
        "{stderr}"
    );
    for model in ["persistent", "on-demand", "scale-to-zero", "auto"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("bad {model} failed"))
                    && l.contains("the agent exited at start")
                    && l.contains("is not WebAssembly")),
            "{model}: {stderr}"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}: {stderr}",
        started.elapsed()
    );
}

/// A function made, built and run outside the repository: `edge-agent new` in a temp
/// directory (an on-demand echo and a persistent counter), `edge-agent build`, and the agent
/// runs both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_then_build_then_run_outside_the_repo() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The repository's toolchain (it has the wasm32-wasip2 target), and a build cache kept
    // between runs under its target/: the projects themselves are fresh each time.
    let toolchain = std::fs::read_to_string(repo_root().join("rust-toolchain.toml"))
        .expect("rust-toolchain.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("channel = ")
                .map(|c| c.trim_matches('"').to_string())
        })
        .expect("channel");
    let cache = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), std::path::PathBuf::from)
        .join("function-projects");
    let env = [
        ("RUSTUP_TOOLCHAIN", std::ffi::OsStr::new(&toolchain)),
        ("CARGO_TARGET_DIR", cache.as_os_str()),
    ];
    let edge_agent = |args: &[&str]| edge_agent(tmp.path(), &env, args);
    let made = edge_agent(&["new", "greet"]);
    assert_eq!(made.trim(), tmp.path().join("greet").display().to_string());
    edge_agent(&[
        "new",
        "tally",
        "--template",
        "counter",
        "--dir",
        "projects/tally",
    ]);
    edge_agent(&["new", "heat", "-t", "threshold"]);
    let mut config = embedded("outside");
    for (name, dir) in [
        ("greet", "greet"),
        ("tally", "projects/tally"),
        ("heat", "heat"),
    ] {
        let started = std::time::Instant::now();
        let printed = edge_agent(&["build", dir]);
        eprintln!("{name}: built in {:.1?}", started.elapsed());
        // `PATH  N bytes  sha256 HEX`, and the file is that component.
        let fields: Vec<&str> = printed.split_whitespace().collect();
        let wasm = std::path::PathBuf::from(fields[0]);
        let bytes = std::fs::read(&wasm).expect("the built component");
        assert_eq!(fields[1], bytes.len().to_string(), "{printed}");
        assert_eq!(
            fields[4],
            edge_agent::runtime::function::sha256_hex(&bytes),
            "{printed}"
        );
        // The project's snippet, pointed at where this build put the component.
        let snippet = std::fs::read_to_string(tmp.path().join(dir).join("function.toml"))
            .expect("function.toml");
        let default_place = tmp.path().join(dir).join("target");
        config += &snippet.replace(
            &default_place.display().to_string(),
            &cache.display().to_string(),
        );
    }
    let agent = crate::harness::Agent::start(&config).await;
    let mut c = Client::connect(agent.port, &["greet/out/#", "tally/count/#", "alerts/#"]).await;
    c.publish("greet/in/x", "hi").await;
    let m = c.recv_on("greet/out/x").await;
    assert_eq!(m.text(), "hi");
    for n in 1..=3 {
        c.publish("tally/in/door", "open").await;
        let m = c.recv_on("tally/count/door").await;
        assert_eq!(m.json()["count"], n, "{}", m.text());
    }
    c.publish("sensors/kitchen/temperature", r#"{"value": 31.5}"#)
        .await;
    let alert = c.recv_on("alerts/kitchen/temperature").await.json();
    assert_eq!(alert["value"], 31.5, "{alert}");
    agent.stop().await;
}

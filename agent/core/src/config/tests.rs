//! Config loading and validation: each bad config gives one line naming the key.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f.wasm"), b"\0asm").unwrap();
        Self { dir }
    }
    fn module(&self) -> PathBuf {
        self.dir.path().join("f.wasm")
    }
    fn load(&self, name: &str, text: &str) -> Result<Config, ConfigError> {
        self.load_env(name, text, Vec::new())
    }
    fn load_env(
        &self,
        name: &str,
        text: &str,
        env: Vec<(String, String)>,
    ) -> Result<Config, ConfigError> {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            text.replace("MODULE", &self.module().display().to_string()),
        )
        .unwrap();
        Config::load_with_env(&path, env)
    }
    fn err(&self, text: &str) -> String {
        match self.load("agent.toml", text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => {
                let s = e.to_string();
                assert!(!s.contains('\n'), "error spans lines: {s}");
                assert!(
                    s.contains("agent.toml"),
                    "error does not name the file: {s}"
                );
                s
            }
        }
    }
}

const GOOD: &str = r#"
[agent]
id = "a1"
[broker]
url = "mqtt://127.0.0.1:1883"
[[function]]
name = "f"
module = "MODULE"
topics = ["sensors/+/temperature"]
[function.config]
threshold = 30
"#;

fn with(extra_broker: &str, extra_fn: &str) -> String {
    GOOD.replace(
        "url = \"mqtt://127.0.0.1:1883\"",
        &format!("url = \"mqtt://127.0.0.1:1883\"\n{extra_broker}"),
    )
    .replace(
        "topics = [\"sensors/+/temperature\"]",
        &format!("topics = [\"sensors/+/temperature\"]\n{extra_fn}"),
    )
}

/// Every mistake in `[broker]` is told, as in the other sections.
#[test]
fn every_broker_mistake_is_told() {
    let e = Case::new()
        .load(
            "agent.toml",
            &with(
                "keep_alive_secs = 2\nconnect_timeout_secs = 0\nmax_packet_bytes = 5",
                "",
            ),
        )
        .unwrap_err()
        .to_string();
    for key in [
        "broker.keep_alive_secs",
        "broker.connect_timeout_secs",
        "broker.max_packet_bytes",
    ] {
        assert!(e.contains(&format!("`{key}`")), "{key} not told: {e}");
    }
}

#[test]
fn good_config_has_defaults() {
    let c = Case::new();
    let cfg = c.load("agent.toml", GOOD).unwrap();
    assert_eq!(cfg.client_id(), "edge-agent-a1");
    assert!(!cfg.broker.clean_session);
    let f = &cfg.functions[0];
    assert_eq!((f.qos, f.timeout_ms), (1, 1000));
    assert_eq!(f.config.get("threshold").map(String::as_str), Some("30"));
    assert_eq!(cfg.dead_letter_topic(), "edge-agent/a1/dead-letter");
}

#[test]
fn yaml_and_json_are_accepted() {
    let c = Case::new();
    let m = c.module().display().to_string();
    let yaml = format!(
        "agent:\n  id: y\nfunction:\n  - name: f\n    module: {m}\n    topics: [\"a/#\"]\n"
    );
    let cfg = c.load("agent.yaml", &yaml).unwrap();
    assert_eq!(cfg.agent.id, "y");
    let json = format!(r#"{{"function": [{{"name": "f", "module": "{m}", "topics": ["a/#"]}}]}}"#);
    let cfg = c.load("agent.json", &json).unwrap();
    assert_eq!(cfg.functions[0].topics, ["a/#"]);
}

#[test]
fn environment_overrides_the_file() {
    let c = Case::new();
    let env = vec![
        (
            "EDGE_AGENT__BROKER__URL".to_string(),
            "mqtt://10.0.0.1:1999".to_string(),
        ),
        (
            "EDGE_AGENT__BROKER__CLEAN_SESSION".to_string(),
            "true".to_string(),
        ),
        ("EDGE_AGENT__AGENT__ID".to_string(), "from-env".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let cfg = c.load_env("agent.toml", GOOD, env).unwrap();
    assert_eq!(cfg.broker.url, "mqtt://10.0.0.1:1999");
    assert!(cfg.broker.clean_session);
    assert_eq!(cfg.agent.id, "from-env");
}

/// A variable's value is text, kept as it is where text is expected and read as a number or
/// a boolean where one is (a probe, 2026-12-07: `007123` reached the broker as `7123`).
#[test]
fn variables_that_look_like_numbers_stay_text_where_text_is_expected() {
    let c = Case::new();
    let var = |k: &str, v: &str| (k.to_string(), v.to_string());
    let env = vec![
        var("EDGE_AGENT__BROKER__USERNAME", "0042"),
        var("EDGE_AGENT__BROKER__PASSWORD", "007123"),
        var("EDGE_AGENT__AGENT__ID", "007"),
        var("EDGE_AGENT__BROKER__KEEP_ALIVE_SECS", " 30"),
        var("EDGE_AGENT__BROKER__CLEAN_SESSION", "TRUE"),
        var("EDGE_AGENT__BROKER__MAX_PACKET_BYTES", "4096"),
    ];
    let cfg = c.load_env("agent.toml", GOOD, env).unwrap();
    assert_eq!(cfg.broker.username.as_deref(), Some("0042"));
    assert_eq!(cfg.broker.password.as_deref(), Some("007123"));
    assert_eq!(cfg.agent.id, "007");
    assert_eq!(cfg.broker.keep_alive_secs, 30);
    assert!(cfg.broker.clean_session);
    // The functions' message limits follow a packet limit set from the environment too.
    assert_eq!(cfg.functions[0].max_payload_bytes, 4096);
    let e = c
        .load_env(
            "agent.toml",
            GOOD,
            vec![var("EDGE_AGENT__BROKER__KEEP_ALIVE_SECS", "1.5")],
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1.5 is not a whole number") && e.contains("KEEP_ALIVE_SECS"),
        "{e}"
    );
}

#[test]
fn a_mistake_in_a_variable_names_the_variable() {
    let c = Case::new();
    let var = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let e = c
        .load_env("agent.toml", GOOD, var("EDGE_AGENT__BROKER__URLL", "x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`broker.urll`: unknown key `urll`"), "{e}");
    assert!(
        e.ends_with("(set by the environment variable EDGE_AGENT__BROKER__URLL)"),
        "{e}"
    );
    let e = c
        .load_env(
            "agent.toml",
            GOOD,
            var("EDGE_AGENT__BROKER__URL", "ftp://x"),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`broker.url`") && e.contains("EDGE_AGENT__BROKER__URL)"),
        "{e}"
    );
    // A section that only the variable brings is the variable's too.
    let e = c
        .load_env("agent.toml", GOOD, var("EDGE_AGENT__FOO__BAR", "1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown key `foo`") && e.ends_with("EDGE_AGENT__FOO__BAR)"),
        "{e}"
    );
    // The file's own mistakes are the file's.
    let e = c
        .load_env(
            "agent.toml",
            &with("colour = \"blue\"", ""),
            var("EDGE_AGENT__AGENT__ID", "a"),
        )
        .unwrap_err()
        .to_string();
    assert!(!e.contains("environment"), "{e}");
}

#[test]
fn a_wildcard_in_the_topic_prefix_is_told_plainly() {
    let text = GOOD.replace("id = \"a1\"", "id = \"a1\"\ntopic_prefix = \"edge/+\"");
    let e = Case::new().err(&text);
    assert!(
        e.contains("`agent.topic_prefix`: cannot contain `+` or `#`: it begins"),
        "{e}"
    );
}

/// An empty data directory is refused (it was the config file's own folder).
#[test]
fn an_empty_data_dir_is_refused() {
    for blank in ["", "   "] {
        let e = Case::new().err(&GOOD.replace(
            "id = \"a1\"",
            &format!("id = \"a1\"\ndata_dir = \"{blank}\""),
        ));
        assert!(e.contains("`agent.data_dir`: is empty"), "{blank:?}: {e}");
    }
}

/// A data directory that is a symbolic link to nothing (a card not mounted) is refused by
/// `check` as by `run` (which failed with a bare "No such file or directory").
#[test]
fn a_data_dir_linked_to_nothing_is_refused() {
    let c = Case::new();
    let link = c.dir.path().join("data");
    std::os::unix::fs::symlink("/nonexistent/card", &link).unwrap();
    let text = GOOD.replace(
        "id = \"a1\"",
        &format!("id = \"a1\"\ndata_dir = \"{}\"", link.display()),
    );
    let e = c.err(&text);
    assert!(
        e.contains("`agent.data_dir`") && e.contains("symbolic link to /nonexistent/card"),
        "{e}"
    );
}

/// What an earlier run left in the data directory must be writable too, as `run` needs it:
/// `check` said ok where `run` failed (a `state/` made by a run as root).
#[test]
fn what_an_earlier_run_left_in_the_data_dir_is_checked() {
    let c = Case::new();
    let data = c.dir.path().join("data");
    let text = GOOD.replace(
        "id = \"a1\"",
        &format!("id = \"a1\"\ndata_dir = \"{}\"", data.display()),
    );
    std::fs::create_dir_all(data.join("state")).unwrap();
    std::fs::write(data.join("state").join("conf"), "x").unwrap();
    // `compare` links each agent's compile cache to one folder.
    std::fs::create_dir(c.dir.path().join("shared")).unwrap();
    std::os::unix::fs::symlink(c.dir.path().join("shared"), data.join("compiled")).unwrap();
    c.load("agent.toml", &text).expect("a store it can write");
    std::fs::write(data.join("sessions"), "not a directory").unwrap();
    let e = c.err(&text);
    assert!(
        e.contains("`agent.data_dir`") && e.contains("data/sessions is not a directory"),
        "{e}"
    );
    std::fs::remove_file(data.join("sessions")).unwrap();
    // A file of the store that cannot be opened for writing (root opens it anyway).
    let ro = data.join("state").join("db");
    std::fs::write(&ro, "x").unwrap();
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&ro, perms).unwrap();
    // SAFETY: geteuid cannot fail.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let e = c.err(&text);
        assert!(e.contains("cannot write") && e.contains("state/db"), "{e}");
    }
}

#[test]
fn relative_paths_are_joined_without_a_dot() {
    let c = Case::new();
    let cfg = c.load("agent.toml", GOOD).expect("good");
    // As text: paths compare equal with or without a `.` between their parts.
    let want = format!("{}/data", c.dir.path().display());
    assert_eq!(cfg.agent.data_dir.display().to_string(), want);
}

#[test]
fn unknown_key() {
    let e = Case::new().err(&with("colour = \"blue\"", ""));
    assert!(
        e.contains("`broker.colour`: unknown key `colour`; expected one of `url`, `embedded`,"),
        "{e}"
    );
}

#[test]
fn unknown_key_in_function() {
    let e = Case::new().err(&with("", "timout_ms = 5"));
    assert!(
        e.contains("`function[0].timout_ms`: unknown key `timout_ms`; expected one of `name`,"),
        "{e}"
    );
}

#[test]
fn unknown_value_names_key_value_and_allowed_values() {
    let e = Case::new().err(&with("", "mode = \"container\""));
    assert!(
        e.ends_with(
            "agent.toml: `function[0].mode`: unknown value `container`; expected one of \
             `on-demand`, `persistent`, `auto`"
        ),
        "{e}"
    );
    let e = Case::new().err(&format!("{GOOD}[runtime]\nallocator = \"pool\"\n"));
    assert!(
        e.contains(
            "`runtime.allocator`: unknown value `pool`; expected one of `auto`, `pooling`, \
             `on-demand`"
        ),
        "{e}"
    );
}

#[test]
fn fraction_where_a_whole_number_is_expected() {
    let e = Case::new().err(&with("", "timeout_ms = 1.5"));
    assert!(
        e.contains("`function[0].timeout_ms`: 1.5 is not a whole number"),
        "{e}"
    );
    // `[function.config]` values are free-form: a fraction is its text.
    let cfg = Case::new()
        .load("agent.toml", &format!("{GOOD}ratio = 0.5\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.functions[0].config.get("ratio").map(String::as_str),
        Some("0.5")
    );
}

#[test]
fn wrong_type() {
    let e = Case::new().err(&with("", "qos = \"high\""));
    assert!(
        e.contains("`function[0].qos`: expected u8, not string \"high\""),
        "{e}"
    );
}

#[test]
fn qos_out_of_range() {
    let e = Case::new().err(&with("", "qos = 3"));
    assert!(e.contains("`function[f].qos`: must be 0, 1 or 2"), "{e}");
}

/// A key of one model set on the other is refused, not ignored.
#[test]
fn restart_keys_and_max_concurrency_belong_to_their_models() {
    for (k, line) in [
        ("restart", "restart = \"never\""),
        ("max_restarts", "max_restarts = 1"),
    ] {
        let e = Case::new().err(&with("", &format!("mode = \"on-demand\"\n{line}")));
        assert!(
            e.contains(&format!(
                "`function[f].{k}`: only applies to mode = \"persistent\" or \"auto\""
            )),
            "{e}"
        );
    }
    let e = Case::new().err(&with("", "mode = \"persistent\"\nmax_concurrency = 2"));
    assert!(
        e.contains("`function[f].max_concurrency`: only applies to mode = \"on-demand\""),
        "{e}"
    );
    Case::new()
        .load("agent.toml", &with("", "mode = \"auto\"\nmax_restarts = 2"))
        .expect("auto takes the restart keys");
}

#[test]
fn keep_warm_is_for_on_demand_functions() {
    let e = Case::new().err(&with("", "mode = \"persistent\"\nkeep_warm_secs = 5"));
    assert!(
        e.contains("`function[f].keep_warm_secs`: only applies to mode = \"on-demand\""),
        "{e}"
    );
    let e = Case::new().err(&with("", "keep_warm_secs = 0"));
    assert!(
        e.contains("`function[f].keep_warm_secs`: must be at least 1"),
        "{e}"
    );
    let cfg = Case::new()
        .load("agent.toml", &with("", "keep_warm_secs = 30"))
        .unwrap();
    assert_eq!(
        cfg.functions[0].keep_warm_secs,
        Some(super::KeepWarm::Secs(30))
    );
    let cfg = Case::new()
        .load("agent.toml", &with("", "keep_warm_secs = \"auto\""))
        .unwrap();
    assert_eq!(cfg.functions[0].keep_warm_secs, Some(super::KeepWarm::Auto));
    let e = Case::new().err(&with("", "keep_warm_secs = \"often\""));
    assert!(
        e.contains("`function[0].keep_warm_secs`: expected a number of seconds or \"auto\""),
        "{e}"
    );
}

#[test]
fn missing_module_file() {
    let e = Case::new().err(&GOOD.replace("MODULE", "/nonexistent/x.wasm"));
    assert!(
        e.contains("`function[f].module`: cannot read /nonexistent/x.wasm"),
        "{e}"
    );
}

#[test]
fn invalid_topic_filter() {
    let e = Case::new().err(&GOOD.replace("sensors/+/temperature", "sensors/#/temperature"));
    assert!(
        e.contains("`function[f].topics`: topic filter `sensors/#/temperature`"),
        "{e}"
    );
    let e = Case::new().err(&GOOD.replace("sensors/+/temperature", "sensors/a+"));
    assert!(e.contains("`+` must stand alone"), "{e}");
}

#[test]
fn duplicate_function_names() {
    let text =
        format!("{GOOD}\n[[function]]\nname = \"f\"\nmodule = \"MODULE\"\ntopics = [\"x\"]\n");
    let e = Case::new().err(&text);
    assert!(
        e.contains("`function[f].name`: duplicate function name"),
        "{e}"
    );
}

#[test]
fn missing_required_field() {
    let e = Case::new().err("[[function]]\nname = \"f\"\ntopics = [\"x\"]\n");
    assert!(e.contains("`function[0].module`: is required"), "{e}");
}

#[test]
fn bad_broker_url() {
    let e = Case::new().err(&GOOD.replace("mqtt://127.0.0.1:1883", "http://x"));
    assert!(
        e.contains("`broker.url`: unsupported scheme `http://`"),
        "{e}"
    );
}

#[test]
fn embedded_broker_needs_plain_tcp() {
    let text = GOOD
        .replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
        .replace("[broker]", "[broker]\nembedded = true");
    let e = Case::new().err(&text);
    assert!(e.contains("`broker.embedded`"), "{e}");
}

/// rumqttd refuses a client id with `/` and such, and then panicked: refused here.
#[test]
fn the_embedded_broker_takes_no_client_id_it_refuses() {
    for id in ["a/b", "a+b", "a#b", "$a"] {
        let text = with(&format!("embedded = true\nclient_id = \"{id}\""), "");
        // (Two mistakes where this crate is built without the embedded broker.)
        let e = Case::new()
            .load("agent.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`broker.client_id`") && e.contains(id), "{e}");
    }
    Case::new()
        .load("agent.toml", &with("client_id = \"a/b\"", ""))
        .expect("Mosquitto takes it");
}

#[test]
fn missing_tls_file() {
    let text = "[broker]\nurl = \"mqtts://127.0.0.1:8883\"\n[broker.tls]\nca_file = \"/nonexistent/ca.pem\"\n\
                [[function]]\nname = \"f\"\nmodule = \"MODULE\"\ntopics = [\"x\"]\n";
    let e = Case::new().err(text);
    assert!(
        e.contains("`broker.tls.ca_file`: cannot read /nonexistent/ca.pem"),
        "{e}"
    );
}

#[test]
fn no_functions() {
    let e = Case::new().err("[agent]\nid = \"x\"\n");
    assert!(e.contains("no [[function]] is configured"), "{e}");
}

#[test]
fn bad_agent_id() {
    let e = Case::new().err(&GOOD.replace("id = \"a1\"", "id = \"a/b\""));
    assert!(e.contains("`agent.id`"), "{e}");
}

#[test]
fn unreadable_config_file() {
    let e = Config::load(Path::new("/nonexistent/agent.toml"))
        .err()
        .map(|e| e.to_string());
    let e = e.unwrap_or_else(|| panic!("loaded a missing file"));
    assert!(
        e.starts_with("/nonexistent/agent.toml: cannot read config file"),
        "{e}"
    );
}

#[test]
fn unknown_extension() {
    let c = Case::new();
    let e = c
        .load("agent.ini", GOOD)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("unknown config format"), "{e}");
}

#[test]
fn toml_syntax_error() {
    let e = Case::new().err("[agent\nid = 1");
    assert!(e.contains("agent.toml: line 1: "), "{e}");
    let e = Case::new().err(&format!("{GOOD}\nqos = = 1\n"));
    assert!(e.contains("agent.toml: `qos` (line 13): "), "{e}");
}

#[test]
fn number_too_large_names_its_key_and_line() {
    let e = Case::new().err(&with("", "timeout_ms = 99999999999999999999"));
    assert!(
        e.contains("`function[0].timeout_ms` (line 11): number too large"),
        "{e}"
    );
}

mod fuzz {
    use proptest::prelude::*;

    use super::{Case, GOOD};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the file says, loading returns a config or an error: never a panic.
        #[test]
        fn arbitrary_files_never_panic(text in ".{0,200}") {
            let c = Case::new();
            let _ = c.load("agent.toml", &text);
            let _ = c.load("agent.yaml", &text);
            let _ = c.load("agent.json", &text);
        }

        /// A good config with one byte changed: an error with one line, or a config.
        #[test]
        fn mutated_configs_fail_cleanly(pos in 0usize..GOOD.len(), byte in 32u8..127) {
            let mut bytes = GOOD.as_bytes().to_vec();
            bytes[pos] = byte;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if let Err(e) = Case::new().load("agent.toml", &text) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }
    }
}

#[test]
fn auto_mode_has_defaults_and_checks_its_settings() {
    let c = Case::new();
    let cfg = c
        .load(
            "agent.toml",
            &with(
                "",
                "mode = \"auto\"\ninstances = 2\nauto = { objective = \"money\", tick_secs = 0.5 }",
            ),
        )
        .unwrap();
    let f = &cfg.functions[0];
    assert_eq!(f.mode, super::Mode::Auto);
    assert_eq!(f.auto.objective, super::Objective::Money);
    assert_eq!(f.auto.tick_secs, 0.5);
    // Knative's windows, untouched.
    assert_eq!(
        (f.auto.stable_window_secs, f.auto.panic_window_secs),
        (60.0, 6.0)
    );
    let e = c.err(&with("", "mode = \"auto\"\nauto = { margin = -1 }"));
    assert!(
        e.contains("`function[f].auto.margin`: must be from 0 to 10"),
        "{e}"
    );
    let e = c.err(&with(
        "",
        "mode = \"auto\"\nauto = { panic_window_secs = 90 }",
    ));
    assert!(
        e.contains("`function[f].auto.panic_window_secs`: must be at most stable_window_secs"),
        "{e}"
    );
    let e = c.err(&with("", "auto = { objective = \"memory\" }"));
    assert!(
        e.contains("`function[f].auto`: only applies to mode = \"auto\""),
        "{e}"
    );
    let e = c.err(&with(
        "",
        "mode = \"auto\"\nauto = { objective = \"speed\" }",
    ));
    assert!(
        e.contains("unknown value `speed`; expected one of `cpu`, `memory`, `energy`, `money`"),
        "{e}"
    );
}

#[test]
fn a_shadow_section_has_defaults_and_checks_its_settings() {
    let c = Case::new();
    // `with` puts the key before `[function.config]`: an inline table here.
    let cfg = c
        .load(
            "agent.toml",
            &with("", "shadow = { mode = \"persistent\" }"),
        )
        .unwrap();
    let f = &cfg.functions[0];
    let s = f.shadow_function().expect("a shadow");
    assert_eq!(
        (s.name.as_str(), s.mode),
        ("f~shadow", super::Mode::Persistent)
    );
    assert_eq!(s.module, f.module, "the primary's module by default");
    let control = f.control_function().expect("a control");
    assert_eq!(control.mode, super::Mode::OnDemand, "the primary's model");
    assert_eq!(f.shadow.as_ref().map(|s| s.fraction), Some(1.0));
    // A relative module is beside the config file, as the primary's is, wherever the
    // agent runs from (until 2026-12-08 it was read from the working directory).
    let cfg = c
        .load("agent.toml", &with("", "shadow = { module = \"f.wasm\" }"))
        .unwrap();
    assert_eq!(
        cfg.functions[0]
            .shadow
            .as_ref()
            .and_then(|s| s.module.clone()),
        Some(c.module())
    );
    for (shadow, says) in [
        (
            "mode = \"auto\"",
            "`function[f].shadow.mode`: must be \"on-demand\" or \"persistent\"",
        ),
        (
            "fraction = 0",
            "`function[f].shadow.fraction`: must be above 0 and at most 1",
        ),
        (
            "max_cpu_percent = 150",
            "`function[f].shadow.max_cpu_percent`: must be above 0 and at most 100",
        ),
        (
            "publish_to = \"sensors/x\"",
            "`function[f].shadow.publish_to`: `sensors/x` is under the function's own topic filter",
        ),
        (
            "publish_to = \"edge-agent/v2\"",
            "is under the agent's own topic prefix",
        ),
        (
            "ignore = [\"a..b\"]",
            "`function[f].shadow.ignore`: `a..b` is not a path",
        ),
        (
            "module = \"nowhere.wasm\"",
            "`function[f].shadow.module`: cannot read /",
        ),
    ] {
        let e = c.err(&with("", &format!("shadow = {{ {shadow} }}")));
        assert!(e.contains(says), "{shadow}: {e}");
    }
}

#[test]
fn share_and_partition_are_checked() {
    let c = Case::new();
    let cfg = c
        .load("agent.toml", &with("", "partition = { of = 3, index = 2 }"))
        .unwrap();
    let p = cfg.functions[0].partition.expect("a partition");
    // CRC-32 (IEEE) of the topic, modulo 3: a publisher can compute it too.
    assert_eq!(crc32fast::hash(b"in/0") % 3 == 2, p.takes("in/0"));
    for (extra, says) in [
        (
            "share = \"a/b\"",
            "`function[f].share`: `a/b` must be 1-64 characters",
        ),
        (
            "partition = { of = 3, index = 3 }",
            "`function[f].partition`: of = 3, index = 3",
        ),
        (
            "share = \"g\"\npartition = { of = 2, index = 0 }",
            "`function[f].partition`: cannot be used with share",
        ),
    ] {
        let e = c.err(&with("", extra));
        assert!(e.contains(says), "{extra}: {e}");
    }
    let e = c.err(&GOOD.replace("sensors/+/temperature", "$share/g/sensors/+/temperature"));
    assert!(
        e.contains("write the plain filter and share = \"GROUP\""),
        "{e}"
    );
}

/// A lower packet limit lowers the functions' default message limits with it (a probe,
/// 2026-12-07: `check` refused the defaults, naming keys the file did not have); limits
/// written out are still checked against it.
#[test]
fn the_default_message_limits_follow_a_lower_packet_limit() {
    let c = Case::new();
    let cfg = c
        .load("agent.toml", &with("max_packet_bytes = 4096", ""))
        .expect("defaults within the packet limit");
    let f = &cfg.functions[0];
    assert_eq!((f.max_publish_bytes, f.max_payload_bytes), (4096, 4096));
    let cfg = c.load("agent.toml", GOOD).expect("a config");
    assert_eq!(cfg.functions[0].max_publish_bytes, 256 * 1024);
    let e = c.err(&with("max_packet_bytes = 4096", "max_publish_bytes = 5000"));
    assert!(e.contains("`function[f].max_publish_bytes`"), "{e}");
    // Set through the environment, too.
    let env = vec![("EDGE_AGENT__BROKER__MAX_PACKET_BYTES".into(), "2048".into())];
    let cfg = c.load_env("agent.toml", GOOD, env).expect("a config");
    assert_eq!(cfg.functions[0].max_payload_bytes, 2048);
}

/// A long topic filter is quoted by its start, length and end, as in every message (a
/// 70,000-byte one made a `check` line of 70,080 bytes).
#[test]
fn a_long_bad_topic_filter_is_quoted_short() {
    let long = format!("a/#/{}", "b".repeat(70_000));
    let e = Case::new().err(&GOOD.replace(
        "topics = [\"sensors/+/temperature\"]",
        &format!("topics = [\"{long}\"]"),
    ));
    assert!(e.contains("(70004 bytes)"), "{}", &e[..e.len().min(400)]);
    assert!(e.len() < 1_000, "{} bytes", e.len());
}

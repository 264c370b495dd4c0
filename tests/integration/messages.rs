//! The agent's messages against their documentation: every field a filled example of each
//! message serialises to has a row in its table in `docs/observability.md`, every row names
//! a field the type has, and the `schema_version` row says the version the type writes.

use std::collections::BTreeSet;
use std::path::Path;

use edge_agent::messages::shadow::{
    ShadowMessage, ShadowMismatch, ShadowOutput, ShadowReport, ShadowResult, ShadowSide,
};
use edge_agent::messages::stats::{AutoLastSwitch, AutoReport, AutoSwitch};
use edge_agent::messages::{
    DeadLetter, FailedFunction, FunctionReport, Message, Percentiles, ProcessFigures, Rates,
    ReloadReport, ReloadedFunction, Report, Snapshot, Status, StatusFunction,
};
use serde_json::Value;

/// A [`Percentiles`] object, or a shadow report: such an object is one documented field,
/// whose own fields are in the `percentiles` or the `shadow-report` table.
fn is_percentiles(map: &serde_json::Map<String, Value>) -> bool {
    let keys: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    keys == BTreeSet::from(["count", "p50", "p90", "p99", "max"])
        || keys.contains("mismatch_ratio") && keys.contains("noise")
}

/// Every field path of `value`: nested fields with dots, list items with `[]`.
fn fields(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) if prefix.is_empty() || !is_percentiles(map) => {
            for (k, v) in map {
                fields(v, &join(k), out);
            }
        }
        Value::Array(items) => match items.first() {
            Some(Value::Object(_)) => {
                for item in items {
                    fields(item, &format!("{prefix}[]"), out);
                }
            }
            // A list of tuples (`failed`: `[kind, count]`) is one field.
            Some(Value::Array(_)) => {
                out.insert(prefix.to_string());
            }
            _ => {
                out.insert(format!("{prefix}[]"));
            }
        },
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// The rows of the table under `### `name`` in `doc`: (field, meaning).
fn table(doc: &str, name: &str) -> Option<Vec<(String, String)>> {
    let heading = format!("### `{name}`");
    let start = doc.lines().position(|l| l.trim() == heading)?;
    let rows = doc
        .lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let field = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((
                field.to_string(),
                cells.get(3).copied().unwrap_or("").to_string(),
            ))
        })
        .collect();
    Some(rows)
}

/// What disagrees between `doc`'s table `name` and `example` (a message, serialised) whose
/// type writes `version` (`None`: not a message of its own, no version).
fn disagreements(doc: &str, name: &str, example: &Value, version: Option<u32>) -> Vec<String> {
    let Some(rows) = table(doc, name) else {
        return vec![format!(
            "docs/observability.md has no table under \"### `{name}`\" (add one, a row per field)"
        )];
    };
    let mut have = BTreeSet::new();
    fields(example, "", &mut have);
    let documented: BTreeSet<String> = rows.iter().map(|(f, _)| f.clone()).collect();
    let mut problems: Vec<String> = have
        .difference(&documented)
        .map(|f| {
            format!("the `{name}` message has a field `{f}` that its table in docs/observability.md does not document (add a row)")
        })
        .collect();
    problems.extend(documented.difference(&have).map(|f| {
        format!("the `{name}` table in docs/observability.md documents `{f}`, which the message does not have (remove or rename the row)")
    }));
    if let Some(version) = version {
        let said = rows
            .iter()
            .find(|(f, _)| f == "schema_version")
            .map(|(_, m)| m.as_str());
        if said.is_some_and(|m| m != version.to_string()) {
            problems.push(format!(
                "the `{name}` table says schema_version {}, the type writes {version}",
                said.unwrap_or_default()
            ));
        }
    }
    problems
}

fn check<M: Message>(doc: &str, example: &M) -> Vec<String> {
    let value = serde_json::to_value(example).expect("a message serialises");
    disagreements(doc, M::TOPIC, &value, Some(M::SCHEMA_VERSION))
}

fn shadow_report() -> ShadowReport {
    let side = ShadowSide {
        cpu_us_per_event: Some(1.0),
        cpu_us_p50: Some(1),
        failed: vec![("trap".into(), 1)],
        ..ShadowSide::default()
    };
    ShadowReport {
        mismatch_ratio: Some(0.1),
        raw_mismatch_ratio: Some(0.1),
        noise: edge_agent::messages::shadow::ShadowNoise {
            ratio: Some(0.0),
            paths: vec!["ts".into()],
            ..Default::default()
        },
        primary: side.clone(),
        shadow: side,
        canary: Some(edge_agent::messages::shadow::CanaryReport {
            failed: vec![("trap".into(), 1)],
            steps: vec![edge_agent::messages::shadow::CanaryStep {
                mismatch_ratio: Some(0.0),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..ShadowReport::default()
    }
}

fn sha() -> Option<String> {
    Some("ab".repeat(32))
}

/// Every message, with every optional field filled and every list holding one item, so
/// that every field shows.
fn examples(doc: &str) -> Vec<String> {
    let p = Percentiles::default;
    let status = Status {
        degraded: Some("the disk is full".into()),
        ..Status::birth(vec![StatusFunction {
            name: "f".into(),
            mode: "on-demand".into(),
            module: Some("f.cwasm".into()),
            sha256: sha(),
        }])
    };
    let stats = Report {
        schema_version: Report::SCHEMA_VERSION,
        agent: "a".into(),
        ts_ms: 1,
        interval_secs: 1.0,
        process: ProcessFigures::default(),
        state_disk_bytes: 1,
        state_flushes: 1,
        outputs_dropped: 0,
        broker_round_trip_ms: Some(0.4),
        functions: vec![FunctionReport {
            totals: Snapshot {
                function: "f".into(),
                mode: "on-demand".into(),
                received: 1,
                module_sha256: sha(),
                queue_depth: 0,
                state_keys: 0,
                succeeded: 1,
                restarts: 0,
                replayed: 0,
                stopped_instances: 0,
                failed: vec![("timeout".into(), 1)],
                end_to_end_us: p(),
                instantiate_us: p(),
                load_us: p(),
                execute_us: p(),
                queue_us: p(),
                commit_us: p(),
                cpu_us: p(),
                cpu_total_us: 1,
                peak_memory_bytes: 1,
                auto: Some(AutoReport {
                    model: "persistent".into(),
                    objective: "cpu".into(),
                    break_even: Some(0.0),
                    on_demand_cpu_us: Some(1.0),
                    persistent_cpu_us: Some(1.0),
                    switches: vec![AutoSwitch::default()],
                    last_switch: Some(AutoLastSwitch::default()),
                    ..AutoReport::default()
                }),
                shadow: Some(shadow_report()),
            },
            rates: Rates::default(),
        }],
    };
    let letter = DeadLetter {
        schema_version: DeadLetter::SCHEMA_VERSION,
        function: "f".into(),
        module_sha256: sha(),
        topic: "t".into(),
        kind: "timeout".into(),
        message: "m".into(),
        timestamp_ms: 1,
        received_at_ms: 1,
        qos: 1,
        payload_bytes: 1,
        payload_base64: "eA==".into(),
        payload_truncated: false,
        message_truncated: false,
        topic_truncated: false,
    };
    let one = || {
        Some(vec![ReloadedFunction {
            function: "f".into(),
            sha256: "ab".repeat(32),
        }])
    };
    let reload = ReloadReport {
        added: one(),
        reloaded: one(),
        removed: Some(vec!["g".into()]),
        failed: Some(vec![FailedFunction {
            function: "h".into(),
            error: "e".into(),
        }]),
        error: Some("e".into()),
        ..ReloadReport::refused("SIGHUP", String::new())
    };
    let shadow = ShadowMessage {
        schema_version: ShadowMessage::SCHEMA_VERSION,
        agent: "a".into(),
        function: "f".into(),
        ts_ms: 1,
        report: shadow_report(),
        mismatches: vec![ShadowMismatch {
            ts_ms: 1,
            topic: "t".into(),
            payload: "p".into(),
            paths: vec!["$count".into()],
            primary: ShadowResult::Ok {
                outputs: vec![ShadowOutput {
                    topic: "o".into(),
                    payload: "p".into(),
                    qos: 1,
                    retain: false,
                }],
            },
            shadow: ShadowResult::Failed {
                kind: "trap".into(),
                message: "m".into(),
            },
        }],
    };
    let deployment = edge_agent::messages::DeploymentReport {
        schema_version: 1,
        agent: "a".into(),
        group: "g".into(),
        version: Some(2),
        state: edge_agent::messages::DeploymentState::Downloading,
        reason: Some("r".into()),
        in_force: Some(1),
        probation: false,
        chunks: Some([1, 2]),
        ts_ms: 1,
    };
    let mut problems = check(doc, &status);
    problems.extend(check(doc, &deployment));
    problems.extend(check(doc, &shadow));
    let report = serde_json::to_value(shadow_report()).expect("a report serialises");
    problems.extend(disagreements(doc, "shadow-report", &report, None));
    problems.extend(check(doc, &stats));
    problems.extend(check(doc, &letter));
    problems.extend(check(doc, &reload));
    let percentiles = serde_json::to_value(p()).expect("percentiles serialise");
    problems.extend(disagreements(doc, "percentiles", &percentiles, None));
    problems
}

#[test]
fn the_message_tables_match_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/observability.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let problems = examples(&doc);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_table_check_catches_what_it_should() {
    let doc = "### `status`\n\n| field | type | meaning |\n|---|---|---|\n\
        | `schema_version` | integer | 2 |\n| `status` | string | online |\n\
        | `version` | string | v |\n| `uptime` | integer | s |\n";
    let status = Status::presence(edge_agent::messages::Presence::Online);
    let problems = check(doc, &status);
    let want = [
        "the `status` message has a field `pid` that its table in docs/observability.md does not document (add a row)",
        "the `status` table in docs/observability.md documents `uptime`, which the message does not have (remove or rename the row)",
        "the `status` table says schema_version 2, the type writes 1",
    ];
    assert_eq!(problems, want);
    let missing = check("# nothing here\n", &status);
    assert_eq!(
        missing,
        ["docs/observability.md has no table under \"### `status`\" (add one, a row per field)"]
    );
}

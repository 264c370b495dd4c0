//! `threshold-alert`: publishes an alert when a sensor reading exceeds a threshold.
//!
//! The payload is JSON with a numeric `value`, e.g. `{"value": 31.5}`. Config:
//!
//! - `threshold`: the number the value must exceed (a JSON number, e.g. `30` or `30.5`);
//! - `alert_topic`: where to publish alerts; `{topic}` in it is replaced by the incoming
//!   topic;
//! - `alert_qos` (optional): the alerts' QoS, `0`, `1` or `2`; `1` if not set.
//!
//! When `value > threshold` it publishes, with QoS `alert_qos`, compact JSON naming the sensor (the
//! second topic level): `{"sensor":"kitchen","value":31.5,"threshold":30}` for topic
//! `sensors/kitchen/temperature`. Numbers keep the form they were written in, so integers
//! stay integers. Otherwise it publishes nothing.

use edge_agent_sdk::{Event, Function, config, fill_topic, publish};
use serde_json::{Number, Value};

/// The `threshold-alert` function.
struct ThresholdAlert;

impl Function for ThresholdAlert {
    fn handle(event: Event) -> Result<(), String> {
        let threshold: Number = config::parse("threshold")?;
        let alert_topic = config::require("alert_topic")?;
        if let Some(alert) = check(&event, &threshold)? {
            let qos = alert_qos(config::get("alert_qos"))?;
            publish(
                &fill_topic(&alert_topic, &event.topic),
                alert.as_bytes(),
                qos,
                false,
            )?;
        }
        Ok(())
    }
}

edge_agent_sdk::export_function!(ThresholdAlert);

/// The alert to publish for `event`, if its value exceeds `threshold`.
fn check(event: &Event, threshold: &Number) -> Result<Option<String>, String> {
    let payload: Value =
        serde_json::from_slice(&event.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let Some(Value::Number(value)) = payload.get("value") else {
        return Err("payload has no numeric \"value\" field".into());
    };
    if !exceeds(value, threshold) {
        return Ok(None);
    }
    let sensor = event.topic_level(1).ok_or_else(|| {
        format!(
            "topic `{}` has no second level to name the sensor",
            event.topic
        )
    })?;
    // Built by hand to keep this field order; `Number` displays as it was parsed.
    Ok(Some(format!(
        "{{\"sensor\":{},\"value\":{value},\"threshold\":{threshold}}}",
        Value::from(sensor)
    )))
}

/// The alerts' QoS from the `alert_qos` config value: 1 if not set.
fn alert_qos(value: Option<String>) -> Result<u8, String> {
    match value.as_deref().map(str::trim) {
        None => Ok(1),
        Some(q @ ("0" | "1" | "2")) => Ok(q.as_bytes()[0] - b'0'),
        Some(other) => Err(format!(
            "config key `alert_qos` must be 0, 1 or 2, not `{other}`"
        )),
    }
}

/// `value > threshold`, exactly for integers and in `f64` otherwise.
fn exceeds(value: &Number, threshold: &Number) -> bool {
    if let (Some(v), Some(t)) = (value.as_i64(), threshold.as_i64()) {
        v > t
    } else if let (Some(v), Some(t)) = (value.as_u64(), threshold.as_u64()) {
        v > t
    } else {
        value.as_f64().unwrap_or(f64::NAN) > threshold.as_f64().unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(topic: &str, payload: &str, threshold: &str) -> Result<Option<String>, String> {
        let event = Event {
            topic: topic.into(),
            payload: payload.into(),
            ..Event::default()
        };
        check(&event, &threshold.parse().expect("test threshold"))
    }

    #[test]
    fn alerts_above_threshold_keeping_number_forms() {
        assert_eq!(
            run("sensors/kitchen/temperature", r#"{"value": 31.5}"#, "30"),
            Ok(Some(
                r#"{"sensor":"kitchen","value":31.5,"threshold":30}"#.into()
            ))
        );
        assert_eq!(
            run("s/a\"b", r#"{"value": 31}"#, "30.5"),
            Ok(Some(
                r#"{"sensor":"a\"b","value":31,"threshold":30.5}"#.into()
            ))
        );
        assert_eq!(
            run("s/x", r#"{"value": 18446744073709551615}"#, "-1"),
            Ok(Some(
                r#"{"sensor":"x","value":18446744073709551615,"threshold":-1}"#.into()
            ))
        );
    }

    #[test]
    fn quiet_at_or_below_threshold() {
        assert_eq!(run("s/k", r#"{"value": 30}"#, "30"), Ok(None));
        assert_eq!(run("s/k", r#"{"value": 29.9}"#, "30"), Ok(None));
        assert_eq!(
            run("s/k", r#"{"value": 9007199254740993}"#, "9007199254740993"),
            Ok(None)
        );
    }

    #[test]
    fn alerts_go_at_qos_1_unless_alert_qos_says_otherwise() {
        assert_eq!(alert_qos(None), Ok(1));
        assert_eq!(alert_qos(Some("0".into())), Ok(0));
        assert_eq!(alert_qos(Some(" 2".into())), Ok(2));
        for bad in ["3", "one", "", "-1"] {
            let err = alert_qos(Some(bad.into())).expect_err(bad);
            assert!(err.contains("must be 0, 1 or 2"), "{err}");
        }
    }

    #[test]
    fn rejects_bad_payloads() {
        let err = run("s/k", "hot", "30").expect_err("not JSON");
        assert!(err.starts_with("payload is not JSON: "), "{err}");
        for payload in [r#"{"value": "31"}"#, r#"{"temp": 31}"#, "[31]", "31"] {
            assert_eq!(
                run("s/k", payload, "30"),
                Err("payload has no numeric \"value\" field".into())
            );
        }
        assert_eq!(
            run("flat", r#"{"value": 31}"#, "30"),
            Err("topic `flat` has no second level to name the sensor".into())
        );
    }
}

//! What `compare` runs: the built-in workload, or a workload file (`--config`, see
//! `configs/compare.toml`) naming functions, their traffic patterns, the payload, QoS, the
//! broker and the cost models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::cost::{PowerProfile, Prices};
use edge_agent::config::{BrokerConfig, ConfigError, ParseError};

/// A workload file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    /// An existing broker for everything (as the agent's `[broker]`); none: an embedded
    /// one inside the `compare` process.
    #[serde(default)]
    pub broker: Option<BrokerConfig>,
    /// QoS of the events and of the functions' subscriptions, 0 or 1.
    #[serde(default = "one")]
    pub qos: u8,
    /// How long each phase of a pattern lasts (each rate of a sweep), seconds.
    #[serde(default = "twenty")]
    pub duration_secs: f64,
    /// Sensor topics the events are spread over, round robin.
    #[serde(default = "one_u32")]
    pub sensors: u32,
    /// The event payload: `{seq}`, `{ts_ms}` and `{sensor}` are filled in.
    #[serde(default = "default_payload")]
    pub payload: String,
    /// Power profile by name (`pi4`, ...), when `[power_profile]` does not give one.
    #[serde(default)]
    pub power: Option<String>,
    /// A device power profile of your own.
    #[serde(default)]
    pub power_profile: Option<PowerProfile>,
    /// Prices to use instead of the defaults (any field).
    #[serde(default)]
    pub prices: Option<Prices>,
    /// The traffic for functions that do not set their own.
    #[serde(default)]
    pub traffic: Option<Traffic>,
    /// The functions to compare.
    #[serde(rename = "function", default)]
    pub functions: Vec<WorkloadFunction>,
}

fn one() -> u8 {
    1
}
fn one_u32() -> u32 {
    1
}
fn one_u64() -> u64 {
    1
}
fn twenty() -> f64 {
    20.0
}
fn default_payload() -> String {
    r#"{"seq":{seq},"ts_ms":{ts_ms},"sensor":"{sensor}","value":31.5}"#.into()
}
fn default_filter() -> String {
    "compare/out/#".into()
}

/// One function of a workload file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFunction {
    /// Its name in the report.
    pub name: String,
    /// `.wasm` or `.cwasm`, relative to the workload file.
    pub module: PathBuf,
    /// Its `[function.config]`, as in the agent's config.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// How an output names the event it came from.
    #[serde(default)]
    pub outputs: Outputs,
    /// The topic filter its outputs arrive on.
    #[serde(default = "default_filter")]
    pub output_filter: String,
    /// Persistent instances (the agent's `instances`).
    #[serde(default = "one_u32")]
    pub instances: u32,
    /// The scale-to-zero model's `keep_warm_secs`.
    #[serde(default = "one_u64")]
    pub keep_warm_secs: u64,
    /// This function's traffic, instead of the file's.
    #[serde(default)]
    pub traffic: Option<Traffic>,
}

/// How outputs are matched to the events they came from.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Outputs {
    /// The output is JSON with the event's `"seq"` (the payload passed through).
    #[default]
    Seq,
    /// The output's `"count"` is the event's place on its `"topic"`, from 1 (a counter on
    /// a fresh store).
    Count,
    /// Outputs are not matched: loss comes from the agent's own count of handled events,
    /// and latency only from the agent.
    None,
}

/// A traffic pattern.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "pattern", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Traffic {
    /// `rate` events/s, evenly spaced.
    Steady {
        /// Events per second.
        rate: f64,
    },
    /// Poisson arrivals with mean `rate` events/s.
    Poisson {
        /// Mean events per second.
        rate: f64,
    },
    /// `events` at once every `every_secs`, idle between.
    Burst {
        /// Events per burst.
        events: u32,
        /// Seconds from one burst to the next.
        every_secs: f64,
    },
    /// From `from` to `to` events/s, linearly over the phase.
    Ramp {
        /// Rate at the start.
        from: f64,
        /// Rate at the end.
        to: f64,
    },
    /// Each rate held for `duration_secs`, one phase each: how cost changes with rate.
    Sweep {
        /// Events per second, one phase each.
        rates: Vec<f64>,
    },
    /// Rates up and down within one phase, each held for an equal share of it (0 for a
    /// quiet step): what switching costs `mode = "auto"`.
    Step {
        /// Events per second, in order.
        rates: Vec<f64>,
    },
    /// A day compressed into one phase, shaped after a device's traffic: a quiet night
    /// (30% of the time at 1% of `peak`), a morning ramp (15%, to 50%), midday bursts
    /// (20%: a second at `peak` every four, 10% between), an afternoon at 30% (15%) and
    /// an evening plateau at 50% (20%).
    Day {
        /// The bursts' rate, events/s.
        peak: f64,
    },
}

/// A day's shape ([`Traffic::Day`]): each part's share of the time and its rate (as a
/// share of the peak) at its start and its end.
const DAY: [(f64, f64, f64); 5] = [
    (0.30, 0.01, 0.01),
    (0.15, 0.01, 0.50),
    (0.20, 0.10, 0.10),
    (0.15, 0.30, 0.30),
    (0.20, 0.50, 0.50),
];

/// Send times of events at a rate going linearly from `from` to `to` over `secs`,
/// starting at `start` (the i-th event when the integral of the rate reaches i).
fn linear(start: f64, secs: f64, from: f64, to: f64) -> Vec<f64> {
    let a = (to - from) / (2.0 * secs);
    let n = ((from + to) / 2.0 * secs).round() as u64;
    (0..n)
        .map(|i| {
            let i = i as f64;
            start
                + if a.abs() < 1e-12 {
                    i / from
                } else {
                    (-from + (from * from + 4.0 * a * i).sqrt()) / (2.0 * a)
                }
        })
        .filter(|t| *t < start + secs)
        .collect()
}

/// One phase: when to send each event.
#[derive(Debug, Clone, PartialEq)]
pub struct PhasePlan {
    /// What it is, e.g. `steady 10/s`.
    pub label: String,
    /// Mean offered rate, events/s.
    pub rate: f64,
    /// Length of the phase.
    pub duration: Duration,
    /// Send time of each event from the start of the phase.
    pub offsets: Vec<Duration>,
}

impl Traffic {
    /// The phases of this pattern, each `secs` long.
    pub fn phases(&self, secs: f64) -> Vec<PhasePlan> {
        let duration = Duration::from_secs_f64(secs);
        let phase = |label: String, offsets: Vec<f64>| PhasePlan {
            label,
            rate: offsets.len() as f64 / secs,
            duration,
            offsets: offsets.into_iter().map(Duration::from_secs_f64).collect(),
        };
        let even = |rate: f64| -> Vec<f64> {
            let n = ((rate * secs).round() as u64).max(1);
            (0..n).map(|i| i as f64 / rate).collect()
        };
        match *self {
            Self::Steady { rate } => vec![phase(format!("steady {rate}/s"), even(rate))],
            Self::Sweep { ref rates } => rates
                .iter()
                .map(|&r| phase(format!("sweep {r}/s"), even(r)))
                .collect(),
            Self::Poisson { rate } => {
                // Seeded: the same file sends the same traffic every run.
                let mut rng = fastrand::Rng::with_seed(0x5eed);
                let mut t = 0.0;
                let mut at = Vec::new();
                loop {
                    t += -(1.0 - rng.f64()).ln() / rate;
                    if t >= secs {
                        break;
                    }
                    at.push(t);
                }
                vec![phase(format!("poisson {rate}/s"), at)]
            }
            Self::Burst { events, every_secs } => {
                let bursts = (secs / every_secs).ceil().max(1.0) as u32;
                let at = (0..bursts)
                    .flat_map(|b| (0..events).map(move |_| f64::from(b) * every_secs))
                    .collect();
                vec![phase(format!("burst {events} every {every_secs} s"), at)]
            }
            Self::Ramp { from, to } => {
                vec![phase(
                    format!("ramp {from}/s to {to}/s"),
                    linear(0.0, secs, from, to),
                )]
            }
            Self::Step { ref rates } => {
                let each = secs / rates.len().max(1) as f64;
                let at = rates
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| **r > 0.0)
                    .flat_map(|(k, &r)| linear(k as f64 * each, each, r, r))
                    .collect();
                let label = rates.iter().map(f64::to_string).collect::<Vec<_>>();
                vec![phase(format!("step {}/s", label.join(", ")), at)]
            }
            Self::Day { peak } => {
                let mut at = Vec::new();
                let mut start = 0.0;
                for (k, (share, from, to)) in DAY.into_iter().enumerate() {
                    let len = share * secs;
                    if k == 2 {
                        // Midday: a second at the peak every four, 10% between.
                        let mut t = 0.0;
                        while t < len {
                            let burst = len.min(t + 1.0) - t;
                            at.extend(linear(start + t, burst, peak, peak));
                            let rest = len.min(t + 4.0) - (t + burst);
                            if rest > 0.0 {
                                at.extend(linear(start + t + burst, rest, from * peak, to * peak));
                            }
                            t += 4.0;
                        }
                    } else {
                        at.extend(linear(start, len, from * peak, to * peak));
                    }
                    start += len;
                }
                vec![phase(format!("day, peak {peak}/s"), at)]
            }
        }
    }

    fn check(&self) -> Result<(), TrafficError> {
        let positive = |what: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(TrafficError::NotPositive(what, v))
            }
        };
        match self {
            Self::Steady { rate } | Self::Poisson { rate } => positive("rate", *rate),
            Self::Burst { events, every_secs } => {
                positive("events", f64::from(*events))?;
                positive("every_secs", *every_secs)
            }
            Self::Ramp { from, to } => {
                positive("from + to", from + to)?;
                if *from < 0.0 || *to < 0.0 {
                    return Err(TrafficError::Negative);
                }
                Ok(())
            }
            Self::Sweep { rates } => {
                if rates.is_empty() {
                    return Err(TrafficError::NoRates);
                }
                rates.iter().try_for_each(|r| positive("rates", *r))
            }
            Self::Step { rates } => {
                if rates.iter().any(|r| !r.is_finite() || *r < 0.0) {
                    return Err(TrafficError::Negative);
                }
                positive("rates (their sum)", rates.iter().sum())
            }
            Self::Day { peak } => positive("peak", *peak),
        }
    }
}

/// What is wrong with a traffic pattern.
#[derive(Debug, thiserror::Error)]
enum TrafficError {
    /// A rate, count or period that must be above 0.
    #[error("`{0}` must be above 0, not {1}")]
    NotPositive(&'static str, f64),
    /// A ramp's ends, a step's rates.
    #[error("rates must not be negative")]
    Negative,
    /// A sweep with no rates.
    #[error("`rates` is empty")]
    NoRates,
}

/// A function to compare, ready to run.
#[derive(Debug, Clone)]
pub struct FunctionPlan {
    /// Its name.
    pub name: String,
    /// The module, absolute.
    pub module: PathBuf,
    /// Its `[function.config]`.
    pub config: BTreeMap<String, String>,
    /// How its outputs are matched.
    pub outputs: Outputs,
    /// Where its outputs arrive.
    pub output_filter: String,
    /// Persistent instances.
    pub instances: u32,
    /// `keep_warm_secs` of the scale-to-zero model.
    pub keep_warm_secs: u64,
    /// Its phases.
    pub phases: Vec<PhasePlan>,
}

impl FunctionPlan {
    /// The workload's mean rate: all its events over all its phases' time (events/s).
    pub fn mean_rate(&self) -> f64 {
        let events: usize = self.phases.iter().map(|p| p.offsets.len()).sum();
        let secs: f64 = self.phases.iter().map(|p| p.duration.as_secs_f64()).sum();
        if secs > 0.0 {
            events as f64 / secs
        } else {
            0.0
        }
    }
}

/// A whole comparison, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file it came from; none for the built-in workload.
    pub source: Option<PathBuf>,
    /// The broker, if an existing one.
    pub broker: Option<BrokerConfig>,
    /// QoS 0 or 1.
    pub qos: u8,
    /// Sensor topics.
    pub sensors: u32,
    /// Payload template.
    pub payload: String,
    /// The functions.
    pub functions: Vec<FunctionPlan>,
    /// Power profile (from the file; else `--power` or the default).
    pub power: Option<PowerProfile>,
    /// Price list.
    pub prices: Prices,
}

impl Plan {
    /// The built-in workload over `dir`'s `echo` and `counter`: a sweep of `rates`.
    pub fn built_in(echo: PathBuf, counter: PathBuf, rates: &[f64], secs: f64) -> Self {
        let phases = Traffic::Sweep {
            rates: rates.to_vec(),
        }
        .phases(secs);
        let function = |name: &str, module, outputs| FunctionPlan {
            name: name.into(),
            module,
            config: BTreeMap::from([("out_topic".into(), "compare/out/{topic}".into())]),
            outputs,
            output_filter: default_filter(),
            instances: 1,
            keep_warm_secs: 1,
            phases: phases.clone(),
        };
        Self {
            source: None,
            broker: None,
            qos: 1,
            sensors: 1,
            payload: default_payload(),
            functions: vec![
                function("echo", echo, Outputs::Seq),
                function("counter", counter, Outputs::Count),
            ],
            power: None,
            prices: Prices::default(),
        }
    }

    /// Reads and checks a workload file; `quick` shortens its phases to 2 s.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key at fault.
    pub fn load(path: &Path, quick: bool) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: path.to_path_buf(),
            key: key.into(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Parse {
            file: path.to_path_buf(),
            key: None,
            line: None,
            source: ParseError::Read {
                what: "workload file",
                source,
            },
        })?;
        let file: WorkloadFile = edge_agent::config::from_toml(path, &text)?;
        if file.qos > 1 {
            return Err(invalid("qos", format!("{} is not 0 or 1", file.qos)));
        }
        // A probe's 0.01 s phase gave each model one event, and the report read "0 us of
        // CPU per event", auto "-100%", with no word of doubt (2026-12-08).
        if !(file.duration_secs.is_finite() && file.duration_secs >= 1.0) {
            return Err(invalid(
                "duration_secs",
                "must be at least 1: CPU and memory are read in one-second windows".into(),
            ));
        }
        if file.sensors == 0 {
            return Err(invalid("sensors", "must be at least 1".into()));
        }
        if file.functions.is_empty() {
            return Err(invalid("function", "no [[function]] to compare".into()));
        }
        if let Some(b) = &file.broker {
            edge_agent::config::BrokerAddress::parse(&b.url)
                .map_err(|e| invalid("broker.url", e.to_string()))?;
        }
        let power = match (&file.power_profile, &file.power) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(name)) => Some(
                super::cost::power_profile(Some(name))
                    .map_err(|e| invalid("power", e.to_string()))?,
            ),
            (None, None) => None,
        };
        let secs = if quick {
            file.duration_secs.min(2.0)
        } else {
            file.duration_secs
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut functions = Vec::new();
        for (i, f) in file.functions.iter().enumerate() {
            let key = |k: &str| format!("function[{i}].{k}");
            if functions.iter().any(|g: &FunctionPlan| g.name == f.name) || f.name.is_empty() {
                return Err(invalid(
                    &key("name"),
                    format!("'{}' is empty or repeated", f.name),
                ));
            }
            let traffic = f
                .traffic
                .as_ref()
                .or(file.traffic.as_ref())
                .ok_or_else(|| {
                    invalid(&key("traffic"), "no traffic for it, nor a [traffic]".into())
                })?;
            traffic
                .check()
                .map_err(|e| invalid(&key("traffic"), e.to_string()))?;
            if f.outputs == Outputs::Seq && !file.payload.contains("{seq}") {
                return Err(invalid(
                    "payload",
                    format!(
                        "has no {{seq}}, which function '{}' (outputs = \"seq\") needs",
                        f.name
                    ),
                ));
            }
            let module = dir.join(&f.module);
            if !module.is_file() {
                return Err(invalid(
                    &key("module"),
                    format!("{} is not a file", module.display()),
                ));
            }
            if f.instances == 0 {
                return Err(invalid(&key("instances"), "must be at least 1".into()));
            }
            if f.keep_warm_secs == 0 {
                return Err(invalid(&key("keep_warm_secs"), "must be at least 1".into()));
            }
            functions.push(FunctionPlan {
                name: f.name.clone(),
                module: std::path::absolute(&module).unwrap_or(module),
                config: f.config.clone(),
                outputs: f.outputs,
                output_filter: f.output_filter.clone(),
                instances: f.instances,
                keep_warm_secs: f.keep_warm_secs,
                phases: traffic.phases(secs),
            });
        }
        Ok(Self {
            source: Some(path.to_path_buf()),
            broker: file.broker,
            qos: file.qos,
            sensors: file.sensors,
            payload: file.payload,
            functions,
            power,
            prices: file.prices.unwrap_or_default(),
        })
    }

    /// The payload of event `seq` on `sensor`.
    pub fn payload(&self, seq: u64, sensor: &str) -> String {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.payload
            .replace("{seq}", &seq.to_string())
            .replace("{ts_ms}", &ts_ms.to_string())
            .replace("{sensor}", sensor)
    }

    /// The name of sensor `seq % sensors`.
    pub fn sensor(&self, seq: u64) -> String {
        format!("sensor-{}", seq % u64::from(self.sensors.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(p: &PhasePlan) -> Vec<f64> {
        p.offsets.iter().map(Duration::as_secs_f64).collect()
    }

    #[test]
    fn patterns_send_what_they_say() {
        let steady = &Traffic::Steady { rate: 4.0 }.phases(2.0)[0];
        assert_eq!(secs(steady), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]);
        assert_eq!(steady.rate, 4.0);
        let burst = &Traffic::Burst {
            events: 3,
            every_secs: 1.0,
        }
        .phases(2.0)[0];
        assert_eq!(secs(burst), [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let sweep = Traffic::Sweep {
            rates: vec![1.0, 10.0],
        }
        .phases(2.0);
        assert_eq!(
            sweep.iter().map(|p| p.offsets.len()).collect::<Vec<_>>(),
            [2, 20]
        );
        // A ramp from 0 to 100/s over 10 s: 500 events, more of them towards the end.
        let ramp = &Traffic::Ramp {
            from: 0.0,
            to: 100.0,
        }
        .phases(10.0)[0];
        let at = secs(ramp);
        assert_eq!(at.len(), 500);
        assert!(at.windows(2).all(|w| w[0] <= w[1]) && at[499] < 10.0);
        assert_eq!(at.iter().filter(|t| **t >= 5.0).count(), 375);
        // Poisson: about the rate asked for, repeatably, with irregular gaps.
        let p = Traffic::Poisson { rate: 100.0 }.phases(10.0);
        assert_eq!(p, Traffic::Poisson { rate: 100.0 }.phases(10.0));
        let n = p[0].offsets.len();
        assert!((900..1100).contains(&n), "{n}");
        // Steps up and down in one phase, a quiet one included: 2 s each.
        let step = &Traffic::Step {
            rates: vec![10.0, 0.0, 50.0, 5.0],
        }
        .phases(8.0)[0];
        let at = secs(step);
        let within = |a: f64, b: f64| at.iter().filter(|t| (a..b).contains(*t)).count();
        assert_eq!(
            [
                within(0.0, 2.0),
                within(2.0, 4.0),
                within(4.0, 6.0),
                within(6.0, 8.0)
            ],
            [20, 0, 100, 10]
        );
        assert!(at.windows(2).all(|w| w[0] <= w[1]));
        // A day of 100 s at a peak of 100/s: a quiet night, then busier, in order.
        let day = &Traffic::Day { peak: 100.0 }.phases(100.0)[0];
        let at = secs(day);
        assert!(at.windows(2).all(|w| w[0] <= w[1]) && *at.last().unwrap() < 100.0);
        let within = |a: f64, b: f64| at.iter().filter(|t| (a..b).contains(*t)).count();
        // Night: 30 s at 1/s; midday (45-65 s): five 1 s bursts of 100 and 10/s between.
        assert_eq!(within(0.0, 30.0), 30);
        assert_eq!(within(45.0, 65.0), 5 * 100 + 5 * 30);
        assert_eq!(within(80.0, 100.0), 1000);
        assert!((day.rate - at.len() as f64 / 100.0).abs() < 1e-9);
    }

    fn load(text: &str) -> Result<Plan, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"x").unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, text).unwrap();
        Plan::load(&path, false)
    }

    #[test]
    fn a_workload_file_is_read_and_its_mistakes_named() {
        let ok = load(
            "qos = 0\nsensors = 3\n[traffic]\npattern = \"sweep\"\nrates = [1, 10]\n\
             [[function]]\nname = \"f\"\nmodule = \"f.wasm\"\n[function.config]\nk = \"v\"\n",
        )
        .unwrap();
        assert_eq!((ok.qos, ok.sensors, ok.functions.len()), (0, 3, 1));
        assert_eq!(ok.functions[0].phases.len(), 2);
        assert_eq!(ok.sensor(4), "sensor-1");
        assert!(
            ok.payload(7, "sensor-1")
                .starts_with(r#"{"seq":7,"ts_ms":"#)
        );
        for (text, says) in [
            ("qos = 2\n", "`qos`"),
            (
                "[[function]]\nname = \"f\"\nmodule = \"f.wasm\"\n",
                "function[0].traffic",
            ),
            (
                "[[function]]\nname = \"f\"\nmodule = \"nope.wasm\"\n[function.traffic]\npattern = \"steady\"\nrate = 1\n",
                "function[0].module",
            ),
            (
                "[[function]]\nname = \"f\"\nmodule = \"f.wasm\"\n[function.traffic]\npattern = \"steady\"\nrate = 0\n",
                "must be above 0",
            ),
            ("[traffic]\npattern = \"zigzag\"\n", "zigzag"),
            ("duration_secs = 0.01\n", "one-second windows"),
            ("rates = [1\n", "`rates` (line 1): unclosed array"),
            ("colour = 1\n", "colour"),
            (
                "payload = \"x\"\n[[function]]\nname = \"f\"\nmodule = \"f.wasm\"\n[function.traffic]\npattern = \"steady\"\nrate = 1\n",
                "`payload`",
            ),
        ] {
            let e = load(text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"))
                .to_string();
            assert!(e.contains("w.toml") && e.contains(says), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}

//! What `compare` measures from outside the agent: events sent and outputs received (so
//! loss, duplicates and end-to-end latency are counted, not inferred), and the agent
//! process's CPU and memory from `/proc`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde::Serialize;
use tokio::sync::mpsc;

use super::workload::Outputs;
use crate::stats::{Estimate, quantile_bounds};
use edge_agent::config::{BrokerAddress, BrokerConfig};

/// Percentiles of a latency distribution, µs, each with its 95% interval.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: Estimate,
    /// 90th percentile.
    pub p90: Estimate,
    /// 99th percentile.
    pub p99: Estimate,
    /// 99.9th percentile.
    pub p999: Estimate,
    /// Largest.
    pub max: u64,
}

/// Quantiles at which [`cdf`] reads a latency distribution.
const CDF_QUANTILES: [f64; 24] = [
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97,
    0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// The distribution as (quantile, µs) points, for a CDF chart; empty with no samples.
pub fn cdf(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES
        .iter()
        .map(|&q| {
            (
                q,
                if q >= 1.0 {
                    h.max()
                } else {
                    h.value_at_quantile(q)
                },
            )
        })
        .collect()
}

/// An empty histogram of latencies from 1 µs to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        // Valid constant bounds: cannot fail.
        Histogram::new(3).unwrap_or_else(|_| unreachable!())
    })
}

impl Latency {
    /// The percentiles of `h`, each bounded by the order statistics of its interval.
    pub fn of(h: &Histogram<u64>) -> Self {
        let at = |q: f64| {
            if h.is_empty() {
                return Estimate::default();
            }
            let (lo, hi) = quantile_bounds(q, h.len());
            Estimate {
                median: h.value_at_quantile(q) as f64,
                low: h.value_at_quantile(lo) as f64,
                high: h.value_at_quantile(hi) as f64,
                n: usize::try_from(h.len()).unwrap_or(usize::MAX),
                confidence: crate::stats::CONFIDENCE,
                outliers: 0,
            }
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: h.max(),
        }
    }
}

/// One phase of the workload in one model, over every round, as seen from outside.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Phase {
    /// What was sent, e.g. `steady 10/s`.
    pub pattern: String,
    /// Mean events per second offered.
    pub rate: f64,
    /// Events sent (each acknowledged by the broker), over every round.
    pub sent: u64,
    /// Distinct events whose output arrived (`outputs = "none"`: that the agent handled).
    pub received: u64,
    /// Events whose output never arrived (or that the agent did not handle).
    pub lost: u64,
    /// Outputs that arrived more than once for the same event.
    pub duplicates: u64,
    /// From the publisher's send time to the output's arrival, µs, over every round.
    pub end_to_end_us: Latency,
    /// User + system CPU of the agent process per event, µs: over the one-second windows
    /// of every round.
    pub cpu_per_event_us: Estimate,
    /// The process's CPU per hour at this rate, in CPU seconds (the standing idle share
    /// included), over the same windows.
    pub cpu_seconds_per_hour: Estimate,
    /// Wall time of the phase in all rounds: sending, then waiting for the outputs, seconds.
    pub seconds: f64,
    /// Events handled per second of wall time, one sample per round: below `rate` when the
    /// agent fell behind.
    pub handled_per_second: Estimate,
    /// Resident memory of the process over the same windows, bytes.
    pub rss_bytes: Estimate,
}

/// One window of one round: what the agent process used over about a second at one
/// offered rate (0: idle). Every cost figure of a model is computed from its windows.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Window {
    /// The round (0-based).
    pub round: u32,
    /// Events per second offered (0 for the idle period).
    pub rate: f64,
    /// Events of the phase per second of its wall time (0 idle): CPU per event is the
    /// window's CPU rate over this.
    pub events_per_second: f64,
    /// The window's length, seconds.
    pub seconds: f64,
    /// The process's CPU over the window, per hour, in CPU seconds.
    pub cpu_seconds_per_hour: f64,
    /// Its mean resident memory over the window, bytes.
    pub rss_bytes: f64,
    /// `mode = "auto"` only: whether it was persistent in this window (billed as
    /// reserved) or on demand (billed by use). Absent for the fixed models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// A reading of the agent process: when, its resident memory, and its CPU so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the sampling started.
    pub t: f64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// CPU seconds used since the sampling started.
    pub cpu: f64,
}

/// Splits `from..to` into windows of about `window` seconds (at least one) and measures
/// each from `samples`: CPU by interpolating the cumulative CPU at the window's ends, RSS
/// as the mean of the samples inside.
pub fn windows(samples: &[Sample], from: f64, to: f64, window: f64) -> Vec<(f64, f64, f64)> {
    let len = to - from;
    if samples.len() < 2 || len <= 0.0 {
        return Vec::new();
    }
    let k = ((len / window).round() as usize).max(1);
    let step = len / k as f64;
    let cpu_at = |t: f64| {
        let i = samples.partition_point(|s| s.t < t);
        match (
            i.checked_sub(1).and_then(|i| samples.get(i)),
            samples.get(i),
        ) {
            (Some(a), Some(b)) if b.t > a.t => a.cpu + (b.cpu - a.cpu) * (t - a.t) / (b.t - a.t),
            (_, Some(b)) => b.cpu,
            (Some(a), None) => a.cpu,
            (None, None) => 0.0,
        }
    };
    let rss: Vec<(f64, u64)> = samples.iter().map(|s| (s.t, s.rss)).collect();
    (0..k)
        .map(|i| {
            let (a, b) = (from + step * i as f64, from + step * (i + 1) as f64);
            let cpu = (cpu_at(b) - cpu_at(a)).max(0.0);
            (step, cpu / step * 3600.0, mean_between(&rss, a, b) as f64)
        })
        .collect()
}

/// The events sent so far in one run: when, and on which topic in which order (for
/// outputs that count per topic).
#[derive(Debug, Default)]
pub struct Sent {
    at: HashMap<u64, Instant>,
    by_topic: HashMap<String, Vec<u64>>,
}

impl Sent {
    /// Event `seq` went to `topic` at `at`.
    pub fn record(&mut self, seq: u64, topic: &str, at: Instant) {
        self.at.insert(seq, at);
        self.by_topic
            .entry(topic.to_string())
            .or_default()
            .push(seq);
    }

    /// The sequence number of the event an output came from.
    fn seq(&self, outputs: Outputs, payload: &[u8]) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        match outputs {
            Outputs::Seq => v.get("seq")?.as_u64(),
            Outputs::Count => {
                let n = v.get("count")?.as_u64()?.checked_sub(1)?;
                let topic = v.get("topic")?.as_str()?;
                self.by_topic
                    .get(topic)?
                    .get(usize::try_from(n).ok()?)
                    .copied()
            }
            Outputs::None => None,
        }
    }
}

/// A process's CPU time so far: to the nanosecond per thread (each thread's
/// `schedstat`), and in clock ticks (10 ms) for the whole process, dead threads included.
#[derive(Debug, Clone, Default)]
pub struct CpuClock {
    ticks: f64,
    threads: HashMap<u32, u64>,
}

impl CpuClock {
    /// Reads process `pid`'s clock (zero if it is gone).
    pub fn read(pid: u32) -> Self {
        let mut threads = HashMap::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let tid = t.file_name().to_string_lossy().parse::<u32>().ok();
                let ns = std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
                if let (Some(tid), Some(ns)) = (tid, ns) {
                    threads.insert(tid, ns);
                }
            }
        }
        Self {
            ticks: edge_agent::clock::process_cpu_seconds(pid).unwrap_or(0.0),
            threads,
        }
    }

    /// CPU seconds from `earlier` to this reading: exact when every thread that ran then
    /// still runs (or none could be read), from the ticks when one has ended since.
    pub fn since(&self, earlier: &Self) -> f64 {
        let all_alive = earlier.threads.keys().all(|t| self.threads.contains_key(t));
        if self.threads.is_empty() || !all_alive {
            return (self.ticks - earlier.ticks).max(0.0);
        }
        let ns: u64 = self
            .threads
            .iter()
            .map(|(t, ns)| ns.saturating_sub(earlier.threads.get(t).copied().unwrap_or(0)))
            .sum();
        ns as f64 / 1e9
    }
}

/// Reads process `pid`'s resident memory and CPU every `every` until `stop` (or until the
/// process is gone).
pub async fn sample(
    pid: u32,
    start: Instant,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    let mut clock = CpuClock::read(pid);
    let mut cpu = 0.0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return samples,
            _ = tick.tick() => {}
        }
        let Some(rss) = edge_agent::clock::process_status_bytes(pid, "VmRSS") else {
            return samples;
        };
        let now = CpuClock::read(pid);
        cpu += now.since(&clock);
        clock = now;
        samples.push(Sample {
            t: start.elapsed().as_secs_f64(),
            rss,
            cpu,
        });
    }
}

/// Memory held above `idle`, integrated over `samples`, in MB-seconds.
pub fn mb_seconds_above(samples: &[(f64, u64)], idle: u64) -> f64 {
    samples
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * w[0].1.saturating_sub(idle) as f64 / 1e6)
        .sum()
}

/// Mean of the `samples` taken between `from` and `to` seconds (the last one before
/// `from` if none was taken in between).
pub fn mean_between(samples: &[(f64, u64)], from: f64, to: f64) -> u64 {
    let inside: Vec<u64> = samples
        .iter()
        .filter(|s| s.0 >= from && s.0 <= to)
        .map(|s| s.1)
        .collect();
    if inside.is_empty() {
        return samples
            .iter()
            .rev()
            .find(|s| s.0 <= from)
            .or(samples.first())
            .map_or(0, |s| s.1);
    }
    inside.iter().sum::<u64>() / inside.len() as u64
}

/// Bytes of the files under `dir` (the state store on disk).
pub fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Why the compare process cannot be a client of the broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker's URL.
    #[error("broker.url")]
    Url(#[from] edge_agent::config::UrlError),
    /// Its TLS files.
    #[error(transparent)]
    Tls(#[from] edge_agent::mqtt::MqttError),
}

/// A client of the compare process on `broker` (its address, TLS and credentials).
///
/// # Errors
/// Why the broker's URL or TLS files cannot be used.
pub fn client(broker: &BrokerConfig, id: &str) -> Result<(AsyncClient, EventLoop), ClientError> {
    let addr = BrokerAddress::parse(&broker.url)?;
    let mut opts = edge_agent::mqtt::options::client_options(&addr, id, broker.tls.as_ref())?;
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(1024);
    if let Some(user) = &broker.username {
        opts.set_credentials(user, broker.password.as_deref().unwrap_or_default());
    }
    Ok(AsyncClient::new(opts, 1024))
}

/// Why the broker did not answer [`reachable`].
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// The broker's URL or TLS files cannot be used.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The connection failed: refused, TLS, credentials.
    #[error(transparent)]
    Connection(#[from] rumqttc::ConnectionError),
    /// No CONNACK within the wait.
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// Connects once and disconnects: whether the broker answers (CONNACK) within `wait`.
///
/// # Errors
/// [`ReachError`]: the URL or TLS files cannot be used, the connection failed (refused,
/// TLS, credentials), or no answer within `wait`.
pub async fn reachable(broker: &BrokerConfig, id: &str, wait: Duration) -> Result<(), ReachError> {
    let (client, mut eventloop) = client(broker, id)?;
    let answered = connected(&mut eventloop, wait).await;
    let _ = client.try_disconnect();
    answered
}

/// Polls `eventloop` until the broker's CONNACK, within `wait`: a client that publishes
/// before it is connected puts its connection's set-up in its first event's latency.
///
/// # Errors
/// [`ReachError`]: the connection failed, or no answer within `wait`.
pub async fn connected(eventloop: &mut EventLoop, wait: Duration) -> Result<(), ReachError> {
    tokio::time::timeout(wait, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(ReachError::Connection(e)),
            }
        }
    })
    .await
    .unwrap_or(Err(ReachError::Timeout(wait)))
}

/// A subscriber's connection to the broker, as [`subscribe`] keeps it: whether it is down
/// and since when, and how many times it was lost after being up.
#[derive(Debug, Default)]
pub struct Link {
    down_since: std::sync::Mutex<Option<Instant>>,
    lost: std::sync::atomic::AtomicU32,
}

impl Link {
    /// How long the connection has been down (`None` while it is up).
    pub fn down_for(&self) -> Option<Duration> {
        let down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        down.map(|since| since.elapsed())
    }

    /// How many times the connection was lost after being up.
    pub fn lost(&self) -> u32 {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    fn up(&self) {
        *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn down(&self, was_up: bool) {
        let mut down = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        down.get_or_insert_with(Instant::now);
        if was_up {
            self.lost.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// Receives outputs on `filter` until dropped; sends (arrival, payload) down the channel.
/// The [`Link`] says whether the subscriber's connection holds: it reconnects by itself,
/// and what the broker had for it meanwhile may be gone.
///
/// # Errors
/// As [`client`].
pub async fn subscribe(
    broker: &BrokerConfig,
    id: &str,
    filter: &str,
) -> Result<
    (
        mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
        std::sync::Arc<Link>,
    ),
    ClientError,
> {
    let (client, mut eventloop) = client(broker, id)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let filter = filter.to_string();
    let link = std::sync::Arc::new(Link::default());
    let seen = link.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let _client = client.clone();
        let mut up = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    up = true;
                    seen.up();
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((Instant::now(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    seen.down(std::mem::take(&mut up));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
    Ok((rx, link))
}

/// Clears the messages an agent of `id` retained on the broker (its status and stats):
/// `compare`'s agents are gone once it has measured them, and `top` and `fleet status`
/// listed each as an offline agent for ever (a probe, 2026-12-08). Best effort: a broker
/// that does not answer within `wait` keeps them.
pub async fn clear_retained(broker: &BrokerConfig, id: &str, wait: Duration) {
    let Ok((client, mut eventloop)) = client(broker, &format!("{id}-clear")) else {
        return;
    };
    let cleared = async {
        connected(&mut eventloop, wait).await.ok()?;
        for what in ["status", "stats"] {
            let topic = format!("edge-agent/{id}/{what}");
            client
                .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                .await
                .ok()?;
        }
        let _ = client.disconnect().await;
        // Until the broker has acknowledged both and the connection is closed.
        while eventloop.poll().await.is_ok() {}
        Some(())
    };
    let _ = tokio::time::timeout(wait, cleared).await;
}

/// Sends one phase's events through `client` (whose event loop runs elsewhere) at their
/// offsets from now, numbering them from `first`; `event(seq)` gives each one's topic and
/// payload. Records each send in `sent`; returns how many were sent.
pub async fn publish_phase(
    client: &AsyncClient,
    offsets: &[Duration],
    first: u64,
    qos: QoS,
    event: impl Fn(u64) -> (String, String),
    sent: &mut Sent,
) -> u64 {
    let start = tokio::time::Instant::now();
    let mut n = 0;
    for (i, offset) in offsets.iter().enumerate() {
        tokio::time::sleep_until(start + *offset).await;
        let seq = first + i as u64;
        let (topic, body) = event(seq);
        sent.record(seq, &topic, Instant::now());
        if client.publish(topic, qos, false, body).await.is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Collects the outputs of events `range` (in `sent`) from `outputs`, until each has
/// arrived or nothing has come for `quiet`; counts them and the duplicates, and records
/// each event's latency in `h`.
pub async fn collect(
    outputs: &mut mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    sent: &Sent,
    range: std::ops::Range<u64>,
    how: Outputs,
    quiet: Duration,
    h: &mut Histogram<u64>,
) -> (u64, u64) {
    let expected = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
    let mut seen: HashMap<u64, u32> = HashMap::with_capacity(expected);
    while seen.len() < expected {
        let Ok(Some((at, payload))) = tokio::time::timeout(quiet, outputs.recv()).await else {
            break;
        };
        let Some(seq) = sent.seq(how, &payload).filter(|s| range.contains(s)) else {
            continue;
        };
        let Some(t0) = sent.at.get(&seq) else {
            continue;
        };
        let n = seen.entry(seq).or_insert(0);
        *n += 1;
        if *n == 1 {
            let us =
                u64::try_from(at.saturating_duration_since(*t0).as_micros()).unwrap_or(u64::MAX);
            let _ = h.record(us.max(1));
        }
    }
    let duplicates = seen.values().map(|n| u64::from(n - 1)).sum();
    (seen.len() as u64, duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_name_their_event() {
        let mut sent = Sent::default();
        let now = Instant::now();
        for (seq, topic) in [(0, "a"), (1, "b"), (2, "a")] {
            sent.record(seq, topic, now);
        }
        assert_eq!(
            sent.seq(Outputs::Seq, br#"{"seq":7,"value":31.5}"#),
            Some(7)
        );
        // The second count on topic a is the third event sent.
        assert_eq!(
            sent.seq(Outputs::Count, br#"{"topic":"a","count":2}"#),
            Some(2)
        );
        assert_eq!(
            sent.seq(Outputs::Count, br#"{"topic":"b","count":1}"#),
            Some(1)
        );
        assert_eq!(
            sent.seq(Outputs::Count, br#"{"topic":"c","count":1}"#),
            None
        );
        assert_eq!(sent.seq(Outputs::Count, br#"{"count":0}"#), None);
        assert_eq!(sent.seq(Outputs::Seq, b"not json"), None);
        assert_eq!(sent.seq(Outputs::None, br#"{"seq":1}"#), None);
    }

    #[test]
    fn memory_seconds_count_only_what_is_above_idle() {
        let mb = 1_000_000;
        let samples = [
            (0.0, 10 * mb),
            (1.0, 12 * mb),
            (3.0, 11 * mb),
            (4.0, 9 * mb),
        ];
        // 0 MB for 1 s, 2 MB for 2 s, 1 MB for 1 s.
        assert!((mb_seconds_above(&samples, 10 * mb) - 5.0).abs() < 1e-9);
    }

    #[test]
    fn phase_memory_is_the_mean_of_its_samples() {
        let samples = [(0.0, 10), (1.0, 20), (2.0, 40), (3.0, 60)];
        assert_eq!(mean_between(&samples, 0.5, 2.5), 30);
        assert_eq!(mean_between(&samples, 1.2, 1.8), 20);
        assert_eq!(mean_between(&[], 0.0, 1.0), 0);
        let mut h = histogram();
        assert!(cdf(&h).is_empty());
        for us in 1..=1000 {
            let _ = h.record(us);
        }
        let points = cdf(&h);
        assert_eq!(points.first().map(|p| p.0), Some(0.0));
        assert_eq!(points.last(), Some(&(1.0, 1000)));
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn proc_figures_of_this_process() {
        let pid = std::process::id();
        assert!(edge_agent::clock::process_cpu_seconds(pid).is_some());
        let before = CpuClock::read(pid);
        // 30 ms of this thread's CPU (not of wall time: on a loaded machine the thread
        // may get a fraction of it), measured finer than the 10 ms ticks could.
        let spin = edge_agent::clock::thread_cpu_time();
        let mut x = 0u64;
        while edge_agent::clock::thread_cpu_time().saturating_sub(spin) < Duration::from_millis(30)
        {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let cpu = CpuClock::read(pid).since(&before);
        assert!((0.02..1.0).contains(&cpu), "{cpu}");
        assert!(edge_agent::clock::process_status_bytes(pid, "VmRSS").is_some_and(|b| b > 0));
    }
}

//! `[metrics] listen`: the agent's figures for Prometheus at `/metrics` (the text format,
//! written by `prometheus-client`, the Prometheus project's own client), with `/healthz`
//! (the process answers) and `/readyz` (connected and subscribed) on the same listener.
//!
//! Nothing is recorded twice: at each scrape the collector reads the same counters and HDR
//! histograms the stats topic reports, and turns each histogram into Prometheus buckets.

use std::net::SocketAddr;
use std::sync::Arc;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::metrics::Snapshot;
use crate::metrics::report::StatsBook;
use crate::mqtt::connection::Links;

/// Bucket bounds of the duration histograms, seconds: 10 µs to 10 s, 1-2.5-5 in each
/// decade. Until 2026-12-08 the bounds past 1 ms skipped 5 ms, 25 ms, 100 ms, 500 ms and
/// 2.5-5 s, and `histogram_quantile` put a p99 of 6.1 ms at 8.4 ms (a probe, 2026-12-07).
const BUCKETS: [f64; 19] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Reads the agent's figures at each scrape.
#[derive(Debug)]
struct AgentCollector {
    stats: Book,
    links: watch::Receiver<Links>,
    state_health: watch::Receiver<Option<String>>,
}

/// [`StatsBook`] is not `Debug`; the collector trait wants it.
struct Book(StatsBook);

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsBook")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One value of a metric family, typed as Prometheus types it.
enum Sample {
    /// A counter of things.
    Count(u64),
    /// A counter of seconds.
    Seconds(f64),
    /// A gauge.
    Gauge(i64),
}

/// A metric family: its descriptor, then one sample per label set (gauge samples make a
/// gauge, the others a counter; a family with no samples yet is still described).
fn family(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    samples: impl IntoIterator<Item = (Labels, Sample)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in samples {
        let mut f = m.encode_family(&labels)?;
        match sample {
            Sample::Count(n) => f.encode_counter::<Labels, _, u64>(&n, None)?,
            Sample::Seconds(x) => f.encode_counter::<Labels, _, u64>(&x, None)?,
            Sample::Gauge(g) => f.encode_gauge(&g)?,
        }
    }
    Ok(())
}

/// Prometheus buckets (upper bound in seconds, count in that bucket) of a histogram in µs.
fn buckets(h: &Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let mut out = Vec::with_capacity(BUCKETS.len() + 1);
    let mut below = 0;
    for le in BUCKETS {
        let upto = h.count_between(0, (le * 1e6) as u64);
        out.push((le, upto - below));
        below = upto;
    }
    out.push((f64::MAX, h.len() - below));
    let sum = h.mean() * h.len() as f64 / 1e6;
    (sum, h.len(), out)
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let book = &self.stats.0;
        let snapshots = book.snapshots();
        let labels = |s: &Snapshot| -> Labels {
            vec![("function", s.function.clone()), ("mode", s.mode.clone())]
        };

        family(
            &mut encoder,
            (
                "edge_agent_events",
                "Events handled, by outcome: succeeded, or the kind of failure",
                MetricType::Counter,
            ),
            snapshots.iter().flat_map(|s| {
                let outcomes = std::iter::once(("succeeded", s.succeeded))
                    .chain(s.failed.iter().map(|(k, n)| (k.as_str(), *n)));
                outcomes.map(|(outcome, n)| {
                    let mut l = labels(s);
                    l.push(("outcome", outcome.into()));
                    (l, Sample::Count(n))
                })
            }),
        )?;

        // `mode = "auto"`: the model in force (1) and the other (0), and the switches.
        let auto: Vec<_> = snapshots
            .iter()
            .filter_map(|s| s.auto.as_ref().map(|a| (s, a)))
            .collect();
        family(
            &mut encoder,
            (
                "edge_agent_function_model",
                "Auto functions: 1 for the execution model in force, 0 for the other",
                MetricType::Gauge,
            ),
            auto.iter().flat_map(|(s, a)| {
                ["on-demand", "persistent"].map(|model| {
                    let mut l = labels(s);
                    l.push(("model", model.into()));
                    (l, Sample::Gauge(i64::from(a.model == model)))
                })
            }),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_auto_switches",
                "Auto functions: switches of execution model, by from, to and reason",
                MetricType::Counter,
            ),
            auto.iter().flat_map(|(s, a)| {
                a.switches.iter().map(|w| {
                    let mut l = labels(s);
                    l.push(("from", w.from.clone()));
                    l.push(("to", w.to.clone()));
                    l.push(("reason", w.reason.clone()));
                    (l, Sample::Count(w.count))
                })
            }),
        )?;

        // `[function.shadow]`: the events compared, by result, and each side's CPU on
        // them (the ratio and the noise are in the stats message and `shadow report`).
        let shadows: Vec<_> = snapshots
            .iter()
            .filter_map(|s| s.shadow.as_ref().map(|r| (s, r)))
            .collect();
        family(
            &mut encoder,
            (
                "edge_agent_shadow_events",
                "Shadows: events mirrored, by result: match, mismatch (noise left out), \
                 shadow-failed, skipped (not compared: the shadow's queue was full, or its \
                 state was being copied again)",
                MetricType::Counter,
            ),
            shadows.iter().flat_map(|(s, r)| {
                [
                    ("match", r.matches),
                    ("mismatch", r.mismatches),
                    ("shadow-failed", r.shadow_failed),
                    ("skipped", r.skipped),
                ]
                .map(|(result, n)| {
                    let mut l = labels(s);
                    l.push(("result", result.into()));
                    (l, Sample::Count(n))
                })
            }),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_shadow_cpu_seconds",
                "Shadows: CPU time of the successful calls on the mirrored events, by side \
                 (primary or shadow)",
                MetricType::Counter,
            ),
            shadows.iter().flat_map(|(s, r)| {
                [("primary", &r.primary), ("shadow", &r.shadow)].map(|(side, c)| {
                    let mut l = labels(s);
                    l.push(("side", side.into()));
                    let ok = c.events - c.failed.iter().map(|(_, n)| n).sum::<u64>();
                    let cpu = c.cpu_us_per_event.unwrap_or(0.0) * ok as f64 / 1e6;
                    (l, Sample::Seconds(cpu))
                })
            }),
        )?;

        family(
            &mut encoder,
            (
                "edge_agent_shadow_queued",
                "Shadows: events handed over and not yet compared or skipped (how far the \
                 shadow is behind)",
                MetricType::Gauge,
            ),
            shadows
                .iter()
                .map(|(s, r)| (labels(s), Sample::Gauge(r.queued as i64))),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_canary_weight_percent",
                "Canaries: the share of the function's topics the shadow's version handles, %",
                MetricType::Gauge,
            ),
            shadows.iter().filter_map(|(s, r)| {
                let c = r.canary.as_ref()?;
                Some((labels(s), Sample::Gauge((c.weight * 100.0).round() as i64)))
            }),
        )?;

        let mut m = encoder.encode_descriptor(
            "edge_agent_event_duration_seconds",
            "Where an event's time goes, by phase: queue, instantiate, execute, commit \
             (state-writing calls), end_to_end (receipt to completion: outputs handed on, \
             and a state-writing call's writes on disk)",
            None,
            MetricType::Histogram,
        )?;
        for (name, mode, stats) in book.entries() {
            let mut result = Ok(());
            stats.histograms(|phase, h| {
                if phase == "load" || result.is_err() {
                    return;
                }
                let l: Labels = vec![
                    ("function", name.to_string()),
                    ("mode", mode.as_str().to_string()),
                    ("phase", phase.to_string()),
                ];
                let (sum, count, b) = buckets(h);
                result = m
                    .encode_family(&l)
                    .and_then(|mut f| f.encode_histogram::<Labels>(sum, count, &b, None));
            });
            result?;
        }

        let fam = |s: &Snapshot| vec![("function", s.function.clone())];
        family(
            &mut encoder,
            (
                "edge_agent_cold_starts",
                "Cold starts by kind: instantiate (an instance per on-demand event), full (the \
             module loaded again after a scale to zero)",
                MetricType::Counter,
            ),
            snapshots.iter().flat_map(|s| {
                [
                    ("instantiate", s.instantiate_us.count),
                    ("full", s.load_us.count),
                ]
                .map(|(kind, n)| {
                    let mut l = fam(s);
                    l.push(("kind", kind.into()));
                    (l, Sample::Count(n))
                })
            }),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_function_cpu_seconds",
                "Thread CPU time of the function's calls, failed ones included (instantiation and call)",
                MetricType::Counter,
            ),
            snapshots
                .iter()
                .map(|s| (labels(s), Sample::Seconds(s.cpu_total_us as f64 / 1e6))),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_instance_memory_bytes",
                "Largest linear memory an instance of the function reached",
                MetricType::Gauge,
            ),
            snapshots
                .iter()
                .map(|s| (labels(s), Sample::Gauge(s.peak_memory_bytes as i64))),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_restarts",
                "Persistent instances restarted after a failure",
                MetricType::Counter,
            ),
            snapshots
                .iter()
                .map(|s| (fam(s), Sample::Count(s.restarts))),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_instances_stopped",
                "Persistent instances stopped by their restart policy: their events are dead-lettered until a reload",
                MetricType::Gauge,
            ),
            snapshots
                .iter()
                .map(|s| (fam(s), Sample::Gauge(s.stopped_instances as i64))),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_replayed",
                "Redelivered messages answered from their receipt: already handled, not called again",
                MetricType::Counter,
            ),
            snapshots
                .iter()
                .map(|s| (fam(s), Sample::Count(s.replayed))),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_queue_depth",
                "Events waiting in the function's queue (all its instances' queues)",
                MetricType::Gauge,
            ),
            snapshots
                .iter()
                .map(|s| (fam(s), Sample::Gauge(s.queue_depth as i64))),
        )?;
        family(
            &mut encoder,
            (
                "edge_agent_state_keys",
                "Keys in the function's state namespace",
                MetricType::Gauge,
            ),
            snapshots
                .iter()
                .map(|s| (fam(s), Sample::Gauge(s.state_keys as i64))),
        )?;

        let disk = book.state_disk_bytes() as i64;
        encoder
            .encode_descriptor(
                "edge_agent_state_disk_bytes",
                "Bytes the state store takes on disk",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&disk)?;

        let flushes = book.state_flushes();
        encoder
            .encode_descriptor(
                "edge_agent_state_flushes",
                "Flushes of the state store to disk, each one fdatasync",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<Labels, _, u64>(&flushes, None)?;

        let dropped = book.outputs_dropped();
        encoder
            .encode_descriptor(
                "edge_agent_outputs_dropped",
                "Messages not sent because the broker will not take them, their events handled",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<Labels, _, u64>(&dropped, None)?;

        if let Some(round_trip) = book.round_trip() {
            encoder
                .encode_descriptor(
                    "edge_agent_broker_round_trip_seconds",
                    "The broker's round trip: the least time from a publish written alone to its PUBACK, over the last 10-20 s",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&round_trip.as_secs_f64())?;
        }

        let connected = i64::from(self.links.borrow().overall().connected);
        encoder
            .encode_descriptor(
                "edge_agent_broker_connected",
                "1 when every connection to the broker is up",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&connected)?;

        let available = i64::from(self.state_health.borrow().is_none());
        encoder
            .encode_descriptor(
                "edge_agent_state_available",
                "1 when the state store takes writes; 0 while a full or failing disk pauses the functions that write state",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&available)?;

        let info: Labels = vec![
            ("version", env!("CARGO_PKG_VERSION").into()),
            ("wasmtime", WASMTIME_VERSION.into()),
        ];
        // A gauge of 1 with the facts as labels (the Prometheus convention; the text
        // format has no info type).
        encoder
            .encode_descriptor(
                "edge_agent_build_info",
                "The agent's version and the wasmtime it runs on",
                None,
                MetricType::Gauge,
            )?
            .encode_family(&info)?
            .encode_gauge(&1i64)?;

        process(&mut encoder)
    }
}

/// The wasmtime version the agent is built with (the workspace pins it).
const WASMTIME_VERSION: &str = "48";

/// The standard `process_*` metrics, from `/proc/self`.
fn process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let pid = std::process::id();
    let fields = crate::clock::process_stat(pid).unwrap_or_default();
    let hz = crate::clock::ticks_per_second();
    let num = |i: usize| fields.get(i).copied().unwrap_or(0) as f64;
    let cpu = (num(11) + num(12)) / hz;
    encoder
        .encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of the process",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<Labels, _, u64>(&cpu, None)?;
    let rss = crate::clock::process_status_bytes(pid, "VmRSS").unwrap_or(0) as i64;
    encoder
        .encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&rss)?;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    encoder
        .encode_descriptor(
            "process_open_fds",
            "Open file descriptors",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&fds)?;
    // Start time: boot time plus the process's start in ticks since boot.
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let start = boot + num(19) / hz;
    encoder
        .encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process, seconds since the Unix epoch",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&start)?;
    Ok(())
}

/// The `/metrics` body now.
fn render(registry: &Registry) -> String {
    let mut body = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut body, registry);
    body
}

/// Connections the listener keeps open at once; one more is closed as it is accepted. A
/// scraper needs one; without a bound, clients that open connections and send nothing (a
/// port scanner, a scraper that lost power, a hostile host on the LAN) took every file
/// descriptor the agent had: measured, 1,100 idle connections left it unable to reconnect
/// to its broker after a restart.
const MAX_CONNECTIONS: usize = 32;

/// A connection that sends no complete request head for this long is closed (idle between
/// requests too: a scraper's keep-alive connection lives from scrape to scrape as long as
/// its interval is shorter). It is hyper's default, which takes effect only with a timer.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a failing accept or a refused connection is said in the log.
const SAY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until the runtime ends;
/// returns the address bound (the port, when `listen` asked for 0).
///
/// # Errors
/// The listener's address cannot be bound.
pub fn serve(
    listen: SocketAddr,
    stats: StatsBook,
    links: watch::Receiver<Links>,
    state_health: watch::Receiver<Option<String>>,
    background: &crate::tasks::Background,
) -> std::io::Result<SocketAddr> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector {
        stats: Book(stats),
        links: links.clone(),
        state_health: state_health.clone(),
    }));
    let routes = Arc::new(Routes {
        registry,
        links,
        state_health,
    });
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    // Ends with the agent: open scrapes are answered, then the listener closes.
    let connections = background.clone();
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    background.spawn(|stop| async move {
        let mut said: Option<tokio::time::Instant> = None;
        let mut unsaid = 0u64;
        let mut say = |what: &str, error: &dyn std::fmt::Display| {
            let now = tokio::time::Instant::now();
            if said.is_some_and(|t| now.duration_since(t) < SAY_EVERY) {
                unsaid += 1;
                return;
            }
            tracing::warn!(error = %error, more_since_last_said = unsaid, "metrics listener: {what}");
            said = Some(now);
            unsaid = 0;
        };
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: the next accept may work.
                        say("accept failed", &e);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                drop(stream);
                say(
                    "a connection closed at once",
                    &format_args!("{MAX_CONNECTIONS} connections are open already"),
                );
                continue;
            };
            let routes = routes.clone();
            connections.spawn(|stop| async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let response = routes.answer(&req);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    // Stopping: finish the request in hand, then close.
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    tracing::info!(listen = %bound, "metrics on http://{bound}/metrics");
    Ok(bound)
}

/// What the listener answers.
struct Routes {
    registry: Registry,
    links: watch::Receiver<Links>,
    state_health: watch::Receiver<Option<String>>,
}

type Body = http_body_util::Full<bytes::Bytes>;

impl Routes {
    fn answer<B>(&self, req: &hyper::Request<B>) -> hyper::Response<Body> {
        use hyper::{Method, StatusCode, header};
        let reply = |status: StatusCode, text: String| {
            let mut r = hyper::Response::new(Body::from(text));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        let path = req.uri().path();
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return reply(StatusCode::NOT_FOUND, String::new());
        }
        // HEAD too: hyper sends its headers without the body.
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, String::new());
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET,HEAD"));
            return r;
        }
        match path {
            "/metrics" => {
                let mut r = reply(StatusCode::OK, render(&self.registry));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            "/healthz" => reply(StatusCode::OK, "ok\n".into()),
            _ => {
                let overall = self.links.borrow().overall();
                let degraded = self.state_health.borrow().clone();
                // A subscription the broker refused leaves a function deaf: not ready,
                // where until 2026-12-08 it answered `ready` (a probe).
                if let Some(reason) = degraded.or(overall.refused) {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("degraded: {reason}\n"),
                    )
                } else if overall.subscribed {
                    reply(StatusCode::OK, "ready\n".into())
                } else if overall.connected {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not subscribed yet\n".into(),
                    )
                } else {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "not connected\n".into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdr_histograms_become_prometheus_buckets() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for us in [5, 20, 20, 900, 3_000_000, 60_000_000] {
            let _ = h.record(us);
        }
        let (sum, count, b) = buckets(&h);
        assert_eq!(count, 6);
        // The sum comes from HDR's mean: 3 significant digits.
        assert!((sum / 63.00094 - 1.0).abs() < 1e-3, "{sum}");
        // 5 µs, then 20 µs twice, 900 µs, 3 s, and 60 s above the last bound.
        let counts: Vec<u64> = b.iter().map(|x| x.1).collect();
        assert_eq!(
            counts,
            [1, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]
        );
        assert_eq!(b.last().map(|x| x.0), Some(f64::MAX));
    }
}

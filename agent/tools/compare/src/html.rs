//! `compare --html`: one self-contained page (no scripts, no fetches) with the table, the
//! verdicts and inline SVG charts, for one report or several side by side (`--from`, one
//! per device). The markup is well-formed XML, so that tests (and anyone) can parse it;
//! every drawn point carries its value from the JSON in `data-x`/`data-y`.

use std::fmt::Write as _;

use super::stats::Estimate;
use super::verdict::rate_words;
use super::{FunctionReport, HOURS_PER_MONTH, ModelRun, Report};

/// Chart size, in SVG units.
const W: f64 = 560.0;
const H: f64 = 300.0;
/// Plot area inside the chart: left, right, top, bottom margins.
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 30.0;
const MB: f64 = 45.0;

/// Colours per series (colour-blind safe, Okabe-Ito).
const COLOURS: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// How a series is drawn.
#[derive(Clone, Copy, PartialEq)]
enum Draw {
    /// A line through the points, no markers (many points).
    Line,
    /// Markers joined by a line.
    Points,
    /// A dashed line (a fit), no markers.
    Dashed,
}

struct Series {
    label: String,
    colour: &'static str,
    draw: Draw,
    points: Vec<(f64, f64)>,
    /// The 95% interval of each point, drawn as an error bar (empty: none).
    bars: Vec<(f64, f64)>,
}

struct Chart {
    id: String,
    title: String,
    x_label: &'static str,
    y_label: &'static str,
    x_log: bool,
    series: Vec<Series>,
    /// Vertical markers: (x, label, and the interval drawn as a band around it).
    marks: Vec<(f64, String, (f64, f64))>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Round tick positions over `[lo, hi]`.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        return (a..=b).map(|e| 10f64.powi(e)).collect();
    }
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(mag * 10.0);
    let mut t = (lo / step).floor() * step;
    let mut out = Vec::new();
    // From the tick at or below `lo` to the first at or above `hi`.
    loop {
        out.push(t);
        if t >= hi - step * 1e-9 || out.len() >= 20 {
            return out;
        }
        t += step;
    }
}

fn label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

impl Chart {
    fn svg(&self) -> String {
        let pts = || {
            self.series
                .iter()
                .flat_map(|s| &s.points)
                .filter(|p| p.0.is_finite() && p.1.is_finite() && (!self.x_log || p.0 > 0.0))
        };
        let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
        for &(x, y) in pts() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        for (x, _, _) in &self.marks {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
        }
        // The axis fits the medians, and an interval up to twice the highest: a wider one
        // (a full cold start in a one-second window) runs off the top rather than
        // flattening every other point.
        let top = y1 * 2.0;
        for s in &self.series {
            for (&(x, _), &(_, hi)) in s.points.iter().zip(&s.bars) {
                if hi.is_finite() && (!self.x_log || x > 0.0) {
                    y1 = y1.max(hi.min(top));
                }
            }
        }
        if x0 > x1 {
            (x0, x1) = (if self.x_log { 1.0 } else { 0.0 }, 1.0);
        }
        let xt = ticks(x0, x1, self.x_log);
        let (xa, xb) = (
            xt.first().copied().unwrap_or(x0).min(x0),
            xt.last().copied().unwrap_or(x1).max(x1),
        );
        let (xa, xb) = if xa == xb { (xa, xa + 1.0) } else { (xa, xb) };
        let yt = ticks(0.0, if y1 > 0.0 { y1 } else { 1.0 }, false);
        let yb = yt
            .last()
            .copied()
            .unwrap_or(1.0)
            .max(y1)
            .max(f64::MIN_POSITIVE);
        let f = |v: f64| if self.x_log { v.log10() } else { v };
        let sx = |x: f64| ML + (f(x) - f(xa)) / (f(xb) - f(xa)) * (W - ML - MR);
        let sy = |y: f64| H - MB - y / yb * (H - MT - MB);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg class="chart" data-chart="{}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img"><title>{}</title>"#,
            esc(&self.id),
            esc(&self.title)
        );
        let _ = write!(
            s,
            r#"<text class="title" x="{}" y="18" text-anchor="middle">{}</text>"#,
            W / 2.0,
            esc(&self.title)
        );
        // Axes, ticks and grid.
        let _ = write!(
            s,
            r#"<g class="axis x" data-label="{}"><line x1="{ML}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            esc(self.x_label),
            H - MB,
            W - MR,
            H - MB
        );
        for t in &xt {
            let x = sx(*t);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{MT}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                H - MB,
                H - MB + 15.0,
                label(*t)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text></g>"#,
            ML + (W - ML - MR) / 2.0,
            H - 8.0,
            esc(self.x_label)
        );
        let _ = write!(
            s,
            r#"<g class="axis y" data-label="{}"><line x1="{ML}" y1="{MT}" x2="{ML}" y2="{}" stroke="black"/>"#,
            esc(self.y_label),
            H - MB
        );
        for t in &yt {
            let y = sy(*t);
            let _ = write!(
                s,
                r##"<line x1="{ML}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - MR,
                ML - 5.0,
                y + 4.0,
                label(*t)
            );
        }
        let _ = write!(
            s,
            r#"<text transform="translate(14,{}) rotate(-90)" text-anchor="middle">{}</text></g>"#,
            MT + (H - MT - MB) / 2.0,
            esc(self.y_label)
        );
        for (x, text, (lo, hi)) in &self.marks {
            let px = sx(*x);
            let (a, b) = (sx(lo.max(xa)), sx(hi.min(xb)));
            if b > a {
                let _ = write!(
                    s,
                    r##"<rect class="band" x="{a:.1}" y="{MT}" width="{:.1}" height="{}" fill="#999" fill-opacity="0.15" data-low="{lo}" data-high="{hi}"/>"##,
                    b - a,
                    H - MT - MB
                );
            }
            let _ = write!(
                s,
                r##"<g class="mark" data-x="{x}"><line x1="{px:.1}" y1="{MT}" x2="{px:.1}" y2="{}" stroke="#555" stroke-dasharray="2,3"/><text x="{:.1}" y="{}" font-size="11">{}</text></g>"##,
                H - MB,
                px + 3.0,
                H - MB - 6.0,
                esc(text)
            );
        }
        // Series, then the legend.
        for ser in &self.series {
            let shown: Vec<(f64, f64)> = ser
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite() && (!self.x_log || p.0 > 0.0))
                .collect();
            let _ = write!(
                s,
                r#"<g class="series" data-label="{}" data-n="{}">"#,
                esc(&ser.label),
                shown.len()
            );
            let line: Vec<String> = shown
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let dash = if ser.draw == Draw::Dashed {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            };
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.8"{dash} points="{}"/>"#,
                ser.colour,
                line.join(" ")
            );
            for (&(x, _), &(lo, hi)) in ser.points.iter().zip(&ser.bars) {
                if !(x.is_finite() && lo.is_finite() && hi.is_finite()) || (self.x_log && x <= 0.0)
                {
                    continue;
                }
                let px = sx(x);
                let (lo_y, hi_y) = (sy(lo.min(yb)), sy(hi.min(yb)));
                let _ = write!(
                    s,
                    r#"<path class="interval" d="M{:.1},{lo_y:.1}H{:.1}M{px:.1},{lo_y:.1}V{hi_y:.1}M{:.1},{hi_y:.1}H{:.1}" stroke="{}" stroke-width="1.2" data-x="{x}" data-low="{lo}" data-high="{hi}"/>"#,
                    px - 4.0,
                    px + 4.0,
                    px - 4.0,
                    px + 4.0,
                    ser.colour
                );
            }
            if ser.draw == Draw::Points {
                for &(x, y) in &shown {
                    let _ = write!(
                        s,
                        r#"<circle class="point" cx="{:.1}" cy="{:.1}" r="3.5" fill="{}" data-x="{x}" data-y="{y}"/>"#,
                        sx(x),
                        sy(y),
                        ser.colour
                    );
                }
            }
            s.push_str("</g>");
        }
        let mut ly = MT + 4.0;
        for ser in &self.series {
            let _ = write!(
                s,
                r#"<g class="legend"><rect x="{}" y="{ly:.1}" width="10" height="10" fill="{}"/><text x="{}" y="{:.1}" font-size="11">{}</text></g>"#,
                ML + 10.0,
                ser.colour,
                ML + 25.0,
                ly + 9.0,
                esc(&ser.label)
            );
            ly += 14.0;
        }
        s.push_str("</svg>");
        s
    }
}

/// The series of one chart: one per (report, model) of the function, coloured in turn.
fn series_of<'a>(
    reports: &'a [Report],
    function: &str,
) -> Vec<(String, &'static str, &'a FunctionReport, &'a ModelRun)> {
    let mut out = Vec::new();
    for r in reports {
        let Some(f) = reports_function(r, function) else {
            continue;
        };
        for m in f.models.iter().filter(|m| m.error.is_none()) {
            let label = if reports.len() > 1 {
                format!("{} on {}", m.model, r.place())
            } else {
                m.model.clone()
            };
            let colour = COLOURS[out.len() % COLOURS.len()];
            out.push((label, colour, f, m));
        }
    }
    out
}

fn reports_function<'a>(r: &'a Report, name: &str) -> Option<&'a FunctionReport> {
    r.functions.iter().find(|f| f.function == name)
}

/// The charts of one function, over every report.
fn charts(reports: &[Report], function: &str) -> Vec<Chart> {
    let all = series_of(reports, function);
    let each = |draw: Draw, points: &dyn Fn(&ModelRun) -> Vec<(f64, f64)>| -> Vec<Series> {
        all.iter()
            .map(|(label, colour, _, m)| Series {
                label: label.clone(),
                colour,
                draw,
                points: points(m),
                bars: Vec::new(),
            })
            .collect()
    };
    let chart = |id: &str, title: &str, x, y, x_log, series| Chart {
        id: format!("{id}-{function}"),
        title: format!("{function}: {title}"),
        x_label: x,
        y_label: y,
        x_log,
        series,
        marks: Vec::new(),
    };
    let latency = chart(
        "latency-cdf",
        "end-to-end latency, every event",
        "latency, ms (log)",
        "fraction of events at or below",
        true,
        each(Draw::Points, &|m| {
            m.latency_cdf
                .iter()
                .map(|&(q, us)| (us as f64 / 1000.0, q))
                .collect()
        }),
    );
    let rss = chart(
        "rss",
        "resident memory over the run",
        "seconds",
        "RSS, MB",
        false,
        each(Draw::Line, &|m| {
            m.rss_over_time
                .iter()
                .map(|&(t, b)| (t, b as f64 / 1e6))
                .collect()
        }),
    );
    let mut cpu = chart(
        "cpu-per-event",
        "process CPU per event against rate (median, 95% interval)",
        "events/s (log)",
        "CPU per event, µs",
        true,
        each(Draw::Points, &|m| {
            m.phases
                .iter()
                .map(|p| (p.rate, p.cpu_per_event_us.median))
                .collect()
        }),
    );
    for (ser, (_, _, _, m)) in cpu.series.iter_mut().zip(&all) {
        ser.bars = m
            .phases
            .iter()
            .map(|p| (p.cpu_per_event_us.low, p.cpu_per_event_us.high))
            .collect();
    }
    let mut out = vec![latency, rss, cpu];
    for (kind, title, unit, scale) in [
        (
            "money",
            "money against rate",
            "$ per month",
            HOURS_PER_MONTH,
        ),
        ("energy", "power against rate", "mW above idle", 1e3),
    ] {
        let pick = |c: &super::cost::CostEstimates| {
            if kind == "money" { c.dollars } else { c.watts }
        };
        let line = |m: &ModelRun| {
            if kind == "money" {
                m.fit.dollars
            } else {
                m.fit.watts
            }
        };
        let mut series = Vec::new();
        let mut marks = Vec::new();
        for (label, colour, f, m) in &all {
            series.push(Series {
                label: format!("{label}, {} (measured)", crate::billing_words(&m.billing)),
                colour,
                draw: Draw::Points,
                points: m
                    .costs
                    .iter()
                    .map(|c| (c.rate, pick(c).median * scale))
                    .collect(),
                bars: m
                    .costs
                    .iter()
                    .map(|c| (pick(c).low * scale, pick(c).high * scale))
                    .collect(),
            });
            let max = m.phases.iter().map(|p| p.rate).fold(1.0, f64::max);
            let fit = line(m).line();
            series.push(Series {
                label: format!("{label}, fitted"),
                colour,
                draw: Draw::Dashed,
                points: (0..=40)
                    .map(|i| {
                        let r = 10f64.powf(-1.0 + f64::from(i) / 40.0 * (max.log10() + 1.0));
                        (r, fit.at(r) * scale)
                    })
                    .collect(),
                bars: Vec::new(),
            });
            if let Some(b) = f
                .verdicts
                .iter()
                .find(|v| v.kind == kind)
                .and_then(|v| v.break_even)
                && !marks.iter().any(|(x, _, _)| *x == b.median)
            {
                marks.push((
                    b.median,
                    format!(
                        "break-even {}/s ({}-{})",
                        rate_words(b.median),
                        rate_words(b.low),
                        rate_words(b.high)
                    ),
                    (b.low, b.high),
                ));
            }
        }
        let mut c = chart(
            &format!("cost-{kind}"),
            title,
            "events/s (log)",
            unit,
            true,
            series,
        );
        c.marks = marks;
        out.push(c);
    }
    out
}

/// One bar of each group: its name and where its value is.
type Part = (&'static str, fn(&ModelRun) -> f64);

/// Grouped bars: the cold-start breakdown per model (per-event instantiation, execution,
/// thread CPU per call), µs.
fn cold_starts(reports: &[Report], function: &str) -> String {
    let all = series_of(reports, function);
    let parts: [Part; 5] = [
        ("queue", |m| m.agent_queue_p50_us.median),
        ("full cold start: load", |m| {
            m.agent_full_cold_start_load_p50_us.median
        }),
        ("instantiate", |m| m.agent_instantiate_p50_us.median),
        ("execute", |m| m.agent_execute_p50_us.median),
        ("commit", |m| m.agent_commit_p50_us.median),
    ];
    let max = all
        .iter()
        .flat_map(|(_, _, _, m)| parts.iter().map(move |(_, f)| f(m)))
        .fold(1.0, f64::max);
    // Log scale from 1 µs: a full cold start (ms) and an execution (µs) on one chart.
    let yt = ticks(1.0, max, true);
    let top = yt.last().copied().unwrap_or(max).max(max).log10().max(1.0);
    let sy = |v: f64| H - MB - v.max(1.0).log10() / top * (H - MT - MB);
    let group = (W - ML - MR) / parts.len() as f64;
    let bar = group * 0.8 / all.len().max(1) as f64;
    let mut s = String::new();
    let title = format!("{function}: where an event's time goes (agent's own p50s)");
    let _ = write!(
        s,
        r#"<svg class="chart" data-chart="cold-start-{}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img"><title>{}</title><text class="title" x="{}" y="18" text-anchor="middle">{}</text>"#,
        esc(function),
        esc(&title),
        W / 2.0,
        esc(&title)
    );
    let _ = write!(
        s,
        r#"<g class="axis y" data-label="µs"><line x1="{ML}" y1="{MT}" x2="{ML}" y2="{}" stroke="black"/>"#,
        H - MB
    );
    for t in &yt {
        let _ = write!(
            s,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - MR,
            ML - 5.0,
            sy(*t) + 4.0,
            label(*t),
            y = sy(*t)
        );
    }
    let _ = write!(
        s,
        r#"<text transform="translate(14,{}) rotate(-90)" text-anchor="middle">µs (log)</text></g><g class="axis x" data-label="phase"><line x1="{ML}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        MT + (H - MT - MB) / 2.0,
        H - MB,
        W - MR,
        H - MB
    );
    for (i, (name, _)) in parts.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{name}</text>"#,
            ML + group * (i as f64 + 0.5),
            H - MB + 15.0
        );
    }
    s.push_str("</g>");
    for (j, (label, colour, _, m)) in all.iter().enumerate() {
        let _ = write!(
            s,
            r#"<g class="series" data-label="{}" data-n="{}">"#,
            esc(label),
            parts.len()
        );
        for (i, (name, f)) in parts.iter().enumerate() {
            let v = f(m);
            let x = ML + group * i as f64 + group * 0.1 + bar * j as f64;
            let _ = write!(
                s,
                r#"<rect class="point" x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}" data-x="{name}" data-y="{v}"/>"#,
                sy(v),
                bar * 0.95,
                (H - MB - sy(v)).max(0.0)
            );
        }
        s.push_str("</g>");
        let ly = MT + 4.0 + 14.0 * j as f64;
        let _ = write!(
            s,
            r#"<g class="legend"><rect x="{}" y="{ly:.1}" width="10" height="10" fill="{colour}"/><text x="{}" y="{:.1}" font-size="11">{}</text></g>"#,
            W - MR - 200.0,
            W - MR - 185.0,
            ly + 9.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// `175 [170-181]`, scaled, with a `!` for outliers among its samples.
fn cell(e: &Estimate, scale: f64, digits: usize) -> String {
    if e.n == 0 {
        return "-".into();
    }
    let flag = if e.outliers > 0 {
        format!(
            " <span class=\"outliers\" title=\"{} outlier(s) of {}\">!</span>",
            e.outliers, e.n
        )
    } else {
        String::new()
    };
    if e.low == e.high {
        format!("{:.digits$}{flag}", e.median * scale)
    } else {
        format!(
            "{:.digits$} <small>[{:.digits$}-{:.digits$}]</small>{flag}",
            e.median * scale,
            e.low * scale,
            e.high * scale
        )
    }
}

/// A function's card: the recommendation at the user's rate, its saving with the
/// interval, and the trade-off that decides it.
fn card(r: &Report, f: &FunctionReport, several: bool) -> String {
    let c = &f.card;
    let on = if several {
        format!(" <small>on {}</small>", esc(&r.place()))
    } else {
        String::new()
    };
    let weak = if c.weak {
        "<p class=\"weak\">Weak verdict: too few samples per rate for 95% intervals \
         (a <code>--quick</code> run). Run without <code>--quick</code> for one that holds.</p>"
    } else {
        ""
    };
    format!(
        "<div class=\"card\" data-function=\"{name}\" data-recommended=\"{rec}\" data-kind=\"{kind}\" \
         data-saving=\"{sav}\" data-low=\"{lo}\" data-high=\"{hi}\"><h3>{name}{on}</h3>\
         <p class=\"rec\">{rec_words}</p><p class=\"headline\">{head}</p>\
         {trade}{weak}</div>",
        name = esc(&f.function),
        rec = esc(&c.recommended),
        kind = esc(&c.kind),
        sav = c.saving.median,
        lo = c.saving.low,
        hi = c.saving.high,
        rec_words = match c.recommended.as_str() {
            "either" => "Either model".to_string(),
            "none" => "Not measured".to_string(),
            m => format!("Use {}", esc(m)),
        },
        head = esc(c
            .headline
            .strip_prefix(&format!("Use {}: ", c.recommended))
            .unwrap_or(&c.headline)),
        trade = decided_by(&c.trade_off),
    )
}

/// The card's "Decided by" line, none without a trade-off (no verdict: until 2026-12-07
/// the card read "Decided by" and nothing).
fn decided_by(trade_off: &str) -> String {
    if trade_off.is_empty() {
        return String::new();
    }
    format!(
        "<p class=\"tradeoff\"><b>Decided by</b> {}</p>",
        esc(trade_off)
    )
}

/// The raw figures of one function as a table (folded away on the page).
fn table(f: &FunctionReport) -> String {
    let mut s = String::from(
        "<table class=\"raw\"><thead><tr><th>model</th><th>rate/s</th><th>received</th>\
         <th>lost</th><th>dups</th><th>p50 ms</th><th>p99 ms</th><th>CPU µs/event</th>\
         <th>CPU s/h</th><th>MB</th><th>mW</th><th>mJ/event</th><th>$/month</th></tr></thead><tbody>",
    );
    for m in &f.models {
        if let Some(e) = &m.error {
            let _ = write!(
                s,
                "<tr><td>{}</td><td colspan=\"12\">failed: {}</td></tr>",
                esc(&m.model),
                esc(e)
            );
        }
        for c in &m.costs {
            let phase = m.phases.iter().find(|p| p.rate == c.rate && c.rate > 0.0);
            let measured = match phase {
                Some(p) => format!(
                    "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                    p.received,
                    p.lost,
                    p.duplicates,
                    cell(&p.end_to_end_us.p50, 1e-3, 2),
                    cell(&p.end_to_end_us.p99, 1e-3, 2),
                    cell(&p.cpu_per_event_us, 1.0, 0)
                ),
                None => "<td>idle</td><td></td><td></td><td></td><td></td><td></td>".into(),
            };
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td>{measured}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.model),
                c.rate,
                cell(&c.cpu_seconds, 1.0, 1),
                cell(&c.memory_mb, 1.0, 1),
                cell(&c.watts, 1e3, 1),
                if c.rate > 0.0 {
                    cell(&c.joules_per_event, 1e3, 3)
                } else {
                    String::new()
                },
                cell(&c.dollars, HOURS_PER_MONTH, 4)
            );
        }
    }
    s.push_str("</tbody></table>");
    s
}

/// The page for `reports` (one per device, side by side): a card per function with the
/// answer first, then per function the verdict per kind of cost and the charts with their
/// intervals, then the raw figures folded away.
pub fn render(reports: &[Report]) -> String {
    let mut s = String::new();
    s.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <title>edge-agent compare</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}\
         .cards{display:flex;flex-wrap:wrap;gap:16px;margin-bottom:1em}\
         .card{border:2px solid #0072B2;border-radius:8px;padding:0.6em 1.2em;flex:1 1 420px;background:#f5f9fc}\
         .card h3{margin:0.2em 0}.rec{font-size:1.6em;font-weight:bold;margin:0.2em 0}\
         .headline{font-size:1.1em}.weak{color:#a04000}\
         .charts{display:flex;flex-wrap:wrap;gap:12px}\
         svg.chart{border:1px solid #ccc;background:#fff;font-size:11px}\
         .title{font-size:13px;font-weight:bold}\
         table.raw{border-collapse:collapse;font-size:12px;width:100%}\
         table.raw td,table.raw th{border:1px solid #ddd;padding:2px 5px;text-align:right;white-space:nowrap}\
         table.raw small{color:#666}.outliers{color:#c00;font-weight:bold}\
         details{margin:1em 0;overflow-x:auto}\
         </style></head><body>\n<h1>edge-agent compare</h1>\n",
    );
    let several = reports.len() > 1;
    s.push_str("<div class=\"cards\">\n");
    for r in reports {
        for f in &r.functions {
            s.push_str(&card(r, f, several));
            s.push('\n');
        }
    }
    s.push_str("</div>\n");
    for r in reports {
        let _ = writeln!(
            s,
            "<p>edge-agent {} on {}: {} round(s) per model{}, interleaved; every figure is a \
             median with its 95% interval. Energy by the <b>{}</b> power profile and money by \
             a price list: both are models, not measurements. Everything else was measured.</p>",
            esc(&r.agent_version),
            esc(&r.place()),
            r.rounds,
            if r.quick { " (--quick)" } else { "" },
            esc(&r.power.name),
        );
    }
    let mut names: Vec<&str> = Vec::new();
    for f in reports.iter().flat_map(|r| &r.functions) {
        if !names.contains(&f.function.as_str()) {
            names.push(&f.function);
        }
    }
    for name in &names {
        let _ = writeln!(s, "<h2>{}</h2>", esc(name));
        for r in reports {
            if let Some(f) = reports_function(r, name) {
                if several {
                    let _ = writeln!(s, "<h3>{}</h3>", esc(&r.place()));
                }
                s.push_str("<ul class=\"verdicts\">");
                for v in &f.verdicts {
                    let _ = write!(
                        s,
                        "<li data-kind=\"{}\" data-winner=\"{}\"><b>{}</b>: {}</li>",
                        esc(&v.kind),
                        esc(&v.winner),
                        esc(&v.kind),
                        esc(&v.text)
                    );
                }
                s.push_str("</ul>\n");
                if let Some(a) = f.auto.first() {
                    let _ = write!(
                        s,
                        "<p class=\"auto\">Auto (<code>mode = \"auto\"</code>, its defaults) at {}, \
                         against the cheaper fixed model:",
                        esc(&rate_words(a.rate))
                    );
                    for a in &f.auto {
                        let _ = write!(
                            s,
                            " <span data-kind=\"{}\">{}</span>",
                            esc(&a.kind),
                            esc(&a.words)
                        );
                    }
                    s.push_str("</p>\n");
                }
                s.push_str("<ul class=\"tradeoffs\">");
                for t in &f.tradeoffs {
                    let _ = write!(s, "<li><b>{}</b>: {}</li>", esc(&t.name), esc(&t.finding));
                }
                s.push_str("</ul>\n");
            }
        }
        s.push_str("<div class=\"charts\">\n");
        for c in charts(reports, name) {
            s.push_str(&c.svg());
            s.push('\n');
        }
        s.push_str(&cold_starts(reports, name));
        s.push_str("\n</div>\n");
    }
    for r in reports {
        let _ = writeln!(
            s,
            "<details><summary>Raw figures ({}): medians [95% interval]; ! marks outliers</summary>",
            esc(&r.place())
        );
        for f in &r.functions {
            let _ = writeln!(s, "<h3>{}</h3>{}", esc(&f.function), table(f));
        }
        s.push_str("</details>\n");
    }
    for r in reports {
        let _ = write!(
            s,
            "<h2>Models used ({})</h2>\n<p>Power: {} ({} cores, {} W idle, {} W busy).</p>\n\
             <p>Prices: {}.</p>\n",
            esc(&r.place()),
            esc(&r.power.source),
            r.power.cores,
            r.power.idle_watts,
            r.power.busy_watts,
            esc(&r.prices.source)
        );
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 9.0, false), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(1.0, 1000.0, true), [1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(ticks(0.3, 20.0, true), [0.1, 1.0, 10.0, 100.0]);
        assert_eq!(label(2.5), "2.5");
        assert_eq!(label(1500.0), "1500");
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn a_card_without_a_trade_off_has_no_decided_by_line() {
        assert_eq!(decided_by(""), "");
        assert_eq!(
            decided_by("cold start: <1 ms"),
            "<p class=\"tradeoff\"><b>Decided by</b> cold start: &lt;1 ms</p>"
        );
    }
}

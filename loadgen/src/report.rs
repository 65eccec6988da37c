//! The end of a run: the summary (also `summary.json`), the per-priority table, HdrHistogram
//! percentile files and an SVG plot of latency by percentile.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scenario::Priority;
use crate::sink::Accounting;
use crate::stats::{new_histogram, Stats};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassSummary {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub ok: u64,
    /// Notifications accepted (202) by the target.
    pub accepted: u64,
    /// Sends not made while a 429's Retry-After ran (`--honor-retry-after`).
    pub deferred: u64,
    /// Sends loadgen could not make before its schedule ended (it could not offer the rate).
    pub unsent: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    /// The same errors by status and Herald's error code, e.g. `"429 overloaded"`.
    pub errors_by_code: BTreeMap<String, u64>,
    pub errors_by_transport: BTreeMap<String, u64>,
    /// From intended send (open loop) or actual send (closed loop) to the full response.
    pub ingest: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct TotalSummary {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub ok: u64,
    pub notifications_accepted: u64,
    pub notifications_per_sec: f64,
    pub errors: u64,
    pub ingest: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    pub accepted: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    /// The first lost and unexpected ids (at most 100 each), to look up in Herald.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unexpected_ids: Vec<String>,
    /// From the intended send to arrival at the sink, first deliveries only.
    pub priorities: BTreeMap<String, Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SloResult {
    pub objective: String,
    pub actual: Option<f64>,
    pub met: bool,
}

/// Everything a run measured; written as `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub version: u32,
    pub target: String,
    /// `open` (coordinated-omission-corrected) or `closed`.
    pub mode: &'static str,
    pub connections: usize,
    /// Notifications per request (0: single endpoint).
    pub batch: usize,
    pub warmup_seconds: f64,
    pub measured_seconds: f64,
    /// Offered requests/s averaged over the measured period (open loop).
    pub offered_requests_per_sec: Option<f64>,
    pub total: TotalSummary,
    pub priorities: BTreeMap<String, ClassSummary>,
    pub end_to_end: Option<EndToEnd>,
    /// Requests sent again with their idempotency keys (`--resend-every`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resent: Option<crate::resend::Resent>,
    pub slo: Vec<SloResult>,
}

/// What `summarize` needs besides the stats.
pub struct RunInfo<'a> {
    pub target: &'a str,
    pub open_loop: bool,
    pub connections: usize,
    pub batch: usize,
    pub warmup_seconds: f64,
    pub measured_seconds: f64,
    pub offered_requests_per_sec: Option<f64>,
}

pub fn summarize(
    info: &RunInfo<'_>,
    stats: &Stats,
    e2e: Option<(Accounting, [Histogram<u64>; 3])>,
) -> Summary {
    let secs = info.measured_seconds.max(1e-9);
    let mut all = new_histogram();
    let mut priorities = BTreeMap::new();
    let mut total = TotalSummary {
        requests: 0,
        requests_per_sec: 0.0,
        ok: 0,
        notifications_accepted: 0,
        notifications_per_sec: 0.0,
        errors: 0,
        ingest: Percentiles::of(&all),
    };
    for p in Priority::ALL {
        let h = stats.histogram(p);
        all.add(&h).expect("same bounds");
        let t = stats.totals(p);
        total.requests += t.requests;
        total.ok += t.ok;
        total.notifications_accepted += t.accepted;
        total.errors += t.errors();
        priorities.insert(
            p.to_string(),
            ClassSummary {
                requests: t.requests,
                requests_per_sec: t.requests as f64 / secs,
                ok: t.ok,
                accepted: t.accepted,
                deferred: t.deferred,
                unsent: t.unsent,
                errors: t.errors(),
                errors_by_status: t
                    .by_status
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                errors_by_code: t.by_code.clone(),
                errors_by_transport: t
                    .by_transport
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                ingest: Percentiles::of(&h),
            },
        );
    }
    total.requests_per_sec = total.requests as f64 / secs;
    total.notifications_per_sec = total.notifications_accepted as f64 / secs;
    total.ingest = Percentiles::of(&all);
    let end_to_end = e2e.map(|(a, hists)| EndToEnd {
        accepted: a.accepted,
        delivered: a.delivered,
        lost: a.lost,
        duplicated: a.duplicated,
        unexpected: a.unexpected,
        lost_ids: a.lost_ids.clone(),
        unexpected_ids: a.unexpected_ids.clone(),
        priorities: Priority::ALL
            .iter()
            .map(|p| (p.to_string(), Percentiles::of(&hists[p.index()])))
            .collect(),
    });
    Summary {
        version: 1,
        target: info.target.to_string(),
        mode: if info.open_loop { "open" } else { "closed" },
        connections: info.connections,
        batch: info.batch,
        warmup_seconds: info.warmup_seconds,
        measured_seconds: info.measured_seconds,
        offered_requests_per_sec: info.offered_requests_per_sec,
        total,
        priorities,
        end_to_end,
        resent: None,
        slo: Vec::new(),
    }
}

/// The human-readable table.
pub fn table(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "priority", "requests", "req/s", "p50", "p90", "p99", "p99.9", "max", "errors"
    );
    let row =
        |out: &mut String, name: &str, requests: u64, rate: f64, l: &Percentiles, errors: u64| {
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
                name,
                requests,
                rate,
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p99_ms),
                ms(l.p999_ms),
                ms(l.max_ms),
                errors
            );
        };
    for p in Priority::ALL {
        let c = &summary.priorities[p.as_str()];
        if c.requests > 0 {
            row(
                &mut out,
                p.as_str(),
                c.requests,
                c.requests_per_sec,
                &c.ingest,
                c.errors,
            );
        }
    }
    let t = &summary.total;
    row(
        &mut out,
        "total",
        t.requests,
        t.requests_per_sec,
        &t.ingest,
        t.errors,
    );
    if summary.batch > 0 {
        let _ = writeln!(
            out,
            "notifications accepted: {} ({:.1}/s)",
            t.notifications_accepted, t.notifications_per_sec
        );
    }
    for p in Priority::ALL {
        let c = &summary.priorities[p.as_str()];
        if c.errors > 0 {
            let _ = writeln!(
                out,
                "{p} errors: status {:?}, transport {:?}",
                c.errors_by_code, c.errors_by_transport
            );
        }
    }
    if let Some(r) = &summary.resent {
        let _ = writeln!(
            out,
            "sent again with their keys: {}, replayed {}, accepted again {}, failed {}",
            r.resent, r.replayed, r.accepted_again, r.failed
        );
    }
    if let Some(e) = &summary.end_to_end {
        let _ = writeln!(
            out,
            "end to end: accepted {}, delivered {}, lost {}, duplicated {}, unexpected {}",
            e.accepted, e.delivered, e.lost, e.duplicated, e.unexpected
        );
        if e.accepted > 0 && e.delivered == 0 {
            let _ = writeln!(
                out,
                "NOTHING ARRIVED at the sink: {} notifications were accepted and none was delivered",
                e.accepted
            );
        }
        for (p, l) in &e.priorities {
            if l.count > 0 {
                let _ = writeln!(
                    out,
                    "end to end {p}: p50 {} p90 {} p99 {} p99.9 {} max {}",
                    ms(l.p50_ms),
                    ms(l.p90_ms),
                    ms(l.p99_ms),
                    ms(l.p999_ms),
                    ms(l.max_ms)
                );
            }
        }
    }
    out
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}s", v / 1000.0)
    } else {
        format!("{v:.2}ms")
    }
}

/// HdrHistogram's percentile distribution text (as `outputPercentileDistribution` writes
/// it), values in milliseconds.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0;
    if h.is_empty() {
        out.push_str("#[Mean    =        0.000, StdDeviation   =        0.000]\n");
        out.push_str("#[Max     =        0.000, Total count    =            0]\n");
        return out;
    }
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// Writes `summary.json`, `<priority>.ingest.hgrm` (and `.e2e.hgrm` with a sink) and
/// `latency.svg` into `dir`.
pub fn write_out(
    dir: &Path,
    summary: &Summary,
    ingest: &[Histogram<u64>; 3],
    e2e: Option<&[Histogram<u64>; 3]>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(summary)?,
    )?;
    for p in Priority::ALL {
        std::fs::write(
            dir.join(format!("{p}.ingest.hgrm")),
            percentile_distribution(&ingest[p.index()]),
        )?;
        if let Some(e2e) = e2e {
            std::fs::write(
                dir.join(format!("{p}.e2e.hgrm")),
                percentile_distribution(&e2e[p.index()]),
            )?;
        }
    }
    plot(&dir.join("latency.svg"), ingest, e2e)?;
    Ok(())
}

/// Latency by percentile, one line per priority (and per end-to-end series), x on the
/// usual HdrHistogram log scale of 1/(1-percentile).
fn plot(
    path: &Path,
    ingest: &[Histogram<u64>; 3],
    e2e: Option<&[Histogram<u64>; 3]>,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    struct Series {
        name: String,
        color: RGBColor,
        points: Vec<(f64, f64)>,
    }
    let mut series: Vec<Series> = Vec::new();
    let colors = [
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(31, 119, 180),
    ];
    let points = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        h.iter_quantiles(5)
            .filter(|v| v.quantile_iterated_to() < 1.0)
            .map(|v| {
                (
                    1.0 / (1.0 - v.quantile_iterated_to()),
                    v.value_iterated_to() as f64 / 1000.0,
                )
            })
            .collect()
    };
    for p in Priority::ALL {
        if !ingest[p.index()].is_empty() {
            series.push(Series {
                name: format!("{p} ingest"),
                color: colors[p.index()],
                points: points(&ingest[p.index()]),
            });
        }
        if let Some(e2e) = e2e {
            if !e2e[p.index()].is_empty() {
                let c = colors[p.index()];
                let light = RGBColor(c.0 / 2 + 100, c.1 / 2 + 100, c.2 / 2 + 100);
                series.push(Series {
                    name: format!("{p} end to end"),
                    color: light,
                    points: points(&e2e[p.index()]),
                });
            }
        }
    }
    let max_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(10.0f64, f64::max);
    let max_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.001f64, f64::max)
        * 1.5;
    // Log scale: one plot must show sub-millisecond and multi-second series together.
    let min_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, max_y / 10.0)
        * 0.7;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((1.0..max_x).log_scale(), (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .y_label_formatter(&|y| format!("{y:.3}"))
        .x_label_formatter(&|x| format!("{:.4}%", 100.0 * (1.0 - 1.0 / x)))
        .draw()?;
    for Series {
        name,
        color,
        points,
    } in series
    {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

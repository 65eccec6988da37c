//! Service-level objectives given on the command line, e.g.
//! `--slo 'high.p99<=10ms,lost==0,rate>=5000'`, checked against the summary.
//!
//! Left-hand sides: `<scope>.<q>` (ingest latency) and `<scope>.e2e.<q>` (end to end),
//! where scope is `high|medium|low|total` and q is `p50|p90|p99|p999|max`; `<scope>.errors`,
//! `<scope>.rate` (requests/s), `<scope>.accepted_rate` (notifications/s); `lost`,
//! `duplicated`, `unexpected`, `delivered`. Operators `<= < >= > ==`. Latencies take a
//! unit (`us`, `ms`, `s`; ms when none); other values are plain numbers.

use std::str::FromStr;

use crate::report::{Percentiles, SloResult, Summary};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Le,
    Lt,
    Ge,
    Gt,
    Eq,
}

#[derive(Debug, Clone, PartialEq)]
enum Metric {
    Latency {
        scope: String,
        e2e: bool,
        quantile: String,
    },
    Errors(String),
    Rate(String),
    AcceptedRate(String),
    Lost,
    Duplicated,
    Unexpected,
    Delivered,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    text: String,
    metric: Metric,
    op: Op,
    /// Milliseconds for latencies, plain otherwise.
    value: f64,
}

/// A comma-separated list of objectives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slos(pub Vec<Objective>);

impl FromStr for Slos {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_objective)
            .collect::<Result<Vec<_>, _>>()
            .map(Slos)
    }
}

const SCOPES: [&str; 4] = ["high", "medium", "low", "total"];
const QUANTILES: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];

fn parse_objective(text: &str) -> Result<Objective, String> {
    let (at, op, len) = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ]
    .iter()
    .find_map(|(sym, op)| text.find(sym).map(|i| (i, *op, sym.len())))
    .ok_or_else(|| format!("objective {text:?} has no operator (<=, <, >=, >, ==)"))?;
    let lhs = text[..at].trim();
    let rhs = text[at + len..].trim();
    let parts: Vec<&str> = lhs.split('.').collect();
    let metric = match parts.as_slice() {
        ["lost"] => Metric::Lost,
        ["duplicated"] => Metric::Duplicated,
        ["unexpected"] => Metric::Unexpected,
        ["delivered"] => Metric::Delivered,
        ["errors"] => Metric::Errors("total".into()),
        ["rate"] => Metric::Rate("total".into()),
        [scope, what] if SCOPES.contains(scope) => match *what {
            "errors" => Metric::Errors(scope.to_string()),
            "rate" => Metric::Rate(scope.to_string()),
            "accepted_rate" => Metric::AcceptedRate(scope.to_string()),
            q if QUANTILES.contains(&q) => Metric::Latency {
                scope: scope.to_string(),
                e2e: false,
                quantile: q.to_string(),
            },
            _ => return Err(format!("unknown measure {what:?} in {text:?}")),
        },
        [scope, "e2e", q] if SCOPES.contains(scope) && QUANTILES.contains(q) => Metric::Latency {
            scope: scope.to_string(),
            e2e: true,
            quantile: q.to_string(),
        },
        _ => return Err(format!("unknown objective {lhs:?} in {text:?}")),
    };
    let value = match metric {
        Metric::Latency { .. } => parse_latency_ms(rhs)?,
        _ => rhs
            .parse::<f64>()
            .map_err(|_| format!("{rhs:?} in {text:?} is not a number"))?,
    };
    Ok(Objective {
        text: text.to_string(),
        metric,
        op,
        value,
    })
}

fn parse_latency_ms(s: &str) -> Result<f64, String> {
    let (number, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (s, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .map(|v| v * scale)
        .map_err(|_| format!("{s:?} is not a latency like 10ms"))
}

fn pick(p: &Percentiles, q: &str) -> f64 {
    match q {
        "p50" => p.p50_ms,
        "p90" => p.p90_ms,
        "p99" => p.p99_ms,
        "p999" => p.p999_ms,
        _ => p.max_ms,
    }
}

impl Objective {
    fn actual(&self, s: &Summary) -> Option<f64> {
        let class = |scope: &str| s.priorities.get(scope);
        let e2e = s.end_to_end.as_ref();
        Some(match &self.metric {
            Metric::Latency {
                scope,
                e2e: false,
                quantile,
            } => {
                let p = if scope == "total" {
                    &s.total.ingest
                } else {
                    &class(scope)?.ingest
                };
                if p.count == 0 {
                    return None;
                }
                pick(p, quantile)
            }
            Metric::Latency {
                scope, quantile, ..
            } => {
                let p = e2e?.priorities.get(scope)?;
                if p.count == 0 {
                    return None;
                }
                pick(p, quantile)
            }
            Metric::Errors(scope) if scope == "total" => s.total.errors as f64,
            Metric::Errors(scope) => class(scope)?.errors as f64,
            Metric::Rate(scope) if scope == "total" => s.total.requests_per_sec,
            Metric::Rate(scope) => class(scope)?.requests_per_sec,
            Metric::AcceptedRate(scope) if scope == "total" => s.total.notifications_per_sec,
            Metric::AcceptedRate(scope) => {
                class(scope)?.accepted as f64 / s.measured_seconds.max(1e-9)
            }
            Metric::Lost => e2e?.lost as f64,
            Metric::Duplicated => e2e?.duplicated as f64,
            Metric::Unexpected => e2e?.unexpected as f64,
            Metric::Delivered => e2e?.delivered as f64,
        })
    }

    /// Checks the objective; one that cannot be measured (no sink, no samples) is missed.
    pub fn check(&self, summary: &Summary) -> SloResult {
        let actual = self.actual(summary);
        let met = actual.is_some_and(|a| match self.op {
            Op::Le => a <= self.value,
            Op::Lt => a < self.value,
            Op::Ge => a >= self.value,
            Op::Gt => a > self.value,
            Op::Eq => (a - self.value).abs() < 1e-9,
        });
        SloResult {
            objective: self.text.clone(),
            actual,
            met,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let slos: Slos = "high.p99<=10ms, lost==0, rate>=5000, total.e2e.p999<2s, low.errors<1, medium.p50<=500us"
            .parse()
            .unwrap();
        assert_eq!(slos.0.len(), 6);
        assert_eq!(slos.0[0].value, 10.0);
        assert_eq!(slos.0[3].value, 2000.0);
        assert_eq!(slos.0[5].value, 0.5);
        assert_eq!(slos.0[1].metric, Metric::Lost);
    }

    #[test]
    fn refuses_what_it_cannot_check() {
        for bad in [
            "high.p99",
            "urgent.p99<=1ms",
            "high.p75<=1ms",
            "lost==none",
            "high.p99<=fast",
        ] {
            assert!(bad.parse::<Slos>().is_err(), "{bad}");
        }
    }
}

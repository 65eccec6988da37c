//! Command line, and its translation into a run plan. Every invalid combination is refused
//! here with a message that names the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::request::Channel;
use crate::scenario::{builtin_phases, parse_scenario_file, Builtin, Mix, Phase};
use crate::slo::Slos;
use crate::work::LoadModel;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for Herald: per-priority latency and throughput, open loop (coordinated omission corrected) or closed loop, with an end-to-end sink"
)]
pub struct Cli {
    /// Base URL of the target.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Open loop: requests per second in total, spread over priorities by --mix. Latency
    /// is measured from each request's intended start time.
    #[arg(long, allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Open loop: connections (= requests in flight at most) per priority, each priority
    /// being its own client population. Closed loop (no --rate): connections in all, each
    /// sending back to back.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,
    /// OS threads sending (each its own event loop); default: the number of CPUs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Recorded duration.
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before recording starts (not recorded).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Share of requests per priority.
    #[arg(long, default_value = "high=10,medium=30,low=60")]
    pub mix: Mix,
    /// Notifications per request through the batch endpoint (0: single endpoint). Each
    /// batch holds one priority, so latencies stay per priority.
    #[arg(long, default_value_t = 0)]
    pub batch: usize,
    /// Approximate payload size of each notification, in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Channel of the generated notifications.
    #[arg(long, value_enum, default_value = "webhook")]
    pub channel: Channel,
    /// Sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "HERALD_API_KEY")]
    pub api_key: Option<String>,
    /// Give every notification a unique `idempotency_key` (prices the Redis claim).
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Keep every N-th accepted request (single endpoint, implies --idempotency-keys) and
    /// send it again, byte for byte, once the load has ended: each must be answered with
    /// its first id (a replay), never accepted again. Across a store's restart during the
    /// run this checks that idempotency survived it. 0: off.
    #[arg(long, default_value_t = 0)]
    pub resend_every: u64,
    /// Send each request's priority as a `Herald-Priority` header too, so an overloaded
    /// Herald can refuse it before reading the body.
    #[arg(long)]
    pub priority_header: bool,
    /// Behave as a client that honours `Retry-After`: after a 429 that carries one, send
    /// nothing of that priority until it has passed. Open loop: the sends due meanwhile
    /// are reported as `deferred`, not made.
    #[arg(long)]
    pub honor_retry_after: bool,
    /// `steady`, `overload` (needs --capacity), `burst`, or a TOML file of phases.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Requests/s the target sustains; `overload` offers low at 3x this.
    #[arg(long)]
    pub capacity: Option<f64>,
    /// Start a sink on this address and address webhooks to it; reports end-to-end
    /// latency and lost / duplicated / unexpected notifications.
    #[arg(long)]
    pub sink: Option<SocketAddr>,
    /// The URL the dispatcher should post webhooks to when the sink's listen address is
    /// not how it is reached (containers: `--sink 0.0.0.0:9999 --sink-url
    /// http://loadgen:9999/hook`).
    #[arg(long, requires = "sink")]
    pub sink_url: Option<String>,
    /// Keep the sink up this long after every accepted notification arrived, to count late
    /// duplicates (and keep answering redeliveries from a crashed dispatcher).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, requires = "sink")]
    pub sink_grace: Duration,
    /// Make the sink misbehave for a window after it starts (fault injection):
    /// `hang:3s:8s` (never answers), `reset:3s:8s` (drops connections), or
    /// `slow=1500ms:3s:8s` (answers late). Unanswered deliveries are not counted.
    #[arg(long, requires = "sink")]
    pub sink_fault: Option<crate::sink::SinkFault>,
    /// How long to wait after the load for deliveries to arrive at the sink.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Write summary.json, HdrHistogram percentile files and latency.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Objectives, e.g. 'high.p99<=10ms,lost==0'; exit status 1 when one is missed.
    #[arg(long, default_value = "")]
    pub slo: Slos,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    pub h2: bool,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Cli {
    /// The load model this command line asks for.
    pub fn model(&self) -> Result<LoadModel, String> {
        if self.connections == 0 {
            return Err(String::from("--connections must be at least 1"));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("--rate must be a positive number, got {rate}"));
            }
        }
        if self.capacity.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(String::from("--capacity must be a positive number"));
        }
        if self.payload_bytes > 1024 * 1024 {
            return Err(String::from("--payload-bytes is over 1 MiB"));
        }
        if self.duration.is_zero() {
            return Err(String::from("--duration must be longer than zero"));
        }
        let phases: Option<Vec<Phase>> = match (&self.scenario, self.rate) {
            (None, None) => None,
            (None, Some(rate)) => Some(builtin_phases(
                Builtin::Steady,
                rate,
                None,
                self.mix,
                self.duration,
            )?),
            (Some(name), rate) => match name.parse::<Builtin>() {
                Ok(Builtin::Overload) => Some(builtin_phases(
                    Builtin::Overload,
                    rate.unwrap_or(0.0),
                    self.capacity,
                    self.mix,
                    self.duration,
                )?),
                Ok(builtin) => {
                    let rate = rate.ok_or_else(|| format!("--scenario {name} needs --rate"))?;
                    Some(builtin_phases(
                        builtin,
                        rate,
                        None,
                        self.mix,
                        self.duration,
                    )?)
                }
                Err(_) => {
                    let text = std::fs::read_to_string(name).map_err(|e| {
                        format!("--scenario {name:?} is neither steady, overload, burst nor a readable file: {e}")
                    })?;
                    Some(
                        parse_scenario_file(&text)
                            .map_err(|e| format!("--scenario {name}: {e}"))?,
                    )
                }
            },
        };
        Ok(match phases {
            Some(phases) => LoadModel::Open { phases },
            None => LoadModel::Closed {
                duration: self.duration,
                mix: self.mix,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LoadModel, String> {
        let mut all = vec!["loadgen"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map_err(|e| e.to_string())?.model()
    }

    #[test]
    fn modes_follow_the_flags() {
        assert!(matches!(parse(&[]).unwrap(), LoadModel::Closed { .. }));
        match parse(&["--rate", "100", "-d", "3s"]).unwrap() {
            LoadModel::Open { phases } => {
                assert_eq!(phases.len(), 1);
                assert!((phases[0].total_rate() - 100.0).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["--scenario", "overload", "--capacity", "500"]).unwrap(),
            LoadModel::Open { .. }
        ));
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        let cases = [
            (vec!["--rate", "0"], "--rate"),
            (vec!["--rate", "-5"], "--rate"),
            (vec!["-c", "0"], "--connections"),
            (vec!["--scenario", "overload"], "--capacity"),
            (vec!["--scenario", "burst"], "--rate"),
            (vec!["--scenario", "/no/such/file.toml"], "--scenario"),
            (vec!["--mix", "urgent=1"], "urgent"),
            (vec!["--slo", "p99<1ms"], "p99"),
            (vec!["--duration", "soon"], "duration"),
        ];
        for (args, needle) in cases {
            let err = parse(&args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}

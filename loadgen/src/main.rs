//! `loadgen`: runs a load against Herald and reports per-priority latency and throughput.
//! Exit status: 0 when every objective was met and nothing accepted was lost, 1 otherwise,
//! 2 for bad arguments.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use loadgen::cli::Cli;
use loadgen::monitor::Monitor;
use loadgen::report::{self, RunInfo};
use loadgen::request::BodyBuilder;
use loadgen::scenario::Priority;
use loadgen::sink::Sink;
use loadgen::stats::Stats;
use loadgen::work::{self, LoadConfig, LoadModel};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let model = match cli.model() {
        Ok(model) => model,
        Err(message) => {
            eprintln!("loadgen: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli, model)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("loadgen: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs and reports; `Ok(false)` when an objective was missed or anything was lost.
async fn run(cli: Cli, model: LoadModel) -> anyhow::Result<bool> {
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let sink = match cli.sink {
        Some(addr) => Some(
            Sink::start(addr, run_id.clone(), cli.sink_fault)
                .await
                .with_context(|| format!("starting the sink on {addr}"))?,
        ),
        None => None,
    };
    let offered = match &model {
        LoadModel::Open { phases } => {
            let secs: f64 = phases.iter().map(|p| p.duration.as_secs_f64()).sum();
            Some(
                phases
                    .iter()
                    .map(|p| p.total_rate() * p.duration.as_secs_f64())
                    .sum::<f64>()
                    / secs.max(1e-9),
            )
        }
        LoadModel::Closed { .. } => None,
    };
    let config = LoadConfig {
        target: cli.target.clone(),
        model,
        connections: cli.connections,
        threads: cli
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        warmup: cli.warmup,
        timeout: cli.timeout,
        h2: cli.h2,
        api_key: cli.api_key.clone(),
        priority_header: cli.priority_header,
        honor_retry_after: cli.honor_retry_after,
        body: BodyBuilder {
            run: run_id,
            channel: cli.channel,
            webhook_url: match (&cli.sink_url, &sink) {
                (Some(url), _) => url.clone(),
                (None, Some(sink)) => sink.url(),
                (None, None) => String::from("http://127.0.0.1:9/hook"),
            },
            payload_bytes: cli.payload_bytes,
            batch: cli.batch,
            idempotency_keys: cli.idempotency_keys || cli.resend_every > 0,
        },
        track_ids: sink.is_some(),
        resend_every: cli.resend_every,
    };
    let open_loop = matches!(config.model, LoadModel::Open { .. });
    eprintln!(
        "loadgen: {} loop against {}, {} connections, {:?} warm-up + {:?}{}",
        if open_loop { "open" } else { "closed" },
        cli.target,
        cli.connections,
        config.warmup,
        config.measured_duration(),
        offered.map_or(String::new(), |r| format!(", {r:.0} requests/s offered")),
    );
    let stats = Arc::new(Stats::default());
    let monitor = Monitor::start(stats.clone(), config.total_duration());
    let result = work::run(config.clone(), stats.clone()).await?;
    monitor.stop();
    let resent = if result.kept.is_empty() {
        None
    } else {
        Some(loadgen::resend::run(&config, &result.kept).await?)
    };

    let e2e = match &sink {
        Some(sink) => {
            drain(sink, &result.accepted_ids, cli.drain_timeout).await;
            tokio::time::sleep(cli.sink_grace).await;
            let hists = Priority::ALL.map(|p| sink.latency(p));
            Some((sink.account(&result.accepted_ids), hists))
        }
        None => None,
    };
    let info = RunInfo {
        target: &cli.target,
        open_loop,
        connections: cli.connections,
        batch: cli.batch,
        warmup_seconds: cli.warmup.as_secs_f64(),
        measured_seconds: result.measured.as_secs_f64(),
        offered_requests_per_sec: offered,
    };
    let e2e_hists = e2e.as_ref().map(|(_, h)| h.clone());
    let mut summary = report::summarize(&info, &stats, e2e);
    summary.resent = resent;
    summary.slo = cli.slo.0.iter().map(|o| o.check(&summary)).collect();
    print!("{}", report::table(&summary));
    for s in &summary.slo {
        println!(
            "slo {}: {} (actual {})",
            s.objective,
            if s.met { "met" } else { "MISSED" },
            s.actual.map_or("unmeasured".into(), |a| format!("{a:.3}"))
        );
    }
    if let Some(dir) = &cli.out {
        let ingest = Priority::ALL.map(|p| stats.histogram(p));
        report::write_out(dir, &summary, &ingest, e2e_hists.as_ref())
            .with_context(|| format!("writing results to {}", dir.display()))?;
        if sink.is_some() {
            // Every id answered 202, one per line: to check Herald's own records against.
            let mut ids: Vec<&String> = result.accepted_ids.iter().collect();
            ids.sort();
            let text: String = ids.into_iter().map(|id| format!("{id}\n")).collect();
            std::fs::write(dir.join("accepted-ids.txt"), text)
                .with_context(|| format!("writing {}/accepted-ids.txt", dir.display()))?;
        }
        eprintln!("loadgen: results written to {}", dir.display());
    }
    let lost = summary.end_to_end.as_ref().is_some_and(|e| e.lost > 0);
    let repeated = summary
        .resent
        .as_ref()
        .is_some_and(|r| r.accepted_again > 0);
    Ok(!lost && !repeated && summary.slo.iter().all(|s| s.met))
}

/// Waits until every accepted notification reached the sink, or the timeout. Deliveries of
/// ids that were never answered 202 (an ingress that died after storing) do not count.
async fn drain(sink: &Sink, accepted: &HashSet<String>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    while sink.delivered_of(accepted) < accepted.len() && Instant::now() < deadline {
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "loadgen: waiting for deliveries: {} of {} arrived",
                sink.delivered_of(accepted),
                accepted.len()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

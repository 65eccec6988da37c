//! `dispatcher`: the Herald binary. Parses the command line and runs the chosen role until
//! SIGINT or SIGTERM, then shuts it down gracefully and exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use herald::config::{Cli, Command, DeliveryConfig, LogArgs, LogFormat, NatsConfig};
use herald::delivery::{Delivery, Senders};
use herald::ingress::{self, Ingress};
use herald::jetstream::{self, Names};
use herald::metrics::Metrics;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => {
                let ingress = Ingress::start(*config)
                    .await
                    .context("starting the ingress")?;
                until_signal().await;
                ingress.shutdown().await;
            }
            Command::Deliver(args) => {
                let metrics = Arc::new(Metrics::new());
                let health = ingress::health::serve(args.metrics_listen, metrics.clone())
                    .await
                    .context("starting the health endpoint")?;
                let delivery = start_delivery(&args.nats, &args.delivery, metrics).await?;
                health.set_ready(true);
                until_signal().await;
                delivery.shutdown().await;
            }
            Command::Run(args) => {
                let metrics = Arc::new(Metrics::new());
                let nats = args.serve.nats.clone();
                let ingress = Ingress::start_with(args.serve, metrics.clone())
                    .await
                    .context("starting the ingress")?;
                let delivery = start_delivery(&nats, &args.delivery, metrics).await?;
                until_signal().await;
                // Ingress first: what it accepted is in JetStream for the next delivery.
                ingress.shutdown().await;
                delivery.shutdown().await;
            }
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// Connects, waits until the streams exist (NATS may come up later), starts delivery.
async fn start_delivery(
    nats: &NatsConfig,
    config: &DeliveryConfig,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Delivery> {
    let client = jetstream::connect(nats)
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    let names = Names::new(&nats.prefix);
    // Fail fast on a sender misconfiguration, before anything is consumed.
    Senders::from_config(config).map_err(anyhow::Error::msg)?;
    loop {
        match jetstream::ensure_streams(&js, &names, nats).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(error = %err, "streams not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    loop {
        match Delivery::start(
            js.clone(),
            names.clone(),
            config,
            Senders::from_config(config).map_err(anyhow::Error::msg)?,
            metrics.clone(),
        )
        .await
        {
            Ok(delivery) => return Ok(delivery),
            Err(err) => {
                tracing::warn!(error = %err, "delivery could not start; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn init_tracing(args: &LogArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log).context("parsing --log")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn until_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received, shutting down");
}

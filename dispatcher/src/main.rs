//! `dispatcher`: the Herald binary. Parses the command line and runs the chosen role until
//! SIGINT or SIGTERM, then shuts it down gracefully and exits 0.

use anyhow::Context;
use clap::Parser;
use herald::config::{Cli, Command, LogArgs, LogFormat};
use herald::ingress::Ingress;
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
                let token = ingress.shutdown_token();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    token.cancel();
                });
                ingress.wait().await;
            }
        }
        Ok(())
    })
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

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}

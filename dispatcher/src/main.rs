//! `dispatcher`: the Herald binary. Parses the command line and runs the chosen role until
//! SIGINT or SIGTERM, then shuts it down gracefully and exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use herald::admission::Yielding;
use herald::config::{
    Cli, Command, DeliveryConfig, DestinationConfig, KeyCommand, LogArgs, LogFormat, NatsConfig,
    RecordStore, RecorderConfig, StoreConfig, TenantCommand,
};
use herald::delivery::{Delivery, Senders};
use herald::ingress::{self, Ingress};
use herald::jetstream::{self, Names};
use herald::metrics::Metrics;
use herald::recorder::{self, Recorder, Sink};
use herald::redis_store::RedisStore;
use herald::status::StatusCache;
use herald::{postgres, tenants};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log)?;
    // The recorder is background work through and through: `record` alone is niced, and
    // in `run` the recorder gets a runtime of its own, niced, so the door (and high's
    // deliveries) win the CPU when it is short.
    let alone_in_background = matches!(cli.command, Command::Record(_));
    let runtime = build_runtime("herald", alone_in_background.then_some(cli.background_nice))?;
    let background = match cli.command {
        Command::Run(_) => Some(build_runtime("herald-bg", Some(cli.background_nice))?),
        _ => None,
    };
    let background_handle = background.as_ref().map(|r| r.handle().clone());
    let outcome = runtime.block_on(async {
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
                let delivery = start_delivery(
                    &args.nats,
                    &args.delivery,
                    &args.destinations,
                    &args.store,
                    metrics,
                    Yielding::default(),
                )
                .await?;
                health.set_ready(true);
                until_signal().await;
                delivery.shutdown().await;
            }
            Command::Record(args) => {
                let metrics = Arc::new(Metrics::new());
                let health = ingress::health::serve(args.metrics_listen, metrics.clone())
                    .await
                    .context("starting the health endpoint")?;
                let recorder = start_recorder(
                    &args.nats,
                    &args.store,
                    &args.recorder,
                    metrics,
                    Yielding::default(),
                )
                .await?;
                health.set_ready(true);
                until_signal().await;
                recorder.shutdown().await;
            }
            Command::Run(args) => {
                let metrics = Arc::new(Metrics::new());
                let nats = args.serve.nats.clone();
                let store = args.serve.store.clone();
                let destinations = args.serve.destinations.clone();
                let (delivery_config, recorder_config) = (args.delivery, args.recorder);
                let ingress = Ingress::start_with(args.serve, metrics.clone())
                    .await
                    .context("starting the ingress")?;
                let yielding = Yielding::to(ingress.admission());
                // Delivery shares the door's runtime: high's deliveries are as urgent as
                // its requests, and low's yield by pausing. The recorder is background
                // through and through: started on the niced runtime, so every task it
                // spawns (and its NATS and store connections) runs there.
                let delivery = start_delivery(
                    &nats,
                    &delivery_config,
                    &destinations,
                    &store,
                    metrics.clone(),
                    yielding.clone(),
                )
                .await?;
                let background = background_handle.expect("run has a background runtime");
                let recorder = background
                    .spawn(async move {
                        start_recorder(&nats, &store, &recorder_config, metrics, yielding).await
                    })
                    .await
                    .context("starting the recorder")??;
                until_signal().await;
                // Ingress first: what it accepted is in JetStream for the next delivery.
                ingress.shutdown().await;
                delivery.shutdown().await;
                recorder.shutdown().await;
            }
            Command::Migrate(store) => {
                // Often started together with a fresh PostgreSQL: wait for it a minute.
                let pool = postgres::pool_waiting(&store, Duration::from_secs(60))?;
                postgres::migrate(&pool, &store.pg_schema)
                    .await
                    .context("applying migrations")?;
                println!("migrations applied to schema {}", store.pg_schema);
                return Ok(());
            }
            Command::Tenant(TenantCommand::Create {
                name,
                rate,
                burst,
                max_payload,
                store,
            }) => {
                let pool = postgres::pool(&store)?;
                let limits = tenants::TenantLimits {
                    rate_per_sec: rate,
                    burst,
                    max_payload,
                };
                let tenant = tenants::create_tenant(&pool, &name, limits).await?;
                println!(
                    "{}",
                    serde_json::json!({
                        "id": tenant.id,
                        "name": tenant.name,
                        "webhook_secret": tenant.webhook_secret,
                    })
                );
                return Ok(());
            }
            Command::Key(KeyCommand::Create { tenant, store }) => {
                let pool = postgres::pool(&store)?;
                let key = tenants::create_key(&pool, &tenant).await?;
                println!(
                    "{}",
                    serde_json::json!({ "id": key.id, "tenant": tenant, "key": key.key })
                );
                return Ok(());
            }
            Command::Key(KeyCommand::Revoke { id, store }) => {
                let pool = postgres::pool(&store)?;
                tenants::revoke_key(&pool, id).await?;
                println!("{}", serde_json::json!({ "id": id, "revoked": true }));
                return Ok(());
            }
        }
        tracing::info!("stopped");
        Ok(())
    });
    // Outside any runtime's context, where dropping one may block.
    drop(background);
    outcome
}

/// A multi-threaded runtime whose threads are named `name` and, with `nice`, niced.
fn build_runtime(name: &str, nice: Option<i32>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name(name);
    if let Some(nice) = nice.filter(|&n| n > 0) {
        builder.on_thread_start(move || renice_this_thread(nice));
    }
    builder
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

/// Lowers the calling thread's scheduling priority (Linux nice values are per thread).
fn renice_this_thread(nice: i32) {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
    };
    if failed {
        tracing::warn!(
            nice,
            error = %std::io::Error::last_os_error(),
            "could not lower a background thread's priority"
        );
    }
}

/// Connects to NATS and waits until Herald's streams exist (NATS may come up later).
async fn connect_streams(
    nats: &NatsConfig,
) -> anyhow::Result<(async_nats::jetstream::Context, Names)> {
    let client = jetstream::connect(nats)
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(client);
    let names = Names::new(&nats.prefix);
    while let Err(err) = jetstream::ensure_streams(&js, &names, nats).await {
        tracing::warn!(error = %err, "streams not ready; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok((js, names))
}

/// Retries `start` every second until it succeeds (consumers cannot be made while NATS
/// is away).
async fn retry_start<T, F, Fut>(what: &str, mut start: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, async_nats::Error>>,
{
    loop {
        match start().await {
            Ok(started) => return started,
            Err(err) => {
                tracing::warn!(error = %err, "{what} could not start; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn start_delivery(
    nats: &NatsConfig,
    config: &DeliveryConfig,
    destinations: &DestinationConfig,
    store: &StoreConfig,
    metrics: Arc<Metrics>,
    yielding: Yielding,
) -> anyhow::Result<Delivery> {
    let policy = Arc::new(destinations.policy());
    let directory = Arc::new(tenants::Directory::new(
        postgres::pool(store)?,
        Duration::from_secs(60),
    ));
    // Fail fast on a sender misconfiguration, before anything is consumed.
    Senders::from_config(config, None, policy.clone()).map_err(anyhow::Error::msg)?;
    let (js, names) = connect_streams(nats).await?;
    Ok(retry_start("delivery", || {
        let senders = Senders::from_config(config, Some(directory.clone()), policy.clone())
            .expect("checked above");
        Delivery::start(
            js.clone(),
            names.clone(),
            config,
            senders,
            metrics.clone(),
            yielding.clone(),
        )
    })
    .await)
}

async fn start_recorder(
    nats: &NatsConfig,
    store: &StoreConfig,
    config: &RecorderConfig,
    metrics: Arc<Metrics>,
    yielding: Yielding,
) -> anyhow::Result<Recorder> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if !config.record_skip.contains(&RecordStore::Postgres) {
        let pool = postgres::pool(store)?;
        if store.migrate {
            postgres::migrate(&pool, &store.pg_schema)
                .await
                .context("applying migrations")?;
        }
        let redis =
            Arc::new(RedisStore::new(&store.redis_url, &nats.prefix).map_err(anyhow::Error::msg)?);
        let cache = Arc::new(StatusCache::new(redis));
        sinks.push(Arc::new(recorder::postgres::PostgresSink::new(
            pool,
            Some((cache, config.status_cache_ttl)),
        )));
    }
    if !config.record_skip.contains(&RecordStore::Mongo) {
        let client = recorder::mongo::client(&store.mongo_url)
            .await
            .context("--mongo-url")?;
        sinks.push(Arc::new(recorder::mongo::MongoSink::new(
            client.database(&store.mongo_db),
            config.message_retention,
        )));
    }
    let (js, names) = connect_streams(nats).await?;
    Ok(retry_start("recorder", || {
        Recorder::start(
            js.clone(),
            names.clone(),
            config,
            sinks.clone(),
            metrics.clone(),
            yielding.clone(),
        )
    })
    .await)
}

fn init_tracing(args: &LogArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log).context("parsing --log")?;
    // stderr: stdout carries the commands' JSON (tenant and key creation), for pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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

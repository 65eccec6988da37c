//! The one composition root: builds each role (`serve`, `deliver`, `record`, `run`) from
//! its settings and stops it in the order that keeps Herald's promises. The binary, the
//! integration tests and the benchmarks all start Herald through [`App`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use async_nats::jetstream::context::ContextBuilder;

use crate::admission::{Admission, Yielding};
use crate::config::{
    AuthMode, DeliverConfig, DeliveryConfig, EgressConfig, NatsConfig, PgConfig, RecordConfig,
    RecordStore, RecorderConfig, RunConfig, ServeConfig, StoreConfig,
};
use crate::delivery::{Delivery, Senders};
use crate::dependencies::{self, Dependencies, Target, WhenDown};
use crate::ingress::{self, Door, Ingress};
use crate::jetstream::{self, Names, Readiness};
pub use crate::lifecycle::StartError;
use crate::lifecycle::{self, Backoff, Health, HealthServer, ReadyState};
use crate::metrics::{Metrics, Roles};
use crate::publisher::Publisher;
use crate::recorder::{self, Recorder, Sink};
use crate::redis_store::RedisStore;
use crate::scheduler::Scheduler;
use crate::status::StatusCache;
use crate::trace::{OtlpConfig, Spans};
use crate::{postgres, tenants};

/// A running role: whichever of the ingress, delivery and the recorder it holds, and the
/// health endpoints of a role without the ingress.
pub struct App {
    ingress: Option<Ingress>,
    delivery: Option<Delivery>,
    recorder: Option<Recorder>,
    health: Option<HealthServer>,
    /// The whole stop gets this long (`--shutdown-timeout`).
    stop_deadline: Duration,
    /// Cancels starts still retrying (NATS or consumers not there yet).
    starting: CancellationToken,
    /// Flushed last, once every part that records spans has stopped.
    spans: Spans,
    /// NATS and the stores this role uses, watched from start to stop.
    dependencies: Option<Arc<Dependencies>>,
}

impl App {
    /// `dispatcher serve`: the ingress alone, with `/metrics` at `config.metrics_listen`.
    /// It listens at once (answering 503 until NATS is reached); a dependency not reached
    /// within `config.startup_timeout` shows in [`App::startup_failure`].
    pub async fn serve(config: ServeConfig) -> Result<App, StartError> {
        let spans = spans(config.otlp.as_ref())?;
        let metrics = Arc::new(Metrics::for_roles(Roles::INGRESS));
        let metrics_listen = config.metrics_listen;
        // The ingress answers from cached keys and waits for Redis a bounded time: a
        // store blip degrades it, and pulling every replica out of a load balancer for it
        // would turn a blip into an outage.
        let dependencies = Dependencies::watch(
            vec![
                dependencies::nats(&config.nats.nats_url, WhenDown::Unready),
                pg_target(&config.store.pg, WhenDown::Degraded)?,
                redis_target(&config.store.redis_url, WhenDown::Degraded)?,
            ],
            config.startup_timeout,
        );
        let stop_deadline = config.shutdown_timeout;
        let ingress = start_ingress(config, metrics, spans.clone(), &dependencies).await?;
        let health = operators_port(metrics_listen, ingress.health()).await?;
        Ok(App {
            ingress: Some(ingress),
            health: Some(health),
            spans,
            stop_deadline,
            dependencies: Some(dependencies),
            ..App::empty()
        })
    }

    /// `dispatcher deliver`: delivery workers, with health endpoints at
    /// `config.metrics_listen`. Returns once started, or fails with the line naming what
    /// was not reached within `config.startup_timeout`.
    pub async fn deliver(config: DeliverConfig) -> Result<App, StartError> {
        config
            .delivery
            .check_retention(config.nats.stream_max_age)
            .map_err(StartError::Settings)?;
        let dependencies = Dependencies::watch(
            vec![
                dependencies::nats(&config.nats.nats_url, WhenDown::Unready),
                // Tenants' webhook secrets: no signed send without them.
                pg_target(&config.pg, WhenDown::Unready)?,
            ],
            config.startup_timeout,
        );
        let mut app = App {
            spans: spans(config.otlp.as_ref())?,
            stop_deadline: config.shutdown_timeout,
            dependencies: Some(dependencies.clone()),
            ..App::empty()
        };
        let metrics = Arc::new(Metrics::for_roles(Roles::DELIVERY));
        // Health first: alive (and saying why it is not ready) while NATS is awaited.
        let (health, started) =
            health_server(config.metrics_listen, metrics.clone(), &dependencies).await?;
        app.health = Some(health);
        let start = async {
            let (client, js, names) = connect_streams(&config.nats, &app.starting).await?;
            let delivery = start_delivery(
                &js,
                &names,
                &config.delivery,
                &config.egress,
                &config.pg,
                metrics,
                Yielding::default(),
                app.spans.clone(),
                &app.starting,
            )
            .await?;
            let _ = started.set(Started {
                client,
                depth: delivery.depth(),
            });
            Ok(delivery)
        };
        app.delivery = Some(within_startup(&dependencies, start).await?);
        Ok(app)
    }

    /// `dispatcher record`: the recorder, with health endpoints at `config.metrics_listen`;
    /// bounded by `config.startup_timeout` as `deliver` is.
    pub async fn record(config: RecordConfig) -> Result<App, StartError> {
        let skips = |store| config.recorder.record_skip.contains(&store);
        let mut targets = vec![
            dependencies::nats(&config.nats.nats_url, WhenDown::Unready),
            redis_target(&config.store.redis_url, WhenDown::Unready)?,
        ];
        if !skips(RecordStore::Postgres) {
            targets.push(pg_target(&config.store.pg, WhenDown::Unready)?);
        }
        if !skips(RecordStore::Mongo) {
            targets.push(mongo_target(&config.store.mongo_url, WhenDown::Unready).await?);
        }
        let dependencies = Dependencies::watch(targets, config.startup_timeout);
        let mut app = App {
            stop_deadline: config.shutdown_timeout,
            dependencies: Some(dependencies.clone()),
            ..App::empty()
        };
        let metrics = Arc::new(Metrics::for_roles(Roles::RECORDER));
        let (health, started) =
            health_server(config.metrics_listen, metrics.clone(), &dependencies).await?;
        app.health = Some(health);
        let start = async {
            if config.migrate {
                migrate(&config.store.pg).await?;
            }
            let (client, js, names) = connect_streams(&config.nats, &app.starting).await?;
            let recorder = start_recorder(
                &js,
                &names,
                &config.store,
                &config.recorder,
                metrics,
                Yielding::default(),
                &app.starting,
            )
            .await?;
            // The recorder holds no notifications waiting: its queue depth is zero.
            let _ = started.set(Started {
                client,
                depth: Arc::new(|_| 0),
            });
            Ok(recorder)
        };
        app.recorder = Some(within_startup(&dependencies, start).await?);
        Ok(app)
    }

    /// `dispatcher run`: the three roles in one process. Delivery shares the door's
    /// runtime (high's deliveries are as urgent as its requests; low's yield by pausing);
    /// the recorder is started on `background` when given (a niced runtime), so every task
    /// it spawns, and its store connections, run there. Ready while the ingress is: the
    /// stores degrade it (delivery and the recorder wait for them), as in `serve`.
    pub async fn run(
        config: RunConfig,
        background: Option<tokio::runtime::Handle>,
    ) -> Result<App, StartError> {
        let RunConfig {
            serve,
            delivery,
            recorder,
        } = config;
        delivery
            .check_retention(serve.nats.stream_max_age)
            .map_err(StartError::Settings)?;
        if serve.auth == AuthMode::Off && delivery.webhook_secret.is_none() {
            return Err(StartError::Settings(String::from(
                "--auth off: the webhooks of notifications without a tenant are signed with --webhook-secret, which is not set (make one with: echo whsec_$(openssl rand -base64 32))",
            )));
        }
        let metrics = Arc::new(Metrics::new());
        let (nats, store, egress) = (
            serve.nats.clone(),
            serve.store.clone(),
            serve.egress.clone(),
        );
        let mut targets = vec![
            dependencies::nats(&nats.nats_url, WhenDown::Unready),
            pg_target(&store.pg, WhenDown::Degraded)?,
            redis_target(&store.redis_url, WhenDown::Degraded)?,
        ];
        if !recorder.record_skip.contains(&RecordStore::Mongo) {
            targets.push(mongo_target(&store.mongo_url, WhenDown::Degraded).await?);
        }
        let dependencies = Dependencies::watch(targets, serve.startup_timeout);
        let spans = spans(serve.otlp.as_ref())?;
        let metrics_listen = serve.metrics_listen;
        let stop_deadline = serve.shutdown_timeout;
        let ingress = start_ingress(serve, metrics.clone(), spans.clone(), &dependencies).await?;
        let health = operators_port(metrics_listen, ingress.health()).await?;
        let mut app = App {
            ingress: Some(ingress),
            health: Some(health),
            spans,
            stop_deadline,
            dependencies: Some(dependencies.clone()),
            ..App::empty()
        };
        let yielding = Yielding::to(app.ingress.as_ref().expect("just set").admission());
        let start_delivery = async {
            let (_, js, names) = connect_streams(&nats, &app.starting).await?;
            start_delivery(
                &js,
                &names,
                &delivery,
                &egress,
                &store.pg,
                metrics.clone(),
                yielding.clone(),
                app.spans.clone(),
                &app.starting,
            )
            .await
        };
        app.delivery = Some(within_startup(&dependencies, start_delivery).await?);
        // The recorder makes its own NATS connection inside `start`, so that connection's
        // task, like every task the recorder spawns, runs on the background runtime.
        let starting = app.starting.clone();
        let start = async move {
            let (_, js, names) = connect_streams(&nats, &starting).await?;
            start_recorder(&js, &names, &store, &recorder, metrics, yielding, &starting).await
        };
        let start = async {
            match background {
                Some(handle) => handle
                    .spawn(start)
                    .await
                    .map_err(|e| StartError::Settings(format!("starting the recorder: {e}")))?,
                None => start.await,
            }
        };
        app.recorder = Some(within_startup(&dependencies, start).await?);
        Ok(app)
    }

    /// Resolves, with the line to exit on, when a dependency was not reached within the
    /// start-up timeout; never, once each was reached (a later loss is a reconnect).
    pub async fn startup_failure(&self) -> String {
        match &self.dependencies {
            Some(d) => d.startup_failure().await,
            None => std::future::pending().await,
        }
    }

    /// The longest [`App::shutdown`] takes.
    pub fn stop_deadline(&self) -> Duration {
        self.stop_deadline
    }

    fn empty() -> App {
        App {
            ingress: None,
            delivery: None,
            recorder: None,
            health: None,
            stop_deadline: crate::config::SHUTDOWN_TIMEOUT,
            dependencies: None,
            starting: CancellationToken::new(),
            spans: Spans::default(),
        }
    }

    /// The ingress's address, or else the health endpoints'.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.ingress
            .as_ref()
            .map(Ingress::local_addr)
            .or_else(|| self.health.as_ref().map(HealthServer::local_addr))
    }

    /// The operators' port: `/healthz`, `/readyz` and `/metrics`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().map(HealthServer::local_addr)
    }

    pub fn ingress(&self) -> Option<&Ingress> {
        self.ingress.as_ref()
    }

    /// Stops every part, each within its deadline, in the order that keeps "202 means
    /// durable" and loses nothing: the ingress first (what it accepted is in JetStream
    /// for the next delivery), then delivery (in-flight sends finish or are NAKed), then
    /// the recorder (written batches acknowledged), then the health endpoints.
    pub async fn shutdown(mut self) {
        self.starting.cancel();
        // One deadline for the whole stop; each part gets what is left of it.
        let deadline = tokio::time::Instant::now() + self.stop_deadline;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(ingress) = self.ingress.take() {
            lifecycle::within("the ingress", left(), ingress.shutdown()).await;
        }
        if let Some(delivery) = self.delivery.take() {
            lifecycle::within("delivery", left(), delivery.shutdown()).await;
        }
        if let Some(recorder) = self.recorder.take() {
            lifecycle::within("the recorder", left(), recorder.shutdown()).await;
        }
        if let Some(health) = self.health.take() {
            health.shutdown().await;
        }
        lifecycle::within("span export", left(), self.spans.shutdown()).await;
        tracing::info!("stopped");
    }
}

/// The ingress on `--listen` (bound first, so a port in use fails at once), with the
/// parts it serves with: NATS and its readiness supervision, Redis, PostgreSQL (migrated
/// when asked), the door's scheduler, admission and publisher.
async fn start_ingress(
    config: ServeConfig,
    metrics: Arc<Metrics>,
    spans: Spans,
    dependencies: &Arc<Dependencies>,
) -> Result<Ingress, StartError> {
    let listener = ingress::bind(config.listen).await?;
    let client = jetstream::connect(&config.nats).await?;
    let js = ContextBuilder::new()
        .timeout(config.publisher.publish_timeout)
        .ack_timeout(config.publisher.publish_timeout)
        // Herald bounds acks itself (publisher.rs); this only must not bind first.
        .max_ack_inflight(config.publisher.max_inflight + 1)
        .build(client.clone());
    let names = Names::new(&config.nats.prefix);
    let readiness = Arc::new(Readiness::default());
    let stop_background = CancellationToken::new();
    let supervisor = tokio::spawn(readiness.clone().supervise(
        client.clone(),
        js.clone(),
        names.clone(),
        config.nats.clone(),
        stop_background.clone(),
    ));
    // RedisStore's error already names --redis-url.
    let redis = Arc::new(RedisStore::new(
        &config.store.redis_url,
        &config.nats.prefix,
    )?);
    let key = config
        .store
        .pg
        .sealing_key()
        .map_err(StartError::Settings)?;
    let pool = postgres::pool(&config.store.pg)?;
    if config.migrate {
        migrate_on(&pool, &config.store.pg).await?;
    }
    let tenants = Arc::new(tenants::Directory::new(pool, config.key_cache_ttl, key));
    let scheduler = Arc::new(Scheduler::new(config.scheduler));
    let admission = Arc::new(Admission::new(config.admission));
    let controller = tokio::spawn(
        admission
            .clone()
            .run(metrics.clone(), stop_background.clone()),
    );
    let due = tokio::spawn(poll_due_backlog(
        js.clone(),
        names.clone(),
        admission.clone(),
        stop_background.clone(),
    ));
    let publisher = Publisher::start(
        js.clone(),
        names.clone(),
        scheduler.clone(),
        admission.clone(),
        metrics.clone(),
        config.publisher.clone(),
        spans.clone(),
    );
    let door = Door {
        client,
        js,
        names,
        readiness,
        redis,
        tenants,
        scheduler,
        admission,
        publisher,
        metrics,
        spans,
        dependencies: Some(dependencies.clone()),
        background: vec![supervisor, controller, due],
        stop_background,
    };
    Ingress::start(listener, config, door)
}

/// Feeds admission the delivery consumers' due backlog, once a second while requests
/// arrive: the pipeline's signal where delivery runs elsewhere (`serve` alone). An idle
/// door asks nothing.
async fn poll_due_backlog(
    js: async_nats::jetstream::Context,
    names: Names,
    admission: Arc<Admission>,
    stop: CancellationToken,
) {
    const EVERY: Duration = Duration::from_secs(1);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        if !admission.busy() {
            continue;
        }
        let due = jetstream::due_backlog(&js, &names).await;
        for priority in crate::model::Priority::ALL {
            if let Some(messages) = due[priority.index()] {
                admission.due_backlog(priority, messages);
            }
        }
    }
}

/// The span export `otlp` asks for, or none.
fn spans(otlp: Option<&OtlpConfig>) -> Result<Spans, StartError> {
    otlp.map_or(Ok(Spans::default()), |c| {
        Spans::start(c).map_err(StartError::Settings)
    })
}

/// Applies the migrations, waiting up to a minute for PostgreSQL (often started together
/// with Herald).
pub async fn migrate(pg: &PgConfig) -> Result<(), StartError> {
    let pool = postgres::pool_waiting(pg, Duration::from_secs(60))?;
    migrate_on(&pool, pg).await
}

/// Applies the migrations, then seals the webhook secrets an older release stored in
/// plaintext, and checks that the sealing key opens the ones already sealed.
async fn migrate_on(pool: &sqlx::PgPool, pg: &PgConfig) -> Result<(), StartError> {
    let key = pg.sealing_key().map_err(StartError::Settings)?;
    postgres::migrate(pool, &pg.pg_schema).await?;
    let sealed = tenants::seal_stored_secrets(pool, &key)
        .await
        .map_err(|e| StartError::Settings(e.to_string()))?;
    if sealed > 0 {
        tracing::info!(
            tenants = sealed,
            "sealed webhook secrets stored in plaintext"
        );
    }
    Ok(())
}

/// What a role without the ingress reports once it has started.
struct Started {
    client: async_nats::Client,
    depth: Arc<dyn Fn(crate::model::Priority) -> usize + Send + Sync>,
}

/// The health endpoints of `deliver` and `record`, up before the role has started: not
/// ready until `Started` is set, then ready while NATS and `dependencies` are up.
async fn health_server(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    dependencies: &Arc<Dependencies>,
) -> Result<(HealthServer, Arc<std::sync::OnceLock<Started>>), StartError> {
    let started = Arc::new(std::sync::OnceLock::<Started>::new());
    let (ready, depth) = (started.clone(), started.clone());
    let health = Health {
        metrics,
        ready: Arc::new(move || match ready.get() {
            None => ReadyState::Unready("starting: waiting for NATS and the streams"),
            Some(s) if s.client.connection_state() == async_nats::connection::State::Connected => {
                ReadyState::Ready
            }
            Some(_) => ReadyState::Unready("NATS is disconnected"),
        }),
        depth: Arc::new(move |p| depth.get().map_or(0, |s| (s.depth)(p))),
        dependencies: Some(dependencies.clone()),
    };
    Ok((operators_port(addr, health).await?, started))
}

/// `start`, or the line naming what was not reached within the start-up timeout.
async fn within_startup<T>(
    dependencies: &Dependencies,
    start: impl std::future::Future<Output = Result<T, StartError>>,
) -> Result<T, StartError> {
    tokio::select! {
        started = start => started,
        line = dependencies.startup_failure() => Err(StartError::Unreachable(line)),
    }
}

fn pg_target(pg: &PgConfig, when_down: WhenDown) -> Result<Target, StartError> {
    dependencies::postgres(pg, when_down)
        .map_err(|e| StartError::Settings(format!("--database-url: {e}")))
}

fn redis_target(url: &str, when_down: WhenDown) -> Result<Target, StartError> {
    dependencies::redis(url, when_down)
        .map_err(|e| StartError::Settings(format!("--redis-url: {e}")))
}

async fn mongo_target(url: &str, when_down: WhenDown) -> Result<Target, StartError> {
    Ok(dependencies::mongodb(url, when_down).await?)
}

/// The operators' port (`--metrics-listen`) answering `health`.
async fn operators_port(addr: SocketAddr, health: Health) -> Result<HealthServer, StartError> {
    HealthServer::start(addr, health)
        .await
        .map_err(|source| StartError::Bind {
            what: "--metrics-listen",
            source,
        })
}

/// Connects to NATS and waits until Herald's streams exist (NATS may come up later).
pub async fn connect_streams(
    nats: &NatsConfig,
    stop: &CancellationToken,
) -> Result<(async_nats::Client, async_nats::jetstream::Context, Names), StartError> {
    let client = jetstream::connect(nats).await?;
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::new(&nats.prefix);
    lifecycle::retry("checking the streams", start_backoff(), stop, || {
        jetstream::ensure_streams(&js, &names, nats)
    })
    .await
    .ok_or(StartError::Stopped)?;
    Ok((client, js, names))
}

fn start_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(2))
}

/// Delivery on `js`, its consumers made (retried while NATS refuses them).
#[allow(clippy::too_many_arguments)]
pub async fn start_delivery(
    js: &async_nats::jetstream::Context,
    names: &Names,
    config: &DeliveryConfig,
    egress: &EgressConfig,
    pg: &PgConfig,
    metrics: Arc<Metrics>,
    yielding: Yielding,
    spans: Spans,
    stop: &CancellationToken,
) -> Result<Delivery, StartError> {
    let policy = Arc::new(egress.policy());
    let key = pg.sealing_key().map_err(StartError::Settings)?;
    let directory = Arc::new(tenants::Directory::new(
        postgres::pool(pg)?,
        Duration::from_secs(60),
        key,
    ));
    // Fail fast on a sender misconfiguration, before anything is consumed.
    Senders::from_config(config, None, policy.clone()).map_err(StartError::Settings)?;
    lifecycle::retry("starting delivery", start_backoff(), stop, || {
        let senders = Senders::from_config(config, Some(directory.clone()), policy.clone())
            .expect("checked above");
        Delivery::start(
            js.clone(),
            names.clone(),
            config,
            senders,
            Some(directory.clone()),
            metrics.clone(),
            yielding.clone(),
            spans.clone(),
        )
    })
    .await
    .ok_or(StartError::Stopped)
}

/// The recorder's sinks for `store`: PostgreSQL (with the Redis status cache) and
/// MongoDB, less those `config.record_skip` leaves out.
pub async fn sinks(
    prefix: &str,
    store: &StoreConfig,
    config: &RecorderConfig,
) -> Result<Vec<Arc<dyn Sink>>, StartError> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if !config.record_skip.contains(&RecordStore::Postgres) {
        let pool = postgres::pool(&store.pg)?;
        // RedisStore's error already names --redis-url.
        let redis = Arc::new(RedisStore::new(&store.redis_url, prefix)?);
        let cache = Arc::new(StatusCache::new(redis));
        sinks.push(Arc::new(recorder::postgres::PostgresSink::new(
            pool,
            Some((cache, config.status_cache_ttl)),
        )));
    }
    if !config.record_skip.contains(&RecordStore::Mongo) {
        let client = recorder::mongo::client(&store.mongo_url).await?;
        sinks.push(Arc::new(recorder::mongo::MongoSink::new(
            client.database(&store.mongo_db),
            config.message_retention,
        )));
    }
    Ok(sinks)
}

/// The recorder on `js`, its consumers made (retried while NATS refuses them).
pub async fn start_recorder(
    js: &async_nats::jetstream::Context,
    names: &Names,
    store: &StoreConfig,
    config: &RecorderConfig,
    metrics: Arc<Metrics>,
    yielding: Yielding,
    stop: &CancellationToken,
) -> Result<Recorder, StartError> {
    let sinks = sinks(&names.prefix, store, config).await?;
    lifecycle::retry("starting the recorder", start_backoff(), stop, || {
        Recorder::start(
            js.clone(),
            names.clone(),
            config,
            sinks.clone(),
            metrics.clone(),
            yielding.clone(),
        )
    })
    .await
    .ok_or(StartError::Stopped)
}

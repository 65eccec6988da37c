//! `bench-recorder`: how fast the recorder writes, next to the raw write limits of the
//! same stores measured in the same run.
//!
//! 1. Publishes N notifications to NOTIFY and N `delivered` events to EVENTS under a fresh
//!    prefix.
//! 2. Runs the recorder with only the PostgreSQL sink (plus the Redis status cache), then
//!    only the MongoDB sink, and times until every message is written.
//! 3. Measures the raw limits with the same batch size: COPY into a copy of the
//!    `notifications` table, `insert_many` of the same documents, pipelined Redis SETs.
//!
//! Prints one Markdown table. Everything it creates is removed at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use herald::config::{NatsConfig, RecorderConfig, StoreConfig};
use herald::jetstream::Names;
use herald::metrics::Metrics;
use herald::recorder::{self, Recorder, Sink};
use mongodb::bson::{doc, Document};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Notifications (and as many events).
    #[arg(long, default_value_t = 50_000)]
    n: usize,
    /// Recorder batch size, also the raw benchmarks' batch size.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// NATS server URL.
    #[arg(long, default_value_t = NatsConfig::default().nats_url)]
    nats_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let prefix = format!("benchrec{}_", std::process::id());
    let mut store = StoreConfig::default();
    store.pg.pg_schema = prefix.clone();
    store.mongo_db = prefix.clone();
    let nats = NatsConfig {
        nats_url: args.nats_url.clone(),
        prefix: prefix.clone(),
        ..NatsConfig::default()
    };
    let result = run(&args, &nats, &store).await;
    cleanup(&nats, &store).await;
    result
}

async fn run(args: &Args, nats: &NatsConfig, store: &StoreConfig) -> anyhow::Result<()> {
    let n = args.n;
    let client = herald::jetstream::connect(nats).await?;
    let js = async_nats::jetstream::new(client);
    let names = Names::new(&nats.prefix);
    herald::jetstream::ensure_streams(&js, &names, nats)
        .await
        .map_err(|e| anyhow::anyhow!("streams: {e}"))?;
    let pool = herald::postgres::pool(&store.pg)?;
    herald::postgres::migrate(&pool, &store.pg.pg_schema).await?;

    let tenant = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let mut acks = Vec::with_capacity(1000);
    let started = Instant::now();
    for i in 0..n {
        let id = herald::model::new_id();
        let notification = serde_json::json!({
            "v": 1, "id": id, "tenant": tenant, "priority": "medium", "channel": "webhook",
            "recipient": "https://hooks.example.com/herald",
            "payload": { "order": i, "text": "x".repeat(200) },
            "accepted_at": now,
        });
        let event = serde_json::json!({
            "id": id, "tenant": tenant, "event": "delivered", "priority": "medium",
            "channel": "webhook", "attempt": 1, "at": now,
        });
        acks.push(
            js.publish(
                names.subject(
                    herald::model::Priority::Medium,
                    herald::model::Channel::Webhook,
                ),
                serde_json::to_vec(&notification)?.into(),
            )
            .await?,
        );
        acks.push(
            js.publish(names.event_subject(), serde_json::to_vec(&event)?.into())
                .await?,
        );
        if acks.len() >= 1000 {
            futures::future::try_join_all(acks.drain(..).map(std::future::IntoFuture::into_future))
                .await?;
        }
    }
    futures::future::try_join_all(acks.drain(..).map(std::future::IntoFuture::into_future)).await?;
    eprintln!(
        "published {n} notifications + {n} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let config = RecorderConfig {
        record_batch: args.batch,
        ..Default::default()
    };
    let redis = Arc::new(
        herald::redis_store::RedisStore::new(&store.redis_url, &nats.prefix)
            .map_err(anyhow::Error::msg)?,
    );
    let cache = Arc::new(herald::status::StatusCache::new(redis));
    let postgres: Arc<dyn Sink> = Arc::new(recorder::postgres::PostgresSink::new(
        pool.clone(),
        Some((cache, Duration::from_secs(600))),
    ));
    let pg_time = time_recorder(&js, &names, &config, postgres, n).await?;
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE status = 'delivered' AND recipient IS NOT NULL",
    )
    .fetch_one(&pool)
    .await?;
    anyhow::ensure!(
        rows as usize == n,
        "PostgreSQL holds {rows} delivered rows, not {n}"
    );

    let mongo = recorder::mongo::client(&store.mongo_url).await?;
    let database = mongo.database(&store.mongo_db);
    let messages = database.collection::<Document>(recorder::mongo::COLLECTION);
    let mongo_sink: Arc<dyn Sink> = Arc::new(recorder::mongo::MongoSink::new(
        database.clone(),
        Duration::from_secs(86_400),
    ));
    let mongo_time = time_recorder(&js, &names, &config, mongo_sink, n).await?;
    let docs = messages
        .count_documents(doc! { "payload": { "$exists": true } })
        .await?;
    anyhow::ensure!(
        docs as usize == n,
        "MongoDB holds {docs} documents, not {n}"
    );

    // Raw limits, same batch size.
    sqlx::query("CREATE TABLE raw_copy (LIKE notifications INCLUDING ALL)")
        .execute(&pool)
        .await?;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(args.batch) {
        let mut conn = pool.acquire().await?;
        let mut copy = conn
            .copy_in_raw("COPY raw_copy (id, tenant_id, priority, channel, recipient, status, attempts, accepted_at, updated_at) FROM STDIN")
            .await?;
        let mut text = String::with_capacity(chunk.len() * 160);
        let at = now.to_rfc3339();
        for _ in chunk {
            text.push_str(&format!(
                "{}\t{tenant}\tmedium\twebhook\thttps://hooks.example.com/herald\taccepted\t0\t{at}\t{at}\n",
                herald::model::new_id()
            ));
        }
        copy.send(text.as_bytes()).await?;
        copy.finish().await?;
    }
    let copy_time = started.elapsed();

    let raw = database.collection::<Document>("raw_insert");
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(args.batch) {
        let docs: Vec<Document> = chunk
            .iter()
            .map(|i| {
                doc! {
                    "_id": herald::model::new_id().to_string(), "tenant": tenant.to_string(),
                    "priority": "medium", "channel": "webhook",
                    "recipient": "https://hooks.example.com/herald",
                    "payload": { "order": *i as i64, "text": "x".repeat(200) },
                    "accepted_at": mongodb::bson::DateTime::now(), "log": [],
                }
            })
            .collect();
        raw.insert_many(docs).ordered(false).await?;
    }
    let insert_time = started.elapsed();

    let redis = redis::Client::open(store.redis_url.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(args.batch) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET")
                .arg(format!("{}raw:{i}", nats.prefix))
                .arg("1|{\"status\":\"delivered\",\"attempts\":1}")
                .arg("PX")
                .arg(600_000)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let set_time = started.elapsed();

    let rate = |count: usize, t: Duration| count as f64 / t.as_secs_f64();
    println!(
        "| what (batch {}) | messages | seconds | per second |",
        args.batch
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| recorder → PostgreSQL (+ Redis status cache): NOTIFY + EVENTS | {} | {:.2} | {:.0} |",
        2 * n,
        pg_time.as_secs_f64(),
        rate(2 * n, pg_time)
    );
    println!(
        "| raw PostgreSQL COPY of notification rows | {n} | {:.2} | {:.0} |",
        copy_time.as_secs_f64(),
        rate(n, copy_time)
    );
    println!(
        "| recorder → FerretDB (MongoDB protocol): NOTIFY + EVENTS | {} | {:.2} | {:.0} |",
        2 * n,
        mongo_time.as_secs_f64(),
        rate(2 * n, mongo_time)
    );
    println!(
        "| raw FerretDB insert_many of the same documents | {n} | {:.2} | {:.0} |",
        insert_time.as_secs_f64(),
        rate(n, insert_time)
    );
    println!(
        "| raw Redis pipelined SET | {n} | {:.2} | {:.0} |",
        set_time.as_secs_f64(),
        rate(n, set_time)
    );
    Ok(())
}

/// Starts a recorder with one sink and returns the time until it has written (and so
/// acknowledged) all `n` notifications and `n` events.
async fn time_recorder(
    js: &async_nats::jetstream::Context,
    names: &Names,
    config: &RecorderConfig,
    sink: Arc<dyn Sink>,
    n: usize,
) -> anyhow::Result<Duration> {
    let store = sink.name();
    let metrics = Arc::new(Metrics::new());
    let started = Instant::now();
    let recorder = Recorder::start(
        js.clone(),
        names.clone(),
        config,
        vec![sink],
        metrics.clone(),
        herald::admission::Yielding::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("recorder: {e}"))?;
    while metrics.recorded_count(store, "notify") + metrics.recorded_count(store, "events")
        < 2 * n as u64
    {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("the recorder did not catch up within 10 minutes");
        }
        tracing::debug!(
            notify = metrics.recorded_count(store, "notify"),
            events = metrics.recorded_count(store, "events"),
            "progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    recorder.shutdown().await;
    Ok(took)
}

async fn cleanup(nats: &NatsConfig, store: &StoreConfig) {
    if let Ok(client) = async_nats::connect(&nats.nats_url).await {
        let js = async_nats::jetstream::new(client);
        for name in ["NOTIFY", "DLQ", "EVENTS"] {
            let _ = js.delete_stream(format!("{}{name}", nats.prefix)).await;
        }
    }
    if let Ok(pool) = herald::postgres::pool(&store.pg) {
        let _ = sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            store.pg.pg_schema
        ))
        .execute(&pool)
        .await;
    }
    if let Ok(client) = recorder::mongo::client(&store.mongo_url).await {
        let _ = client.database(&store.mongo_db).drop().await;
    }
    if let Ok(client) = redis::Client::open(store.redis_url.as_str()) {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", nats.prefix))
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            for chunk in keys.chunks(1000) {
                let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
            }
        }
    }
}

//! `bench-floor`: the stores' own cost of what Herald asks of them per notification, with
//! no Herald in between, paced at a rate (bench-cost.sh reads each store's CPU from /proc
//! around it, beside the whole pipeline's figures).
//!
//! - `documents`: the two documents a notification leaves in the document store (its
//!   `messages` document and one `deliveries` entry), each collection written by its own
//!   task with one unordered `insert_many` per `--linger` of arrivals, as the recorder's two
//!   consumers write them, under Herald's own indexes.
//! - `redis-set`: one `SET` per notification, each sent as it falls due on one multiplexed
//!   connection (so writes that meet in Redis share its fsync, as the ingress's do): the
//!   least a durable idempotency claim costs with `appendfsync always`.
//! - `redis-get`: the same with `GET`: one Redis round trip per request that writes nothing.
//!
//! Everything it creates lives under a fresh prefix and is removed at the end.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use herald::config::{RecorderConfig, StoreConfig};
use herald::events::{Event, EventKind};
use herald::model::{Channel, Priority, WireNotification};
use herald::recorder::mongo::{self, MongoSink};
use mongodb::bson::Document;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, ValueEnum)]
enum What {
    Documents,
    RedisSet,
    RedisGet,
}

#[derive(Parser)]
struct Args {
    what: What,
    /// Notifications per second.
    #[arg(long)]
    rate: f64,
    /// How long to keep the pace.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long each collection's writer gathers arrivals before one `insert_many`; the
    /// recorder's default `--record-linger` when not given.
    #[arg(long, value_parser = humantime::parse_duration)]
    linger: Option<Duration>,
    /// Approximate payload bytes per notification (loadgen's default).
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = StoreConfig::default();
    let prefix = format!("costfloor{}", std::process::id());
    let started = Instant::now();
    let done = match args.what {
        What::Documents => documents(&args, &store, &prefix).await?,
        What::RedisSet | What::RedisGet => redis_paced(&args, &store, &prefix).await?,
    };
    let seconds = started.elapsed().as_secs_f64();
    println!("{done} {:.0}", done as f64 / seconds);
    Ok(())
}

/// Writes both collections' documents at the pace; returns the notifications written.
async fn documents(args: &Args, store: &StoreConfig, prefix: &str) -> anyhow::Result<u64> {
    let client = mongo::client(&store.mongo_url).await?;
    let database = client.database(prefix);
    MongoSink::new(database.clone(), Duration::from_secs(86_400))
        .ensure_indexes()
        .await
        .map_err(anyhow::Error::msg)?;
    let tenant = uuid::Uuid::now_v7();
    let pad = "x".repeat(args.payload_bytes.saturating_sub(60));
    let writers = [mongo::COLLECTION, mongo::DELIVERIES].map(|collection| {
        let collection = database.collection::<Document>(collection);
        let pad = pad.clone();
        let (rate, duration) = (args.rate, args.duration);
        let linger = args
            .linger
            .unwrap_or(RecorderConfig::default().record_linger);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut written = 0u64;
            while started.elapsed() < duration {
                tokio::time::sleep(linger).await;
                let due = (started.elapsed().min(duration).as_secs_f64() * rate) as u64;
                let docs = (written..due)
                    .map(|seq| match collection.name() {
                        mongo::COLLECTION => notification(tenant, seq, &pad),
                        _ => Ok(delivery(tenant, seq)),
                    })
                    .collect::<anyhow::Result<Vec<Document>>>()?;
                if !docs.is_empty() {
                    collection.insert_many(docs).ordered(false).await?;
                }
                written = due;
            }
            anyhow::Ok(written)
        })
    });
    let mut notifications = 0;
    for writer in writers {
        notifications = writer.await??;
    }
    let dropped = database.drop().await;
    client.shutdown().await;
    dropped?;
    Ok(notifications)
}

/// The `messages` document the recorder writes for a webhook notification (its own
/// builder, so the floor follows the document's shape).
fn notification(tenant: uuid::Uuid, seq: u64, pad: &str) -> anyhow::Result<Document> {
    let payload = serde_json::json!({
        "loadgen": { "run": "floor", "seq": seq, "sent_ns": 0 },
        "pad": pad,
    });
    let payload = serde_json::value::to_raw_value(&payload)?;
    let n = WireNotification {
        v: herald::model::WIRE_VERSION,
        id: herald::model::new_id(),
        tenant,
        priority: Priority::Medium,
        channel: Channel::Webhook,
        recipient: "http://127.0.0.1:40000/hook".into(),
        payload: &payload,
        idempotency_key: None,
        send_at: None,
        expires_at: None,
        metadata: None,
        accepted_at: chrono::Utc::now(),
        event_type: None,
    };
    mongo::document(&n, seq, mongo::Form::Structured).map_err(anyhow::Error::msg)
}

/// The delivery log entry the recorder writes for a first attempt that was delivered.
fn delivery(tenant: uuid::Uuid, seq: u64) -> Document {
    let event = Event {
        id: herald::model::new_id(),
        tenant,
        event: EventKind::Delivered,
        priority: Priority::Medium,
        channel: Channel::Webhook,
        attempt: 1,
        at: chrono::Utc::now(),
        error: None,
        status: Some(200),
        retry_in_ms: None,
        duration_ms: Some(1),
        provider: None,
        response: None,
    };
    mongo::delivery_entry(&event, seq, 0)
}

/// One command per notification as it falls due, each awaited on its own task.
async fn redis_paced(args: &Args, store: &StoreConfig, prefix: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(store.redis_url.as_str())?;
    let conn = client.get_multiplexed_async_connection().await?;
    let total = (args.rate * args.duration.as_secs_f64()) as u64;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(total as usize);
    for seq in 0..total {
        let due = started + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let mut conn = conn.clone();
        let mut command = match args.what {
            What::RedisSet => redis::cmd("SET"),
            _ => redis::cmd("GET"),
        };
        command.arg(format!("{prefix}:{seq}"));
        if let What::RedisSet = args.what {
            command.arg("1").arg("PX").arg(60_000);
        }
        pending.push(tokio::spawn(async move {
            command.query_async::<Option<String>>(&mut conn).await
        }));
    }
    for command in pending {
        command.await??;
    }
    if let What::RedisSet = args.what {
        let mut conn = conn.clone();
        for chunk in (0..total).collect::<Vec<_>>().chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|seq| format!("{prefix}:{seq}")).collect();
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
    }
    Ok(total)
}

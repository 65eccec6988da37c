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
use herald::recorder::mongo::{self, MongoSink};
use mongodb::bson::{self, doc, Document};

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
    let tenant = uuid::Uuid::now_v7().to_string();
    let pad = "x".repeat(args.payload_bytes.saturating_sub(60));
    let writers = [mongo::COLLECTION, mongo::DELIVERIES].map(|collection| {
        let collection = database.collection::<Document>(collection);
        let (tenant, pad) = (tenant.clone(), pad.clone());
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
                let docs: Vec<Document> = (written..due)
                    .map(|seq| match collection.name() {
                        mongo::COLLECTION => notification(&tenant, seq, &pad),
                        _ => delivery(&tenant, seq),
                    })
                    .collect();
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

/// A `messages` document with the fields the recorder writes for a webhook notification.
fn notification(tenant: &str, seq: u64, pad: &str) -> Document {
    doc! {
        "_id": herald::model::new_id().to_string(),
        "tenant": tenant,
        "priority": "medium",
        "channel": "webhook",
        "recipient": "http://127.0.0.1:40000/hook",
        "accepted_at": bson::DateTime::now(),
        "stream_seq": seq as i64,
        "payload": { "loadgen": { "run": "floor", "seq": seq as i64, "sent_ns": 0i64 }, "pad": pad },
    }
}

/// A `deliveries` entry for a first attempt that was delivered.
fn delivery(tenant: &str, seq: u64) -> Document {
    doc! {
        "_id": format!("{}:{seq}", herald::model::new_id()),
        "notification_id": herald::model::new_id().to_string(),
        "tenant": tenant,
        "seq": seq as i64,
        "index": 0i64,
        "event": "delivered",
        "attempt": 1i64,
        "at": bson::DateTime::now(),
        "status": 200i32,
        "duration_ms": 1i64,
    }
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

//! Recorder sink for MongoDB: one document per notification in `messages` (`_id` = the
//! notification id, the payload as a sub-document), and its delivery log as one document
//! per outcome event in `deliveries` (`_id` = `<id>:<event stream sequence>`, and
//! `.<index>` after it for an event past the first of its message; indexed by
//! notification). Every write is an unordered `insert_many`, and a duplicate `_id` (a
//! redelivered batch) counts as done, so the recorder never updates a document: appends
//! are MongoDB's cheapest bulk write, documents do not grow, and FerretDB's update path
//! (which stalls under concurrent bulk upserts, see docs/architecture.md) is never taken.
//! Retention: TTL indexes on `messages.accepted_at` and `deliveries.at`.
//!
//! A document the server refuses for good (a per-document write error that is not a
//! duplicate and not transient) must not stall its consumer: a message is written again
//! with its payload and metadata as JSON text (`payload_json`, `metadata_json`), which any
//! server takes, and what is refused even so is logged and left out.

use std::time::Duration;

use async_nats::jetstream::Message;
use futures::future::BoxFuture;
use mongodb::bson::{self, doc, Document};
use mongodb::options::ClientOptions;
use tokio::sync::OnceCell;

use super::{Sink, Source};
use crate::events::Event;
use crate::model::WireNotification;

pub const COLLECTION: &str = "messages";
/// The delivery log: one document per outcome event.
pub const DELIVERIES: &str = "deliveries";
const DUPLICATE_KEY: i32 = 11000;

/// Per-document write errors worth trying again (a failover, a shutdown, a timeout);
/// every other one refuses that document for good.
const TRANSIENT_WRITE_ERRORS: [i32; 15] = [
    6, 7, 50, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436,
];

pub struct MongoSink {
    database: mongodb::Database,
    retention: Duration,
    indexes: OnceCell<()>,
}

/// A client that does not connect until used and gives up on a request after 3 s.
pub async fn client(url: &str) -> Result<mongodb::Client, mongodb::error::Error> {
    let mut options = ClientOptions::parse(url).await?;
    options.app_name = Some(String::from("herald"));
    options.server_selection_timeout = Some(Duration::from_secs(3));
    options.connect_timeout = Some(Duration::from_secs(3));
    mongodb::Client::with_options(options)
}

/// Drops the database `name` at `url` (a namespace's purge).
pub async fn drop_database(url: &str, name: &str) -> Result<(), mongodb::error::Error> {
    let client = client(url).await?;
    let dropped = client.database(name).drop().await;
    // Shut down before the process ends: a client merely dropped spawns a task to end its
    // sessions, which panics inside the driver when the runtime is going away.
    client.shutdown().await;
    dropped
}

/// A server's refusal in one line, its message and code, without the driver's dump of
/// the whole answer; other errors as the driver words them.
pub fn refusal(err: &mongodb::error::Error) -> String {
    match err.kind.as_ref() {
        mongodb::error::ErrorKind::Command(e) => {
            format!("{} (code {} {})", e.message, e.code, e.code_name)
        }
        kind => kind.to_string(),
    }
}

impl MongoSink {
    pub fn new(database: mongodb::Database, retention: Duration) -> Self {
        MongoSink {
            database,
            retention,
            indexes: OnceCell::new(),
        }
    }

    /// Creates the indexes once. The TTL indexes are MongoDB's retention; a server that
    /// refuses them (see the FerretDB notes in docs/architecture.md) is logged, not fatal.
    pub async fn ensure_indexes(&self) -> Result<(), String> {
        self.indexes
            .get_or_try_init(|| async {
                let create = |collection: &str, index: Document| {
                    self.database
                        .run_command(doc! { "createIndexes": collection, "indexes": [index] })
                };
                create(
                    COLLECTION,
                    doc! { "key": { "tenant": 1, "_id": -1 }, "name": "tenant_id" },
                )
                .await
                .map_err(|e| refusal(&e))?;
                create(
                    DELIVERIES,
                    doc! { "key": { "notification_id": 1, "seq": 1 }, "name": "notification" },
                )
                .await
                .map_err(|e| refusal(&e))?;
                let retention = self.retention.as_secs() as i64;
                let mut refused = Vec::new();
                for (collection, field) in [(COLLECTION, "accepted_at"), (DELIVERIES, "at")] {
                    let ttl = doc! {
                        "key": { field: 1 }, "name": "retention", "expireAfterSeconds": retention,
                    };
                    if let Err(err) = create(collection, ttl).await {
                        refused.push((collection, refusal(&err)));
                    }
                }
                // One line at start, in words: FerretDB refuses TTL indexes at every start.
                if let Some((_, why)) = refused.first() {
                    let collections: Vec<&str> = refused.iter().map(|(c, _)| *c).collect();
                    tracing::warn!(
                        "the document store refused the retention TTL index on {}: {why}; documents are kept until removed",
                        collections.join(" and ")
                    );
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// `insert_many`, unordered; documents whose `_id` exists already count as written.
    /// `Ok` holds the positions in `docs` of documents refused for good; an error means
    /// the write may succeed if tried again.
    async fn insert(&self, collection: &str, docs: Vec<Document>) -> Result<Vec<usize>, String> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let result = self
            .database
            .collection::<Document>(collection)
            .insert_many(docs)
            .ordered(false)
            .await;
        match result {
            Ok(_) => Ok(Vec::new()),
            Err(err) => match *err.kind {
                mongodb::error::ErrorKind::InsertMany(ref failure)
                    if failure.write_concern_error.is_none()
                        && failure
                            .write_errors
                            .iter()
                            .flatten()
                            .all(|e| !TRANSIENT_WRITE_ERRORS.contains(&e.code)) =>
                {
                    let refused = failure.write_errors.iter().flatten();
                    Ok(refused
                        .filter(|e| e.code != DUPLICATE_KEY)
                        .map(|e| {
                            tracing::warn!(collection, code = e.code, error = %e.message, "document refused by the server");
                            e.index
                        })
                        .collect())
                }
                _ => Err(err.to_string()),
            },
        }
    }

    async fn notifications(&self, batch: &[Message]) -> Result<(), String> {
        let mut docs = Vec::with_capacity(batch.len());
        let mut written = Vec::with_capacity(batch.len());
        for (n, seq, _) in super::notifications(batch) {
            match document(&n, seq, Form::Structured) {
                Ok(d) => {
                    docs.push(d);
                    written.push((n, seq));
                }
                Err(err) => {
                    tracing::error!(seq, error = %err, "notification not convertible to BSON; not recorded in MongoDB")
                }
            }
        }
        let refused = self.insert(COLLECTION, docs).await?;
        if refused.is_empty() {
            return Ok(());
        }
        let as_text = refused
            .iter()
            .filter_map(|&i| written.get(i))
            .filter_map(|(n, seq)| document(n, *seq, Form::Text).ok())
            .collect();
        let still = self.insert(COLLECTION, as_text).await?;
        if !still.is_empty() {
            tracing::error!(
                documents = still.len(),
                "notifications refused by MongoDB even with their payload as text; not recorded there"
            );
        }
        Ok(())
    }

    async fn events(&self, batch: &[Message]) -> Result<(), String> {
        let entries = super::events(batch)
            .iter()
            .map(|(event, seq, index)| delivery_entry(event, *seq, *index))
            .collect();
        let refused = self.insert(DELIVERIES, entries).await?;
        if !refused.is_empty() {
            tracing::error!(
                documents = refused.len(),
                "delivery log entries refused by MongoDB; not recorded there"
            );
        }
        Ok(())
    }
}

/// The delivery log entry of one event: the `index`-th of the EVENTS message at `seq`.
pub fn delivery_entry(event: &Event<'_>, seq: u64, index: u32) -> Document {
    let seq = seq as i64;
    // Index 0 keeps the key a single-event message had before events were batched.
    let id = match index {
        0 => format!("{}:{seq}", event.id),
        _ => format!("{}:{seq}.{index}", event.id),
    };
    let mut entry = doc! {
        "_id": id,
        "notification_id": event.id.to_string(),
        "tenant": event.tenant.to_string(),
        "seq": seq,
        "index": index as i64,
        "event": event.event.as_str(),
        "attempt": event.attempt as i64,
        "at": bson::DateTime::from_chrono(event.at),
    };
    if let Some(error) = &event.error {
        entry.insert("error", error.as_ref());
    }
    if let Some(status) = event.status {
        entry.insert("status", i32::from(status));
    }
    if let Some(provider) = &event.provider {
        entry.insert("provider", provider.as_ref());
    }
    if let Some(response) = &event.response {
        entry.insert("response", response.as_ref());
    }
    if let Some(ms) = event.duration_ms {
        entry.insert("duration_ms", i64::try_from(ms).unwrap_or(i64::MAX));
    }
    if let Some(next) = event.next_attempt_at() {
        entry.insert("next_attempt_at", bson::DateTime::from_chrono(next));
    }
    entry
}

/// How a notification's payload and metadata go into its document.
#[derive(Clone, Copy)]
pub enum Form {
    /// As sub-documents, queryable.
    Structured,
    /// As JSON text (`payload_json`, `metadata_json`), for a server that refused them.
    Text,
}

/// The document of one notification (`seq`: its NOTIFY stream sequence).
pub fn document(n: &WireNotification<'_>, seq: u64, form: Form) -> Result<Document, String> {
    let mut d = doc! {
        "_id": n.id.to_string(),
        "tenant": n.tenant.to_string(),
        "priority": n.priority.as_str(),
        "channel": n.channel.as_str(),
        "recipient": n.recipient.as_ref(),
        "accepted_at": bson::DateTime::from_chrono(n.accepted_at),
        "stream_seq": seq as i64,
    };
    let fields = [("payload", Some(n.payload)), ("metadata", n.metadata)];
    for (name, json) in fields {
        let Some(json) = json else { continue };
        match form {
            Form::Structured => {
                let value: Document =
                    serde_json::from_str(json.get()).map_err(|e| e.to_string())?;
                d.insert(name, value);
            }
            Form::Text => {
                d.insert(format!("{name}_json"), json.get());
            }
        }
    }
    if let Some(key) = &n.idempotency_key {
        d.insert("idempotency_key", key.as_ref());
    }
    if let Some(at) = n.send_at {
        d.insert("send_at", bson::DateTime::from_chrono(at));
    }
    if let Some(at) = n.expires_at {
        d.insert("expires_at", bson::DateTime::from_chrono(at));
    }
    Ok(d)
}

impl Sink for MongoSink {
    fn name(&self) -> &'static str {
        "mongo"
    }

    fn write<'a>(
        &'a self,
        source: Source,
        batch: &'a [Message],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.ensure_indexes().await?;
            match source {
                Source::Notify => self.notifications(batch).await,
                Source::Events => self.events(batch).await,
            }
        })
    }
}

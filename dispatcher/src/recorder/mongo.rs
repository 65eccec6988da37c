//! Recorder sink for MongoDB: one document per notification in `messages` (`_id` = the
//! notification id, the payload as a sub-document), and its delivery log as one document
//! per outcome event in `deliveries` (`_id` = `<id>:<event stream sequence>`, and
//! `.<index>` after it for an event past the first of its message; indexed by
//! notification). Every write is an unordered `insert_many`, and a duplicate `_id` (a
//! redelivered batch) counts as done, so the recorder never updates a document: appends
//! are MongoDB's cheapest bulk write, documents do not grow, and FerretDB's update path
//! (which stalls under concurrent bulk upserts, see docs/architecture.md) is never taken.
//! Retention: TTL indexes on `messages.accepted_at` and `deliveries.at`.

use std::time::Duration;

use async_nats::jetstream::Message;
use futures::future::BoxFuture;
use mongodb::bson::{self, doc, Document};
use mongodb::options::ClientOptions;
use tokio::sync::OnceCell;

use super::{Sink, Source};
use crate::model::WireNotification;

pub const COLLECTION: &str = "messages";
/// The delivery log: one document per outcome event.
pub const DELIVERIES: &str = "deliveries";
const DUPLICATE_KEY: i32 = 11000;

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
    async fn ensure_indexes(&self) -> Result<(), String> {
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
                .map_err(|e| e.to_string())?;
                create(
                    DELIVERIES,
                    doc! { "key": { "notification_id": 1, "seq": 1 }, "name": "notification" },
                )
                .await
                .map_err(|e| e.to_string())?;
                let retention = self.retention.as_secs() as i64;
                for (collection, field) in [(COLLECTION, "accepted_at"), (DELIVERIES, "at")] {
                    let ttl = doc! {
                        "key": { field: 1 }, "name": "retention", "expireAfterSeconds": retention,
                    };
                    if let Err(err) = create(collection, ttl).await {
                        tracing::warn!(collection, error = %err, "TTL index refused; documents are not expired by the server");
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// `insert_many`, unordered; documents whose `_id` exists already count as written.
    async fn insert(&self, collection: &str, docs: Vec<Document>) -> Result<(), String> {
        if docs.is_empty() {
            return Ok(());
        }
        let result = self
            .database
            .collection::<Document>(collection)
            .insert_many(docs)
            .ordered(false)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match *err.kind {
                mongodb::error::ErrorKind::InsertMany(ref failure)
                    if failure.write_concern_error.is_none()
                        && failure
                            .write_errors
                            .iter()
                            .flatten()
                            .all(|e| e.code == DUPLICATE_KEY) =>
                {
                    Ok(())
                }
                _ => Err(err.to_string()),
            },
        }
    }

    async fn notifications(&self, batch: &[Message]) -> Result<(), String> {
        let mut docs = Vec::with_capacity(batch.len());
        for (n, seq) in super::notifications(batch) {
            match document(&n, seq) {
                Ok(d) => docs.push(d),
                Err(err) => {
                    tracing::error!(seq, error = %err, "notification not convertible to BSON; not recorded in MongoDB")
                }
            }
        }
        self.insert(COLLECTION, docs).await
    }

    async fn events(&self, batch: &[Message]) -> Result<(), String> {
        let mut entries = Vec::with_capacity(batch.len());
        for (event, seq, index) in super::events(batch) {
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
            if let Some(ms) = event.duration_ms {
                entry.insert("duration_ms", i64::try_from(ms).unwrap_or(i64::MAX));
            }
            if let Some(next) = event.next_attempt_at() {
                entry.insert("next_attempt_at", bson::DateTime::from_chrono(next));
            }
            entries.push(entry);
        }
        self.insert(DELIVERIES, entries).await
    }
}

/// The document of one notification (`seq`: its NOTIFY stream sequence).
fn document(n: &WireNotification<'_>, seq: u64) -> Result<Document, String> {
    let payload: Document = serde_json::from_str(n.payload.get()).map_err(|e| e.to_string())?;
    let mut d = doc! {
        "_id": n.id.to_string(),
        "tenant": n.tenant.to_string(),
        "priority": n.priority.as_str(),
        "channel": n.channel.as_str(),
        "recipient": n.recipient.as_ref(),
        "payload": payload,
        "accepted_at": bson::DateTime::from_chrono(n.accepted_at),
        "stream_seq": seq as i64,
    };
    if let Some(metadata) = &n.metadata {
        let metadata: Document = serde_json::from_str(metadata.get()).map_err(|e| e.to_string())?;
        d.insert("metadata", metadata);
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

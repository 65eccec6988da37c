//! Recorder sink for MongoDB: one document per notification in `messages` (`_id` = the
//! notification id), with the payload as a sub-document and a `log` of delivery outcomes.
//!
//! - NOTIFY → `insert_many`, unordered: a duplicate `_id` (a redelivered batch) counts as
//!   done. A duplicate may also be a stub an earlier-recorded event created; those ids get
//!   their fields set by one follow-up `update` command.
//! - EVENTS → one `update` command per batch (many statements, unordered): `$addToSet`
//!   of the log entry with upsert. The entry carries the event's stream sequence, so a
//!   redelivered batch adds nothing twice.
//! - Retention: a TTL index on `accepted_at` (`--message-retention`).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::Message;
use futures::future::BoxFuture;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::ClientOptions;
use tokio::sync::OnceCell;

use super::{sequence, Sink, Source};
use crate::events::Event;
use crate::model::WireNotification;

pub const COLLECTION: &str = "messages";
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

    fn messages(&self) -> mongodb::Collection<Document> {
        self.database.collection(COLLECTION)
    }

    /// Creates the indexes once. The TTL index is MongoDB's retention; a server that
    /// refuses it (see the README's FerretDB notes) is logged, not fatal.
    async fn ensure_indexes(&self) -> Result<(), String> {
        self.indexes
            .get_or_try_init(|| async {
                let tenant = doc! { "key": { "tenant": 1, "_id": -1 }, "name": "tenant_id" };
                self.database
                    .run_command(doc! { "createIndexes": COLLECTION, "indexes": [tenant] })
                    .await
                    .map_err(|e| e.to_string())?;
                let ttl = doc! {
                    "key": { "accepted_at": 1 },
                    "name": "retention",
                    "expireAfterSeconds": self.retention.as_secs() as i64,
                };
                if let Err(err) = self
                    .database
                    .run_command(doc! { "createIndexes": COLLECTION, "indexes": [ttl] })
                    .await
                {
                    tracing::warn!(error = %err, "TTL index on messages.accepted_at refused; documents are not expired by the server");
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    async fn notifications(&self, batch: &[Message]) -> Result<(), String> {
        let mut seen = HashSet::with_capacity(batch.len());
        let mut docs = Vec::with_capacity(batch.len());
        for message in batch {
            match document(message) {
                Ok(d) => {
                    if seen.insert(d.get_str("_id").unwrap_or_default().to_string()) {
                        docs.push(d);
                    }
                }
                Err(err) => {
                    tracing::error!(seq = sequence(message), error = %err, "undecodable notification; not recorded in MongoDB")
                }
            }
        }
        if docs.is_empty() {
            return Ok(());
        }
        let duplicates: Vec<usize> = match self.messages().insert_many(&docs).ordered(false).await {
            Ok(_) => return Ok(()),
            Err(err) => match *err.kind {
                mongodb::error::ErrorKind::InsertMany(ref failure)
                    if failure.write_concern_error.is_none()
                        && failure
                            .write_errors
                            .iter()
                            .flatten()
                            .all(|e| e.code == DUPLICATE_KEY) =>
                {
                    failure
                        .write_errors
                        .iter()
                        .flatten()
                        .map(|e| e.index)
                        .collect()
                }
                _ => return Err(err.to_string()),
            },
        };
        // Present already: fill in the fields (a no-op for a redelivered batch, the
        // document for a stub made by an event recorded first).
        let updates: Vec<Document> = duplicates
            .iter()
            .filter_map(|&i| docs.get(i))
            .map(|d| {
                let mut fields = d.clone();
                let id = fields.remove("_id").unwrap_or(Bson::Null);
                fields.remove("log");
                doc! { "q": { "_id": id }, "u": { "$set": fields } }
            })
            .collect();
        self.update(updates).await
    }

    async fn events(&self, batch: &[Message]) -> Result<(), String> {
        let mut updates = Vec::with_capacity(batch.len());
        for message in batch {
            let event: Event<'_> = match serde_json::from_slice(&message.payload) {
                Ok(e) => e,
                Err(err) => {
                    tracing::error!(seq = sequence(message), error = %err, "undecodable event; not recorded in MongoDB");
                    continue;
                }
            };
            let mut entry = doc! {
                "seq": sequence(message) as i64,
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
            updates.push(doc! {
                "q": { "_id": event.id.to_string() },
                "u": { "$addToSet": { "log": entry } },
                "upsert": true,
            });
        }
        self.update(updates).await
    }

    /// One `update` command, unordered; any write error fails the batch.
    async fn update(&self, updates: Vec<Document>) -> Result<(), String> {
        if updates.is_empty() {
            return Ok(());
        }
        let reply = self
            .database
            .run_command(doc! { "update": COLLECTION, "updates": updates, "ordered": false })
            .await
            .map_err(|e| e.to_string())?;
        match reply.get_array("writeErrors") {
            Ok(errors) if !errors.is_empty() => Err(format!("update write errors: {errors:?}")),
            _ => Ok(()),
        }
    }
}

/// The document of one NOTIFY message.
fn document(message: &Message) -> Result<Document, String> {
    let n: WireNotification<'_> =
        serde_json::from_slice(&message.payload).map_err(|e| e.to_string())?;
    let payload: Document = serde_json::from_str(n.payload.get()).map_err(|e| e.to_string())?;
    let mut d = doc! {
        "_id": n.id.to_string(),
        "tenant": n.tenant.to_string(),
        "priority": n.priority.as_str(),
        "channel": n.channel.as_str(),
        "recipient": n.recipient.as_ref(),
        "payload": payload,
        "accepted_at": bson::DateTime::from_chrono(n.accepted_at),
        "stream_seq": sequence(message) as i64,
        "log": [],
    };
    if let Some(metadata) = n.metadata {
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

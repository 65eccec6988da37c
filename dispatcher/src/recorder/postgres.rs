//! Recorder sink for PostgreSQL: one UNNEST statement per batch, then the rows it wrote go
//! to the Redis status cache in one pipeline (outcomes only: a fresh `accepted` row is left
//! to PostgreSQL).
//!
//! - NOTIFY → `INSERT … ON CONFLICT (id) DO UPDATE … WHERE recipient IS NULL`: a new row
//!   with status `accepted`, or the fill-in of a row an earlier-recorded event created.
//! - EVENTS → one statement with three parts: every event into `delivery_attempts` (keyed
//!   by the event's stream sequence and index in its message), `dead` events into
//!   `dead_letters`, and the newest event per notification into `notifications` where it
//!   is newer than what is there.
//!   `delivered` is final: a later failure of a duplicate delivery (at-least-once) is
//!   kept in `delivery_attempts` but does not take the status back.
//!
//! Both statements take their rows of a table in id order, so recorders writing NOTIFY and
//! EVENTS batches at once wait for each other but never deadlock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Message;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Sink, Source};
use crate::events::Event;
use crate::status::{NotificationStatus, StatusCache, COLUMNS};

pub struct PostgresSink {
    pool: PgPool,
    cache: Option<(Arc<StatusCache>, Duration)>,
}

impl PostgresSink {
    /// `cache`: the status cache and its TTL, written after each commit.
    pub fn new(pool: PgPool, cache: Option<(Arc<StatusCache>, Duration)>) -> Self {
        PostgresSink { pool, cache }
    }

    async fn notifications(&self, batch: &[Message]) -> Result<Vec<NotificationStatus>, String> {
        let (mut ids, mut tenants, mut priorities, mut channels, mut recipients, mut accepted) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut trace_ids: Vec<Option<String>> = Vec::with_capacity(batch.len());
        // Rows in id order, the order the events statement takes them in too: two
        // statements that lock the same rows in one order cannot deadlock. Stream order is
        // not id order (ids are drawn by many requests at once).
        let mut decoded = super::notifications(batch);
        decoded.sort_unstable_by_key(|(n, _, _)| n.id);
        for (n, _, trace) in decoded {
            trace_ids.push(trace.map(|t| t.trace_id_hex()));
            ids.push(n.id);
            tenants.push(n.tenant);
            priorities.push(n.priority.as_str());
            channels.push(n.channel.as_str());
            recipients.push(n.recipient.into_owned());
            accepted.push(n.accepted_at);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Only the rows an earlier event created come back (for the status cache): a fresh
        // `accepted` row is not cached, so it need not cross the wire.
        sqlx::query_as(&format!(
            "WITH written AS (
             INSERT INTO notifications
                 (id, tenant_id, priority, channel, recipient, status, attempts, accepted_at, updated_at,
                  trace_id)
             SELECT t.id, t.tenant, t.priority, t.channel, t.recipient, 'accepted', 0, t.accepted, t.accepted,
                    t.trace_id
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                         $7::text[])
                  AS t(id, tenant, priority, channel, recipient, accepted, trace_id)
             ON CONFLICT (id) DO UPDATE SET
                 recipient = EXCLUDED.recipient,
                 accepted_at = EXCLUDED.accepted_at,
                 tenant_id = EXCLUDED.tenant_id,
                 trace_id = EXCLUDED.trace_id,
                 version = notifications.version + 1
             WHERE notifications.recipient IS NULL
             RETURNING {COLUMNS})
             SELECT * FROM written WHERE status <> 'accepted'"
        ))
        .bind(&ids)
        .bind(&tenants)
        .bind(&priorities)
        .bind(&channels)
        .bind(&recipients)
        .bind(&accepted)
        .bind(&trace_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }

    async fn events(&self, batch: &[Message]) -> Result<Vec<NotificationStatus>, String> {
        let mut rows = EventColumns::default();
        for (event, seq, index) in super::events(batch) {
            rows.push(&event, seq, index);
        }
        if rows.ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as(&format!(
            "WITH ev AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::int[], $4::text[],
                                      $5::timestamptz[], $6::text[], $7::int[], $8::uuid[],
                                      $9::text[], $10::text[], $11::timestamptz[], $12::int[],
                                      $13::int[], $14::text[], $15::text[])
                     AS t(id, seq, attempt, outcome, at, error, code, tenant, priority, channel, next_at, idx,
                          duration_ms, provider, response)
             ),
             attempts AS (
                 INSERT INTO delivery_attempts (notification_id, event_seq, event_index, attempt, outcome, at, error, status_code,
                                                duration_ms, next_attempt_at, provider, response)
                 SELECT id, seq, idx, attempt, outcome, at, error, code, duration_ms, next_at, provider, response
                 FROM ev
                 ORDER BY id, seq, idx
                 ON CONFLICT DO NOTHING
             ),
             dead AS (
                 INSERT INTO dead_letters (notification_id, tenant_id, attempts, error, dead_at)
                 SELECT DISTINCT ON (id) id, tenant, attempt, error, at FROM ev
                 WHERE outcome = 'dead' ORDER BY id, at DESC, seq DESC, idx DESC
                 ON CONFLICT (notification_id) DO UPDATE SET
                     attempts = EXCLUDED.attempts, error = EXCLUDED.error, dead_at = EXCLUDED.dead_at
                 WHERE EXCLUDED.dead_at > dead_letters.dead_at
             ),
             -- Per notification the event that decides its status: a delivery if the
             -- batch has one (delivered is final), else a cancel, else the newest event.
             latest AS (
                 SELECT DISTINCT ON (id) * FROM ev
                 ORDER BY id, (outcome = 'delivered') DESC, (outcome = 'canceled') DESC,
                          at DESC, seq DESC, idx DESC
             ),
             -- The newest failure of the batch, even when a later event (delivered, whose
             -- 2xx is no failure) has none.
             errors AS (
                 SELECT DISTINCT ON (id) id, error, code FROM ev
                 WHERE error IS NOT NULL
                 ORDER BY id, at DESC, seq DESC, idx DESC
             )
             INSERT INTO notifications AS n
                 (id, tenant_id, priority, channel, status, attempts, updated_at, delivered_at,
                  last_error, last_status, next_attempt_at)
             SELECT l.id, l.tenant, l.priority, l.channel, l.outcome, l.attempt, l.at,
                    CASE WHEN l.outcome = 'delivered' THEN l.at END, e.error, e.code, l.next_at
             FROM latest l LEFT JOIN errors e USING (id)
             ORDER BY l.id
             ON CONFLICT (id) DO UPDATE SET
                 status = EXCLUDED.status,
                 attempts = EXCLUDED.attempts,
                 updated_at = EXCLUDED.updated_at,
                 delivered_at = coalesce(EXCLUDED.delivered_at, n.delivered_at),
                 last_error = coalesce(EXCLUDED.last_error, n.last_error),
                 last_status = coalesce(EXCLUDED.last_status, n.last_status),
                 next_attempt_at = EXCLUDED.next_attempt_at,
                 version = n.version + 1
             -- Delivered is final and what happened wins: it overrides a cancel that
             -- raced the send. Nothing else overrides a cancel.
             WHERE n.status <> 'delivered'
               AND (EXCLUDED.status = 'delivered'
                    OR (n.status <> 'canceled' AND EXCLUDED.updated_at >= n.updated_at))
             RETURNING {COLUMNS}"
        ))
        .bind(&rows.ids)
        .bind(&rows.seqs)
        .bind(&rows.attempts)
        .bind(&rows.outcomes)
        .bind(&rows.at)
        .bind(&rows.errors)
        .bind(&rows.codes)
        .bind(&rows.tenants)
        .bind(&rows.priorities)
        .bind(&rows.channels)
        .bind(&rows.next_at)
        .bind(&rows.indexes)
        .bind(&rows.durations)
        .bind(&rows.providers)
        .bind(&rows.responses)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }
}

/// Events as columns for UNNEST.
#[derive(Default)]
struct EventColumns {
    ids: Vec<Uuid>,
    seqs: Vec<i64>,
    attempts: Vec<i32>,
    outcomes: Vec<&'static str>,
    at: Vec<DateTime<Utc>>,
    errors: Vec<Option<String>>,
    codes: Vec<Option<i32>>,
    tenants: Vec<Uuid>,
    priorities: Vec<&'static str>,
    channels: Vec<&'static str>,
    next_at: Vec<Option<DateTime<Utc>>>,
    indexes: Vec<i32>,
    durations: Vec<Option<i32>>,
    providers: Vec<Option<String>>,
    responses: Vec<Option<String>>,
}

impl EventColumns {
    fn push(&mut self, e: &Event<'_>, seq: u64, index: u32) {
        self.indexes.push(index as i32);
        self.durations.push(
            e.duration_ms
                .map(|ms| i32::try_from(ms).unwrap_or(i32::MAX)),
        );
        self.ids.push(e.id);
        self.seqs.push(seq as i64);
        self.attempts.push(e.attempt as i32);
        self.outcomes.push(e.event.as_str());
        self.at.push(e.at);
        self.errors.push(e.error.as_ref().map(|s| s.to_string()));
        self.codes.push(e.status.map(i32::from));
        self.tenants.push(e.tenant);
        self.priorities.push(e.priority.as_str());
        self.channels.push(e.channel.as_str());
        self.next_at.push(e.next_attempt_at());
        self.providers
            .push(e.provider.as_ref().map(|p| p.to_string()));
        self.responses
            .push(e.response.as_ref().map(|r| r.to_string()));
    }
}

impl Sink for PostgresSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn write<'a>(
        &'a self,
        source: Source,
        batch: &'a [Message],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let rows = match source {
                // Only rows an earlier event created, which this fills in (the cache holds
                // their older version). A fresh `accepted` row is replaced by an event within
                // milliseconds: caching it would cost Redis a write that is hardly ever
                // read (a miss reads PostgreSQL).
                Source::Notify => self.notifications(batch).await?,
                Source::Events => self.events(batch).await?,
            };
            if let Some((cache, ttl)) = &self.cache {
                // The cache is an optimisation: a failure leaves reads to PostgreSQL.
                if let Err(err) = cache.write(&rows, *ttl).await {
                    tracing::debug!(error = %err, "status cache not written");
                }
            }
            Ok(())
        })
    }
}

/// Counts of what PostgreSQL holds for a set of ids, by status (tests and tools).
pub async fn status_counts(pool: &PgPool) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM notifications GROUP BY status")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

//! A notification's recorded state, as the status API shows it: read from the Redis cache
//! (written through by the recorder) and else from PostgreSQL; lists come from PostgreSQL
//! with keyset pagination on the time-ordered id.
//!
//! Read-your-writes: the ingress writes an `accepted` entry (version 0) into the same cache
//! after the PubAck and before its 202 ([`Acceptances`]), so a read or a cancel sent the
//! moment the 202 arrives finds the notification, from any ingress, before the recorder
//! has it. Once recorded, PostgreSQL answers before that entry ([`find`]), and a cached
//! outcome (version 1 and up) replaces it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::{Channel, Priority};
use crate::redis_store::{RedisStore, Script};

/// One row of `notifications` (the API contract's `NotificationStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct NotificationStatus {
    pub id: Uuid,
    #[serde(skip_serializing_if = "Uuid::is_nil")]
    #[serde(default)]
    #[sqlx(rename = "tenant_id")]
    #[schema(required = false)]
    pub tenant: Uuid,
    #[schema(value_type = Priority)]
    pub priority: String,
    #[schema(value_type = Channel)]
    pub channel: String,
    /// None until the recorder has the notification itself (an outcome can come first).
    pub recipient: Option<String>,
    #[schema(value_type = Outcome)]
    pub status: String,
    pub attempts: i32,
    pub accepted_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_status: Option<i32>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The W3C trace id (32 hex digits) of the request that accepted it: its spans, when
    /// exported, and every webhook's `traceparent` carry it.
    pub trace_id: Option<String>,
    /// Bumped by every write, so the cache never goes back to an older state.
    #[serde(skip)]
    pub version: i64,
}

/// The columns of [`NotificationStatus`], for `SELECT` and `RETURNING`.
pub const COLUMNS: &str = "id, tenant_id, priority, channel, recipient, status, attempts, \
     accepted_at, updated_at, delivered_at, last_error, last_status, next_attempt_at, trace_id, \
     version";

/// For each `KEYS[i]`, stores `ARGV[2i + 1]` under it only when its version `ARGV[2i]` is
/// newer than the one cached (TTL `ARGV[1]` ms): two recorder tasks finishing out of order
/// cannot put an older state back. One call per batch, not per row: each EVALSHA is a
/// command Redis parses and a Lua entry it pays for.
const SET_IF_NEWER: &str = r#"
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i])
  local current = redis.call('GET', key)
  local cached = current and tonumber(string.match(current, '^(%d+)|'))
  if not (cached and cached >= version) then
    redis.call('SET', key, ARGV[2 * i] .. '|' .. ARGV[2 * i + 1], 'PX', ARGV[1])
  end
end
return 0
"#;

/// Rows per [`SET_IF_NEWER`] call: Redis serves nothing else while a script runs.
const ROWS_PER_CALL: usize = 128;

/// The status cache in Redis: `<prefix>status:<id>` = `<version>|<json>`.
pub struct StatusCache {
    redis: std::sync::Arc<RedisStore>,
    script: Script,
}

impl StatusCache {
    pub fn new(redis: std::sync::Arc<RedisStore>) -> Self {
        StatusCache {
            redis,
            script: Script::new(SET_IF_NEWER),
        }
    }

    /// Writes every row in one pipeline, [`ROWS_PER_CALL`] rows a script call.
    pub async fn write(
        &self,
        rows: &[NotificationStatus],
        ttl: std::time::Duration,
    ) -> Result<(), String> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        for chunk in rows.chunks(ROWS_PER_CALL) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|row| self.redis.key("status", row.id))
                .collect();
            let call = self.script.call(&mut pipe, &keys).arg(ttl_ms);
            for row in chunk {
                let json = serde_json::to_string(row).map_err(|e| e.to_string())?;
                call.arg(row.version).arg(json);
            }
            call.ignore();
        }
        self.redis
            .query(&pipe, Some(&self.script))
            .await
            .map_err(|e| e.to_string())
    }

    /// `SET NX` of every row, in one pipeline: a state already cached is never put back.
    async fn write_new<'a>(
        &self,
        rows: impl Iterator<Item = &'a NotificationStatus>,
        ttl: std::time::Duration,
    ) -> Result<(), String> {
        let mut pipe = redis::pipe();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        for row in rows {
            let json = serde_json::to_string(row).map_err(|e| e.to_string())?;
            pipe.cmd("SET")
                .arg(self.redis.key("status", row.id))
                .arg(format!("{}|{json}", row.version))
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        self.redis
            .query(&pipe, None)
            .await
            .map_err(|e| e.to_string())
    }

    /// The cached state, if any (a Redis failure reads as a miss).
    pub async fn read(&self, id: Uuid) -> Option<NotificationStatus> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.redis.key("status", id));
        let (value,): (Option<String>,) = self.redis.query(&pipe, None).await.ok()?;
        let value = value?;
        let (version, json) = value.split_once('|')?;
        let mut status: NotificationStatus = serde_json::from_str(json).ok()?;
        status.version = version.parse().ok()?;
        Some(status)
    }
}

impl NotificationStatus {
    /// The state of a notification the moment JetStream stored it, before any recording.
    pub fn accepted(
        id: Uuid,
        tenant: Uuid,
        notification: &crate::model::Validated<'_>,
        now: DateTime<Utc>,
        trace_id: String,
    ) -> Self {
        NotificationStatus {
            id,
            tenant,
            priority: notification.priority.as_str().to_string(),
            channel: notification.channel.as_str().to_string(),
            recipient: Some(notification.recipient.to_string()),
            status: String::from("accepted"),
            attempts: 0,
            accepted_at: Some(now),
            updated_at: now,
            delivered_at: None,
            last_error: None,
            last_status: None,
            next_attempt_at: notification.send_at,
            trace_id: Some(trace_id),
            version: 0,
        }
    }
}

/// How long an `accepted` entry lasts: it need only outlast the recorder's lag (tens of
/// ms), and the cache otherwise holds outcomes only, so a minute of acceptances is all it
/// keeps (at 2,000/s, about 120,000 small entries).
pub const ACCEPTED_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Entries written by one pipeline at most.
const ACCEPTED_BATCH: usize = 512;

/// How long a 202 waits for its `accepted` entry at most. A write takes a millisecond or
/// two; a Redis that is down (a connection attempt takes seconds to fail) must not hold up
/// requests that need no Redis otherwise.
const ACCEPTED_PATIENCE: std::time::Duration = std::time::Duration::from_millis(250);

type AcceptedRows = (Vec<NotificationStatus>, tokio::sync::oneshot::Sender<()>);

/// Writes `accepted` entries for the requests that are about to answer 202: whatever
/// requests are waiting go in one pipeline (`SET NX`, so a recorded state is never put
/// back), and each is released when it is written.
#[derive(Clone)]
pub struct Acceptances {
    queue: tokio::sync::mpsc::Sender<AcceptedRows>,
}

impl Acceptances {
    /// Starts the writer; it ends when the last handle is dropped.
    pub fn start(redis: std::sync::Arc<RedisStore>) -> Self {
        let (queue, mut rx) = tokio::sync::mpsc::channel::<AcceptedRows>(4096);
        let cache = StatusCache::new(redis);
        // What is waiting goes at once: no linger, the 202s wait on it.
        let limits = crate::batch::Limits {
            max: ACCEPTED_BATCH,
            max_bytes: usize::MAX,
            linger: std::time::Duration::ZERO,
        };
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let batch = crate::batch::collect(first, &mut rx, limits, |_| 0).await;
                let rows = batch.iter().flat_map(|(rows, _)| rows);
                if let Err(err) = cache.write_new(rows, ACCEPTED_TTL).await {
                    tracing::warn!(error = %err, entries = batch.len(), "accepted status not cached; reads wait for the recorder");
                }
                for (_, done) in batch {
                    let _ = done.send(());
                }
            }
        });
        Acceptances { queue }
    }

    /// Caches `rows` as accepted; returns once written, once the write failed, or after
    /// [`ACCEPTED_PATIENCE`] (the notifications are durable either way: the 202 is not
    /// withheld for a cache).
    pub async fn record(&self, rows: Vec<NotificationStatus>) {
        if rows.is_empty() {
            return;
        }
        let (done, written) = tokio::sync::oneshot::channel();
        let write = async {
            if self.queue.send((rows, done)).await.is_ok() {
                let _ = written.await;
            }
        };
        if tokio::time::timeout(ACCEPTED_PATIENCE, write)
            .await
            .is_err()
        {
            tracing::debug!("accepted status not cached in time; answering without it");
        }
    }
}

/// One notification of one tenant: a cached outcome, else PostgreSQL, else the ingress's
/// `accepted` entry (a notification the recorder has not written yet). PostgreSQL goes
/// before that entry because a retry's state is recorded there and not cached. `Err` when
/// PostgreSQL had to be asked and could not answer.
pub async fn find(
    cache: &StatusCache,
    pool: &PgPool,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<NotificationStatus>, sqlx::Error> {
    let cached = cache.read(id).await.filter(|s| s.tenant == tenant);
    if let Some(outcome) = cached.as_ref().filter(|s| s.version > 0) {
        return Ok(Some(outcome.clone()));
    }
    Ok(get(pool, tenant, id).await?.or(cached))
}

/// One notification of one tenant from PostgreSQL.
pub async fn get(
    pool: &PgPool,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<NotificationStatus>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// A notification's state as recorded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Accepted,
    Retrying,
    Delivered,
    Dead,
    Canceled,
    /// Its deadline (`expires_at`) passed before it was delivered.
    Expired,
}

/// One delivery attempt's outcome, as `GET /v1/notifications/{id}/attempts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct AttemptRecord {
    /// 1-based; a duplicate delivery (at-least-once) can repeat a number.
    pub attempt: i32,
    /// `delivered`, `retrying`, `dead`, `canceled` or `expired`.
    #[schema(value_type = Outcome)]
    pub outcome: String,
    pub at: DateTime<Utc>,
    pub error: Option<String>,
    /// The receiver's or provider's HTTP status, if it answered.
    pub status_code: Option<i32>,
    /// How long the send took; none when nothing was sent (it expired first).
    pub duration_ms: Option<i32>,
    /// For `retrying`: when the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The provider the attempt went through (`<channel>:<host>:<port>`); none for
    /// webhooks.
    pub provider: Option<String>,
    /// The start of the answer's body (at most `--response-body-limit` bytes, 1 KiB by
    /// default; invalid UTF-8 replaced); none when nothing answered or the body was empty.
    pub response: Option<String>,
}

/// The answer of `GET /v1/notifications/{id}/attempts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptList {
    pub id: Uuid,
    pub attempts: Vec<AttemptRecord>,
}

/// A page of `GET /v1/notifications`, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationStatus>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<Uuid>,
}

/// Every recorded attempt of one notification of one tenant, oldest first; `None` when the
/// tenant has no such notification (recorded).
pub async fn attempts(
    pool: &PgPool,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<Vec<AttemptRecord>>, sqlx::Error> {
    let owned: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM notifications WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
    if owned.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query_as(
        "SELECT attempt, outcome, at, error, status_code, duration_ms, next_attempt_at, provider,
                response
         FROM delivery_attempts WHERE notification_id = $1
         ORDER BY at, event_seq, event_index",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(rows))
}

/// Filters of `GET /v1/notifications`.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub status: Option<String>,
    pub priority: Option<Priority>,
    pub channel: Option<Channel>,
    pub since: Option<DateTime<Utc>>,
    /// The last id of the previous page (newest first, so the next page is below it).
    pub cursor: Option<Uuid>,
    pub limit: usize,
}

/// The smallest UUIDv7 of a millisecond: `id >= since_id(t)` ⇔ accepted at or after `t`,
/// answered by the primary-key order without another index.
pub fn since_id(t: DateTime<Utc>) -> Uuid {
    let ms = t.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// A page of a tenant's notifications, newest first; the second value is the next cursor.
pub async fn list(
    pool: &PgPool,
    tenant: Uuid,
    q: &ListQuery,
) -> Result<(Vec<NotificationStatus>, Option<Uuid>), sqlx::Error> {
    let mut rows: Vec<NotificationStatus> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notifications
         WHERE tenant_id = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR priority = $3)
           AND ($4::text IS NULL OR channel = $4)
           AND ($5::uuid IS NULL OR id >= $5)
           AND ($6::uuid IS NULL OR id < $6)
         ORDER BY id DESC
         LIMIT $7"
    ))
    .bind(tenant)
    .bind(q.status.as_deref())
    .bind(q.priority.map(Priority::as_str))
    .bind(q.channel.map(Channel::as_str))
    .bind(q.since.map(since_id))
    .bind(q.cursor)
    .bind(q.limit as i64 + 1)
    .fetch_all(pool)
    .await?;
    let next = if rows.len() > q.limit {
        rows.truncate(q.limit);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok((rows, next))
}

/// How a tenant's notifications accepted in a window stand now, for one priority (part of
/// `GET /v1/summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct PriorityCounts {
    pub priority: Priority,
    /// Accepted in the window and recorded (the sum of the states below).
    pub accepted: u64,
    /// No outcome yet: in flight, scheduled, or held for its destination.
    pub pending: u64,
    pub retrying: u64,
    pub delivered: u64,
    pub dead: u64,
    pub canceled: u64,
    pub expired: u64,
}

impl PriorityCounts {
    fn zero(priority: Priority) -> Self {
        PriorityCounts {
            priority,
            accepted: 0,
            pending: 0,
            retrying: 0,
            delivered: 0,
            dead: 0,
            canceled: 0,
            expired: 0,
        }
    }
}

/// The answer of `GET /v1/summary`: one tenant's traffic of a recent window, as recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    pub window_seconds: u64,
    /// The window's start: notifications accepted at or after it are counted.
    pub since: DateTime<Utc>,
    /// High, medium and low, in that order.
    pub priorities: Vec<PriorityCounts>,
    /// Dead letters the tenant has now, of any age (`GET /v1/dlq` lists them).
    pub dead_letters: u64,
}

/// A tenant's notifications accepted at or after `since`, counted by priority and recorded
/// state: one statement over the `(tenant_id, id)` index, the window's rows and no more.
pub async fn counts_since(
    pool: &PgPool,
    tenant: Uuid,
    since: DateTime<Utc>,
) -> Result<[PriorityCounts; 3], sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT priority, status, count(*) FROM notifications
         WHERE tenant_id = $1 AND id >= $2
         GROUP BY priority, status",
    )
    .bind(tenant)
    .bind(since_id(since))
    .fetch_all(pool)
    .await?;
    let mut counts = Priority::ALL.map(PriorityCounts::zero);
    for (priority, status, n) in rows {
        let Some(priority) = Priority::from_name(&priority) else {
            continue; // the table's CHECK allows no other
        };
        let c = &mut counts[priority.index()];
        let n = n.max(0) as u64;
        c.accepted += n;
        match status.as_str() {
            "accepted" => c.pending += n,
            "retrying" => c.retrying += n,
            "delivered" => c.delivered += n,
            "dead" => c.dead += n,
            "expired" => c.expired += n,
            _ => c.canceled += n,
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_id_orders_with_v7_ids_of_that_millisecond() {
        let now = Utc::now();
        let id = crate::model::new_id();
        let at_ms = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap();
        assert!(since_id(at_ms - chrono::Duration::milliseconds(1)) < id);
        assert!(since_id(at_ms + chrono::Duration::milliseconds(2)) > id);
        assert_eq!(since_id(at_ms).get_version_num(), 7);
    }
}

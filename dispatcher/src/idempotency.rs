//! Idempotency keys in Redis: a request repeated with the same key gets the first one's id
//! instead of a second notification.
//!
//! Each key is one Redis string `<prefix>idem:<key>` = `<state>:<id>:<fingerprint>` with a
//! TTL (`--idempotency-ttl`, 24 h). Claiming is `SET key P:… NX GET PX ttl` (Redis ≥ 7): one
//! round trip that either takes the key or returns who has it; a batch claims all its keys
//! in one pipeline. After JetStream answered, the key becomes `A:…` (accepted) or is
//! deleted (the publish failed, so a retry may go through). The fingerprint is a SHA-256
//! of the notification as sent, so a key reused for a different body is refused.
//!
//! Without Redis, requests that carry a key get 503 (their promise cannot be kept); requests
//! without one are not affected.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::error::ApiError;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: publish under the id we proposed.
    New,
    /// Accepted before with the same body: answer with that id.
    Replay(Uuid),
    /// Accepted or in progress with a different body.
    Mismatch,
    /// The same request is being published right now.
    InProgress,
}

/// One key to claim.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub key: &'a str,
    pub id: Uuid,
    pub fingerprint: String,
}

pub struct Idempotency {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    ttl: Duration,
}

/// SHA-256 (first 16 bytes, hex) of a notification as sent.
pub fn fingerprint(raw: &[u8]) -> String {
    hex::encode(&Sha256::digest(raw)[..16])
}

impl Idempotency {
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis-url: {e}"))?;
        Ok(Idempotency {
            client,
            connection: OnceCell::new(),
            prefix: prefix.to_string(),
            ttl,
        })
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}idem:{key}", self.prefix)
    }

    /// The shared connection, made on first use (Redis may come up after Herald).
    async fn connection(&self) -> Result<ConnectionManager, ApiError> {
        let unavailable = |e: String| {
            ApiError::unavailable(format!("idempotency store (Redis) unreachable: {e}"))
        };
        self.connection
            .get_or_try_init(|| async {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    self.client.get_connection_manager(),
                )
                .await
                {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(unavailable(e.to_string())),
                    Err(_) => Err(unavailable(String::from("timed out"))),
                }
            })
            .await
            .cloned()
    }

    /// Claims every key in one pipeline; results in the same order.
    pub async fn claim(&self, requests: &[Request<'_>]) -> Result<Vec<Claim>, ApiError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let mut pipe = redis::pipe();
        let ttl_ms = self.ttl.as_millis() as u64;
        for r in requests {
            pipe.cmd("SET")
                .arg(self.redis_key(r.key))
                .arg(format!("P:{}:{}", r.id, r.fingerprint))
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(ttl_ms);
        }
        let previous: Vec<Option<String>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| ApiError::unavailable(format!("idempotency store (Redis): {e}")))?;
        Ok(requests
            .iter()
            .zip(previous)
            .map(|(r, previous)| match previous {
                None => Claim::New,
                Some(value) => {
                    let mut parts = value.splitn(3, ':');
                    let (state, id, fp) = (parts.next(), parts.next(), parts.next());
                    if fp != Some(r.fingerprint.as_str()) {
                        Claim::Mismatch
                    } else if state == Some("A") {
                        id.and_then(|id| Uuid::parse_str(id).ok())
                            .map_or(Claim::Mismatch, Claim::Replay)
                    } else {
                        Claim::InProgress
                    }
                }
            })
            .collect())
    }

    /// Records JetStream's answers: accepted keys keep their id for the TTL, failed ones
    /// are released so a retry can go through. Errors are logged: the notification's fate
    /// is already decided.
    pub async fn settle(&self, accepted: &[Request<'_>], failed: &[&str]) {
        if accepted.is_empty() && failed.is_empty() {
            return;
        }
        let Ok(mut connection) = self.connection().await else {
            return;
        };
        let mut pipe = redis::pipe();
        let ttl_ms = self.ttl.as_millis() as u64;
        for r in accepted {
            pipe.cmd("SET")
                .arg(self.redis_key(r.key))
                .arg(format!("A:{}:{}", r.id, r.fingerprint))
                .arg("XX")
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        for key in failed {
            pipe.cmd("DEL").arg(self.redis_key(key)).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut connection).await {
            tracing::warn!(error = %e, "settling idempotency keys failed");
        }
    }
}

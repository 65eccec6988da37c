//! Idempotency keys in Redis: a request repeated with the same key gets the first one's id
//! instead of a second notification.
//!
//! Each key is one Redis string `<prefix>idem:<tenant>:<key>` = `<state>:<id>:<fingerprint>` with a
//! TTL (`--idempotency-ttl`, 24 h). Claiming is `SET key P:… NX GET PX ttl` (Redis ≥ 7): one
//! round trip that either takes the key or returns who has it; a batch claims all its keys
//! in one pipeline. After JetStream answered, the key becomes `A:…` (accepted) or is
//! deleted (the publish failed, so a retry may go through). The fingerprint is a SHA-256
//! of the notification as sent, so a key reused for a different body is refused.
//!
//! Without Redis, requests that carry a key get 503 (their promise cannot be kept); requests
//! without one are not affected.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::redis_store::RedisStore;

/// The idempotency store (Redis) could not be asked: nothing is known about the keys.
#[derive(Debug, Clone, thiserror::Error)]
#[error("idempotency store (Redis): {0}")]
pub struct Unavailable(pub String);

impl From<crate::redis_store::RedisError> for Unavailable {
    fn from(err: crate::redis_store::RedisError) -> Self {
        Unavailable(err.to_string())
    }
}

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
    pub tenant: Uuid,
    pub key: &'a str,
    pub id: Uuid,
    pub fingerprint: String,
}

pub struct Idempotency {
    redis: Arc<RedisStore>,
    ttl: Duration,
}

/// SHA-256 (first 16 bytes, hex) of a notification as sent.
pub fn fingerprint(raw: &[u8]) -> String {
    hex::encode(&Sha256::digest(raw)[..16])
}

impl Idempotency {
    pub fn new(redis: Arc<RedisStore>, ttl: Duration) -> Self {
        Idempotency { redis, ttl }
    }

    /// Keys are scoped by tenant: two tenants may use the same key.
    fn redis_key(&self, tenant: &Uuid, key: &str) -> String {
        self.redis
            .key("idem", format_args!("{}:{key}", tenant.simple()))
    }

    /// Claims every key in one pipeline; results in the same order.
    pub async fn claim(&self, requests: &[Request<'_>]) -> Result<Vec<Claim>, Unavailable> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let ttl_ms = self.ttl.as_millis() as u64;
        for r in requests {
            pipe.cmd("SET")
                .arg(self.redis_key(&r.tenant, r.key))
                .arg(format!("P:{}:{}", r.id, r.fingerprint))
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(ttl_ms);
        }
        let previous: Vec<Option<String>> = self
            .redis
            .query(&pipe, None)
            .await
            .map_err(Unavailable::from)?;
        Ok(requests
            .iter()
            .zip(previous)
            .map(|(r, previous)| match previous {
                None => Claim::New,
                // Our own claim, made by a first try whose answer was lost.
                Some(value) if value == format!("P:{}:{}", r.id, r.fingerprint) => Claim::New,
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

    /// The id a key was accepted under, if it was (`None` also while its request is still
    /// being published).
    pub async fn accepted_id(&self, tenant: &Uuid, key: &str) -> Result<Option<Uuid>, Unavailable> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.redis_key(tenant, key));
        let (value,): (Option<String>,) = self
            .redis
            .query(&pipe, None)
            .await
            .map_err(Unavailable::from)?;
        Ok(value.and_then(|v| {
            let mut parts = v.splitn(3, ':');
            match (parts.next(), parts.next()) {
                (Some("A"), Some(id)) => Uuid::parse_str(id).ok(),
                _ => None,
            }
        }))
    }

    /// Records JetStream's answers: accepted keys keep their id for the TTL, failed ones
    /// are released so a retry can go through. Errors are logged: the notification's fate
    /// is already decided.
    pub async fn settle(&self, accepted: &[Request<'_>], failed: &[Request<'_>]) {
        if accepted.is_empty() && failed.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let ttl_ms = self.ttl.as_millis() as u64;
        for r in accepted {
            pipe.cmd("SET")
                .arg(self.redis_key(&r.tenant, r.key))
                .arg(format!("A:{}:{}", r.id, r.fingerprint))
                .arg("XX")
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        for r in failed {
            pipe.cmd("DEL")
                .arg(self.redis_key(&r.tenant, r.key))
                .ignore();
        }
        if let Err(e) = self.redis.query::<()>(&pipe, None).await {
            tracing::warn!(error = %e, "settling idempotency keys failed");
        }
    }
}

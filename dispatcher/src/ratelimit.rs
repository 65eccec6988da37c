//! Per-tenant ingress rate limits: a token bucket in Redis, updated by one Lua script per
//! request (a batch takes as many tokens as it has notifications, in the same call), so
//! every instance draws from the same bucket. The bucket refills at `rate` tokens per
//! second up to `burst`; Redis' own clock is used, so instances' clocks do not matter.
//!
//! Redis unreachable: the request is allowed (counted as `unchecked`): a rate limit
//! protects capacity, and refusing every tenant because the limiter is down would turn a
//! cache outage into a full outage.

use std::sync::Arc;

use uuid::Uuid;

use crate::redis_store::{RedisStore, Script};

const TOKEN_BUCKET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
local wait_ms = 0
if allowed == 0 then wait_ms = math.ceil((cost - tokens) * 1000 / rate) end
local full_ms = math.ceil((burst - tokens) * 1000 / rate)
return {allowed, math.floor(tokens), wait_ms, full_ms}
"#;

/// A tenant's bucket: `rate` per second, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: u32,
    pub burst: u32,
}

/// What the bucket said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u64,
    /// Seconds until the request could pass (when refused).
    pub retry_after_secs: u64,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset_secs: u64,
}

pub struct RateLimiter {
    redis: Arc<RedisStore>,
    script: Script,
}

impl RateLimiter {
    pub fn new(redis: Arc<RedisStore>) -> Self {
        RateLimiter {
            redis,
            script: Script::new(TOKEN_BUCKET),
        }
    }

    /// Takes `cost` tokens from the tenant's bucket if it has them. `Err` when Redis could
    /// not be asked.
    pub async fn take(
        &self,
        tenant: Uuid,
        limit: Limit,
        cost: u32,
    ) -> Result<Decision, crate::redis_store::RedisError> {
        let key = self.redis.key("rl", tenant.simple());
        let mut pipe = redis::pipe();
        self.script
            .call(&mut pipe, &[&key])
            .arg(limit.rate)
            .arg(limit.burst)
            .arg(cost);
        let ((allowed, remaining, wait_ms, full_ms),): ((i64, i64, i64, i64),) =
            self.redis.query(&pipe, Some(&self.script)).await?;
        Ok(Decision {
            allowed: allowed == 1,
            limit: limit.burst,
            remaining: remaining.max(0) as u64,
            retry_after_secs: (wait_ms.max(0) as u64).div_ceil(1000).max(1),
            reset_secs: (full_ms.max(0) as u64).div_ceil(1000),
        })
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds until full).
pub fn headers(d: &Decision) -> Vec<(&'static str, String)> {
    vec![
        ("ratelimit-limit", d.limit.to_string()),
        ("ratelimit-remaining", d.remaining.to_string()),
        ("ratelimit-reset", d.reset_secs.to_string()),
    ]
}

//! One lazily made, shared Redis connection (multiplexed, reconnecting) for everything
//! Herald keeps in Redis: idempotency keys, rate-limit buckets, the status cache. Redis may
//! come up after Herald, so the connection is made on first use, and every caller decides
//! what an unreachable Redis means for it.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

/// Why Redis could not be used. Typed so that a caller can say why in an operator's words
/// (`dependencies::cause` walks its sources), not only repeat the text.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// `--redis-url` does not parse.
    #[error("--redis-url: {0}")]
    Url(#[source] redis::RedisError),
    /// No connection within `CONNECT_PATIENCE` (3 s).
    #[error("timed out: no connection within {} s", CONNECT_PATIENCE.as_secs())]
    TimedOut,
    /// Connecting or a command failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// How long the first use waits for a connection.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);

pub struct RedisStore {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    /// Namespace of every key (the configured prefix).
    pub prefix: String,
}

impl RedisStore {
    pub fn new(url: &str, prefix: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url).map_err(RedisError::Url)?;
        Ok(RedisStore {
            client,
            connection: OnceCell::new(),
            prefix: prefix.to_string(),
        })
    }

    /// Deletes every key under the prefix (SCAN, then DEL in batches: no KEYS on a shared
    /// server); returns how many were deleted.
    pub async fn delete_prefixed(&self) -> Result<usize, RedisError> {
        let mut connection = self.connection().await?;
        let pattern = format!("{}*", self.prefix);
        let (mut cursor, mut deleted) = (0u64, 0usize);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                deleted += redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<usize>(&mut connection)
                    .await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// `<prefix><kind>:<name>`.
    pub fn key(&self, kind: &str, name: impl std::fmt::Display) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    /// The shared connection; an error when Redis cannot be reached within 2 s.
    pub async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        self.connection
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                match tokio::time::timeout(
                    CONNECT_PATIENCE,
                    self.client.get_connection_manager_with_config(config),
                )
                .await
                {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(RedisError::Redis(e)),
                    // The manager retries within its patience, so say why one plain
                    // connect fails (refused, unknown host, auth) when it does so fast.
                    Err(_) => match tokio::time::timeout(
                        Duration::from_secs(1),
                        self.client.get_multiplexed_async_connection(),
                    )
                    .await
                    {
                        Ok(Err(e)) => Err(RedisError::Redis(e)),
                        _ => Err(RedisError::TimedOut),
                    },
                }
            })
            .await
            .cloned()
    }

    /// Runs `pipe` on the shared connection, with `script` loaded if Redis lost it. A
    /// connection that broke (Redis restarted, a network blip) fails its first use; the
    /// manager then reconnects and the pipeline is tried once more, so one broken
    /// connection does not fail a request. Callers keep their pipelines safe to repeat.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        script: Option<&Script>,
    ) -> Result<T, RedisError> {
        let mut connection = self.connection().await?;
        match run(&mut connection, pipe, script).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                tracing::debug!(error = %e, "Redis connection broke; trying once more");
                Ok(run(&mut connection, pipe, script).await?)
            }
            other => Ok(other?),
        }
    }
}

/// Runs `pipe`; if Redis lost `script`, loads it and runs the pipeline once more.
async fn run<T: redis::FromRedisValue>(
    connection: &mut ConnectionManager,
    pipe: &redis::Pipeline,
    script: Option<&Script>,
) -> redis::RedisResult<T> {
    match (pipe.query_async(connection).await, script) {
        (Err(e), Some(script))
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script.source)
                .query_async::<String>(connection)
                .await?;
            pipe.query_async(connection).await
        }
        (other, _) => other,
    }
}

/// A Lua script loaded once and called with EVALSHA inside pipelines (Redis runs it
/// atomically next to the data). On `NOSCRIPT` (a restarted Redis) it is loaded again.
pub struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    pub fn new(source: &'static str) -> Self {
        Script {
            source,
            sha: redis::Script::new(source).get_hash().to_string(),
        }
    }

    /// Adds one call with `keys` to `pipe`; chain `.arg(..)` for the script's ARGV.
    pub fn call<'p, K: AsRef<str>>(
        &self,
        pipe: &'p mut redis::Pipeline,
        keys: &[K],
    ) -> &'p mut redis::Pipeline {
        let cmd = pipe.cmd("EVALSHA").arg(&self.sha).arg(keys.len());
        for key in keys {
            cmd.arg(key.as_ref());
        }
        cmd
    }
}

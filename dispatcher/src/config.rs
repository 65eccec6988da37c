//! Settings of every role, as plain structs with their defaults. A part's own settings live
//! beside it (re-exported here); this file holds only what no single part owns: the roles'
//! compositions (`ServeConfig`, `DeliverConfig`, `RecordConfig`, `RunConfig`), the stores
//! several parts share (`StoreConfig`), the ingress's `AuthMode` (read by the routes and
//! the CLI alike), and the start and stop timeouts of every role. The binary's command
//! line (`cli/` beside `main.rs`) fills them from flags and `HERALD_*` variables; the
//! library, its tests and benchmarks never read either: they start from `Default` and
//! change fields.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub use crate::admission::AdmissionConfig;
pub use crate::delivery::{DeliveryConfig, PerChannel};
pub use crate::egress::EgressConfig;
pub use crate::jetstream::NatsConfig;
pub use crate::postgres::PgConfig;
pub use crate::publisher::PublisherConfig;
pub use crate::recorder::{RecordConsumers, RecordStore, RecorderConfig};
pub use crate::scheduler::SchedulerConfig;
use crate::scheduler::{PerClass, MAX_WEIGHT_SUM};
pub use crate::trace::OtlpConfig;

/// Default of every role's `--startup-timeout`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of every role's `--shutdown-timeout`: a send in flight has its own timeout (10 s
/// by default), a batch being written is redelivered if it is cut short.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// `dispatcher serve`: the HTTP ingress.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address the HTTP ingress listens on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics for operators: the metrics count every
    /// tenant's traffic, so they stay off the public API port.
    pub metrics_listen: SocketAddr,
    pub nats: NatsConfig,
    pub egress: EgressConfig,
    /// Largest request body, in bytes (413 above).
    pub max_body: usize,
    /// Open connections at most; more are answered 503 and closed at once.
    pub max_connections: usize,
    /// Largest request head of HTTP/1.1, and header list of h2, in bytes (431 above).
    pub max_header_bytes: u32,
    /// Largest `payload` of one notification of a tenant without its own limit (422 above).
    pub max_payload: usize,
    /// Most notifications in one batch request (413 above).
    pub max_batch: usize,
    /// Time allowed for a request head from its first byte (and for a new connection, from
    /// accept to its first request).
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request (announced).
    pub idle_timeout: Duration,
    /// Time allowed for a request body (408 after).
    pub body_timeout: Duration,
    /// Keep HTTP/1.1 connections open between requests.
    pub keep_alive: bool,
    /// Interval of HTTP/2 keep-alive pings.
    pub h2_keep_alive_interval: Duration,
    pub scheduler: SchedulerConfig,
    pub publisher: PublisherConfig,
    pub admission: AdmissionConfig,
    pub store: StoreConfig,
    /// Apply pending migrations at start-up.
    pub migrate: bool,
    pub auth: AuthMode,
    /// How long a looked-up API key is trusted without asking PostgreSQL again.
    pub key_cache_ttl: Duration,
    /// Default ingress rate limit per tenant, per second (0: none).
    pub rate_limit: u32,
    /// Default burst of the per-tenant token bucket (`None`: one second's worth).
    pub rate_burst: Option<u32>,
    /// How long an idempotency key remembers its notification.
    pub idempotency_ttl: Duration,
    /// Longest wait for in-flight requests and publishes at shutdown (in `run`, for the
    /// whole stop).
    pub shutdown_timeout: Duration,
    /// How long NATS and the stores may stay unreached at start before the process ends.
    pub startup_timeout: Duration,
    /// Export spans over OTLP (off when `None`); `run` uses it for delivery too.
    pub otlp: Option<OtlpConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            // 9090 is Prometheus's own port, often on the same host.
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9089)),
            nats: NatsConfig::default(),
            egress: EgressConfig::default(),
            max_body: 8 * 1024 * 1024,
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_payload: 64 * 1024,
            max_batch: 1000,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(10),
            keep_alive: true,
            h2_keep_alive_interval: Duration::from_secs(30),
            scheduler: SchedulerConfig::default(),
            publisher: PublisherConfig::default(),
            admission: AdmissionConfig::default(),
            store: StoreConfig::default(),
            migrate: false,
            auth: AuthMode::Required,
            key_cache_ttl: Duration::from_secs(30),
            rate_limit: 0,
            rate_burst: None,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            startup_timeout: STARTUP_TIMEOUT,
            otlp: None,
        }
    }
}

/// `dispatcher deliver`: the delivery workers alone.
#[derive(Debug, Clone)]
pub struct DeliverConfig {
    pub nats: NatsConfig,
    pub delivery: DeliveryConfig,
    pub egress: EgressConfig,
    /// Tenants' webhook secrets live in PostgreSQL.
    pub pg: PgConfig,
    /// Address of /healthz, /readyz and /metrics.
    pub metrics_listen: SocketAddr,
    /// Export spans over OTLP (off when `None`).
    pub otlp: Option<OtlpConfig>,
    /// How long NATS and PostgreSQL may stay unreached at start before the process ends.
    pub startup_timeout: Duration,
    /// Longest stop: in-flight sends finish or are returned to JetStream.
    pub shutdown_timeout: Duration,
}

impl Default for DeliverConfig {
    fn default() -> Self {
        DeliverConfig {
            nats: NatsConfig::default(),
            delivery: DeliveryConfig::default(),
            egress: EgressConfig::default(),
            pg: PgConfig::default(),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            otlp: None,
            startup_timeout: STARTUP_TIMEOUT,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
        }
    }
}

/// `dispatcher record`: the recorder alone.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub nats: NatsConfig,
    pub store: StoreConfig,
    pub recorder: RecorderConfig,
    /// Apply pending migrations at start-up.
    pub migrate: bool,
    /// Address of /healthz, /readyz and /metrics.
    pub metrics_listen: SocketAddr,
    /// How long NATS and the stores may stay unreached at start before the process ends.
    pub startup_timeout: Duration,
    /// Longest stop: batches being written finish or are redelivered later.
    pub shutdown_timeout: Duration,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            nats: NatsConfig::default(),
            store: StoreConfig::default(),
            recorder: RecorderConfig::default(),
            migrate: false,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            startup_timeout: STARTUP_TIMEOUT,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
        }
    }
}

/// `dispatcher run`: the three roles in one process; delivery and the recorder take their
/// NATS, stores and destinations from the ingress's settings.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub serve: ServeConfig,
    pub delivery: DeliveryConfig,
    pub recorder: RecorderConfig,
}

/// Where Herald keeps state: PostgreSQL (transactional), MongoDB (message documents),
/// Redis (idempotency keys, rate limits, status cache).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub pg: PgConfig,
    pub mongo_url: String,
    /// Database holding the message documents (a plain name: see [`check_identifier`]).
    pub mongo_db: String,
    /// Keys `<prefix>idem:<key>`, `<prefix>rl:<tenant>`, `<prefix>status:<id>`.
    pub redis_url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            pg: PgConfig::default(),
            mongo_url: String::from("mongodb://127.0.0.1:27017"),
            mongo_db: String::from("herald"),
            redis_url: String::from("redis://127.0.0.1:6379"),
        }
    }
}

/// Whether /v1 routes need an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `Authorization: Bearer <key>` on every /v1 route.
    Required,
    /// Everything belongs to one anonymous tenant (development and benchmarks only).
    Off,
}

/// Closed sets of words, as settings spell them.
macro_rules! spelled {
    ($ty:ty { $($variant:ident = $word:literal),+ $(,)? }) => {
        impl $ty {
            /// Every spelling, for the command line's help.
            pub const WORDS: &'static [&'static str] = &[$($word),+];
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    _ => Err(format!("expected one of {:?}", Self::WORDS)),
                }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $(Self::$variant => $word,)+
                })
            }
        }
    };
}
spelled!(AuthMode { Required = "required", Off = "off" });
spelled!(RecordStore { Postgres = "postgres", Mongo = "mongo" });
spelled!(RecordConsumers { PerStore = "per-store", Shared = "shared" });

/// Weights `high:medium:low` whose sum the scheduler can hold.
pub fn parse_weights(s: &str) -> Result<PerClass, String> {
    let w: PerClass = s.parse()?;
    if w.0.iter().sum::<usize>() > MAX_WEIGHT_SUM {
        return Err(format!("weights must sum to at most {MAX_WEIGHT_SUM}"));
    }
    Ok(w)
}

/// A PostgreSQL schema or MongoDB database name: it is interpolated into statements, so
/// only plain identifiers are allowed.
pub fn check_identifier(s: &str) -> Result<String, String> {
    let mut bytes = s.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if first_ok
        && s.len() <= 48
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(s.to_string())
    } else {
        Err(String::from(
            "must start with a lowercase letter or '_' and hold only lowercase letters, digits and '_' (at most 48)",
        ))
    }
}

/// A prefix of NATS names: it becomes part of subjects and stream names.
pub fn check_prefix(s: &str) -> Result<String, String> {
    if s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(s.to_string())
    } else {
        Err(String::from(
            "prefix may hold only ASCII letters, digits, '_' and '-' (at most 64)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_loopback() {
        let c = ServeConfig::default();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.nats.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.scheduler.weights, PerClass([8, 4, 1]));
        assert_eq!(c.max_batch, 1000);
        assert!(c.store.pg.database_url.contains("127.0.0.1"));
    }

    #[test]
    fn spelled_words_round_trip() {
        for word in AuthMode::WORDS.iter().chain(RecordStore::WORDS) {
            let parsed_auth = word.parse::<AuthMode>().is_ok();
            let parsed_store = word.parse::<RecordStore>().is_ok();
            assert!(parsed_auth != parsed_store, "{word}");
        }
        assert!("Off".parse::<AuthMode>().is_err());
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        assert!(parse_weights("8:0:1").unwrap_err().contains("at least 1"));
        assert!(parse_weights("8:4")
            .unwrap_err()
            .contains("high:medium:low"));
        assert!(parse_weights("65536:1:1").unwrap_err().contains("at most"));
        assert!(check_prefix("a.b").is_err());
        assert!(check_identifier("Herald").is_err());
        assert_eq!(check_identifier("herald_1").unwrap(), "herald_1");
    }
}

//! How NATS and the stores are reached, and what the roles share about them: PostgreSQL,
//! Redis, MongoDB, NATS, the webhook egress policy, OTLP and the publisher.

use super::*;
use herald::sealing::SealingKey;

/// PostgreSQL: tenants, API keys and notification state.
#[derive(Debug, Clone, Args)]
pub struct PgArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "HERALD_DATABASE_URL", default_value_t = pg().database_url, hide_env_values = true)]
    database_url: String,
    /// Schema holding Herald's tables (created by `migrate`).
    #[arg(long, env = "HERALD_PG_SCHEMA", default_value_t = pg().pg_schema, value_parser = check_identifier)]
    pg_schema: String,
    /// Most PostgreSQL connections of this process.
    #[arg(long, env = "HERALD_PG_MAX_CONNECTIONS", default_value_t = pg().pg_max_connections)]
    pg_max_connections: u32,
    /// Key sealing the webhook secrets stored in PostgreSQL: the standard base64 of 32
    /// random bytes (`openssl rand -base64 32`). Needed by serve, run, deliver, migrate
    /// and tenant; set it in the environment rather than on the command line.
    #[arg(long, env = "HERALD_SECRETS_KEY", value_parser = SealingKeyParser, hide_env_values = true)]
    secrets_key: Option<SealingKey>,
}

/// Parses `--secrets-key` without echoing a refused value (clap's own error would print
/// it, and a key one byte short is still most of a secret).
#[derive(Clone)]
struct SealingKeyParser;

impl clap::builder::TypedValueParser for SealingKeyParser {
    type Value = SealingKey;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SealingKey, clap::Error> {
        value
            .to_str()
            .ok_or(herald::sealing::SealError::Key)
            .and_then(SealingKey::parse)
            .map_err(|e| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--secrets-key: {e}\n"),
                )
            })
    }
}

impl From<PgArgs> for PgConfig {
    fn from(a: PgArgs) -> Self {
        PgConfig {
            database_url: a.database_url,
            pg_schema: a.pg_schema,
            pg_max_connections: a.pg_max_connections,
            secrets_key: a.secrets_key,
        }
    }
}

/// Redis: idempotency keys (`<prefix>idem:<key>`), rate limits (`<prefix>rl:<tenant>`),
/// status cache (`<prefix>status:<id>`).
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis connection URL.
    #[arg(long, env = "HERALD_REDIS_URL", default_value_t = store().redis_url, hide_env_values = true)]
    redis_url: String,
}

/// MongoDB: message documents.
#[derive(Debug, Clone, Args)]
pub struct MongoArgs {
    /// MongoDB connection URL (message documents).
    #[arg(long, env = "HERALD_MONGO_URL", default_value_t = store().mongo_url, hide_env_values = true)]
    mongo_url: String,
    /// MongoDB database holding the `messages` collection.
    #[arg(long, env = "HERALD_MONGO_DB", default_value_t = store().mongo_db, value_parser = check_identifier)]
    mongo_db: String,
}

pub(super) fn store_of(pg: PgArgs, redis: RedisArgs, mongo: Option<MongoArgs>) -> StoreConfig {
    let defaults = store();
    let (mongo_url, mongo_db) = match mongo {
        Some(m) => (m.mongo_url, m.mongo_db),
        None => (defaults.mongo_url, defaults.mongo_db),
    };
    StoreConfig {
        pg: pg.into(),
        redis_url: redis.redis_url,
        mongo_url,
        mongo_db,
    }
}

/// How Herald reaches NATS and shapes its streams.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "HERALD_NATS_URL", default_value_t = nats().nats_url)]
    nats_url: String,
    /// Namespace for stream, subject and consumer names, key and table names: stream
    /// `<PREFIX>NOTIFY`, subjects `<prefix>notify.<priority>.<channel>`.
    #[arg(long, env = "HERALD_PREFIX", default_value_t = nats().prefix, value_parser = check_prefix)]
    prefix: String,
    /// Window in which JetStream drops a re-sent message with the same id.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW", default_value_t = human(nats().duplicate_window))]
    duplicate_window: Human,
    /// How long the NOTIFY stream keeps messages.
    #[arg(long, env = "HERALD_STREAM_MAX_AGE", default_value_t = human(nats().stream_max_age))]
    stream_max_age: Human,
    /// Size bound of the NOTIFY stream in bytes (-1: none). When it is reached new
    /// publishes fail (503) rather than old, undelivered messages being dropped.
    #[arg(long, env = "HERALD_STREAM_MAX_BYTES", default_value_t = nats().stream_max_bytes, allow_negative_numbers = true)]
    stream_max_bytes: i64,
    /// How long a dead letter is kept when nobody replays or deletes it.
    #[arg(long, env = "HERALD_DLQ_MAX_AGE", default_value_t = human(nats().dlq_max_age))]
    dlq_max_age: Human,
    /// Stream replicas (3 on a NATS cluster).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = nats().stream_replicas)]
    stream_replicas: usize,
    /// How often readiness re-checks the connection and the stream.
    #[arg(long, env = "HERALD_READINESS_INTERVAL", default_value_t = human(nats().readiness_interval))]
    readiness_interval: Human,
}

impl From<NatsArgs> for NatsConfig {
    fn from(a: NatsArgs) -> Self {
        NatsConfig {
            nats_url: a.nats_url,
            prefix: a.prefix,
            duplicate_window: a.duplicate_window.into(),
            stream_max_age: a.stream_max_age.into(),
            stream_max_bytes: a.stream_max_bytes,
            dlq_max_age: a.dlq_max_age.into(),
            stream_replicas: a.stream_replicas,
            readiness_interval: a.readiness_interval.into(),
        }
    }
}

/// Where webhooks may go (the egress policy, `herald::egress`). The ingress refuses IP literals outside the
/// policy at the door; delivery checks every resolved address.
#[derive(Debug, Clone, Args)]
pub struct EgressArgs {
    /// Networks webhooks may reach although they are internal (loopback, private,
    /// link-local, ...), comma-separated CIDRs or addresses, e.g. `127.0.0.0/8,::1`.
    /// Empty (the default): public addresses only.
    #[arg(long, env = "HERALD_WEBHOOK_ALLOW_NETS", default_value_t = Nets::default(), value_parser = parse_nets)]
    webhook_allow_nets: Nets,
}

impl From<EgressArgs> for EgressConfig {
    fn from(a: EgressArgs) -> Self {
        EgressConfig {
            webhook_allow_nets: a.webhook_allow_nets,
        }
    }
}

/// Span export (trace.rs): off unless an endpoint is given.
#[derive(Debug, Clone, Args)]
pub struct OtlpArgs {
    /// OTLP/HTTP (protobuf) traces URL to export Herald's spans to, e.g.
    /// `http://127.0.0.1:4318/v1/traces`. Empty (the default): no span is recorded.
    #[arg(long, env = "HERALD_OTLP_ENDPOINT", default_value = "")]
    otlp_endpoint: String,
    /// `service.name` of the exported spans.
    #[arg(long, env = "HERALD_OTLP_SERVICE_NAME", default_value = "herald")]
    otlp_service_name: String,
}

impl From<OtlpArgs> for Option<OtlpConfig> {
    fn from(a: OtlpArgs) -> Self {
        (!a.otlp_endpoint.is_empty()).then_some(OtlpConfig {
            endpoint: a.otlp_endpoint,
            service_name: a.otlp_service_name,
        })
    }
}

/// How accepted notifications are batched into JetStream.
#[derive(Debug, Clone, Args)]
pub struct PublisherArgs {
    /// Most messages per publish batch.
    #[arg(long, env = "HERALD_BATCH_MAX", default_value_t = publisher().batch_max)]
    batch_max: usize,
    /// Longest a batch waits to fill once its first message is in; 0 publishes at once what
    /// is queued.
    #[arg(long, env = "HERALD_LINGER", default_value_t = human(publisher().linger))]
    linger: Human,
    /// Concurrent publisher tasks.
    #[arg(long, env = "HERALD_PUBLISHERS", default_value_t = publisher().publishers)]
    publishers: usize,
    /// Most publishes awaiting their JetStream ack at once; beyond it publishers wait and
    /// the queues fill, which reaches clients as 429.
    #[arg(long, env = "HERALD_MAX_INFLIGHT", default_value_t = publisher().max_inflight)]
    max_inflight: usize,
    /// Most single requests that publish from their own task at once while nothing waits
    /// in the scheduler (one hand-off fewer each way); 0 sends every request through the
    /// scheduler.
    #[arg(long, env = "HERALD_PUBLISH_DIRECT_MAX", default_value_t = publisher().direct_max)]
    publish_direct_max: usize,
    /// How long to wait for a JetStream ack before answering 503.
    #[arg(long, env = "HERALD_PUBLISH_TIMEOUT", default_value_t = human(publisher().publish_timeout))]
    publish_timeout: Human,
}

impl From<PublisherArgs> for PublisherConfig {
    fn from(a: PublisherArgs) -> Self {
        PublisherConfig {
            batch_max: a.batch_max,
            linger: a.linger.into(),
            publishers: a.publishers,
            max_inflight: a.max_inflight,
            direct_max: a.publish_direct_max,
            publish_timeout: a.publish_timeout.into(),
        }
    }
}

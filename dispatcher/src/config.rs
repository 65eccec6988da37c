//! All configuration, in one clap struct per role. Every flag has a `HERALD_*` environment
//! fallback and a default that points at loopback; nothing else reads the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::delivery::retry::RetryPolicy;
use crate::scheduler::{PerClass, SchedulerConfig, MAX_WEIGHT_SUM};

#[derive(Debug, Parser)]
#[command(name = "dispatcher", version, about = "Herald notification dispatcher")]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    /// Nice value of the recorder's threads (inside `run`, and every thread of `record`),
    /// so that a co-located door and high's deliveries get the CPU first (0: no change).
    #[arg(long, env = "HERALD_BACKGROUND_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19), global = true)]
    pub background_nice: i32,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP ingress: accept notifications, schedule them by priority and publish
    /// them durably to JetStream.
    Serve(Box<ServeConfig>),
    /// Run the delivery workers alone: consume NOTIFY by priority and deliver.
    Deliver(Box<DeliverArgs>),
    /// Run ingress, delivery and the recorder in one process (the quick start's default).
    Run(Box<RunArgs>),
    /// Run the recorder alone: consume NOTIFY and EVENTS into PostgreSQL, MongoDB and the
    /// Redis status cache.
    Record(Box<RecordArgs>),
    /// Apply the SQL migrations in migrations/ to the configured schema, then exit.
    Migrate(Box<StoreConfig>),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its id and webhook signing secret.
    Create {
        /// Unique name of the tenant.
        name: String,
        /// Ingress rate limit of this tenant (notifications per second).
        #[arg(long)]
        rate: Option<u32>,
        /// Burst of this tenant's token bucket.
        #[arg(long)]
        burst: Option<u32>,
        /// Largest `payload` this tenant may send, in bytes (default: the ingress's
        /// --max-payload; a request body is still bounded by --max-body).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
        max_payload: Option<u32>,
        #[command(flatten)]
        store: StoreConfig,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key for a tenant and print it (once: only its hash is stored).
    Create {
        /// Name of the tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        store: StoreConfig,
    },
    /// Revoke an API key by its id (as printed by `key create`).
    Revoke {
        id: uuid::Uuid,
        #[command(flatten)]
        store: StoreConfig,
    },
}

/// Where Herald keeps state: PostgreSQL (transactional), MongoDB (message documents),
/// Redis (idempotency keys, rate limits, status cache).
#[derive(Debug, Clone, Args)]
pub struct StoreConfig {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        default_value = "postgres://root@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Schema holding Herald's tables (created by `migrate`).
    #[arg(long, env = "HERALD_PG_SCHEMA", default_value = "herald", value_parser = parse_schema)]
    pub pg_schema: String,
    /// Most PostgreSQL connections of this process.
    #[arg(long, env = "HERALD_PG_MAX_CONNECTIONS", default_value_t = 8)]
    pub pg_max_connections: u32,
    /// Apply pending migrations at start-up.
    #[arg(long, env = "HERALD_MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// MongoDB connection URL (message documents).
    #[arg(
        long,
        env = "HERALD_MONGO_URL",
        default_value = "mongodb://127.0.0.1:27017",
        hide_env_values = true
    )]
    pub mongo_url: String,
    /// MongoDB database holding the `messages` collection.
    #[arg(long, env = "HERALD_MONGO_DB", default_value = "herald", value_parser = parse_schema)]
    pub mongo_db: String,
    /// Redis: idempotency keys (`<prefix>idem:<key>`), rate limits (`<prefix>rl:<tenant>`),
    /// status cache (`<prefix>status:<id>`).
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
}

impl StoreConfig {
    pub fn defaults() -> Self {
        defaults_of()
    }
}

/// A group of flags as the command line gives it with no flags (environment fallbacks
/// apply, as they would there).
fn defaults_of<T: clap::Args + clap::FromArgMatches>() -> T {
    let matches =
        T::augment_args(clap::Command::new("dispatcher")).get_matches_from(["dispatcher"]);
    T::from_arg_matches(&matches).expect("every flag of the group has a default")
}

/// A PostgreSQL schema or MongoDB database name: it is interpolated into statements, so
/// only plain identifiers are allowed.
fn parse_schema(s: &str) -> Result<String, String> {
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

/// `dispatcher record`.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub store: StoreConfig,
    #[command(flatten)]
    pub recorder: RecorderConfig,
    /// Address of the health and metrics endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "HERALD_METRICS_LISTEN", default_value = "127.0.0.1:9092")]
    pub metrics_listen: SocketAddr,
}

impl RecordArgs {
    /// The defaults, as `dispatcher record` with no flags would have them.
    pub fn defaults() -> Self {
        defaults_of()
    }
}

/// How the recorder batches.
#[derive(Debug, Clone, Args)]
pub struct RecorderConfig {
    /// Most messages written per statement.
    #[arg(long, env = "HERALD_RECORD_BATCH", default_value_t = 1000)]
    pub record_batch: usize,
    /// Messages each recorder consumer may hold unacknowledged.
    #[arg(long, env = "HERALD_RECORD_ACK_PENDING", default_value_t = 8192)]
    pub record_ack_pending: usize,
    /// JetStream hands a recorder batch to another recorder when it is not acknowledged
    /// (nor marked in progress) within this time: how soon a crashed recorder's batch is
    /// written by another.
    #[arg(long, env = "HERALD_RECORD_ACK_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub record_ack_wait: Duration,
    /// How long a notification's status stays in the Redis cache.
    #[arg(long, env = "HERALD_STATUS_CACHE_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub status_cache_ttl: Duration,
    /// How long MongoDB keeps a message document (TTL index on `accepted_at`).
    #[arg(long, env = "HERALD_MESSAGE_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub message_retention: Duration,
    /// Do not record into PostgreSQL / MongoDB (for deployments that keep only one).
    #[arg(long, env = "HERALD_RECORD_SKIP", value_delimiter = ',')]
    pub record_skip: Vec<RecordStore>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordStore {
    Postgres,
    Mongo,
}

/// `dispatcher deliver`.
#[derive(Debug, Clone, Args)]
pub struct DeliverArgs {
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub delivery: DeliveryConfig,
    #[command(flatten)]
    pub destinations: DestinationConfig,
    #[command(flatten)]
    pub store: StoreConfig,
    /// Address of the health and metrics endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "HERALD_METRICS_LISTEN", default_value = "127.0.0.1:9091")]
    pub metrics_listen: SocketAddr,
}

/// Where webhooks may go (see destination.rs). The ingress refuses IP literals outside the
/// policy at the door; delivery checks every resolved address.
#[derive(Debug, Clone, Args)]
pub struct DestinationConfig {
    /// Networks webhooks may reach although they are internal (loopback, private,
    /// link-local, ...), comma-separated CIDRs or addresses, e.g. `127.0.0.0/8,::1`.
    /// Empty (the default): public addresses only.
    #[arg(long, env = "HERALD_WEBHOOK_ALLOW_NETS", default_value = "", value_parser = crate::destination::parse_nets)]
    pub webhook_allow_nets: crate::destination::Nets,
}

impl DestinationConfig {
    pub fn policy(&self) -> crate::destination::DestinationPolicy {
        crate::destination::DestinationPolicy::new(self.webhook_allow_nets.0.clone())
    }
}

/// `dispatcher run`: the ingress's flags plus the delivery's and the recorder's.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub serve: ServeConfig,
    #[command(flatten)]
    pub delivery: DeliveryConfig,
    #[command(flatten)]
    pub recorder: RecorderConfig,
}

/// A value per channel, written `webhook:email:sms:push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerChannel(pub [usize; 4]);

impl std::str::FromStr for PerChannel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_positive_list(s, "webhook:email:sms:push").map(PerChannel)
    }
}

/// Parses `N` positive whole numbers separated by ':' (`shape` names them for errors).
pub fn parse_positive_list<const N: usize>(s: &str, shape: &str) -> Result<[usize; N], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != N {
        return Err(format!("expected {shape}, got {s:?}"));
    }
    let mut out = [0; N];
    for (slot, part) in out.iter_mut().zip(parts) {
        *slot = part
            .trim()
            .parse()
            .map_err(|_| format!("{part:?} is not a whole number"))?;
        if *slot == 0 {
            return Err(String::from("every value must be at least 1"));
        }
    }
    Ok(out)
}

/// How notifications are delivered.
#[derive(Debug, Clone, Args)]
pub struct DeliveryConfig {
    /// Delivery weights `high:medium:low` while all priorities are backlogged.
    #[arg(long, env = "HERALD_DELIVERY_WEIGHTS", default_value = "8:4:1", value_parser = parse_weights)]
    pub delivery_weights: PerClass,
    /// Concurrent sends per channel `webhook:email:sms:push`; each channel has its own
    /// workers, so a slow one cannot take the others'.
    #[arg(
        long,
        env = "HERALD_CHANNEL_CONCURRENCY",
        default_value = "256:16:64:64"
    )]
    pub channel_concurrency: PerChannel,
    /// Messages each priority's consumer may hold unacknowledged.
    #[arg(long, env = "HERALD_MAX_ACK_PENDING", default_value_t = 2048)]
    pub max_ack_pending: usize,
    /// Messages per pull request.
    #[arg(long, env = "HERALD_FETCH_BATCH", default_value_t = 256)]
    pub fetch_batch: usize,
    /// JetStream redelivers a message not acknowledged in this time (slow sends send
    /// in-progress acks every third of it).
    #[arg(long, env = "HERALD_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,
    /// Retry policy of high priority `base:cap:max_attempts` (full-jitter exponential).
    #[arg(long, env = "HERALD_RETRY_HIGH", default_value = "200ms:30s:8")]
    pub retry_high: RetryPolicy,
    #[arg(long, env = "HERALD_RETRY_MEDIUM", default_value = "1s:5m:8")]
    pub retry_medium: RetryPolicy,
    #[arg(long, env = "HERALD_RETRY_LOW", default_value = "5s:30m:6")]
    pub retry_low: RetryPolicy,
    /// Key of the webhook HMAC-SHA256 signature when the ingress runs without
    /// authentication (tenants have their own secrets).
    #[arg(
        long,
        env = "HERALD_WEBHOOK_SECRET",
        default_value = "herald-development-secret"
    )]
    pub webhook_secret: String,
    /// Timeout of one webhook request.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,
    /// SMTP relay for email, e.g. `smtps://user:pass@smtp.example.com:465` or
    /// `smtp://user:pass@host:587?tls=required`; without it email notifications are
    /// dead-lettered as undeliverable here.
    #[arg(long, env = "HERALD_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender address of emails.
    #[arg(
        long,
        env = "HERALD_SMTP_FROM",
        default_value = "Herald <herald@localhost>"
    )]
    pub smtp_from: String,
    /// Base URL of the Twilio-shaped SMS API (e.g. https://api.twilio.com); without it SMS
    /// notifications are dead-lettered as undeliverable here.
    #[arg(long, env = "HERALD_SMS_URL")]
    pub sms_url: Option<String>,
    #[arg(long, env = "HERALD_SMS_ACCOUNT_SID", default_value = "")]
    pub sms_account_sid: String,
    #[arg(
        long,
        env = "HERALD_SMS_AUTH_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub sms_auth_token: String,
    /// Sender number or id.
    #[arg(long, env = "HERALD_SMS_FROM", default_value = "")]
    pub sms_from: String,
    /// Base URL of the FCM HTTP v1 API (e.g. https://fcm.googleapis.com); without it push
    /// notifications are dead-lettered as undeliverable here.
    #[arg(long, env = "HERALD_PUSH_URL")]
    pub push_url: Option<String>,
    #[arg(long, env = "HERALD_PUSH_PROJECT", default_value = "")]
    pub push_project: String,
    /// OAuth2 access token for FCM.
    #[arg(
        long,
        env = "HERALD_PUSH_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub push_token: String,
    /// Timeout of one SMS or push provider request.
    #[arg(long, env = "HERALD_PROVIDER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub provider_timeout: Duration,
}

impl DeliveryConfig {
    /// The defaults, as the command line would have them with no flags.
    pub fn defaults() -> Self {
        defaults_of()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    Required,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log output format.
    #[arg(
        long,
        env = "HERALD_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// tracing filter directives (as RUST_LOG), e.g. `info,herald=debug`.
    #[arg(long, env = "HERALD_LOG", default_value = "info", global = true)]
    pub log: String,
}

/// Everything `dispatcher serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the HTTP ingress listens on (port 0 picks a free port).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub nats: NatsConfig,

    #[command(flatten)]
    pub destinations: DestinationConfig,

    /// Largest request body accepted, in bytes (413 above).
    #[arg(long, env = "HERALD_MAX_BODY", default_value_t = 8 * 1024 * 1024)]
    pub max_body: usize,
    /// Open connections at most; more are answered 503 and closed at once (clients see a
    /// clear refusal instead of a hang, and the process keeps its file descriptors).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Largest request head (request line + headers) of HTTP/1.1, and header list of h2, in
    /// bytes (431 above).
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_header_bytes: u32,
    /// Largest `payload` of one notification, in bytes (422 above).
    #[arg(long, env = "HERALD_MAX_PAYLOAD", default_value_t = 64 * 1024)]
    pub max_payload: usize,
    /// Most notifications in one batch request (413 above).
    #[arg(long, env = "HERALD_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// Time allowed for a request head, from its first byte (and for a new connection,
    /// from accept to its first request); the connection is closed after.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request. Announced on
    /// HTTP/1.1 responses (`Keep-Alive: timeout=N`); on expiry HTTP/1.1 gets a FIN and h2 a
    /// GOAWAY. Longer than pooled clients keep idle connections is fine: they close first.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Time allowed for a client to send its request body (408 after).
    #[arg(long, env = "HERALD_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Keep HTTP/1.1 connections open between requests.
    #[arg(long, env = "HERALD_KEEP_ALIVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub keep_alive: bool,
    /// Interval of HTTP/2 keep-alive pings (idle connections that miss one are closed).
    #[arg(long, env = "HERALD_H2_KEEP_ALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub h2_keep_alive_interval: Duration,

    /// Scheduler weights `high:medium:low`: shares of publishing while all are backlogged.
    #[arg(long, env = "HERALD_WEIGHTS", default_value = "8:4:1", value_parser = parse_weights)]
    pub weights: PerClass,
    /// Queue bound per class `high:medium:low`; a full class answers 429. Low is smallest so
    /// that overload sheds it first.
    #[arg(long, env = "HERALD_QUEUE_CAPACITY", default_value = "16384:8192:4096")]
    pub queue_capacity: PerClass,

    #[command(flatten)]
    pub publisher: PublisherConfig,

    /// Shed low, then medium, priority when the door's standing delay exceeds
    /// `--overload-target` (see the README's "Overload"); `false`: queue bounds only.
    #[arg(long, env = "HERALD_OVERLOAD_SHEDDING", default_value_t = true, action = clap::ArgAction::Set)]
    pub overload_shedding: bool,
    /// Standing delay (minimum over an interval of publish sojourn and runtime lag) above
    /// which the door is overloaded.
    #[arg(long, env = "HERALD_OVERLOAD_TARGET", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub overload_target: Duration,
    /// Standing delivery backlog (age of first attempts, per class) above which the
    /// pipeline counts as overloaded; only `dispatcher run`, where delivery shares the
    /// door's process.
    #[arg(long, env = "HERALD_OVERLOAD_BACKLOG", default_value = "1s", value_parser = humantime::parse_duration)]
    pub overload_backlog: Duration,
    /// How long a request refused as `overloaded` waits for its 429: a flood that resends
    /// at once is paced to one request per hold per connection, so refusing it stays
    /// cheap (0: answer at once).
    #[arg(long, env = "HERALD_OVERLOAD_REFUSAL_HOLD", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub overload_refusal_hold: Duration,
    /// How often admission is adjusted, and the window of the minimum.
    #[arg(long, env = "HERALD_OVERLOAD_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub overload_interval: Duration,

    #[command(flatten)]
    pub store: StoreConfig,
    /// `required`: every /v1 route needs `Authorization: Bearer <key>`; `off`: no keys,
    /// everything belongs to one anonymous tenant (development and benchmarks only).
    #[arg(long, env = "HERALD_AUTH", value_enum, default_value = "required")]
    pub auth: AuthMode,
    /// How long a looked-up API key is trusted without asking PostgreSQL again (also how
    /// long a revocation takes to reach every instance).
    #[arg(long, env = "HERALD_KEY_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub key_cache_ttl: Duration,
    /// Default ingress rate limit per tenant, notifications per second (0: no limit);
    /// a tenant's own setting overrides it.
    #[arg(long, env = "HERALD_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
    /// Default burst of the per-tenant token bucket (defaults to one second's worth).
    #[arg(long, env = "HERALD_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// How long an idempotency key remembers its notification.
    #[arg(long, env = "HERALD_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// Longest wait for in-flight requests and publishes at shutdown.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

impl ServeConfig {
    pub fn scheduler(&self) -> SchedulerConfig {
        SchedulerConfig {
            weights: self.weights,
            capacities: self.queue_capacity,
        }
    }

    pub fn admission(&self) -> crate::admission::AdmissionConfig {
        crate::admission::AdmissionConfig {
            enabled: self.overload_shedding,
            target: self.overload_target,
            backlog_target: self.overload_backlog,
            interval: self.overload_interval,
        }
    }

    /// The defaults, as `dispatcher serve` with no flags and no environment would have them.
    pub fn defaults() -> Self {
        defaults_of()
    }
}

fn parse_weights(s: &str) -> Result<PerClass, String> {
    let w: PerClass = s.parse()?;
    if w.0.iter().sum::<usize>() > MAX_WEIGHT_SUM {
        return Err(format!("weights must sum to at most {MAX_WEIGHT_SUM}"));
    }
    Ok(w)
}

/// How Herald reaches NATS and shapes its streams.
#[derive(Debug, Clone, Args)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "HERALD_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Namespace for stream and subject names (and later table and key names): stream
    /// `<PREFIX>NOTIFY`, subjects `<prefix>notify.<priority>.<channel>`.
    #[arg(long, env = "HERALD_PREFIX", default_value = "", value_parser = parse_prefix)]
    pub prefix: String,
    /// Window in which JetStream drops a re-sent message with the same id.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub duplicate_window: Duration,
    /// How long the NOTIFY stream keeps messages.
    #[arg(long, env = "HERALD_STREAM_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub stream_max_age: Duration,
    /// Size bound of the NOTIFY stream in bytes (-1: none). When it is reached new
    /// publishes fail (503) rather than old, undelivered messages being dropped.
    #[arg(long, env = "HERALD_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub stream_max_bytes: i64,
    /// How long a dead letter is kept when nobody replays or deletes it.
    #[arg(long, env = "HERALD_DLQ_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub dlq_max_age: Duration,
    /// Stream replicas (3 on a NATS cluster).
    #[arg(long, env = "HERALD_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// How often readiness re-checks the connection and the stream.
    #[arg(long, env = "HERALD_READINESS_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub readiness_interval: Duration,
}

/// How accepted notifications are batched into JetStream.
#[derive(Debug, Clone, Args)]
pub struct PublisherConfig {
    /// Most messages per publish batch.
    #[arg(long, env = "HERALD_BATCH_MAX", default_value_t = 256)]
    pub batch_max: usize,
    /// Longest a batch waits to fill once its first message is in; 0 publishes at once what
    /// is queued.
    #[arg(long, env = "HERALD_LINGER", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Concurrent publisher tasks.
    #[arg(long, env = "HERALD_PUBLISHERS", default_value_t = 2)]
    pub publishers: usize,
    /// Most publishes awaiting their JetStream ack at once; beyond it publishers wait and
    /// the queues fill, which reaches clients as 429.
    #[arg(long, env = "HERALD_MAX_INFLIGHT", default_value_t = 8192)]
    pub max_inflight: usize,
    /// How long to wait for a JetStream ack before answering 503.
    #[arg(long, env = "HERALD_PUBLISH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,
}

fn parse_prefix(s: &str) -> Result<String, String> {
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
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_point_at_loopback() {
        let c = ServeConfig::defaults();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.nats.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.weights, PerClass([8, 4, 1]));
        assert_eq!(c.max_batch, 1000);
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let bad = [
            vec!["dispatcher", "serve", "--weights", "8:0:1"],
            vec!["dispatcher", "serve", "--weights", "8:4"],
            vec!["dispatcher", "serve", "--prefix", "a.b"],
            vec!["dispatcher", "serve", "--linger", "soon"],
        ];
        for args in bad {
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
    }
}

/// The README's configuration table is the operator's reference: every flag of every role
/// must be in it, so a new flag cannot ship undocumented.
#[cfg(test)]
mod reference {
    use clap::CommandFactory;

    #[test]
    fn every_flag_is_in_the_readme() {
        let readme = include_str!("../../README.md");
        let mut missing = Vec::new();
        let cli = super::Cli::command();
        let mut commands = vec![cli];
        while let Some(command) = commands.pop() {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let flag = format!("--{long}");
                let documented = readme.match_indices(&flag).any(|(at, _)| {
                    !readme[at + flag.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                });
                if !documented {
                    missing.push(format!("{} {flag}", command.get_name()));
                }
            }
            commands.extend(command.get_subcommands().cloned());
        }
        missing.sort();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "flags missing from README.md: {missing:?}"
        );
    }

    /// Every `HERALD_*` variable docker-compose.yml sets or reads is a setting of the
    /// dispatcher, or one of the few the image, loadgen or compose itself reads: a typo
    /// there would be ignored silently by every container.
    #[test]
    fn compose_sets_only_real_settings() {
        const ELSEWHERE: [&str; 4] = [
            "HERALD_HEALTH_URL", // the image's HEALTHCHECK
            "HERALD_API_KEY",    // loadgen's --api-key
            "HERALD_UID",        // compose's user: of loadgen
            "HERALD_GID",
        ];
        let compose = include_str!("../../docker-compose.yml");
        let mut known: Vec<String> = ELSEWHERE.iter().map(|s| s.to_string()).collect();
        let mut commands = vec![super::Cli::command()];
        while let Some(command) = commands.pop() {
            known.extend(
                command
                    .get_arguments()
                    .filter_map(|a| a.get_env())
                    .map(|e| e.to_string_lossy().into_owned()),
            );
            commands.extend(command.get_subcommands().cloned());
        }
        let mut unknown: Vec<&str> = compose
            .match_indices("HERALD_")
            .map(|(at, _)| {
                let rest = &compose[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            // `HERALD_*` in prose names no variable.
            .filter(|name| name.len() > "HERALD_".len())
            .filter(|name| !known.iter().any(|k| k == name))
            .collect();
        unknown.sort();
        unknown.dedup();
        assert!(
            unknown.is_empty(),
            "docker-compose.yml names variables nothing reads: {unknown:?}"
        );
        assert!(
            compose.contains("HERALD_WEBHOOK_ALLOW_NETS"),
            "the scan sees the file"
        );
    }
}

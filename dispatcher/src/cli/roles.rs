//! Each role's own flags: `serve`, `deliver`, `record`, `run`, and the start and stop
//! timeouts they all take.

use super::*;

/// Everything `dispatcher serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP ingress listens on (port 0 picks a free port).
    #[arg(long, env = "HERALD_LISTEN", default_value_t = serve().listen)]
    listen: SocketAddr,
    /// Address of the operators' endpoints (/healthz, /readyz, /metrics; port 0 picks a
    /// free port). The API port answers /healthz and /readyz too, never /metrics.
    #[arg(long, env = "HERALD_METRICS_LISTEN", default_value_t = serve().metrics_listen)]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    egress: EgressArgs,
    #[command(flatten)]
    otlp: OtlpArgs,
    /// Largest request body accepted, in bytes (413 above).
    #[arg(long, env = "HERALD_MAX_BODY", default_value_t = serve().max_body)]
    max_body: usize,
    /// Open connections at most; more are answered 503 and closed at once (clients see a
    /// clear refusal instead of a hang, and the process keeps its file descriptors).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = serve().max_connections)]
    max_connections: usize,
    /// Largest request head (request line + headers) of HTTP/1.1, and header list of h2, in
    /// bytes (431 above).
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value_t = serve().max_header_bytes, value_parser = clap::value_parser!(u32).range(8192..))]
    max_header_bytes: u32,
    /// Largest `payload` of one notification, in bytes (422 above).
    #[arg(long, env = "HERALD_MAX_PAYLOAD", default_value_t = serve().max_payload)]
    max_payload: usize,
    /// Most notifications in one batch request (413 above).
    #[arg(long, env = "HERALD_MAX_BATCH", default_value_t = serve().max_batch)]
    max_batch: usize,
    /// Time allowed for a request head, from its first byte (and for a new connection,
    /// from accept to its first request); the connection is closed after.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT", default_value_t = human(serve().header_timeout))]
    header_timeout: Human,
    /// How long a kept-alive connection may wait for its next request. Announced on
    /// HTTP/1.1 responses (`Keep-Alive: timeout=N`); on expiry HTTP/1.1 gets a FIN and h2 a
    /// GOAWAY. Longer than pooled clients keep idle connections is fine: they close first.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value_t = human(serve().idle_timeout))]
    idle_timeout: Human,
    /// Time allowed for a client to send its request body (408 after).
    #[arg(long, env = "HERALD_BODY_TIMEOUT", default_value_t = human(serve().body_timeout))]
    body_timeout: Human,
    /// Keep HTTP/1.1 connections open between requests.
    #[arg(long, env = "HERALD_KEEP_ALIVE", default_value_t = serve().keep_alive, action = clap::ArgAction::Set)]
    keep_alive: bool,
    /// Interval of HTTP/2 keep-alive pings (idle connections that miss one are closed).
    #[arg(long, env = "HERALD_H2_KEEP_ALIVE_INTERVAL", default_value_t = human(serve().h2_keep_alive_interval))]
    h2_keep_alive_interval: Human,

    /// Scheduler weights `high:medium:low`: shares of publishing while all are backlogged.
    #[arg(long, env = "HERALD_WEIGHTS", default_value_t = scheduler().weights, value_parser = parse_weights)]
    weights: PerClass,
    /// Queue bound per class `high:medium:low`; a full class answers 429. Low is smallest so
    /// that overload sheds it first.
    #[arg(long, env = "HERALD_QUEUE_CAPACITY", default_value_t = scheduler().capacities)]
    queue_capacity: PerClass,

    #[command(flatten)]
    publisher: PublisherArgs,

    /// Shed low, then medium, priority when the door's standing delay exceeds
    /// `--overload-target` (see docs/operations.md, "Overload"); `false`: queue bounds only.
    #[arg(long, env = "HERALD_OVERLOAD_SHEDDING", default_value_t = admission().enabled, action = clap::ArgAction::Set)]
    overload_shedding: bool,
    /// Standing delay (minimum over an interval of publish sojourn and runtime lag) above
    /// which the door is overloaded.
    #[arg(long, env = "HERALD_OVERLOAD_TARGET", default_value_t = human(admission().target))]
    overload_target: Human,
    /// Standing delivery backlog above which the pipeline counts as overloaded: per class,
    /// the age of first attempts (`dispatcher run`) or the due messages over the admitted
    /// rate (polled from JetStream every second).
    #[arg(long, env = "HERALD_OVERLOAD_BACKLOG", default_value_t = human(admission().backlog_target))]
    overload_backlog: Human,
    /// Share of the capacity measured when overload began that the door keeps free while
    /// it sheds (0 to 0.9): queues stay short and high stays fast. 0: admit up to
    /// capacity, goodput first.
    #[arg(long, env = "HERALD_OVERLOAD_HEADROOM", default_value_t = admission().headroom, value_parser = parse_headroom)]
    overload_headroom: f64,
    /// Share of the capacity measured when overload began that shedding never cuts below
    /// (0 to 1): goodput promised under a flood, paid for in high's latency. 0: cut as far
    /// as the delays say (high fastest).
    #[arg(long, env = "HERALD_OVERLOAD_GOODPUT_FLOOR", default_value_t = admission().goodput_floor, value_parser = parse_goodput_floor)]
    overload_goodput_floor: f64,
    /// How long a request refused as `overloaded` waits for its 429: a flood that resends
    /// at once is paced to one request per hold per connection, so refusing it stays
    /// cheap (0: answer at once).
    #[arg(long, env = "HERALD_OVERLOAD_REFUSAL_HOLD", default_value_t = human(admission().refusal_hold))]
    overload_refusal_hold: Human,
    /// How often admission is adjusted, and the window of the minimum.
    #[arg(long, env = "HERALD_OVERLOAD_INTERVAL", default_value_t = human(admission().interval))]
    overload_interval: Human,

    #[command(flatten)]
    pg: PgArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Apply pending migrations at start-up.
    #[arg(long, env = "HERALD_MIGRATE", default_value_t = serve().migrate)]
    migrate: bool,
    /// `required`: every /v1 route needs `Authorization: Bearer <key>`; `off`: no keys,
    /// everything belongs to one anonymous tenant (development and benchmarks only).
    #[arg(long, env = "HERALD_AUTH", default_value_t = serve().auth, value_parser = one_of::<AuthMode>(AuthMode::WORDS))]
    auth: AuthMode,
    /// How long a looked-up API key is trusted without asking PostgreSQL again (also how
    /// long a revocation takes to reach every instance).
    #[arg(long, env = "HERALD_KEY_CACHE_TTL", default_value_t = human(serve().key_cache_ttl))]
    key_cache_ttl: Human,
    /// Default ingress rate limit per tenant, notifications per second (0: no limit);
    /// a tenant's own setting overrides it.
    #[arg(long, env = "HERALD_RATE_LIMIT", default_value_t = serve().rate_limit)]
    rate_limit: u32,
    /// Default burst of the per-tenant token bucket (defaults to one second's worth).
    #[arg(long, env = "HERALD_RATE_BURST")]
    rate_burst: Option<u32>,
    /// How long an idempotency key remembers its notification.
    #[arg(long, env = "HERALD_IDEMPOTENCY_TTL", default_value_t = human(serve().idempotency_ttl))]
    idempotency_ttl: Human,

    #[command(flatten)]
    lifecycle: LifecycleArgs,
}

/// Start and stop, alike in every role.
#[derive(Debug, Clone, Args)]
pub struct LifecycleArgs {
    /// How long NATS and the stores the role uses may stay unreached at start: then the
    /// process exits non-zero, naming each (a dependency lost later is reconnected, never
    /// an exit).
    #[arg(long, env = "HERALD_STARTUP_TIMEOUT", default_value_t = human(herald::config::STARTUP_TIMEOUT))]
    startup_timeout: Human,
    /// Longest stop after SIGINT or SIGTERM: in-flight requests, publishes, sends and
    /// writes finish or are left to JetStream's redelivery. A second signal stops at once.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT", default_value_t = human(herald::config::SHUTDOWN_TIMEOUT))]
    shutdown_timeout: Human,
}

impl ServeArgs {
    fn settings(self, mongo: Option<MongoArgs>) -> ServeConfig {
        ServeConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            nats: self.nats.into(),
            egress: self.egress.into(),
            otlp: self.otlp.into(),
            max_body: self.max_body,
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            max_payload: self.max_payload,
            max_batch: self.max_batch,
            header_timeout: self.header_timeout.into(),
            idle_timeout: self.idle_timeout.into(),
            body_timeout: self.body_timeout.into(),
            keep_alive: self.keep_alive,
            h2_keep_alive_interval: self.h2_keep_alive_interval.into(),
            scheduler: SchedulerConfig {
                weights: self.weights,
                capacities: self.queue_capacity,
            },
            publisher: self.publisher.into(),
            admission: AdmissionConfig {
                enabled: self.overload_shedding,
                target: self.overload_target.into(),
                backlog_target: self.overload_backlog.into(),
                interval: self.overload_interval.into(),
                refusal_hold: self.overload_refusal_hold.into(),
                headroom: self.overload_headroom,
                goodput_floor: self.overload_goodput_floor,
            },
            store: store_of(self.pg, self.redis, mongo),
            migrate: self.migrate,
            auth: self.auth,
            key_cache_ttl: self.key_cache_ttl.into(),
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            idempotency_ttl: self.idempotency_ttl.into(),
            shutdown_timeout: self.lifecycle.shutdown_timeout.into(),
            startup_timeout: self.lifecycle.startup_timeout.into(),
        }
    }
}

impl From<ServeArgs> for ServeConfig {
    fn from(a: ServeArgs) -> Self {
        a.settings(None)
    }
}

/// How notifications are delivered.
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    /// Delivery weights `high:medium:low` while all priorities are backlogged.
    #[arg(long, env = "HERALD_DELIVERY_WEIGHTS", default_value_t = delivery().delivery_weights, value_parser = parse_weights)]
    delivery_weights: PerClass,
    /// Concurrent sends per channel `webhook:email:sms:push`; each channel has its own
    /// workers, so a slow one cannot take the others'.
    #[arg(long, env = "HERALD_CHANNEL_CONCURRENCY", default_value_t = delivery().channel_concurrency)]
    channel_concurrency: PerChannel,
    /// Messages each priority's consumer may hold unacknowledged.
    #[arg(long, env = "HERALD_MAX_ACK_PENDING", default_value_t = delivery().max_ack_pending)]
    max_ack_pending: usize,
    /// Messages per pull request.
    #[arg(long, env = "HERALD_FETCH_BATCH", default_value_t = delivery().fetch_batch)]
    fetch_batch: usize,
    /// Most outcome events per EVENTS message.
    #[arg(long, env = "HERALD_EVENT_BATCH", default_value_t = delivery().event_batch)]
    event_batch: usize,
    /// How long a batch of outcome events waits for more after its first, at least (each
    /// worker waits that long at most before it acks; deliveries are not delayed).
    #[arg(long, env = "HERALD_EVENT_LINGER", default_value_t = human(delivery().event_linger))]
    event_linger: Human,
    /// The longest the outcome-event linger grows to at low rates, where it waits for
    /// about eight events at the recent rate: fewer EVENTS messages (each costs NATS a
    /// write and every recorder consumer a delivery and an ack), each status that much
    /// later. Equal to --event-linger: a fixed linger.
    #[arg(long, env = "HERALD_EVENT_LINGER_MAX", default_value_t = human(delivery().event_linger_max))]
    event_linger_max: Human,
    /// JetStream redelivers a message not acknowledged in this time (slow sends send
    /// in-progress acks every third of it).
    #[arg(long, env = "HERALD_ACK_WAIT", default_value_t = human(delivery().ack_wait))]
    ack_wait: Human,
    /// Waits at least this long (a `send_at` ahead, a retry backoff, a destination that
    /// cannot take the message) go to the HOLD stream, out of the ack-pending window;
    /// shorter ones wait in the consumer.
    #[arg(long, env = "HERALD_HOLD_AFTER", default_value_t = human(delivery().hold_after))]
    hold_after: Human,
    /// Retry policy of high priority `base:cap:horizon` (full-jitter exponential waits up to
    /// cap, retried for horizon after the notification was due, then dead-lettered).
    #[arg(long, env = "HERALD_RETRY_HIGH", default_value_t = delivery().retry_high)]
    retry_high: RetryPolicy,
    /// Retry policy of medium priority.
    #[arg(long, env = "HERALD_RETRY_MEDIUM", default_value_t = delivery().retry_medium)]
    retry_medium: RetryPolicy,
    /// Retry policy of low priority.
    #[arg(long, env = "HERALD_RETRY_LOW", default_value_t = delivery().retry_low)]
    retry_low: RetryPolicy,
    /// Signs the webhooks of notifications accepted without authentication (`--auth off`;
    /// tenants have their own secrets): `whsec_` and the standard base64 of 24 to 64 random
    /// bytes, the same for every delivery process. No default.
    #[arg(long, env = "HERALD_WEBHOOK_SECRET", value_parser = parse_secret, hide_env_values = true)]
    webhook_secret: Option<Secret>,
    /// Timeout of one webhook request.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT", default_value_t = human(delivery().webhook_timeout))]
    webhook_timeout: Human,
    /// SMTP relay for email, e.g. `smtps://user:pass@smtp.example.com:465` or
    /// `smtp://user:pass@host:587?tls=required`; without it email notifications are
    /// dead-lettered as undeliverable here. Several relays, comma-separated, are tried in
    /// order when one fails retryably or its circuit is open.
    #[arg(long, env = "HERALD_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// Sender address of emails.
    #[arg(long, env = "HERALD_SMTP_FROM", default_value_t = delivery().smtp_from)]
    smtp_from: String,
    /// Base URL of the Twilio-shaped SMS API (e.g. https://api.twilio.com); without it SMS
    /// notifications are dead-lettered as undeliverable here. Several, comma-separated, are
    /// tried in order (failover); the account, token and sender then list one value per
    /// provider in the same order, or one for all.
    #[arg(long, env = "HERALD_SMS_URL")]
    sms_url: Option<String>,
    #[arg(long, env = "HERALD_SMS_ACCOUNT_SID", default_value_t = delivery().sms_account_sid)]
    sms_account_sid: String,
    #[arg(long, env = "HERALD_SMS_AUTH_TOKEN", default_value_t = delivery().sms_auth_token, hide_env_values = true)]
    sms_auth_token: String,
    /// Sender number or id.
    #[arg(long, env = "HERALD_SMS_FROM", default_value_t = delivery().sms_from)]
    sms_from: String,
    /// Base URL of the FCM HTTP v1 API (e.g. https://fcm.googleapis.com); without it push
    /// notifications are dead-lettered as undeliverable here. Several, comma-separated, are
    /// tried in order (failover), with project and token listed alike.
    #[arg(long, env = "HERALD_PUSH_URL")]
    push_url: Option<String>,
    #[arg(long, env = "HERALD_PUSH_PROJECT", default_value_t = delivery().push_project)]
    push_project: String,
    /// OAuth2 access token for FCM.
    #[arg(long, env = "HERALD_PUSH_TOKEN", default_value_t = delivery().push_token, hide_env_values = true)]
    push_token: String,
    /// Timeout of one SMS or push provider request.
    #[arg(long, env = "HERALD_PROVIDER_TIMEOUT", default_value_t = human(delivery().provider_timeout))]
    provider_timeout: Human,
    /// Bytes of a receiver's or provider's answer read at most, for the attempt's record
    /// (the outcome follows the status alone); past it the connection is dropped.
    #[arg(long, env = "HERALD_RESPONSE_BODY_LIMIT", default_value_t = delivery().response_body_limit)]
    response_body_limit: usize,
    /// How often the DLQ stream's size is read for the herald_dlq_messages gauge.
    #[arg(long, env = "HERALD_DLQ_SIZE_INTERVAL", default_value_t = human(delivery().dlq_size_interval))]
    dlq_size_interval: Human,
    /// Consecutive failures (connection errors, timeouts, 408, 5xx) that open a
    /// destination's circuit: its messages then wait, without spending attempts.
    #[arg(long, env = "HERALD_CIRCUIT_FAILURES", default_value_t = delivery().health.failures, value_parser = clap::value_parser!(u32).range(1..))]
    circuit_failures: u32,
    /// How long a circuit first stays open; it doubles while probes fail.
    #[arg(long, env = "HERALD_CIRCUIT_OPEN", default_value_t = human(delivery().health.open_base))]
    circuit_open: Human,
    /// The longest a circuit stays open between probes.
    #[arg(long, env = "HERALD_CIRCUIT_OPEN_MAX", default_value_t = human(delivery().health.open_cap))]
    circuit_open_max: Human,
    /// Concurrent sends to one destination (its other messages wait).
    #[arg(long, env = "HERALD_DESTINATION_CONCURRENCY", default_value_t = delivery().health.max_in_flight, value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    destination_concurrency: usize,
    /// Sends per second to one destination unless an operator set its own rate
    /// (`PUT /v1/destinations/{destination}`); 0: no limit.
    #[arg(long, env = "HERALD_DESTINATION_RATE", default_value_t = 0.0)]
    destination_rate: f64,
    /// A destination failing without a break this long has its endpoints disabled: their
    /// notifications are dead-lettered with the reason until the destination is resumed.
    #[arg(long, env = "HERALD_DISABLE_AFTER", default_value_t = human(delivery().health.disable_after))]
    disable_after: Human,
}

impl From<DeliveryArgs> for DeliveryConfig {
    fn from(a: DeliveryArgs) -> Self {
        DeliveryConfig {
            delivery_weights: a.delivery_weights,
            channel_concurrency: a.channel_concurrency,
            max_ack_pending: a.max_ack_pending,
            fetch_batch: a.fetch_batch,
            event_batch: a.event_batch,
            event_linger: a.event_linger.into(),
            event_linger_max: a.event_linger_max.into(),
            ack_wait: a.ack_wait.into(),
            hold_after: a.hold_after.into(),
            dlq_size_interval: a.dlq_size_interval.into(),
            health: herald::delivery::health::HealthConfig {
                failures: a.circuit_failures,
                open_base: a.circuit_open.into(),
                open_cap: Duration::from(a.circuit_open_max).max(a.circuit_open.into()),
                max_in_flight: a.destination_concurrency,
                default_rate: (a.destination_rate > 0.0).then_some(a.destination_rate),
                disable_after: a.disable_after.into(),
                ..Default::default()
            },
            retry_high: a.retry_high,
            retry_medium: a.retry_medium,
            retry_low: a.retry_low,
            webhook_secret: a.webhook_secret,
            webhook_timeout: a.webhook_timeout.into(),
            smtp_url: a.smtp_url,
            smtp_from: a.smtp_from,
            sms_url: a.sms_url,
            sms_account_sid: a.sms_account_sid,
            sms_auth_token: a.sms_auth_token,
            sms_from: a.sms_from,
            push_url: a.push_url,
            push_project: a.push_project,
            push_token: a.push_token,
            provider_timeout: a.provider_timeout.into(),
            response_body_limit: a.response_body_limit,
        }
    }
}

/// How the recorder batches.
#[derive(Debug, Clone, Args)]
pub struct RecorderArgs {
    /// Most messages written per statement.
    #[arg(long, env = "HERALD_RECORD_BATCH", default_value_t = recorder().record_batch)]
    record_batch: usize,
    /// How long a recorder batch waits for more messages after its first: fewer, larger
    /// statements at low rates, for status that much later.
    #[arg(long, env = "HERALD_RECORD_LINGER", default_value_t = human(recorder().record_linger))]
    record_linger: Human,
    /// Messages each recorder consumer may hold unacknowledged.
    #[arg(long, env = "HERALD_RECORD_ACK_PENDING", default_value_t = recorder().record_ack_pending)]
    record_ack_pending: usize,
    /// JetStream hands a recorder batch to another recorder when it is not acknowledged
    /// (nor marked in progress) within this time: how soon a crashed recorder's batch is
    /// written by another.
    #[arg(long, env = "HERALD_RECORD_ACK_WAIT", default_value_t = human(recorder().record_ack_wait))]
    record_ack_wait: Human,
    /// How long a notification's status stays in the Redis cache.
    #[arg(long, env = "HERALD_STATUS_CACHE_TTL", default_value_t = human(recorder().status_cache_ttl))]
    status_cache_ttl: Human,
    /// How long MongoDB keeps a message document (TTL index on `accepted_at`).
    #[arg(long, env = "HERALD_MESSAGE_RETENTION", default_value_t = human(recorder().message_retention))]
    message_retention: Human,
    /// Do not record into PostgreSQL / MongoDB (for deployments that keep only one).
    #[arg(long, env = "HERALD_RECORD_SKIP", value_delimiter = ',', value_parser = one_of::<RecordStore>(RecordStore::WORDS))]
    record_skip: Vec<RecordStore>,
    /// `per-store`: each store its own consumers, so a store that is down holds back only
    /// its own. `shared`: one consumer per stream writes into every store, one delivery and
    /// one ack per message fewer, and a store that is down holds back both.
    #[arg(long, env = "HERALD_RECORD_CONSUMERS", default_value_t = recorder().record_consumers, value_parser = one_of::<RecordConsumers>(RecordConsumers::WORDS))]
    record_consumers: RecordConsumers,
}

impl From<RecorderArgs> for RecorderConfig {
    fn from(a: RecorderArgs) -> Self {
        RecorderConfig {
            record_batch: a.record_batch,
            record_linger: a.record_linger.into(),
            record_ack_pending: a.record_ack_pending,
            record_ack_wait: a.record_ack_wait.into(),
            status_cache_ttl: a.status_cache_ttl.into(),
            message_retention: a.message_retention.into(),
            record_skip: a.record_skip,
            record_consumers: a.record_consumers,
        }
    }
}

/// `dispatcher deliver`.
#[derive(Debug, Clone, Args)]
pub struct DeliverArgs {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    delivery: DeliveryArgs,
    #[command(flatten)]
    egress: EgressArgs,
    #[command(flatten)]
    pg: PgArgs,
    #[command(flatten)]
    otlp: OtlpArgs,
    /// Address of the health and metrics endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "HERALD_METRICS_LISTEN", default_value_t = DeliverConfig::default().metrics_listen)]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    lifecycle: LifecycleArgs,
}

impl From<DeliverArgs> for DeliverConfig {
    fn from(a: DeliverArgs) -> Self {
        DeliverConfig {
            nats: a.nats.into(),
            delivery: a.delivery.into(),
            egress: a.egress.into(),
            pg: a.pg.into(),
            metrics_listen: a.metrics_listen,
            otlp: a.otlp.into(),
            startup_timeout: a.lifecycle.startup_timeout.into(),
            shutdown_timeout: a.lifecycle.shutdown_timeout.into(),
        }
    }
}

/// `dispatcher record`.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    pg: PgArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    mongo: MongoArgs,
    #[command(flatten)]
    recorder: RecorderArgs,
    /// Apply pending migrations at start-up.
    #[arg(long, env = "HERALD_MIGRATE", default_value_t = RecordConfig::default().migrate)]
    migrate: bool,
    /// Address of the health and metrics endpoints (/healthz, /readyz, /metrics).
    #[arg(long, env = "HERALD_METRICS_LISTEN", default_value_t = RecordConfig::default().metrics_listen)]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    lifecycle: LifecycleArgs,
}

impl From<RecordArgs> for RecordConfig {
    fn from(a: RecordArgs) -> Self {
        RecordConfig {
            nats: a.nats.into(),
            store: store_of(a.pg, a.redis, Some(a.mongo)),
            recorder: a.recorder.into(),
            migrate: a.migrate,
            metrics_listen: a.metrics_listen,
            startup_timeout: a.lifecycle.startup_timeout.into(),
            shutdown_timeout: a.lifecycle.shutdown_timeout.into(),
        }
    }
}

/// `dispatcher run`: the ingress's flags plus the recorder's store and the delivery's and
/// the recorder's own.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    mongo: MongoArgs,
    #[command(flatten)]
    delivery: DeliveryArgs,
    #[command(flatten)]
    recorder: RecorderArgs,
}

impl From<RunArgs> for RunConfig {
    fn from(a: RunArgs) -> Self {
        RunConfig {
            serve: a.serve.settings(Some(a.mongo)),
            delivery: a.delivery.into(),
            recorder: a.recorder.into(),
        }
    }
}

fn parse_goodput_floor(text: &str) -> Result<f64, String> {
    parse_share(text, 1.0)
}

fn parse_headroom(text: &str) -> Result<f64, String> {
    parse_share(text, 0.9)
}

fn parse_share(text: &str, most: f64) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=most).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share from 0 to {most}")),
    }
}

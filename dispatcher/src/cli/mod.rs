//! The command line: flags and their `HERALD_*` fallbacks, turned into the library's plain
//! settings (`herald::config`). Every default comes from those settings' `Default`, so it
//! is written once; these files only say how each setting is spelled and explained:
//! this one the commands and what every role shares, [`connections`] how NATS and the
//! stores are reached, [`roles`] each role's own flags.

mod connections;
mod roles;

use connections::store_of;
pub use connections::*;
pub use roles::*;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use herald::admission::AdmissionConfig;
use herald::config::{
    check_identifier, check_prefix, parse_weights, AuthMode, DeliverConfig, DeliveryConfig,
    EgressConfig, NatsConfig, OtlpConfig, PerChannel, PgConfig, PublisherConfig, RecordConfig,
    RecordConsumers, RecordStore, RecorderConfig, RunConfig, ServeConfig, StoreConfig,
};
use herald::delivery::retry::RetryPolicy;
use herald::egress::{parse_nets, Nets};
use herald::scheduler::{PerClass, SchedulerConfig};
use herald::signing::Secret;

type Human = humantime::Duration;

/// A `whsec_` secret; the refusal says what one looks like, never the value given.
fn parse_secret(text: &str) -> Result<Secret, String> {
    Secret::parse(text)
        .map_err(|e| format!("{e}; make one with: echo whsec_$(openssl rand -base64 32)"))
}

fn human(d: Duration) -> Human {
    d.into()
}

/// A parser that offers exactly `words` (shown in --help) and yields their setting.
fn one_of<T>(words: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Debug,
{
    PossibleValuesParser::new(words).map(|word| word.parse().expect("a listed word"))
}

fn serve() -> ServeConfig {
    ServeConfig::default()
}
fn nats() -> NatsConfig {
    NatsConfig::default()
}
fn pg() -> PgConfig {
    PgConfig::default()
}
fn store() -> StoreConfig {
    StoreConfig::default()
}
fn publisher() -> PublisherConfig {
    PublisherConfig::default()
}
fn admission() -> AdmissionConfig {
    AdmissionConfig::default()
}
fn scheduler() -> SchedulerConfig {
    SchedulerConfig::default()
}
fn delivery() -> DeliveryConfig {
    DeliveryConfig::default()
}
fn recorder() -> RecorderConfig {
    RecorderConfig::default()
}

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
    Serve(Box<ServeArgs>),
    /// Run the delivery workers alone: consume NOTIFY by priority and deliver.
    Deliver(Box<DeliverArgs>),
    /// Run ingress, delivery and the recorder in one process (the quick start's default).
    Run(Box<RunArgs>),
    /// Run the recorder alone: consume NOTIFY and EVENTS into PostgreSQL, MongoDB and the
    /// Redis status cache.
    Record(Box<RecordArgs>),
    /// Apply the SQL migrations in migrations/ to the configured schema, then exit.
    Migrate(PgArgs),
    /// Remove everything under one namespace: the prefix's streams, its Redis keys, and
    /// the schema and MongoDB database named (test and benchmark namespaces, torn-down
    /// deployments). Prints what was removed as JSON; exits 1 if a store could not be asked.
    Purge(PurgeArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `dispatcher purge`: no environment fallback for the prefix, so a namespace is removed
/// only when named on the command line.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The namespace to remove (not empty).
    #[arg(long, value_parser = check_prefix)]
    pub prefix: String,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "HERALD_NATS_URL", default_value_t = nats().nats_url)]
    pub nats_url: String,
    /// Keep the PostgreSQL schema and the MongoDB database (to look into them).
    #[arg(long)]
    pub keep_schema: bool,
    #[command(flatten)]
    pub pg: PgArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
}

impl PurgeArgs {
    pub fn settings(self) -> (NatsConfig, StoreConfig, bool) {
        let nats = NatsConfig {
            nats_url: self.nats_url,
            prefix: self.prefix,
            ..NatsConfig::default()
        };
        (
            nats,
            store_of(self.pg, self.redis, Some(self.mongo)),
            self.keep_schema,
        )
    }
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
        pg: PgArgs,
    },
    /// Give a tenant (or with --url one of its endpoints) a fresh webhook signing secret
    /// and print it (once). The secret it replaces keeps signing beside it for --overlap,
    /// so receivers switch without a gap.
    RotateSecret {
        /// Name of the tenant.
        name: String,
        /// How long the replaced secret keeps signing (at most 7 days).
        #[arg(long, default_value = "24h", value_parser = parse_overlap)]
        overlap: Human,
        /// An endpoint: the exact webhook URL that gets a secret of its own (the tenant's
        /// signs it beside the new one for --overlap).
        #[arg(long, conflicts_with = "ed25519")]
        url: Option<String>,
        /// Create or replace the tenant's ed25519 key instead (`v1a` signatures); prints
        /// its public key.
        #[arg(long)]
        ed25519: bool,
        #[command(flatten)]
        pg: PgArgs,
    },
}

/// A rotation's overlap: at most 7 days, as the API allows.
fn parse_overlap(text: &str) -> Result<Human, String> {
    let overlap: Human = text.parse().map_err(|e| format!("{e}"))?;
    if Duration::from(overlap) > Duration::from_secs(7 * 24 * 3600) {
        return Err(String::from("the overlap is at most 7 days"));
    }
    Ok(overlap)
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key for a tenant and print it (once: only its hash is stored).
    Create {
        /// Name of the tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        pg: PgArgs,
    },
    /// Revoke an API key by its id (as printed by `key create`).
    Revoke {
        id: uuid::Uuid,
        #[command(flatten)]
        pg: PgArgs,
    },
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
    /// tracing filter directives (as RUST_LOG), e.g. `info,herald=debug`. async-nats's
    /// own event lines are at INFO and repeat every reconnect attempt: Herald logs the
    /// client's events itself, once per change, so the default quietens them.
    #[arg(
        long,
        env = "HERALD_LOG",
        default_value = "info,async_nats=warn,sqlx::postgres::notice=warn",
        global = true
    )]
    pub log: String,
}

#[cfg(test)]
mod tests;

//! The PostgreSQL pool and the migrations. Every connection's `search_path` is the
//! configured schema, so statements name tables unqualified and tests isolate by schema.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The SQL files in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool that connects on first use: Herald starts while PostgreSQL is down, and what
/// needs the database answers 503 (or retries) until it is back.
pub fn pool(config: &PgConfig) -> Result<PgPool, sqlx::Error> {
    pool_waiting(config, Duration::from_secs(3))
}

/// As [`pool`], a statement waiting up to `patience` for a connection: sqlx keeps
/// retrying while PostgreSQL refuses connections or is starting up. For one-shot commands
/// started beside a fresh database (compose's `migrate`).
pub fn pool_waiting(config: &PgConfig, patience: Duration) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.database_url.parse()?;
    let options = options
        .options([("search_path", config.pg_schema.as_str())])
        .application_name("herald");
    Ok(PgPoolOptions::new()
        .max_connections(config.pg_max_connections.max(1))
        .acquire_timeout(patience)
        .connect_lazy_with(options))
}

/// Creates the schema if needed and applies pending migrations (idempotent; concurrent
/// runs are serialized by sqlx's advisory lock).
pub async fn migrate(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    // The schema name was checked by the config parser: a plain identifier.
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(pool)
        .await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// How to reach PostgreSQL, and where Herald's tables are.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub database_url: String,
    /// Schema holding the tables; interpolated into statements, so [`check_identifier`].
    pub pg_schema: String,
    /// Most connections of this process.
    pub pg_max_connections: u32,
    /// The key the webhook secrets stored here are sealed with (`crate::sealing`); the
    /// roles that read or write them refuse to start without it.
    pub secrets_key: Option<crate::sealing::SealingKey>,
}

impl PgConfig {
    /// The sealing key, or why a role that needs it cannot start.
    pub fn sealing_key(&self) -> Result<crate::sealing::SealingKey, String> {
        self.secrets_key.clone().ok_or_else(|| {
            format!(
                "{} (--secrets-key) is not set: it seals the webhook secrets stored in PostgreSQL (make one with: openssl rand -base64 32, and keep it: secrets sealed with one key open with no other)",
                crate::sealing::KEY_ENV
            )
        })
    }
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            database_url: String::from("postgres://root@127.0.0.1:5432/test"),
            pg_schema: String::from("herald"),
            pg_max_connections: 8,
            secrets_key: None,
        }
    }
}

/// Drops `schema` with everything in it (a namespace's purge).
pub async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    // The schema name was checked as a plain identifier by the settings.
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pool)
        .await
        .map(drop)
}

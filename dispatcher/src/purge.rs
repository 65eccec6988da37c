//! `dispatcher purge`: removes everything Herald keeps under one namespace, each store
//! emptied by its own module (`jetstream`, `redis_store`, `postgres`, `recorder::mongo`).
//! A store that cannot be reached is named, and the others are purged all the same.

use std::time::Duration;

use crate::config::{NatsConfig, StoreConfig};
use crate::dependencies::{self, Kind};
use crate::jetstream::{self, Names};
use crate::lifecycle::StartError;
use crate::postgres;
use crate::recorder::mongo;
use crate::redis_store::RedisStore;

/// What [`purge`] removed, and what it could not reach.
#[derive(Debug, Default, serde::Serialize)]
pub struct Purged {
    pub streams: Vec<String>,
    pub pg_schema: Option<String>,
    pub mongo_db: Option<String>,
    pub redis_keys: usize,
    /// One line per store that could not be asked (the rest was purged all the same).
    pub failures: Vec<String>,
}

/// Removes everything Herald keeps under one namespace: the prefix's streams (with their
/// consumers), its Redis keys, and, unless `keep_schema`, the PostgreSQL schema and the
/// MongoDB database named in `store`. For test and benchmark namespaces, and for
/// tearing down a tenant's deployment; the empty prefix (a production default) is
/// refused.
pub async fn purge(
    nats: &NatsConfig,
    store: &StoreConfig,
    keep_schema: bool,
) -> Result<Purged, StartError> {
    if nats.prefix.is_empty() {
        return Err(StartError::Settings(String::from(
            "purge needs a non-empty --prefix (the empty one is a deployment's)",
        )));
    }
    let mut purged = Purged::default();
    match async_nats::connect(&nats.nats_url).await {
        Ok(client) => {
            let js = async_nats::jetstream::new(client);
            let (deleted, failures) =
                jetstream::delete_streams(&js, &Names::new(&nats.prefix)).await;
            purged.streams = deleted;
            purged.failures.extend(failures);
        }
        Err(err) => purged.failures.push(dependencies::line(
            Kind::Nats,
            &nats.nats_url,
            &dependencies::cause(&err),
        )),
    }
    let redis_failed = |cause: &str| dependencies::line(Kind::Redis, &store.redis_url, cause);
    match RedisStore::new(&store.redis_url, &nats.prefix) {
        Ok(redis) => match redis.delete_prefixed().await {
            Ok(n) => purged.redis_keys = n,
            Err(err) => purged
                .failures
                .push(redis_failed(&dependencies::cause(&err))),
        },
        Err(err) => purged.failures.push(redis_failed(&err.to_string())),
    }
    if keep_schema {
        return Ok(purged);
    }
    match dependencies::reach_postgres(&store.pg, Duration::from_secs(5)).await {
        Err(line) => purged.failures.push(line),
        Ok(()) => {
            let pool = postgres::pool(&store.pg)?;
            match postgres::drop_schema(&pool, &store.pg.pg_schema).await {
                Ok(()) => purged.pg_schema = Some(store.pg.pg_schema.clone()),
                Err(err) => purged.failures.push(format!("PostgreSQL: {err}")),
            }
            pool.close().await;
        }
    }
    match mongo::drop_database(&store.mongo_url, &store.mongo_db).await {
        Ok(()) => purged.mongo_db = Some(store.mongo_db.clone()),
        Err(err) => purged.failures.push(dependencies::line(
            Kind::Mongodb,
            &store.mongo_url,
            &dependencies::classify_text(&err.to_string()),
        )),
    }
    Ok(purged)
}

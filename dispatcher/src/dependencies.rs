//! What a role depends on (NATS and its stores), watched from start to stop, so that a
//! misconfigured deployment says what is wrong: each dependency is probed on its own
//! connection, a failure is logged naming the flag, the address (credentials masked) and
//! the cause, `/readyz` lists every dependency's state, and a dependency not reached once
//! within `--startup-timeout` ends the start with that line.
//!
//! A dependency lost after it was reached is a reconnect, not an exit: the roles' own
//! connections retry, and these probes only report.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Backoff;

/// How often a dependency that answers is asked again (cheap: one round trip each).
const UP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait between probes of a dependency that does not answer.
const DOWN_INTERVAL_MAX: Duration = Duration::from_secs(2);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// While a dependency stays down, its line is repeated this often at most.
const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// One thing a role needs, as an operator names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Nats,
    Postgres,
    Redis,
    Mongodb,
}

impl Kind {
    /// The flag that sets its address.
    pub fn flag(self) -> &'static str {
        match self {
            Kind::Nats => "--nats-url",
            Kind::Postgres => "--database-url",
            Kind::Redis => "--redis-url",
            Kind::Mongodb => "--mongo-url",
        }
    }
}

/// What losing a dependency does to `/readyz` once the role has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenDown {
    /// The role cannot do its work: unready.
    Unready,
    /// The role still serves (from caches, or by waiting): ready, the body says degraded.
    Degraded,
}

type Probe =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A dependency to watch: what it is, where, and how to ask it.
pub struct Target {
    pub kind: Kind,
    /// The address as configured; only its masked form is kept.
    pub address: String,
    pub when_down: WhenDown,
    pub probe: Probe,
}

impl Target {
    pub fn new<F, Fut>(kind: Kind, address: &str, when_down: WhenDown, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Target {
            kind,
            address: address.to_string(),
            when_down,
            probe: Box::new(move || Box::pin(probe())),
        }
    }
}

/// One dependency's state, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub name: Kind,
    pub flag: &'static str,
    /// Credentials masked.
    pub address: String,
    /// `up`, `down`, or `starting` (not asked yet).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Whether the role stays ready without it.
    pub degraded_only: bool,
}

struct Entry {
    kind: Kind,
    address: String,
    when_down: WhenDown,
    state: Mutex<State>,
    /// Up at least once: a loss after that is a reconnect, never the end of the start.
    reached: AtomicBool,
}

#[derive(Clone)]
enum State {
    Starting,
    Up,
    Down { cause: String },
}

/// The watched dependencies of one role.
pub struct Dependencies {
    entries: Vec<Arc<Entry>>,
    started: tokio::time::Instant,
    startup_timeout: Duration,
    stop: CancellationToken,
}

impl Dependencies {
    /// Starts one probing task per target, each until `stop`.
    pub fn watch(targets: Vec<Target>, startup_timeout: Duration) -> Arc<Self> {
        let stop = CancellationToken::new();
        let mut entries = Vec::new();
        for target in targets {
            let entry = Arc::new(Entry {
                kind: target.kind,
                address: mask(&target.address),
                when_down: target.when_down,
                state: Mutex::new(State::Starting),
                reached: AtomicBool::new(false),
            });
            tokio::spawn(watch_one(entry.clone(), target.probe, stop.clone()));
            entries.push(entry);
        }
        Arc::new(Dependencies {
            entries,
            started: tokio::time::Instant::now(),
            startup_timeout,
            stop,
        })
    }

    /// The role's own NATS connection is up: NATS is, whatever the last probe said (the
    /// probe names causes; it may lag the role's connection by its interval).
    pub fn nats_connected(&self) {
        for e in self.entries.iter().filter(|e| e.kind == Kind::Nats) {
            e.reached.store(true, Ordering::Release);
            *e.state.lock().expect("never poisoned") = State::Up;
        }
    }

    /// Every dependency's state.
    pub fn statuses(&self) -> Vec<Status> {
        self.entries
            .iter()
            .map(|e| {
                let state = e.state.lock().expect("never poisoned").clone();
                let (state, cause) = match state {
                    State::Starting => ("starting", None),
                    State::Up => ("up", None),
                    State::Down { cause } => ("down", Some(cause)),
                };
                Status {
                    name: e.kind,
                    flag: e.kind.flag(),
                    address: e.address.clone(),
                    state,
                    cause,
                    degraded_only: e.when_down == WhenDown::Degraded,
                }
            })
            .collect()
    }

    /// The first dependency the role cannot be ready without that is not up, as a reason.
    pub fn unready_reason(&self) -> Option<String> {
        self.statuses()
            .into_iter()
            .find(|s| !s.degraded_only && s.state != "up")
            .map(|s| describe(&s))
    }

    /// Resolves, with the line to end on, once `--startup-timeout` has passed while some
    /// dependency was never reached; never resolves otherwise.
    pub async fn startup_failure(&self) -> String {
        tokio::time::sleep_until(self.started + self.startup_timeout).await;
        let never_reached: Vec<String> = self
            .statuses()
            .iter()
            .filter(|s| !self.reached(s.name))
            .map(describe)
            .collect();
        if never_reached.is_empty() {
            return std::future::pending().await;
        }
        format!(
            "not reached within --startup-timeout ({}s): {}",
            self.startup_timeout.as_secs(),
            never_reached.join("; ")
        )
    }

    fn reached(&self, kind: Kind) -> bool {
        self.entries
            .iter()
            .filter(|e| e.kind == kind)
            .all(|e| e.reached.load(Ordering::Acquire))
    }
}

impl Drop for Dependencies {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// "`--flag` `address`: cause", the one way a dependency is named in logs and answers.
fn describe(s: &Status) -> String {
    let cause = s.cause.as_deref().unwrap_or("not answered yet");
    line(s.name, &s.address, cause)
}

/// "Name (--flag address): cause", with the address masked.
pub fn line(kind: Kind, address: &str, cause: &str) -> String {
    format!(
        "{} ({} {}): {cause}",
        kind.label(),
        kind.flag(),
        mask(address)
    )
}

/// Probes `entry` until `stop`: every [`UP_INTERVAL`] while it answers, backing off from
/// 0.5 s to 2 s while it does not. Logs each change of state, and a failure again at most
/// every [`REPEAT_EVERY`].
async fn watch_one(entry: Arc<Entry>, probe: Probe, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), DOWN_INTERVAL_MAX);
    let mut down_since: Option<Instant> = None;
    let mut last_line = Instant::now();
    loop {
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "timed out (no answer within {}s)",
                PROBE_TIMEOUT.as_secs()
            )),
        };
        let (flag, address, name) = (
            entry.kind.flag(),
            entry.address.as_str(),
            entry.kind.label(),
        );
        let wait = match answer {
            Ok(()) => {
                if let Some(since) = down_since.take() {
                    tracing::info!(flag, address, down_for = ?since.elapsed(), "{name} is reachable again");
                } else if !entry.reached.load(Ordering::Acquire) {
                    tracing::info!(flag, address, "{name} reached");
                }
                entry.reached.store(true, Ordering::Release);
                *entry.state.lock().expect("never poisoned") = State::Up;
                backoff = Backoff::new(Duration::from_millis(500), DOWN_INTERVAL_MAX);
                UP_INTERVAL
            }
            Err(cause) => {
                let now = Instant::now();
                let changed = match &*entry.state.lock().expect("never poisoned") {
                    State::Down { cause: before } => before != &cause,
                    _ => true,
                };
                let since = *down_since.get_or_insert(now);
                if changed || now.duration_since(last_line) >= REPEAT_EVERY {
                    last_line = now;
                    let down_for = now.duration_since(since);
                    if entry.reached.load(Ordering::Acquire) {
                        tracing::warn!(flag, address, %cause, ?down_for, "{name} is unreachable; retrying");
                    } else {
                        tracing::warn!(flag, address, %cause, ?down_for, "{name} not reached yet; retrying");
                    }
                }
                *entry.state.lock().expect("never poisoned") = State::Down { cause };
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// NATS, asked on a connection of its own: a fresh connect names the exact cause (DNS,
/// refused, authentication, TLS) that the role's retrying connection only logs as "IO
/// error". The connection is kept while it is up, so asking again costs a state read.
pub fn nats(url: &str, when_down: WhenDown) -> Target {
    let servers: Vec<String> = crate::jetstream::server_list(url)
        .into_iter()
        .map(String::from)
        .collect();
    let held = Arc::new(tokio::sync::Mutex::new(None::<async_nats::Client>));
    Target::new(Kind::Nats, url, when_down, move || {
        let (servers, held) = (servers.clone(), held.clone());
        async move {
            let mut held = held.lock().await;
            if let Some(client) = held.as_ref() {
                if client.connection_state() == async_nats::connection::State::Connected {
                    return Ok(());
                }
            }
            *held = None;
            let connected = async_nats::ConnectOptions::new()
                .name("herald-probe")
                .connection_timeout(Duration::from_secs(2))
                .connect(servers.as_slice())
                .await;
            match connected {
                Ok(client) => {
                    *held = Some(client);
                    Ok(())
                }
                Err(e) => Err(cause(&e)),
            }
        }
    })
}

/// PostgreSQL, asked with `SELECT 1` on one connection of its own, made again when lost.
pub fn postgres(
    pg: &crate::postgres::PgConfig,
    when_down: WhenDown,
) -> Result<Target, sqlx::Error> {
    use sqlx::Connection;
    let options: sqlx::postgres::PgConnectOptions = pg.database_url.parse()?;
    let options = options.application_name("herald-probe");
    let held = Arc::new(tokio::sync::Mutex::new(None::<sqlx::PgConnection>));
    Ok(Target::new(
        Kind::Postgres,
        &pg.database_url,
        when_down,
        move || {
            let (options, held) = (options.clone(), held.clone());
            async move {
                let mut held = held.lock().await;
                if let Some(connection) = held.as_mut() {
                    if connection.ping().await.is_ok() {
                        return Ok(());
                    }
                }
                *held = None;
                let connection = sqlx::PgConnection::connect_with(&options)
                    .await
                    .map_err(|e| cause(&e))?;
                *held = Some(connection);
                Ok(())
            }
        },
    ))
}

/// Waits up to `patience` for PostgreSQL to take a connection (trying every second), for
/// the one-shot commands; the error is the one line naming flag, address and cause.
pub async fn reach_postgres(
    pg: &crate::postgres::PgConfig,
    patience: Duration,
) -> Result<(), String> {
    use sqlx::Connection;
    let line = |cause: String| line(Kind::Postgres, &pg.database_url, &cause);
    let options: sqlx::postgres::PgConnectOptions =
        pg.database_url.parse().map_err(|e| line(cause(&e)))?;
    let started = Instant::now();
    loop {
        let cause =
            match tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect_with(&options))
                .await
            {
                Ok(Ok(connection)) => {
                    let _ = connection.close().await;
                    return Ok(());
                }
                Ok(Err(e)) => cause(&e),
                Err(_) => format!("timed out (no answer within {}s)", PROBE_TIMEOUT.as_secs()),
            };
        if started.elapsed() + Duration::from_secs(1) >= patience {
            return Err(line(cause));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Redis, asked with PING on one connection of its own, made again when lost.
pub fn redis(url: &str, when_down: WhenDown) -> Result<Target, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let held = Arc::new(tokio::sync::Mutex::new(
        None::<redis::aio::MultiplexedConnection>,
    ));
    Ok(Target::new(Kind::Redis, url, when_down, move || {
        let (client, held) = (client.clone(), held.clone());
        async move {
            let mut held = held.lock().await;
            if let Some(connection) = held.as_mut() {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(connection).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            *held = None;
            let mut connection = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| cause(&e))?;
            let _: String = redis::cmd("PING")
                .query_async(&mut connection)
                .await
                .map_err(|e| cause(&e))?;
            *held = Some(connection);
            Ok(())
        }
    }))
}

/// MongoDB (or its wire protocol), asked with `ping`; the driver keeps the connection.
pub async fn mongodb(url: &str, when_down: WhenDown) -> Result<Target, mongodb::error::Error> {
    let client = crate::recorder::mongo::client(url).await?;
    Ok(Target::new(Kind::Mongodb, url, when_down, move || {
        let client = client.clone();
        async move {
            client
                .database("admin")
                .run_command(mongodb::bson::doc! { "ping": 1 })
                .await
                .map(|_| ())
                // The driver's server-selection error holds the cause as text only.
                .map_err(|e| classify_text(&e.to_string()))
        }
    }))
}

impl Kind {
    /// Its name in log lines.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Nats => "NATS",
            Kind::Postgres => "PostgreSQL",
            Kind::Redis => "Redis",
            Kind::Mongodb => "MongoDB",
        }
    }
}

/// `url` with its password (or token) replaced by `***`; what is not a URL is kept.
pub fn mask(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some(scheme_end) = one.find("://") else {
                return one.to_string();
            };
            let rest = &one[scheme_end + 3..];
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let Some(at) = rest[..authority_end].rfind('@') else {
                return one.to_string();
            };
            let userinfo = &rest[..at];
            let scheme = &one[..scheme_end];
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                // A lone token (nats://token@host) is the secret itself; elsewhere a lone
                // name is a user name.
                None if scheme == "nats" || scheme == "tls" => String::from("***"),
                None => userinfo.to_string(),
            };
            format!("{scheme}://{masked}{}", &rest[at..])
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The cause of a failed connection in an operator's words (refused, timed out, unknown
/// host, authentication failed, TLS), followed by the error's own text.
pub fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let label = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Some("connection refused"),
                std::io::ErrorKind::TimedOut => Some("timed out"),
                _ => None,
            };
            if let Some(label) = label {
                return format!("{label} ({io})");
            }
        }
        let text = e.to_string();
        if !chain.contains(&text) {
            chain.push(text);
        }
        next = e.source();
    }
    classify_text(&chain.join(": "))
}

/// As [`cause`], from an error's text alone (some clients keep no typed source).
pub fn classify_text(text: &str) -> String {
    let lower = text.to_lowercase();
    let label = if lower.contains("connection refused") {
        "connection refused"
    } else if lower.contains("timed out") || lower.contains("timeout") {
        "timed out"
    } else if lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
        || lower.contains("no such host")
        || lower.contains("temporary failure in name resolution")
        || lower.contains("dns")
    {
        "unknown host"
    } else if lower.contains("password authentication failed")
        || lower.contains("authentication")
        || lower.contains("authorization violation")
        || lower.contains("noauth")
        || lower.contains("wrongpass")
        || lower.contains("auth failed")
    {
        "authentication failed"
    } else if lower.contains("tls") || lower.contains("certificate") || lower.contains("ssl") {
        "TLS"
    } else {
        return text.to_string();
    };
    format!("{label} ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_masked_and_the_rest_kept() {
        assert_eq!(
            mask("postgres://root:s3cret@db:5432/herald?sslmode=disable"),
            "postgres://root:***@db:5432/herald?sslmode=disable"
        );
        assert_eq!(
            mask("nats://t0ken@a:4222,nats://b:4222"),
            "nats://***@a:4222,nats://b:4222"
        );
        assert_eq!(mask("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(mask("postgres://root@db/x"), "postgres://root@db/x");
        assert_eq!(mask("not a url"), "not a url");
    }

    #[test]
    fn causes_are_named_as_an_operator_would() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(cause(&refused).starts_with("connection refused"));
        assert!(
            classify_text("failed to lookup address information: Name or service not known")
                .starts_with("unknown host")
        );
        assert!(
            classify_text("password authentication failed for user \"x\"")
                .starts_with("authentication failed")
        );
        assert_eq!(classify_text("something else"), "something else");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependency_never_reached_ends_the_start_and_one_reached_does_not() {
        let down = Target::new(
            Kind::Postgres,
            "postgres://u:pw@h:1/d",
            WhenDown::Unready,
            || async { Err(String::from("connection refused")) },
        );
        let up = Target::new(Kind::Redis, "redis://h:2", WhenDown::Degraded, || async {
            Ok(())
        });
        let deps = Dependencies::watch(vec![down, up], Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let statuses = deps.statuses();
        assert_eq!((statuses[0].state, statuses[1].state), ("down", "up"));
        assert_eq!(statuses[0].address, "postgres://u:***@h:1/d");
        assert!(deps.unready_reason().unwrap().contains("--database-url"));
        let line = deps.startup_failure().await;
        assert!(
            line.contains("--database-url postgres://u:***@h:1/d"),
            "{line}"
        );
        assert!(!line.contains("--redis-url"), "{line}");

        let fine = Dependencies::watch(
            vec![Target::new(
                Kind::Nats,
                "nats://h:3",
                WhenDown::Unready,
                || async { Ok(()) },
            )],
            Duration::from_secs(5),
        );
        let ended = tokio::time::timeout(Duration::from_secs(60), fine.startup_failure()).await;
        assert!(
            ended.is_err(),
            "a reached dependency does not end the start"
        );
        assert_eq!(fine.unready_reason(), None);
    }
}

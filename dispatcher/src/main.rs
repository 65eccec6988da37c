//! `dispatcher`: the Herald binary. Parses the command line and runs the chosen role until
//! SIGINT or SIGTERM, then shuts it down gracefully and exits 0.

mod cli;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, KeyCommand, LogArgs, LogFormat, TenantCommand};
use herald::app::{self, App};
use herald::config::PgConfig;
use herald::{postgres, tenants};
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log)?;
    refuse_transparent_huge_pages();
    // The recorder is background work through and through: `record` alone is niced, and
    // in `run` the recorder gets a runtime of its own, niced, so the door (and high's
    // deliveries) win the CPU when it is short.
    let alone_in_background = matches!(cli.command, Command::Record(_));
    let runtime = build_runtime("herald", alone_in_background.then_some(cli.background_nice))?;
    let background = match cli.command {
        Command::Run(_) => Some(build_runtime("herald-bg", Some(cli.background_nice))?),
        _ => None,
    };
    let outcome = runtime.block_on(async {
        // Signals are heard from the first moment: a start that waits for NATS or a store
        // is interrupted as promptly as a running role.
        let signals = Signals::listen()?;
        let start = async {
            anyhow::Ok(match cli.command {
                Command::Serve(args) => Some(App::serve((*args).into()).await?),
                Command::Deliver(args) => Some(App::deliver((*args).into()).await?),
                Command::Record(args) => Some(App::record((*args).into()).await?),
                Command::Run(args) => Some(
                    App::run(
                        (*args).into(),
                        background.as_ref().map(|r| r.handle().clone()),
                    )
                    .await?,
                ),
                command => {
                    one_shot(command).await?;
                    None
                }
            })
        };
        let app = tokio::select! {
            started = start => match started {
                Ok(Some(app)) => app,
                Ok(None) => return Ok(()),
                Err(err) => return Err(err),
            },
            () = signals.nth(1) => {
                // Nothing was accepted yet: the ingress answers 202 only once NATS has the
                // message, and a part that had started is dropped with the process.
                tracing::info!("signal received while starting; stopped");
                return Ok(());
            }
        };
        let failure = tokio::select! {
            () = signals.nth(1) => None,
            line = app.startup_failure() => Some(line),
        };
        if failure.is_some() {
            tracing::info!("start-up failed; stopping");
        }
        let deadline = app.stop_deadline();
        tokio::spawn(async move {
            signals.nth(2).await;
            tracing::error!("second signal: stopping now, without waiting for the drain");
            std::process::exit(130);
        });
        // Each part is bounded by what is left of the deadline; this bounds the rest.
        if tokio::time::timeout(deadline + std::time::Duration::from_secs(2), app.shutdown())
            .await
            .is_err()
        {
            anyhow::bail!("the stop took longer than --shutdown-timeout ({deadline:?})");
        }
        match failure {
            Some(line) => Err(anyhow::anyhow!(line)),
            None => Ok(()),
        }
    });
    // Outside any runtime's context, where dropping one may block.
    drop(background);
    // One line, in the log's own format (JSON too), then a non-zero exit.
    if let Err(err) = outcome {
        tracing::error!("{err:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// How long `migrate` waits for PostgreSQL (documented; compose starts both together).
const MIGRATE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long `tenant` and `key` wait for PostgreSQL.
const COMMAND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// PostgreSQL reached within `patience`, or the one line that says why not.
async fn reach(pg: &PgConfig, patience: std::time::Duration) -> anyhow::Result<()> {
    herald::dependencies::reach_postgres(pg, patience)
        .await
        .map_err(anyhow::Error::msg)
}

/// The commands that do one thing and exit.
/// The tenant commands' store: PostgreSQL reached, and the key its secrets are sealed with
/// (checked first: without it nothing is touched).
async fn tenant_store(
    pg: cli::PgArgs,
) -> anyhow::Result<(sqlx::PgPool, herald::sealing::SealingKey)> {
    let pg = PgConfig::from(pg);
    let key = pg.sealing_key().map_err(anyhow::Error::msg)?;
    reach(&pg, COMMAND_PATIENCE).await?;
    Ok((postgres::pool(&pg)?, key))
}

async fn one_shot(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) | Command::Deliver(_) | Command::Record(_) | Command::Run(_) => {
            unreachable!("roles are started by main")
        }
        Command::Migrate(pg) => {
            let pg = PgConfig::from(pg);
            // PostgreSQL is often started together with Herald: wait for it a minute.
            reach(&pg, MIGRATE_PATIENCE).await?;
            app::migrate(&pg).await.context("applying migrations")?;
            println!("migrations applied to schema {}", pg.pg_schema);
            Ok(())
        }
        Command::Purge(args) => {
            let (nats, store, keep_schema) = args.settings();
            let purged = herald::purge::purge(&nats, &store, keep_schema).await?;
            println!("{}", serde_json::to_string(&purged)?);
            anyhow::ensure!(
                purged.failures.is_empty(),
                "not everything could be purged: {:?}",
                purged.failures
            );
            Ok(())
        }
        Command::Tenant(TenantCommand::Create {
            name,
            rate,
            burst,
            max_payload,
            pg,
        }) => {
            let (pool, key) = tenant_store(pg).await?;
            let limits = tenants::TenantLimits {
                rate_per_sec: rate,
                burst,
                max_payload,
            };
            let tenant = tenants::create_tenant(&pool, &key, &name, limits).await?;
            println!(
                "{}",
                serde_json::json!({
                    "id": tenant.id,
                    "name": tenant.name,
                    "webhook_secret": tenant.webhook_secret,
                })
            );
            Ok(())
        }
        Command::Tenant(TenantCommand::RotateSecret {
            name,
            overlap,
            url,
            ed25519,
            pg,
        }) => {
            let (pool, key) = tenant_store(pg).await?;
            let id = tenants::id_of(&pool, &name).await?;
            let overlap = overlap.into();
            let rotated = match (url.as_deref(), ed25519) {
                (Some(url), _) => {
                    tenants::rotate_endpoint_secret(&pool, &key, id, url, overlap).await?
                }
                (None, true) => {
                    tenants::rotate_key(&pool, &key, id, tenants::KeyKind::Ed25519, overlap).await?
                }
                (None, false) => {
                    tenants::rotate_key(&pool, &key, id, tenants::KeyKind::Secret, overlap).await?
                }
            }
            .ok_or_else(|| tenants::TenantError::UnknownTenant(name.clone()))?;
            let shown = if ed25519 {
                "public_key"
            } else {
                "webhook_secret"
            };
            println!(
                "{}",
                serde_json::json!({
                    "id": id,
                    "name": name,
                    "url": url,
                    shown: rotated.secret,
                    "previous_expires_at": rotated.previous_expires_at,
                })
            );
            Ok(())
        }
        Command::Key(KeyCommand::Create { tenant, pg }) => {
            let pg = PgConfig::from(pg);
            reach(&pg, COMMAND_PATIENCE).await?;
            let pool = postgres::pool(&pg)?;
            let key = tenants::create_key(&pool, &tenant).await?;
            println!(
                "{}",
                serde_json::json!({ "id": key.id, "tenant": tenant, "key": key.key })
            );
            Ok(())
        }
        Command::Key(KeyCommand::Revoke { id, pg }) => {
            let pg = PgConfig::from(pg);
            reach(&pg, COMMAND_PATIENCE).await?;
            let pool = postgres::pool(&pg)?;
            tenants::revoke_key(&pool, id).await?;
            println!("{}", serde_json::json!({ "id": id, "revoked": true }));
            Ok(())
        }
    }
}

/// A multi-threaded runtime whose threads are named `name` and, with `nice`, niced.
fn build_runtime(name: &str, nice: Option<i32>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name(name);
    if let Some(nice) = nice.filter(|&n| n > 0) {
        builder.on_thread_start(move || renice_this_thread(nice));
    }
    builder
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

/// Lowers the calling thread's scheduling priority (Linux nice values are per thread).
fn renice_this_thread(nice: i32) {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    let failed = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0
    };
    if failed {
        tracing::warn!(
            nice,
            error = %std::io::Error::last_os_error(),
            "could not lower a background thread's priority"
        );
    }
}

/// Transparent huge pages make the first touch of each fresh 2 MiB of heap a synchronous
/// 2 MiB zeroing in the page fault: while the heap grows under the first seconds of load,
/// requests stalled for tens of milliseconds (first-second ingest p99 78-105 ms at 2,000/s
/// against 19-27 ms without) and admission shed low for it. mimalloc is built not to ask
/// for them (`no_thp`); this also refuses them where the host forces them on (THP
/// `always`), as Redis does.
fn refuse_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not refuse transparent huge pages; the first seconds of load may stall"
        );
    }
}

fn init_tracing(args: &LogArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log).context("parsing --log")?;
    // stderr: stdout carries the commands' JSON (tenant and key creation), for pipes.
    // Colour only for a person at a terminal: a file, a pipe or a log collector gets plain
    // text (and NO_COLOR is honoured).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// SIGINT and SIGTERM, counted from the moment the process starts.
struct Signals(tokio::sync::watch::Receiver<u32>);

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let (count, seen) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                count.send_modify(|n| *n += 1);
                tracing::info!("signal received, shutting down");
            }
        });
        Ok(Signals(seen))
    }

    /// Resolves once `n` signals have arrived in all.
    async fn nth(&self, n: u32) {
        let mut seen = self.0.clone();
        let _ = seen.wait_for(|&count| count >= n).await;
    }
}

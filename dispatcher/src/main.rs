//! `dispatcher`: the Herald binary. Parses the command line and runs the chosen role until
//! SIGINT or SIGTERM, then shuts it down gracefully and exits 0.

mod cli;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, KeyCommand, LogArgs, LogFormat, TenantCommand};
use herald::app::{self, App};
use herald::config::PgConfig;
use herald::{postgres, tenants};
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
        let app = match cli.command {
            Command::Serve(args) => App::serve((*args).into()).await?,
            Command::Deliver(args) => App::deliver((*args).into()).await?,
            Command::Record(args) => App::record((*args).into()).await?,
            Command::Run(args) => {
                App::run(
                    (*args).into(),
                    background.as_ref().map(|r| r.handle().clone()),
                )
                .await?
            }
            Command::Migrate(pg) => {
                let pg = PgConfig::from(pg);
                app::migrate(&pg).await.context("applying migrations")?;
                println!("migrations applied to schema {}", pg.pg_schema);
                return Ok(());
            }
            Command::Purge(args) => {
                let (nats, store, keep_schema) = args.settings();
                let purged = app::purge(&nats, &store, keep_schema).await?;
                println!("{}", serde_json::to_string(&purged)?);
                anyhow::ensure!(
                    purged.failures.is_empty(),
                    "not everything could be purged: {:?}",
                    purged.failures
                );
                return Ok(());
            }
            Command::Tenant(TenantCommand::Create {
                name,
                rate,
                burst,
                max_payload,
                pg,
            }) => {
                let pool = postgres::pool(&pg.into())?;
                let limits = tenants::TenantLimits {
                    rate_per_sec: rate,
                    burst,
                    max_payload,
                };
                let tenant = tenants::create_tenant(&pool, &name, limits).await?;
                println!(
                    "{}",
                    serde_json::json!({
                        "id": tenant.id,
                        "name": tenant.name,
                        "webhook_secret": tenant.webhook_secret,
                    })
                );
                return Ok(());
            }
            Command::Key(KeyCommand::Create { tenant, pg }) => {
                let pool = postgres::pool(&pg.into())?;
                let key = tenants::create_key(&pool, &tenant).await?;
                println!(
                    "{}",
                    serde_json::json!({ "id": key.id, "tenant": tenant, "key": key.key })
                );
                return Ok(());
            }
            Command::Key(KeyCommand::Revoke { id, pg }) => {
                let pool = postgres::pool(&pg.into())?;
                tenants::revoke_key(&pool, id).await?;
                println!("{}", serde_json::json!({ "id": id, "revoked": true }));
                return Ok(());
            }
        };
        until_signal().await;
        app.shutdown().await;
        anyhow::Ok(())
    });
    // Outside any runtime's context, where dropping one may block.
    drop(background);
    outcome
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn until_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received, shutting down");
}

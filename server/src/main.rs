//! `icom-server`: parses flags, loads the configuration, installs tracing
//! and runs the router until SIGINT/SIGTERM; SIGHUP reloads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use figment::providers::Serialized;
use icom_server::{dev, Config, LogFormat, Server};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// mimalloc: the router allocates per event; measured faster than the
/// system allocator on the benchmarks (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: icom_server::alloc::MiMalloc = icom_server::alloc::MiMalloc;

/// The ICOM router: QUIC + mutual TLS event routing between game servers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// The configuration file (TOML). Env `ICOM_*` overrides it; flags override both.
    #[arg(long, short, env = "ICOM_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: throwaway certificates in ./icom-dev (game servers
    /// server_1 and server_2, operator ops), listen on 127.0.0.1:9090. With
    /// --config, the file is layered over that: it need only say what it
    /// changes (groups, a policy, ...).
    #[arg(long)]
    dev: bool,
    /// Validate the configuration and its files, then exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// The UDP address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// The directory of the router's database.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Threads that run connections and routing (`workers`; 0: one per
    /// CPU core).
    #[arg(long, value_name = "N")]
    workers: Option<u32>,
    /// Log format: text or json.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Join a cluster over this NATS server (repeatable; sets
    /// `cluster.urls`). With --dev, a plain nats:// URL on loopback is
    /// enough, and the router is named after its listen port.
    #[arg(long, value_name = "URL")]
    nats: Vec<String>,
    /// This router's name in the cluster (`cluster.name`).
    #[arg(long, value_name = "NAME")]
    cluster_name: Option<String>,
    /// Copy the store of a single router (DIR/icom.redb: persistent events
    /// and offline queues) into the cluster's shared store, then exit. Stop
    /// that router first.
    #[arg(long, value_name = "DIR")]
    import_store: Option<PathBuf>,
    /// With --import-store: import a directory that was imported before
    /// (its note, icom.redb.imported, says when). The queued copies
    /// delivered since come back.
    #[arg(long, requires = "import_store")]
    import_again: bool,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match configure(&flags) {
        Ok(Some(config)) => config,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    install_tracing(config.log_format);
    let outcome = if config.workers == 1 {
        // One worker: a current-thread runtime, on a thread of its own so
        // that it is named like the workers of the other kind. Every
        // hand-off between tasks stays a plain queue push (no work
        // stealing, no LIFO slot, no parked sibling to consider), which
        // makes an event about 10% cheaper than a multi-thread runtime of
        // one worker does (BENCHMARKS.md).
        let work = std::thread::Builder::new()
            .name(WORKER_THREADS.to_owned())
            .spawn(move || {
                let runtime = runtime(tokio::runtime::Builder::new_current_thread())?;
                Ok(runtime.block_on(run(flags, config)))
            });
        match work.map(|t| t.join()) {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => return ExitCode::FAILURE, // the panic was printed
            Err(e) => Err(e),
        }
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.workers);
        runtime(builder).map(|runtime| runtime.block_on(run(flags, config)))
    };
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            error!("cannot start the runtime: {e}");
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the runtime the configuration asks for (`workers`), once it is
/// read; its threads are named [`WORKER_THREADS`].
fn runtime(mut builder: tokio::runtime::Builder) -> std::io::Result<tokio::runtime::Runtime> {
    builder.thread_name(WORKER_THREADS).enable_all().build()
}

/// The name of the runtime's worker threads (what `top -H` shows).
const WORKER_THREADS: &str = "icom-worker";

/// Reads the configuration the flags point at. `None` once
/// `--check-config` has done its work: nothing is left to run.
fn configure(flags: &Flags) -> anyhow::Result<Option<Config>> {
    if let Some(path) = &flags.check_config {
        let config = load(Some(path), flags)?;
        icom_server::tls::load(&config).context("checking the TLS files")?;
        if let Some(tls) = config.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
            icom_server::tls::check_nats_files(tls).context("checking the NATS TLS files")?;
        }
        println!("{}: ok", path.display());
        return Ok(None);
    }
    if !flags.dev {
        return load(flags.config.as_deref(), flags).map(Some);
    }
    // Absolute, so that a config file layered over the dev layout (which
    // rebases its own relative paths) leaves these alone.
    let here = std::env::current_dir().context("finding the working directory")?;
    let base = dev::prepare(&here.join(dev::DEV_DIR)).context("preparing ./icom-dev")?;
    let path = flags.config.as_deref();
    let config = Config::load_layers(Some(Arc::new(base)), path, Some(flag_layer(flags)))
        .with_context(|| match path {
            Some(p) => format!("loading {} over the dev layout", p.display()),
            None => "reading the environment and flags".to_owned(),
        })?;
    Ok(Some(config))
}

async fn run(flags: Flags, config: Config) -> anyhow::Result<()> {
    // A SIGHUP (a reload) before the router listens must not end it, as
    // the signal's default action would: its handler is in place from
    // here on (tokio never takes one back), before the first log line says
    // the process is running. A reload asked for meanwhile is not done:
    // the router is loading its configuration then.
    #[cfg(unix)]
    let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    info!(
        workers = config.workers,
        flavor = ?tokio::runtime::Handle::current().runtime_flavor(),
        "runtime started"
    );
    if let Some(dir) = &flags.import_store {
        let done = icom_server::import_store(&config, dir, flags.import_again)
            .await
            .with_context(|| format!("importing {}", dir.display()))?;
        println!(
            "imported {} persistent events and {} queued copies from {} into the cluster's store",
            done.persistent,
            done.queued,
            dir.join(icom_server::store::STORE_FILE).display()
        );
        match done.note_error {
            None => println!(
                "noted in {}: a second import of this directory needs --import-again",
                dir.join(icom_server::IMPORTED_FILE).display()
            ),
            Some(e) => eprintln!(
                "warning: {e}; do not import this directory again (the queued copies \
                 delivered since would come back)"
            ),
        }
        return Ok(());
    }
    // Binding waits for NATS in cluster mode (cluster.connect_timeout_ms):
    // a stop asked for meanwhile ends the process cleanly.
    let server = tokio::select! {
        s = Server::bind(config) => s?,
        () = stop_requested() => {
            info!("stopped before listening");
            return Ok(());
        }
    };
    let addr = server.local_addr();
    if flags.dev {
        println!("{}", dev::instructions(Path::new(dev::DEV_DIR), addr));
    }
    let shutdown = CancellationToken::new();
    spawn_signals(server.reload_handle(), shutdown.clone())?;
    server.run(shutdown).await;
    info!("bye");
    Ok(())
}

fn load(path: Option<&std::path::Path>, flags: &Flags) -> anyhow::Result<Config> {
    Config::load_layers(None, path, Some(flag_layer(flags))).with_context(|| match path {
        Some(p) => format!("loading {}", p.display()),
        None => "loading the configuration".to_owned(),
    })
}

/// The settings given on the command line, the configuration's last layer
/// (a reload layers them again).
fn flag_layer(flags: &Flags) -> Arc<figment::Figment> {
    let mut f = figment::Figment::new();
    if let Some(l) = &flags.listen {
        f = f.merge(Serialized::default("listen", l));
    }
    if let Some(d) = &flags.data_dir {
        f = f.merge(Serialized::default("data_dir", d));
    }
    if let Some(l) = &flags.log_format {
        f = f.merge(Serialized::default("log.format", l));
    }
    if !flags.nats.is_empty() {
        f = f.merge(Serialized::default("cluster.urls", &flags.nats));
    }
    if let Some(n) = &flags.cluster_name {
        f = f.merge(Serialized::default("cluster.name", n));
    }
    if let Some(w) = flags.workers {
        f = f.merge(Serialized::default("workers", w));
    }
    Arc::new(f)
}

fn install_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C elsewhere).
#[cfg(unix)]
async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn stop_requested() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(unix)]
fn spawn_signals(
    reload: icom_server::ReloadHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => match reload.reload() {
                    Ok(r) => info!(revoked = ?r.revoked, "reloaded on SIGHUP"),
                    Err(e) => warn!("reload failed, keeping the old configuration: {e}"),
                },
                _ = term.recv() => { shutdown.cancel(); break; }
                _ = int.recv() => { shutdown.cancel(); break; }
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn spawn_signals(
    _reload: icom_server::ReloadHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    });
    Ok(())
}

//! `icom bench`: how fast and how light a router is, in the spirit of
//! `nats bench` and `redis-benchmark`. Each scenario starts its own router
//! (in-process by default, see [`router`]) with a generated PKI, or targets
//! `--router` with the usual connection flags, and prints a table and one
//! JSON line (`--json`: the JSON line only). The exit status is 0 when
//! every count adds up (sent = acked = delivered), 1 otherwise; no verdict
//! is ever taken on time.
//!
//! - `tput`: one sender → one receiver, pipelined;
//! - `fanout`: one sender → a broadcast to K receivers;
//! - `lat`: request/reply round trips at a fixed rate;
//! - `idle`: K idle servers, and the router's memory per connection;
//! - `limit`: the sender straight into a sink, no router: the ceiling;
//! - `wan`: any of tput, fanout, lat, limit through the impairment proxy;
//! - `soak`: mixed traffic through churn, sampling memory and descriptors.

mod flow;
mod idle;
mod lat;
mod limit;
mod os;
mod payload;
mod raw;
mod report;
mod router;
mod soak;
mod wan;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use icom_client::{Client, ClientConfig, Events};

use self::report::Report;
use self::router::{Needs, Placement, Remote, Router};
use self::wan::{Link, Wan};

/// `icom bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
    /// Run the router as a child process (the icom-server binary) instead
    /// of in-process; `idle` and `soak` always do.
    #[arg(long)]
    spawn: bool,
    /// The icom-server binary [default: beside this executable].
    #[arg(long, value_name = "FILE")]
    server_bin: Option<PathBuf>,
    /// With --router: the router's process id on this machine, to measure
    /// its CPU, memory and descriptors.
    #[arg(long, value_name = "PID")]
    router_pid: Option<u32>,
    /// Worker threads of the in-process router (and of the `limit` sink)
    /// [default: one per core, as icom-server starts].
    #[arg(long, value_name = "N")]
    router_threads: Option<usize>,
    /// Worker threads of the bench clients' runtime.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub(crate) client_threads: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One sender → one receiver, pipelined: events/s acked and delivered.
    Tput(flow::TputArgs),
    /// One sender → broadcast to K receivers: deliveries/s.
    Fanout(flow::FanoutArgs),
    /// Request/reply round trips at a fixed rate: p50/p90/p99/p99.9.
    Lat(lat::LatArgs),
    /// K idle connected servers: router memory per connection.
    Idle(idle::IdleArgs),
    /// The same sender straight into a sink (no router): the ceiling.
    Limit(flow::TputArgs),
    /// A scenario through the impairment proxy (round-trip time, loss).
    Wan(wan::WanArgs),
    /// Mixed traffic through churn for minutes; samples memory and
    /// descriptors. Not for CI.
    Soak(soak::SoakArgs),
}

/// Runs a bench. `remote` holds the connection settings when the user
/// named a router (`--router`, `--config` or `--dev`).
///
/// # Errors
/// When a router, proxy or client cannot be started.
pub(crate) async fn run(
    remote: Option<(ClientConfig, bool)>,
    args: BenchArgs,
) -> anyhow::Result<bool> {
    let router_threads = args.router_threads.unwrap_or_else(router::default_workers);
    let placement = match remote {
        Some((base, dev)) => Placement::Remote(Box::new(Remote {
            base,
            dev,
            pid: args.router_pid,
        })),
        None if args.spawn => Placement::Spawn(server_bin(args.server_bin.as_ref())?),
        None => Placement::InProcess(router_threads),
    };
    let mut env = Env {
        placement,
        router_threads,
        server_bin: args.server_bin.clone(),
        wan: None,
        clients: std::sync::Mutex::default(),
    };
    let report = match &args.scenario {
        Scenario::Tput(a) => flow::tput(&env, a).await?,
        Scenario::Fanout(a) => flow::fanout(&env, a).await?,
        Scenario::Lat(a) => lat::run(&env, a).await?,
        Scenario::Idle(a) => idle::run(&env, a).await?,
        Scenario::Limit(a) => limit::run(&env, a).await?,
        Scenario::Soak(a) => soak::run(&env, a).await?,
        Scenario::Wan(a) => {
            env.wan = Some(Wan::of(a)?);
            match &a.scenario {
                wan::WanScenario::Tput(t) => flow::tput(&env, t).await?,
                wan::WanScenario::Fanout(f) => flow::fanout(&env, f).await?,
                wan::WanScenario::Lat(l) => lat::run(&env, l).await?,
                wan::WanScenario::Limit(t) => limit::run(&env, t).await?,
            }
        }
    };
    print(&report, args.json)?;
    Ok(report.ok())
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    report.print(json).context("writing the report")
}

/// The `icom-server` binary: as given, or beside this executable.
fn server_bin(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    Ok(exe.with_file_name(format!("icom-server{}", std::env::consts::EXE_SUFFIX)))
}

/// What every scenario needs: where the router runs, and the link to it.
pub(crate) struct Env {
    placement: Placement,
    /// Worker threads of an in-process router or sink.
    pub(crate) router_threads: usize,
    server_bin: Option<PathBuf>,
    wan: Option<Wan>,
    /// Every client [`Env::connect`] made, closed before the router stops.
    clients: std::sync::Mutex<Vec<Client>>,
}

impl Env {
    /// Starts the router, behind the proxy if this is a `wan` run.
    ///
    /// # Errors
    /// When the router or the proxy cannot be started.
    pub(crate) async fn router(&self, needs: Needs) -> anyhow::Result<Router> {
        let mut router = Router::start(&self.placement, needs).await?;
        if let Some(wan) = &self.wan {
            router.behind(wan.start(router.addr()).await?);
        }
        Ok(router)
    }

    /// Where a client dials to reach `addr`: through a proxy if this is a
    /// `wan` run (the proxy lives as long as the returned link).
    ///
    /// # Errors
    /// When the proxy cannot be started.
    pub(crate) async fn link_to(
        &self,
        addr: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, Option<Link>)> {
        match &self.wan {
            None => Ok((addr, None)),
            Some(wan) => {
                let link = wan.start(addr).await?;
                Ok((link.addr().unwrap_or(addr), Some(link)))
            }
        }
    }

    /// Connects a bench client as `id`, allowed `window` sends in flight.
    ///
    /// # Errors
    /// When it cannot connect.
    pub(crate) async fn connect(
        &self,
        router: &Router,
        id: &str,
        window: usize,
    ) -> anyhow::Result<(Client, Events)> {
        let mut config = router.client(id)?;
        config.max_in_flight = window.max(1);
        let (client, events) = Client::connect(config)
            .await
            .with_context(|| format!("connecting {id}"))?;
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(client.clone());
        Ok((client, events))
    }

    /// Closes the clients, then stops a router the bench started.
    pub(crate) async fn stop(&self, router: Router) {
        let clients = std::mem::take(
            &mut *self
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let closing: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(async move { c.close().await }))
            .collect();
        for c in closing {
            let _ = c.await;
        }
        router.stop().await;
    }

    /// How the report names the link between clients and router.
    pub(crate) fn wan_label(&self) -> String {
        self.wan
            .as_ref()
            .map_or_else(|| "loopback".to_owned(), Wan::label)
    }

    /// Where a router runs whose memory must be its own: a child process,
    /// or a remote router whose pid was given.
    ///
    /// # Errors
    /// For a remote router without `--router-pid`.
    pub(crate) fn own_process(&self) -> anyhow::Result<Placement> {
        match &self.placement {
            Placement::Remote(r) if r.pid.is_none() => {
                anyhow::bail!("measuring a remote router's memory needs --router-pid")
            }
            Placement::Remote(_) | Placement::Spawn(_) => Ok(self.placement.clone()),
            Placement::InProcess(_) => Ok(Placement::Spawn(server_bin(self.server_bin.as_ref())?)),
        }
    }
}

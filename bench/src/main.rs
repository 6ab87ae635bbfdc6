//! `icom-bench`: how fast and how light a router is, in the spirit of
//! `nats bench` and `redis-benchmark`. Each scenario starts its own router
//! (in-process by default, see [`router`]) with a generated PKI, or targets
//! `--router` with the usual connection flags, and prints a table and one
//! JSON line (`--json`: the JSON line only). The exit status is 0 when
//! every count adds up (sent = acked = delivered), 1 otherwise; no verdict
//! is ever taken on time.
//!
//! - `tput`: one sender → one receiver, pipelined ([`flow`]);
//! - `fanout`: one sender → a broadcast to K receivers ([`flow`]);
//! - `lat`: request/reply round trips at a fixed rate;
//! - `idle`: K idle servers, and the router's memory per connection;
//! - `join`: K servers connecting at once, until presence has settled;
//! - `limit`: the sender straight into a sink, no router: the ceiling;
//! - `persist`: persistent and ttl-queued sends to an offline server,
//!   each acked once on disk, beside plain sends ([`persist`]);
//! - `wan`: any of tput, fanout, lat, limit through the impairment proxy;
//! - `soak`: mixed traffic through churn, sampling memory and descriptors;
//! - `--cluster` before any of tput, fanout, lat, persist: the same across
//!   two routers of one cluster on NATS ([`cluster`]);
//! - `--naive` before tput or fanout: through a straightforward quinn
//!   router instead of ICOM's, to compare with ([`naive`]);
//! - `--floor` before tput or fanout: through the naive router's routing
//!   on quinn's state machine driven by one task, to measure what quinn's
//!   async layer costs ([`floor`]);
//! - `--plain` after tput or fanout: plain quinn peers instead of
//!   `icom-client` ([`plain`]).
//!
//! The layers, lowest first: [`cli`] (the arguments), [`report`], [`os`],
//! [`payload`]; [`wan`] (the proxy) and [`router`]; [`env`] (what a
//! scenario runs in); [`pump`] (the pipelined sender); the scenarios. This
//! file only parses the flags, starts the runtime and picks the scenario.

mod child;
mod cli;
mod cluster;
mod env;
mod floor;
mod flow;
mod idle;
mod join;
mod lat;
mod limit;
mod naive;
mod os;
mod payload;
mod persist;
mod plain;
mod pump;
mod report;
mod router;
mod soak;
mod wan;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Cli, Scenario, WanScenario};
use crate::env::Env;
use crate::router::{Placement, Remote};
use crate::wan::Wan;

/// mimalloc, as in the router binary: the bench runs routers and many
/// clients in this process.
#[global_allocator]
static GLOBAL: icom_server::alloc::MiMalloc = icom_server::alloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // The bench replaces and drops connections on purpose.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .thread_name("icom-client")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("icom-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("icom-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenario and prints its report; whether every count added up.
///
/// # Errors
/// When a router, proxy or client cannot be started, or stdout written.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let router_threads = cli.router_threads.unwrap_or_else(router::default_workers);
    if cli.cluster
        && !matches!(
            cli.scenario,
            Scenario::Tput(_) | Scenario::Fanout(_) | Scenario::Lat(_) | Scenario::Persist(_)
        )
    {
        anyhow::bail!(
            "--cluster runs tput, fanout, lat and persist across two routers; the other \
             scenarios measure one router"
        );
    }
    anyhow::ensure!(
        matches!(cli.nats_nodes, 1 | 3),
        "--nats-nodes is 1 or 3 (JetStream needs a majority)"
    );
    if (cli.naive || cli.floor) && !matches!(cli.scenario, Scenario::Tput(_) | Scenario::Fanout(_))
    {
        anyhow::bail!("--naive and --floor run tput and fanout");
    }
    // The bench starts its own router unless one is named.
    let placement = if cli.connection.names_a_router() {
        Placement::Remote(Box::new(Remote {
            base: cli.connection.base()?,
            dev: cli.connection.dev(),
            pid: cli.router_pid,
        }))
    } else if cli.cluster {
        Placement::Cluster(
            router_threads,
            cluster::Nodes {
                count: usize::from(cli.nats_nodes),
                synced: cli.nats_sync_always,
            },
        )
    } else if cli.naive {
        Placement::Naive(cli.router_threads.unwrap_or_else(router::per_core))
    } else if cli.floor {
        Placement::Floor
    } else if cli.spawn {
        Placement::Spawn(
            env::server_bin(cli.server_bin.as_ref())?,
            cli.router_threads,
        )
    } else {
        Placement::InProcess(router_threads)
    };
    let wan = match &cli.scenario {
        Scenario::Wan(a) => Some(Wan::of(a)?),
        _ => None,
    };
    let env = Env::new(placement, cli.router_threads, cli.server_bin, wan);
    let report = match &cli.scenario {
        Scenario::Tput(a) => flow::tput(&env, a).await?,
        Scenario::Fanout(a) => flow::fanout(&env, a).await?,
        Scenario::Lat(a) => lat::run(&env, a).await?,
        Scenario::Idle(a) => idle::run(&env, a).await?,
        Scenario::Join(a) => join::run(&env, a).await?,
        Scenario::Limit(a) => limit::run(&env, a).await?,
        Scenario::Persist(a) => persist::run(&env, a).await?,
        Scenario::Soak(a) => soak::run(&env, a).await?,
        Scenario::Wan(a) => match &a.scenario {
            WanScenario::Tput(t) => flow::tput(&env, t).await?,
            WanScenario::Fanout(f) => flow::fanout(&env, f).await?,
            WanScenario::Lat(l) => lat::run(&env, l).await?,
            WanScenario::Limit(t) => limit::run(&env, t).await?,
        },
    };
    report.print(cli.json).context("writing the report")?;
    Ok(report.ok())
}

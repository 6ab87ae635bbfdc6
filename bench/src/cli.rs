//! The command line of `icom-bench`: the flags every scenario shares, the
//! connection flags for a router the bench did not start, and each
//! scenario's own arguments. Only data: the scenario modules take their
//! arguments from here, and nothing here depends on them.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use icom_client::{ClientConfig, ConfigOverrides};

const AFTER_HELP: &str = "\
Each scenario starts its own router (in-process, or the icom-server binary
with --spawn) with a generated PKI, unless --router, --config or --dev names
one. It prints a table and one JSON line (--json: the JSON line only).

Exit status:
  0  every count added up (sent = acked = delivered)
  1  a count did not add up, or the bench could not run
  2  usage error

Against a router already running, the connection settings come from, lowest
first: defaults (or --dev), the --config TOML file, ICOM_* environment
variables, then flags. Each bench client needs a certificate of its own:
give --cert and --key with '{id}' standing for the identity (server_1,
server_2, ...), or --dev.

Example: icom-bench --dev --router-pid 1234 lat";

/// `icom-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "icom-bench",
    version,
    about = "ICOM benchmarks: throughput, fan-out, latency, memory per idle connection, \
             the no-router ceiling, a long or lossy link, a soak"
)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Print only the JSON line.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run the router as a child process (the icom-server binary) instead
    /// of in-process; `idle` and `soak` always do.
    #[arg(long)]
    pub(crate) spawn: bool,
    /// Cross-router: two in-process routers of one cluster on a NATS node
    /// (mutual TLS, loopback), the sender (server_1) on one and every
    /// other client on the other; NATS's CPU is reported too. Needs
    /// nats-server: $ICOM_NATS_SERVER, or .venv-tools/bin/nats-server
    /// (scripts/test installs it).
    #[arg(long, conflicts_with = "spawn")]
    pub(crate) cluster: bool,
    /// With --cluster: NATS nodes, 1 or 3 (a JetStream cluster; the
    /// shared store then keeps 3 replicas).
    #[arg(long, default_value_t = 1, requires = "cluster", value_parser = clap::value_parser!(u8).range(1..=3))]
    pub(crate) nats_nodes: u8,
    /// With --cluster: JetStream flushes every write to disk before it
    /// acks it (`sync_interval: always`) instead of every 2 minutes.
    #[arg(long, requires = "cluster")]
    pub(crate) nats_sync_always: bool,
    /// tput and fanout through a naive router instead of ICOM's (quinn's
    /// defaults, a task per event stream, no policy, store or bounds), in
    /// process, to compare with in the same run.
    #[arg(long, conflicts_with_all = ["spawn", "cluster"])]
    pub(crate) naive: bool,
    /// tput and fanout through the floor router instead of ICOM's: the
    /// naive router's routing on quinn's state machine driven directly by
    /// one task (no task, lock or waker per connection; ICOM's transport
    /// settings), in process, to measure what quinn's async layer costs.
    #[arg(long, conflicts_with_all = ["spawn", "cluster", "naive"])]
    pub(crate) floor: bool,
    /// The icom-server binary [default: beside this executable].
    #[arg(long, value_name = "FILE")]
    pub(crate) server_bin: Option<PathBuf>,
    /// With --router: the router's process id on this machine, to measure
    /// its CPU, memory and descriptors.
    #[arg(long, value_name = "PID")]
    pub(crate) router_pid: Option<u32>,
    /// Worker threads of the router (`workers`: in process, spawned, and
    /// the `limit` sink) and of the naive router [default: as icom-server
    /// starts, one; the naive router one per core, as `#[tokio::main]`
    /// starts].
    #[arg(long, value_name = "N")]
    pub(crate) router_threads: Option<usize>,
    /// Worker threads of the bench clients' runtime.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub(crate) client_threads: usize,
    // Last, so that its help heading covers only its own flags.
    #[command(flatten)]
    pub(crate) connection: Connection,
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

/// How to reach a router the bench did not start.
#[derive(Debug, Args)]
#[command(next_help_heading = "A router already running")]
pub(crate) struct Connection {
    /// Client config file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The router of `icom-server --dev`: ./icom-dev/, 127.0.0.1:9090, name
    /// localhost; the bench clients connect as server_1, server_2, ...
    #[arg(long, global = true)]
    dev: bool,
    /// The router's address.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    router: Option<String>,
    /// The name in the router's certificate.
    #[arg(long, global = true, value_name = "NAME")]
    server_name: Option<String>,
    /// The cluster CA certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The bench clients' certificate (PEM), '{id}' standing for each one's identity.
    #[arg(long, global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The bench clients' private key (PEM), '{id}' standing for each one's identity.
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// How long a bench client may try to connect, in ms.
    #[arg(long, global = true, value_name = "MS")]
    connect_timeout: Option<u64>,
}

impl Connection {
    /// Whether a router was named (`--router`, `--config` or `--dev`): the
    /// bench starts its own otherwise.
    pub(crate) fn names_a_router(&self) -> bool {
        self.router.is_some() || self.config.is_some() || self.dev
    }

    /// `--dev`.
    pub(crate) fn dev(&self) -> bool {
        self.dev
    }

    /// The client settings of the named router, its address in `router`:
    /// the bench measures one router, so of a cluster's `routers` the first.
    pub(crate) fn base(&self) -> anyhow::Result<ClientConfig> {
        let mut base = self.overrides().load()?;
        let routers = base.router_list()?;
        base.router = routers.into_iter().next().context("no router given")?;
        base.routers.clear();
        Ok(base)
    }

    /// The flags as overrides of the configuration sources. With `--dev`
    /// the base is the dev layout of `server_1`; the bench replaces the
    /// identity for each of its clients.
    fn overrides(&self) -> ConfigOverrides {
        ConfigOverrides {
            file: self.config.clone(),
            dev: self.dev.then(|| "server_1".to_owned()),
            router: self.router.clone(),
            routers: Vec::new(),
            server_name: self.server_name.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            connect_timeout_ms: self.connect_timeout,
        }
    }
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// One sender → one receiver, pipelined: events/s acked and delivered.
    Tput(TputArgs),
    /// One sender → broadcast to K receivers: deliveries/s.
    Fanout(FanoutArgs),
    /// Request/reply round trips at a fixed rate: p50/p90/p99/p99.9.
    Lat(LatArgs),
    /// K idle connected servers: router memory per connection.
    Idle(IdleArgs),
    /// K servers connecting at once: time until all are welcomed and
    /// presence has settled, presence sent, router CPU and peak memory.
    Join(JoinArgs),
    /// The same sender straight into a sink (no router): the ceiling.
    Limit(TputArgs),
    /// Durable sends: persistent and ttl-queued events to an offline
    /// server, each acked once it is on disk, beside plain sends in the
    /// same run: sends/s of each.
    Persist(PersistArgs),
    /// A scenario through the impairment proxy (round-trip time, loss).
    Wan(WanArgs),
    /// Mixed traffic through churn for minutes; samples memory and
    /// descriptors. Not for CI.
    Soak(SoakArgs),
}

/// `icom-bench tput` (and `limit`, which takes the same arguments).
#[derive(Debug, Clone, Args)]
pub(crate) struct TputArgs {
    /// Events to send (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub(crate) events: u64,
    /// Size of each event's data (encoded MessagePack), in bytes.
    #[arg(long, default_value_t = 200, value_name = "BYTES")]
    pub(crate) size: usize,
    /// Events in flight at once: sent, and not yet both acked and
    /// delivered. Over a long path it must cover rate × round trip.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub(crate) window: usize,
    /// Also measure `limit` (the same sender straight into a sink) in this
    /// run, and report tput as a share of it.
    #[arg(long)]
    pub(crate) vs_limit: bool,
    /// Send and receive with plain quinn peers (default transport
    /// settings, one stream per event) instead of the client library: the
    /// router as another implementation of ICOM/1 drives it.
    #[arg(long, alias = "raw")]
    pub(crate) plain: bool,
}

/// `icom-bench persist`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PersistArgs {
    /// Events to send in each of the three phases (plain, persistent,
    /// ttl), after a warm-up of a tenth as many.
    #[arg(long, default_value_t = 50_000, value_name = "N")]
    pub(crate) events: u64,
    /// Size of each event's data (encoded MessagePack), in bytes.
    #[arg(long, default_value_t = 200, value_name = "BYTES")]
    pub(crate) size: usize,
    /// Events in flight at once (sent, not yet acked; plain ones not yet
    /// delivered either).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub(crate) window: usize,
    /// Persist ids used in turn: each persistent send replaces the event
    /// stored under its id `ids` sends before, so the store holds at most
    /// this many.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub(crate) ids: u64,
    /// The ttl of the queued sends, in ms.
    #[arg(long, default_value_t = 600_000, value_name = "MS")]
    pub(crate) ttl_ms: u64,
}

/// `icom-bench fanout`.
#[derive(Debug, Clone, Args)]
pub(crate) struct FanoutArgs {
    /// Broadcasts to send (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    pub(crate) events: u64,
    /// Receivers: each broadcast is delivered to every one.
    #[arg(long, default_value_t = 20, value_name = "K")]
    pub(crate) receivers: u32,
    /// Size of each event's data (encoded MessagePack), in bytes.
    #[arg(long, default_value_t = 200, value_name = "BYTES")]
    pub(crate) size: usize,
    /// Broadcasts in flight at once: sent, and not yet acked and
    /// delivered to every receiver.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub(crate) window: usize,
    /// Send and receive with plain quinn peers, as `tput --plain`.
    #[arg(long)]
    pub(crate) plain: bool,
}

/// `icom-bench lat`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LatArgs {
    /// Requests per second.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub(crate) rate: u32,
    /// Requests to time (after a warm-up of 50).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub(crate) requests: u64,
    /// Size of each request's and reply's data, in bytes.
    #[arg(long, default_value_t = 200, value_name = "BYTES")]
    pub(crate) size: usize,
}

/// `icom-bench idle`.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    /// Idle servers to connect.
    #[arg(long, default_value_t = 1000, value_name = "K")]
    pub(crate) servers: u32,
    /// How long they sit connected before the router is measured, in s
    /// (the CPU figure is over this time).
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub(crate) settle_secs: u64,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) concurrency: usize,
}

/// `icom-bench join`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    /// Servers connecting at once.
    #[arg(long, default_value_t = 2000, value_name = "K")]
    pub(crate) servers: u32,
    /// Handshakes in flight at once. As many as `--servers` joins all at
    /// once: on a small machine whose UDP receive buffer overflows, a
    /// handshake that loses datagrams then waits for its retransmission
    /// timer, and one silent past the client's 6 s idle timeout fails the
    /// run.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub(crate) concurrency: usize,
    /// The bound on joining and settling, in s (the run fails past it).
    #[arg(long, default_value_t = 120, value_name = "S")]
    pub(crate) timeout_secs: u64,
}

/// `icom-bench wan`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WanArgs {
    /// Round-trip time added between each client and the router, in ms.
    #[arg(long, default_value_t = 80, value_name = "MS")]
    pub(crate) rtt_ms: u64,
    /// Packet loss each way, from 0 to 1 (0.02 is 2%).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub(crate) loss: f64,
    /// The seed of the proxy's loss pattern.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) seed: u64,
    /// The scenario to run through the link.
    #[command(subcommand)]
    pub(crate) scenario: WanScenario,
}

/// The scenarios `wan` can run.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum WanScenario {
    /// `tput` through the link.
    Tput(TputArgs),
    /// `fanout` through the link.
    Fanout(FanoutArgs),
    /// `lat` through the link.
    Lat(LatArgs),
    /// `limit` through the link.
    Limit(TputArgs),
}

/// `icom-bench soak`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SoakArgs {
    /// How long to run, in minutes (default 10).
    #[arg(long, value_name = "M", conflicts_with = "seconds")]
    pub(crate) minutes: Option<u64>,
    /// How long to run, in seconds (for a short check).
    #[arg(long, value_name = "S")]
    pub(crate) seconds: Option<u64>,
    /// Seconds between samples of the router's memory and descriptors.
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub(crate) sample_secs: u64,
    /// Steady servers, each sending and answering.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) servers: u32,
    /// Operations per second of each steady server.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) rate: u32,
    /// Milliseconds between churn steps (a connect, disconnect or replace).
    #[arg(long, default_value_t = 250, value_name = "MS")]
    pub(crate) churn_ms: u64,
    /// Size of each event's data, in bytes.
    #[arg(long, default_value_t = 200, value_name = "BYTES")]
    pub(crate) size: usize,
}

//! The `icom` command line: its flags and subcommands, and the connection
//! settings they make.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use icom_client::{ClientConfig, ConfigOverrides, DEV_OPERATOR};

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  any other error (no router, bad files, lost connection)
  2  usage error
  3  refused: an ack that is not ok (not_found, forbidden, ...), or the
     router refused this client's certificate
  4  timed out: no ack, no reply, no pong, no connection in time

Connection settings come from, lowest first: defaults (or --dev), the
--config TOML file, ICOM_* environment variables (ICOM_ROUTER,
ICOM_ROUTERS='[\"a:9090\",\"b:9090\"]', ICOM_SERVER_NAME, ICOM_CA, ICOM_CERT,
ICOM_KEY, ICOM_QUEUE__TIMEOUT_MS, ...), then flags. Several routers (the
`routers` list, or --router given more than once) are tried in order: the
first that answers is used, and the next one when its connection is lost.

An identity is connected once: `icom` never takes over one that is
connected (a game server's, or another `icom`'s); the router refuses it
(exit 3) unless --replace is given. With --dev, `icom` connects as the
operator identity `ops` that `icom-server --dev` mints; --as picks another.

Example, from cron: icom --config /etc/icom/ops.toml broadcast --event global_alert --data '\"restart in 5 min\"'";

#[derive(Debug, Parser)]
#[command(
    name = "icom",
    version,
    about = "ICOM client: send, broadcast, listen, ping, request, forget, status, peers"
)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) conn: Connection,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// Client config file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Use the layout of `icom-server --dev`: ./icom-dev/, 127.0.0.1:9090, name localhost.
    #[arg(long, global = true)]
    pub(crate) dev: bool,
    /// With --dev: the identity to connect as (default: the operator, ops).
    #[arg(long = "as", global = true, value_name = "NAME")]
    pub(crate) identity: Option<String>,
    /// Take the identity over even if it is connected: that connection is
    /// closed with REPLACED (without this, the router refuses this client).
    #[arg(long, global = true)]
    pub(crate) replace: bool,
    /// The router's address; repeat for the routers of one cluster, in
    /// order of preference (the client fails over between them).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub(crate) router: Vec<String>,
    /// The name in the router's certificate.
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
    /// The cluster CA certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// This server's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// This server's private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// How long to try to connect, in ms.
    #[arg(long, global = true, value_name = "MS")]
    pub(crate) connect_timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Send an event to a server (or several, or a group); prints the ack as JSON.
    Send {
        /// The recipient; repeat for several.
        #[arg(long = "to", value_name = "SERVER", required_unless_present = "group")]
        to: Vec<String>,
        /// A group of the router's config, instead of --to.
        #[arg(long, value_name = "GROUP", conflicts_with = "to")]
        group: Option<String>,
        #[command(flatten)]
        event: EventArgs,
    },
    /// Send an event to every other server; prints the ack as JSON.
    Broadcast {
        /// Include this client too ("everyone" instead of "all").
        #[arg(long)]
        everyone: bool,
        #[command(flatten)]
        event: EventArgs,
    },
    /// Print every event for this server as a JSON line (from, id, event, data, persist_id, reply_to, sent_ms).
    Listen {
        /// Stop after this many lines.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this long, in ms (exit 4 if --count lines did not come).
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
        /// Print the servers that connect and leave too, as JSON lines
        /// (server_id, online), from the moment this client is connected.
        #[arg(long)]
        presence: bool,
    },
    /// Print who is connected, one JSON line per server (server_id, router:
    /// the router it is on in a cluster, else null), ordered by id.
    Peers,
    /// Measure round trips to the router.
    Ping {
        /// How many pings.
        #[arg(long, short = 'c', default_value_t = 4, value_name = "N")]
        count: u32,
        /// The wait between pings, in ms.
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        interval: u64,
    },
    /// Send a request to a server and print its reply as a JSON line.
    Request {
        /// The server to ask.
        #[arg(long = "to", value_name = "SERVER")]
        to: String,
        /// The event's name.
        #[arg(long, value_name = "NAME")]
        event: String,
        /// The request's data, as JSON.
        #[arg(long, value_name = "JSON", default_value = "null", value_parser = parse_json)]
        data: serde_json::Value,
        /// How long to wait for the reply, in ms.
        #[arg(long, default_value_t = 5000, value_name = "MS")]
        timeout: u64,
    },
    /// Connect and print the connection as a JSON line: state, router, identity, groups, peers.
    Status,
    /// Drop a persistent event; prints the ack as JSON.
    Forget {
        /// The persist id.
        persist_id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct EventArgs {
    /// The event's name.
    #[arg(long, value_name = "NAME")]
    pub(crate) event: String,
    /// The event's data, as JSON.
    #[arg(long, value_name = "JSON", default_value = "null", value_parser = parse_json)]
    pub(crate) data: serde_json::Value,
    /// Store it for servers that connect later: a persist id, or `auto`.
    #[arg(long, value_name = "ID|auto")]
    pub(crate) persist: Option<String>,
    /// Keep it this long for offline recipients, in ms.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ttl: Option<u64>,
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

/// The connection settings: the flags over the file, the environment and
/// the defaults (or the dev layout).
pub(crate) fn config(c: &Connection) -> anyhow::Result<ClientConfig> {
    let identity = c.identity.as_deref().unwrap_or(DEV_OPERATOR);
    let mut config = ConfigOverrides {
        file: c.config.clone(),
        dev: c.dev.then(|| identity.to_owned()),
        router: None,
        routers: c.router.clone(),
        server_name: c.server_name.clone(),
        ca: c.ca.clone(),
        cert: c.cert.clone(),
        key: c.key.clone(),
        connect_timeout_ms: c.connect_timeout,
    }
    .load()?;
    config.agent = concat!("icom/", env!("CARGO_PKG_VERSION")).into();
    config.replace = c.replace;
    Ok(config)
}

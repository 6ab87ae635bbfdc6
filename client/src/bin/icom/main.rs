//! `icom`: the ICOM client for operators and scripts. Sends, broadcasts,
//! listens, pings, requests and forgets, through the `icom-client` library.
//! (The benchmarks are the `icom-bench` binary, in `bench/`.)

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use icom_client::{
    Ack, Client, ClientConfig, ConfigOverrides, ConnectError, Event, ForgetError, Persist,
    PingError, RequestError, SendError, SendOptions, Target,
};

/// Exit status: success.
const OK: u8 = 0;
/// Exit status: any other error.
const FAILED: u8 = 1;
/// Exit status: refused (ack not ok, forbidden, certificate refused).
const REFUSED: u8 = 3;
/// Exit status: timed out.
const TIMEOUT: u8 = 4;

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
ICOM_SERVER_NAME, ICOM_CA, ICOM_CERT, ICOM_KEY, ICOM_QUEUE__TIMEOUT_MS, ...),
then flags.

Example, from cron: icom --config /etc/icom/ops.toml broadcast --event global_alert --data '\"restart in 5 min\"'";

#[derive(Debug, Parser)]
#[command(
    name = "icom",
    version,
    about = "ICOM client: send, broadcast, listen, ping, request, forget"
)]
#[command(after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Connection {
    /// Client config file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use the layout of `icom-server --dev`: ./icom-dev/, 127.0.0.1:9090, name localhost.
    #[arg(long, global = true)]
    dev: bool,
    /// With --dev: the identity to connect as.
    #[arg(
        long = "as",
        global = true,
        value_name = "NAME",
        default_value = "server_1"
    )]
    identity: String,
    /// The router's address.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    router: Option<String>,
    /// The name in the router's certificate.
    #[arg(long, global = true, value_name = "NAME")]
    server_name: Option<String>,
    /// The cluster CA certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This server's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This server's private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// How long to try to connect, in ms.
    #[arg(long, global = true, value_name = "MS")]
    connect_timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this long, in ms (exit 4 if --count events did not come).
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
    },
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
    /// Drop a persistent event; prints the ack as JSON.
    Forget {
        /// The persist id.
        persist_id: String,
    },
}

#[derive(Debug, Args)]
struct EventArgs {
    /// The event's name.
    #[arg(long, value_name = "NAME")]
    event: String,
    /// The event's data, as JSON.
    #[arg(long, value_name = "JSON", default_value = "null", value_parser = parse_json)]
    data: serde_json::Value,
    /// Store it for servers that connect later: a persist id, or `auto`.
    #[arg(long, value_name = "ID|auto")]
    persist: Option<String>,
    /// Keep it this long for offline recipients, in ms.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    ttl: Option<u64>,
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("icom-client")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("icom: cannot start the runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("icom: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = config(&cli.conn)?;
    let router = config.router.clone();
    let (client, events) = Client::connect(config)
        .await
        .with_context(|| format!("connecting to {router}"))?;
    let result = match cli.command {
        Command::Send { to, group, event } => {
            let target = match (group, to.len()) {
                (Some(g), _) => Target::Group(g),
                (None, 1) => Target::Server(to.into_iter().next().unwrap_or_default()),
                (None, _) => Target::Servers(to),
            };
            send(&client, target, event).await
        }
        Command::Broadcast { everyone, event } => {
            let target = if everyone {
                Target::Everyone
            } else {
                Target::All
            };
            send(&client, target, event).await
        }
        Command::Listen { count, timeout } => listen(events, count, timeout).await,
        Command::Ping { count, interval } => ping(&client, count, interval).await,
        Command::Request {
            to,
            event,
            data,
            timeout,
        } => {
            let reply = client
                .request(&to, &event, &data, Duration::from_millis(timeout))
                .await
                .with_context(|| format!("request '{event}' to {to}"))?;
            print_line(&EventLine::of(&reply))?;
            Ok(OK)
        }
        Command::Forget { persist_id } => match client.forget(&persist_id).await {
            Ok(ack) => print_ack(&ack).map(|()| OK),
            Err(e) => {
                if let ForgetError::Refused { ack, .. } = &e {
                    print_ack(ack)?;
                }
                Err(anyhow::Error::new(e).context(format!("forget {persist_id}")))
            }
        },
    };
    client.close().await;
    result
}

/// The connection settings: the flags over the file, the environment and
/// the defaults (or the dev layout).
fn config(c: &Connection) -> anyhow::Result<ClientConfig> {
    let mut config = ConfigOverrides {
        file: c.config.clone(),
        dev: c.dev.then(|| c.identity.clone()),
        router: c.router.clone(),
        server_name: c.server_name.clone(),
        ca: c.ca.clone(),
        cert: c.cert.clone(),
        key: c.key.clone(),
        connect_timeout_ms: c.connect_timeout,
    }
    .load()?;
    config.agent = concat!("icom/", env!("CARGO_PKG_VERSION")).into();
    Ok(config)
}

async fn send(client: &Client, target: Target, args: EventArgs) -> anyhow::Result<u8> {
    let mut options = SendOptions::new();
    options.persist = args.persist.map(|p| match p.as_str() {
        "auto" => Persist::Auto,
        _ => Persist::Id(p),
    });
    options.ttl = args.ttl.map(Duration::from_millis);
    match client
        .send_to(target, &args.event, &args.data, options)
        .await
    {
        Ok(ack) => {
            print_ack(&ack)?;
            Ok(OK)
        }
        Err(e) => {
            if let Some(ack) = e.ack() {
                print_ack(ack)?;
            }
            Err(anyhow::Error::new(e).context(format!("send '{}'", args.event)))
        }
    }
}

async fn listen(
    mut events: icom_client::Events,
    count: Option<u64>,
    timeout: Option<u64>,
) -> anyhow::Result<u8> {
    let deadline = timeout.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, events.next()).await.ok(),
                None => Some(events.next().await),
            }
        };
        let event = tokio::select! {
            event = next => event,
            _ = tokio::signal::ctrl_c() => return Ok(OK),
        };
        let Some(event) = event else {
            // The deadline passed.
            return Ok(if count.is_some() { TIMEOUT } else { OK });
        };
        let Some(event) = event else {
            anyhow::bail!("the client closed");
        };
        print_line(&EventLine::of(&event))?;
        seen += 1;
    }
    Ok(OK)
}

async fn ping(client: &Client, count: u32, interval: u64) -> anyhow::Result<u8> {
    for seq in 1..=count {
        let rtt = client.ping().await.context("ping")?;
        println!("seq={seq} time={:.3} ms", rtt.as_secs_f64() * 1000.0);
        if seq < count {
            tokio::time::sleep(Duration::from_millis(interval)).await;
        }
    }
    Ok(OK)
}

/// An event as `listen` and `request` print it, keys in this order.
#[derive(serde::Serialize)]
struct EventLine<'a> {
    from: &'a str,
    id: u64,
    event: &'a str,
    data: serde_json::Value,
    persist_id: Option<&'a str>,
    reply_to: Option<u64>,
    sent_ms: u64,
}

impl EventLine<'_> {
    fn of(e: &Event) -> EventLine<'_> {
        let data = e.json().unwrap_or_else(|err| {
            tracing::warn!(error = %err, from = %e.from, id = e.id, "data has no JSON form; printed as null");
            serde_json::Value::Null
        });
        EventLine {
            from: &e.from,
            id: e.id,
            event: &e.event,
            data,
            persist_id: e.persist_id.as_deref(),
            reply_to: e.reply_to,
            sent_ms: e.sent_ms,
        }
    }
}

fn print_ack(ack: &Ack) -> anyhow::Result<()> {
    print_line(ack)
}

fn print_line(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Maps an error to the exit status the help text promises.
fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(e) = e.downcast_ref::<ConnectError>() {
        return match e {
            e if e.is_refused() => REFUSED,
            ConnectError::Timeout(_) => TIMEOUT,
            _ => FAILED,
        };
    }
    if let Some(e) = e.downcast_ref::<SendError>() {
        return send_code(e);
    }
    if let Some(e) = e.downcast_ref::<RequestError>() {
        return match e {
            RequestError::Send(e) => send_code(e),
            e if e.is_timeout() => TIMEOUT,
            _ => FAILED,
        };
    }
    if let Some(e) = e.downcast_ref::<ForgetError>() {
        return match e {
            ForgetError::Refused { .. } => REFUSED,
            e if e.is_timeout() => TIMEOUT,
            _ => FAILED,
        };
    }
    if let Some(e) = e.downcast_ref::<PingError>() {
        return if e.is_timeout() { TIMEOUT } else { FAILED };
    }
    FAILED
}

fn send_code(e: &SendError) -> u8 {
    match e {
        SendError::Refused { .. } => REFUSED,
        e if e.is_timeout() => TIMEOUT,
        _ => FAILED,
    }
}

//! `icom`: the ICOM client for operators and scripts. Sends, broadcasts,
//! listens, pings, requests, forgets, lists who is connected and reports
//! its connection, through the `icom-client` library. (The benchmarks are
//! the `icom-bench` binary, in `bench/`.)

mod cli;
mod commands;
mod exit;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use icom_client::{Client, ConnectError, ForgetError, Presence, Presences, Target};

use crate::cli::{config, Cli, Command};
use crate::commands::{listen, peers, ping, print_ack, print_line, send, status, EventLine};
use crate::exit::{exit_code, FAILED, OK};

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

/// The presence changes from the welcome on: those the client took in
/// before the stream began (between the welcome and now), then the stream.
fn since_welcome(client: &Client) -> (Vec<Presence>, Presences) {
    let presence = client.presence();
    let welcomed: BTreeSet<String> = client
        .welcome()
        .map(|w| w.peers.into_iter().collect())
        .unwrap_or_default();
    let now: BTreeSet<String> = presence.peers().into_iter().collect();
    let change = |id: &String, online| Presence {
        server_id: id.clone(),
        online,
    };
    let left = welcomed.difference(&now).map(|id| change(id, false));
    let came = now.difference(&welcomed).map(|id| change(id, true));
    (left.chain(came).collect(), presence)
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = config(&cli.conn)?;
    let routers = config.router_list()?.join(", ");
    let (client, events) = match Client::connect(config).await {
        Ok(connected) => connected,
        Err(e @ ConnectError::InUse) => {
            return Err(anyhow::Error::new(e).context(format!(
                "connecting to {routers} (to take the identity over, closing its connection \
                 with REPLACED, add --replace; or connect as another identity)"
            )))
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("connecting to {routers}"))),
    };
    // From the welcome on, so that no change is missed.
    let presence = matches!(cli.command, Command::Listen { presence: true, .. })
        .then(|| since_welcome(&client));
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
        Command::Listen { count, timeout, .. } => listen(events, presence, count, timeout).await,
        Command::Peers => peers(&client).await,
        Command::Ping { count, interval } => ping(&client, count, interval).await,
        Command::Status => status(&client),
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

//! What `icom`'s subcommands do with a connected client: send and
//! broadcast, listen, ping, status, peers, and the JSON lines they print.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use icom_client::{
    Ack, Client, Event, Persist, Presence, Presences, RosterEntry, RosterError, SendOptions, State,
    Target,
};

use crate::cli::EventArgs;
use crate::exit::{OK, TIMEOUT};

pub(crate) async fn send(client: &Client, target: Target, args: EventArgs) -> anyhow::Result<u8> {
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

/// `listen`: events, and with `presence` the servers that come and go, as
/// JSON lines; `count` lines at most, for `timeout` ms at most.
pub(crate) async fn listen(
    mut events: icom_client::Events,
    presence: Option<(Vec<Presence>, Presences)>,
    count: Option<u64>,
    timeout: Option<u64>,
) -> anyhow::Result<u8> {
    let deadline = timeout.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut seen = 0u64;
    let (early, mut presence) = match presence {
        Some((early, stream)) => (early, Some(stream)),
        None => (Vec::new(), None),
    };
    for change in early {
        if count.is_some_and(|n| seen >= n) {
            return Ok(OK);
        }
        print_line(&change)?;
        seen += 1;
    }
    while count.is_none_or(|n| seen < n) {
        let next = async {
            let line = async {
                tokio::select! {
                    event = events.next() => event.map(Line::Event),
                    change = next_change(&mut presence) => change.map(Line::Presence),
                }
            };
            match deadline {
                Some(d) => tokio::time::timeout_at(d, line).await.ok(),
                None => Some(line.await),
            }
        };
        let line = tokio::select! {
            line = next => line,
            _ = tokio::signal::ctrl_c() => return Ok(OK),
        };
        let Some(line) = line else {
            // The deadline passed.
            return Ok(if count.is_some() { TIMEOUT } else { OK });
        };
        match line {
            Some(Line::Event(event)) => print_line(&EventLine::of(&event))?,
            Some(Line::Presence(change)) => print_line(&change)?,
            None => anyhow::bail!("the client closed"),
        }
        seen += 1;
    }
    Ok(OK)
}

/// One line of `listen`.
enum Line {
    Event(Event),
    Presence(Presence),
}

/// The next presence change, if presence is followed at all (else never).
async fn next_change(presence: &mut Option<Presences>) -> Option<Presence> {
    match presence {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

/// `peers`: who is connected, from the router's table; from what this
/// client was told, with no router names, when the router predates `who`.
pub(crate) async fn peers(client: &Client) -> anyhow::Result<u8> {
    let servers = match client.roster().await {
        Ok(servers) => servers,
        Err(RosterError::Unsupported) => {
            eprintln!(
                "icom: the router predates `who`: these are the servers it announced, without their routers"
            );
            client
                .peers()
                .into_iter()
                .map(|server_id| RosterEntry {
                    server_id,
                    router: None,
                })
                .collect()
        }
        Err(e) => return Err(anyhow::Error::new(e).context("asking who is connected")),
    };
    for entry in &servers {
        print_line(&serde_json::json!({"server_id": entry.server_id, "router": entry.router}))?;
    }
    Ok(OK)
}

pub(crate) async fn ping(client: &Client, count: u32, interval: u64) -> anyhow::Result<u8> {
    for seq in 1..=count {
        let rtt = client.ping().await.context("ping")?;
        println!("seq={seq} time={:.3} ms", rtt.as_secs_f64() * 1000.0);
        if seq < count {
            tokio::time::sleep(Duration::from_millis(interval)).await;
        }
    }
    Ok(OK)
}

/// `status`: the connection as one JSON line; which router the client is
/// on above all.
pub(crate) fn status(client: &Client) -> anyhow::Result<u8> {
    let welcome = client.welcome();
    let state = match client.state() {
        State::Connected { .. } => "connected",
        State::Closed => "closed",
        _ => "disconnected",
    };
    print_line(&serde_json::json!({
        "state": state,
        "router": client.router(),
        "server_id": welcome.as_ref().map(|w| &w.server_id),
        "session_id": welcome.as_ref().map(|w| &w.session_id),
        "groups": welcome.as_ref().map(|w| &w.groups),
        "peers": client.peers(),
    }))?;
    Ok(OK)
}

/// An event as `listen` and `request` print it, keys in this order.
#[derive(serde::Serialize)]
pub(crate) struct EventLine<'a> {
    from: &'a str,
    id: u64,
    event: &'a str,
    data: serde_json::Value,
    persist_id: Option<&'a str>,
    reply_to: Option<u64>,
    sent_ms: u64,
}

impl EventLine<'_> {
    pub(crate) fn of(e: &Event) -> EventLine<'_> {
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

pub(crate) fn print_ack(ack: &Ack) -> anyhow::Result<()> {
    print_line(ack)
}

pub(crate) fn print_line(v: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

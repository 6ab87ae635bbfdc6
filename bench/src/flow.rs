//! Throughput: `tput` (one sender, one receiver) and `fanout` (one sender,
//! a broadcast to K receivers). The sender keeps a window of events in
//! flight: an event leaves the window once it is acked and every delivery
//! of it has arrived (the router acks before it delivers, so a window of
//! acks alone would let the sender outrun delivery until the router's
//! bounded queue says `congested`). Receivers count what arrives; only
//! events both acked and delivered count, and the clock stops when the
//! last ack and the last delivery are in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use icom_client::{Client, Events, Target};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cli::{FanoutArgs, TputArgs};
use crate::env::Env;
use crate::limit;
use crate::payload;
use crate::plain::Plain;
use crate::pump::{counts, finish_time, head, pump, tput_report, Flow, Received, Sent};
use crate::report::{self, Latencies, Report};
use crate::router::{Needs, Router};

/// How long receivers wait for the rest once the sender is done.
const GRACE: Duration = Duration::from_secs(10);

/// Runs `tput`.
///
/// # Errors
/// When the router or a client cannot be started.
pub(crate) async fn tput(env: &Env, args: &TputArgs) -> anyhow::Result<Report> {
    let limit = if args.vs_limit {
        Some(limit::run(env, args).await?)
    } else {
        None
    };
    let router = env
        .router(Needs {
            connections: 2,
            ..Needs::default()
        })
        .await?;
    let mut peers = Peers::connect(env, &router, 1, args.plain, args.window).await?;
    let to = Target::Server("server_2".into());
    let warmup = args.events / 10;
    peers.phase(&to, warmup, args.size, args.window, 1).await?;
    let before = router.usage();
    let started = Instant::now();
    let (sent, got) = peers
        .phase(&to, args.events, args.size, args.window, 1)
        .await?;
    let elapsed = finish_time(&sent, &got).saturating_duration_since(started);
    let after = router.usage();

    let mut report = tput_report(&peers.link(env), args, &sent, got, elapsed);
    router.add_usage(&mut report, before, after, elapsed, args.events, "events");
    if let Some(limit) = limit {
        let ours = report.get("events_per_s").and_then(|v| v.as_f64());
        let theirs = limit.get("events_per_s").and_then(|v| v.as_f64());
        report.merge("limit_", limit);
        if let (Some(a), Some(b)) = (ours, theirs) {
            report.add(
                "ratio_vs_limit",
                "tput / limit",
                report::round(a / b.max(1.0), 3),
            );
        }
    }
    drop(peers);
    env.stop(router).await;
    Ok(report)
}

/// Runs `fanout`.
///
/// # Errors
/// When the router or a client cannot be started.
pub(crate) async fn fanout(env: &Env, args: &FanoutArgs) -> anyhow::Result<Report> {
    let k = u64::from(args.receivers);
    let router = env
        .router(Needs {
            connections: args.receivers + 1,
            ..Needs::default()
        })
        .await?;
    let mut peers = Peers::connect(env, &router, args.receivers, args.plain, args.window).await?;
    let warmup = args.events / 10;
    peers
        .phase(&Target::All, warmup, args.size, args.window, k)
        .await?;
    let before = router.usage();
    let started = Instant::now();
    let (sent, got) = peers
        .phase(&Target::All, args.events, args.size, args.window, k)
        .await?;
    let elapsed = finish_time(&sent, &got).saturating_duration_since(started);
    let after = router.usage();

    let mut report = Report::new("fanout");
    let delivered: u64 = got.iter().map(|r| r.count).sum();
    head(
        &mut report,
        &peers.link(env),
        args.events,
        args.size,
        args.window,
    );
    report.add("receivers", "receivers", args.receivers);
    counts(&mut report, args.events, &sent, delivered, k);
    report.seconds("seconds", "elapsed (s)", elapsed);
    report.rate("deliveries_per_s", "deliveries/s", delivered, elapsed);
    report.rate("events_per_s", "broadcasts/s", sent.acked, elapsed);
    let mut latency = Latencies::default();
    for r in got {
        latency.extend(r.latency);
    }
    latency.add_to(&mut report, "delivery", "send→delivery");
    router.add_usage(&mut report, before, after, elapsed, delivered, "deliveries");
    drop(peers);
    env.stop(router).await;
    Ok(report)
}

/// The sender (`server_1`) and the receivers (`server_2` …) of a
/// throughput run: `icom-client`s, or plain quinn peers (`--plain`).
enum Peers {
    Client {
        sender: Client,
        receivers: Vec<Events>,
    },
    Plain {
        sender: Plain,
        receivers: Vec<Plain>,
    },
}

impl Peers {
    /// Connects `receivers` receivers, then the sender.
    async fn connect(
        env: &Env,
        router: &Router,
        receivers: u32,
        plain: bool,
        window: usize,
    ) -> anyhow::Result<Peers> {
        let ids = (0..receivers).map(|i| format!("server_{}", i + 2));
        if plain {
            let mut peers = Vec::new();
            for id in ids {
                peers.push(Plain::connect(&router.client(&id)?).await?);
            }
            router.settled().await?;
            let sender = Plain::connect(&router.client(crate::cluster::SENDER)?).await?;
            return Ok(Peers::Plain {
                sender,
                receivers: peers,
            });
        }
        let mut events = Vec::new();
        for id in ids {
            events.push(env.connect(router, &id, window).await?.1);
        }
        let (sender, _) = env.connect(router, crate::cluster::SENDER, window).await?;
        Ok(Peers::Client {
            sender,
            receivers: events,
        })
    }

    /// Sends `events` to `to` while the receivers count their deliveries.
    async fn phase(
        &mut self,
        to: &Target,
        events: u64,
        size: usize,
        window: usize,
        per_event: u64,
    ) -> anyhow::Result<(Sent, Vec<Received>)> {
        match self {
            Peers::Client { sender, receivers } => {
                Ok(phase(sender, to, events, size, window, receivers, per_event).await)
            }
            Peers::Plain { sender, receivers } => {
                crate::plain::phase(sender, receivers, to, events, size, window, per_event).await
            }
        }
    }

    /// How the report names the link and the peers.
    fn link(&self, env: &Env) -> String {
        match self {
            Peers::Client { .. } => env.wan_label(),
            Peers::Plain { .. } => format!("{}, plain quinn peers (--plain)", env.wan_label()),
        }
    }
}

/// Sends `events` to `to` from `sender` while every receiver counts
/// `events * per_receiver / receivers.len()` deliveries.
pub(crate) async fn phase(
    sender: &Client,
    to: &Target,
    events: u64,
    size: usize,
    window: usize,
    receivers: &mut Vec<Events>,
    per_event: u64,
) -> (Sent, Vec<Received>) {
    let each = events * per_event / receivers.len().max(1) as u64;
    let stop = CancellationToken::new();
    // One permit per delivery in flight.
    let credit = Arc::new(Semaphore::new(window * per_event as usize));
    let drains: Vec<_> = receivers
        .drain(..)
        .map(|events| tokio::spawn(drain(events, each, credit.clone(), stop.clone())))
        .collect();
    let flow = Flow {
        credit: Some((credit, per_event as u32)),
        ..Flow::new(to, events, size)
    };
    let sent = pump(sender, flow).await;
    // Whatever has not arrived within the grace period is not coming.
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GRACE).await;
            stop.cancel();
        })
    };
    let mut got = Vec::new();
    for d in drains {
        if let Ok((events, r)) = d.await {
            receivers.push(events);
            got.push(r);
        }
    }
    timer.abort();
    (sent, got)
}

/// Counts `expect` deliveries (or fewer, if stopped), noting each one's
/// latency from its stamp and giving its credit back.
async fn drain(
    mut events: Events,
    expect: u64,
    credit: Arc<Semaphore>,
    stop: CancellationToken,
) -> (Events, Received) {
    let mut r = Received::default();
    while r.count < expect {
        let event = tokio::select! {
            e = events.next() => e,
            () = stop.cancelled() => break,
        };
        let Some(event) = event else { break };
        r.count += 1;
        r.last = Some(Instant::now());
        credit.add_permits(1);
        if let Some(age) = payload::age(&event.data) {
            r.latency.push(age);
        }
    }
    (events, r)
}

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

use clap::Args;
use icom_client::{Client, Events, MsgPack, SendOptions, Target};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::payload::{self, EVENT};
use super::report::{Latencies, Report};
use super::router::Needs;
use super::Env;

/// How long receivers wait for the rest once the sender is done.
const GRACE: Duration = Duration::from_secs(10);

/// `icom bench tput`.
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
    /// Send and receive with bare QUIC peers instead of the client
    /// library, to see the router's share alone (in-process router only).
    #[arg(long)]
    pub(crate) raw: bool,
}

/// `icom bench fanout`.
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
}

/// What a pipelined sender saw.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub(crate) acked: u64,
    pub(crate) failed: u64,
    /// The sum of the acks' `delivered`.
    pub(crate) deliveries: u64,
    pub(crate) first_error: Option<String>,
    /// When the last ack came.
    pub(crate) done: Option<Instant>,
}

/// What one receiver saw.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub(crate) count: u64,
    pub(crate) last: Option<Instant>,
    pub(crate) latency: Latencies,
}

/// Runs `tput`.
///
/// # Errors
/// When the router or a client cannot be started.
pub(crate) async fn tput(env: &Env, args: &TputArgs) -> anyhow::Result<Report> {
    let limit = if args.vs_limit {
        Some(super::limit::run(env, args).await?)
    } else {
        None
    };
    let router = env.router(Needs { connections: 2 }).await?;
    if args.raw {
        return super::raw::run(env, router, args).await;
    }
    let (_receiver, events) = env.connect(&router, "server_2", args.window).await?;
    let (sender, _) = env.connect(&router, "server_1", args.window).await?;
    let to = Target::Server("server_2".into());
    let mut receivers = vec![events];
    let warmup = args.events / 10;
    phase(
        &sender,
        &to,
        warmup,
        args.size,
        args.window,
        &mut receivers,
        1,
    )
    .await;
    let before = router.usage();
    let started = Instant::now();
    let (sent, got) = phase(
        &sender,
        &to,
        args.events,
        args.size,
        args.window,
        &mut receivers,
        1,
    )
    .await;
    let elapsed = finish_time(&sent, &got).saturating_duration_since(started);
    let after = router.usage();

    let mut report = tput_report(&env.wan_label(), args, &sent, got, elapsed);
    router.add_usage(&mut report, before, after, elapsed, args.events, "events");
    if let Some(limit) = limit {
        let ours = report.get("events_per_s").and_then(|v| v.as_f64());
        let theirs = limit.get("events_per_s").and_then(|v| v.as_f64());
        report.merge("limit_", limit);
        if let (Some(a), Some(b)) = (ours, theirs) {
            report.add(
                "ratio_vs_limit",
                "tput / limit",
                super::report::round(a / b.max(1.0), 3),
            );
        }
    }
    env.stop(router).await;
    Ok(report)
}

/// The report of a `tput` run: its setup, its counts (checked), the rate
/// of events both acked and delivered, and the delivery latency.
pub(crate) fn tput_report(
    link: &str,
    args: &TputArgs,
    sent: &Sent,
    got: Vec<Received>,
    elapsed: Duration,
) -> Report {
    let mut report = Report::new("tput");
    let delivered: u64 = got.iter().map(|r| r.count).sum();
    head(&mut report, link, args.events, args.size, args.window);
    counts(&mut report, args.events, sent, delivered, 1);
    report.seconds("seconds", "elapsed (s)", elapsed);
    report.rate(
        "events_per_s",
        "events/s (acked and delivered)",
        delivered.min(sent.acked),
        elapsed,
    );
    let mut latency = Latencies::default();
    for r in got {
        latency.extend(r.latency);
    }
    latency.add_to(&mut report, "delivery", "send→delivery");
    report
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
        })
        .await?;
    let mut clients = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..args.receivers {
        let (c, events) = env
            .connect(&router, &format!("server_{}", i + 2), args.window)
            .await?;
        clients.push(c);
        receivers.push(events);
    }
    let (sender, _) = env.connect(&router, "server_1", args.window).await?;
    let warmup = args.events / 10;
    phase(
        &sender,
        &Target::All,
        warmup,
        args.size,
        args.window,
        &mut receivers,
        k,
    )
    .await;
    let before = router.usage();
    let started = Instant::now();
    let (sent, got) = phase(
        &sender,
        &Target::All,
        args.events,
        args.size,
        args.window,
        &mut receivers,
        k,
    )
    .await;
    let elapsed = finish_time(&sent, &got).saturating_duration_since(started);
    let after = router.usage();

    let mut report = Report::new("fanout");
    let delivered: u64 = got.iter().map(|r| r.count).sum();
    head(
        &mut report,
        &env.wan_label(),
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
    env.stop(router).await;
    Ok(report)
}

fn head(report: &mut Report, wan: &str, events: u64, size: usize, window: usize) {
    report.add("link", "link", wan);
    report.add("events", "events", events);
    report.add("size_bytes", "data size (bytes)", size as u64);
    report.add("window", "window (events in flight)", window as u64);
}

/// Adds the counts, and checks that every event was acked and delivered
/// `per_event` times.
pub(crate) fn counts(
    report: &mut Report,
    events: u64,
    sent: &Sent,
    delivered: u64,
    per_event: u64,
) {
    report.add("sent", "sent", events);
    report.add("acked", "acked ok", sent.acked);
    report.add("failed", "failed", sent.failed);
    report.add(
        "acked_deliveries",
        "deliveries the acks count",
        sent.deliveries,
    );
    report.add("delivered", "delivered", delivered);
    report.check(
        sent.acked == events && sent.failed == 0,
        format!(
            "acked {} of {events}, {} failed (first: {})",
            sent.acked,
            sent.failed,
            sent.first_error.as_deref().unwrap_or("none")
        ),
    );
    report.check(
        sent.deliveries == events * per_event && delivered == events * per_event,
        format!(
            "expected {} deliveries; the acks count {}, receivers got {delivered}",
            events * per_event,
            sent.deliveries
        ),
    );
}

/// When the last ack or delivery came.
pub(crate) fn finish_time(sent: &Sent, got: &[Received]) -> Instant {
    got.iter()
        .filter_map(|r| r.last)
        .chain(sent.done)
        .max()
        .unwrap_or_else(Instant::now)
}

/// Sends `events` to `to` from `sender` while every receiver counts
/// `events * per_receiver / receivers.len()` deliveries.
async fn phase(
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

/// What a pipelined sender sends.
pub(crate) struct Flow {
    pub(crate) to: Target,
    pub(crate) events: u64,
    pub(crate) size: usize,
    /// Permits per delivery in flight, and the deliveries of one event:
    /// each send takes that many; each delivery gives one back.
    pub(crate) credit: Option<(Arc<Semaphore>, u32)>,
}

impl Flow {
    pub(crate) fn new(to: &Target, events: u64, size: usize) -> Flow {
        Flow {
            to: to.clone(),
            events,
            size,
            credit: None,
        }
    }
}

/// Sends `flow.events` events of `flow.size` bytes with the client's
/// [`Publisher`](icom_client::Publisher): this task writes, another reads
/// the acks; `window` events in flight at most (the client's
/// `max_in_flight`), and within the delivery credit, if any.
pub(crate) async fn pump(client: &Client, flow: Flow) -> Sent {
    let Flow {
        to,
        events,
        size,
        credit,
    } = flow;
    let (publisher, mut outcomes) = client.publisher();
    let reader = {
        let credit = credit.clone();
        tokio::spawn(async move {
            let mut s = Sent::default();
            let mut batch = Vec::with_capacity(1024);
            while outcomes.next_many(&mut batch, 1024).await > 0 {
                for p in batch.drain(..) {
                    let delivered = match p.result {
                        Ok(ack) => {
                            s.acked += 1;
                            s.deliveries += u64::from(ack.delivered);
                            ack.delivered
                        }
                        Err(e) => {
                            s.failed += 1;
                            s.first_error.get_or_insert_with(|| e.to_string());
                            e.ack().map_or(0, |a| a.delivered)
                        }
                    };
                    // What was not delivered gives its credit back now.
                    if let Some((credit, n)) = &credit {
                        credit.add_permits(n.saturating_sub(delivered) as usize);
                    }
                }
                s.done = Some(Instant::now());
            }
            s
        })
    };
    let options = SendOptions::new();
    let mut unsent = Sent::default();
    for _ in 0..events {
        if let Some((credit, n)) = &credit {
            match credit.acquire_many(*n).await {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
        }
        let data = MsgPack(payload::stamped(size));
        if let Err(e) = publisher.publish(&to, EVENT, data, &options).await {
            unsent.failed += 1;
            unsent.first_error.get_or_insert_with(|| e.to_string());
            if let Some((credit, n)) = &credit {
                credit.add_permits(*n as usize);
            }
        }
    }
    // The reader ends once every ack is in and no publisher is left.
    drop(publisher);
    let mut sent = reader.await.unwrap_or_default();
    sent.failed += unsent.failed;
    if sent.first_error.is_none() {
        sent.first_error = unsent.first_error;
    }
    sent
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

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
use crate::payload;
use crate::pump::{counts, finish_time, head, pump, tput_report, Flow, Received, Sent};
use crate::report::{self, Latencies, Report};
use crate::router::Needs;
use crate::{limit, raw};

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
    if args.raw {
        return raw::run(env, router, args).await;
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
                report::round(a / b.max(1.0), 3),
            );
        }
    }
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

//! `icom-bench lat`: request/reply round trips at a fixed rate. One
//! client asks, another replies to each request as it arrives; every
//! request is started on its own schedule (open loop), so a slow one does
//! not hold the next back. Reported: the round trip as the requester sees
//! it (`Client::request`, from the call to the reply) and the one-way
//! latency of each request (its send to its delivery at the responder).

use std::time::{Duration, Instant};

use anyhow::Context;
use icom_client::{Events, MsgPack};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::cli::LatArgs;
use crate::env::Env;
use crate::payload::{self, EVENT};
use crate::report::{Latencies, Report};
use crate::router::Needs;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests sent one after another before the timed ones.
const WARMUP: u64 = 50;

/// Runs `lat`.
///
/// # Errors
/// When the router or a client cannot be started.
pub(crate) async fn run(env: &Env, args: &LatArgs) -> anyhow::Result<Report> {
    if args.rate == 0 {
        anyhow::bail!("--rate must be at least 1");
    }
    let router = env
        .router(Needs {
            connections: 2,
            ..Needs::default()
        })
        .await?;
    let (_responder, events) = env.connect(&router, "server_2", 1024).await?;
    let (requester, _) = env.connect(&router, "server_1", 1024).await?;
    let stop = CancellationToken::new();
    let responder = tokio::spawn(respond(events, args.size, stop.clone()));
    // The warm-up requests come first, one after another; the responder
    // leaves them out of its figures.
    for _ in 0..WARMUP {
        requester
            .request(
                "server_2",
                EVENT,
                MsgPack(payload::stamped(args.size)),
                REQUEST_TIMEOUT,
            )
            .await
            .context("a warm-up request")?;
    }
    let before = router.usage();
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for _ in 0..args.requests {
        tick.tick().await;
        let (requester, tx, size) = (requester.clone(), tx.clone(), args.size);
        tokio::spawn(async move {
            let data = MsgPack(payload::stamped(size));
            let t0 = Instant::now();
            let r = requester
                .request("server_2", EVENT, data, REQUEST_TIMEOUT)
                .await;
            let _ = tx.send(r.map(|_| t0.elapsed()).map_err(|e| e.to_string()));
        });
    }
    drop(tx);
    let mut rtt = Latencies::default();
    let (mut failed, mut first_error) = (0u64, None);
    while let Some(r) = rx.recv().await {
        match r {
            Ok(d) => rtt.push(d),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = started.elapsed();
    let after = router.usage();
    stop.cancel();
    let (mut one_way, answered) = responder.await.unwrap_or_default();

    let mut report = Report::new("lat");
    report.add("link", "link", env.wan_label());
    report.add("rate", "requests/s (target)", args.rate);
    report.add("requests", "requests", args.requests);
    report.add("size_bytes", "data size (bytes)", args.size as u64);
    report.add("replied", "replies received", rtt.len() as u64);
    report.add("answered", "requests the responder got", answered);
    report.add("failed", "failed", failed);
    report.seconds("seconds", "elapsed (s)", elapsed);
    rtt.add_to(&mut report, "rtt", "request→reply");
    one_way.add_to(&mut report, "one_way", "request send→delivery");
    router.add_usage(
        &mut report,
        before,
        after,
        elapsed,
        2 * args.requests,
        "events",
    );
    report.check(
        rtt.len() as u64 == args.requests && failed == 0 && answered == args.requests,
        format!(
            "{} of {} requests replied, the responder got {answered}, {failed} failed (first: {})",
            rtt.len(),
            args.requests,
            first_error.as_deref().unwrap_or("none")
        ),
    );
    env.stop(router).await;
    Ok(report)
}

/// Replies to every request until stopped; returns the one-way latencies
/// and the count of the requests after the warm-up.
async fn respond(mut events: Events, size: usize, stop: CancellationToken) -> (Latencies, u64) {
    let mut one_way = Latencies::default();
    let mut count = 0;
    let mut warmup = WARMUP;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            () = stop.cancelled() => break,
        };
        let Some(event) = event else { break };
        if warmup > 0 {
            warmup -= 1;
        } else {
            if let Some(age) = payload::age(&event.data) {
                one_way.push(age);
            }
            count += 1;
        }
        tokio::spawn(async move {
            let _ = event.reply(MsgPack(payload::stamped(size))).await;
        });
    }
    (one_way, count)
}

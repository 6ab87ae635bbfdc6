//! `icom-bench persist`: durable sends at rate. One sender, three phases
//! through the same router and connection, each after a warm-up of a
//! tenth as many events:
//! - `plain`: sends to an online server, acked and delivered (as `tput`):
//!   the rate the durable ones are compared with;
//! - `persist`: persistent sends (`persist: {id}`) to a server that never
//!   connects, under `--ids` ids in turn, so that each send stores one
//!   event and replaces an older one;
//! - `ttl`: sends with a ttl to the same offline server: a copy queued
//!   for it each.
//!
//! A durable send counts once its ack says ok and `queued: 1`: the router
//! acks it only after the store's write is committed to disk (with
//! `--cluster`, once JetStream acked it: a majority of the stream's
//! replicas has it). The store's bounds are raised to hold every event of
//! the run.

use std::time::{Duration, Instant};

use icom_client::Target;

use crate::cli::{PersistArgs, TputArgs};
use crate::env::Env;
use crate::flow::phase;
use crate::pump::{finish_time, head, pump, tput_report, Flow, Keep, Sent};
use crate::report::{round, Report};
use crate::router::{Needs, Router, Usage};

/// The sender.
const SENDER: &str = "server_1";
/// The online receiver of the plain phase.
const RECEIVER: &str = "server_2";
/// The server the durable sends are for; it never connects.
const OFFLINE: &str = "server_offline";

/// Runs `persist`.
///
/// # Errors
/// When the router or a client cannot be started.
pub(crate) async fn run(env: &Env, args: &PersistArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.ids >= 1, "--ids must be at least 1");
    anyhow::ensure!(
        (1..=u64::from(u32::MAX)).contains(&args.ttl_ms),
        "--ttl-ms must be from 1 to {}",
        u32::MAX
    );
    let warmup = args.events / 10;
    let router = env
        .router(Needs {
            connections: 2,
            stored: Some((warmup + args.events, args.size)),
            ..Needs::default()
        })
        .await?;
    let (_receiver, events) = env.connect(&router, RECEIVER, args.window).await?;
    let (sender, _) = env.connect(&router, SENDER, args.window).await?;

    let mut report = Report::new("persist");
    head(
        &mut report,
        &env.wan_label(),
        args.events,
        args.size,
        args.window,
    );
    report.add("ids", "persist ids in turn", args.ids);
    report.add("ttl_ms", "ttl of the queued sends (ms)", args.ttl_ms);

    // Plain sends, acked and delivered, as `tput` counts them.
    let online = Target::Server(RECEIVER.into());
    let mut receivers = vec![events];
    let (events, size, window) = (args.events, args.size, args.window);
    phase(&sender, &online, warmup, size, window, &mut receivers, 1).await;
    let before = router.usage();
    let started = Instant::now();
    let (sent, got) = phase(&sender, &online, events, size, window, &mut receivers, 1).await;
    let elapsed = finish_time(&sent, &got).saturating_duration_since(started);
    let after = router.usage();
    let tput_args = TputArgs {
        events,
        size,
        window,
        vs_limit: false,
        plain: false,
    };
    let mut plain = tput_report(&env.wan_label(), &tput_args, &sent, got, elapsed);
    cpu_per_event(&mut plain, before, after, elapsed, events);
    let plain_rate = rate(&plain);
    report.merge("plain_", only_phase(plain));

    let offline = Target::Server(OFFLINE.into());
    let ttl = Duration::from_millis(args.ttl_ms);
    let mut rates = Vec::new();
    for (name, keep) in [
        ("persist", Keep::Persist(args.ids)),
        ("ttl", Keep::Ttl(ttl)),
    ] {
        let durable = durable(&router, &sender, &offline, keep, warmup, args).await;
        rates.push((name, rate(&durable)));
        report.merge(&format!("{name}_"), durable);
    }
    for (name, r) in rates {
        if let (Some(a), Some(b)) = (r, plain_rate) {
            report.add(
                &format!("{name}_vs_plain"),
                &format!("{name} sends/s ÷ plain sends/s"),
                round(a / b.max(1.0), 3),
            );
        }
    }
    router.add_memory(&mut report, router.usage());
    report.add("method", "method", router.method());
    env.stop(router).await;
    Ok(report)
}

/// One durable phase: a warm-up, then `args.events` sends kept as `keep`,
/// each for the offline server, timed from the first send to the last ack.
async fn durable(
    router: &Router,
    sender: &icom_client::Client,
    to: &Target,
    keep: Keep,
    warmup: u64,
    args: &PersistArgs,
) -> Report {
    let flow = |events| Flow {
        keep,
        ..Flow::new(to, events, args.size)
    };
    let _ = pump(sender, flow(warmup)).await;
    let before = router.usage();
    let started = Instant::now();
    let sent = pump(sender, flow(args.events)).await;
    let elapsed = sent
        .done
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(started);
    let after = router.usage();
    let mut r = Report::new("durable");
    durable_counts(&mut r, args.events, &sent);
    r.seconds("seconds", "elapsed (s)", elapsed);
    r.rate(
        "events_per_s",
        "sends/s (acked, stored)",
        sent.acked.min(sent.queued),
        elapsed,
    );
    cpu_per_event(&mut r, before, after, elapsed, args.events);
    r
}

/// The counts of a durable phase, checked: every send acked ok, none
/// delivered, one copy stored for the offline server each.
fn durable_counts(r: &mut Report, events: u64, sent: &Sent) {
    r.add("sent", "sent", events);
    r.add("acked", "acked ok", sent.acked);
    r.add("failed", "failed", sent.failed);
    r.add("queued", "stored for the offline server", sent.queued);
    r.check(
        sent.acked == events && sent.failed == 0,
        format!(
            "acked {} of {events}, {} failed (first: {})",
            sent.acked,
            sent.failed,
            sent.first_error.as_deref().unwrap_or("none")
        ),
    );
    r.check(
        sent.queued == events && sent.deliveries == 0,
        format!(
            "expected {events} stored and none delivered; the acks say {} stored, {} delivered",
            sent.queued, sent.deliveries
        ),
    );
}

/// Adds the router's CPU per event and its busy cores between two
/// readings.
fn cpu_per_event(r: &mut Report, before: Usage, after: Usage, elapsed: Duration, count: u64) {
    if let (Some(a), Some(b)) = (before.nats_cpu, after.nats_cpu) {
        crate::cluster::add_nats_cpu(r, b.saturating_sub(a), count, "events");
    }
    if let (Some(a), Some(b)) = (before.cpu, after.cpu) {
        let cpu = b.saturating_sub(a);
        r.add(
            "router_cpu_s_per_million_events",
            "router CPU s / 1M events",
            round(cpu.as_secs_f64() * 1e6 / count.max(1) as f64, 3),
        );
        r.add(
            "router_cores",
            "router cores busy",
            round(cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9), 2),
        );
    }
}

/// The `plain` phase's own figures: the run's setup is in the head.
fn only_phase(r: Report) -> Report {
    r.without(&["link", "events", "size_bytes", "window"])
}

fn rate(r: &Report) -> Option<f64> {
    r.get("events_per_s").and_then(serde_json::Value::as_f64)
}

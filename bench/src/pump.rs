//! The pipelined sender every throughput scenario uses (`tput`, `fanout`,
//! `limit`, `persist`), what a sender and its receivers count, and the
//! report of a `tput` run, with its checks that the counts add up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use icom_client::{Client, MsgPack, SendOptions, Target};
use tokio::sync::Semaphore;

use crate::cli::TputArgs;
use crate::payload::{self, EVENT};
use crate::report::{Latencies, Report};

/// What a pipelined sender saw.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    pub(crate) acked: u64,
    pub(crate) failed: u64,
    /// The sum of the acks' `delivered`.
    pub(crate) deliveries: u64,
    /// The sum of the acks' `queued`: copies stored for offline servers.
    pub(crate) queued: u64,
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

/// Adds a throughput run's setup: the link, the events, their size, the
/// window.
pub(crate) fn head(report: &mut Report, wan: &str, events: u64, size: usize, window: usize) {
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

/// What a pipelined sender sends.
pub(crate) struct Flow {
    pub(crate) to: Target,
    pub(crate) events: u64,
    pub(crate) size: usize,
    /// Permits per delivery in flight, and the deliveries of one event:
    /// each send takes that many; each delivery gives one back.
    pub(crate) credit: Option<(Arc<Semaphore>, u32)>,
    /// Plain, persistent or with a ttl.
    pub(crate) keep: Keep,
}

/// Whether the router is asked to store the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Plain sends.
    Nothing,
    /// Persistent, under ids `bench-0` … `bench-<n-1>` in turn: each send
    /// stores one event, replacing the one sent `n` sends before.
    Persist(u64),
    /// With this ttl: a copy is queued for each offline named recipient.
    Ttl(Duration),
}

impl Keep {
    /// The options of the `i`-th send.
    fn options(self, i: u64) -> SendOptions {
        match self {
            Keep::Nothing => SendOptions::new(),
            Keep::Persist(n) => SendOptions::new().persist(format!("bench-{}", i % n.max(1))),
            Keep::Ttl(ttl) => SendOptions::new().ttl(ttl),
        }
    }
}

impl Flow {
    pub(crate) fn new(to: &Target, events: u64, size: usize) -> Flow {
        Flow {
            to: to.clone(),
            events,
            size,
            credit: None,
            keep: Keep::Nothing,
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
        keep,
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
                            s.queued += u64::from(ack.queued);
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
    let plain = SendOptions::new();
    let mut unsent = Sent::default();
    for i in 0..events {
        if let Some((credit, n)) = &credit {
            match credit.acquire_many(*n).await {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
        }
        let data = MsgPack(payload::stamped(size));
        let stored;
        let options = if keep == Keep::Nothing {
            &plain
        } else {
            stored = keep.options(i);
            &stored
        };
        if let Err(e) = publisher.publish(&to, EVENT, data, options).await {
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

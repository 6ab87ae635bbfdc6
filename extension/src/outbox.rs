//! The bounded queue in front of arma-rs's callback channel.
//!
//! arma-rs hands callbacks to the engine from an unbounded channel, and the
//! engine takes about a hundred a frame. So the extension keeps its own
//! backlog here, bounded in count and bytes, and hands the game at most a
//! window of callbacks that it has not confirmed yet:
//!
//! - **Credit.** The addon's `ExtensionCallback` handler counts the callbacks
//!   it handled and returns them once a frame with `icom:ready [n]`. From the
//!   first `ready` on, only returned credit opens the window again; if none
//!   comes for `credit_timeout` while some is owed, the window reopens (and
//!   the reset is counted), so a lost `ready` cannot stall delivery.
//! - **Pacing.** Until the first `ready` (a mission without the addon, like
//!   one ported from Forge), the window reopens every `pace`: a rate, not a
//!   bound, since nothing says what the engine took; what it has not taken
//!   waits in arma-rs's unbounded channel (addons/README.md says so).
//! - **Shedding.** A callback that arrives when the backlog is full is
//!   dropped, counted by kind, logged, and reported to the game with one
//!   `error` callback (code `shed`) once there is room. `status` reports the
//!   counts. `state` and `error` callbacks have a small reserve beyond the
//!   count bound, so that a burst of events cannot hide a disconnect.
//! - **Large payloads.** A callback whose JSON is longer than
//!   `inline_bytes` goes into the [`Payloads`] store when its turn comes,
//!   and the game gets a `large` callback with the handle instead. While
//!   the store is full, the queue waits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Notify;

use crate::callback::{Callback, Kind};
use crate::payloads::{Payloads, StoreError};

/// How many `state` and `error` callbacks may go past the count bound.
const RESERVE: usize = 64;

/// The outbox's bounds and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxLimits {
    /// Callbacks waiting at once.
    pub(crate) count: usize,
    /// Bytes of JSON waiting at once.
    pub(crate) bytes: usize,
    /// Callbacks handed to the game and not yet confirmed.
    pub(crate) window: usize,
    /// The longest JSON sent in the callback itself; longer goes by handle.
    pub(crate) inline_bytes: usize,
    /// With credit, how long owed credit may stay away before the window
    /// reopens anyway.
    pub(crate) credit_timeout: Duration,
    /// Without credit, how often the window reopens.
    pub(crate) pace: Duration,
}

/// Counts, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OutboxStats {
    /// Callbacks waiting.
    pub(crate) queued: usize,
    /// Their bytes.
    pub(crate) queued_bytes: usize,
    /// Handed to the game, not yet confirmed.
    pub(crate) in_flight: usize,
    /// Whether the game returns credit (`icom:ready`).
    pub(crate) credit: bool,
    /// Handed to the game since load.
    pub(crate) delivered: u64,
    /// Dropped because the backlog was full, by kind.
    pub(crate) shed: [u64; Kind::ALL.len()],
    /// Times owed credit stayed away and the window reopened anyway.
    pub(crate) credit_resets: u64,
}

impl OutboxStats {
    pub(crate) fn shed_total(&self) -> u64 {
        self.shed.iter().sum()
    }
}

/// What the pump may hand over now, and when to look again.
#[derive(Debug, Default)]
pub(crate) struct Take {
    pub(crate) batch: Vec<Callback>,
    /// Look again after this long even if nothing wakes the pump.
    pub(crate) retry: Option<Duration>,
}

/// The queue. Its lock is held only to move items in and out.
#[derive(Debug)]
pub(crate) struct Outbox {
    limits: OutboxLimits,
    inner: Mutex<Queue>,
    wake: Notify,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Callback>,
    bytes: usize,
    in_flight: usize,
    credit: bool,
    /// With credit: when credit last came. Without: when the window reopened.
    since: Instant,
    delivered: u64,
    shed: [u64; Kind::ALL.len()],
    shed_unreported: u64,
    credit_resets: u64,
}

impl Outbox {
    pub(crate) fn new(limits: OutboxLimits, now: Instant) -> Outbox {
        Outbox {
            limits,
            inner: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                in_flight: 0,
                credit: false,
                since: now,
                delivered: 0,
                shed: [0; Kind::ALL.len()],
                shed_unreported: 0,
                credit_resets: 0,
            }),
            wake: Notify::new(),
        }
    }

    /// Queues a callback; returns false if it was shed.
    pub(crate) fn push(&self, callback: Callback) -> bool {
        let size = callback.data.len();
        let kind = callback.kind;
        let mut q = self.lock();
        let reserve = if matches!(kind, Kind::State | Kind::Error) {
            RESERVE
        } else {
            0
        };
        let fits = q.items.len() < self.limits.count + reserve
            && (q.bytes + size <= self.limits.bytes || q.items.is_empty());
        if !fits {
            q.shed[kind.index()] += 1;
            q.shed_unreported += 1;
            let first = q.shed_unreported == 1;
            drop(q);
            if first {
                tracing::warn!(
                    target: "icom::events",
                    kind = kind.as_str(),
                    "the game is not taking callbacks fast enough: shedding until it catches up"
                );
            }
            return false;
        }
        q.bytes += size;
        q.items.push_back(callback);
        drop(q);
        self.wake.notify_one();
        true
    }

    /// The game confirms `n` callbacks handled (`icom:ready`).
    pub(crate) fn credit(&self, n: usize, now: Instant) {
        let mut q = self.lock();
        q.credit = true;
        q.in_flight = q.in_flight.saturating_sub(n);
        q.since = now;
        drop(q);
        self.wake.notify_one();
    }

    /// Wakes the pump, e.g. after a fetch made room in the payload store.
    pub(crate) fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Takes what may be handed to the game now.
    pub(crate) fn take(&self, now: Instant, payloads: &Payloads) -> Take {
        let mut q = self.lock();
        let since = now.saturating_duration_since(q.since);
        if !q.credit {
            if since >= self.limits.pace {
                q.in_flight = 0;
                q.since = now;
            }
        } else if q.in_flight > 0 && since >= self.limits.credit_timeout {
            q.credit_resets += 1;
            tracing::warn!(
                target: "icom::events",
                owed = q.in_flight,
                "no icom:ready from the game for {} ms: reopening the callback window",
                self.limits.credit_timeout.as_millis()
            );
            q.in_flight = 0;
            q.since = now;
        }

        let mut take = Take::default();
        if q.shed_unreported > 0 && q.in_flight < self.limits.window {
            take.batch.push(shed_notice(&q));
            q.shed_unreported = 0;
            q.in_flight += 1;
        }
        while q.in_flight < self.limits.window {
            let Some(callback) = q.items.pop_front() else {
                break;
            };
            q.bytes -= callback.data.len();
            if callback.data.len() <= self.limits.inline_bytes {
                take.batch.push(callback);
                q.in_flight += 1;
                continue;
            }
            let kind = callback.kind;
            match payloads.insert(callback.data, now) {
                Ok(handle) => {
                    let notice = json!({
                        "kind": kind.as_str(),
                        "handle": handle.id.to_string(),
                        "size": handle.size,
                        "pages": handle.pages,
                    });
                    take.batch.push(Callback::new(Kind::Large, &notice));
                    q.in_flight += 1;
                }
                Err(refused) if refused.error == StoreError::Full => {
                    // Wait for fetches or expiry to make room; keep order.
                    q.bytes += refused.text.len();
                    q.items.push_front(Callback {
                        kind,
                        data: refused.text,
                    });
                    take.retry = Some(Duration::from_millis(250));
                    break;
                }
                Err(refused) => {
                    q.shed[kind.index()] += 1;
                    q.shed_unreported += 1;
                    tracing::warn!(target: "icom::events", kind = kind.as_str(), "{}", refused.error);
                }
            }
        }
        q.delivered += take.batch.len() as u64;
        if take.retry.is_none() && !q.items.is_empty() {
            // The window is full: credit wakes the pump, or else time does.
            let wait = if q.credit {
                self.limits.credit_timeout
            } else {
                self.limits.pace
            };
            take.retry = Some(wait.saturating_sub(now.saturating_duration_since(q.since)));
        }
        take
    }

    /// Waits until something may have changed: a push, credit, a nudge, or
    /// `retry` elapsing.
    pub(crate) async fn wait(&self, retry: Option<Duration>) {
        match retry {
            Some(d) => {
                let _ = tokio::time::timeout(d.max(Duration::from_millis(1)), self.wake.notified())
                    .await;
            }
            None => self.wake.notified().await,
        }
    }

    pub(crate) fn stats(&self) -> OutboxStats {
        let q = self.lock();
        OutboxStats {
            queued: q.items.len(),
            queued_bytes: q.bytes,
            in_flight: q.in_flight,
            credit: q.credit,
            delivered: q.delivered,
            shed: q.shed,
            credit_resets: q.credit_resets,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Every update under this lock keeps the queue consistent, so a
        // poisoned lock is still usable.
        icom_protocol::lock(&self.inner)
    }
}

/// Hands callbacks to the game for ever: `deliver` is the arma-rs callback.
pub(crate) async fn pump(outbox: Arc<Outbox>, payloads: Arc<Payloads>, deliver: impl Fn(Callback)) {
    loop {
        let take = outbox.take(Instant::now(), &payloads);
        for callback in take.batch {
            deliver(callback);
        }
        outbox.wait(take.retry).await;
    }
}

fn shed_notice(q: &Queue) -> Callback {
    let by_kind: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| q.shed[k.index()] > 0)
        .map(|k| format!("{}: {}", k.as_str(), q.shed[k.index()]))
        .collect();
    Callback::error(
        "shed",
        &format!(
            "the game did not take callbacks fast enough; {} dropped since the last notice (totals: {})",
            q.shed_unreported,
            by_kind.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payloads::PayloadLimits;

    fn limits() -> OutboxLimits {
        OutboxLimits {
            count: 10,
            bytes: 1000,
            window: 3,
            inline_bytes: 50,
            credit_timeout: Duration::from_secs(5),
            pace: Duration::from_millis(20),
        }
    }

    fn payloads() -> Payloads {
        Payloads::new(PayloadLimits {
            count: 2,
            bytes: 10_000,
            age: Duration::from_secs(60),
            page_bytes: 40,
        })
    }

    fn event(n: usize) -> Callback {
        Callback::error("test", &n.to_string())
    }

    fn ev(n: usize) -> Callback {
        Callback {
            kind: Kind::Event,
            data: format!("{{\"n\":{n}}}"),
        }
    }

    #[test]
    fn credit_bounds_what_is_in_flight() {
        let t0 = Instant::now();
        let o = Outbox::new(limits(), t0);
        let p = payloads();
        for n in 0..5 {
            assert!(o.push(ev(n)));
        }
        let take = o.take(t0, &p);
        assert_eq!(take.batch.len(), 3);
        // without credit, pacing reopens the window
        assert_eq!(take.retry, Some(Duration::from_millis(20)));
        assert!(o.take(t0, &p).batch.is_empty());
        assert_eq!(o.take(t0 + Duration::from_millis(20), &p).batch.len(), 2);

        // with credit, only credit (or its timeout) reopens it
        let o = Outbox::new(limits(), t0);
        for n in 0..5 {
            o.push(ev(n));
        }
        o.credit(0, t0);
        assert_eq!(o.take(t0, &p).batch.len(), 3);
        let t1 = t0 + Duration::from_secs(1);
        assert!(o.take(t1, &p).batch.is_empty());
        o.credit(1, t1);
        let take = o.take(t1, &p);
        assert_eq!(take.batch.len(), 1);
        assert_eq!(take.retry, Some(Duration::from_secs(5)));
        let later = t1 + Duration::from_secs(5);
        assert_eq!(o.take(later, &p).batch.len(), 1);
        let stats = o.stats();
        assert_eq!(
            (stats.credit_resets, stats.delivered, stats.queued),
            (1, 5, 0)
        );
    }

    #[test]
    fn a_full_backlog_sheds_counts_and_reports() {
        let t0 = Instant::now();
        let o = Outbox::new(limits(), t0);
        let p = payloads();
        for n in 0..10 {
            assert!(o.push(ev(n)));
        }
        assert!(!o.push(ev(10)));
        assert!(!o.push(ev(11)));
        // state and error have a reserve
        assert!(o.push(event(12)));
        let stats = o.stats();
        assert_eq!(stats.shed[Kind::Event.index()], 2);
        assert_eq!(stats.queued, 11);
        let take = o.take(t0, &p);
        assert_eq!(take.batch[0].kind, Kind::Error);
        assert!(
            take.batch[0].data.contains("\"shed\""),
            "{}",
            take.batch[0].data
        );
        assert!(
            take.batch[0].data.contains("event: 2"),
            "{}",
            take.batch[0].data
        );
        assert_eq!(take.batch.len(), 3);
        // reported once
        o.credit(3, t0);
        assert!(o.take(t0, &p).batch.iter().all(|c| c.kind == Kind::Event));
    }

    #[test]
    fn bytes_are_bounded_too() {
        let t0 = Instant::now();
        let o = Outbox::new(limits(), t0);
        let big = Callback {
            kind: Kind::Event,
            data: "x".repeat(600),
        };
        assert!(o.push(big.clone()));
        assert!(!o.push(big.clone()));
        // one item larger than the bound still goes when the queue is empty
        let o = Outbox::new(limits(), t0);
        let huge = Callback {
            kind: Kind::Event,
            data: "x".repeat(5000),
        };
        assert!(o.push(huge));
    }

    #[test]
    fn large_callbacks_go_by_handle_and_wait_for_room() {
        let t0 = Instant::now();
        let o = Outbox::new(
            OutboxLimits {
                window: 10,
                ..limits()
            },
            t0,
        );
        let p = payloads();
        let text = format!("[{}]", "1,".repeat(60) + "1");
        for _ in 0..3 {
            o.push(Callback {
                kind: Kind::Reply,
                data: text.clone(),
            });
        }
        o.push(ev(1));
        let take = o.take(t0, &p);
        // the store holds two: the third waits, and so does what follows
        assert_eq!(take.batch.len(), 2);
        assert!(take.batch.iter().all(|c| c.kind == Kind::Large));
        let notice: serde_json::Value = serde_json::from_str(&take.batch[0].data).unwrap();
        assert_eq!(notice["kind"], "reply");
        assert_eq!(notice["size"], text.len());
        let pages = notice["pages"].as_u64().unwrap() as usize;
        let handle: u64 = notice["handle"].as_str().unwrap().parse().unwrap();
        assert_eq!(take.retry, Some(Duration::from_millis(250)));
        let joined: String = (0..pages).map(|i| p.page(handle, i, t0).unwrap()).collect();
        assert_eq!(joined, text);
        let take = o.take(t0, &p);
        assert_eq!(take.batch.len(), 2);
        assert_eq!(take.batch[0].kind, Kind::Large);
        assert_eq!(take.batch[1].kind, Kind::Event);
        assert_eq!(o.stats().queued_bytes, 0);
    }

    #[tokio::test]
    async fn the_pump_delivers_and_waits_for_pushes() {
        let o = Arc::new(Outbox::new(limits(), Instant::now()));
        let p = Arc::new(payloads());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(pump(o.clone(), p, move |c| {
            let _ = tx.send(c);
        }));
        o.push(ev(1));
        assert_eq!(rx.recv().await.unwrap(), ev(1));
        o.push(ev(2));
        assert_eq!(rx.recv().await.unwrap(), ev(2));
        task.abort();
    }
}

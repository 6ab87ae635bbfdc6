//! Events for tests: a `send` built in one call, and the check that one
//! event routes from a peer to another (the router is serving).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use icom_protocol::{Control, Deliver, Persist, Send, Target, NIL};

use crate::cluster::TestCluster;

use crate::raw::RawClient;

/// A plain `send`: not persisted, no ttl, not a reply. Set those fields
/// with struct update syntax: `Send { ttl_ms: Some(5), ..send(…) }`.
pub fn send(id: u64, to: Target, event: &str, data: Bytes) -> Send {
    Send {
        id,
        to,
        event: event.into(),
        data,
        persist: None,
        ttl_ms: None,
        reply_to: None,
    }
}

/// A persistent `send` of event `state` under `persist_id`, its data the
/// MessagePack string `payload {id}`.
///
/// # Panics
/// Never: a string always encodes.
pub fn persistent(id: u64, to: Target, persist_id: &str) -> Send {
    let data = Bytes::from(rmp_serde::to_vec(&format!("payload {id}")).unwrap_or_default());
    Send {
        persist: Some(Persist::Id(persist_id.into())),
        ..send(id, to, "state", data)
    }
}

/// Sends one event (id `id`, no data) from `from` to `to`, by the name in
/// `to`'s welcome, and checks that it is acked ok and delivered.
///
/// # Panics
/// If it is not; or if `to` has no welcome yet.
pub async fn routes(from: &mut RawClient, to: &RawClient, id: u64) {
    let name = to
        .welcome
        .as_ref()
        .expect("the recipient was welcomed")
        .server_id
        .clone();
    let ack = from
        .send(&send(
            id,
            Target::Server(name),
            "probe",
            Bytes::from_static(NIL),
        ))
        .await
        .expect("an ack");
    assert!(ack.ok, "{ack:?}");
    assert_eq!(to.deliver().await.expect("a delivery").id, id);
}

/// Leaves deliveries waiting in the router's queue for `to`, a client that
/// lets the router open one stream at a time ([`RawClient::connect_opts`]
/// with 1) and has not read yet: event 1 goes on its one stream, event 2
/// into the hand of the router's writer, which waits for room for another
/// stream, and events 3 to `last` wait in the queue. `queued` says how
/// many deliveries wait in the router's queues (its stats), to know each
/// step has happened.
///
/// # Panics
/// If a send is not acked ok with one delivery, or a step does not happen
/// within [`crate::WAIT`].
pub async fn stuck_deliveries(
    from: &mut RawClient,
    to: &str,
    last: u64,
    queued: impl Fn() -> usize,
) {
    for id in 1..=last {
        let ack = from
            .send(&send(
                id,
                Target::Server(to.into()),
                "e",
                Bytes::from_static(NIL),
            ))
            .await
            .expect("an ack");
        assert!(ack.ok && ack.delivered == 1, "event {id}: {ack:?}");
        // The writer takes the first two; the rest wait behind them.
        let want = id.saturating_sub(2) as usize;
        assert!(
            crate::eventually(|| queued() == want).await,
            "after event {id}: {} waiting, expected {want}",
            queued()
        );
    }
}

/// The ids of the next `count` deliveries to `to`, sorted (events are not
/// ordered).
///
/// # Panics
/// If fewer arrive within [`crate::WAIT`] each.
pub async fn delivered_ids(to: &RawClient, count: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(to.deliver().await.expect("a delivery").id);
    }
    ids.sort_unstable();
    ids
}

/// Four senders on `senders_at` send bursts of `make(id, sender,
/// senders, joiners)` while twelve servers connect to `joiners_at` one
/// after another; each of these must get every send acked ok, from its
/// replay or live (a send resolved as a joiner registered must not fall
/// between the two).
///
/// # Panics
/// When a joiner misses a send, or anything fails.
pub async fn joiners_get_every_acked_send(
    senders_at: &TestCluster,
    joiners_at: &TestCluster,
    make: fn(u64, &str, &[String], &[String]) -> Send,
) {
    const BURST: usize = 32;
    let senders: Vec<String> = (0..4).map(|s| format!("hq-{s}")).collect();
    let joiners: Vec<String> = (0..12).map(|j| format!("x-{j}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut sending = Vec::new();
    for name in &senders {
        let mut c = senders_at.raw(name).await;
        let (name, stop) = (name.clone(), stop.clone());
        let (senders, joiners) = (senders.clone(), joiners.clone());
        sending.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut id = 0;
            while !stop.load(Relaxed) {
                // Bursts: many sends routed at once, stored while the
                // joiners register.
                for _ in 0..BURST {
                    id += 1;
                    let send = make(id, &name, &senders, &joiners);
                    c.send_event_bytes(&send.encode()).await.unwrap();
                }
                let mut answered = 0;
                while answered < BURST {
                    if let Control::Ack(ack) = c.next_control().await.unwrap() {
                        assert!(ack.ok, "{ack:?}");
                        acked.push((name.clone(), ack.id));
                        answered += 1;
                    }
                }
            }
            acked
        }));
    }
    // Once every sender is done, each joiner is told what was acked.
    let (acked_tx, acked_rx) = tokio::sync::watch::channel(None::<Arc<BTreeSet<(String, u64)>>>);
    let mut receiving = Vec::new();
    for name in &joiners {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let c = joiners_at.raw(name).await;
        let mut acked = acked_rx.clone();
        receiving.push(tokio::spawn(async move {
            // The whole client: its control stream ends with it.
            let c = c;
            let mut got = BTreeSet::new();
            loop {
                let all = acked.borrow().clone();
                if all.as_ref().is_some_and(|all| all.is_subset(&got)) {
                    return got;
                }
                // Only the wait for a stream is timed: a stream accepted is
                // read whole. Ends after 3 s without one, once all is known.
                let next = tokio::select! {
                    s = c.conn.accept_uni() => s,
                    _ = acked.changed(), if all.is_none() => continue,
                    () = tokio::time::sleep(std::time::Duration::from_secs(3)), if all.is_some() => return got,
                };
                let bytes = next.unwrap().read_to_end(1 << 20).await.unwrap();
                let d = Deliver::decode(&Bytes::from(bytes)).unwrap();
                got.insert((d.from, d.id));
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, Relaxed);
    let mut sent = BTreeSet::new();
    for s in sending {
        sent.extend(s.await.unwrap());
    }
    assert!(
        sent.len() > joiners.len(),
        "sends went on while the joiners came"
    );
    let sent = Arc::new(sent);
    acked_tx.send_replace(Some(sent.clone()));
    for (name, r) in joiners.iter().zip(receiving) {
        let got = r.await.unwrap();
        let missed: Vec<_> = sent.difference(&got).collect();
        assert!(missed.is_empty(), "{name} never got {missed:?}");
    }
}

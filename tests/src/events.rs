//! Events for tests: a `send` built in one call, and the check that one
//! event routes from a peer to another (the router is serving).

use bytes::Bytes;
use icom_protocol::{Persist, Send, Target, NIL};

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

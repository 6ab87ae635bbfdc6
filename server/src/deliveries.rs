//! The writer of one connection's deliveries, and what becomes of those it
//! could not write. One stream per delivery, from the recipient's outbound
//! queue; once the queue is finished (another router took the identity,
//! [`crate::connection::retire`]) the last ones are watched until the
//! client has them. When the connection is gone, what still waited in its
//! queue, and what the writer had taken but could not open a stream for,
//! is passed on to where the identity is now: the connection that replaced
//! it here, or the router of the cluster that took it. A live delivery is
//! lost only once its stream was open on a connection that ended (§7 of
//! docs/PROTOCOL.md).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use quinn::SendStream;
use tracing::{debug, warn};

use crate::connection::{send_event, write_event, Written};
use crate::router::Peer;
use crate::shared::Shared;
use crate::space::Reached;

/// Opens one stream per queued delivery of `peer` until its queue ends.
/// Once the queue is finished, each stream is also finished and watched
/// until the client has acknowledged it, and what went just before is
/// given two round trips and `ack_grace`; then the queue is told that all
/// is written, for the connection to be closed.
pub(crate) async fn write(shared: Arc<Shared>, peer: Arc<Peer>, ack_grace: Duration) {
    let mut batch: Vec<Bytes> = Vec::new();
    let mut last: Vec<SendStream> = Vec::new();
    while peer.outbound.pop_all(&mut batch).await {
        let mut taken = batch.drain(..);
        while let Some(wire) = taken.next() {
            let len = wire.len();
            let unopened = if peer.outbound.is_finishing() {
                match write_event(&peer.conn, wire.clone()).await {
                    Some(Written::Whole(stream)) => {
                        last.push(stream);
                        None
                    }
                    Some(Written::Cut) => None,
                    None => Some(wire),
                }
            } else {
                send_event(&peer.conn, wire).await.err()
            };
            if let Some(wire) = unopened {
                let rest = std::iter::once(wire).chain(taken).collect();
                pass_on(&shared, &peer, rest).await;
                return;
            }
            peer.outbound.written(len);
        }
    }
    if peer.outbound.is_finishing() {
        for stream in &last {
            let _ = stream.stopped().await;
        }
        // What went before the queue was finished is not watched: its
        // acknowledgements come within a round trip and the client's ack
        // delay, unless a packet was lost.
        tokio::time::sleep(peer.conn.rtt() * 2 + ack_grace).await;
        peer.outbound.all_written();
    }
}

/// Passes `rest`, deliveries for `peer` whose connection is gone, on to
/// where its identity is now: the connection that replaced it here (into
/// its queue, within its bounds), or the router that holds it (forwarded,
/// as an event for it would be). Connected nowhere, they are dropped.
pub(crate) async fn pass_on(shared: &Shared, peer: &Peer, rest: Vec<Bytes>) {
    if rest.is_empty() {
        return;
    }
    let (id, count) = (&peer.server_id, rest.len());
    let lost = if let Some(next) = shared
        .table
        .local(id)
        .filter(|next| next.session != peer.session)
    {
        next.outbound.push_all(rest)
    } else if let Some(owner) = shared.table.remote_owner(id) {
        let sent = rest.into_iter().map(|wire| {
            let to = vec![(owner.router.clone(), vec![id.clone()])];
            shared.space.forward(to, wire)
        });
        join_all(sent)
            .await
            .iter()
            .filter(|reached| !reached.iter().all(|(_, r)| *r == Reached::Delivered))
            .count()
    } else {
        debug!(
            count,
            "connected nowhere: its waiting deliveries are dropped"
        );
        return;
    };
    if lost > 0 {
        warn!(
            count,
            lost, "passing on the deliveries of an ended connection: some did not fit or arrive"
        );
    } else {
        debug!(count, "passed on the deliveries of an ended connection");
    }
}

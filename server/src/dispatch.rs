//! Routing one send, start to ack: validation, target resolution, the
//! policy, the store (persistent events and copies for offline servers,
//! written before the ack), and the hand-off to each recipient's queue.

use std::sync::Arc;

use bytes::Bytes;
use icom_protocol::{Ack, AckCode, AckError, DeliverRef, Persist, SendRef};
use tracing::{debug, warn};

use crate::config::Config;
use crate::keep::{Persistent, StoreTicket};
use crate::outbound::PushError;
use crate::policy::{Request, Verdict};
use crate::router::{LocalPeers, Peer};
use crate::shared::Shared;
use crate::space::Reached;
use crate::store::StoreError;

/// How far [`route`] took a send.
pub(crate) enum Routed {
    /// Routed and answered without waiting: the common case.
    Done(Ack),
    /// Routed as far as it could be without waiting; [`Rest::finish`]
    /// waits for the store or the other routers and answers.
    Wait(Box<Rest>),
}

/// What is left of a send's routing once it must wait: storing a
/// persistent event (before any live delivery), forwarding to other
/// routers, queueing copies for offline named recipients.
pub(crate) struct Rest {
    from: Arc<str>,
    tally: Tally,
    wire: Bytes,
    /// Named servers (`server`, `servers`) are owed the event even when
    /// they are offline: a persistent send is stored for them, a send with
    /// a ttl queues a copy for each, and any other send is `not_found` for
    /// them. The broad targets reach whoever is connected.
    named: bool,
    persistent: bool,
    expires_ms: Option<u64>,
    /// The persistent event, until it is stored.
    store: Option<Persistent>,
    /// The recipients connected here, until the event is handed to them.
    peers: LocalPeers,
    remote: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// Named recipients that did not get it live.
    absent: Vec<String>,
    /// Held until the send is stored or given up (dropped with it).
    ticket: Option<StoreTicket>,
}

/// Routes one decoded send from `from`, accepted at `sent_ms` (Unix ms),
/// as far as it goes without waiting.
pub(crate) fn route(
    shared: &Shared,
    config: &Config,
    from: &Arc<str>,
    send: SendRef<'_>,
    sent_ms: u64,
) -> Routed {
    if let Err(e) = send.validate(&config.groups) {
        return Routed::Done(Ack::failed(send.id, AckCode::Invalid, e.to_string()));
    }
    // A send that may store begins before it is resolved: a server that
    // registers after the resolution waits for the store before its replay.
    // (In a cluster the replay follows the shared store for a while
    // instead, whoever wrote: PROTOCOL.md §12.4.)
    let may_store = send.persist.is_some() || (send.ttl_ms.is_some() && send.to.is_named());
    let ticket = (may_store && config.cluster.is_none()).then(|| shared.storing.begin());
    let resolved = match shared.table.resolve(from, &send.to, &config.groups) {
        Ok(r) => r,
        Err(e) => return Routed::Done(Ack::failed(send.id, AckCode::Invalid, e.to_string())),
    };
    {
        // Listed only for a policy that reads them (no allocation else).
        let recipients: Vec<&str> = if config.policy.reads_recipients() {
            resolved
                .peers
                .iter()
                .map(|p| &*p.server_id)
                .chain(
                    resolved
                        .remote
                        .iter()
                        .flat_map(|(_, ids)| ids.iter().map(|i| &**i)),
                )
                .chain(resolved.offline.iter().map(String::as_str))
                .collect()
        } else {
            Vec::new()
        };
        let request = Request {
            sender: from,
            event: send.event,
            recipients: &recipients,
            persist: send.persist.is_some(),
        };
        if let Verdict::Deny(why) = config.policy.check(&request, &config.groups) {
            warn!(
                code = "forbidden",
                sender = &**from,
                event = %send.event,
                target = ?send.to,
                "refused by policy: {why}"
            );
            return Routed::Done(Ack::failed(send.id, AckCode::Forbidden, why));
        }
    }
    let persist_id = match &send.persist {
        None => None,
        Some(Persist::Id(id)) => Some(id.clone()),
        Some(Persist::Auto) => Some(uuid::Uuid::new_v4().simple().to_string()),
    };
    let expires_ms = send.ttl_ms.map(|t| sent_ms + u64::from(t));
    let wire = Bytes::from(
        DeliverRef {
            from,
            id: send.id,
            event: send.event,
            data: send.data,
            persist_id: persist_id.as_deref(),
            reply_to: send.reply_to,
            sent_ms,
        }
        .encode(),
    );
    let named = send.to.is_named();
    let mut rest = Rest {
        from: from.clone(),
        tally: Tally::new(send.id),
        named,
        persistent: persist_id.is_some(),
        expires_ms,
        // Stored before any live delivery: a server that registered
        // after the resolution finds it in its replay (which waits for it:
        // `Storing`).
        store: persist_id.map(|pid| Persistent {
            persist_id: pid,
            target: send.to.to_target(),
            from: from.to_string(),
            expires_ms,
            wire: wire.clone(),
        }),
        wire,
        peers: resolved.peers,
        remote: resolved.remote,
        absent: resolved.offline,
        ticket,
    };
    if rest.store.is_some() {
        return Routed::Wait(Box::new(rest));
    }
    rest.hand_over();
    if !rest.remote.is_empty() || rest.may_queue() {
        return Routed::Wait(Box::new(rest));
    }
    // Nothing to queue (`may_queue`), so settling waits for nothing.
    let _ = rest.settle(shared);
    Routed::Done(rest.conclude())
}

impl Rest {
    /// Stores, forwards and queues what [`route`] left, and answers.
    pub(crate) async fn finish(mut self, shared: &Shared) -> Ack {
        if let Some(item) = self.store.take() {
            let pid = item.persist_id.clone();
            if let Err(e) = shared.keep.persist(item).await {
                let code = store_code(&e);
                warn!(
                    code = code.as_str(),
                    sender = &*self.from,
                    "not stored: {e}"
                );
                return Ack::failed(self.tally.ack.id, code, e.to_string());
            }
            self.tally.ack.persist_id = Some(pid);
            self.ticket = None;
            self.hand_over();
        }
        if !self.remote.is_empty() {
            let remote = std::mem::take(&mut self.remote);
            for (id, reached) in shared.space.forward(remote, self.wire.clone()).await {
                match reached {
                    Reached::Delivered => self.tally.ack.delivered += 1,
                    Reached::Congested => self.tally.fail(
                        AckCode::Congested,
                        format!("the outbound queue of server '{id}' is full"),
                    ),
                    Reached::NotFound if self.named => self.absent.push(id.to_string()),
                    Reached::NotFound => {}
                    Reached::Unreachable(why) => self.tally.fail(AckCode::Unreachable, why),
                }
            }
        }
        if self.settle(shared) {
            let absent = std::mem::take(&mut self.absent);
            queue_copies(
                shared,
                &mut self.tally,
                absent,
                &self.from,
                self.expires_ms,
                &self.wire,
            )
            .await;
        }
        self.conclude()
    }

    /// Hands the event to each recipient connected here.
    fn hand_over(&mut self) {
        for peer in std::mem::take(&mut self.peers) {
            if !self.tally.push(&peer, &self.wire) && self.named {
                self.absent.push(peer.server_id.to_string());
            }
        }
    }

    /// Whether copies may have to be queued for named recipients that did
    /// not get the event live (a send with a ttl): that waits for the
    /// store.
    fn may_queue(&self) -> bool {
        !self.persistent && self.expires_ms.is_some() && !self.absent.is_empty()
    }

    /// Settles the named recipients that did not get the event live, once
    /// every router had its say. True when copies must be queued for them.
    fn settle(&mut self, shared: &Shared) -> bool {
        if !shared.space.reachable() {
            // Other routers' servers are out of reach: a named one that is
            // not here may be there, and a broadcast reached this router's
            // alone.
            if self.named && !self.absent.is_empty() {
                for id in self.absent.drain(..) {
                    self.tally.fail(
                        AckCode::Unreachable,
                        format!(
                            "server '{id}' is not connected here, and this router has lost the cluster"
                        ),
                    );
                }
            } else if !self.named {
                self.tally.fail(
                    AckCode::Unreachable,
                    "this router has lost the cluster: delivered to its own servers only".into(),
                );
            }
        }
        if self.persistent {
            // They get it from the store when they connect.
            self.tally.ack.queued = self.absent.len() as u32;
        } else if self.may_queue() {
            return true;
        } else {
            for id in &self.absent {
                self.tally
                    .fail(AckCode::NotFound, format!("server '{id}' is not connected"));
            }
        }
        false
    }

    fn conclude(self) -> Ack {
        if let Some(e) = &self.tally.ack.error {
            debug!(id = self.tally.ack.id, code = %e.code, "{}", e.message);
        }
        self.tally.ack
    }
}

/// Stores a copy of `wire` for each of `ids` (offline named recipients of a
/// send with a ttl), counting them into the ack.
async fn queue_copies(
    shared: &Shared,
    tally: &mut Tally,
    ids: Vec<String>,
    from: &str,
    expires_ms: Option<u64>,
    wire: &Bytes,
) {
    let verdicts = shared
        .keep
        .enqueue(ids, from.to_owned(), expires_ms, wire.clone())
        .await;
    match verdicts {
        Ok(v) => {
            for verdict in v {
                match verdict {
                    Ok(()) => tally.ack.queued += 1,
                    Err(e) => tally.fail(store_code(&e), e.to_string()),
                }
            }
        }
        Err(e) => {
            let code = store_code(&e);
            warn!(code = code.as_str(), sender = from, "not queued: {e}");
            tally.fail(code, e.to_string());
        }
    }
}

/// Answers a `forget`.
pub(crate) async fn forget(shared: &Shared, from: &str, id: u64, persist_id: String) -> Ack {
    let config = shared.config();
    if !config.policy.may_persist(from, &config.groups) {
        warn!(code = "forbidden", sender = from, persist_id = %persist_id, "forget refused by policy");
        return Ack::failed(
            id,
            AckCode::Forbidden,
            format!("the policy does not let '{from}' persist or forget"),
        );
    }
    match shared.keep.forget(persist_id.clone()).await {
        Ok(true) => Ack {
            persist_id: Some(persist_id),
            ..Ack::delivered(id, 0)
        },
        Ok(false) => Ack::failed(
            id,
            AckCode::NotFound,
            format!("no persistent event '{persist_id}'"),
        ),
        Err(e) => Ack::failed(id, store_code(&e), e.to_string()),
    }
}

/// The ack code of a store that failed: `unreachable` when a cluster's
/// shared store did not answer, else `congested`.
fn store_code(e: &StoreError) -> AckCode {
    match e {
        StoreError::Unavailable(_) => AckCode::Unreachable,
        _ => AckCode::Congested,
    }
}

/// Counts deliveries into an ack, keeping the first failure.
pub(crate) struct Tally {
    pub(crate) ack: Ack,
}

impl Tally {
    pub(crate) fn new(id: u64) -> Tally {
        Tally {
            ack: Ack::delivered(id, 0),
        }
    }

    /// Hands `wire` to `peer`'s outbound queue. Returns false when the peer
    /// is gone (it left after the send was resolved): what that means for
    /// the ack depends on the send, so the caller decides.
    pub(crate) fn push(&mut self, peer: &Peer, wire: &Bytes) -> bool {
        match peer.outbound.push(wire.clone()) {
            Ok(()) => self.ack.delivered += 1,
            Err(PushError::Full) => self.fail(
                AckCode::Congested,
                format!("the outbound queue of server '{}' is full", peer.server_id),
            ),
            Err(PushError::Closed) => return false,
        }
        true
    }

    pub(crate) fn fail(&mut self, code: AckCode, message: String) {
        self.ack.ok = false;
        if self.ack.error.is_none() {
            self.ack.error = Some(AckError { code, message });
        }
    }
}

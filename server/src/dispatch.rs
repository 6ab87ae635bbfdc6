//! Routing one send, start to ack: validation, target resolution, the
//! policy, the store (persistent events and copies for offline servers,
//! written before the ack), and the hand-off to each recipient's queue.

use bytes::Bytes;
use icom_protocol::{Ack, AckCode, Deliver, Persist, Send, Target};
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::keep::Persistent;
use crate::policy::{Request, Verdict};
use crate::router::Tally;
use crate::shared::Shared;
use crate::space::Reached;
use crate::store::StoreError;

/// Routes one decoded send from `from` and returns its ack.
pub(crate) async fn dispatch(shared: &Shared, from: &str, send: Send) -> Ack {
    let config = shared.config();
    if let Err(e) = send.validate(&config.groups) {
        return Ack::failed(send.id, AckCode::Invalid, e.to_string());
    }
    let resolved = match shared.table.resolve(from, &send.to, &config.groups) {
        Ok(r) => r,
        Err(e) => return Ack::failed(send.id, AckCode::Invalid, e.to_string()),
    };
    {
        let recipients: Vec<&str> = resolved
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
            .collect();
        let request = Request {
            sender: from,
            event: &send.event,
            recipients: &recipients,
            persist: send.persist.is_some(),
        };
        if let Verdict::Deny(why) = config.policy.check(&request, &config.groups) {
            warn!(
                code = "forbidden",
                sender = from,
                event = %send.event,
                target = ?send.to,
                "refused by policy: {why}"
            );
            return Ack::failed(send.id, AckCode::Forbidden, why);
        }
    }
    let sent_ms = now_ms();
    let persist_id = match &send.persist {
        None => None,
        Some(Persist::Id(id)) => Some(id.clone()),
        Some(Persist::Auto) => Some(uuid::Uuid::new_v4().simple().to_string()),
    };
    let expires_ms = send.ttl_ms.map(|t| sent_ms + u64::from(t));
    let wire = Bytes::from(
        Deliver {
            from: from.to_owned(),
            id: send.id,
            event: send.event,
            data: send.data,
            persist_id: persist_id.clone(),
            reply_to: send.reply_to,
            sent_ms,
        }
        .encode(),
    );
    // Named servers (`server`, `servers`) are owed the event even when they
    // are offline: a persistent send is stored for them, a send with a ttl
    // queues a copy for each, and any other send is `not_found` for them.
    // The broad targets reach whoever is connected.
    let named = matches!(send.to, Target::Server(_) | Target::Servers(_));
    let persistent = persist_id.is_some();
    let mut tally = Tally::new(send.id);
    if let Some(pid) = persist_id {
        // Stored before any live delivery: a server that connects meanwhile
        // finds it in its replay.
        let stored = shared
            .keep
            .persist(Persistent {
                persist_id: pid.clone(),
                target: send.to.clone(),
                from: from.to_owned(),
                expires_ms,
                wire: wire.clone(),
            })
            .await;
        if let Err(e) = stored {
            let code = store_code(&e);
            warn!(code = code.as_str(), sender = from, "not stored: {e}");
            return Ack::failed(send.id, code, e.to_string());
        }
        tally.ack.persist_id = Some(pid);
    }
    let mut absent = resolved.offline;
    for peer in &resolved.peers {
        if !tally.push(peer, &wire) && named {
            absent.push(peer.server_id.to_string());
        }
    }
    if !resolved.remote.is_empty() {
        for (id, reached) in shared.space.forward(resolved.remote, wire.clone()).await {
            match reached {
                Reached::Delivered => tally.ack.delivered += 1,
                Reached::Congested => tally.fail(
                    AckCode::Congested,
                    format!("the outbound queue of server '{id}' is full"),
                ),
                Reached::NotFound if named => absent.push(id.to_string()),
                Reached::NotFound => {}
                Reached::Unreachable(why) => tally.fail(AckCode::Unreachable, why),
            }
        }
    }
    if !shared.space.reachable() {
        // Other routers' servers are out of reach: a named one that is not
        // here may be there, and a broadcast reached this router's alone.
        if named && !absent.is_empty() {
            for id in absent.drain(..) {
                tally.fail(
                    AckCode::Unreachable,
                    format!(
                        "server '{id}' is not connected here, and this router has lost the cluster"
                    ),
                );
            }
        } else if !named {
            tally.fail(
                AckCode::Unreachable,
                "this router has lost the cluster: delivered to its own servers only".into(),
            );
        }
    }
    if persistent {
        // They get it from the store when they connect.
        tally.ack.queued = absent.len() as u32;
    } else if expires_ms.is_some() && !absent.is_empty() {
        queue_copies(shared, &mut tally, absent, from, expires_ms, &wire).await;
    } else {
        for id in &absent {
            tally.fail(AckCode::NotFound, format!("server '{id}' is not connected"));
        }
    }
    if let Some(e) = &tally.ack.error {
        debug!(id = send.id, code = %e.code, "{}", e.message);
    }
    tally.ack
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
            id,
            ok: true,
            delivered: 0,
            queued: 0,
            persist_id: Some(persist_id),
            error: None,
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

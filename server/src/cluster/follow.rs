//! Following the cluster's store: this router reads the stream from its
//! start into a fresh [`Mirror`], puts it in place once it has read past
//! a barrier written just before, and from then on applies each new
//! message as it comes. After NATS comes back it reads the stream again
//! (a deletion it missed meanwhile may have expired from the stream).
//!
//! A record that arrives for a server connected here, after its replay,
//! is one that a router which did not know the server was here yet could
//! not deliver: a queued copy goes to it at once (and is deleted once
//! acknowledged), a persistent event goes to a server that connected in
//! the last [`RECENT`](super::vault::RECENT), or whose replay was taken
//! while this router's view could not catch up, until the view is whole
//! again. The client drops what it already had.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use bytes::Bytes;
use futures_util::StreamExt;
use icom_protocol::lock;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::mirror::{Applied, Mirror};
use super::vault::Vault;
use super::Every;
use crate::connection::{write_event, Written};
use crate::store::{Kind, Stored};

/// Consecutive consumer errors after which the stream is read anew.
const MAX_ERRORS: u32 = 10;

/// A mirror this long behind a barrier written has lost the stream (its
/// consumer went with a NATS node): it reads the stream again.
const STALL: Duration = Duration::from_secs(2);

/// With nothing read for this long, the follower writes a barrier of its
/// own, to find out whether it still follows the stream.
const PROBE: Duration = Duration::from_secs(5);

/// Follows the store until `shutdown`.
pub(super) async fn run(vault: Arc<Vault>, shutdown: CancellationToken) {
    let (mut said, mut again) = (Every::default(), Every::default());
    loop {
        let wait = if !vault.up.load(Ordering::Acquire) {
            Duration::from_millis(100)
        } else if !vault.ready.load(Ordering::Acquire) {
            match vault.prepare().await {
                Ok(()) => {
                    info!(stream = %vault.stream, "cluster: the shared store is ready");
                    continue;
                }
                Err(e) => {
                    if said.ready() {
                        error!("{e} (retrying; said once a minute)");
                    }
                    Duration::from_secs(2)
                }
            }
        } else {
            let generation = vault.connects.load(Ordering::Acquire);
            match follow(&vault, generation, &shutdown).await {
                Ok(()) => return,
                Err(why) => {
                    if again.ready() {
                        warn!(
                            "cluster: {why}; reading the shared store again (said once a minute)"
                        );
                    } else {
                        debug!("cluster: {why}; reading the shared store again");
                    }
                    Duration::from_millis(500)
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Reads the stream into a fresh mirror, then follows it; `Ok` at
/// shutdown, `Err` when it must start over.
async fn follow(
    vault: &Arc<Vault>,
    generation: u64,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let barrier = vault.barrier().await.map_err(|e| e.to_string())?;
    let stream = vault.js.get_stream(&vault.stream).await.map_err(|e| {
        // Deleted under the routers' feet: made again before it is read.
        vault.ready.store(false, Ordering::Release);
        format!("the stream {}: {e}", vault.stream)
    })?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}.>", vault.root),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("a consumer of {}: {e}", vault.stream))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading {}: {e}", vault.stream))?;
    let mut fresh = Some(Mirror::default());
    // The message ids read into the fresh mirror: writes of this router's
    // still on their way are in it.
    let mut read_ids: Vec<String> = Vec::new();
    let mut errors = 0;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let mut bad = Every::default();
    let mut last_read = Instant::now();
    let mut behind_since: Option<Instant> = None;
    let mut probe: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            m = messages.next() => {
                let msg = match m {
                    None => return Err("the stream's consumer ended".into()),
                    Some(Err(e)) => {
                        errors += 1;
                        if errors >= MAX_ERRORS {
                            return Err(format!("the stream's consumer keeps failing: {e}"));
                        }
                        debug!("cluster: the store's consumer: {e}");
                        continue;
                    }
                    Some(Ok(m)) => m,
                };
                errors = 0;
                last_read = Instant::now();
                let Ok(seq) = msg.info().map(|i| i.stream_sequence) else { continue };
                let tail = msg
                    .subject
                    .strip_prefix(vault.root.as_str())
                    .and_then(|t| t.strip_prefix('.'))
                    .unwrap_or_default();
                let id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(NATS_MESSAGE_ID))
                    .map(|v| v.as_str());
                let outcome = match fresh.as_mut() {
                    Some(f) => {
                        let r = f.apply(seq, tail, &msg.payload).map(|_| ());
                        read_ids.extend(id.map(str::to_owned));
                        if seq >= barrier {
                            if let Some(f) = fresh.take() {
                                put_in_place(vault, f, &std::mem::take(&mut read_ids));
                            }
                        }
                        r
                    }
                    None => apply(vault, seq, tail, id, &msg.payload),
                };
                if let Err(e) = outcome {
                    if bad.ready() {
                        warn!(seq, subject = %msg.subject, "cluster: a record in the store does not decode, skipped (said once a minute): {e}");
                    }
                }
            }
            _ = check.tick() => {
                if vault.connects.load(Ordering::Acquire) != generation {
                    return Err("NATS reconnected".into());
                }
                // A long stream takes long to read; one that stops coming
                // before the barrier is lost.
                if fresh.is_some() && last_read.elapsed() >= 5 * STALL {
                    return Err("reading the stream from its start stopped before its barrier".into());
                }
                let applied = *vault.applied.borrow();
                if fresh.is_none() && vault.wanted.load(Ordering::Acquire) > applied {
                    let since = *behind_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= STALL {
                        return Err(format!("this router's copy of the store stopped at {applied}"));
                    }
                } else {
                    behind_since = None;
                }
                if last_read.elapsed() >= PROBE && probe.as_ref().is_none_or(|p| p.is_finished()) {
                    last_read = Instant::now();
                    let v = vault.clone();
                    probe = Some(tokio::spawn(async move {
                        let _ = v.barrier().await;
                    }));
                }
            }
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Puts a mirror read from the stream's start in place; what it holds
/// that the old one did not reach is new to this router.
fn put_in_place(vault: &Arc<Vault>, fresh: Mirror, read_ids: &[String]) {
    let (news, applied) = {
        let mut st = lock(&vault.state);
        let before = st.mirror.applied();
        st.mirror = fresh;
        let applied = st.mirror.applied();
        st.booked.reached(applied);
        for id in read_ids {
            st.booked.read(id);
        }
        (st.mirror.records_after(before), applied)
    };
    let (persistent, queued, bytes) = vault_counts(vault);
    debug!(
        applied,
        persistent, queued, bytes, "cluster: the store's mirror is in place"
    );
    vault.applied.send_replace(applied);
    for (seq, record) in news {
        deliver(vault, seq, &record);
    }
    // The view is whole again: a stale replay has had what it missed, and
    // is followed as one that just joined.
    for j in lock(&vault.state).joiners.values_mut().filter(|j| j.stale) {
        j.stale = false;
        j.at = Instant::now();
    }
}

fn vault_counts(vault: &Vault) -> (usize, usize, usize) {
    lock(&vault.state).mirror.counts()
}

/// Applies one new message to the mirror in place.
fn apply(
    vault: &Arc<Vault>,
    seq: u64,
    tail: &str,
    id: Option<&str>,
    body: &Bytes,
) -> Result<(), String> {
    let (applied, record) = {
        let mut st = lock(&vault.state);
        let applied = st.mirror.apply(seq, tail, body);
        st.booked.reached(seq);
        if let Some(id) = id {
            st.booked.read(id);
        }
        let record = st.mirror.get(seq).cloned();
        (applied, record)
    };
    vault.applied.send_replace(seq);
    match (applied?, record) {
        (Applied::Nothing, _) | (_, None) => {}
        (_, Some(record)) => deliver(vault, seq, &record),
    }
    Ok(())
}

/// Delivers the new record `seq` to the servers connected here that it
/// is for and that their replay did not cover.
fn deliver(vault: &Arc<Vault>, seq: u64, record: &Stored) {
    match &record.header.kind {
        Kind::Queued { recipient } => {
            let Some(peer) = vault.table.local(recipient) else {
                return;
            };
            {
                let st = lock(&vault.state);
                if let Some(j) = st.joiners.get(recipient.as_str()) {
                    // Its replay has it, or will.
                    if j.session == peer.session && j.replay_seq >= seq {
                        return;
                    }
                }
            }
            let (vault, wire) = (vault.clone(), record.wire.clone());
            tokio::spawn(async move {
                let Some(Written::Whole(stream)) = write_event(&peer.conn, wire).await else {
                    return;
                };
                if let Ok(None) = stream.stopped().await {
                    use crate::keep::Keep as _;
                    if let Err(e) = vault.delivered(seq).await {
                        warn!("could not delete a delivered queued event: {e}");
                    }
                }
            });
        }
        Kind::Persistent { .. } => {
            let sessions: Vec<(Arc<str>, u64)> = {
                let st = lock(&vault.state);
                st.joiners
                    .iter()
                    .filter(|(id, j)| {
                        j.replay_seq < seq && j.follows() && record.is_for(id, &j.config.groups)
                    })
                    .map(|(id, j)| (id.clone(), j.session))
                    .collect()
            };
            for (id, session) in sessions {
                if let Some(peer) = vault.table.local(&id).filter(|p| p.session == session) {
                    let _ = peer.outbound.push(record.wire.clone());
                }
            }
        }
    }
}

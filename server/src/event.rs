//! Event streams from a client: each read (at once when it is whole, as
//! nearly all are), decoded, routed, and acked on the control stream; the
//! streams a connection has ready at once are taken as one burst, their
//! acks written together.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use icom_protocol::{append_frame, Ack, AckCode, Control, EventBody, Send, SendRef, StreamCode};
use quinn::RecvStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::Notify;
use tracing::{warn, Instrument};

use crate::clock::now_ms;
use crate::config::Config;
use crate::connection::{read_event, read_event_now, EventRead};
use crate::dispatch::{route, Rest, Routed};
use crate::router::{frame, Peer};
use crate::shared::Shared;

/// A peer's event streams taken but not answered yet (their ack not
/// queued for the control stream): counted for the stream credit, and
/// bounded. QUIC's stream limit counts a stream only until it is read to
/// its end; one whose ack waits (a client that does not read its control
/// stream, a store that is slow) is counted here, and at the bound the
/// router takes no more streams from the peer until some are answered,
/// so the waiting work stays bounded. Beside them it counts the bytes of
/// the streams still being read (begun, not ended), which the router
/// holds in memory; the stream whose read would pass their bound is
/// refused ([`EventRead::Refused`]), so that a client cannot make the
/// router hold `max_streams` events of `max_event_bytes` at once.
#[derive(Debug)]
pub(crate) struct Unanswered {
    count: AtomicU32,
    max: u32,
    room: Notify,
    partial: AtomicUsize,
    max_partial: usize,
}

impl Unanswered {
    /// At most `max` streams unanswered at once, and `max_partial` bytes of
    /// those being read.
    pub(crate) fn new(max: u32, max_partial: usize) -> Arc<Unanswered> {
        Arc::new(Unanswered {
            count: AtomicU32::new(0),
            max: max.max(1),
            room: Notify::new(),
            partial: AtomicUsize::new(0),
            max_partial,
        })
    }

    /// How many are unanswered now.
    pub(crate) fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether another stream may be taken now.
    pub(crate) fn has_room(&self) -> bool {
        self.count() < self.max
    }

    /// Waits until another stream may be taken.
    pub(crate) async fn room(&self) {
        loop {
            let freed = self.room.notified();
            if self.has_room() {
                return;
            }
            freed.await;
        }
    }

    /// Counts one more stream until the returned guard is dropped.
    pub(crate) fn hold(self: &Arc<Unanswered>) -> Held {
        self.count.fetch_add(1, Ordering::Relaxed);
        Held {
            of: self.clone(),
            n: 1,
        }
    }
}

/// Bytes of one stream being read, counted in [`Unanswered`] while this
/// lives.
struct Partial {
    of: Arc<Unanswered>,
    n: usize,
}

impl Partial {
    fn new(of: &Arc<Unanswered>) -> Partial {
        Partial {
            of: of.clone(),
            n: 0,
        }
    }

    /// Counts `n` more bytes, unless they would pass the bound.
    fn admit(&mut self, n: usize) -> bool {
        let max = self.of.max_partial;
        let counted = self
            .of
            .partial
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(n).filter(|&after| after <= max)
            });
        if counted.is_err() {
            return false;
        }
        self.n += n;
        true
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.of.partial.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// Streams counted in [`Unanswered`] while this lives.
#[derive(Debug)]
pub(crate) struct Held {
    of: Arc<Unanswered>,
    n: u32,
}

impl Held {
    /// Takes over the streams `other` holds.
    fn join(&mut self, mut other: Held) {
        self.n += std::mem::take(&mut other.n);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.n == 0 {
            return;
        }
        let before = self.of.count.fetch_sub(self.n, Ordering::Relaxed);
        if before >= self.of.max && before - self.n < self.of.max {
            self.of.room.notify_one();
        }
    }
}

/// The acks of a burst of event streams gathered into one write: this
/// many bytes at most, so that one entry of the control queue stays small.
const ACK_BATCH: usize = 1024;

/// A burst's ack buffer to begin with: a dozen acks or so.
const ACK_ROOM: usize = 256;

/// The sends of one burst that wait (for the store, or other routers) at
/// most: past it the burst ends.
const WAITING_BATCH: usize = 256;

/// The event streams one connection has ready at once, taken one after
/// the other: each is read, routed and answered at once when it is whole
/// and routes without waiting, as nearly all do. The acks of those
/// answered at once are queued together by [`Burst::answer`], and the
/// events share one clock reading (`sent_ms`). The sends that wait (a
/// persistent send for its commit, say) finish together in one task per
/// burst, their acks queued together as they come ([`finish_waiting`]); a
/// stream not whole when taken is read in a task of its own, so that one
/// slow stream never holds up the others.
pub(crate) struct Burst<'a> {
    shared: &'a Arc<Shared>,
    peer: &'a Arc<Peer>,
    config: Arc<Config>,
    sent_ms: u64,
    acks: Vec<u8>,
    /// The streams whose acks are in `acks`.
    held: Option<Held>,
    ok: u64,
    delivered: u64,
    /// The sends that wait, each with its stream.
    waiting: Vec<(Box<Rest>, Held)>,
}

impl<'a> Burst<'a> {
    pub(crate) fn new(shared: &'a Arc<Shared>, peer: &'a Arc<Peer>) -> Burst<'a> {
        Burst {
            shared,
            peer,
            config: shared.config(),
            sent_ms: now_ms(),
            // Room for a typical burst's acks without growing.
            acks: Vec::with_capacity(ACK_ROOM),
            held: None,
            ok: 0,
            delivered: 0,
            waiting: Vec::new(),
        }
    }

    /// Whether the burst should end here and its acks go out.
    pub(crate) fn is_full(&self) -> bool {
        self.acks.len() >= ACK_BATCH || self.waiting.len() >= WAITING_BATCH
    }

    /// Reads, routes and acks one event stream, `held` until answered.
    pub(crate) fn take(&mut self, mut recv: RecvStream, held: Held) {
        let (shared, peer, config) = (self.shared, self.peer, &self.config);
        let mut body = EventBody::new(config.limits.max_event_bytes);
        if let Poll::Ready(read) = read_event_now(&mut recv, &mut body) {
            match on_event(shared, peer, config, &mut recv, read, self.sent_ms) {
                Step::Answer(ack) => self.add(ack, held),
                Step::Wait(rest) => self.waiting.push((rest, held)),
                Step::Gone => {}
            }
            return;
        }
        let (shared, peer, config) = (shared.clone(), peer.clone(), config.clone());
        let mut partial = Partial::new(&held.of);
        tokio::spawn(
            async move {
                let read = if partial.admit(body.len()) {
                    read_event(&mut recv, body, |n| partial.admit(n)).await
                } else {
                    EventRead::Refused(body.into_prefix())
                };
                drop(partial);
                let ack = match on_event(&shared, &peer, &config, &mut recv, read, now_ms()) {
                    Step::Answer(ack) => ack,
                    Step::Wait(rest) => rest.finish(&shared).await,
                    Step::Gone => return,
                };
                answer_later(&shared, &peer, ack).await;
                drop(held);
            }
            .in_current_span(),
        );
    }

    /// Adds an ack to the burst's.
    fn add(&mut self, ack: Ack, held: Held) {
        match &ack.error {
            None => self.ok += 1,
            Some(e) => self.shared.metrics.event_error(e.code.as_str()),
        }
        self.delivered += u64::from(ack.delivered);
        append_frame(&mut self.acks, &Control::Ack(ack));
        match &mut self.held {
            Some(h) => h.join(held),
            None => self.held = Some(held),
        }
    }

    /// Queues the burst's acks for the control stream without waiting;
    /// when the queue is full, a task waits for room, and the streams stay
    /// unanswered meanwhile. The sends that wait finish in a task.
    pub(crate) fn answer(mut self) {
        if !self.waiting.is_empty() {
            let (shared, peer) = (self.shared.clone(), self.peer.clone());
            let waiting = std::mem::take(&mut self.waiting);
            tokio::spawn(finish_waiting(shared, peer, waiting).in_current_span());
        }
        let Some(held) = self.held else {
            return;
        };
        let metrics = &self.shared.metrics;
        metrics.events.inc_by(self.ok);
        metrics.deliveries.inc_by(self.delivered);
        // A buffer of its exact size becomes `Bytes` without a second
        // allocation; shrinking it mostly stays in place (the allocator
        // keeps a block that stays at least half used).
        let acks = Bytes::from(self.acks.into_boxed_slice());
        match self.peer.control.try_send(acks) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(acks)) => {
                let peer = self.peer.clone();
                tokio::spawn(
                    async move {
                        let _ = peer.control.send(acks).await;
                        drop(held);
                    }
                    .in_current_span(),
                );
            }
        }
    }
}

/// What became of one event stream, once read.
enum Step {
    /// Its ack.
    Answer(Ack),
    /// Routed as far as it goes without waiting.
    Wait(Box<Rest>),
    /// The connection ended: nobody to answer.
    Gone,
}

/// Decodes and routes one event stream as read; a stream over the limit
/// is stopped.
fn on_event(
    shared: &Shared,
    peer: &Peer,
    config: &Config,
    recv: &mut RecvStream,
    read: EventRead,
    sent_ms: u64,
) -> Step {
    let max = config.limits.max_event_bytes;
    match read {
        EventRead::Event(bytes) => match SendRef::decode(&bytes) {
            Ok(send) => match route(shared, config, &peer.server_id, send, sent_ms) {
                Routed::Done(ack) => Step::Answer(ack),
                Routed::Wait(rest) => Step::Wait(rest),
            },
            Err(e) => {
                warn!(code = "malformed", id = ?e.id, "bad event stream: {e}");
                Step::Answer(Ack::failed(
                    e.id.unwrap_or(0),
                    AckCode::Malformed,
                    e.to_string(),
                ))
            }
        },
        EventRead::TooLarge(prefix) => {
            let _ = recv.stop(StreamCode::TooLarge.code().into());
            let id = Send::peek_id(&prefix);
            warn!(code = "too_large", id = ?id, "event stream over {max} bytes");
            Step::Answer(Ack::failed(
                id.unwrap_or(0),
                AckCode::TooLarge,
                format!("the event exceeds max_event_bytes ({max})"),
            ))
        }
        EventRead::Refused(prefix) => {
            let _ = recv.stop(StreamCode::Congested.code().into());
            let id = Send::peek_id(&prefix);
            let bound = config.limits.partial_bytes;
            warn!(code = "congested", id = ?id, "unfinished event streams over {bound} bytes");
            Step::Answer(Ack::failed(
                id.unwrap_or(0),
                AckCode::Congested,
                format!(
                    "the router holds {bound} bytes of this client's unfinished event streams at most (limits.partial_bytes)"
                ),
            ))
        }
        EventRead::Failed(prefix, e) => {
            if peer.conn.close_reason().is_some() {
                return Step::Gone;
            }
            let id = Send::peek_id(&prefix);
            Step::Answer(Ack::failed(
                id.unwrap_or(0),
                AckCode::Malformed,
                format!("the event stream failed: {e}"),
            ))
        }
    }
}

/// Finishes a burst's sends that wait, all at once, and queues their acks
/// for the control stream as they come: those that finished together in
/// one write of about [`ACK_BATCH`] bytes. The sends go on while a write
/// waits for room in the control queue (a client that reads its acks
/// late), so that each is stored, delivered and done with (its store
/// ticket given back, [`crate::keep::Storing`]) whatever the sender does.
async fn finish_waiting(shared: Arc<Shared>, peer: Arc<Peer>, waiting: Vec<(Box<Rest>, Held)>) {
    let shared = &shared;
    let mut pending: FuturesUnordered<_> = waiting
        .into_iter()
        .map(|(rest, held)| async move { (rest.finish(shared).await, held) })
        .collect();
    // Finished, their acks not queued yet.
    let mut done = VecDeque::new();
    loop {
        if done.is_empty() {
            match pending.next().await {
                Some(finished) => done.push_back(finished),
                None => return,
            }
        }
        while let Some(Some(finished)) = pending.next().now_or_never() {
            done.push_back(finished);
        }
        let mut acks = Vec::with_capacity(ACK_ROOM);
        let mut answered = Vec::new();
        while acks.len() < ACK_BATCH {
            let Some((ack, held)) = done.pop_front() else {
                break;
            };
            count(shared, &ack);
            append_frame(&mut acks, &Control::Ack(ack));
            answered.push(held);
        }
        let send = peer.control.send(Bytes::from(acks.into_boxed_slice()));
        tokio::pin!(send);
        loop {
            tokio::select! {
                biased;
                _ = &mut send => break,
                Some(finished) = pending.next(), if !pending.is_empty() => done.push_back(finished),
            }
        }
        drop(answered);
    }
}

/// Counts an ack into the metrics.
fn count(shared: &Shared, ack: &Ack) {
    match &ack.error {
        None => {
            shared.metrics.events.inc();
        }
        Some(e) => shared.metrics.event_error(e.code.as_str()),
    }
    shared.metrics.deliveries.inc_by(u64::from(ack.delivered));
}

/// Queues one ack for the control stream, waiting for room.
async fn answer_later(shared: &Shared, peer: &Peer, ack: Ack) {
    count(shared, &ack);
    let _ = peer.control.send(frame(&Control::Ack(ack))).await;
}

//! One event stream from a client: read (at once when it is whole, as
//! nearly all are), decoded, routed, and acked on the control stream.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use icom_protocol::{Ack, AckCode, Control, EventBody, Send, StreamCode};
use quinn::RecvStream;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{warn, Instrument};

use crate::config::Config;
use crate::connection::{read_event, read_event_now, EventRead};
use crate::dispatch::{route, Rest, Routed};
use crate::router::{frame, Peer};
use crate::shared::Shared;

/// A peer's event stream that is not done yet: counted while it lives,
/// for the stream credit.
pub(crate) struct OpenStream(Arc<AtomicU32>);

impl OpenStream {
    pub(crate) fn new(open: &Arc<AtomicU32>) -> OpenStream {
        open.fetch_add(1, Ordering::Relaxed);
        OpenStream(open.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads, routes and acks one event stream: at once when it is whole and
/// routes without waiting, as nearly all do; else in a task of its own, so
/// that one slow stream never holds up the others.
pub(crate) fn take_event_stream(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    mut recv: RecvStream,
    open: OpenStream,
) {
    let config = shared.config();
    let mut body = EventBody::new(config.limits.max_event_bytes);
    if let Poll::Ready(read) = read_event_now(&mut recv, &mut body) {
        match on_event(shared, peer, &config, &mut recv, read) {
            Step::Answer(ack) => answer(shared, peer, ack, open),
            Step::Wait(rest) => {
                let (shared, peer) = (shared.clone(), peer.clone());
                tokio::spawn(
                    async move {
                        let ack = rest.finish(&shared).await;
                        answer_later(&shared, &peer, ack).await;
                        drop(open);
                    }
                    .in_current_span(),
                );
            }
            Step::Gone => {}
        }
        return;
    }
    let (shared, peer) = (shared.clone(), peer.clone());
    tokio::spawn(
        async move {
            let read = read_event(&mut recv, body).await;
            let ack = match on_event(&shared, &peer, &config, &mut recv, read) {
                Step::Answer(ack) => ack,
                Step::Wait(rest) => rest.finish(&shared).await,
                Step::Gone => return,
            };
            answer_later(&shared, &peer, ack).await;
            drop(open);
        }
        .in_current_span(),
    );
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
) -> Step {
    let max = config.limits.max_event_bytes;
    match read {
        EventRead::Event(bytes) => match Send::decode(&bytes) {
            Ok(send) => match route(shared, config, &peer.server_id, send) {
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

/// Counts an event's ack into the metrics and frames it.
fn ack_frame(shared: &Shared, ack: Ack) -> Bytes {
    match &ack.error {
        None => {
            shared.metrics.events.inc();
        }
        Some(e) => shared.metrics.event_error(e.code.as_str()),
    }
    shared.metrics.deliveries.inc_by(u64::from(ack.delivered));
    frame(&Control::Ack(ack))
}

/// Queues an ack for the control stream without waiting; when the queue
/// is full, a task waits for room (the stream stays counted meanwhile).
fn answer(shared: &Shared, peer: &Arc<Peer>, ack: Ack, open: OpenStream) {
    match peer.control.try_send(ack_frame(shared, ack)) {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(frame)) => {
            let peer = peer.clone();
            tokio::spawn(
                async move {
                    let _ = peer.control.send(frame).await;
                    drop(open);
                }
                .in_current_span(),
            );
        }
    }
}

/// Queues an ack for the control stream, waiting for room.
async fn answer_later(shared: &Shared, peer: &Peer, ack: Ack) {
    let _ = peer.control.send(ack_frame(shared, ack)).await;
}

//! Event streams, router → client: accept each `deliver`, hand replies to
//! their requests, drop redelivered duplicates, hold the replay back until
//! it is complete and in order, and pass the rest to the application.
//!
//! Most events arrive whole with their stream, so they are read in this
//! task; only a stream whose data is not all there yet is finished in a
//! task of its own, so that one slow stream never holds up the others.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use icom_protocol::{Deliver, EventBody, StreamCode, StreamCredit, DELIVER_OVERHEAD};
use quinn::{ReadError, RecvStream, VarInt};
use tokio::sync::{mpsc, oneshot};

use crate::answer::Reply;
use crate::config::ms;
use crate::connection::Live;
use crate::core::Core;
use crate::event::{Event, Replier};
use crate::replay::ReplayBuffer;

type Read = Result<Bytes, ReadFailure>;

/// Why a delivery stream was not read whole.
#[derive(Debug)]
enum ReadFailure {
    /// It is longer than the limit.
    TooLong,
    /// It broke off.
    Broken(ReadError),
}

/// Receives the deliveries of one connection until it ends.
pub(crate) async fn run(
    core: Arc<Core>,
    live: Arc<Live>,
    events: mpsc::Sender<Event>,
    mut replayed: oneshot::Receiver<u32>,
) {
    let limit = live.welcome.limits.max_event_bytes as usize + DELIVER_OVERHEAD;
    let deadline = tokio::time::sleep(ms(core.cfg.inbound.replay_wait_ms));
    tokio::pin!(deadline);
    let (slow_tx, mut slow_rx) = mpsc::channel::<Read>(256);
    let cfg = &core.cfg.inbound;
    let mut credit = StreamCredit::new(cfg.initial_streams, cfg.max_streams);
    let open = Arc::new(AtomicU32::new(0));
    let mut inbound = Inbound {
        replay: Some(ReplayBuffer::new(core.cfg.inbound.replay_buffer)),
        core,
        live,
        events,
    };
    loop {
        let waiting_for_count = inbound.replay.as_ref().is_some_and(|r| !r.has_count());
        tokio::select! {
            biased;
            count = &mut replayed, if waiting_for_count => {
                if let Some(r) = inbound.replay.as_mut() {
                    // Without a count (the control stream ended), the
                    // deadline ends the replay.
                    r.replayed(count.unwrap_or(u32::MAX));
                }
            }
            () = &mut deadline, if inbound.replay.is_some() => {
                if let Some(r) = &inbound.replay {
                    let (received, expected) = r.progress();
                    tracing::warn!(received, ?expected, "replay incomplete at its deadline");
                }
                inbound.end_replay().await;
            }
            Some(read) = slow_rx.recv() => inbound.handle(read).await,
            stream = inbound.live.conn.accept_uni() => match stream {
                Ok(stream) => {
                    let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
                    let conn = &inbound.live.conn;
                    if let Some(streams) = credit.accepted(now_open, Instant::now, || conn.rtt()) {
                        tracing::debug!(streams, "more stream credit for the router");
                        conn.set_max_concurrent_uni_streams(VarInt::from_u32(streams));
                    }
                    let mut read = read_event(stream, limit);
                    match poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                        Poll::Ready(read) => {
                            open.fetch_sub(1, Ordering::Relaxed);
                            inbound.handle(read).await;
                        }
                        Poll::Pending => {
                            let (tx, open) = (slow_tx.clone(), open.clone());
                            tokio::spawn(async move {
                                let read = read.await;
                                open.fetch_sub(1, Ordering::Relaxed);
                                let _ = tx.send(read).await;
                            });
                        }
                    }
                }
                Err(_) => break,
            },
        }
        if inbound.replay.as_ref().is_some_and(ReplayBuffer::ready) {
            inbound.end_replay().await;
        }
    }
    // The connection is gone: what was held back was received all the same.
    inbound.end_replay().await;
}

/// Reads one event stream, at most `limit` bytes.
fn read_event(mut stream: RecvStream, limit: usize) -> Pin<Box<dyn Future<Output = Read> + Send>> {
    Box::pin(async move {
        let read = read_all(&mut stream, limit).await;
        if matches!(read, Err(ReadFailure::TooLong)) {
            let _ = stream.stop(VarInt::from_u32(StreamCode::TooLarge.code()));
        }
        read
    })
}

/// Reads a stream to its end, in order. The usual delivery, one chunk, is
/// kept as it came, without a copy, and read with its end under one lock of
/// the connection (a read that empties the stream sees that it ended).
/// (`RecvStream::read_to_end` reads out of order, which makes QUIC copy the
/// stream's data into a new buffer, then copies it again into a `Vec`.)
async fn read_all(stream: &mut RecvStream, limit: usize) -> Read {
    let mut body = EventBody::new(limit);
    let mut chunks: [Bytes; EventBody::READ_CHUNKS] = Default::default();
    loop {
        match stream.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                if body.push_read(&mut chunks, n).is_err() {
                    return Err(ReadFailure::TooLong);
                }
            }
            Ok(None) => return Ok(body.finish()),
            Err(e) => return Err(ReadFailure::Broken(e)),
        }
    }
}

struct Inbound {
    core: Arc<Core>,
    live: Arc<Live>,
    events: mpsc::Sender<Event>,
    /// Deliveries held back while the replay runs; `None` once it is over.
    replay: Option<ReplayBuffer>,
}

impl Inbound {
    async fn handle(&mut self, read: Read) {
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(ReadFailure::TooLong) => {
                tracing::warn!("a delivery exceeded max_event_bytes; stopped reading it");
                return;
            }
            Err(ReadFailure::Broken(e)) => {
                tracing::debug!(error = %e, "a delivery stream broke off");
                return;
            }
        };
        let deliver = match Deliver::decode(&bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "the router sent a malformed deliver");
                return;
            }
        };
        let replier: Weak<dyn Replier> = Arc::downgrade(&self.core) as Weak<Core>;
        let event = self.accept(Event::new(deliver, replier));
        match self.replay.as_mut() {
            Some(replay) => replay.received(event),
            None => {
                if let Some(event) = event {
                    // A closed events stream (dropped by the application)
                    // discards what arrives.
                    let _ = self.events.send(event).await;
                }
            }
        }
    }

    /// Takes a delivery: a reply goes to its request, a duplicate is
    /// dropped; what is left goes on to the application.
    fn accept(&self, event: Event) -> Option<Event> {
        let event = match event.reply_to {
            Some(request) => match self.core.answer(request, Reply::Event(event)) {
                Ok(()) => return None,
                Err(Reply::Event(event)) => event,
                Err(Reply::PeerLeft) => return None,
            },
            None => event,
        };
        // Only persistent events, and what the router replays from its
        // stores, can come again; live ones are at most once.
        if event.persist_id.is_some() || self.replay.is_some() {
            let first = self.core.first_time(&event.from, event.id);
            if !first {
                tracing::debug!(from = %event.from, id = event.id, "dropped a redelivered event");
                return None;
            }
        }
        Some(event)
    }

    /// Hands the held deliveries on, in order; live ones follow.
    async fn end_replay(&mut self) {
        let Some(replay) = self.replay.take() else {
            return;
        };
        for event in replay.into_sorted() {
            let _ = self.events.send(event).await;
        }
    }
}

//! Frames and event streams over one QUIC connection, the router's side:
//! control frames read through [`FrameBuffer`] and written in batches,
//! event streams read whole (bounded) through [`EventBody`] and written one
//! stream per event; and the end of a connection: closed, or retired
//! (what waits for it written first). What the frames mean is the
//! handler's business.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use icom_protocol::{encode_frame, CloseCode, Control, EventBody, FrameBuffer};
use quinn::{ReadError, RecvStream, SendStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::{debug, Instrument};

use crate::router::{Peer, Table};

/// How much one read of the control stream asks for.
const CONTROL_READ: usize = 64 * 1024;

/// The client's half of the control stream, as messages.
#[derive(Debug)]
pub(crate) struct ControlReader {
    recv: RecvStream,
    frames: FrameBuffer,
}

/// Why [`ControlReader::next`] gave no message.
#[derive(Debug)]
pub(crate) enum ControlEnd {
    /// The client finished the stream between two frames.
    Finished,
    /// The client broke the framing or sent a message that does not decode.
    Protocol(String),
    /// The stream or the connection broke off.
    Broken(ReadError),
}

impl std::fmt::Display for ControlEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlEnd::Finished => f.write_str("the control stream finished"),
            ControlEnd::Protocol(e) => f.write_str(e),
            ControlEnd::Broken(e) => write!(f, "reading a control frame: {e}"),
        }
    }
}

impl ControlReader {
    pub(crate) fn new(recv: RecvStream) -> ControlReader {
        ControlReader {
            recv,
            frames: FrameBuffer::new(),
        }
    }

    /// The next message of a known name; unknown names are skipped.
    pub(crate) async fn next(&mut self) -> Result<Control, ControlEnd> {
        loop {
            match self.frames.next_message() {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(e) => return Err(ControlEnd::Protocol(format!("bad control frame: {e}"))),
            }
            match self.recv.read_chunk(CONTROL_READ, true).await {
                Ok(Some(chunk)) => self.frames.extend(&chunk.bytes),
                Ok(None) if self.frames.is_empty() => return Err(ControlEnd::Finished),
                Ok(None) => {
                    return Err(ControlEnd::Protocol(
                        "the control stream ended inside a frame".into(),
                    ))
                }
                Err(e) => return Err(ControlEnd::Broken(e)),
            }
        }
    }

    /// How many messages of unknown names were skipped so far.
    pub(crate) fn skipped(&self) -> u64 {
        self.frames.skipped()
    }
}

/// A control frame that holds `place` until it is gone: written and
/// acknowledged by the peer's QUIC stack (quinn keeps a written chunk until
/// then), or copied into a larger write, or dropped with the connection.
/// What counts places with it bounds how much of its kind waits for one
/// client, in the control queue and in QUIC's send buffer together.
pub(crate) fn counted_frame(msg: &Control, place: OwnedSemaphorePermit) -> Bytes {
    Bytes::from_owner(Counted {
        frame: encode_frame(msg),
        _place: place,
    })
}

/// The owner of a [`counted_frame`]'s bytes.
struct Counted {
    frame: Vec<u8>,
    _place: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

/// Frames at least this long are written as they are, never copied: a
/// presence batch is one buffer shared by every connection.
const SHARED_FRAME: usize = 512;

/// Writes queued control frames, what is waiting at once in few chunks:
/// QUIC keeps each written chunk until the peer acks it and looks chunks
/// up one by one, so a long round trip with thousands of tiny chunks (an
/// ack each) in flight would cost time in proportion to their count. Small
/// frames are copied together into one chunk; large ones (a presence batch,
/// shared by every connection) go as they are, so that N connections do
/// not hold N copies. Nothing is kept between writes: a connection that
/// once got a large frame (a `welcome` listing a thousand peers) does not
/// keep a buffer of that size.
pub(crate) async fn write_control(mut send: SendStream, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::new();
    let mut chunks = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        if batch.len() == 1 {
            chunks.append(&mut batch);
        } else {
            let small_len = batch
                .iter()
                .filter(|f| f.len() < SHARED_FRAME)
                .map(Bytes::len)
                .sum();
            let mut small = BytesMut::with_capacity(small_len);
            for frame in batch.drain(..) {
                if frame.len() >= SHARED_FRAME {
                    if !small.is_empty() {
                        chunks.push(small.split().freeze());
                    }
                    chunks.push(frame);
                } else {
                    small.extend_from_slice(&frame);
                }
            }
            if !small.is_empty() {
                chunks.push(small.freeze());
            }
        }
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
        chunks.clear();
        if batch.capacity() > 64 {
            batch = Vec::new();
            chunks = Vec::new();
        }
    }
    let _ = send.finish();
}

/// One event stream, as read.
#[derive(Debug)]
pub(crate) enum EventRead {
    /// The whole stream.
    Event(Bytes),
    /// More than the limit came; the bytes read so far.
    TooLarge(Vec<u8>),
    /// The stream broke off; the bytes read before.
    Failed(Vec<u8>, ReadError),
    /// A read would have passed the bytes the router holds of the client's
    /// unfinished streams; the bytes read before.
    Refused(Vec<u8>),
}

/// Reads what `recv` holds of an event stream now, without waiting: the
/// stream's end when it came (most streams are whole when accepted), else
/// `Pending` with the bytes so far in `body`, for [`read_event`]. The
/// common case, an event in one chunk, is kept without a copy.
/// (`RecvStream::read_to_end` reads out of order, which makes QUIC copy the
/// data twice.)
pub(crate) fn read_event_now(recv: &mut RecvStream, body: &mut EventBody) -> Poll<EventRead> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut chunks: [Bytes; EventBody::READ_CHUNKS] = Default::default();
    loop {
        // Pending leaves a no-op waker with quinn: the task that then
        // calls `read_event` registers its own.
        let read = std::pin::pin!(recv.read_chunks(&mut chunks)).poll(&mut cx);
        match read {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(read) => {
                if let Some(done) = take_chunks(body, read, &mut chunks) {
                    return Poll::Ready(done);
                }
            }
        }
    }
}

/// Reads the rest of an event stream begun by [`read_event_now`]; each
/// read's size is first put to `admit`, which may refuse it.
pub(crate) async fn read_event(
    recv: &mut RecvStream,
    mut body: EventBody,
    mut admit: impl FnMut(usize) -> bool,
) -> EventRead {
    let mut chunks: [Bytes; EventBody::READ_CHUNKS] = Default::default();
    loop {
        let read = recv.read_chunks(&mut chunks).await;
        if let Ok(Some(n)) = read {
            if !admit(chunks[..n].iter().map(Bytes::len).sum()) {
                // This read too, for the id at the start of the stream.
                let _ = body.push_read(&mut chunks, n);
                return EventRead::Refused(body.into_prefix());
            }
        }
        if let Some(done) = take_chunks(&mut body, read, &mut chunks) {
            return done;
        }
    }
}

/// Adds one read (`chunks[..n]`) to `body`; the stream as read once it
/// ended, broke, or went over the limit. A chunk is what quinn already
/// holds for the stream (within the stream's receive window), so a stream
/// over the limit is caught at the read that passes it, and its prefix
/// keeps at most one byte past the limit.
fn take_chunks(
    body: &mut EventBody,
    read: Result<Option<usize>, ReadError>,
    chunks: &mut [Bytes],
) -> Option<EventRead> {
    let whole = |body: &mut EventBody| std::mem::replace(body, EventBody::new(0));
    match read {
        Ok(Some(n)) => match body.push_read(chunks, n) {
            Ok(()) => None,
            Err(_) => Some(EventRead::TooLarge(whole(body).into_prefix())),
        },
        Ok(None) => Some(EventRead::Event(whole(body).finish())),
        Err(e) => Some(EventRead::Failed(whole(body).into_prefix(), e)),
    }
}

/// How [`write_event`] went.
#[derive(Debug)]
pub(crate) enum Written {
    /// Written and finished: the caller may wait until the peer has
    /// acknowledged it all.
    Whole(SendStream),
    /// The stream was opened but the write failed (the peer stopped it, or
    /// the connection broke meanwhile).
    Cut,
}

/// Opens a stream, writes `wire` and finishes it. `None` when no stream
/// can be opened: the connection is gone.
pub(crate) async fn write_event(conn: &quinn::Connection, wire: Bytes) -> Option<Written> {
    let mut stream = conn.open_uni().await.ok()?;
    if stream.write_chunk(wire).await.is_err() {
        return Some(Written::Cut);
    }
    let _ = stream.finish();
    Some(Written::Whole(stream))
}

/// Opens a stream and writes `wire` on it, for a delivery nobody waits on:
/// dropping the stream finishes it (one step less than `finish`). Gives
/// `wire` back when no stream can be opened: the connection is gone.
pub(crate) async fn send_event(conn: &quinn::Connection, wire: Bytes) -> Result<(), Bytes> {
    let Ok(mut stream) = conn.open_uni().await else {
        return Err(wire);
    };
    // A peer that stopped the stream did not want it; nothing to do.
    let _ = stream.write_chunk(wire).await;
    Ok(())
}

/// Retires `peer`: out of `table`'s routing (kept among its retiring
/// connections until closed), its queue takes no more, what waits in it is
/// still written, and the connection is closed with `REPLACED` once the
/// writer says the client has it all
/// ([`Outbound::retired`](crate::outbound::Outbound::retired)), or after
/// `within` (what is not written then is passed on,
/// [`crate::deliveries::pass_on`]).
pub(crate) fn retire(table: &Arc<Table>, peer: &Arc<Peer>, within: Duration) {
    table.retire(peer);
    peer.outbound.finish();
    let (table, peer) = (table.clone(), peer.clone());
    tokio::spawn(
        async move {
            tokio::select! {
                () = peer.outbound.retired() => {}
                _ = peer.conn.closed() => {}
                () = tokio::time::sleep(within) => {
                    debug!(server_id = %peer.server_id, "retiring: not all written and acknowledged in time");
                }
            }
            peer.close(CloseCode::Replaced);
            table.retired(&peer);
        }
        .in_current_span(),
    );
}

/// Closes the connection with `code`, its name as the reason.
pub(crate) fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(code.code().into(), code.as_str().as_bytes());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use icom_protocol::Pong;
    use tokio::sync::Semaphore;

    use super::*;

    #[test]
    fn a_counted_frame_holds_its_place_until_its_last_handle_is_gone() {
        let places = Arc::new(Semaphore::new(1));
        let msg = Control::Pong(Pong { nonce: 7 });
        let frame = counted_frame(&msg, places.clone().try_acquire_owned().unwrap());
        assert_eq!(&frame[..], &encode_frame(&msg)[..], "the frame's bytes");
        assert!(
            places.clone().try_acquire_owned().is_err(),
            "the place is taken"
        );
        // A handle kept elsewhere (quinn's send buffer) holds it too.
        let kept = frame.slice(1..);
        drop(frame);
        assert!(places.clone().try_acquire_owned().is_err());
        drop(kept);
        assert!(places.try_acquire_owned().is_ok(), "the place is back");
    }
}

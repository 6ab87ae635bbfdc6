//! Reading streams without doing I/O: the two readers both ends need.
//!
//! - [`FrameBuffer`] gathers the bytes of a control stream, however they
//!   were cut into chunks, and gives back whole control messages.
//! - [`EventBody`] gathers one event stream (a `send` or a `deliver`) up to
//!   a size limit, keeping the usual one-chunk event without a copy.
//!
//! The caller reads chunks from its transport and feeds them in; both
//! readers bound what they keep, so a peer cannot make them grow past the
//! limits of docs/PROTOCOL.md §2 and §9.

use bytes::{Buf, Bytes, BytesMut};

use crate::codec::{decode_control, split_frame, DecodeError};
use crate::message::Control;

/// What [`FrameBuffer`] keeps between frames once a large frame has gone
/// through: anything bigger is given back to the allocator.
const KEEP_CAPACITY: usize = 16 * 1024;

/// Control frames out of the chunks of a control stream.
///
/// ```
/// use icom_protocol::{encode_frame, Control, FrameBuffer, Ping};
///
/// let frame = encode_frame(&Control::Ping(Ping { nonce: 9 }));
/// let mut frames = FrameBuffer::new();
/// frames.extend(&frame[..3]);
/// assert_eq!(frames.next_message().unwrap(), None);
/// frames.extend(&frame[3..]);
/// assert_eq!(frames.next_message().unwrap(), Some(Control::Ping(Ping { nonce: 9 })));
/// ```
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: BytesMut,
    skipped: u64,
}

impl FrameBuffer {
    /// An empty buffer; it allocates on the first bytes.
    pub fn new() -> FrameBuffer {
        FrameBuffer::default()
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message of a known name, if the buffer holds one.
    /// Messages of names this version does not know are skipped (and
    /// counted, [`FrameBuffer::skipped`]). `Ok(None)`: read more first.
    ///
    /// The caller reads more only when this returns `Ok(None)`, so the
    /// buffer never holds more than one frame (at most
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN)) and one chunk.
    ///
    /// # Errors
    /// [`DecodeError`]: a header over the limit, or a body that is not a
    /// message. The stream cannot be read further after an error.
    pub fn next_message(&mut self) -> Result<Option<Control>, DecodeError> {
        loop {
            let Some((body, used)) = split_frame(&self.buf)? else {
                if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            let msg = decode_control(body);
            self.buf.advance(used);
            match msg? {
                Some(msg) => return Ok(Some(msg)),
                None => self.skipped += 1,
            }
        }
    }

    /// Whether bytes of an unfinished frame are waiting.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// How many messages of unknown names were skipped.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// One event stream read to its end, at most `max` bytes.
///
/// ```
/// use bytes::Bytes;
/// use icom_protocol::EventBody;
///
/// let mut body = EventBody::new(8);
/// body.push(Bytes::from_static(b"abcd")).unwrap();
/// body.push(Bytes::from_static(b"ef")).unwrap();
/// assert_eq!(body.finish(), Bytes::from_static(b"abcdef"));
///
/// let mut big = EventBody::new(4);
/// assert!(big.push(Bytes::from_static(b"abcde")).is_err());
/// assert_eq!(big.into_prefix(), b"abcde");
/// ```
#[derive(Debug)]
pub struct EventBody {
    /// The first chunk, kept as it came while it is the only one.
    first: Option<Bytes>,
    /// Every byte, once a second chunk came.
    joined: Vec<u8>,
    len: usize,
    max: usize,
}

/// The stream is longer than the limit [`EventBody`] was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream exceeds {max} bytes")]
pub struct TooLong {
    /// The limit.
    pub max: usize,
}

impl EventBody {
    /// How many chunks to read from the transport at once. A read that
    /// empties the stream also sees its end, so an event that came in one
    /// packet is read, end and all, in one call (one lock of quinn's
    /// connection); reading chunk by chunk takes a second call only to learn
    /// that the stream ended.
    pub const READ_CHUNKS: usize = 4;

    /// Ready for a stream of at most `max` bytes.
    pub fn new(max: usize) -> EventBody {
        EventBody {
            first: None,
            joined: Vec::new(),
            len: 0,
            max,
        }
    }

    /// Takes the next chunk, in stream order.
    ///
    /// # Errors
    /// [`TooLong`] once more than `max` bytes came; what came is still
    /// there for [`EventBody::into_prefix`].
    pub fn push(&mut self, chunk: Bytes) -> Result<(), TooLong> {
        self.len += chunk.len();
        if self.first.is_none() && self.joined.is_empty() {
            self.first = Some(chunk);
        } else {
            if let Some(first) = self.first.take() {
                self.joined.reserve(self.len);
                self.joined.extend_from_slice(&first);
            }
            self.joined.extend_from_slice(&chunk);
        }
        if self.len > self.max {
            return Err(TooLong { max: self.max });
        }
        Ok(())
    }

    /// Takes the chunks of one read, in order, leaving them empty: the
    /// first `n` of a [`EventBody::READ_CHUNKS`]-long array that quinn's
    /// `read_chunks` filled.
    ///
    /// # Errors
    /// As [`EventBody::push`], at the chunk that went over the limit.
    pub fn push_read(&mut self, chunks: &mut [Bytes], n: usize) -> Result<(), TooLong> {
        let n = n.min(chunks.len());
        for chunk in &mut chunks[..n] {
            self.push(std::mem::take(chunk))?;
        }
        Ok(())
    }

    /// How many bytes came so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte came yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole stream, after its end was read.
    pub fn finish(self) -> Bytes {
        match self.first {
            Some(first) => first,
            None => Bytes::from(self.joined),
        }
    }

    /// What came before the stream broke off or went over the limit: enough
    /// to read the event's id for its ack. At most one byte over the limit,
    /// however large the chunk that went over it.
    pub fn into_prefix(self) -> Vec<u8> {
        let keep = self.len.min(self.max.saturating_add(1));
        match self.first {
            Some(first) => first[..keep.min(first.len())].to_vec(),
            None => {
                let mut joined = self.joined;
                joined.truncate(keep);
                joined
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::codec::{encode_frame, MAX_FRAME_LEN};
    use crate::message::{Ping, Pong};

    fn ping(nonce: u64) -> Control {
        Control::Ping(Ping { nonce })
    }

    #[test]
    fn frames_come_out_whole_whatever_the_chunking() {
        let mut stream = Vec::new();
        for n in 1..=20 {
            stream.extend(encode_frame(&ping(n)));
        }
        for cut in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut frames = FrameBuffer::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                frames.extend(chunk);
                while let Some(msg) = frames.next_message().unwrap() {
                    got.push(msg);
                }
            }
            assert_eq!(got, (1..=20).map(ping).collect::<Vec<_>>(), "cut {cut}");
            assert!(frames.is_empty());
        }
    }

    #[test]
    fn unknown_names_are_skipped_and_counted() {
        let mut unknown = Vec::new();
        rmp_serde::encode::write_named(
            &mut unknown,
            &std::collections::BTreeMap::from([("gossip", 1u8)]),
        )
        .unwrap();
        let mut stream = (unknown.len() as u32).to_be_bytes().to_vec();
        stream.extend(&unknown);
        stream.extend(encode_frame(&Control::Pong(Pong { nonce: 3 })));
        let mut frames = FrameBuffer::new();
        frames.extend(&stream);
        assert_eq!(
            frames.next_message().unwrap(),
            Some(Control::Pong(Pong { nonce: 3 }))
        );
        assert_eq!(frames.skipped(), 1);
    }

    #[test]
    fn a_header_over_the_limit_is_an_error_before_its_body() {
        let mut frames = FrameBuffer::new();
        frames.extend(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
        assert!(matches!(
            frames.next_message(),
            Err(DecodeError::FrameTooLong { .. })
        ));
    }

    #[test]
    fn a_bad_body_is_an_error() {
        let mut frames = FrameBuffer::new();
        frames.extend(&[0, 0, 0, 1, 0xc1]);
        assert!(frames.next_message().is_err());
    }

    #[test]
    fn a_large_frame_does_not_leave_a_large_buffer() {
        let big = Control::Presence(crate::message::Presence {
            server_id: "x".repeat(100_000),
            online: true,
        });
        let mut frames = FrameBuffer::new();
        frames.extend(&encode_frame(&big));
        assert_eq!(frames.next_message().unwrap(), Some(big));
        assert_eq!(frames.next_message().unwrap(), None);
        assert!(frames.buf.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn one_chunk_is_kept_without_a_copy() {
        let chunk = Bytes::from(vec![7u8; 100]);
        let mut body = EventBody::new(100);
        body.push(chunk.clone()).unwrap();
        let out = body.finish();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn chunks_are_joined_in_order() {
        let mut body = EventBody::new(10);
        for part in [&b"ab"[..], b"", b"cde", b"f"] {
            body.push(Bytes::copy_from_slice(part)).unwrap();
        }
        assert_eq!(body.finish(), Bytes::from_static(b"abcdef"));
    }

    #[test]
    fn exactly_the_limit_passes_and_one_more_byte_fails() {
        let mut body = EventBody::new(4);
        body.push(Bytes::from_static(b"ab")).unwrap();
        body.push(Bytes::from_static(b"cd")).unwrap();
        assert_eq!(body.push(Bytes::from_static(b"e")), Err(TooLong { max: 4 }));
        assert_eq!(body.into_prefix(), b"abcde");
    }

    #[test]
    fn a_read_of_several_chunks_is_taken_in_order_up_to_n() {
        let mut body = EventBody::new(10);
        let mut chunks: [Bytes; EventBody::READ_CHUNKS] = [
            Bytes::from_static(b"ab"),
            Bytes::from_static(b"cd"),
            Bytes::from_static(b"zz"),
            Bytes::new(),
        ];
        body.push_read(&mut chunks, 2).unwrap();
        assert!(chunks[..2].iter().all(Bytes::is_empty), "taken");
        assert_eq!(chunks[2], Bytes::from_static(b"zz"), "past n: left alone");
        assert_eq!(body.finish(), Bytes::from_static(b"abcd"));

        let mut over = EventBody::new(3);
        let mut chunks = [Bytes::from_static(b"ab"), Bytes::from_static(b"cd")];
        assert_eq!(over.push_read(&mut chunks, 9), Err(TooLong { max: 3 }));
        assert_eq!(over.into_prefix(), b"abcd");
    }

    #[test]
    fn the_prefix_of_a_stream_over_the_limit_stops_one_byte_past_it() {
        let mut one = EventBody::new(4);
        assert!(one.push(Bytes::from_static(b"abcdefgh")).is_err());
        assert_eq!(one.into_prefix(), b"abcde");

        let mut joined = EventBody::new(4);
        joined.push(Bytes::from_static(b"ab")).unwrap();
        assert!(joined.push(Bytes::from_static(b"cdefgh")).is_err());
        assert_eq!(joined.into_prefix(), b"abcde");
    }

    #[test]
    fn an_empty_stream_is_empty() {
        assert!(EventBody::new(4).finish().is_empty());
        assert!(EventBody::new(4).into_prefix().is_empty());
    }
}

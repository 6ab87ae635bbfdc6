//! The bench's event payloads: one MessagePack `bin` value of exactly the
//! requested encoded size, whose first 8 bytes carry the moment it was
//! made, so that a receiver in this process can tell the event's latency.
//! The router passes the bytes through untouched.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// The event name of every bench event.
pub(crate) const EVENT: &str = "bench";

/// The smallest payload that carries a time stamp: a `bin8` header (2
/// bytes) and the stamp.
const STAMPED_MIN: usize = 2 + 8;

/// The origin of the stamps: this process's first call.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A payload of `size` encoded bytes, stamped with now when it is big
/// enough (10 bytes or more); a size below 2 is MessagePack nil.
pub(crate) fn stamped(size: usize) -> Bytes {
    if size < 2 {
        return Bytes::from_static(icom_protocol::NIL);
    }
    let mut out = BytesMut::with_capacity(size);
    let body = bin_header(&mut out, size);
    if body >= 8 {
        out.put_u64(now_ns());
        out.put_bytes(b'x', body - 8);
    } else {
        out.put_bytes(b'x', body);
    }
    out.freeze()
}

/// How long ago a payload made by [`stamped`] was made; `None` for one
/// too small to carry a stamp, or not ours.
pub(crate) fn age(data: &[u8]) -> Option<Duration> {
    if data.len() < STAMPED_MIN {
        return None;
    }
    let start = match data[0] {
        0xc4 => 2,
        0xc5 => 3,
        0xc6 => 5,
        _ => return None,
    };
    let stamp = u64::from_be_bytes(data.get(start..start + 8)?.try_into().ok()?);
    Some(Duration::from_nanos(now_ns().saturating_sub(stamp)))
}

/// Writes the smallest `bin` header that makes the whole value `size`
/// bytes; returns the body's length.
fn bin_header(out: &mut BytesMut, size: usize) -> usize {
    if size - 2 <= usize::from(u8::MAX) {
        out.put_u8(0xc4);
        out.put_u8((size - 2) as u8);
        size - 2
    } else if size - 3 <= usize::from(u16::MAX) {
        out.put_u8(0xc5);
        out.put_u16((size - 3) as u16);
        size - 3
    } else {
        out.put_u8(0xc6);
        out.put_u32(u32::try_from(size - 5).unwrap_or(u32::MAX));
        size - 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_asked_and_decode_as_one_value() {
        for size in [0, 1, 2, 9, 10, 200, 257, 258, 1000, 70_000] {
            let p = stamped(size);
            assert_eq!(p.len(), size.max(1), "size {size}");
            // Exactly one value: a send carrying it decodes to the same bytes.
            let send = icom_protocol::Send {
                id: 1,
                to: icom_protocol::Target::All,
                event: EVENT.into(),
                data: p.clone(),
                persist: None,
                ttl_ms: None,
                reply_to: None,
            };
            let back = icom_protocol::Send::decode(&Bytes::from(send.encode())).unwrap();
            assert_eq!(back.data, p, "size {size}");
            assert_eq!(age(&p).is_some(), size >= STAMPED_MIN, "size {size}");
        }
    }
}

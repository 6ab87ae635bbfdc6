//! What routers of one cluster tell each other over NATS. Notices and
//! takeovers are MessagePack (rmp-serde); a forwarded event is a small
//! binary header before the encoded `deliver`, which crosses undecoded.
//! None of this reaches clients: docs/PROTOCOL.md §12 describes it for
//! operators.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Most servers one notice may name, and most recipients of one forward:
/// past them a notice or forward is refused as malformed.
pub(crate) const MAX_NAMES: usize = 100_000;

/// A server held by a router, and since when its claim runs (ms, a Lamport
/// clock over wall time: a newer claim is always larger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) since: u64,
}

/// One change of the servers a router holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Change {
    pub(crate) id: String,
    /// For `online`: the claim's time; for a server that moved, the new
    /// owner's claim time.
    pub(crate) since: u64,
    pub(crate) online: bool,
    /// The router the server moved to, when it went because another
    /// router took it over: it is not offline.
    pub(crate) moved_to: Option<String>,
}

/// Published on `<prefix>.view` by every router, in order of `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Notice {
    /// Every server the router holds, as of change `seq`.
    Beat {
        router: String,
        epoch: u64,
        seq: u64,
        members: Vec<Member>,
    },
    /// Changes since the last notice; `seq` counts them.
    Delta {
        router: String,
        epoch: u64,
        seq: u64,
        changes: Vec<Change>,
    },
    /// The router stopped: it holds nothing and will not be heard again
    /// (under this epoch).
    Gone { router: String, epoch: u64 },
}

impl Notice {
    pub(crate) fn encode(&self) -> Bytes {
        // Encoding plain structs into a Vec cannot fail.
        Bytes::from(rmp_serde::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Notice, String> {
        let n: Notice = rmp_serde::from_slice(b).map_err(|e| e.to_string())?;
        let count = match &n {
            Notice::Beat { members, .. } => members.len(),
            Notice::Delta { changes, .. } => changes.len(),
            Notice::Gone { .. } => 0,
        };
        if count > MAX_NAMES {
            return Err(format!(
                "a notice naming {count} servers (at most {MAX_NAMES})"
            ));
        }
        Ok(n)
    }
}

/// Asks the router that holds `id` to give it up to `by`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Takeover {
    pub(crate) id: String,
    pub(crate) by: String,
    pub(crate) since: u64,
}

impl Takeover {
    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Takeover, String> {
        rmp_serde::from_slice(b).map_err(|e| e.to_string())
    }
}

/// What became of one recipient of a forwarded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// In its outbound queue.
    Delivered,
    /// Its outbound queue is full.
    Congested,
    /// Not connected to that router, nor moved anywhere it knows.
    NotFound,
    /// It moved to this router.
    Moved(String),
}

/// An event for some of a router's servers: `u32` count, then each id as a
/// `u8` length and its bytes, then the encoded `deliver` to the end.
pub(crate) fn encode_forward<'a>(
    ids: impl ExactSizeIterator<Item = &'a str>,
    wire: &[u8],
) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + ids.len() * 16 + wire.len());
    b.put_u32(ids.len() as u32);
    for id in ids {
        // Server ids are at most 64 bytes (validated at the handshake).
        let id = &id.as_bytes()[..id.len().min(255)];
        b.put_u8(id.len() as u8);
        b.put_slice(id);
    }
    b.put_slice(wire);
    b.freeze()
}

/// The recipients and the event of a forward; the event is a slice of
/// `b`, not a copy.
pub(crate) fn decode_forward(mut b: Bytes) -> Result<(Vec<String>, Bytes), String> {
    if b.remaining() < 4 {
        return Err("a forward shorter than its header".into());
    }
    let n = b.get_u32() as usize;
    if n > MAX_NAMES {
        return Err(format!("a forward to {n} servers (at most {MAX_NAMES})"));
    }
    let mut ids = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        if !b.has_remaining() {
            return Err("a forward cut short in its recipients".into());
        }
        let len = b.get_u8() as usize;
        if b.remaining() < len {
            return Err("a forward cut short in its recipients".into());
        }
        let id = String::from_utf8(b.split_to(len).to_vec())
            .map_err(|_| "a recipient that is not UTF-8".to_owned())?;
        ids.push(id);
    }
    Ok((ids, b))
}

/// Several forwards in one message: each as [`encode_forward`] makes it,
/// after its length as a `u32`.
pub(crate) fn encode_batch<'a>(
    events: impl Iterator<Item = (&'a [std::sync::Arc<str>], &'a Bytes)>,
) -> Bytes {
    let mut b = BytesMut::new();
    for (ids, wire) in events {
        let one = encode_forward(ids.iter().map(|i| &**i), wire);
        b.put_u32(one.len() as u32);
        b.put_slice(&one);
    }
    b.freeze()
}

/// The forwards of a batch, each event a slice of `b`.
pub(crate) fn decode_batch(mut b: Bytes) -> Result<Vec<(Vec<String>, Bytes)>, String> {
    let mut out = Vec::new();
    while b.has_remaining() {
        if b.remaining() < 4 {
            return Err("a batch cut short".into());
        }
        let len = b.get_u32() as usize;
        if b.remaining() < len {
            return Err("a batch cut short".into());
        }
        out.push(decode_forward(b.split_to(len))?);
        if out.len() > MAX_NAMES {
            return Err(format!("a batch of more than {MAX_NAMES} events"));
        }
    }
    Ok(out)
}

/// The answer to a forward: one byte per recipient, in order (0 delivered,
/// 1 congested, 2 not found, 3 moved: then a `u8` length and the router).
pub(crate) fn encode_outcomes(outcomes: &[Outcome]) -> Bytes {
    let mut b = BytesMut::with_capacity(outcomes.len());
    for o in outcomes {
        match o {
            Outcome::Delivered => b.put_u8(0),
            Outcome::Congested => b.put_u8(1),
            Outcome::NotFound => b.put_u8(2),
            Outcome::Moved(r) => {
                b.put_u8(3);
                let r = &r.as_bytes()[..r.len().min(255)];
                b.put_u8(r.len() as u8);
                b.put_slice(r);
            }
        }
    }
    b.freeze()
}

/// Reads the answer to a forward to `count` recipients.
pub(crate) fn decode_outcomes(mut b: Bytes, count: usize) -> Result<Vec<Outcome>, String> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if !b.has_remaining() {
            return Err("an answer with fewer outcomes than recipients".into());
        }
        out.push(match b.get_u8() {
            0 => Outcome::Delivered,
            1 => Outcome::Congested,
            2 => Outcome::NotFound,
            3 => {
                let len = if b.has_remaining() {
                    b.get_u8() as usize
                } else {
                    usize::MAX
                };
                if b.remaining() < len {
                    return Err("an answer cut short".into());
                }
                let r = String::from_utf8(b.split_to(len).to_vec())
                    .map_err(|_| "a router name that is not UTF-8".to_owned())?;
                Outcome::Moved(r)
            }
            other => return Err(format!("an unknown outcome {other}")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_round_trips_and_its_event_is_not_copied() {
        let wire = b"\x82\xa4from\xa1a";
        let f = encode_forward(["server_1", "s2"].into_iter(), wire);
        let (ids, event) = decode_forward(f.clone()).unwrap();
        assert_eq!(ids, ["server_1", "s2"]);
        assert_eq!(&event[..], wire);
        assert_eq!(event.as_ptr(), f[f.len() - wire.len()..].as_ptr());
        // Cut anywhere inside the recipients: an error, never a panic.
        for cut in 0..(f.len() - wire.len()) {
            assert!(decode_forward(f.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        assert!(decode_forward(huge.freeze())
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn a_batch_round_trips_and_a_cut_batch_is_an_error() {
        let ids: Vec<std::sync::Arc<str>> = vec!["a".into(), "b".into()];
        let (w1, w2) = (Bytes::from_static(b"one"), Bytes::from_static(b"second"));
        let b = encode_batch([(&ids[..], &w1), (&ids[..1], &w2)].into_iter());
        let got = decode_batch(b.clone()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0.len(), &got[0].1[..]), (2, &b"one"[..]));
        assert_eq!(
            (got[1].0.clone(), &got[1].1[..]),
            (vec!["a".to_owned()], &b"second"[..])
        );
        for cut in 1..b.len() {
            // Every cut but one at an event's end is an error.
            if let Ok(v) = decode_batch(b.slice(..cut)) {
                assert_eq!(v.len(), 1, "cut at {cut}");
            }
        }
        assert!(decode_batch(Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn outcomes_round_trip_and_bad_answers_are_errors() {
        let all = vec![
            Outcome::Delivered,
            Outcome::Congested,
            Outcome::NotFound,
            Outcome::Moved("r2".into()),
        ];
        let b = encode_outcomes(&all);
        assert_eq!(decode_outcomes(b.clone(), 4).unwrap(), all);
        assert!(decode_outcomes(b.clone(), 5).is_err());
        assert!(decode_outcomes(Bytes::from_static(&[9]), 1).is_err());
        assert!(decode_outcomes(Bytes::from_static(&[3, 5, b'a']), 1).is_err());
        assert!(decode_outcomes(Bytes::from_static(&[3]), 1).is_err());
    }

    #[test]
    fn notices_round_trip() {
        let n = Notice::Delta {
            router: "r1".into(),
            epoch: 7,
            seq: 3,
            changes: vec![Change {
                id: "s".into(),
                since: 5,
                online: false,
                moved_to: Some("r2".into()),
            }],
        };
        assert_eq!(Notice::decode(&n.encode()).unwrap(), n);
        assert!(Notice::decode(b"\xc1").is_err());
    }
}

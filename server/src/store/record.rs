//! The store's records: what each is (a persistent event or a queued
//! copy), and its bytes in the file: a 4-byte big-endian header length,
//! the header (MessagePack), then the encoded `deliver`.

use std::collections::BTreeMap;

use bytes::Bytes;
use icom_protocol::{Groups, Target};
use serde::{Deserialize, Serialize};

use super::Due;

/// What a record is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A persistent event, with its target (matched on connect).
    Persistent { persist_id: String, target: Target },
    /// A copy for one offline server.
    Queued { recipient: String },
}

/// The header of a record; the encoded `deliver` follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) from: String,
    pub(crate) expires_ms: Option<u64>,
}

/// A record, as memory holds it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) header: Header,
    pub(crate) wire: Bytes,
}

impl Stored {
    /// What it takes against the store's byte bounds ([`persistent_bytes`]).
    pub(crate) fn bytes(&self) -> usize {
        match &self.header.kind {
            Kind::Persistent { persist_id, target } => {
                persistent_bytes(self.wire.len(), persist_id, target)
            }
            Kind::Queued { .. } => self.wire.len(),
        }
    }

    /// Whether it has not expired by `now_ms`.
    pub(crate) fn alive(&self, now_ms: u64) -> bool {
        self.header.expires_ms.is_none_or(|e| e > now_ms)
    }

    /// Whether it is for `server`: a persistent event whose target includes
    /// it, or a copy queued for it.
    pub(crate) fn is_for(&self, server: &str, groups: &Groups) -> bool {
        match &self.header.kind {
            Kind::Persistent { target, .. } => target.includes(server, &self.header.from, groups),
            Kind::Queued { recipient } => recipient == server,
        }
    }
}

/// What a persistent event takes against the store's byte bounds: its
/// event (`wire` bytes), its persist id and the names of its target, which
/// the record keeps too (a target may list as many names as its send had
/// room for). A queued copy takes its event's bytes.
pub(crate) fn persistent_bytes(wire: usize, persist_id: &str, target: &Target) -> usize {
    let names = match target {
        Target::Servers(ids) | Target::Except(ids) => ids.iter().map(|id| id.len() + 1).sum(),
        Target::Server(name) | Target::Group(name) => name.len() + 1,
        Target::All | Target::Everyone => 0,
    };
    wire + persist_id.len() + names
}

/// What is due to `server` at `now_ms`, in stored order: the persistent
/// events for it and its queued copies, unexpired.
pub(crate) fn due(
    persistent: &BTreeMap<u64, Stored>,
    queued: Option<&BTreeMap<u64, Stored>>,
    server: &str,
    groups: &Groups,
    now_ms: u64,
) -> Vec<Due> {
    let mut due: Vec<Due> = persistent
        .iter()
        .filter(|(_, s)| s.alive(now_ms) && s.is_for(server, groups))
        .map(|(seq, s)| Due {
            seq: *seq,
            wire: s.wire.clone(),
            queued: false,
        })
        .collect();
    due.extend(
        queued
            .into_iter()
            .flatten()
            .filter(|(_, s)| s.alive(now_ms))
            .map(|(seq, s)| Due {
                seq: *seq,
                wire: s.wire.clone(),
                queued: true,
            }),
    );
    due.sort_by_key(|d| d.seq);
    due
}

/// The sequences of the records that expired by `now_ms`.
pub(crate) fn expired<'a>(
    records: impl Iterator<Item = (&'a u64, &'a Stored)>,
    now_ms: u64,
) -> Vec<u64> {
    records
        .filter(|(_, s)| !s.alive(now_ms))
        .map(|(seq, _)| *seq)
        .collect()
}

/// A record: a 4-byte big-endian header length, the header (MessagePack),
/// then the encoded `deliver`.
pub(crate) fn encode(s: &Stored) -> Vec<u8> {
    // The header holds strings, integers and a target: it always encodes.
    let header = rmp_serde::to_vec_named(&s.header).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + header.len() + s.wire.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&s.wire);
    out
}

/// The record `v`, or what is wrong with it.
pub(crate) fn decode(v: &[u8]) -> Result<Stored, String> {
    let (header, at) = decode_header(v)?;
    Ok(Stored {
        header,
        wire: Bytes::copy_from_slice(&v[at..]),
    })
}

/// As [`decode`], its `deliver` a slice of `v` (no copy).
pub(crate) fn decode_shared(v: &Bytes) -> Result<Stored, String> {
    let (header, at) = decode_header(v)?;
    Ok(Stored {
        header,
        wire: v.slice(at..),
    })
}

/// A record's header, and where its `deliver` starts.
fn decode_header(v: &[u8]) -> Result<(Header, usize), String> {
    let len = v
        .first_chunk::<4>()
        .map(|h| u32::from_be_bytes(*h) as usize)
        .ok_or("shorter than its header length")?;
    let end = 4usize
        .checked_add(len)
        .ok_or("a header length past memory")?;
    let header_bytes = v.get(4..end).ok_or("shorter than its header")?;
    let header: Header = rmp_serde::from_slice(header_bytes).map_err(|e| e.to_string())?;
    Ok((header, end))
}

//! The store's records: what each is (a persistent event or a queued
//! copy), and its bytes in the file: a 4-byte big-endian header length,
//! the header (MessagePack), then the encoded `deliver`.

use bytes::Bytes;
use icom_protocol::Target;
use serde::{Deserialize, Serialize};

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
    let len = v
        .first_chunk::<4>()
        .map(|h| u32::from_be_bytes(*h) as usize)
        .ok_or("shorter than its header length")?;
    let header_bytes = v.get(4..4 + len).ok_or("shorter than its header")?;
    let header: Header = rmp_serde::from_slice(header_bytes).map_err(|e| e.to_string())?;
    Ok(Stored {
        header,
        wire: Bytes::copy_from_slice(&v[4 + len..]),
    })
}

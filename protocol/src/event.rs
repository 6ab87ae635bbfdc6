//! Event streams: `send` (client → router) and `deliver` (router → client),
//! one message per stream. The payload `data` stays raw MessagePack bytes, so
//! the router routes without decoding or re-encoding it.

use bytes::Bytes;
use thiserror::Error;

use crate::codec::{open_message, DecodeError};
use crate::codes::AckCode;
use crate::message::Persist;
use crate::msgpack::{write, Reader};
use crate::target::{Groups, Target, TargetRef};
use crate::validate::{validate_event_name, validate_persist_id};

/// The default and usual `max_event_bytes`: the largest encoded `send`.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
/// What a `deliver` may add to its `send`: a client accepts a `deliver` of
/// up to `max_event_bytes` plus this.
pub const DELIVER_OVERHEAD: usize = 1024;
/// The MessagePack encoding of nil: the payload of a send without `data`.
pub const NIL: &[u8] = &[0xc0];

/// `send {id, to, event, data, persist?, ttl_ms?, reply_to?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// Chosen by the sender, never zero, never reused.
    pub id: u64,
    /// Whom it is for.
    pub to: Target,
    /// The event's name.
    pub event: String,
    /// The payload: exactly one MessagePack value, as raw bytes.
    pub data: Bytes,
    /// Store it for servers that connect later.
    pub persist: Option<Persist>,
    /// Keep it this long for offline named recipients.
    pub ttl_ms: Option<u32>,
    /// It replies to the request with this id.
    pub reply_to: Option<u64>,
}

/// A `send` that did not decode, with its id when it could be read first.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{error}")]
pub struct SendDecodeError {
    /// The send's id, if it was read before the error.
    pub id: Option<u64>,
    /// What was wrong.
    pub error: DecodeError,
}

/// Why a well-formed `send` cannot be routed: the ack is `invalid`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    /// The ack code for this error.
    pub fn code(&self) -> AckCode {
        AckCode::Invalid
    }
}

impl Send {
    /// Encodes the send as the whole content of an event stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.event.len() + self.data.len());
        write::map_len(&mut out, 1);
        write::str(&mut out, "send");
        let fields = 4
            + u32::from(self.persist.is_some())
            + u32::from(self.ttl_ms.is_some())
            + u32::from(self.reply_to.is_some());
        write::map_len(&mut out, fields);
        write::uint_field(&mut out, "id", self.id);
        write::str(&mut out, "to");
        encode_target(&mut out, &self.to);
        write::str_field(&mut out, "event", &self.event);
        write::str(&mut out, "data");
        out.extend_from_slice(&self.data);
        if let Some(p) = &self.persist {
            write::str(&mut out, "persist");
            match p {
                Persist::Auto => write::str(&mut out, "auto"),
                Persist::Id(id) => {
                    write::map_len(&mut out, 1);
                    write::str_field(&mut out, "id", id);
                }
            }
        }
        if let Some(ttl) = self.ttl_ms {
            write::uint_field(&mut out, "ttl_ms", u64::from(ttl));
        }
        if let Some(r) = self.reply_to {
            write::uint_field(&mut out, "reply_to", r);
        }
        out
    }

    /// Decodes an event stream's content as a `send`. `data` shares `buf`.
    ///
    /// # Errors
    /// [`SendDecodeError`] with the id if it came before the fault.
    pub fn decode(buf: &Bytes) -> Result<Send, SendDecodeError> {
        let send = SendRef::decode(buf)?;
        let data = match send.data_at.clone() {
            Some(range) => buf.slice(range),
            None => Bytes::from_static(NIL),
        };
        Ok(Send {
            id: send.id,
            to: send.to.to_target(),
            event: send.event.to_owned(),
            data,
            persist: send.persist,
            ttl_ms: send.ttl_ms,
            reply_to: send.reply_to,
        })
    }

    /// Reads only as far as the id: for the ack of a stream cut off for size.
    pub fn peek_id(prefix: &[u8]) -> Option<u64> {
        let mut id = None;
        let _ = decode_send(prefix, &mut id);
        id
    }

    /// The send with its fields borrowed.
    pub fn as_ref(&self) -> SendRef<'_> {
        SendRef {
            id: self.id,
            to: self.to.as_ref(),
            event: &self.event,
            data: &self.data,
            data_at: None,
            persist: self.persist.clone(),
            ttl_ms: self.ttl_ms,
            reply_to: self.reply_to,
        }
    }

    /// See [`SendRef::validate`].
    ///
    /// # Errors
    /// As [`SendRef::validate`].
    pub fn validate(&self, groups: &Groups) -> Result<(), Invalid> {
        self.as_ref().validate(groups)
    }
}

/// A `send` whose names and payload borrow the bytes it was decoded from:
/// the router decodes each event stream into one without copying the
/// event's name, its target's names or its payload.
#[derive(Debug, Clone)]
pub struct SendRef<'a> {
    /// See [`Send::id`].
    pub id: u64,
    /// See [`Send::to`].
    pub to: TargetRef<'a>,
    /// See [`Send::event`].
    pub event: &'a str,
    /// See [`Send::data`]: one MessagePack value, as the sender encoded it.
    pub data: &'a [u8],
    /// Where `data` is in the decoded buffer (none when it was absent).
    data_at: Option<std::ops::Range<usize>>,
    /// See [`Send::persist`].
    pub persist: Option<Persist>,
    /// See [`Send::ttl_ms`].
    pub ttl_ms: Option<u32>,
    /// See [`Send::reply_to`].
    pub reply_to: Option<u64>,
}

impl<'a> SendRef<'a> {
    /// Decodes an event stream's content as a `send`, borrowing from `buf`.
    ///
    /// # Errors
    /// [`SendDecodeError`] with the id if it came before the fault.
    pub fn decode(buf: &'a [u8]) -> Result<SendRef<'a>, SendDecodeError> {
        let mut id = None;
        decode_send(buf, &mut id).map_err(|error| SendDecodeError { id, error })
    }

    /// Checks the rules of docs/PROTOCOL.md §3 and §4 that make a send `invalid`.
    ///
    /// # Errors
    /// [`Invalid`] with a readable reason.
    pub fn validate(&self, groups: &Groups) -> Result<(), Invalid> {
        if self.id == 0 {
            return Err(Invalid("id 0 is not allowed".into()));
        }
        if self.ttl_ms == Some(0) {
            return Err(Invalid("ttl_ms must be at least 1".into()));
        }
        validate_event_name(self.event).map_err(|e| Invalid(e.to_string()))?;
        if let Some(Persist::Id(p)) = &self.persist {
            validate_persist_id(p).map_err(|e| Invalid(e.to_string()))?;
        }
        self.to.validate(groups).map_err(|e| Invalid(e.to_string()))
    }
}

fn decode_send<'a>(buf: &'a [u8], id_out: &mut Option<u64>) -> Result<SendRef<'a>, DecodeError> {
    let mut r = Reader::new(buf);
    let fields = open_message(&mut r, "send")?;
    let (mut to, mut event, mut data_at) = (None, None, None);
    let (mut persist, mut ttl_ms, mut reply_to) = (None, None, None);
    for _ in 0..fields {
        let key = r.str_bytes()?;
        if r.eat_nil()? {
            continue;
        }
        match key {
            b"id" => {
                let v = r.uint()?;
                *id_out = Some(v);
            }
            b"to" => to = Some(decode_target(&mut r)?),
            b"event" => event = Some(r.str()?),
            b"data" => data_at = Some(r.skip_value()?),
            b"persist" => persist = Some(decode_persist(&mut r)?),
            b"ttl_ms" => ttl_ms = Some(r.u32()?),
            b"reply_to" => reply_to = Some(r.uint()?),
            _ => {
                r.skip_value()?;
            }
        }
    }
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(SendRef {
        id: id_out.ok_or(DecodeError::MissingField("id"))?,
        to: to.ok_or(DecodeError::MissingField("to"))?,
        event: event.ok_or(DecodeError::MissingField("event"))?,
        data: data_at.clone().map_or(NIL, |range| &buf[range]),
        data_at,
        persist,
        ttl_ms,
        reply_to,
    })
}

/// `deliver {from, id, event, data, persist_id?, reply_to?, sent_ms}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    /// The sender's certificate CN, stamped by the router.
    pub from: String,
    /// The sender's id for the event.
    pub id: u64,
    /// The event's name.
    pub event: String,
    /// The payload, as the sender encoded it.
    pub data: Bytes,
    /// Set on every delivery of a persistent event.
    pub persist_id: Option<String>,
    /// The request this replies to.
    pub reply_to: Option<u64>,
    /// The router's clock (Unix ms) when it accepted the send.
    pub sent_ms: u64,
}

/// A `deliver` to encode, its fields borrowed: the router builds one per
/// event from the parts of the `send` it decoded, without copying them.
#[derive(Debug, Clone, Copy)]
pub struct DeliverRef<'a> {
    /// See [`Deliver::from`].
    pub from: &'a str,
    /// See [`Deliver::id`].
    pub id: u64,
    /// See [`Deliver::event`].
    pub event: &'a str,
    /// See [`Deliver::data`]: one MessagePack value, as the sender encoded it.
    pub data: &'a [u8],
    /// See [`Deliver::persist_id`].
    pub persist_id: Option<&'a str>,
    /// See [`Deliver::reply_to`].
    pub reply_to: Option<u64>,
    /// See [`Deliver::sent_ms`].
    pub sent_ms: u64,
}

impl DeliverRef<'_> {
    /// Encodes the delivery as the whole content of an event stream.
    pub fn encode(&self) -> Vec<u8> {
        // The router encodes one per event: the message's name and the
        // keys are written as their MessagePack bytes (fixstr), not encoded
        // each time. The golden tests hold the bytes.
        let mut out = Vec::with_capacity(80 + self.from.len() + self.event.len() + self.data.len());
        out.extend_from_slice(b"\x81\xa7deliver");
        let fields = 5 + u32::from(self.persist_id.is_some()) + u32::from(self.reply_to.is_some());
        write::map_len(&mut out, fields);
        out.extend_from_slice(b"\xa4from");
        write::str(&mut out, self.from);
        out.extend_from_slice(b"\xa2id");
        write::uint(&mut out, self.id);
        out.extend_from_slice(b"\xa5event");
        write::str(&mut out, self.event);
        out.extend_from_slice(b"\xa4data");
        out.extend_from_slice(self.data);
        if let Some(p) = self.persist_id {
            out.extend_from_slice(b"\xaapersist_id");
            write::str(&mut out, p);
        }
        if let Some(r) = self.reply_to {
            out.extend_from_slice(b"\xa8reply_to");
            write::uint(&mut out, r);
        }
        out.extend_from_slice(b"\xa7sent_ms");
        write::uint(&mut out, self.sent_ms);
        out
    }
}

impl Deliver {
    /// Encodes the delivery as the whole content of an event stream.
    pub fn encode(&self) -> Vec<u8> {
        DeliverRef {
            from: &self.from,
            id: self.id,
            event: &self.event,
            data: &self.data,
            persist_id: self.persist_id.as_deref(),
            reply_to: self.reply_to,
            sent_ms: self.sent_ms,
        }
        .encode()
    }

    /// Decodes an event stream's content as a `deliver`. `data` shares `buf`.
    ///
    /// # Errors
    /// [`DecodeError`] when it is not one well-formed `deliver`.
    pub fn decode(buf: &Bytes) -> Result<Deliver, DecodeError> {
        let mut r = Reader::new(buf);
        let fields = open_message(&mut r, "deliver")?;
        let (mut from, mut id, mut event, mut data) = (None, None, None, None);
        let (mut persist_id, mut reply_to, mut sent_ms) = (None, None, None);
        for _ in 0..fields {
            let key = r.str_bytes()?;
            if r.eat_nil()? {
                continue;
            }
            match key {
                b"from" => from = Some(r.str()?.to_owned()),
                b"id" => id = Some(r.uint()?),
                b"event" => event = Some(r.str()?.to_owned()),
                b"data" => {
                    let range = r.skip_value()?;
                    data = Some(buf.slice(range));
                }
                b"persist_id" => persist_id = Some(r.str()?.to_owned()),
                b"reply_to" => reply_to = Some(r.uint()?),
                b"sent_ms" => sent_ms = Some(r.uint()?),
                _ => {
                    r.skip_value()?;
                }
            }
        }
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes(r.remaining()));
        }
        Ok(Deliver {
            from: from.ok_or(DecodeError::MissingField("from"))?,
            id: id.ok_or(DecodeError::MissingField("id"))?,
            event: event.ok_or(DecodeError::MissingField("event"))?,
            data: data.unwrap_or_else(|| Bytes::from_static(NIL)),
            persist_id,
            reply_to,
            sent_ms: sent_ms.ok_or(DecodeError::MissingField("sent_ms"))?,
        })
    }
}

/// Encodes a target in its wire shape: `"all"`, `"everyone"` or a map with
/// one key.
pub(crate) fn encode_target(out: &mut Vec<u8>, t: &Target) {
    let list = |out: &mut Vec<u8>, key: &str, ids: &[String]| {
        write::map_len(out, 1);
        write::str(out, key);
        write::array_len(out, ids.len() as u32);
        for id in ids {
            write::str(out, id);
        }
    };
    match t {
        Target::All => write::str(out, "all"),
        Target::Everyone => write::str(out, "everyone"),
        Target::Server(id) => {
            write::map_len(out, 1);
            write::str_field(out, "server", id);
        }
        Target::Group(g) => {
            write::map_len(out, 1);
            write::str_field(out, "group", g);
        }
        Target::Servers(ids) => list(out, "servers", ids),
        Target::Except(ids) => list(out, "except", ids),
    }
}

fn decode_target<'a>(r: &mut Reader<'a>) -> Result<TargetRef<'a>, DecodeError> {
    const SHAPE: DecodeError = DecodeError::WrongType {
        expected: "a target",
        found: "something else",
    };
    if r.at_str() {
        return match r.str()? {
            "all" => Ok(TargetRef::All),
            "everyone" => Ok(TargetRef::Everyone),
            _ => Err(SHAPE),
        };
    }
    if r.map_len()? != 1 {
        return Err(SHAPE);
    }
    let strings = |r: &mut Reader<'a>| -> Result<Vec<&'a str>, DecodeError> {
        let n = r.array_len()?;
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(r.str()?);
        }
        Ok(v)
    };
    // The kind is only compared with the known ones: its bytes, unchecked.
    match r.str_bytes()? {
        b"server" => Ok(TargetRef::Server(r.str()?)),
        b"group" => Ok(TargetRef::Group(r.str()?)),
        b"servers" => Ok(TargetRef::Servers(strings(r)?)),
        b"except" => Ok(TargetRef::Except(strings(r)?)),
        _ => Err(SHAPE),
    }
}

fn decode_persist(r: &mut Reader<'_>) -> Result<Persist, DecodeError> {
    const SHAPE: DecodeError = DecodeError::WrongType {
        expected: "\"auto\" or {\"id\": str}",
        found: "something else",
    };
    if r.at_str() {
        return if r.str()? == "auto" {
            Ok(Persist::Auto)
        } else {
            Err(SHAPE)
        };
    }
    if r.map_len()? != 1 || r.str()? != "id" {
        return Err(SHAPE);
    }
    Ok(Persist::Id(r.str()?.to_owned()))
}

//! Framing: control frames (a 4-byte big-endian length, then one message of
//! at most 1 MiB).

pub use crate::error::DecodeError;
use crate::message::{Ack, Control};
use crate::msgpack::{write, Reader};

/// The largest control frame body, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// The length of a control frame's header.
pub const FRAME_HEADER_LEN: usize = 4;

/// Encodes a control message as a frame: length header, then body.
pub fn encode_frame(msg: &Control) -> Vec<u8> {
    let mut out = Vec::new();
    append_frame(&mut out, msg);
    out
}

/// Appends a control message's frame to `out`, which may hold frames
/// already: several acks written together are one buffer.
pub fn append_frame(out: &mut Vec<u8>, msg: &Control) {
    let start = out.len();
    if let Control::Ack(ack @ Ack { error: None, .. }) = msg {
        append_ack(out, ack);
    } else {
        out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        // Serialising these plain structs into a Vec has no failure path:
        // every field is a string, integer, bool or list of strings.
        if let Err(e) = rmp_serde::encode::write_named(out, msg) {
            unreachable!("encoding a control message failed: {e}");
        }
    }
    let len = (out.len() - start - FRAME_HEADER_LEN) as u32;
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// The frame of an ack without an error, the router's most frequent
/// message (one per event), written by hand: the same bytes as the serde
/// encoding (tested), at a fraction of its cost. The header is left for
/// [`append_frame`] to fill in.
fn append_ack(out: &mut Vec<u8>, ack: &Ack) {
    let persist = ack.persist_id.as_deref();
    out.reserve(64 + persist.map_or(0, str::len));
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    // The message's name and the keys as their MessagePack bytes (fixstr).
    out.extend_from_slice(b"\x81\xa3ack");
    write::map_len(out, 4 + u32::from(persist.is_some()));
    out.extend_from_slice(b"\xa2id");
    write::uint(out, ack.id);
    out.extend_from_slice(b"\xa2ok");
    out.push(if ack.ok { 0xc3 } else { 0xc2 });
    out.extend_from_slice(b"\xa9delivered");
    write::uint(out, u64::from(ack.delivered));
    out.extend_from_slice(b"\xa6queued");
    write::uint(out, u64::from(ack.queued));
    if let Some(p) = persist {
        out.extend_from_slice(b"\xaapersist_id");
        write::str(out, p);
    }
}

/// Reads a frame header: the length of the body that follows.
///
/// # Errors
/// [`DecodeError::FrameTooLong`] past [`MAX_FRAME_LEN`].
pub fn frame_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLong {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Splits one complete frame off the front of `buf`: its body, and how many
/// bytes it took. `Ok(None)` when `buf` does not yet hold a whole frame.
///
/// # Errors
/// [`DecodeError::FrameTooLong`] as soon as the header is readable.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = frame_len(*header)?;
    let end = FRAME_HEADER_LEN + len;
    Ok(buf.get(FRAME_HEADER_LEN..end).map(|body| (body, end)))
}

/// Decodes a control frame's body. `Ok(None)` is a well-formed message of
/// a name this version does not know, which the receiver ignores.
///
/// # Errors
/// [`DecodeError`] when the body is not one message of a known shape.
pub fn decode_control(body: &[u8]) -> Result<Option<Control>, DecodeError> {
    let name = {
        let mut r = Reader::new(body);
        if r.map_len().map_err(|_| DecodeError::NotAMessage)? != 1 {
            return Err(DecodeError::NotAMessage);
        }
        let name = r.str().map_err(|_| DecodeError::NotAMessage)?;
        r.skip_value()?;
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes(r.remaining()));
        }
        name
    };
    let Some(known) = Control::NAMES.into_iter().find(|n| *n == name) else {
        return Ok(None);
    };
    rmp_serde::from_slice::<Control>(body)
        .map(Some)
        .map_err(|e| DecodeError::BadShape {
            message: known,
            detail: e.to_string(),
        })
}

/// Checks that a message named `name` is next, and returns the number of
/// its fields (the length of its inner map, which sizes nothing).
pub(crate) fn open_message(r: &mut Reader<'_>, name: &'static str) -> Result<u64, DecodeError> {
    if r.map_len().map_err(|_| DecodeError::NotAMessage)? != 1 {
        return Err(DecodeError::NotAMessage);
    }
    // Compared as bytes: the name that is expected needs no UTF-8 check
    // (one per message decoded); only another name is checked, to be shown.
    let found = r.str_bytes().map_err(|_| DecodeError::NotAMessage)?;
    if found != name.as_bytes() {
        let found = std::str::from_utf8(found).map_err(|_| DecodeError::NotAMessage)?;
        return Err(DecodeError::UnexpectedMessage {
            expected: name,
            found: found.chars().take(64).collect(),
        });
    }
    r.fields_len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::AckError;
    use crate::AckCode;

    fn serde_frame(msg: &Control) -> Vec<u8> {
        let mut out = vec![0u8; FRAME_HEADER_LEN];
        rmp_serde::encode::write_named(&mut out, msg).unwrap();
        let len = (out.len() - FRAME_HEADER_LEN) as u32;
        out[..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        out
    }

    #[test]
    fn an_ack_written_by_hand_is_the_serde_encoding() {
        let long = "p".repeat(300);
        let ids = [
            0,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        let counts = [0, 1, 127, 128, 300, 70_000, u32::MAX];
        let persists = [None, Some(""), Some("boot-state"), Some(long.as_str())];
        for id in ids {
            for (n, persist) in counts.iter().zip(persists.iter().cycle()) {
                for ok in [true, false] {
                    let ack = Control::Ack(Ack {
                        id,
                        ok,
                        delivered: *n,
                        queued: n / 3,
                        persist_id: persist.map(str::to_owned),
                        error: None,
                    });
                    let frame = encode_frame(&ack);
                    assert_eq!(frame, serde_frame(&ack), "{ack:?}");
                    let (body, used) = split_frame(&frame).unwrap().unwrap();
                    assert_eq!(used, frame.len());
                    assert_eq!(decode_control(body).unwrap(), Some(ack));
                }
            }
        }
        // With an error: serde's encoding, as before.
        let failed = Control::Ack(Ack::failed(7, AckCode::NotFound, "no such server"));
        assert_eq!(encode_frame(&failed), serde_frame(&failed));
        let Control::Ack(Ack {
            error: Some(AckError { code, .. }),
            ..
        }) = decode_control(&encode_frame(&failed)[FRAME_HEADER_LEN..])
            .unwrap()
            .unwrap()
        else {
            panic!("an ack with its error")
        };
        assert_eq!(code, AckCode::NotFound);
    }

    #[test]
    fn frames_appended_to_one_buffer_split_back_as_written() {
        let msgs = [
            Control::Ack(Ack {
                id: 1,
                ok: true,
                delivered: 2,
                queued: 0,
                persist_id: None,
                error: None,
            }),
            Control::Ack(Ack::failed(2, AckCode::Congested, "full")),
            Control::Ack(Ack {
                id: 3,
                ok: true,
                delivered: 0,
                queued: 1,
                persist_id: Some("p".into()),
                error: None,
            }),
        ];
        let mut buf = b"kept".to_vec();
        for m in &msgs {
            append_frame(&mut buf, m);
        }
        assert_eq!(&buf[..4], b"kept");
        let mut rest = &buf[4..];
        for m in &msgs {
            let frame = encode_frame(m);
            assert_eq!(&rest[..frame.len()], &frame[..]);
            let (body, used) = split_frame(rest).unwrap().unwrap();
            assert_eq!(decode_control(body).unwrap().as_ref(), Some(m));
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn a_message_opens_only_under_its_own_name() {
        // {"send": {}}
        let mut r = Reader::new(b"\x81\xa4send\x80");
        assert_eq!(open_message(&mut r, "send").unwrap(), 0);
        let mut r = Reader::new(b"\x81\xa3ack\x80");
        assert_eq!(
            open_message(&mut r, "send").unwrap_err(),
            DecodeError::UnexpectedMessage {
                expected: "send",
                found: "ack".into()
            }
        );
        // A name that is not UTF-8, and a map of two entries.
        let mut r = Reader::new(b"\x81\xa2\xff\xfe\x80");
        assert_eq!(
            open_message(&mut r, "send").unwrap_err(),
            DecodeError::NotAMessage
        );
        let mut r = Reader::new(b"\x82\xa4send\x80\xa4send\x80");
        assert_eq!(
            open_message(&mut r, "send").unwrap_err(),
            DecodeError::NotAMessage
        );
    }
}

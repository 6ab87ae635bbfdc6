//! Framing: control frames (a 4-byte big-endian length, then one message of
//! at most 1 MiB).

pub use crate::error::DecodeError;
use crate::message::Control;
use crate::msgpack::Reader;

/// The largest control frame body, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// The length of a control frame's header.
pub const FRAME_HEADER_LEN: usize = 4;

/// Encodes a control message as a frame: length header, then body.
pub fn encode_frame(msg: &Control) -> Vec<u8> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    // Serialising these plain structs into a Vec has no failure path: every
    // field is a string, integer, bool or list of strings.
    if let Err(e) = rmp_serde::encode::write_named(&mut out, msg) {
        unreachable!("encoding a control message failed: {e}");
    }
    let len = (out.len() - FRAME_HEADER_LEN) as u32;
    out[..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
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
    let found = r.str().map_err(|_| DecodeError::NotAMessage)?;
    if found != name {
        return Err(DecodeError::UnexpectedMessage {
            expected: name,
            found: found.chars().take(64).collect(),
        });
    }
    r.fields_len()
}

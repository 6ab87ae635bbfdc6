//! Framing: control frames (a 4-byte big-endian length, then one message of
//! at most 1 MiB) and the decode errors every decoder in this crate returns.

use thiserror::Error;

use crate::message::Control;
use crate::msgpack::Reader;

/// The largest control frame body, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// The length of a control frame's header.
pub const FRAME_HEADER_LEN: usize = 4;

/// Why bytes did not decode as a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended inside a message.
    #[error("the input ended inside a message")]
    Truncated,
    /// A value had another type than the one expected there.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the decoder expected.
        expected: &'static str,
        /// What it found.
        found: &'static str,
    },
    /// A string was not UTF-8.
    #[error("a string is not valid UTF-8")]
    InvalidUtf8,
    /// Arrays and maps nested deeper than the limit.
    #[error("values are nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Bytes followed the message.
    #[error("{0} bytes follow the message")]
    TrailingBytes(usize),
    /// A frame header announced more than the limit.
    #[error("a frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLong {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a map with exactly one key (a message name).
    #[error("not a message: expected a map with one key, the message's name")]
    NotAMessage,
    /// A message of another name than the one expected here.
    #[error("expected a '{expected}' message, got '{found}'")]
    UnexpectedMessage {
        /// The expected name.
        expected: &'static str,
        /// The name found (cut to 64 bytes).
        found: String,
    },
    /// A required field is missing.
    #[error("the '{0}' field is missing")]
    MissingField(&'static str),
    /// A known message whose fields do not have the right shape.
    #[error("bad '{message}' message: {detail}")]
    BadShape {
        /// The message's name.
        message: &'static str,
        /// What the decoder said.
        detail: String,
    },
}

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

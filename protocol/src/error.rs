//! The decode errors every decoder in this crate returns.

use thiserror::Error;

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

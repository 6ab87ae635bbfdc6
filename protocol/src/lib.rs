//! ICOM/1, the wire protocol between the ICOM router and its clients.
//!
//! Sans-IO: message types, their MessagePack encoding, control-frame and
//! event-stream codecs, the readers that turn stream chunks into frames
//! and events ([`FrameBuffer`], [`EventBody`]), targets and their
//! resolution, limits and error codes.
//! No sockets, no runtime, no clock. `docs/PROTOCOL.md` is the contract.
//!
//! ```
//! use icom_protocol::{decode_control, encode_frame, split_frame, Control, Ping};
//!
//! let frame = encode_frame(&Control::Ping(Ping { nonce: 7 }));
//! let (body, used) = split_frame(&frame).unwrap().unwrap();
//! assert_eq!(used, frame.len());
//! assert_eq!(decode_control(body).unwrap(), Some(Control::Ping(Ping { nonce: 7 })));
//! ```
#![warn(missing_docs)]

mod codec;
mod codes;
mod credit;
mod error;
mod event;
mod glob;
mod message;
mod msgpack;
mod stream;
mod sync;
mod target;
mod validate;

pub use codec::{
    append_frame, decode_control, encode_frame, frame_len, split_frame, DecodeError,
    FRAME_HEADER_LEN, MAX_FRAME_LEN,
};
pub use codes::{AckCode, CloseCode, StreamCode};
pub use credit::StreamCredit;
pub use event::{
    Deliver, DeliverRef, Invalid, Send, SendDecodeError, SendRef, DEFAULT_MAX_EVENT_BYTES,
    DELIVER_OVERHEAD, NIL,
};
pub use glob::Glob;
pub use message::{
    Ack, AckError, Control, Forget, Hello, Limits, Persist, Ping, Pong, Presence, Replayed, Roster,
    RosterEntry, Welcome, Who, FEATURE_REPLACE, FEATURE_WHO, MAX_ROSTER_PAGE, PROTOCOL_VERSION,
};
pub use msgpack::MAX_DEPTH;
pub use stream::{EventBody, FrameBuffer, TooLong};
pub use sync::{lock, read, write};
pub use target::{Groups, Recipients, Target, TargetError, TargetRef};
pub use validate::{
    validate_event_name, validate_persist_id, validate_server_id, NameError, MAX_EVENT_NAME_LEN,
    MAX_PERSIST_ID_LEN, MAX_SERVER_ID_LEN,
};

/// The ALPN protocol id of ICOM/1.
pub const ALPN: &[u8] = b"icom/1";
/// The router's default UDP port.
pub const DEFAULT_PORT: u16 = 9090;
/// The fewest concurrent uni streams a router allows each client.
pub const MIN_CLIENT_STREAMS: u32 = 1024;
/// How long a client has to send `hello` after the handshake, in ms.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

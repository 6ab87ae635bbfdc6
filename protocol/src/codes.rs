//! Ack error codes, connection close codes and stream error codes
//! (docs/PROTOCOL.md §4), with their wire strings and numbers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a `send` or `forget` was not (fully) carried out: the `code` of an
/// ack's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// A named target is not connected and the send has neither `ttl_ms`
    /// nor `persist`; or `forget` of an unknown persist id.
    NotFound,
    /// The policy does not allow this sender, event, target or persistence.
    Forbidden,
    /// The encoded send exceeds `max_event_bytes`.
    TooLarge,
    /// The stream did not hold a valid `send`.
    Malformed,
    /// A recipient's outbound queue, or an offline server's stored queue, is full.
    Congested,
    /// An empty, too long or control-character name; an empty `servers`
    /// list; an unknown group; id 0; `ttl_ms` 0.
    Invalid,
    /// In a cluster: a recipient, or part of a broadcast, is on another
    /// router and this router cannot reach the cluster right now (what
    /// could be delivered on this router was); or the cluster's shared
    /// store did not confirm a persistent or ttl write in time (it may
    /// still have been stored).
    Unreachable,
    /// The router cannot take this kind of send in its present mode.
    /// Nothing was stored or delivered. (No router of this revision sends
    /// it.)
    Unsupported,
    /// A code this version does not know (sent by a newer router).
    Unknown,
}

impl AckCode {
    /// Every code this version knows, in the order of docs/PROTOCOL.md §4.
    pub const ALL: [AckCode; 8] = [
        AckCode::NotFound,
        AckCode::Forbidden,
        AckCode::TooLarge,
        AckCode::Malformed,
        AckCode::Congested,
        AckCode::Invalid,
        AckCode::Unreachable,
        AckCode::Unsupported,
    ];

    /// The wire string of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::NotFound => "not_found",
            AckCode::Forbidden => "forbidden",
            AckCode::TooLarge => "too_large",
            AckCode::Malformed => "malformed",
            AckCode::Congested => "congested",
            AckCode::Invalid => "invalid",
            AckCode::Unreachable => "unreachable",
            AckCode::Unsupported => "unsupported",
            AckCode::Unknown => "unknown",
        }
    }

    /// Parses a wire string; a string this version does not know gives
    /// [`AckCode::Unknown`].
    pub fn from_wire(s: &str) -> AckCode {
        AckCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(AckCode::Unknown)
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AckCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AckCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(AckCode::from_wire(&s))
    }
}

/// QUIC application error codes with which a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// A normal close.
    Normal = 0,
    /// A newer connection with the same identity took over.
    Replaced = 1,
    /// The certificate's subject does not hold exactly one valid CN.
    BadIdentity = 2,
    /// The peer broke the protocol.
    Protocol = 3,
    /// The router is shutting down.
    Shutdown = 4,
    /// The peer's certificate was revoked.
    Revoked = 5,
    /// The identity is connected already, and the client's `hello` asked
    /// not to replace it (`replace: false`).
    InUse = 7,
}

impl CloseCode {
    /// Every close code, by number.
    pub const ALL: [CloseCode; 7] = [
        CloseCode::Normal,
        CloseCode::Replaced,
        CloseCode::BadIdentity,
        CloseCode::Protocol,
        CloseCode::Shutdown,
        CloseCode::Revoked,
        CloseCode::InUse,
    ];

    /// The code's number on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code for a number, if it is one of ours.
    pub fn from_code(code: u64) -> Option<CloseCode> {
        CloseCode::ALL
            .into_iter()
            .find(|c| u64::from(c.code()) == code)
    }

    /// The code's name, upper case as in the spec; also the close reason.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCode::Normal => "NORMAL",
            CloseCode::Replaced => "REPLACED",
            CloseCode::BadIdentity => "BAD_IDENTITY",
            CloseCode::Protocol => "PROTOCOL",
            CloseCode::Shutdown => "SHUTDOWN",
            CloseCode::Revoked => "REVOKED",
            CloseCode::InUse => "IN_USE",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// QUIC stream error codes (STOP_SENDING / RESET_STREAM) on one event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum StreamCode {
    /// The event exceeded `max_event_bytes`.
    TooLarge = 6,
    /// The router holds as many bytes of the client's unfinished event
    /// streams as it takes (`limits.partial_bytes`).
    Congested = 8,
}

impl StreamCode {
    /// The code's number on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_codes_round_trip() {
        for code in AckCode::ALL {
            assert_eq!(AckCode::from_wire(code.as_str()), code);
            let bytes = rmp_serde::to_vec(&code).unwrap();
            assert_eq!(rmp_serde::from_slice::<AckCode>(&bytes).unwrap(), code);
        }
        assert_eq!(AckCode::from_wire("shiny_new"), AckCode::Unknown);
    }

    #[test]
    fn close_codes_are_numbered_as_specified() {
        let numbers: Vec<u32> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4, 5, 7]);
        assert_eq!(CloseCode::from_code(5), Some(CloseCode::Revoked));
        assert_eq!(CloseCode::from_code(6), None, "6 is a stream code");
        assert_eq!(CloseCode::from_code(7), Some(CloseCode::InUse));
        assert_eq!(StreamCode::TooLarge.code(), 6);
        assert_eq!(StreamCode::Congested.code(), 8);
    }
}

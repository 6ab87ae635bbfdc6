//! Certificate serial numbers: random when minted, printed and parsed as hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A certificate serial number.
///
/// Held as the big-endian magnitude without leading zero bytes, the way it is
/// compared against a CRL. Shown (and parsed, by [`FromStr`]) as lowercase hex
/// without separators, e.g. `5f0c3a…` (32 digits for the serials we mint);
/// parsing also accepts upper case and `:` separators, as `openssl` prints
/// them. Serialized to JSON as that hex string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

/// Why a string is not a serial number.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{input}` is not a serial number (expected hex digits, e.g. 4f1c09…)")]
pub struct SerialParseError {
    /// The string that was refused.
    pub input: String,
}

impl Serial {
    /// A fresh random serial: 16 bytes from the operating system's generator,
    /// the top bit cleared (serials are positive) and the next one set, so that
    /// it always encodes as exactly 16 bytes (126 random bits).
    pub fn random() -> Self {
        let mut bytes: [u8; 16] = rand::random();
        bytes[0] = (bytes[0] & 0x7f) | 0x40;
        Self(bytes.to_vec())
    }

    /// A serial from its big-endian bytes; leading zero bytes are dropped.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        Self(bytes[start..].to_vec())
    }

    /// The big-endian magnitude, without leading zero bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("00");
        }
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

impl FromStr for Serial {
    type Err = SerialParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = || SerialParseError {
            input: s.to_owned(),
        };
        let digits: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
        if digits.is_empty() || digits.len() > 80 {
            return Err(refuse());
        }
        let nibbles = digits
            .iter()
            .map(|&b| char::from(b).to_digit(16).ok_or_else(refuse))
            .collect::<Result<Vec<u32>, _>>()?;
        // An odd count has an implicit leading zero nibble.
        let mut bytes = Vec::with_capacity(nibbles.len() / 2 + 1);
        let mut iter = nibbles.iter().copied();
        if nibbles.len() % 2 == 1 {
            bytes.push(nibble_pair(0, iter.next().unwrap_or(0)));
        }
        while let (Some(hi), Some(lo)) = (iter.next(), iter.next()) {
            bytes.push(nibble_pair(hi, lo));
        }
        Ok(Self::from_bytes(&bytes))
    }
}

impl Serialize for Serial {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One byte from two hex digit values (each below 16, as `to_digit(16)` gives).
fn nibble_pair(hi: u32, lo: u32) -> u8 {
    // Both are below 16, so the sum is below 256 and the cast is exact.
    ((hi << 4) | lo) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serials_are_16_positive_bytes_and_differ() {
        let a = Serial::random();
        let b = Serial::random();
        assert_eq!(a.as_bytes().len(), 16);
        assert_eq!(a.as_bytes()[0] & 0x80, 0, "top bit must be clear");
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
    }

    #[test]
    fn hex_round_trips_and_accepts_openssl_style() {
        let s = Serial::random();
        assert_eq!(s.to_string().parse::<Serial>().unwrap(), s);
        let colons = s
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.parse::<Serial>().unwrap(), s);
        assert_eq!("0abc".parse::<Serial>().unwrap().as_bytes(), &[0x0a, 0xbc]);
        assert_eq!("abc".parse::<Serial>().unwrap().as_bytes(), &[0x0a, 0xbc]);
        assert_eq!("000102".parse::<Serial>().unwrap().as_bytes(), &[1, 2]);
    }

    #[test]
    fn non_hex_is_refused() {
        for bad in ["", "xyz", "12 34", "dev-01", ":"] {
            assert!(bad.parse::<Serial>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn json_is_a_hex_string() {
        let s = Serial::from_bytes(&[0x4f, 0x01]);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"4f01\"");
        let back: Serial = serde_json::from_str("\"4f01\"").unwrap();
        assert_eq!(back, s);
    }
}

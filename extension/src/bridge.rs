//! The JSON bridge between SQF and the wire: JSON text that SQF's `toJSON`
//! wrote becomes one MessagePack value for an event's `data`, and the
//! MessagePack of a delivery becomes JSON text for SQF's `fromJSON`.
//!
//! What crosses, and what happens at the edges:
//! - null, booleans, strings (any Unicode, quotes and control characters
//!   escaped), arrays and maps round-trip exactly.
//! - Integers travel as MessagePack integers and come back as exact JSON
//!   integers. SQF numbers are 32-bit floats, so `fromJSON` rounds an integer
//!   above 2^24 (16,777,216) to the nearest float: pass ids, money and other
//!   large integers as strings (every id ICOM hands to SQF is a string).
//! - Floats travel as 64-bit floats. NaN and infinities, which JSON cannot
//!   write, come back as null.
//! - From other clients only: MessagePack binary becomes an array of byte
//!   values, extension types become null, and a map key that is not a
//!   string becomes its JSON text (`1` → `"1"`). Such a key's text may be no
//!   longer than [`MAX_KEY_TEXT`] (4 KiB): each level of keys nested in
//!   keys escapes the text inside again, which would otherwise double it
//!   per level (the json_bridge fuzz target found 30 such levels taking
//!   minutes and gigabytes).
//! - Nesting deeper than [`Bounds::max_depth`] and text or bytes larger
//!   than [`Bounds::max_bytes`] are refused with a readable error.

use std::fmt::Write as _;

use serde_json::Value;
use thiserror::Error;

/// The longest text a map key that is not a string may render to.
pub(crate) const MAX_KEY_TEXT: usize = 4096;

/// The bounds a conversion enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// The deepest nesting of arrays and maps (the top level is depth 1).
    pub(crate) max_depth: usize,
    /// The largest input, in bytes, of either direction.
    pub(crate) max_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            max_depth: 32,
            max_bytes: icom_protocol::DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// Why a payload could not cross the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum BridgeError {
    /// The text is not valid JSON.
    #[error("data is not valid JSON ({0}); build it with toJSON")]
    Json(String),
    /// Arrays and maps are nested deeper than the bound.
    #[error("data is nested deeper than {max} levels")]
    TooDeep {
        /// The bound.
        max: usize,
    },
    /// The input is larger than the bound.
    #[error("data is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// The input's size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes are not exactly one well-formed MessagePack value.
    #[error("payload is not valid MessagePack: {0}")]
    MsgPack(&'static str),
}

/// Converts JSON text (as `toJSON` writes it) to one MessagePack value. An
/// empty (or all-blank) text is null.
///
/// # Errors
/// [`BridgeError::TooLarge`], [`BridgeError::Json`] or [`BridgeError::TooDeep`].
pub(crate) fn json_to_msgpack(text: &str, bounds: Bounds) -> Result<Vec<u8>, BridgeError> {
    if text.len() > bounds.max_bytes {
        return Err(BridgeError::TooLarge {
            size: text.len(),
            max: bounds.max_bytes,
        });
    }
    if text.trim().is_empty() {
        return Ok(vec![0xc0]);
    }
    // serde_json refuses nesting past 128 levels by itself, so the
    // recursion below is bounded before it starts.
    let value: Value = serde_json::from_str(text).map_err(|e| BridgeError::Json(e.to_string()))?;
    let mut out = Vec::with_capacity(text.len());
    write_value(&mut out, &value, 1, bounds.max_depth)?;
    Ok(out)
}

/// Converts one MessagePack value to JSON text that `fromJSON` reads.
///
/// # Errors
/// [`BridgeError::TooLarge`], [`BridgeError::MsgPack`] or [`BridgeError::TooDeep`].
pub(crate) fn msgpack_to_json(bytes: &[u8], bounds: Bounds) -> Result<String, BridgeError> {
    if bytes.len() > bounds.max_bytes {
        return Err(BridgeError::TooLarge {
            size: bytes.len(),
            max: bounds.max_bytes,
        });
    }
    let mut reader = Reader {
        buf: bytes,
        pos: 0,
        max_key: MAX_KEY_TEXT.min(bounds.max_bytes),
    };
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 4 + 8);
    reader.value(&mut out, 1, bounds.max_depth)?;
    if reader.pos != bytes.len() {
        return Err(BridgeError::MsgPack("trailing bytes after the value"));
    }
    Ok(out)
}

/// Writes a string as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn write_value(
    out: &mut Vec<u8>,
    value: &Value,
    depth: usize,
    max_depth: usize,
) -> Result<(), BridgeError> {
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                write_uint(out, u);
            } else if let Some(i) = n.as_i64() {
                write_int(out, i);
            } else {
                out.push(0xcb);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_be_bytes());
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            if depth > max_depth {
                return Err(BridgeError::TooDeep { max: max_depth });
            }
            write_len(out, items.len(), [0x90, 0xdc, 0xdd]);
            for item in items {
                write_value(out, item, depth + 1, max_depth)?;
            }
        }
        Value::Object(map) => {
            if depth > max_depth {
                return Err(BridgeError::TooDeep { max: max_depth });
            }
            write_len(out, map.len(), [0x80, 0xde, 0xdf]);
            for (key, item) in map {
                write_str(out, key);
                write_value(out, item, depth + 1, max_depth)?;
            }
        }
    }
    Ok(())
}

/// Writes a container header: `[fix marker, 16-bit marker, 32-bit marker]`.
/// Inputs are bounded far below 4 GiB, so a length always fits 32 bits.
fn write_len(out: &mut Vec<u8>, len: usize, markers: [u8; 3]) {
    match u32::try_from(len).unwrap_or(u32::MAX) {
        n @ 0..=15 => out.push(markers[0] | n as u8),
        n @ 16..=0xffff => {
            out.push(markers[1]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(markers[2]);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
    match n {
        0..=31 => out.push(0xa0 | n as u8),
        32..=0xff => out.extend_from_slice(&[0xd9, n as u8]),
        0x100..=0xffff => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out.extend_from_slice(s.as_bytes());
}

fn write_uint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0x7f => out.push(v as u8),
        0x80..=0xff => out.extend_from_slice(&[0xcc, v as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        }
        _ => {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// Writes a negative integer (non-negative ones go through [`write_uint`]).
fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A cursor over MessagePack that writes JSON as it reads.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The longest text a non-string map key may render to.
    max_key: usize,
}

const TRUNCATED: BridgeError = BridgeError::MsgPack("truncated");

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BridgeError> {
        let end = self.pos.checked_add(n).ok_or(TRUNCATED)?;
        let s = self.buf.get(self.pos..end).ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, BridgeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, BridgeError> {
        usize::try_from(self.be(n)?).map_err(|_| TRUNCATED)
    }

    /// Reads one value and writes its JSON. `depth` is the level the value
    /// sits at; containers may only open while it is within the bound.
    fn value(&mut self, out: &mut String, depth: usize, max: usize) -> Result<(), BridgeError> {
        let m = self.take(1)?[0];
        match m {
            0x00..=0x7f => push_num(out, m),
            0xe0..=0xff => push_num(out, m as i8),
            0xc0 => out.push_str("null"),
            0xc2 => out.push_str("false"),
            0xc3 => out.push_str("true"),
            0xcc => push_num(out, self.be(1)?),
            0xcd => push_num(out, self.be(2)?),
            0xce => push_num(out, self.be(4)?),
            0xcf => push_num(out, self.be(8)?),
            0xd0 => push_num(out, self.be(1)? as u8 as i8),
            0xd1 => push_num(out, self.be(2)? as u16 as i16),
            0xd2 => push_num(out, self.be(4)? as u32 as i32),
            0xd3 => push_num(out, self.be(8)? as i64),
            0xca => push_float(out, f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => push_float(out, f64::from_bits(self.be(8)?)),
            0xa0..=0xbf => self.string(out, usize::from(m & 0x1f))?,
            // str8, str16, str32: a 1-, 2- or 4-byte length.
            0xd9..=0xdb => {
                let n = self.len(1 << (m - 0xd9))?;
                self.string(out, n)?;
            }
            0xc4..=0xc6 => {
                let n = self.len(1 << (m - 0xc4))?;
                let bytes = self.take(n)?;
                out.push('[');
                for (i, b) in bytes.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_num(out, *b);
                }
                out.push(']');
            }
            0xd4..=0xd8 => {
                // fixext 1, 2, 4, 8, 16: a type byte and the data.
                self.take(1 + (1 << (m - 0xd4)))?;
                out.push_str("null");
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (m - 0xc7))?;
                self.take(n.checked_add(1).ok_or(TRUNCATED)?)?;
                out.push_str("null");
            }
            0x90..=0x9f => self.array(out, usize::from(m & 0x0f), depth, max)?,
            // array16, array32: a 2- or 4-byte length.
            0xdc..=0xdd => {
                let n = self.len(2 << (m - 0xdc))?;
                self.array(out, n, depth, max)?;
            }
            0x80..=0x8f => self.map(out, usize::from(m & 0x0f), depth, max)?,
            // map16, map32: a 2- or 4-byte length.
            0xde..=0xdf => {
                let n = self.len(2 << (m - 0xde))?;
                self.map(out, n, depth, max)?;
            }
            0xc1 => return Err(BridgeError::MsgPack("the reserved marker 0xc1")),
        }
        Ok(())
    }

    fn string(&mut self, out: &mut String, n: usize) -> Result<(), BridgeError> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| BridgeError::MsgPack("invalid UTF-8"))?;
        push_json_str(out, s);
        Ok(())
    }

    fn array(
        &mut self,
        out: &mut String,
        n: usize,
        depth: usize,
        max: usize,
    ) -> Result<(), BridgeError> {
        if depth > max {
            return Err(BridgeError::TooDeep { max });
        }
        // Each item takes at least a byte: a longer claim is truncation.
        if n > self.buf.len() - self.pos {
            return Err(TRUNCATED);
        }
        out.push('[');
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            self.value(out, depth + 1, max)?;
        }
        out.push(']');
        Ok(())
    }

    fn map(
        &mut self,
        out: &mut String,
        n: usize,
        depth: usize,
        max: usize,
    ) -> Result<(), BridgeError> {
        if depth > max {
            return Err(BridgeError::TooDeep { max });
        }
        if n.saturating_mul(2) > self.buf.len() - self.pos {
            return Err(TRUNCATED);
        }
        out.push('{');
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            self.key(out, depth, max)?;
            out.push(':');
            self.value(out, depth + 1, max)?;
        }
        out.push('}');
        Ok(())
    }

    /// A map key: strings as they are, anything else as its JSON text.
    fn key(&mut self, out: &mut String, depth: usize, max: usize) -> Result<(), BridgeError> {
        let at_str = matches!(self.buf.get(self.pos), Some(0xa0..=0xbf | 0xd9..=0xdb));
        if at_str {
            return self.value(out, depth + 1, max);
        }
        let mut text = String::new();
        self.value(&mut text, depth + 1, max)?;
        if text.len() > self.max_key {
            return Err(BridgeError::TooLarge {
                size: text.len(),
                max: self.max_key,
            });
        }
        push_json_str(out, &text);
        Ok(())
    }
}

fn push_num(out: &mut String, n: impl std::fmt::Display) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

fn push_float(out: &mut String, f: f64) {
    if f.is_finite() {
        // serde_json writes the shortest text that reads back as the same
        // float, and always with a fraction or exponent.
        match serde_json::to_string(&f) {
            Ok(s) => out.push_str(&s),
            Err(_) => out.push_str("null"),
        }
    } else {
        out.push_str("null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let bytes = json_to_msgpack(text, Bounds::default()).unwrap();
        msgpack_to_json(&bytes, Bounds::default()).unwrap()
    }

    #[test]
    fn keys_nested_in_keys_cannot_blow_up() {
        // Found by the json_bridge fuzz target: maps whose only key is a
        // map, 30 deep. Each level escapes the text of the one inside, so
        // the text doubles per level; the bound on a key's text stops it.
        // (20 levels here: without the bound, a text of some megabytes.)
        let mut bytes = vec![0x81u8; 20];
        bytes.push(0xa1);
        bytes.push(b'"');
        bytes.extend(std::iter::repeat_n(0xc0u8, 20));
        let bounds = Bounds {
            max_depth: 64,
            ..Bounds::default()
        };
        let err = msgpack_to_json(&bytes, bounds).unwrap_err();
        assert!(
            matches!(
                err,
                BridgeError::TooLarge {
                    max: MAX_KEY_TEXT,
                    ..
                }
            ),
            "{err}"
        );
        // A few levels are fine, and exact.
        let shallow = [0x81, 0x81, 0xa1, b'k', 0x01, 0x02];
        assert_eq!(
            msgpack_to_json(&shallow, bounds).unwrap(),
            r#"{"{\"k\":1}":2}"#
        );
    }

    #[test]
    fn long_numbers_keep_their_float_exactly() {
        // Found by the json_bridge fuzz target: 40 digits parse to the
        // nearest float (serde_json's float_roundtrip), which is written
        // back as the shortest text that reads as that same float.
        let text = "3333333002333330001330020183804578380457";
        let back = round_trip(text);
        let a: f64 = text.parse().unwrap();
        let b: f64 = back.parse().unwrap();
        assert_eq!(a.to_bits(), b.to_bits(), "{back}");
    }

    #[test]
    fn values_round_trip() {
        for text in [
            r#"null"#,
            r#"true"#,
            r#"[false,0,-1,-32,-33,-129,-40000,-3000000000,127,128,255,256,65536,4294967296]"#,
            r#"18446744073709551615"#,
            r#"-9223372036854775808"#,
            r#"[1.5,-0.25,1e+300,1234.5]"#,
            r#""he said \"hi\"\\ \n\t\u0001 ✓ 東京 🚁""#,
            r#"{"coords":[1234.5,5678.9,0.0],"nested":{"deep":[[[]],{}]},"s":""}"#,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            let got: Value = serde_json::from_str(&round_trip(text)).unwrap();
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn every_length_width_round_trips() {
        // Strings, arrays and maps with 8-, 16- and 32-bit lengths (str8,
        // str16, str32, array16, array32, map16, map32).
        let bounds = Bounds {
            max_depth: 32,
            max_bytes: 16 << 20,
        };
        let items = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
        let pairs = |n: usize| (0..n).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>();
        let mut texts = Vec::new();
        for n in [200, 300, 70_000] {
            texts.push(format!("\"{}\"", "x".repeat(n)));
        }
        for n in [20, 70_000] {
            texts.push(format!("[{}]", items(n).join(",")));
            texts.push(format!("{{{}}}", pairs(n).join(",")));
        }
        for text in texts {
            let bytes = json_to_msgpack(&text, bounds).unwrap();
            let back = msgpack_to_json(&bytes, bounds).unwrap();
            let expected: Value = serde_json::from_str(&text).unwrap();
            let got: Value = serde_json::from_str(&back).unwrap();
            assert_eq!(got, expected, "{} bytes of JSON", text.len());
        }
    }

    #[test]
    fn big_integers_stay_exact_in_the_text() {
        // SQF would round 16777217 when it reads it; the text is exact.
        assert_eq!(
            round_trip("[16777217,1732233600000001]"),
            "[16777217,1732233600000001]"
        );
    }

    #[test]
    fn encoding_matches_rmp_serde() {
        let text = r#"{"a":[1,-5,300,-300,1.5,"x",null,true],"b":{"c":"d"}}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let ours = json_to_msgpack(text, Bounds::default()).unwrap();
        let theirs: Value = rmp_serde::from_slice(&ours).unwrap();
        assert_eq!(theirs, value);
        // and rmp_serde's encoding reads back through ours
        let bytes = rmp_serde::to_vec(&value).unwrap();
        let back: Value =
            serde_json::from_str(&msgpack_to_json(&bytes, Bounds::default()).unwrap()).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn blank_text_is_null() {
        assert_eq!(json_to_msgpack("", Bounds::default()).unwrap(), vec![0xc0]);
        assert_eq!(
            json_to_msgpack("  ", Bounds::default()).unwrap(),
            vec![0xc0]
        );
    }

    #[test]
    fn bad_json_says_so() {
        let err = json_to_msgpack("{'a':1}", Bounds::default()).unwrap_err();
        assert!(matches!(err, BridgeError::Json(_)));
        assert!(err.to_string().contains("toJSON"), "{err}");
        assert!(json_to_msgpack("[1,2", Bounds::default()).is_err());
        assert!(json_to_msgpack("1 2", Bounds::default()).is_err());
    }

    #[test]
    fn depth_is_bounded_both_ways() {
        let bounds = Bounds {
            max_depth: 4,
            max_bytes: 1 << 20,
        };
        assert!(json_to_msgpack("[[[[1]]]]", bounds).is_ok());
        assert_eq!(
            json_to_msgpack("[[[[[1]]]]]", bounds),
            Err(BridgeError::TooDeep { max: 4 })
        );
        assert_eq!(
            json_to_msgpack(r#"{"a":{"b":{"c":{"d":{}}}}}"#, bounds),
            Err(BridgeError::TooDeep { max: 4 })
        );
        let mut deep = vec![0x91u8; 100_000];
        deep.push(0xc0);
        assert_eq!(
            msgpack_to_json(&deep, Bounds::default()),
            Err(BridgeError::TooDeep { max: 32 })
        );
        // serde_json's own limit stops absurd nesting before ours.
        let text = "[".repeat(10_000);
        assert!(json_to_msgpack(&text, Bounds::default()).is_err());
    }

    #[test]
    fn size_is_bounded_both_ways() {
        let bounds = Bounds {
            max_depth: 8,
            max_bytes: 10,
        };
        assert!(matches!(
            json_to_msgpack(r#""01234567890""#, bounds),
            Err(BridgeError::TooLarge { size: 13, max: 10 })
        ));
        assert!(matches!(
            msgpack_to_json(&[0xc0; 11], bounds),
            Err(BridgeError::TooLarge { .. })
        ));
    }

    #[test]
    fn foreign_msgpack_is_rendered_or_refused() {
        let b = Bounds::default();
        // bin8, fixext1, non-string keys, f32, NaN
        assert_eq!(msgpack_to_json(&[0xc4, 2, 1, 255], b).unwrap(), "[1,255]");
        assert_eq!(msgpack_to_json(&[0xd4, 1, 9], b).unwrap(), "null");
        assert_eq!(
            msgpack_to_json(&[0x82, 0x01, 0xc3, 0xc0, 0xc2], b).unwrap(),
            r#"{"1":true,"null":false}"#
        );
        let mut f32 = vec![0xca];
        f32.extend_from_slice(&1.5f32.to_bits().to_be_bytes());
        assert_eq!(msgpack_to_json(&f32, b).unwrap(), "1.5");
        let mut nan = vec![0xcb];
        nan.extend_from_slice(&f64::NAN.to_bits().to_be_bytes());
        assert_eq!(msgpack_to_json(&nan, b).unwrap(), "null");
        for bad in [
            &[0xc1][..],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            &[0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0xa2, 0xff, 0xfe],
            &[0x92, 0x01],
            &[0xc0, 0xc0],
            &[],
        ] {
            assert!(msgpack_to_json(bad, b).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn escaping_matches_serde_json() {
        for s in ["plain", "q\"b\\", "\u{1}\u{1f}\u{7f}", "tab\tnl\n", "ünï ✓"] {
            let mut ours = String::new();
            push_json_str(&mut ours, s);
            let back: String = serde_json::from_str(&ours).unwrap();
            assert_eq!(back, s);
        }
    }
}

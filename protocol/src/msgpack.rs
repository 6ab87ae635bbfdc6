//! A bounded MessagePack reader and a minimal writer, for the hand-rolled
//! parts of the codec: the event streams, whose `data` stays raw bytes.
//!
//! The reader never allocates: every length is checked against the bytes
//! that remain before it is used, and nesting is tracked on a small,
//! capped stack.

use crate::error::DecodeError;

/// Deepest nesting of arrays and maps accepted inside a message.
pub const MAX_DEPTH: usize = 64;

/// A cursor over one MessagePack buffer.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    /// Whether a string is next.
    pub(crate) fn at_str(&self) -> bool {
        matches!(self.peek(), Ok(0xa0..=0xbf | 0xd9..=0xdb))
    }

    /// Consumes a nil if one is next; tells whether it did.
    pub(crate) fn eat_nil(&mut self) -> Result<bool, DecodeError> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    pub(crate) fn map_len(&mut self) -> Result<usize, DecodeError> {
        let n = self.map_header()?;
        self.check_items(n, 2)
    }

    /// A map's length, not checked against the bytes that remain: for a
    /// message's fields, read one by one, so that a prefix still yields the
    /// fields it holds. Nothing may be sized by it.
    pub(crate) fn fields_len(&mut self) -> Result<u64, DecodeError> {
        self.map_header()
    }

    fn map_header(&mut self) -> Result<u64, DecodeError> {
        let m = self.byte()?;
        Ok(match m {
            0x80..=0x8f => u64::from(m & 0x0f),
            0xde => self.be(2)?,
            0xdf => self.be(4)?,
            _ => return Err(self.wrong(m, "map")),
        })
    }

    pub(crate) fn array_len(&mut self) -> Result<usize, DecodeError> {
        let m = self.byte()?;
        let n = match m {
            0x90..=0x9f => u64::from(m & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return Err(self.wrong(m, "array")),
        };
        self.check_items(n, 1)
    }

    /// Every item takes at least one byte: a count larger than what remains
    /// is truncated input, found before anything is sized by it.
    fn check_items(&self, n: u64, per_item: u64) -> Result<usize, DecodeError> {
        if n.saturating_mul(per_item) > self.remaining() as u64 {
            return Err(DecodeError::Truncated);
        }
        usize::try_from(n).map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.str_bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// A string's bytes, not checked for UTF-8: for a map key that is only
    /// compared with known names (an unknown one is skipped whatever its
    /// bytes).
    pub(crate) fn str_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let m = self.byte()?;
        let n = match m {
            0xa0..=0xbf => u64::from(m & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return Err(self.wrong(m, "string")),
        };
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        self.take(n)
    }

    pub(crate) fn uint(&mut self) -> Result<u64, DecodeError> {
        let m = self.byte()?;
        let v: i128 = match m {
            0x00..=0x7f => i128::from(m),
            0xe0..=0xff => i128::from(m as i8),
            0xcc => i128::from(self.be(1)?),
            0xcd => i128::from(self.be(2)?),
            0xce => i128::from(self.be(4)?),
            0xcf => i128::from(self.be(8)?),
            0xd0 => i128::from(self.be(1)? as u8 as i8),
            0xd1 => i128::from(self.be(2)? as u16 as i16),
            0xd2 => i128::from(self.be(4)? as u32 as i32),
            0xd3 => i128::from(self.be(8)? as i64),
            _ => return Err(self.wrong(m, "unsigned integer")),
        };
        u64::try_from(v).map_err(|_| DecodeError::WrongType {
            expected: "unsigned integer",
            found: "negative integer",
        })
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.uint()?).map_err(|_| DecodeError::WrongType {
            expected: "32-bit unsigned integer",
            found: "larger integer",
        })
    }

    /// Skips one whole value, however nested (up to [`MAX_DEPTH`]), and
    /// returns the byte range it took.
    pub(crate) fn skip_value(&mut self) -> Result<std::ops::Range<usize>, DecodeError> {
        let start = self.pos;
        if !matches!(self.peek()?, 0x80..=0x9f | 0xdc..=0xdf) {
            // Not a map or an array: no stack to set up.
            self.skip_scalar()?;
            return Ok(start..self.pos);
        }
        // Items still to read at each open level; the bottom is the value itself.
        let mut stack = [0usize; MAX_DEPTH + 1];
        let mut depth = 0usize;
        stack[0] = 1;
        loop {
            if stack[depth] == 0 {
                if depth == 0 {
                    break;
                }
                depth -= 1;
                continue;
            }
            stack[depth] -= 1;
            let m = self.peek()?;
            let items = match m {
                0x80..=0x8f | 0xde | 0xdf => self.map_len()? * 2,
                0x90..=0x9f | 0xdc | 0xdd => self.array_len()?,
                _ => {
                    self.skip_scalar()?;
                    0
                }
            };
            if items > 0 {
                if depth == MAX_DEPTH {
                    return Err(DecodeError::TooDeep { max: MAX_DEPTH });
                }
                depth += 1;
                stack[depth] = items;
            }
        }
        Ok(start..self.pos)
    }

    fn skip_scalar(&mut self) -> Result<(), DecodeError> {
        let m = self.byte()?;
        let n: u64 = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0xa0..=0xbf => u64::from(m & 0x1f),
            0xc4 | 0xd9 => self.be(1)?,
            0xc5 | 0xda => self.be(2)?,
            0xc6 | 0xdb => self.be(4)?,
            0xc7 => self.be(1)? + 1,
            0xc8 => self.be(2)? + 1,
            0xc9 => self.be(4)? + 1,
            0xca => 4,
            0xcb => 8,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xce | 0xd2 => 4,
            0xcf | 0xd3 => 8,
            0xd4 => 2,
            0xd5 => 3,
            0xd6 => 5,
            0xd7 => 9,
            0xd8 => 17,
            _ => return Err(self.wrong(m, "a MessagePack value")),
        };
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        self.take(n)?;
        Ok(())
    }

    fn wrong(&self, marker: u8, expected: &'static str) -> DecodeError {
        DecodeError::WrongType {
            expected,
            found: kind_of(marker),
        }
    }
}

fn kind_of(marker: u8) -> &'static str {
    match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => "integer",
        0x80..=0x8f | 0xde | 0xdf => "map",
        0x90..=0x9f | 0xdc | 0xdd => "array",
        0xa0..=0xbf | 0xd9..=0xdb => "string",
        0xc0 => "nil",
        0xc2 | 0xc3 => "boolean",
        0xc4..=0xc6 => "binary",
        0xca | 0xcb => "float",
        0xc7..=0xc9 | 0xd4..=0xd8 => "extension",
        _ => "an invalid marker (0xc1)",
    }
}

/// Appends MessagePack to a buffer. Writing to a `Vec` cannot fail, so none
/// of these return errors.
pub(crate) mod write {
    pub(crate) fn map_len(buf: &mut Vec<u8>, n: u32) {
        match n {
            0..=15 => buf.push(0x80 | n as u8),
            16..=0xffff => {
                buf.push(0xde);
                buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                buf.push(0xdf);
                buf.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    pub(crate) fn array_len(buf: &mut Vec<u8>, n: u32) {
        match n {
            0..=15 => buf.push(0x90 | n as u8),
            16..=0xffff => {
                buf.push(0xdc);
                buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                buf.push(0xdd);
                buf.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    pub(crate) fn str(buf: &mut Vec<u8>, s: &str) {
        let n = s.len();
        match n {
            0..=31 => buf.push(0xa0 | n as u8),
            32..=0xff => buf.extend_from_slice(&[0xd9, n as u8]),
            0x100..=0xffff => {
                buf.push(0xda);
                buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                buf.push(0xdb);
                // Strings here are names and ids, bounded far below 4 GiB.
                buf.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        buf.extend_from_slice(s.as_bytes());
    }

    pub(crate) fn uint(buf: &mut Vec<u8>, v: u64) {
        match v {
            0..=0x7f => buf.push(v as u8),
            0x80..=0xff => buf.extend_from_slice(&[0xcc, v as u8]),
            0x100..=0xffff => {
                buf.push(0xcd);
                buf.extend_from_slice(&(v as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                buf.push(0xce);
                buf.extend_from_slice(&(v as u32).to_be_bytes());
            }
            _ => {
                buf.push(0xcf);
                buf.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    pub(crate) fn str_field(buf: &mut Vec<u8>, key: &str, value: &str) {
        str(buf, key);
        str(buf, value);
    }

    pub(crate) fn uint_field(buf: &mut Vec<u8>, key: &str, value: u64) {
        str(buf, key);
        uint(buf, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_covers_every_value_kind() {
        let value = serde_json::json!({
            "a": [1, -1, 300, -300, 70000, 5_000_000_000u64, -5_000_000_000i64, 1.5, true, null],
            "s": "x".repeat(40), "long": "y".repeat(300),
            "nested": {"m": [[[]]], "e": {}}
        });
        let mut bytes = rmp_serde::to_vec(&value).unwrap();
        bytes.extend_from_slice(&[0xc4, 2, 9, 9]); // bin8 after it
        let mut r = Reader::new(&bytes);
        let range = r.skip_value().unwrap();
        assert_eq!(range, 0..bytes.len() - 4);
        assert_eq!(r.skip_value().unwrap(), bytes.len() - 4..bytes.len());
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn skip_refuses_deep_nesting_without_recursion() {
        let mut bytes = vec![0x91; 100_000];
        bytes.push(0xc0);
        assert_eq!(
            Reader::new(&bytes).skip_value(),
            Err(DecodeError::TooDeep { max: MAX_DEPTH })
        );
        let mut ok = vec![0x91; MAX_DEPTH];
        ok.push(0xc0);
        assert!(Reader::new(&ok).skip_value().is_ok());
    }

    #[test]
    fn huge_claimed_lengths_are_truncation_not_allocation() {
        for bytes in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
            &[0xc6, 0xff, 0xff, 0xff, 0xff],
            &[0xc9, 0xff, 0xff, 0xff, 0xff, 1],
        ] {
            assert_eq!(Reader::new(bytes).skip_value(), Err(DecodeError::Truncated));
        }
        assert!(matches!(
            Reader::new(&[0xc1]).skip_value(),
            Err(DecodeError::WrongType { .. })
        ));
    }

    #[test]
    fn writer_matches_rmp() {
        for v in [
            0u64,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            write::uint(&mut ours, v);
            assert_eq!(ours, rmp_serde::to_vec(&v).unwrap(), "{v}");
            assert_eq!(Reader::new(&ours).uint().unwrap(), v);
        }
        for n in [0usize, 31, 32, 255, 256, 70000] {
            let s = "z".repeat(n);
            let mut ours = Vec::new();
            write::str(&mut ours, &s);
            assert_eq!(ours, rmp_serde::to_vec(&s).unwrap(), "{n}");
            assert_eq!(Reader::new(&ours).str().unwrap(), s);
        }
        for n in [0u32, 15, 16, 65535, 65536] {
            let mut ours = Vec::new();
            write::map_len(&mut ours, n);
            let mut theirs = Vec::new();
            rmp::encode::write_map_len(&mut theirs, n).unwrap();
            assert_eq!(ours, theirs);
            let mut ours = Vec::new();
            write::array_len(&mut ours, n);
            let mut theirs = Vec::new();
            rmp::encode::write_array_len(&mut theirs, n).unwrap();
            assert_eq!(ours, theirs);
        }
    }
}

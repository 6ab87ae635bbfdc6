//! A reader of binarised configs (`raP`, as in a `config.bin`), enough to
//! walk classes and read strings and arrays.

/// A class: its name and what it holds.
#[derive(Debug, Default)]
pub struct RapClass {
    pub name: String,
    pub entries: Vec<RapEntry>,
}

#[derive(Debug)]
pub enum RapEntry {
    Class(RapClass),
    Value(String, RapValue),
    Array(String, Vec<RapValue>),
    Other(String),
}

/// A value. The checks read strings; the others are kept for `Debug`.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub enum RapValue {
    Str(String),
    Float(f32),
    Int(i32),
    Array(Vec<RapValue>),
}

impl RapClass {
    pub fn classes(&self) -> impl Iterator<Item = &RapClass> {
        self.entries.iter().filter_map(|e| match e {
            RapEntry::Class(c) => Some(c),
            _ => None,
        })
    }

    pub fn class(&self, name: &str) -> Option<&RapClass> {
        self.classes().find(|c| c.name.eq_ignore_ascii_case(name))
    }

    pub fn has(&self, name: &str) -> bool {
        self.entries.iter().any(|e| match e {
            RapEntry::Class(c) => c.name.eq_ignore_ascii_case(name),
            RapEntry::Value(n, _) | RapEntry::Array(n, _) | RapEntry::Other(n) => {
                n.eq_ignore_ascii_case(name)
            }
        })
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        self.entries.iter().find_map(|e| match e {
            RapEntry::Value(n, RapValue::Str(s)) if n.eq_ignore_ascii_case(name) => {
                Some(s.as_str())
            }
            _ => None,
        })
    }

    pub fn strings(&self, name: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                RapEntry::Array(n, items) if n.eq_ignore_ascii_case(name) => Some(items),
                _ => None,
            })
            .flatten()
            .filter_map(|v| match v {
                RapValue::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Reads a whole binarised config; the root class has an empty name.
pub fn read(buf: &[u8]) -> Result<RapClass, String> {
    if buf.get(..4) != Some(b"\0raP") {
        return Err("no raP header".into());
    }
    let mut r = Reader { buf, pos: 16 };
    r.body(String::new(), 0)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.pos).ok_or("truncated")?;
        self.pos += 1;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.buf.get(self.pos..self.pos + 4).ok_or("truncated")?;
        self.pos += 4;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn cstring(&mut self) -> Result<String, String> {
        let rest = self.buf.get(self.pos..).ok_or("truncated")?;
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or("unterminated string")?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn compressed(&mut self) -> Result<u32, String> {
        let mut value = 0u32;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            value |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a compressed integer too long".into())
    }

    fn body(&mut self, name: String, depth: usize) -> Result<RapClass, String> {
        if depth > 64 {
            return Err("classes nested too deep".into());
        }
        let _parent = self.cstring()?;
        let count = self.compressed()?;
        let mut class = RapClass {
            name,
            entries: Vec::new(),
        };
        for _ in 0..count {
            let entry = match self.byte()? {
                0 => {
                    let name = self.cstring()?;
                    let offset = self.u32()? as usize;
                    let here = self.pos;
                    self.pos = offset;
                    let child = self.body(name, depth + 1)?;
                    self.pos = here;
                    RapEntry::Class(child)
                }
                1 => {
                    let kind = self.byte()?;
                    let name = self.cstring()?;
                    let value = self.scalar(kind)?;
                    RapEntry::Value(name, value)
                }
                2 => {
                    let name = self.cstring()?;
                    RapEntry::Array(name, self.array(0)?)
                }
                3 | 4 => RapEntry::Other(self.cstring()?),
                5 => {
                    self.u32()?;
                    let name = self.cstring()?;
                    RapEntry::Array(name, self.array(0)?)
                }
                other => {
                    return Err(format!(
                        "unknown entry type {other} at byte {}",
                        self.pos - 1
                    ))
                }
            };
            class.entries.push(entry);
        }
        Ok(class)
    }

    fn scalar(&mut self, kind: u8) -> Result<RapValue, String> {
        Ok(match kind {
            0 => RapValue::Str(self.cstring()?),
            1 => RapValue::Float(f32::from_bits(self.u32()?)),
            2 => RapValue::Int(self.u32()? as i32),
            other => return Err(format!("unknown value type {other}")),
        })
    }

    fn array(&mut self, depth: usize) -> Result<Vec<RapValue>, String> {
        if depth > 64 {
            return Err("arrays nested too deep".into());
        }
        let n = self.compressed()?;
        let mut items = Vec::new();
        for _ in 0..n {
            let kind = self.byte()?;
            items.push(if kind == 3 {
                RapValue::Array(self.array(depth + 1)?)
            } else {
                self.scalar(kind)?
            });
        }
        Ok(items)
    }
}

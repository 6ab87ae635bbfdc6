//! This router's copy of the cluster's shared store, built from the
//! JetStream stream in stream order, and the writes this router has in
//! flight. Pure: no I/O, so that each rule is tested alone.
//!
//! Subjects below `<prefix>.store.` (the stream holds nothing else):
//!
//! - `jip.<hex persist id>`: a persistent event; a newer one on the same
//!   subject replaces it (a rollup), an empty one deletes it;
//! - `q.<hex recipient>.<uid>`: one copy queued for an offline server; an
//!   empty one on the same subject deletes it (delivered);
//! - `sync.<router>`: a barrier; nothing to apply.
//!
//! A record's body is the store record of one router: a header length,
//! the header (MessagePack), the encoded `deliver`.

use std::collections::{BTreeMap, HashMap};

use icom_protocol::Groups;

use bytes::Bytes;

use crate::store::{decode_shared, due, expired, Due, Kind, StoreError, StoreLimits, Stored};

/// Lowercase hex of `s`'s bytes: any id as one subject token.
pub(super) fn token(s: &str) -> String {
    use std::fmt::Write as _;
    s.bytes()
        .fold(String::with_capacity(s.len() * 2), |mut t, b| {
            let _ = write!(t, "{b:02x}");
            t
        })
}

/// The subject tail of a persistent event.
pub(super) fn persistent_tail(persist_id: &str) -> String {
    format!("jip.{}", token(persist_id))
}

/// The subject tail of a queued copy.
pub(super) fn queued_tail(recipient: &str, uid: &str) -> String {
    format!("q.{}.{uid}", token(recipient))
}

/// What applying one message changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Applied {
    /// Nothing (a barrier, a deletion, a stale or unknown message).
    Nothing,
    /// A persistent event was stored.
    Persistent,
    /// A copy was queued for `recipient`.
    Queued { recipient: String },
}

/// The stored records, as of stream sequence [`Mirror::applied`].
#[derive(Debug, Default)]
pub(super) struct Mirror {
    applied: u64,
    persistent: BTreeMap<u64, Stored>,
    by_id: HashMap<String, u64>,
    queued: HashMap<String, BTreeMap<u64, Stored>>,
    queue_bytes: HashMap<String, usize>,
    /// Queued copies: subject tail → (recipient, seq), and back.
    by_tail: HashMap<String, (String, u64)>,
    tail_of: HashMap<u64, String>,
    total_bytes: usize,
}

impl Mirror {
    /// The last stream sequence applied.
    pub(super) fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies the message `seq` on subject tail `tail`. A message older
    /// than one applied is ignored (the stream is read in order; this
    /// guards a replay of the same messages).
    ///
    /// # Errors
    /// A record whose body does not decode (it is skipped).
    pub(super) fn apply(&mut self, seq: u64, tail: &str, body: &Bytes) -> Result<Applied, String> {
        if seq <= self.applied {
            return Ok(Applied::Nothing);
        }
        self.applied = seq;
        let mut parts = tail.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("jip"), Some(_), None) if body.is_empty() => {
                if let Some(old) = self.id_of_tail(tail) {
                    self.remove(old);
                }
                Ok(Applied::Nothing)
            }
            (Some("jip"), Some(_), None) => {
                let stored = decode_shared(body)?;
                let Kind::Persistent { persist_id, .. } = &stored.header.kind else {
                    return Err(format!("{tail}: not a persistent event"));
                };
                if let Some(old) = self.by_id.get(persist_id).copied() {
                    self.remove(old);
                }
                self.insert(seq, stored, tail);
                Ok(Applied::Persistent)
            }
            (Some("q"), Some(_), Some(_)) if body.is_empty() => {
                if let Some((_, old)) = self.by_tail.get(tail).cloned() {
                    self.remove(old);
                }
                Ok(Applied::Nothing)
            }
            (Some("q"), Some(_), Some(_)) => {
                let stored = decode_shared(body)?;
                let Kind::Queued { recipient } = &stored.header.kind else {
                    return Err(format!("{tail}: not a queued copy"));
                };
                let recipient = recipient.clone();
                if let Some((_, old)) = self.by_tail.get(tail).cloned() {
                    self.remove(old);
                }
                self.insert(seq, stored, tail);
                Ok(Applied::Queued { recipient })
            }
            _ => Ok(Applied::Nothing),
        }
    }

    fn id_of_tail(&self, tail: &str) -> Option<u64> {
        // The tail of a persistent event is a function of its id: find the
        // id whose tail this is among the stored ones.
        let hex = tail.strip_prefix("jip.")?;
        let id = unhex(hex)?;
        self.by_id.get(&id).copied()
    }

    fn insert(&mut self, seq: u64, s: Stored, tail: &str) {
        self.total_bytes += s.bytes();
        match &s.header.kind {
            Kind::Persistent { persist_id, .. } => {
                self.by_id.insert(persist_id.clone(), seq);
                self.persistent.insert(seq, s);
            }
            Kind::Queued { recipient } => {
                let r = recipient.clone();
                *self.queue_bytes.entry(r.clone()).or_default() += s.bytes();
                self.by_tail.insert(tail.to_owned(), (r.clone(), seq));
                self.tail_of.insert(seq, tail.to_owned());
                self.queued.entry(r).or_default().insert(seq, s);
            }
        }
    }

    fn remove(&mut self, seq: u64) {
        if let Some(s) = self.persistent.remove(&seq) {
            self.total_bytes -= s.bytes();
            if let Kind::Persistent { persist_id, .. } = &s.header.kind {
                if self.by_id.get(persist_id) == Some(&seq) {
                    self.by_id.remove(persist_id);
                }
            }
            return;
        }
        let Some(tail) = self.tail_of.remove(&seq) else {
            return;
        };
        let Some((recipient, _)) = self.by_tail.remove(&tail) else {
            return;
        };
        let Some(q) = self.queued.get_mut(&recipient) else {
            return;
        };
        if let Some(s) = q.remove(&seq) {
            self.total_bytes -= s.bytes();
            if let Some(b) = self.queue_bytes.get_mut(&recipient) {
                *b -= s.bytes();
            }
        }
        if q.is_empty() {
            self.queued.remove(&recipient);
            self.queue_bytes.remove(&recipient);
        }
    }

    /// Everything due to `server` at `now_ms`, in stored order.
    pub(super) fn due_for(&self, server: &str, groups: &Groups, now_ms: u64) -> Vec<Due> {
        due(
            &self.persistent,
            self.queued.get(server),
            server,
            groups,
            now_ms,
        )
    }

    /// The record `seq`, if stored.
    pub(super) fn get(&self, seq: u64) -> Option<&Stored> {
        self.persistent.get(&seq).or_else(|| {
            let tail = self.tail_of.get(&seq)?;
            let (recipient, _) = self.by_tail.get(tail)?;
            self.queued.get(recipient)?.get(&seq)
        })
    }

    /// The subject tail of the queued copy `seq`.
    pub(super) fn queued_tail_of(&self, seq: u64) -> Option<&str> {
        self.tail_of.get(&seq).map(String::as_str)
    }

    /// Whether a persistent event `persist_id` is stored.
    pub(super) fn has_persistent(&self, persist_id: &str) -> bool {
        self.by_id.contains_key(persist_id)
    }

    /// The stored records after sequence `seq`, in stored order.
    pub(super) fn records_after(&self, seq: u64) -> Vec<(u64, Stored)> {
        let mut out: Vec<(u64, Stored)> = self
            .persistent
            .range(seq + 1..)
            .chain(self.queued.values().flat_map(|q| q.range(seq + 1..)))
            .map(|(s, r)| (*s, r.clone()))
            .collect();
        out.sort_by_key(|(s, _)| *s);
        out
    }

    /// Forgets what expired by `now_ms` (the stream expires it by itself,
    /// with a per-message TTL); returns how many.
    pub(super) fn sweep(&mut self, now_ms: u64) -> usize {
        let expired = expired(
            self.persistent.iter().chain(self.queued.values().flatten()),
            now_ms,
        );
        for seq in &expired {
            self.remove(*seq);
        }
        expired.len()
    }

    /// Persistent events, queued copies, bytes.
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        (
            self.persistent.len(),
            self.queued.values().map(BTreeMap::len).sum(),
            self.total_bytes,
        )
    }
}

fn unhex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Room this router has taken for writes not yet in the mirror: the
/// bounds hold for what is stored plus what is on its way. A write is
/// known by its message id until its ack gives its sequence; the mirror
/// may read it before the ack comes, and gives its room back then.
#[derive(Debug, Default)]
pub(super) struct Booked {
    persistent: usize,
    bytes: usize,
    queues: HashMap<String, (usize, usize)>,
    /// Writes sent, by message id, until acked or read by the mirror.
    sent: HashMap<String, Booking>,
    /// Acked writes, until the mirror reaches their sequence.
    awaiting: BTreeMap<u64, Vec<Booking>>,
}

/// Room taken for one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Booking {
    /// A new persistent id (not a replacement).
    new_persistent: bool,
    bytes: usize,
    recipient: Option<String>,
}

impl Booked {
    /// Takes room for a persistent event, or says which bound it hits.
    ///
    /// # Errors
    /// [`StoreError::Full`].
    pub(super) fn persist(
        &mut self,
        m: &Mirror,
        limits: &StoreLimits,
        persist_id: &str,
        bytes: usize,
    ) -> Result<Booking, StoreError> {
        let replaced = m.by_id.get(persist_id).and_then(|s| m.persistent.get(s));
        let freed = replaced.map_or(0, |s| s.bytes());
        if replaced.is_none() && m.persistent.len() + self.persistent >= limits.max_persistent {
            return Err(StoreError::Full(format!(
                "the cluster stores at most {} persistent events",
                limits.max_persistent
            )));
        }
        if (m.total_bytes + self.bytes).saturating_sub(freed) + bytes > limits.max_bytes {
            return Err(StoreError::Full("the cluster's store is full".into()));
        }
        let b = Booking {
            new_persistent: replaced.is_none(),
            bytes,
            recipient: None,
        };
        self.take(&b);
        Ok(b)
    }

    /// Takes room for a copy queued for `recipient`, or says which bound
    /// it hits.
    ///
    /// # Errors
    /// [`StoreError::Full`].
    pub(super) fn queue(
        &mut self,
        m: &Mirror,
        limits: &StoreLimits,
        recipient: &str,
        bytes: usize,
    ) -> Result<Booking, StoreError> {
        let (b_count, b_bytes) = self.queues.get(recipient).copied().unwrap_or_default();
        let stored = m.queued.get(recipient).map_or(0, BTreeMap::len);
        let count = stored + b_count;
        let queued = m.queue_bytes.get(recipient).copied().unwrap_or(0) + b_bytes;
        if count >= limits.queue_events {
            return Err(StoreError::Full(format!(
                "the offline queue of '{recipient}' holds {count} events, its limit \
                 ({stored} stored, {b_count} on their way)"
            )));
        }
        if queued + bytes > limits.queue_bytes {
            return Err(StoreError::Full(format!(
                "the offline queue of '{recipient}' is full ({queued} bytes)"
            )));
        }
        if m.total_bytes + self.bytes + bytes > limits.max_bytes {
            return Err(StoreError::Full("the cluster's store is full".into()));
        }
        let b = Booking {
            new_persistent: false,
            bytes,
            recipient: Some(recipient.to_owned()),
        };
        self.take(&b);
        Ok(b)
    }

    fn take(&mut self, b: &Booking) {
        self.persistent += usize::from(b.new_persistent);
        self.bytes += b.bytes;
        if let Some(r) = &b.recipient {
            let q = self.queues.entry(r.clone()).or_default();
            q.0 += 1;
            q.1 += b.bytes;
        }
    }

    /// The write of `b` goes out as message `id`.
    pub(super) fn send(&mut self, id: &str, b: Booking) {
        self.sent.insert(id.to_owned(), b);
    }

    /// The write `id` failed: its room is given back.
    pub(super) fn failed(&mut self, id: &str) {
        if let Some(b) = self.sent.remove(id) {
            self.release(&b);
        }
    }

    /// The mirror read message `id` (before or after its ack came).
    pub(super) fn read(&mut self, id: &str) {
        self.failed(id);
    }

    /// Gives the room back (the write failed, or the mirror has it).
    fn release(&mut self, b: &Booking) {
        self.persistent -= usize::from(b.new_persistent);
        self.bytes -= b.bytes;
        if let Some(r) = &b.recipient {
            if let Some(q) = self.queues.get_mut(r) {
                q.0 -= 1;
                q.1 -= b.bytes;
                if q.0 == 0 {
                    self.queues.remove(r);
                }
            }
        }
    }

    /// The write `id` was stored at `seq`: its room is held until the
    /// mirror, at `applied`, has it (unless the mirror read it already).
    pub(super) fn stored(&mut self, id: &str, seq: u64, applied: u64) {
        let Some(b) = self.sent.remove(id) else {
            return;
        };
        if seq <= applied {
            self.release(&b);
        } else {
            self.awaiting.entry(seq).or_default().push(b);
        }
    }

    /// The mirror reached `applied`: release what it now holds.
    pub(super) fn reached(&mut self, applied: u64) {
        while let Some(entry) = self.awaiting.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for b in entry.remove() {
                self.release(&b);
            }
        }
    }
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod tests;

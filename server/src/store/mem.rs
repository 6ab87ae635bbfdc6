//! The store's memory: what the file holds, indexed for replay (by
//! persist id, by recipient) and counted for the bounds.

use std::collections::{BTreeMap, HashMap};

use super::record::{Kind, Stored};

/// The records of the file, by sequence number.
#[derive(Debug, Default)]
pub(super) struct Mem {
    pub(super) next_seq: u64,
    pub(super) persistent: BTreeMap<u64, Stored>,
    pub(super) by_persist_id: HashMap<String, u64>,
    pub(super) queued: HashMap<String, BTreeMap<u64, Stored>>,
    pub(super) queue_bytes: HashMap<String, usize>,
    pub(super) total_bytes: usize,
}

impl Mem {
    /// Forgets every record, keeping the next sequence number (a number
    /// once given out is never given again).
    pub(super) fn clear(&mut self) {
        *self = Mem {
            next_seq: self.next_seq,
            ..Mem::default()
        };
    }

    pub(super) fn insert(&mut self, seq: u64, s: Stored) {
        self.total_bytes += s.bytes();
        match &s.header.kind {
            Kind::Persistent { persist_id, .. } => {
                self.by_persist_id.insert(persist_id.clone(), seq);
                self.persistent.insert(seq, s);
            }
            Kind::Queued { recipient } => {
                *self.queue_bytes.entry(recipient.clone()).or_default() += s.bytes();
                self.queued
                    .entry(recipient.clone())
                    .or_default()
                    .insert(seq, s);
            }
        }
    }

    pub(super) fn contains_queued(&self, seq: u64) -> bool {
        self.queued.values().any(|q| q.contains_key(&seq))
    }

    pub(super) fn remove(&mut self, seq: u64) {
        if let Some(s) = self.persistent.remove(&seq) {
            self.total_bytes -= s.bytes();
            if let Kind::Persistent { persist_id, .. } = &s.header.kind {
                if self.by_persist_id.get(persist_id) == Some(&seq) {
                    self.by_persist_id.remove(persist_id);
                }
            }
            return;
        }
        let mut emptied = None;
        for (recipient, q) in &mut self.queued {
            if let Some(s) = q.remove(&seq) {
                self.total_bytes -= s.bytes();
                if let Some(b) = self.queue_bytes.get_mut(recipient) {
                    *b -= s.bytes();
                }
                if q.is_empty() {
                    emptied = Some(recipient.clone());
                }
                break;
            }
        }
        if let Some(r) = emptied {
            self.queued.remove(&r);
            self.queue_bytes.remove(&r);
        }
    }
}

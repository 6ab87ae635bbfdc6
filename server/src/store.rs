//! The persistence store: persistent events (the JIP queue) and copies
//! queued for offline servers, in an embedded database file (redb), written
//! before the ack goes out. Memory mirrors the file for fast replay; both
//! are bounded by config.
//!
//! Every method here does file I/O and may block: call it from
//! `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use icom_protocol::{lock, Groups, Target};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
/// The database file's name inside the data dir.
pub const STORE_FILE: &str = "icom.redb";

/// Bounds of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Bytes of stored events in all (persistent and queued).
    pub max_bytes: usize,
    /// Persistent events.
    pub max_persistent: usize,
    /// Copies queued for one offline server.
    pub queue_events: usize,
    /// Bytes queued for one offline server.
    pub queue_bytes: usize,
    /// The database's page cache, in bytes (redb's own default is 1 GiB).
    pub cache_bytes: usize,
}

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be opened (corrupt, locked, unreadable).
    #[error("cannot open the store {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        reason: String,
    },
    /// A record in the file does not decode.
    #[error("the store {path} holds a corrupt record (seq {seq}): {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The record's key.
        seq: u64,
        /// What was wrong.
        reason: String,
    },
    /// A read or write failed.
    #[error("store I/O failed: {0}")]
    Io(String),
    /// A bound was reached.
    #[error("{0}")]
    Full(String),
    /// In a cluster: the shared store (JetStream) did not take or confirm
    /// the write in time. It may still have been stored.
    #[error("{0}")]
    Unavailable(String),
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// What a record is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A persistent event, with its target (matched on connect).
    Persistent { persist_id: String, target: Target },
    /// A copy for one offline server.
    Queued { recipient: String },
}

/// The header of a record; the encoded `deliver` follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) from: String,
    pub(crate) expires_ms: Option<u64>,
}

/// A record: what it is, and its encoded `deliver`.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) header: Header,
    pub(crate) wire: Bytes,
}

#[derive(Debug, Default)]
struct Mem {
    next_seq: u64,
    persistent: BTreeMap<u64, Stored>,
    by_persist_id: HashMap<String, u64>,
    queued: HashMap<String, BTreeMap<u64, Stored>>,
    queue_bytes: HashMap<String, usize>,
    total_bytes: usize,
}

/// One stored event due to a connecting server, in stored order.
#[derive(Debug, Clone)]
pub struct Due {
    /// Its place in stored order.
    pub seq: u64,
    /// The encoded `deliver`.
    pub wire: Bytes,
    /// Whether it is a queued copy (deleted once delivered) rather than a
    /// persistent event (kept).
    pub queued: bool,
}

/// The store.
pub struct Store {
    db: Database,
    path: PathBuf,
    mem: Mutex<Mem>,
    limits: StoreLimits,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `data_dir`, and loads it.
    ///
    /// # Errors
    /// [`StoreError::Open`] or [`StoreError::Corrupt`]: a store that cannot
    /// be read is an error, never silently emptied.
    pub fn open(data_dir: &Path, limits: StoreLimits) -> Result<Store, StoreError> {
        let path = data_dir.join(STORE_FILE);
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(data_dir)
            .map_err(|e| open_err(format!("creating {}: {e}", data_dir.display())))?;
        let db = redb::Builder::new()
            .set_cache_size(limits.cache_bytes)
            .create(&path)
            .map_err(|e| open_err(e.to_string()))?;
        let store = Store {
            db,
            path: path.clone(),
            mem: Mutex::new(Mem::default()),
            limits,
        };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        txn.open_table(EVENTS).map_err(io)?;
        txn.commit().map_err(io)?;
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(EVENTS).map_err(io)?;
        let mut mem = lock(&self.mem);
        for row in table.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let seq = k.value();
            let stored = decode(v.value()).map_err(|reason| StoreError::Corrupt {
                path: self.path.clone(),
                seq,
                reason,
            })?;
            mem.next_seq = mem.next_seq.max(seq + 1);
            mem.insert(seq, stored);
        }
        Ok(())
    }

    /// Stores a persistent event under `persist_id`, replacing one stored
    /// under the same id. `wire` is its encoded `deliver`.
    ///
    /// # Errors
    /// [`StoreError::Full`] past the store's bounds; I/O errors.
    pub fn persist(
        &self,
        persist_id: &str,
        target: &Target,
        from: &str,
        expires_ms: Option<u64>,
        wire: Bytes,
    ) -> Result<(), StoreError> {
        let mut mem = lock(&self.mem);
        let replaced = mem.by_persist_id.get(persist_id).copied();
        let freed = replaced
            .and_then(|s| mem.persistent.get(&s))
            .map_or(0, |s| s.wire.len());
        if replaced.is_none() && mem.persistent.len() >= self.limits.max_persistent {
            return Err(StoreError::Full(format!(
                "the router stores at most {} persistent events",
                self.limits.max_persistent
            )));
        }
        if mem.total_bytes - freed + wire.len() > self.limits.max_bytes {
            return Err(StoreError::Full("the router's store is full".into()));
        }
        let seq = mem.next_seq;
        let stored = Stored {
            header: Header {
                kind: Kind::Persistent {
                    persist_id: persist_id.to_owned(),
                    target: target.clone(),
                },
                from: from.to_owned(),
                expires_ms,
            },
            wire,
        };
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(EVENTS).map_err(io)?;
            if let Some(old) = replaced {
                table.remove(old).map_err(io)?;
            }
            table.insert(seq, encode(&stored).as_slice()).map_err(io)?;
        }
        txn.commit().map_err(io)?;
        mem.next_seq += 1;
        if let Some(old) = replaced {
            mem.remove(old);
        }
        mem.insert(seq, stored);
        Ok(())
    }

    /// Removes the persistent event `persist_id`; false if there is none.
    ///
    /// # Errors
    /// I/O errors.
    pub fn forget(&self, persist_id: &str) -> Result<bool, StoreError> {
        let mut mem = lock(&self.mem);
        let Some(seq) = mem.by_persist_id.get(persist_id).copied() else {
            return Ok(false);
        };
        self.delete_rows(&[seq])?;
        mem.remove(seq);
        Ok(true)
    }

    /// Queues a copy for each of `recipients`; the result per recipient is
    /// `Ok` or the bound it hit.
    ///
    /// # Errors
    /// I/O errors (then nothing was queued).
    pub fn enqueue(
        &self,
        recipients: &[&str],
        from: &str,
        expires_ms: Option<u64>,
        wire: &Bytes,
    ) -> Result<Vec<Result<(), String>>, StoreError> {
        let mut mem = lock(&self.mem);
        let mut verdicts = Vec::with_capacity(recipients.len());
        let mut rows = Vec::new();
        let mut added = 0usize;
        let mut seq = mem.next_seq;
        for r in recipients {
            let count = mem.queued.get(*r).map_or(0, BTreeMap::len);
            let bytes = mem.queue_bytes.get(*r).copied().unwrap_or(0);
            let verdict = if count >= self.limits.queue_events {
                Err(format!(
                    "the offline queue of '{r}' holds {count} events, its limit"
                ))
            } else if bytes + wire.len() > self.limits.queue_bytes {
                Err(format!(
                    "the offline queue of '{r}' is full ({bytes} bytes)"
                ))
            } else if mem.total_bytes + added + wire.len() > self.limits.max_bytes {
                Err("the router's store is full".to_owned())
            } else {
                added += wire.len();
                let stored = Stored {
                    header: Header {
                        kind: Kind::Queued {
                            recipient: (*r).to_owned(),
                        },
                        from: from.to_owned(),
                        expires_ms,
                    },
                    wire: wire.clone(),
                };
                rows.push((seq, stored));
                seq += 1;
                Ok(())
            };
            verdicts.push(verdict);
        }
        if rows.is_empty() {
            return Ok(verdicts);
        }
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(EVENTS).map_err(io)?;
            for (seq, stored) in &rows {
                table.insert(*seq, encode(stored).as_slice()).map_err(io)?;
            }
        }
        txn.commit().map_err(io)?;
        mem.next_seq = seq;
        for (seq, stored) in rows {
            mem.insert(seq, stored);
        }
        Ok(verdicts)
    }

    /// Everything due to `server` now, in stored order: the persistent
    /// events whose target includes it, and its queued copies, unexpired.
    pub fn due_for(&self, server: &str, groups: &Groups, now_ms: u64) -> Vec<Due> {
        let mem = lock(&self.mem);
        let alive = |s: &Stored| s.header.expires_ms.is_none_or(|e| e > now_ms);
        let mut due: Vec<Due> = mem
            .persistent
            .iter()
            .filter(|(_, s)| alive(s))
            .filter(|(_, s)| match &s.header.kind {
                Kind::Persistent { target, .. } => target.includes(server, &s.header.from, groups),
                Kind::Queued { .. } => false,
            })
            .map(|(seq, s)| Due {
                seq: *seq,
                wire: s.wire.clone(),
                queued: false,
            })
            .collect();
        if let Some(q) = mem.queued.get(server) {
            due.extend(q.iter().filter(|(_, s)| alive(s)).map(|(seq, s)| Due {
                seq: *seq,
                wire: s.wire.clone(),
                queued: true,
            }));
        }
        due.sort_by_key(|d| d.seq);
        due
    }

    /// Deletes a queued copy once its delivery was acknowledged.
    ///
    /// # Errors
    /// I/O errors.
    pub fn delivered(&self, seq: u64) -> Result<(), StoreError> {
        let mut mem = lock(&self.mem);
        if !mem.contains_queued(seq) {
            return Ok(());
        }
        self.delete_rows(&[seq])?;
        mem.remove(seq);
        Ok(())
    }

    /// Deletes every expired record; returns how many.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sweep(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut mem = lock(&self.mem);
        let expired: Vec<u64> = mem
            .persistent
            .iter()
            .chain(mem.queued.values().flatten())
            .filter(|(_, s)| s.header.expires_ms.is_some_and(|e| e <= now_ms))
            .map(|(seq, _)| *seq)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.delete_rows(&expired)?;
        for seq in &expired {
            mem.remove(*seq);
        }
        Ok(expired.len())
    }

    /// Counts: persistent events, queued copies, bytes.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mem = lock(&self.mem);
        (
            mem.persistent.len(),
            mem.queued.values().map(BTreeMap::len).sum(),
            mem.total_bytes,
        )
    }

    /// Every record not expired at `now_ms`, in stored order (to import).
    pub(crate) fn export(&self, now_ms: u64) -> Vec<(u64, Stored)> {
        let mem = lock(&self.mem);
        let mut all: Vec<(&u64, &Stored)> = mem
            .persistent
            .iter()
            .chain(mem.queued.values().flatten())
            .filter(|(_, s)| s.header.expires_ms.is_none_or(|e| e > now_ms))
            .collect();
        all.sort_by_key(|(seq, _)| **seq);
        all.into_iter().map(|(seq, s)| (*seq, s.clone())).collect()
    }

    fn delete_rows(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(EVENTS).map_err(io)?;
            for seq in seqs {
                table.remove(*seq).map_err(io)?;
            }
        }
        txn.commit().map_err(io)
    }
}

impl Mem {
    fn insert(&mut self, seq: u64, s: Stored) {
        self.total_bytes += s.wire.len();
        match &s.header.kind {
            Kind::Persistent { persist_id, .. } => {
                self.by_persist_id.insert(persist_id.clone(), seq);
                self.persistent.insert(seq, s);
            }
            Kind::Queued { recipient } => {
                *self.queue_bytes.entry(recipient.clone()).or_default() += s.wire.len();
                self.queued
                    .entry(recipient.clone())
                    .or_default()
                    .insert(seq, s);
            }
        }
    }

    fn contains_queued(&self, seq: u64) -> bool {
        self.queued.values().any(|q| q.contains_key(&seq))
    }

    fn remove(&mut self, seq: u64) {
        if let Some(s) = self.persistent.remove(&seq) {
            self.total_bytes -= s.wire.len();
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
                self.total_bytes -= s.wire.len();
                if let Some(b) = self.queue_bytes.get_mut(recipient) {
                    *b -= s.wire.len();
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

/// A record: a 4-byte big-endian header length, the header (MessagePack),
/// then the encoded `deliver`.
pub(crate) fn encode(s: &Stored) -> Vec<u8> {
    // The header holds strings, integers and a target: it always encodes.
    let header = rmp_serde::to_vec_named(&s.header).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + header.len() + s.wire.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&s.wire);
    out
}

pub(crate) fn decode(v: &[u8]) -> Result<Stored, String> {
    let len = v
        .first_chunk::<4>()
        .map(|h| u32::from_be_bytes(*h) as usize)
        .ok_or("shorter than its header length")?;
    let header_bytes = v.get(4..4 + len).ok_or("shorter than its header")?;
    let header: Header = rmp_serde::from_slice(header_bytes).map_err(|e| e.to_string())?;
    Ok(Stored {
        header,
        wire: Bytes::copy_from_slice(&v[4 + len..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StoreLimits {
        StoreLimits {
            max_bytes: 10_000,
            max_persistent: 3,
            queue_events: 2,
            queue_bytes: 1000,
            cache_bytes: 1 << 20,
        }
    }

    fn wire(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn persist_replace_forget_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let g = Groups::new();
        {
            let s = Store::open(dir.path(), limits()).unwrap();
            s.persist("a", &Target::All, "x", None, wire("A1")).unwrap();
            s.persist("b", &Target::Server("y".into()), "x", None, wire("B"))
                .unwrap();
            s.persist("a", &Target::All, "x", None, wire("A2")).unwrap();
            s.persist("c", &Target::All, "x", None, wire("C")).unwrap();
            assert!(matches!(
                s.persist("d", &Target::All, "x", None, wire("D")),
                Err(StoreError::Full(_))
            ));
            let due: Vec<_> = s.due_for("y", &g, 0).into_iter().map(|d| d.wire).collect();
            assert_eq!(
                due,
                vec![wire("B"), wire("A2"), wire("C")],
                "stored order, replaced moves last"
            );
            assert!(s.forget("c").unwrap());
            assert!(!s.forget("c").unwrap());
        }
        let s = Store::open(dir.path(), limits()).unwrap();
        let due: Vec<_> = s.due_for("y", &g, 0).into_iter().map(|d| d.wire).collect();
        assert_eq!(due, vec![wire("B"), wire("A2")]);
        assert_eq!(s.due_for("z", &g, 0).len(), 1, "z gets only the 'all' one");
        assert_eq!(s.due_for("x", &g, 0).len(), 0, "all excludes the sender");
    }

    #[test]
    fn queues_are_bounded_and_deleted_on_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let g = Groups::new();
        let s = Store::open(dir.path(), limits()).unwrap();
        let v = s.enqueue(&["r", "q"], "x", Some(100), &wire("1")).unwrap();
        assert!(v.iter().all(Result::is_ok));
        s.enqueue(&["r"], "x", None, &wire("2")).unwrap();
        let v = s.enqueue(&["r"], "x", None, &wire("3")).unwrap();
        assert!(v[0].as_ref().unwrap_err().contains("limit"));
        let due = s.due_for("r", &g, 50);
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|d| d.queued));
        // Expired copies are not due, and the sweep removes them.
        assert_eq!(s.due_for("r", &g, 100).len(), 1);
        assert_eq!(s.sweep(100).unwrap(), 2);
        s.delivered(due[1].seq).unwrap();
        assert_eq!(s.counts(), (0, 0, 0));
        drop(s);
        let s = Store::open(dir.path(), limits()).unwrap();
        assert_eq!(s.counts(), (0, 0, 0));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STORE_FILE),
            b"this is not a redb file at all, no",
        )
        .unwrap();
        let e = Store::open(dir.path(), limits()).unwrap_err();
        assert!(matches!(e, StoreError::Open { .. }), "{e}");
        assert!(e.to_string().contains(STORE_FILE));
    }
}

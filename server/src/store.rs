//! The persistence store: persistent events (the JIP queue) and copies
//! queued for offline servers, in an embedded database file (redb), written
//! before the ack goes out. Memory mirrors the file for fast replay; both
//! are bounded by config.
//!
//! A change is made to memory at once, under its lock, and its rows go to
//! the file through the group-commit log (`store/log.rs`): writers that come while a
//! commit is under way share the next transaction, and each method returns
//! only once its rows are committed. Every method that changes something
//! may block on that: call it from `spawn_blocking`, or within
//! [`Store::deferring`], where it only changes memory and the returned
//! [`Durable`] is waited for instead (the router's way).

mod durable;
mod log;
mod mem;
mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{lock, Groups, Target};
use redb::{Database, ReadableTable};
use thiserror::Error;
use tracing::{error, info};

pub use self::durable::Durable;
use self::log::{Change, Log, Opener, EVENTS};
use self::mem::Mem;
pub(crate) use self::record::{
    decode, decode_shared, due, encode, expired, persistent_bytes, Header, Kind, Stored,
};
/// The database file's name inside the data dir.
pub const STORE_FILE: &str = "icom.redb";

/// After a failed commit that could not reopen the file, how long writes
/// are refused before one tries to reopen it again.
const REOPEN_RETRY: Duration = Duration::from_secs(1);

/// Bounds of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    log: Log,
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
        let file = data_dir.join(STORE_FILE);
        let open: Opener = Box::new(move || {
            redb::Builder::new()
                .set_cache_size(limits.cache_bytes)
                .create(&file)
                .map_err(|e| e.to_string())
        });
        Store::open_with(data_dir, limits, open, REOPEN_RETRY)
    }

    /// [`Store::open`], the database opened by `open`; after a failed
    /// commit whose reopen failed, writers try again no sooner than
    /// `retry` later.
    fn open_with(
        data_dir: &Path,
        limits: StoreLimits,
        open: Opener,
        retry: Duration,
    ) -> Result<Store, StoreError> {
        let path = data_dir.join(STORE_FILE);
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(data_dir)
            .map_err(|e| open_err(format!("creating {}: {e}", data_dir.display())))?;
        let store = Store {
            log: Log::new(open, retry).map_err(open_err)?,
            path: path.clone(),
            mem: Mutex::new(Mem::default()),
            limits,
        };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> Result<(), StoreError> {
        let txn = self.log.with_db(Database::begin_write).map_err(io)?;
        let txn = txn.map_err(io)?;
        txn.open_table(EVENTS).map_err(io)?;
        txn.commit().map_err(io)?;
        self.read_into(&mut lock(&self.mem))
    }

    /// Reads every record of the file into `mem`.
    fn read_into(&self, mem: &mut Mem) -> Result<(), StoreError> {
        let txn = self.log.with_db(Database::begin_read).map_err(io)?;
        let txn = txn.map_err(io)?;
        let table = txn.open_table(EVENTS).map_err(io)?;
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
        let record = encode(&stored);
        let mut mem = lock(&self.mem);
        self.writable(&mut mem)?;
        let replaced = mem.by_persist_id.get(persist_id).copied();
        let freed = replaced
            .and_then(|s| mem.persistent.get(&s))
            .map_or(0, |s| s.bytes());
        if replaced.is_none() && mem.persistent.len() >= self.limits.max_persistent {
            return Err(StoreError::Full(format!(
                "the router stores at most {} persistent events",
                self.limits.max_persistent
            )));
        }
        if mem.total_bytes - freed + stored.bytes() > self.limits.max_bytes {
            return Err(StoreError::Full("the router's store is full".into()));
        }
        let seq = mem.next_seq;
        mem.next_seq += 1;
        if let Some(old) = replaced {
            mem.remove(old);
        }
        mem.insert(seq, stored);
        let old = replaced.map(Change::Delete);
        let ticket = self
            .log
            .push(old.into_iter().chain([Change::Put(seq, record)]));
        drop(mem);
        self.settle(&ticket)
    }

    /// Removes the persistent event `persist_id`; false if there is none.
    ///
    /// # Errors
    /// I/O errors.
    pub fn forget(&self, persist_id: &str) -> Result<bool, StoreError> {
        let mut mem = lock(&self.mem);
        self.writable(&mut mem)?;
        let Some(seq) = mem.by_persist_id.get(persist_id).copied() else {
            return Ok(false);
        };
        mem.remove(seq);
        let ticket = self.log.push([Change::Delete(seq)]);
        drop(mem);
        self.settle(&ticket)?;
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
        self.writable(&mut mem)?;
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
        mem.next_seq = seq;
        let mut changes = Vec::with_capacity(rows.len());
        for (seq, stored) in rows {
            changes.push(Change::Put(seq, encode(&stored)));
            mem.insert(seq, stored);
        }
        let ticket = self.log.push(changes);
        drop(mem);
        self.settle(&ticket)?;
        Ok(verdicts)
    }

    /// Everything due to `server` now, in stored order: the persistent
    /// events whose target includes it, and its queued copies, unexpired.
    pub fn due_for(&self, server: &str, groups: &Groups, now_ms: u64) -> Vec<Due> {
        let mem = lock(&self.mem);
        record::due(
            &mem.persistent,
            mem.queued.get(server),
            server,
            groups,
            now_ms,
        )
    }

    /// Deletes a queued copy once its delivery was acknowledged.
    ///
    /// # Errors
    /// I/O errors.
    pub fn delivered(&self, seq: u64) -> Result<(), StoreError> {
        let mut mem = lock(&self.mem);
        self.writable(&mut mem)?;
        if !mem.contains_queued(seq) {
            return Ok(());
        }
        mem.remove(seq);
        let ticket = self.log.push([Change::Delete(seq)]);
        drop(mem);
        self.settle(&ticket)
    }

    /// Deletes every expired record; returns how many.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sweep(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut mem = lock(&self.mem);
        self.writable(&mut mem)?;
        let expired = record::expired(
            mem.persistent.iter().chain(mem.queued.values().flatten()),
            now_ms,
        );
        if expired.is_empty() {
            return Ok(0);
        }
        for seq in &expired {
            mem.remove(*seq);
        }
        let ticket = self
            .log
            .push(expired.iter().map(|seq| Change::Delete(*seq)));
        drop(mem);
        self.settle(&ticket)?;
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
            .filter(|(_, s)| s.alive(now_ms))
            .collect();
        all.sort_by_key(|(seq, _)| **seq);
        all.into_iter().map(|(seq, s)| (*seq, s.clone())).collect()
    }

    /// After a failed commit: memory holds changes the file does not.
    /// Fails the changes not yet written, reopens the file (redb refuses
    /// every transaction after a failed commit until then) and rereads
    /// it, the truth, under the memory's lock, so that no change comes in
    /// between. When that fails, memory stays empty and writes are refused
    /// until a writer's reopen works ([`Store::writable`]).
    fn recover(&self, why: &str) {
        let mut mem = lock(&self.mem);
        self.log.discard_pending(why);
        if let Err(e) = self.reload(&mut mem) {
            error!(
                path = %self.path.display(),
                "a store commit failed ({why}), and {e}: writes are refused until the file opens again"
            );
        }
    }

    /// Reopens the file and rereads it into `mem`, emptied first; the
    /// database is left closed when that fails.
    fn reload(&self, mem: &mut Mem) -> Result<(), String> {
        mem.clear();
        self.log
            .reopen()
            .map_err(|e| format!("the file cannot be reopened: {e}"))?;
        self.read_into(mem).map_err(|e| {
            self.log.close();
            mem.clear();
            format!("the file cannot be reread: {e}")
        })
    }

    /// Whether the file is open: false after a failed commit until a
    /// reopen mends it. The next write then reopens it, which is file work.
    pub(crate) fn is_open(&self) -> bool {
        self.log.is_open()
    }

    /// Whether a write may change `mem` now: after a failed commit that
    /// could not reopen the file, it is tried again here (at most every
    /// `retry`), before the write touches memory.
    fn writable(&self, mem: &mut Mem) -> Result<(), StoreError> {
        if self.log.is_open() {
            return Ok(());
        }
        if !self.log.may_reopen() {
            return Err(StoreError::Io(
                "the store's file failed and is not open again yet".into(),
            ));
        }
        self.reload(mem)
            .map_err(|e| StoreError::Io(format!("the store's file failed: {e}")))?;
        info!(path = %self.path.display(), "the store's file is open again");
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn limits() -> StoreLimits {
        StoreLimits {
            max_bytes: 10_000,
            max_persistent: 3,
            queue_events: 2,
            queue_bytes: 1000,
            cache_bytes: 1 << 20,
        }
    }

    pub(crate) fn wire(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn a_persistent_events_target_counts_against_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), limits()).unwrap();
        // A tiny event whose target lists 10,000 names: about 20 KB kept,
        // past the 10,000-byte bound, though its event is 1 byte.
        let many = Target::Except(vec!["x".into(); 10_000]);
        assert!(matches!(
            s.persist("p", &many, "a", None, wire("A")),
            Err(StoreError::Full(_))
        ));
        let few = Target::Except(vec!["x".into(); 1_000]);
        s.persist("p", &few, "a", None, wire("A")).unwrap();
        assert_eq!(s.counts(), (1, 0, 1 + 1 + 2_000));
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
    fn concurrent_writers_all_land_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let g = Groups::new();
        let big = StoreLimits {
            max_bytes: 1 << 20,
            max_persistent: 1000,
            queue_events: 1000,
            queue_bytes: 1 << 20,
            cache_bytes: 1 << 20,
        };
        {
            let s = std::sync::Arc::new(Store::open(dir.path(), big).unwrap());
            let writers: Vec<_> = (0..8)
                .map(|t| {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        for i in 0..25 {
                            // Two threads share each persist id: the last
                            // write of an id wins, and it is stored once.
                            let id = format!("p{}-{i}", t % 4);
                            s.persist(&id, &Target::All, "x", None, wire(&format!("{t}-{i}")))
                                .unwrap();
                            let v = s.enqueue(&["r"], "x", None, &wire("q")).unwrap();
                            assert_eq!(v, vec![Ok(())]);
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            assert_eq!(s.counts().0, 100, "4 × 25 persist ids");
            assert_eq!(s.counts().1, 200);
        }
        // What memory said is what the file holds.
        let s = Store::open(dir.path(), big).unwrap();
        assert_eq!(s.counts().0, 100);
        assert_eq!(s.counts().1, 200);
        let due = s.due_for("r", &g, 0);
        assert_eq!(due.len(), 300);
        assert!(due.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deferred_writes_share_one_commit_settled_by_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let g = Groups::new();
        let s = std::sync::Arc::new(Store::open(dir.path(), limits()).unwrap());
        let commits = s.log.commits();
        // Three writers make their changes before anyone waits: they are
        // one batch, and the first task to wait commits it for all.
        let mut durables = Vec::new();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let (result, durable) =
                s.deferring(|| s.persist(id, &Target::All, "x", None, wire(&i.to_string())));
            result.unwrap();
            durables.push(durable);
        }
        let durables: Vec<_> = durables
            .into_iter()
            .map(|d| tokio::spawn(d.settled()))
            .collect();
        // A read needs no commit.
        let (due, nothing) = s.deferring(|| s.due_for("y", &g, 0));
        assert_eq!(due.len(), 3, "in memory at once");
        nothing.settled().await.unwrap();
        for d in durables {
            d.await.unwrap().unwrap();
        }
        assert_eq!(s.log.commits(), commits + 1, "three writers, one commit");
        // A bound refused inside the scope is refused as always, and
        // leaves nothing to commit.
        let (full, nothing) = s.deferring(|| s.persist("d", &Target::All, "x", None, wire("d")));
        assert!(matches!(full, Err(StoreError::Full(_))));
        nothing.settled().await.unwrap();
        assert_eq!(s.log.commits(), commits + 1);
        drop(s);
        let s = Store::open(dir.path(), limits()).unwrap();
        assert_eq!(s.counts().0, 3, "all three on disk");
    }

    #[test]
    fn writes_nobody_waited_for_are_committed_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(dir.path(), limits()).unwrap());
        {
            // A writer whose task is dropped with its runtime, before it
            // waited: its write must neither be lost from memory nor hand
            // itself from one dropped task to the next for ever.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let s2 = s.clone();
            runtime.block_on(async move {
                let (r, durable) =
                    s2.deferring(|| s2.persist("a", &Target::All, "x", None, wire("A")));
                r.unwrap();
                tokio::spawn(async move {
                    std::future::pending::<()>().await;
                    drop(durable);
                });
            });
        }
        // The next writer, on its own thread, commits what was pending.
        s.persist("b", &Target::All, "x", None, wire("B")).unwrap();
        drop(s);
        let s = Store::open(dir.path(), limits()).unwrap();
        assert_eq!(s.counts().0, 2);
    }

    /// A file whose writes and syncs fail while `broken` is set, as on a
    /// full or failing disk.
    #[derive(Debug)]
    struct Flaky {
        file: redb::backends::FileBackend,
        broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> std::io::Result<()> {
            if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("the disk failed"));
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for Flaky {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
            self.file.read(offset, len)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
            self.check()?;
            self.file.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
    }

    /// A store in `dir` whose file fails while `broken` is set; `opened`
    /// runs each time the file is opened (the first time too).
    pub(crate) fn flaky_store(
        dir: &Path,
        broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
        opened: impl Fn() + Send + Sync + 'static,
    ) -> Store {
        let path = dir.join(STORE_FILE);
        let open: Opener = Box::new(move || {
            opened();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| e.to_string())?;
            let file = redb::backends::FileBackend::new(file).map_err(|e| e.to_string())?;
            let backend = Flaky {
                file,
                broken: broken.clone(),
            };
            redb::Builder::new()
                .create_with_backend(backend)
                .map_err(|e| e.to_string())
        });
        Store::open_with(dir, limits(), open, Duration::ZERO).unwrap()
    }

    #[test]
    fn a_failed_commit_fails_its_writers_and_the_store_comes_back() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let broken = std::sync::Arc::new(AtomicBool::new(false));
        let s = flaky_store(dir.path(), broken.clone(), || {});
        s.persist("a", &Target::All, "x", None, wire("A")).unwrap();

        // The disk fails: the write is refused, memory is the file's again
        // (a, not b), and the store refuses writes while the file cannot
        // be reopened, without touching memory.
        broken.store(true, Ordering::SeqCst);
        let e = s
            .persist("b", &Target::All, "x", None, wire("B"))
            .unwrap_err();
        assert!(matches!(e, StoreError::Io(_)), "{e}");
        let e = s.enqueue(&["r"], "x", None, &wire("C")).unwrap_err();
        assert!(matches!(e, StoreError::Io(_)), "{e}");
        assert!(s.forget("a").is_err(), "refused, a kept");

        // The disk is back: the next write reopens the file, which holds
        // what was acked, and goes on.
        broken.store(false, Ordering::SeqCst);
        let g = Groups::new();
        s.persist("d", &Target::All, "x", None, wire("D")).unwrap();
        let due: Vec<Bytes> = s.due_for("y", &g, 0).into_iter().map(|d| d.wire).collect();
        assert_eq!(due, [wire("A"), wire("D")]);
        assert_eq!(s.counts().1, 0, "the failed queued copy is not there");
        drop(s);
        let s = Store::open(dir.path(), limits()).unwrap();
        let due: Vec<Bytes> = s.due_for("y", &g, 0).into_iter().map(|d| d.wire).collect();
        assert_eq!(due, [wire("A"), wire("D")], "the file holds what was acked");
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

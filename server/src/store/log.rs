//! Group commit: every change to the store's file goes through one
//! [`Log`], and writers that come while a commit is under way are written
//! together by the next one, in one redb transaction and one fsync.
//!
//! A writer [`Log::push`]es its row changes (in the order it made them to
//! the store's memory, under that lock) and waits for the batch they went
//! into: on a thread ([`Log::wait_turn`]), or as a task (its ticket's
//! [`Ticket::notified`] and [`Log::turn`]). No thread of its own: when no
//! commit is running, a waiter whose batch is not written yet becomes the
//! leader ([`Turn::Lead`]), takes every pending change, commits them, and
//! wakes that batch's writers; the next batch's waiters are woken to elect
//! the next leader. A writer is told its batch is done only once it is
//! committed (redb's default durability: on disk), so an ack given after
//! that is never lost to a crash.
//!
//! A commit that fails leaves redb refusing every later transaction until
//! the file is opened again, so the log owns the database's opening: the
//! store reopens it ([`Log::reopen`]) before it rereads the file.

use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use icom_protocol::{lock, read, write as write_lock};
use redb::{Database, TableDefinition};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The store's one table: records by sequence number.
pub(super) const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");

/// One row change.
#[derive(Debug)]
pub(super) enum Change {
    /// Insert (or overwrite) the record `seq`.
    Put(u64, Vec<u8>),
    /// Delete the record `seq` (nothing if there is none).
    Delete(u64),
}

/// The batch a writer's changes went into.
#[derive(Debug, Clone)]
pub(super) struct Ticket(Arc<Batch>);

impl Ticket {
    /// Resolves when the batch is written, or when a waiter of it should
    /// look again whether to lead: create it before [`Log::turn`], await
    /// it after a [`Turn::Wait`].
    pub(super) fn notified(&self) -> Notified<'_> {
        self.0.notify.notified()
    }
}

/// What a waiter does next.
#[derive(Debug)]
pub(super) enum Turn {
    /// Its batch is done: committed, or failed with this.
    Done(Result<(), String>),
    /// No commit is running and its batch is pending: it commits it
    /// ([`Log::write`], then [`Log::finish`]).
    Lead(Lead),
    /// Another writer is committing: wait.
    Wait,
}

/// The changes a leader commits, and their batch.
#[derive(Debug)]
pub(super) struct Lead {
    changes: Vec<Change>,
    batch: Arc<Batch>,
}

/// Opens the store's database file (again, after a failed commit).
pub(super) type Opener = Box<dyn Fn() -> Result<Database, String> + Send + Sync>;

/// The writer of the store's file.
pub(super) struct Log {
    /// `None` after a failed commit whose reopen failed too.
    db: RwLock<Option<Database>>,
    open: Opener,
    /// When the last reopen failed; the next is tried `retry` later.
    failed_open: Mutex<Option<Instant>>,
    retry: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Changes not yet taken by a leader, in order.
    pending: Vec<Change>,
    /// The batch `pending` will be committed in.
    batch: Arc<Batch>,
    /// Whether a leader is writing a batch now.
    committing: bool,
    /// Transactions committed (or tried) so far.
    commits: u64,
}

/// One transaction's worth of writers.
#[derive(Debug, Default)]
struct Batch {
    /// Wakes the threads waiting for it: all of them when it is written,
    /// one when the commit before it is done (to lead this one).
    cv: Condvar,
    /// The same for the tasks waiting for it (all of them, each time).
    notify: Notify,
    /// Set once, by the leader that wrote it, under the log's lock.
    result: OnceLock<Result<(), String>>,
}

impl Batch {
    fn wake_all(&self) {
        self.cv.notify_all();
        self.notify.notify_waiters();
    }
}

/// What a caller is told while the database is closed.
const CLOSED: &str = "the store's file is closed after a failed commit";

impl Log {
    /// Opens the database with `open`; after a failed reopen the next is
    /// tried no sooner than `retry` later.
    ///
    /// # Errors
    /// What `open` said.
    pub(super) fn new(open: Opener, retry: Duration) -> Result<Log, String> {
        let db = open()?;
        Ok(Log {
            db: RwLock::new(Some(db)),
            open,
            failed_open: Mutex::new(None),
            retry,
            state: Mutex::new(State {
                pending: Vec::new(),
                batch: Arc::default(),
                committing: false,
                commits: 0,
            }),
        })
    }

    /// Runs `f` on the database.
    ///
    /// # Errors
    /// While the database is closed (a failed commit that no reopen has
    /// mended yet).
    pub(super) fn with_db<T>(&self, f: impl FnOnce(&Database) -> T) -> Result<T, String> {
        match &*read(&self.db) {
            Some(db) => Ok(f(db)),
            None => Err(CLOSED.to_owned()),
        }
    }

    pub(super) fn is_open(&self) -> bool {
        read(&self.db).is_some()
    }

    /// Whether a reopen may be tried now: none failed within `retry`.
    pub(super) fn may_reopen(&self) -> bool {
        lock(&self.failed_open).is_none_or(|at| at.elapsed() >= self.retry)
    }

    /// Closes the database and opens it again: redb repairs what a failed
    /// commit left. Call it with no commit under way (the leader that
    /// failed, or a writer under the store's memory lock while closed).
    ///
    /// # Errors
    /// What opening said; the database stays closed.
    pub(super) fn reopen(&self) -> Result<(), String> {
        let mut db = write_lock(&self.db);
        // Closed first: the file is locked while a handle holds it.
        *db = None;
        let opened = (self.open)();
        *lock(&self.failed_open) = opened.is_err().then(Instant::now);
        *db = Some(opened?);
        Ok(())
    }

    /// Closes the database (its file could not be read back after a
    /// reopen): writes are refused until a reopen works.
    pub(super) fn close(&self) {
        *write_lock(&self.db) = None;
        *lock(&self.failed_open) = Some(Instant::now());
    }

    /// Queues `changes` for the next commit. Call it in the order the
    /// changes were made to the store's memory (under that lock), so that
    /// the file sees them in the same order.
    pub(super) fn push(&self, changes: impl IntoIterator<Item = Change>) -> Ticket {
        let mut s = lock(&self.state);
        s.pending.extend(changes);
        Ticket(s.batch.clone())
    }

    /// Fails every change pushed and not yet taken by a leader, with
    /// `why`: after a failed commit the store rereads its file, and
    /// changes made after the failed ones are not in it.
    pub(super) fn discard_pending(&self, why: &str) {
        let mut s = lock(&self.state);
        s.pending.clear();
        let failed = std::mem::take(&mut s.batch);
        let _ = failed.result.set(Err(why.to_owned()));
        failed.wake_all();
    }

    /// What the writer of `ticket` does next; never blocks on I/O.
    pub(super) fn turn(&self, ticket: &Ticket) -> Turn {
        let mut s = lock(&self.state);
        Self::turn_locked(&mut s, &ticket.0)
    }

    fn turn_locked(s: &mut State, mine: &Arc<Batch>) -> Turn {
        if let Some(result) = mine.result.get() {
            return Turn::Done(result.clone());
        }
        if s.committing {
            return Turn::Wait;
        }
        // No commit is running and ours is not written: it is the pending
        // batch (a leader sets a batch's result before it lets go).
        s.committing = true;
        s.commits += 1;
        Turn::Lead(Lead {
            changes: std::mem::take(&mut s.pending),
            batch: std::mem::take(&mut s.batch),
        })
    }

    /// Commits a leader's changes in one transaction. Blocks on the disk.
    ///
    /// # Errors
    /// What redb said.
    pub(super) fn write(&self, lead: &Lead) -> Result<(), String> {
        self.with_db(|db| write(db, &lead.changes))?
    }

    /// Ends a leader's commit with `result`: its writers are told, and the
    /// next batch's waiters woken to elect the next leader.
    pub(super) fn finish(&self, lead: Lead, result: Result<(), String>) {
        let mut s = lock(&self.state);
        let _ = lead.batch.result.set(result);
        s.committing = false;
        lead.batch.wake_all();
        if !s.pending.is_empty() {
            s.batch.cv.notify_one();
            s.batch.notify.notify_waiters();
        }
    }

    /// Waits on this thread until the batch of `ticket` is done, or it is
    /// this thread's turn to lead its commit.
    pub(super) fn wait_turn(&self, ticket: &Ticket) -> Turn {
        let mut s = lock(&self.state);
        loop {
            match Self::turn_locked(&mut s, &ticket.0) {
                Turn::Wait => {
                    s = ticket
                        .0
                        .cv
                        .wait(s)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                turn => return turn,
            }
        }
    }

    /// Transactions committed or tried so far.
    #[cfg(test)]
    pub(super) fn commits(&self) -> u64 {
        lock(&self.state).commits
    }
}

/// Writes `changes` in one transaction and commits it.
fn write(db: &Database, changes: &[Change]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(EVENTS).map_err(|e| e.to_string())?;
        for change in changes {
            match change {
                Change::Put(seq, record) => {
                    table
                        .insert(*seq, record.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Change::Delete(seq) => {
                    table.remove(*seq).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    fn log() -> (tempfile::TempDir, Arc<Log>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let open: Opener = Box::new(move || Database::create(&path).map_err(|e| e.to_string()));
        let log = Log::new(open, Duration::ZERO).unwrap();
        log.with_db(|db| {
            let txn = db.begin_write().unwrap();
            txn.open_table(EVENTS).unwrap();
            txn.commit().unwrap();
        })
        .unwrap();
        (dir, Arc::new(log))
    }

    /// Waits for `t` on this thread, leading its commit if need be.
    fn settle(log: &Log, t: &Ticket) -> Result<(), String> {
        match log.wait_turn(t) {
            Turn::Done(r) => r,
            Turn::Lead(lead) => {
                let r = log.write(&lead);
                log.finish(lead, r.clone());
                r
            }
            Turn::Wait => unreachable!("wait_turn waits"),
        }
    }

    fn rows(log: &Log) -> u64 {
        log.with_db(|db| {
            let txn = db.begin_read().unwrap();
            txn.open_table(EVENTS).unwrap().len().unwrap()
        })
        .unwrap()
    }

    #[test]
    fn writers_that_come_during_a_commit_share_the_next_one() {
        let (_dir, log) = log();
        // A commit under way: held here, as a leader would hold it.
        lock(&log.state).committing = true;
        let writers: Vec<_> = (0..8u64)
            .map(|i| {
                let log = log.clone();
                std::thread::spawn(move || {
                    let t = log.push([Change::Put(i, vec![1; 10])]);
                    settle(&log, &t)
                })
            })
            .collect();
        while lock(&log.state).pending.len() < 8 {
            std::thread::yield_now();
        }
        assert_eq!(rows(&log), 0, "nothing written while the commit is held");
        // The held commit ends, as a leader's does: the next batch's first
        // waiter leads it.
        {
            let mut s = lock(&log.state);
            s.committing = false;
            s.batch.cv.notify_one();
        }
        for w in writers {
            assert_eq!(w.join().unwrap(), Ok(()));
        }
        assert_eq!(log.commits(), 1, "eight writers, one transaction");
        assert_eq!(rows(&log), 8);
    }

    #[test]
    fn changes_reach_the_file_in_the_order_pushed() {
        let (_dir, log) = log();
        let t = log.push([
            Change::Put(1, b"a".to_vec()),
            Change::Put(2, b"b".to_vec()),
            Change::Delete(1),
            Change::Put(2, b"c".to_vec()),
        ]);
        settle(&log, &t).unwrap();
        log.with_db(|db| {
            let txn = db.begin_read().unwrap();
            let table = txn.open_table(EVENTS).unwrap();
            assert!(redb::ReadableTable::get(&table, 1).unwrap().is_none());
            let two = redb::ReadableTable::get(&table, 2).unwrap().unwrap();
            assert_eq!(two.value(), b"c");
        })
        .unwrap();
        // A ticket already written answers at once, without a commit.
        let commits = log.commits();
        settle(&log, &t).unwrap();
        assert_eq!(log.commits(), commits);
    }

    #[test]
    fn discarded_changes_fail_their_writers_and_are_not_written() {
        let (_dir, log) = log();
        let t = log.push([Change::Put(1, b"a".to_vec())]);
        log.discard_pending("the file failed");
        assert_eq!(settle(&log, &t), Err("the file failed".to_owned()));
        assert_eq!(rows(&log), 0);
        // The log goes on with the next batch.
        let t = log.push([Change::Put(2, b"b".to_vec())]);
        assert_eq!(settle(&log, &t), Ok(()));
        assert_eq!(rows(&log), 1);
    }
}

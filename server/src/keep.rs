//! Where the events the router owes are kept: persistent events (the JIP
//! queue) and the copies queued for offline servers. One router keeps
//! them in its own file ([`Local`], redb); the routers of a cluster share
//! them in JetStream ([`crate::cluster::Vault`]). Either way a write is
//! durable before the ack that promises it goes out, and dispatch and
//! replay are one code path above this seam.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use icom_protocol::{lock, Target};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::router::Peer;
use crate::space::Pending;
use crate::store::{Due, Store, StoreError};

/// What a persistent send stores.
#[derive(Debug, Clone)]
pub(crate) struct Persistent {
    /// Its id: a later one with the same id replaces it.
    pub(crate) persist_id: String,
    /// Who it is for (matched when a server connects).
    pub(crate) target: Target,
    /// Its sender.
    pub(crate) from: String,
    /// When it expires (ms since the epoch), if it has a ttl.
    pub(crate) expires_ms: Option<u64>,
    /// The encoded `deliver`.
    pub(crate) wire: Bytes,
}

/// Per recipient: queued, or why not (the bound it hit, or the store
/// failing for this copy).
pub(crate) type Verdicts = Vec<Result<(), StoreError>>;

/// The store of owed events, behind the seam.
pub(crate) trait Keep: Send + Sync + std::fmt::Debug {
    /// Stores a persistent event, replacing one of the same id.
    fn persist(&self, event: Persistent) -> Pending<'_, Result<(), StoreError>>;

    /// Removes the persistent event `persist_id`; false if there is none.
    fn forget(&self, persist_id: String) -> Pending<'_, Result<bool, StoreError>>;

    /// Queues a copy of `wire` for each of `recipients` (offline named
    /// servers of a send with a ttl).
    fn enqueue(
        &self,
        recipients: Vec<String>,
        from: String,
        expires_ms: Option<u64>,
        wire: Bytes,
    ) -> Pending<'_, Result<Verdicts, StoreError>>;

    /// Everything due to `peer`, just registered, in stored order. In a
    /// cluster this first catches up with every write acked anywhere
    /// before the call.
    fn due_for<'a>(
        &'a self,
        peer: &'a Arc<Peer>,
        config: Arc<Config>,
    ) -> Pending<'a, Result<Vec<Due>, StoreError>>;

    /// The queued copy `seq` was delivered whole: delete it.
    fn delivered(&self, seq: u64) -> Pending<'_, Result<(), StoreError>>;

    /// Deletes what expired by `now_ms`; returns how many.
    fn sweep(&self, now_ms: u64) -> Pending<'_, Result<usize, StoreError>>;

    /// Persistent events, queued copies, bytes (in a cluster: the whole
    /// cluster's, as this router knows them).
    fn counts(&self) -> (usize, usize, usize);

    /// The store's own work, until `shutdown` (a cluster's follows the
    /// shared store).
    fn run(self: Arc<Self>, _shutdown: CancellationToken) -> Pending<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Sends on their way into the store. A server's replay reads the store
/// just after the server registers: a send resolved before that (without
/// the server among its live recipients) but stored after the read would
/// reach the server neither way, so the replay first waits for such sends
/// ([`Storing::settled`]). One router only: a cluster's replay follows the
/// shared store for a while instead (`cluster::Vault`).
#[derive(Debug, Default)]
pub(crate) struct Storing {
    state: Mutex<Open>,
    done: Notify,
}

/// The sends under way, by the order they began in.
#[derive(Debug, Default)]
struct Open {
    next: u64,
    open: BTreeSet<u64>,
}

/// One send that may store, from before its target is resolved until it
/// is stored or given up: dropped, it counts as settled.
#[derive(Debug)]
pub(crate) struct StoreTicket {
    storing: Arc<Storing>,
    id: u64,
}

impl Storing {
    /// A send that may store begins (before its target is resolved).
    pub(crate) fn begin(self: &Arc<Self>) -> StoreTicket {
        let mut s = lock(&self.state);
        let id = s.next;
        s.next += 1;
        s.open.insert(id);
        StoreTicket {
            storing: self.clone(),
            id,
        }
    }

    /// Waits until every send that began before this call settled.
    pub(crate) async fn settled(&self) {
        let mark = lock(&self.state).next;
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.state).open.first().is_none_or(|&id| id >= mark) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for StoreTicket {
    fn drop(&mut self) {
        lock(&self.storing.state).open.remove(&self.id);
        self.storing.done.notify_waiters();
    }
}

/// Store work that can take long (a replay's reading, a sweep) running on
/// blocking threads at once; the rest wait as tasks. Writes run on their
/// sender's task ([`Local::write`]), and the wait for a commit holds no
/// thread, so more would only cost a stack and an allocator thread cache
/// each.
const STORE_SLOTS: usize = 4;

/// One router's own store: the redb file in its data dir.
#[derive(Debug)]
pub(crate) struct Local {
    store: Arc<Store>,
    slots: Semaphore,
}

impl Local {
    pub(crate) fn new(store: Arc<Store>) -> Local {
        Local {
            store,
            slots: Semaphore::new(STORE_SLOTS),
        }
    }

    /// Runs a store write on this task: with its writes deferred
    /// ([`Store::deferring`]) it only changes memory (no file I/O, no
    /// thread to hand over to), then waits, as this task, for the commit
    /// it shares with every writer waiting meanwhile (group commit). For
    /// the writes whose memory work is short: one record, or one per
    /// recipient.
    /// While the file is closed after a failed commit, the write would
    /// reopen it first: that is file work, so it goes to
    /// [`Local::blocking`].
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if !self.store.is_open() {
            return self.blocking(f).await;
        }
        let (value, durable) = self.store.deferring(|| f(&self.store));
        let value = value?;
        durable.settled().await?;
        Ok(value)
    }

    /// Runs store work off the async threads, at most [`STORE_SLOTS`] at
    /// once, and returns once its writes are on disk. The work's writes are
    /// deferred ([`Store::deferring`]): the blocking thread does only what
    /// they change in memory, and this task, not a thread, waits for their
    /// commit, which they share with every writer waiting meanwhile (group
    /// commit).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (value, durable) = {
            let Ok(_slot) = self.slots.acquire().await else {
                return Err(StoreError::Io("the store is closed".into()));
            };
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.deferring(|| f(&store)))
                .await
                .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
        };
        let value = value?;
        durable.settled().await?;
        Ok(value)
    }
}

impl Keep for Local {
    fn persist(&self, e: Persistent) -> Pending<'_, Result<(), StoreError>> {
        Box::pin(
            self.write(move |s| s.persist(&e.persist_id, &e.target, &e.from, e.expires_ms, e.wire)),
        )
    }

    fn forget(&self, persist_id: String) -> Pending<'_, Result<bool, StoreError>> {
        Box::pin(self.write(move |s| s.forget(&persist_id)))
    }

    fn enqueue(
        &self,
        recipients: Vec<String>,
        from: String,
        expires_ms: Option<u64>,
        wire: Bytes,
    ) -> Pending<'_, Result<Verdicts, StoreError>> {
        Box::pin(self.write(move |s| {
            let ids: Vec<&str> = recipients.iter().map(String::as_str).collect();
            let verdicts = s.enqueue(&ids, &from, expires_ms, &wire)?;
            Ok(verdicts
                .into_iter()
                .map(|v| v.map_err(StoreError::Full))
                .collect())
        }))
    }

    fn due_for<'a>(
        &'a self,
        peer: &'a Arc<Peer>,
        config: Arc<Config>,
    ) -> Pending<'a, Result<Vec<Due>, StoreError>> {
        let id = peer.server_id.clone();
        Box::pin(self.blocking(move |s| Ok(s.due_for(&id, &config.groups, crate::clock::now_ms()))))
    }

    fn delivered(&self, seq: u64) -> Pending<'_, Result<(), StoreError>> {
        Box::pin(self.write(move |s| s.delivered(seq)))
    }

    fn sweep(&self, now_ms: u64) -> Pending<'_, Result<usize, StoreError>> {
        Box::pin(self.blocking(move |s| s.sweep(now_ms)))
    }

    fn counts(&self) -> (usize, usize, usize) {
        self.store.counts()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::thread::ThreadId;

    use super::*;
    use crate::store::tests::{flaky_store, wire};

    fn event(id: &str) -> Persistent {
        Persistent {
            persist_id: id.into(),
            target: Target::All,
            from: "x".into(),
            expires_ms: None,
            wire: wire(id),
        }
    }

    /// A replay waits for the sends that began before it, and only those.
    #[tokio::test]
    async fn settled_waits_for_the_earlier_tickets_only() {
        let storing = Arc::new(Storing::default());
        let (first, second) = (storing.begin(), storing.begin());
        let waiting = tokio::spawn({
            let storing = storing.clone();
            async move { storing.settled().await }
        });
        // The replay's wait begins before the later send does.
        tokio::task::yield_now().await;
        let later = storing.begin();
        drop(second);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the first is still open");
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("settled once the earlier two are")
            .unwrap();
        drop(later);
        storing.settled().await;
    }

    /// After a failed commit, the write that reopens the store's file does
    /// it on a blocking thread, never on the runtime's.
    #[tokio::test]
    async fn the_reopen_after_a_failed_commit_is_off_the_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let opened_on = Arc::new(Mutex::new(Vec::<ThreadId>::new()));
        let record = opened_on.clone();
        let store = flaky_store(dir.path(), broken.clone(), move || {
            record.lock().unwrap().push(std::thread::current().id());
        });
        let keep = Local::new(Arc::new(store));
        keep.persist(event("a")).await.unwrap();
        broken.store(true, Ordering::SeqCst);
        assert!(keep.persist(event("b")).await.is_err());
        broken.store(false, Ordering::SeqCst);
        keep.persist(event("c")).await.unwrap();
        let opened_on = opened_on.lock().unwrap().clone();
        let here = std::thread::current().id();
        // Opened at the start (here), then reopened by the failed
        // commit's leader (which failed: the disk was still broken), then
        // by the next write, which found the file closed.
        assert_eq!(opened_on.len(), 3, "{opened_on:?}");
        assert_eq!(opened_on[0], here);
        assert!(
            opened_on[1..].iter().all(|t| *t != here),
            "a reopen ran on the runtime's thread: {opened_on:?}"
        );
        assert!(keep.store.is_open());
    }
}

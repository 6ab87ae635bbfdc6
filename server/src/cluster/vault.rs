//! The cluster's shared store: persistent events and offline queues in one
//! JetStream stream (`<prefix>_store`, file storage, `store_replicas`
//! replicas), written before the ack that promises them, and followed by
//! every router into its [`Mirror`] (see [`super::follow`]).
//!
//! - A write is a JetStream publish, acked by the stream once a quorum of
//!   its replicas has it; only then is the send acked. While the stream
//!   has no leader a write is retried (de-duplicated by its message id)
//!   until `store_timeout_ms`, then the send gets `unreachable`.
//! - Replacing a persistent event and deleting a record are rollups on
//!   the record's subject; deletions are empty messages that expire after
//!   [`TOMBSTONE_TTL`]. Expiry is the stream's per-message TTL (NATS
//!   2.11 or newer).
//! - A connecting server's replay first writes a barrier and waits until
//!   the mirror has read past it: every write acked anywhere before is in
//!   its replay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::header::{NATS_MESSAGE_ID, NATS_ROLLUP};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use icom_protocol::lock;
use tokio::sync::watch;
use tracing::warn;

use super::mirror::{persistent_tail, queued_tail, Booked, Booking, Mirror};
use super::stream::{check_version, create_error, stream_bytes, stream_name};
use super::ClusterError;
use crate::clock::now_ms;
use crate::config::{Cluster, Config};
use crate::keep::{Keep, Persistent, Verdicts};
use crate::router::{Peer, Table};
use crate::space::Pending;
use crate::store::{encode, persistent_bytes, Due, Header, Kind, StoreError, StoreLimits, Stored};

/// How long a deletion stays in the stream: long enough for every
/// router following the stream to read it. (A router that lost NATS
/// reads the stream again from its start.)
pub(super) const TOMBSTONE_TTL: Duration = Duration::from_secs(300);

/// How long after its replay a server still gets, from the mirror, the
/// persistent events that a router which did not know of it yet may not
/// have sent it.
pub(super) const RECENT: Duration = Duration::from_secs(10);

/// Room in a stream message beside the largest event.
const RECORD_HEADROOM: usize = 64 << 10;

/// A server whose replay this router has started.
#[derive(Debug)]
pub(super) struct Joiner {
    pub(super) session: u64,
    /// The mirror's sequence its replay was taken at; `u64::MAX` while
    /// the replay waits for the barrier.
    pub(super) replay_seq: u64,
    pub(super) at: Instant,
    pub(super) config: Arc<Config>,
    /// Its replay was taken from a view of the store that could not catch
    /// up (NATS lost, or the stream being read again): it is given the
    /// persistent events that come after it until the view is whole again
    /// ([`Joiner::follows`]), however long that takes (up to [`STALE`]).
    pub(super) stale: bool,
}

impl Joiner {
    /// Whether a persistent event that arrives now, after its replay, goes
    /// to it: one that joined in the last [`RECENT`], or whose replay was
    /// stale.
    pub(super) fn follows(&self) -> bool {
        let age = self.at.elapsed();
        age < RECENT || (self.stale && age < STALE)
    }
}

/// The longest a server whose replay was stale is followed: what the
/// store took meanwhile reaches it when this router's view is whole again
/// (NATS back, the stream read).
pub(super) const STALE: Duration = Duration::from_secs(600);

/// What the follower and the writers share.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) mirror: Mirror,
    pub(super) booked: Booked,
    pub(super) joiners: HashMap<Arc<str>, Joiner>,
}

/// The shared store of a cluster.
#[derive(Debug)]
pub(crate) struct Vault {
    pub(super) js: jetstream::Context,
    pub(super) stream: String,
    /// `<prefix>.store`
    pub(super) root: String,
    pub(super) router: String,
    pub(super) limits: StoreLimits,
    pub(super) replicas: usize,
    pub(super) max_record: usize,
    pub(super) timeout: Duration,
    pub(super) state: Mutex<State>,
    /// The mirror's sequence, for replays waiting on a barrier.
    pub(super) applied: watch::Sender<u64>,
    pub(super) table: Arc<Table>,
    pub(super) up: Arc<AtomicBool>,
    /// Counts NATS (re)connects: a new one makes the mirror read the
    /// stream again.
    pub(super) connects: Arc<AtomicU64>,
    /// Whether the stream is known to exist with this router's settings.
    pub(super) ready: AtomicBool,
    /// The highest barrier written: a mirror that does not reach it soon
    /// has lost the stream and reads it again.
    pub(super) wanted: AtomicU64,
}

impl Vault {
    pub(super) fn new(
        cfg: &Cluster,
        config: &Config,
        client: async_nats::Client,
        table: Arc<Table>,
        up: Arc<AtomicBool>,
        connects: Arc<AtomicU64>,
    ) -> Vault {
        let js = jetstream::ContextBuilder::new()
            // Creating a replicated stream can take more than a request
            // to another router may.
            .timeout(cfg.request_timeout.max(cfg.store_timeout))
            .ack_timeout(cfg.store_timeout)
            .build(client);
        Vault {
            js,
            stream: stream_name(&cfg.prefix),
            root: format!("{}.store", cfg.prefix),
            router: cfg.name.clone(),
            limits: config.store,
            replicas: cfg.store_replicas,
            max_record: config.limits.max_event_bytes + RECORD_HEADROOM,
            timeout: cfg.store_timeout,
            state: Mutex::new(State::default()),
            applied: watch::channel(0).0,
            table,
            up,
            connects,
            ready: AtomicBool::new(false),
            wanted: AtomicU64::new(0),
        }
    }

    /// Checks the server's version and creates (or updates) the stream.
    ///
    /// # Errors
    /// [`ClusterError`] saying what to change.
    pub(super) async fn prepare(&self) -> Result<(), ClusterError> {
        check_version(&self.js.client().server_info().version).map_err(ClusterError::new)?;
        let config = stream::Config {
            name: self.stream.clone(),
            description: Some("ICOM: persistent events and offline queues".into()),
            subjects: vec![format!("{}.>", self.root)],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            // The configured bound is kept by the routers, on event
            // bytes; the stream's own, on message bytes (with headers,
            // deletions and barriers), is a backstop a quarter above.
            max_bytes: i64::try_from(stream_bytes(self.limits.max_bytes)).unwrap_or(i64::MAX),
            max_message_size: i32::try_from(self.max_record).unwrap_or(i32::MAX),
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            allow_message_ttl: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.js
            .create_or_update_stream(config)
            .await
            .map_err(|e| create_error(&e, &self.stream, self.replicas))?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    fn subject(&self, tail: &str) -> String {
        format!("{}.{tail}", self.root)
    }

    /// Publishes to the stream and waits for its ack; retried, with one
    /// message id (the stream drops a second copy), until the store's
    /// timeout. Returns the stream sequence.
    pub(super) async fn publish(
        &self,
        tail: &str,
        body: Bytes,
        ttl: Option<Duration>,
    ) -> Result<u64, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.publish_as(&id, tail, body, ttl).await
    }

    /// As [`Vault::publish`], under message id `id`.
    async fn publish_as(
        &self,
        id: &str,
        tail: &str,
        body: Bytes,
        ttl: Option<Duration>,
    ) -> Result<u64, StoreError> {
        let subject = self.subject(tail);
        let mut msg = PublishMessage::build()
            .payload(body)
            .header(NATS_ROLLUP, "sub")
            .header(NATS_MESSAGE_ID, id);
        if let Some(ttl) = ttl {
            msg = msg.ttl(ttl);
        }
        let deadline = Instant::now() + self.timeout;
        let mut last = String::from("NATS is not connected");
        loop {
            if self.up.load(Ordering::Acquire) && self.ready.load(Ordering::Acquire) {
                let left = deadline.saturating_duration_since(Instant::now());
                let attempt = async {
                    self.js
                        .send_publish(subject.clone(), msg.clone())
                        .await?
                        .await
                };
                match tokio::time::timeout(left, attempt).await {
                    Ok(Ok(ack)) => return Ok(ack.sequence),
                    Ok(Err(e)) => {
                        if let Some(full) = full(&e) {
                            return Err(StoreError::Full(full));
                        }
                        last = e.to_string();
                    }
                    Err(_) => last = "no ack".into(),
                }
            } else if self.up.load(Ordering::Acquire) {
                last = format!("the stream {} is not ready", self.stream);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable(format!(
                    "the cluster's store did not take the write within {} ms ({last}); \
                     it may still have been stored",
                    self.timeout.as_millis()
                )));
            }
            tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        }
    }

    /// Writes a barrier; returns its sequence.
    pub(super) async fn barrier(&self) -> Result<u64, StoreError> {
        let seq = self
            .publish(&format!("sync.{}", self.router), Bytes::new(), None)
            .await?;
        self.wanted.fetch_max(seq, Ordering::AcqRel);
        Ok(seq)
    }

    /// Writes a barrier and waits until the mirror has read past it.
    pub(super) async fn catch_up(&self) -> Result<(), StoreError> {
        let seq = self.barrier().await?;
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(self.timeout, rx.wait_for(|a| *a >= seq))
            .await
            .is_ok_and(|r| r.is_ok());
        drop(rx);
        if reached {
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "this router's view of the cluster's store is behind (at {}, the stream at {seq})",
            *self.applied.borrow()
        )))
    }

    /// Stores a record on `tail`, within `booking`, with its ttl.
    async fn write(&self, tail: &str, stored: &Stored, booking: Booking) -> Result<(), StoreError> {
        let ttl = stored.header.expires_ms.map(|e| {
            let left = e.saturating_sub(now_ms());
            // Whole seconds, rounded up: the mirror drops it on time.
            Duration::from_secs(left.div_ceil(1000).max(1))
        });
        let id = uuid::Uuid::new_v4().simple().to_string();
        lock(&self.state).booked.send(&id, booking);
        // A write given up half way (its task dropped) gives its room back.
        let guard = Unbook {
            vault: self,
            id: &id,
        };
        let written = self
            .publish_as(&id, tail, Bytes::from(encode(stored)), ttl)
            .await;
        std::mem::forget(guard);
        let mut st = lock(&self.state);
        match written {
            Ok(seq) => {
                let applied = st.mirror.applied();
                st.booked.stored(&id, seq, applied);
                Ok(())
            }
            Err(e) => {
                st.booked.failed(&id);
                Err(e)
            }
        }
    }

    /// Deletes the record on `tail`.
    pub(super) async fn delete(&self, tail: &str) -> Result<(), StoreError> {
        self.publish(tail, Bytes::new(), Some(TOMBSTONE_TTL))
            .await
            .map(|_| ())
    }
}

/// Gives a write's room back if the write is dropped before its outcome.
struct Unbook<'a> {
    vault: &'a Vault,
    id: &'a str,
}

impl Drop for Unbook<'_> {
    fn drop(&mut self) {
        lock(&self.vault.state).booked.failed(self.id);
    }
}

/// The bound a failed publish hit, if that is why it failed.
fn full(e: &PublishError) -> Option<String> {
    let text = e.to_string();
    if e.kind() == PublishErrorKind::MaxPayloadExceeded {
        return Some(format!(
            "the event does not fit in one NATS message (max_payload): {text}"
        ));
    }
    ["maximum bytes", "maximum messages", "message size exceeds"]
        .iter()
        .any(|m| text.contains(m))
        .then(|| format!("the cluster's store is full: {text}"))
}

impl Keep for Vault {
    fn persist(&self, e: Persistent) -> Pending<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let booking = {
                let mut st = lock(&self.state);
                let State { mirror, booked, .. } = &mut *st;
                let bytes = persistent_bytes(e.wire.len(), &e.persist_id, &e.target);
                booked.persist(mirror, &self.limits, &e.persist_id, bytes)?
            };
            let tail = persistent_tail(&e.persist_id);
            let stored = Stored {
                header: Header {
                    kind: Kind::Persistent {
                        persist_id: e.persist_id,
                        target: e.target,
                    },
                    from: e.from,
                    expires_ms: e.expires_ms,
                },
                wire: e.wire,
            };
            self.write(&tail, &stored, booking).await
        })
    }

    fn forget(&self, persist_id: String) -> Pending<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            // Whether it exists anywhere: as of every write acked before.
            self.catch_up().await?;
            if !lock(&self.state).mirror.has_persistent(&persist_id) {
                return Ok(false);
            }
            self.delete(&persistent_tail(&persist_id)).await?;
            Ok(true)
        })
    }

    fn enqueue(
        &self,
        recipients: Vec<String>,
        from: String,
        expires_ms: Option<u64>,
        wire: Bytes,
    ) -> Pending<'_, Result<Verdicts, StoreError>> {
        Box::pin(async move {
            let writes = recipients.into_iter().map(|r| {
                let booking = {
                    let mut st = lock(&self.state);
                    let State { mirror, booked, .. } = &mut *st;
                    booked.queue(mirror, &self.limits, &r, wire.len())
                };
                let stored = Stored {
                    header: Header {
                        kind: Kind::Queued {
                            recipient: r.clone(),
                        },
                        from: from.clone(),
                        expires_ms,
                    },
                    wire: wire.clone(),
                };
                async move {
                    let booking = booking?;
                    let uid = uuid::Uuid::new_v4().simple().to_string();
                    self.write(&queued_tail(&r, &uid), &stored, booking).await
                }
            });
            Ok(futures_util::future::join_all(writes).await)
        })
    }

    fn due_for<'a>(
        &'a self,
        peer: &'a Arc<Peer>,
        config: Arc<Config>,
    ) -> Pending<'a, Result<Vec<Due>, StoreError>> {
        Box::pin(async move {
            let id = peer.server_id.clone();
            {
                let mut st = lock(&self.state);
                st.joiners.retain(|_, j| {
                    j.follows() || (j.replay_seq == u64::MAX && j.at.elapsed() < TOMBSTONE_TTL)
                });
                st.joiners.insert(
                    id.clone(),
                    Joiner {
                        session: peer.session,
                        replay_seq: u64::MAX,
                        at: Instant::now(),
                        config: config.clone(),
                        stale: false,
                    },
                );
            }
            let stale = self.catch_up().await.is_err_and(|e| {
                warn!(server_id = %id, "replaying from this router's view of the store, which may miss the newest events (they follow once it has caught up): {e}");
                true
            });
            let mut st = lock(&self.state);
            let due = st.mirror.due_for(&id, &config.groups, now_ms());
            let applied = st.mirror.applied();
            if let Some(j) = st.joiners.get_mut(&id) {
                if j.session == peer.session {
                    j.replay_seq = applied;
                    j.at = Instant::now();
                    j.stale = stale;
                }
            }
            Ok(due)
        })
    }

    fn delivered(&self, seq: u64) -> Pending<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let tail = lock(&self.state)
                .mirror
                .queued_tail_of(seq)
                .map(str::to_owned);
            match tail {
                Some(tail) => self.delete(&tail).await,
                None => Ok(()),
            }
        })
    }

    fn sweep(&self, now_ms: u64) -> Pending<'_, Result<usize, StoreError>> {
        let n = lock(&self.state).mirror.sweep(now_ms);
        Box::pin(std::future::ready(Ok(n)))
    }

    fn counts(&self) -> (usize, usize, usize) {
        lock(&self.state).mirror.counts()
    }

    fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) -> Pending<'static, ()> {
        Box::pin(super::follow::run(self, shutdown))
    }
}

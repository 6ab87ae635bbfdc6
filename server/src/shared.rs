//! What the listener and every connection share: the routing table, the
//! store and its work slots, the metrics, the live configuration and
//! revocation lists, and the shutdown token.

use std::sync::{Arc, RwLock};

use icom_protocol::{read, write};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{Gauges, Metrics};
use crate::router::Table;
use crate::space::Space;
use crate::store::{Store, StoreError};

/// Store work running on blocking threads at once. The database takes one
/// write transaction at a time, so more would only be threads waiting for
/// its lock (each with a stack and its allocator's thread cache); the rest
/// wait in [`Shared::blocking`], as tasks.
const STORE_SLOTS: usize = 4;

/// Revocation lists, as loaded.
pub(crate) type Crls = Arc<Vec<webpki::CertRevocationList<'static>>>;

/// State shared by the listener and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: Arc<Table>,
    /// The routing space beyond this router (nothing, alone).
    pub(crate) space: Arc<dyn Space>,
    pub(crate) metrics: Metrics,
    pub(crate) store: Arc<Store>,
    /// Store work running at once (see [`Shared::blocking`]).
    store_slots: Semaphore,
    config: RwLock<Arc<Config>>,
    crls: RwLock<Crls>,
    pub(crate) shutdown: CancellationToken,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        crls: Crls,
        store: Arc<Store>,
        parts: (Arc<Table>, Arc<dyn Space>, Metrics),
    ) -> Shared {
        let (table, space, metrics) = parts;
        Shared {
            table,
            space,
            metrics,
            store,
            store_slots: Semaphore::new(STORE_SLOTS),
            config: RwLock::new(Arc::new(config)),
            crls: RwLock::new(crls),
            shutdown: CancellationToken::new(),
        }
    }

    /// The current configuration. (The values behind these locks are
    /// replaced whole, never changed in place.)
    pub(crate) fn config(&self) -> Arc<Config> {
        read(&self.config).clone()
    }

    /// The current revocation lists.
    pub(crate) fn crls(&self) -> Crls {
        read(&self.crls).clone()
    }

    /// Puts a reloaded configuration and its revocation lists in place.
    pub(crate) fn replace(&self, config: Config, crls: Crls) {
        *write(&self.config) = Arc::new(config);
        *write(&self.crls) = crls;
    }

    /// The gauges as they are now: connections, outbound queues, store.
    pub(crate) fn gauges(&self) -> Gauges {
        let peers = self.table.all();
        let (mut events, mut bytes) = (0, 0);
        for p in &peers {
            let (e, b) = p.outbound.depth();
            events += e;
            bytes += b;
        }
        let (persistent, queued, stored) = self.store.counts();
        Gauges {
            connections: peers.len(),
            outbound_events: events,
            outbound_bytes: bytes,
            stored_persistent: persistent,
            stored_queued: queued,
            store_bytes: stored,
        }
    }

    /// Runs store work off the async threads, at most [`STORE_SLOTS`] at
    /// once.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Ok(_slot) = self.store_slots.acquire().await else {
            return Err(StoreError::Io("the store is closed".into()));
        };
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("store task failed: {e}"))))
    }
}

impl crate::metrics::Source for Shared {
    fn render(&self) -> String {
        self.metrics.render(self.gauges())
    }

    fn ready(&self) -> bool {
        self.metrics.is_ready()
    }
}

//! What the listener and every connection share: the routing table, the
//! store of owed events, the metrics, the live configuration and
//! revocation lists, and the shutdown token.

use std::sync::{Arc, RwLock};

use icom_protocol::{read, write};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::keep::{Keep, Storing};
use crate::metrics::{Gauges, Metrics};
use crate::router::Table;
use crate::space::Space;

/// Revocation lists, as loaded.
pub(crate) type Crls = Arc<Vec<webpki::CertRevocationList<'static>>>;

/// State shared by the listener and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) table: Arc<Table>,
    /// The routing space beyond this router (nothing, alone).
    pub(crate) space: Arc<dyn Space>,
    pub(crate) metrics: Metrics,
    /// Persistent events and queued copies (the router's file, alone).
    pub(crate) keep: Arc<dyn Keep>,
    /// The sends on their way into `keep`, which a replay waits for.
    pub(crate) storing: Arc<Storing>,
    config: RwLock<Arc<Config>>,
    crls: RwLock<Crls>,
    pub(crate) shutdown: CancellationToken,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        crls: Crls,
        keep: Arc<dyn Keep>,
        parts: (Arc<Table>, Arc<dyn Space>, Metrics),
    ) -> Shared {
        let (table, space, metrics) = parts;
        Shared {
            table,
            space,
            metrics,
            keep,
            storing: Arc::default(),
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
        for p in peers.iter().chain(&self.table.retiring()) {
            let (e, b) = p.outbound.depth();
            events += e;
            bytes += b;
        }
        let (persistent, queued, stored) = self.keep.counts();
        Gauges {
            connections: peers.len(),
            outbound_events: events,
            outbound_bytes: bytes,
            stored_persistent: persistent,
            stored_queued: queued,
            store_bytes: stored,
        }
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

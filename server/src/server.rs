//! The listener: binds the QUIC endpoint, accepts connections within the
//! connection limit, reloads TLS material, groups and limits without a
//! restart, and shuts down explicitly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cluster::Nats;
use crate::config::{Config, ConfigError};
use crate::handshakes::Handshakes;
use crate::keep::{Keep, Local};
use crate::metrics::Metrics;
use crate::router::Table;
use crate::shared::Shared;
use crate::space::{Alone, Space};
use crate::store::Store;
use crate::tls::{self, TlsError};
use icom_protocol::CloseCode;

/// How long shutdown waits for connections to close before giving up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the router could not start, reload or run.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The endpoint's reset key could not be loaded or made.
    #[error("reset key: {0}")]
    ResetKey(#[from] crate::reset::ResetKeyError),
    /// The metrics listener could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster link could not be set up.
    #[error("{0}")]
    Cluster(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound router, ready to run.
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    metrics: Option<tokio::net::TcpListener>,
}

/// A handle that reloads a running router's configuration and TLS files.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Live connections closed because their certificate is now revoked.
    pub revoked: Vec<String>,
}

/// Counters a test or an operator can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Welcomed connections.
    pub connections: usize,
    /// Deliveries waiting in outbound queues, and their bytes.
    pub queued_events: usize,
    /// Bytes waiting in outbound queues.
    pub queued_bytes: usize,
    /// In a cluster: other routers heard from recently.
    pub routers: usize,
    /// In a cluster: servers connected to other routers (and not here).
    pub remote_servers: usize,
    /// In a cluster: whether NATS is connected (alone: always true).
    pub cluster_reachable: bool,
    /// Persistent events stored (in a cluster: the cluster's, as this
    /// router's view of the shared store has them).
    pub stored_persistent: usize,
    /// Copies queued for offline servers (the same).
    pub stored_queued: usize,
}

impl Server {
    /// Loads the TLS material and binds the UDP socket. Must run inside a
    /// tokio runtime.
    ///
    /// # Errors
    /// [`ServerError`] for bad TLS files or an address in use.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let material = tls::load(&config)?;
        let metrics = match config.metrics {
            Some(addr) => Some(
                crate::metrics::bind(addr)
                    .map_err(|source| ServerError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let bind_error = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        let endpoint_config = crate::reset::endpoint_config(&config.data_dir)?;
        let endpoint = endpoint(
            endpoint_config,
            material.server_config,
            config.listen,
            &config.transport,
        )
        .map_err(bind_error)?;
        let local_addr = endpoint.local_addr().map_err(bind_error)?;
        let table = Arc::new(Table::default());
        let metrics_set = Metrics::new();
        let (space, keep): (Arc<dyn Space>, Arc<dyn Keep>) = match &config.cluster {
            None => {
                let store = Arc::new(Store::open(&config.data_dir, config.store)?);
                (Arc::new(Alone), Arc::new(Local::new(store)))
            }
            Some(c) => {
                let (space, vault) = Nats::connect(
                    c.clone(),
                    &config,
                    table.clone(),
                    metrics_set.cluster.clone(),
                )
                .await
                .map_err(|e| ServerError::Cluster(e.to_string()))?;
                (space, vault)
            }
        };
        let shared = Arc::new(Shared::new(
            config,
            Arc::new(material.crls),
            keep,
            (table, space, metrics_set),
        ));
        Ok(Server {
            endpoint,
            shared,
            local_addr,
            metrics,
        })
    }

    /// The address the router listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where metrics and health are served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle to reload the running router.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            endpoint: self.endpoint.clone(),
            shared: self.shared.clone(),
        }
    }

    /// A snapshot of the router's counters.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            shared: self.shared.clone(),
        }
    }

    /// Accepts connections until `shutdown` is cancelled; then closes every
    /// connection with `SHUTDOWN` and waits (at most [`SHUTDOWN_GRACE`]) for
    /// the endpoint to go idle.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let config = self.shared.config();
        if let Some(listener) = self.metrics.take() {
            tokio::spawn(crate::metrics::serve(
                listener,
                self.shared.clone(),
                self.shared.shutdown.clone(),
            ));
        }
        let limit = Arc::new(Semaphore::new(config.limits.max_connections));
        let tracker = TaskTracker::new();
        tracker.spawn(sweep(self.shared.clone(), shutdown.clone()));
        tracker.spawn(crate::presence::run(self.shared.clone(), shutdown.clone()));
        let space_done = CancellationToken::new();
        let space = tokio::spawn(self.shared.space.clone().run(space_done.clone()));
        let keep = tokio::spawn(self.shared.keep.clone().run(space_done.clone()));
        let (persistent, queued, bytes) = self.shared.keep.counts();
        info!(addr = %self.local_addr, persistent, queued, bytes, "listening");
        self.shared.metrics.set_ready(true);
        let handshakes = Handshakes::new(config.limits.max_handshakes);
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => i,
                () = shutdown.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                warn!(remote = %incoming.remote_address(), "refused: connection limit reached");
                self.shared.metrics.refuse("limit");
                incoming.refuse();
                continue;
            };
            let place = match handshakes.try_take() {
                Some(place) => place,
                // Every place taken while handshakes are being abandoned:
                // an address not yet validated proves itself first (a
                // stateless Retry, nothing kept), so that spoofed Initials
                // never wait for a place.
                None if handshakes.wary() && incoming.may_retry() => {
                    self.shared.metrics.handshake_retries.inc();
                    debug!(remote = %incoming.remote_address(), "sent a Retry");
                    if let Err(e) = incoming.retry() {
                        debug!("retrying a connection failed: {e}");
                    }
                    continue;
                }
                // It waits its turn; the connections behind it wait in
                // quinn's queue, unprocessed.
                None => {
                    let place = tokio::select! {
                        place = handshakes.take() => place,
                        () = shutdown.cancelled() => None,
                    };
                    let Some(place) = place else { break };
                    place
                }
            };
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    // An unauthenticated datagram can get here (quinn
                    // decrypts an Initial only when it is accepted): count
                    // it, but do not let it flood the log.
                    debug!("accepting a connection failed: {e}");
                    self.shared.metrics.refuse("initial");
                    continue;
                }
            };
            let shared = self.shared.clone();
            tracker.spawn(async move {
                crate::handler::handle(shared, connecting, place).await;
                drop(permit);
            });
        }
        info!("shutting down");
        self.shared.metrics.set_ready(false);
        self.shared.shutdown.cancel();
        self.endpoint.set_server_config(None);
        self.shared.space.stopping();
        let table = &self.shared.table;
        for peer in table.all().into_iter().chain(table.retiring()) {
            peer.close(CloseCode::Shutdown);
        }
        tracker.close();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            tracker.wait().await;
            self.endpoint.close(
                CloseCode::Shutdown.code().into(),
                CloseCode::Shutdown.as_str().as_bytes(),
            );
            self.endpoint.wait_idle().await;
        })
        .await;
        if drained.is_err() {
            warn!("connections did not close within {SHUTDOWN_GRACE:?}");
        }
        // The space last: the others hear that this router's servers left.
        space_done.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(4), space).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), keep).await;
        info!("stopped");
    }
}

/// Puts back what a reload cannot change in a running router, warning for
/// each that changed: where it keeps its data and serves metrics, the
/// store's bounds (the store is open), the bounds on connections and
/// handshakes (the listener took them), and `max_event_bytes` (every
/// live connection's `welcome` announced it).
fn keep_running(config: &mut Config, old: &Config) {
    macro_rules! keep {
        ($($field:ident).+, $name:literal) => {
            if config.$($field).+ != old.$($field).+ {
                warn!(concat!($name, " changed: that takes a restart; keeping the running value"));
                config.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    keep!(data_dir, "data_dir");
    keep!(metrics, "[metrics]");
    keep!(store, "[store]");
    keep!(limits.max_connections, "limits.max_connections");
    keep!(limits.max_handshakes, "limits.max_handshakes");
    keep!(limits.max_event_bytes, "limits.max_event_bytes");
    // Never below the event size in force (the file may have lowered
    // both, and only the one takes a restart).
    if config.limits.partial_bytes < config.limits.max_event_bytes {
        warn!(
            "limits.partial_bytes = {} is below the running max_event_bytes = {}: keeping {}",
            config.limits.partial_bytes, config.limits.max_event_bytes, old.limits.partial_bytes
        );
        config.limits.partial_bytes = old.limits.partial_bytes;
    }
}

impl ReloadHandle {
    /// Re-reads the configuration file (if the router was started from one)
    /// and the TLS files: new connections use the new CA, CRL and
    /// certificate; groups and limits apply to the next event; live
    /// connections whose certificate is now revoked are closed with
    /// `REVOKED`. What takes a restart keeps its running value, with a
    /// warning (`keep_running`). On error nothing changes.
    ///
    /// # Errors
    /// [`ServerError`] naming what could not be loaded.
    pub fn reload(&self) -> Result<ReloadReport, ServerError> {
        let result = self.try_reload();
        self.shared.metrics.reload(result.is_ok());
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ServerError> {
        let old = self.shared.config();
        let mut config = match &old.source {
            Some(path) => Config::load_layers(old.dev.clone(), Some(path), old.flags.clone())?,
            None => (*old).clone(),
        };
        if config.listen != old.listen {
            warn!(
                "listen changed from {} to {}: that takes a restart",
                old.listen, config.listen
            );
            config.listen = old.listen;
        }
        if config.workers != old.workers {
            warn!(
                "workers changed from {} to {}: that takes a restart",
                old.workers, config.workers
            );
            config.workers = old.workers;
        }
        if config.cluster != old.cluster {
            warn!("[cluster] changed: that takes a restart; keeping the running cluster settings");
            config.cluster = old.cluster.clone();
        }
        keep_running(&mut config, &old);
        let material = tls::load(&config)?;
        self.endpoint
            .set_server_config(Some(material.server_config));
        self.shared.replace(config, Arc::new(material.crls));
        let crls = self.shared.crls();
        let mut revoked = Vec::new();
        let table = &self.shared.table;
        for peer in table.all().into_iter().chain(table.retiring()) {
            if tls::is_revoked(&crls, &peer.serial) {
                warn!(server_id = %peer.server_id, code = "REVOKED", "closing: certificate revoked");
                peer.close(CloseCode::Revoked);
                revoked.push(peer.server_id.to_string());
            }
        }
        info!(revoked = revoked.len(), "reloaded");
        Ok(ReloadReport { revoked })
    }
}

/// A handle that reads a running router's counters.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    shared: Arc<Shared>,
}

impl StatsHandle {
    /// The counters now.
    pub fn stats(&self) -> Stats {
        let gauges = self.shared.gauges();
        Stats {
            connections: gauges.connections,
            queued_events: gauges.outbound_events,
            queued_bytes: gauges.outbound_bytes,
            routers: usize::try_from(self.shared.metrics.cluster.routers.get()).unwrap_or(0),
            remote_servers: self.shared.table.remote_count(),
            cluster_reachable: self.shared.space.reachable(),
            stored_persistent: gauges.stored_persistent,
            stored_queued: gauges.stored_queued,
        }
    }
}

/// Binds the QUIC endpoint. Its socket asks for larger buffers than the
/// kernel's default (`transport.udp_receive_buffer`; Linux gives about
/// 208 KiB, some 90 full-size datagrams): a burst of events, or of
/// handshakes (every game server reconnecting after a router restart),
/// would otherwise overflow it while the endpoint task catches up, and
/// every dropped datagram costs a retransmission and a slower sender.
fn endpoint(
    endpoint_config: quinn::EndpointConfig,
    config: quinn::ServerConfig,
    addr: SocketAddr,
    transport: &crate::config::Transport,
) -> std::io::Result<quinn::Endpoint> {
    let (socket, buffers) = tls::bind_udp(addr, transport)?;
    if buffers.capped() {
        warn!(
            receive = ?buffers.receive,
            send = ?buffers.send,
            "the OS granted smaller UDP buffers than transport.udp_receive_buffer and \
             udp_send_buffer ask for: raise net.core.rmem_max and net.core.wmem_max"
        );
    }
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    quinn::Endpoint::new(endpoint_config, Some(config), socket, runtime)
}

/// Deletes expired stored events every `sweep_every`.
async fn sweep(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let every = shared.config().sweep_every;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        let now = crate::clock::now_ms();
        match shared.keep.sweep(now).await {
            Ok(0) => {}
            Ok(n) => info!(expired = n, "swept expired stored events"),
            Err(e) => warn!("sweeping the store failed: {e}"),
        }
    }
}

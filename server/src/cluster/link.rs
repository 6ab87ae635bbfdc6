//! The connection to NATS: TLS, reconnects without end, and the link's
//! state (up or down) as a flag the router reads without waiting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::ClusterError;
use crate::config::Cluster;

/// A NATS client and its state.
pub(super) struct Link {
    pub(super) client: Client,
    /// True while connected.
    pub(super) up: Arc<AtomicBool>,
    /// Notified on every (re)connect.
    pub(super) beat_now: Arc<Notify>,
    /// Counts (re)connects.
    pub(super) connects: Arc<AtomicU64>,
}

/// Connects to NATS (waiting at most `connect_timeout` for a first
/// connection; the client keeps trying after that, for ever).
///
/// # Errors
/// [`ClusterError`] for bad URLs or unreadable TLS files.
/// Room for the recipients and headers beside the largest event, in a
/// NATS message.
const EVENT_HEADROOM: usize = 64 << 10;

pub(super) async fn connect(
    cfg: &Cluster,
    max_event_bytes: usize,
    gauge: Gauge,
) -> Result<Link, ClusterError> {
    let addrs = cfg
        .urls
        .iter()
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| ClusterError::new(format!("cluster.urls: {u}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let up = Arc::new(AtomicBool::new(false));
    let beat_now = Arc::new(Notify::new());
    let connects = Arc::new(AtomicU64::new(0));
    let (flag, wake, gauge, count) = (up.clone(), beat_now.clone(), gauge, connects.clone());
    let mut options = ConnectOptions::new()
        .name(format!("icom-router {}", cfg.name))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .request_timeout(Some(cfg.request_timeout))
        .connection_timeout(cfg.connect_timeout.max(Duration::from_secs(1)))
        .ping_interval(cfg.heartbeat.max(Duration::from_secs(1)))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(2000))
        })
        .event_callback(move |event| {
            let (flag, wake, gauge, count) =
                (flag.clone(), wake.clone(), gauge.clone(), count.clone());
            async move {
                match event {
                    Event::Connected => {
                        info!("cluster: connected to NATS");
                        count.fetch_add(1, Ordering::AcqRel);
                        flag.store(true, Ordering::Release);
                        gauge.set(1);
                        wake.notify_one();
                    }
                    Event::Disconnected => {
                        warn!("cluster: lost NATS; sends to other routers get `unreachable` until it is back");
                        flag.store(false, Ordering::Release);
                        gauge.set(0);
                    }
                    other => debug!("cluster: NATS {other}"),
                }
            }
        });
    if let Some(tls) = &cfg.tls {
        crate::tls::check_nats_files(tls)
            .map_err(|e| ClusterError::new(format!("NATS TLS: {e}")))?;
        options = options
            .require_tls(true)
            .add_root_certificates(tls.ca.clone())
            .add_client_certificate(tls.cert.clone(), tls.key.clone());
    }
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::new(format!("connecting to NATS: {e}")))?;
    info!(urls = ?cfg.urls, "cluster: connecting to NATS");
    let started = Instant::now();
    while !up.load(Ordering::Acquire) && started.elapsed() < cfg.connect_timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !up.load(Ordering::Acquire) {
        warn!(urls = ?cfg.urls, "cluster: NATS not reachable yet; serving this router's servers and retrying");
    } else {
        // The largest event, its recipients and the batch header must fit
        // in one NATS message.
        let max_payload = client.server_info().max_payload;
        let needed = max_event_bytes + EVENT_HEADROOM;
        if max_payload < needed {
            warn!(
                max_payload,
                max_event_bytes,
                "cluster: NATS's max_payload is below limits.max_event_bytes + {EVENT_HEADROOM}: \
                 the largest events cannot cross to other routers (set max_payload in NATS's \
                 configuration, e.g. 2MB)"
            );
        }
    }
    Ok(Link {
        client,
        up,
        beat_now,
        connects,
    })
}

//! Metrics and health: Prometheus counters and gauges (prometheus-client),
//! served with `/healthz` and `/readyz` on a local HTTP address when
//! `[metrics] enabled = true`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A label naming why something was refused, or an ack code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: String,
}

/// A label naming an ack code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Code {
    pub(crate) code: String,
}

/// A label naming an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub(crate) result: String,
}

/// Every metric the router keeps.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) refused: Family<Reason, Counter>,
    pub(crate) slow_handshakes: Counter,
    pub(crate) handshake_retries: Counter,
    pub(crate) events: Counter,
    pub(crate) presence_batches: Counter,
    pub(crate) presence_messages: Counter,
    pub(crate) deliveries: Counter,
    pub(crate) event_errors: Family<Code, Counter>,
    outbound_events: Gauge,
    outbound_bytes: Gauge,
    stored_persistent: Gauge,
    stored_queued: Gauge,
    store_bytes: Gauge,
    pub(crate) reloads: Family<Outcome, Counter>,
    pub(crate) cluster: ClusterMetrics,
    ready: AtomicBool,
}

/// The metrics of cluster mode (0 when the router is alone). Clones share
/// their values with the registered ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterMetrics {
    /// 1 while connected to NATS.
    pub(crate) link_up: Gauge,
    /// Other routers heard from within `cluster.router_timeout_ms`.
    pub(crate) routers: Gauge,
    /// Servers connected to other routers.
    pub(crate) remote_servers: Gauge,
    /// Events handed to another router (one per router per event).
    pub(crate) forwarded: Counter,
    /// Events other routers handed to this one.
    pub(crate) received: Counter,
    /// Forwards that failed, by reason (timeout, link_down, error).
    pub(crate) forward_failures: Family<Reason, Counter>,
    /// The last measured NATS round trip, in seconds.
    pub(crate) nats_rtt: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Identities this router gave up to another router's newer claim.
    pub(crate) taken_over: Counter,
    /// Takeovers held back because the identity had just moved.
    pub(crate) takeovers_held: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("icom");
        let m = Metrics {
            connections: Gauge::default(),
            accepted: Counter::default(),
            refused: Family::default(),
            slow_handshakes: Counter::default(),
            handshake_retries: Counter::default(),
            events: Counter::default(),
            presence_batches: Counter::default(),
            presence_messages: Counter::default(),
            deliveries: Counter::default(),
            event_errors: Family::default(),
            outbound_events: Gauge::default(),
            outbound_bytes: Gauge::default(),
            stored_persistent: Gauge::default(),
            stored_queued: Gauge::default(),
            store_bytes: Gauge::default(),
            reloads: Family::default(),
            cluster: ClusterMetrics::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Connected, welcomed servers",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections welcomed",
            m.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused, by reason (limit, handshake, bad_identity, protocol, revoked, in_use)",
            m.refused.clone(),
        );
        registry.register(
            "handshakes_slow",
            "Handshakes that held their place among those under way past 1 s (lost clients, or Initials that never finish)",
            m.slow_handshakes.clone(),
        );
        registry.register(
            "handshake_retries",
            "Connections sent a QUIC Retry: every handshake place taken, handshakes being abandoned, the address not yet validated",
            m.handshake_retries.clone(),
        );
        registry.register(
            "presence_batches",
            "Presence batches sent (each one buffer per connected client)",
            m.presence_batches.clone(),
        );
        registry.register(
            "presence_messages",
            "Presence messages queued to clients, summed over clients",
            m.presence_messages.clone(),
        );
        registry.register(
            "events_routed",
            "Sends routed and acked ok",
            m.events.clone(),
        );
        registry.register(
            "deliveries",
            "Deliveries handed to recipients",
            m.deliveries.clone(),
        );
        registry.register(
            "events_refused",
            "Sends acked with an error, by ack code",
            m.event_errors.clone(),
        );
        registry.register(
            "outbound_queue_events",
            "Deliveries waiting in outbound queues",
            m.outbound_events.clone(),
        );
        registry.register(
            "outbound_queue_bytes",
            "Bytes waiting in outbound queues",
            m.outbound_bytes.clone(),
        );
        registry.register(
            "stored_persistent_events",
            "Persistent events in the store",
            m.stored_persistent.clone(),
        );
        registry.register(
            "stored_queued_events",
            "Copies queued for offline servers",
            m.stored_queued.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes of stored events",
            m.store_bytes.clone(),
        );
        registry.register(
            "reloads",
            "Reloads, by result (ok, error)",
            m.reloads.clone(),
        );
        let c = &m.cluster;
        registry.register(
            "cluster_link_up",
            "1 while connected to NATS (cluster mode)",
            c.link_up.clone(),
        );
        registry.register(
            "cluster_routers",
            "Other routers of the cluster heard from recently",
            c.routers.clone(),
        );
        registry.register(
            "cluster_remote_servers",
            "Servers connected to other routers of the cluster",
            c.remote_servers.clone(),
        );
        registry.register(
            "cluster_forwarded_events",
            "Events handed to another router (one per router per event)",
            c.forwarded.clone(),
        );
        registry.register(
            "cluster_received_events",
            "Events other routers handed to this one",
            c.received.clone(),
        );
        registry.register(
            "cluster_forward_failures",
            "Forwards to another router that failed, by reason (timeout, link_down, no_router, error)",
            c.forward_failures.clone(),
        );
        registry.register(
            "cluster_nats_rtt_seconds",
            "The last measured round trip to NATS",
            c.nats_rtt.clone(),
        );
        registry.register(
            "cluster_takeovers",
            "Identities given up to a newer connection on another router",
            c.taken_over.clone(),
        );
        registry.register(
            "cluster_takeovers_held",
            "Takeovers from another router held back because the identity had moved less than a second before",
            c.takeovers_held.clone(),
        );
        Metrics { registry, ..m }
    }

    pub(crate) fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn event_error(&self, code: &str) {
        self.event_errors
            .get_or_create(&Code {
                code: code.to_owned(),
            })
            .inc();
    }

    pub(crate) fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&Outcome {
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition, with `gauges` as read just now.
    pub(crate) fn render(&self, gauges: Gauges) -> String {
        let gauge = |g: &Gauge, v: usize| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge(&self.connections, gauges.connections);
        gauge(&self.outbound_events, gauges.outbound_events);
        gauge(&self.outbound_bytes, gauges.outbound_bytes);
        gauge(&self.stored_persistent, gauges.stored_persistent);
        gauge(&self.stored_queued, gauges.stored_queued);
        gauge(&self.store_bytes, gauges.store_bytes);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The gauges' values, read when a scrape comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Gauges {
    pub(crate) connections: usize,
    pub(crate) outbound_events: usize,
    pub(crate) outbound_bytes: usize,
    pub(crate) stored_persistent: usize,
    pub(crate) stored_queued: usize,
    pub(crate) store_bytes: usize,
}

/// What the metrics listener serves: the exposition and readiness.
pub(crate) trait Source: Send + Sync + 'static {
    /// The text exposition now.
    fn render(&self) -> String;
    /// Whether the router accepts connections.
    fn ready(&self) -> bool;
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    source: Arc<impl Source>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics and health on http://{addr}/metrics");
    }
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!("metrics accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(&req, &*source)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

fn answer(req: &Request<hyper::body::Incoming>, source: &impl Source) -> Response<Full<Bytes>> {
    let (status, body, ctype) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            source.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => (StatusCode::OK, "ok\n".to_owned(), "text/plain"),
        "/readyz" if source.ready() => (StatusCode::OK, "ready\n".to_owned(), "text/plain"),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n".to_owned(),
            "text/plain",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Binds the metrics listener (inside a tokio runtime).
///
/// # Errors
/// The OS error.
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

//! Shared support for ICOM's end-to-end tests: a real router on
//! 127.0.0.1:0 with a test PKI minted in memory ([`TestCluster`]), and a raw
//! ICOM/1 peer that speaks the protocol frame by frame ([`RawClient`]), for
//! the tests that must send what a well-behaved client never would. The
//! real `icom-server` binary runs as a child process ([`RouterProcess`],
//! from [`RouterFiles`]); the pieces several suites share live here too: a
//! plain [`send`], the check that an event [`routes`], [`eventually`], and
//! the metrics endpoint ([`with_metrics`], [`http_get`], [`metric`]). A
//! NATS cluster of real `nats-server` processes, mutual TLS and JetStream
//! on, for the cluster mode's tests: [`NatsCluster`].
#![warn(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bins;
mod cluster;
mod events;
mod metrics;
mod nats;
mod process;
mod proxy;
mod raw;
mod routers;

pub use bins::workspace_bin;
pub use cluster::{ClientFiles, TestCluster};
pub use events::{
    delivered_ids, joiners_get_every_acked_send, persistent, routes, send, stuck_deliveries,
};
pub use metrics::{http_get, metric, with_metrics};
pub use nats::{nats_server_bin, NatsClientFiles, NatsCluster};
pub use nats::{NATS_CLIENT_CN, NATS_CLUSTER_NAME, NATS_SERVER_ENV, NATS_WAIT};
pub use process::{
    free_tcp_port, free_udp_port, rss_kib, silent_udp_socket, RouterFiles, RouterProcess,
};
pub use proxy::{DirectionStats, Impairment, ImpairmentProxy, ProxyStats};
pub use proxy::{NAT_CAPACITY, NAT_IDLE};
pub use raw::{client_crypto, RawClient, RawError};
pub use routers::{cluster_section, Routers, TEST_HEARTBEAT_MS, TEST_ROUTER_TIMEOUT_MS};

/// A generous bound for anything a test waits on: it never decides a
/// verdict on time, it only stops a broken test from hanging.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `cond` until it holds or [`WAIT`] passes; says which. For state
/// that has no notification (counters), never to decide on speed.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Installs a tracing subscriber for the test binary (once), honouring
/// `RUST_LOG`; quiet by default.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

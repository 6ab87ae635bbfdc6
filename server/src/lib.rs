//! The ICOM router: ICOM/1 over QUIC with mutual TLS.
//!
//! [`Server::bind`] loads the TLS material and binds the UDP socket;
//! [`Server::run`] accepts connections until its cancellation token fires.
//! Each connection's identity is its certificate's CN; the routing table
//! delivers every event on its own stream to each recipient.
#![warn(missing_docs)]

pub mod alloc;
mod clock;
mod cluster;
pub mod config;
mod connection;
mod deliveries;
pub mod dev;
mod dispatch;
mod event;
mod handler;
mod handshakes;
mod keep;
mod metrics;
mod outbound;
pub mod policy;
mod presence;
pub mod reset;
mod router;
mod server;
mod shared;
mod space;
pub mod store;
pub mod tls;

pub use cluster::{import_store, ClusterError, Imported, IMPORTED_FILE};
pub use config::{Config, ConfigError, ConfigFile, LogFormat};
pub use server::{
    ReloadHandle, ReloadReport, Server, ServerError, Stats, StatsHandle, SHUTDOWN_GRACE,
};

/// Binds and runs a router until `shutdown` is cancelled.
///
/// # Errors
/// [`ServerError`] if it cannot start.
pub async fn run(
    config: Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), ServerError> {
    Server::bind(config).await?.run(shutdown).await;
    Ok(())
}

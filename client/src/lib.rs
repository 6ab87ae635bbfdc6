//! The ICOM client: one QUIC + mutual-TLS connection to the ICOM router, kept
//! up by itself, that sends events, receives them, and correlates requests
//! with their replies. `docs/PROTOCOL.md` is the contract it speaks, through
//! [`icom_protocol`].
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use icom_client::{Client, ClientConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::connect(ClientConfig::dev("server_1")).await?;
//! let ack = client.send("server_2", "supply_drop", serde_json::json!({"x": 1.5})).await?;
//! println!("delivered to {}", ack.delivered);
//! while let Some(event) = events.next().await {
//!     println!("{} from {}: {}", event.event, event.from, event.json()?);
//!     if event.reply_to.is_none() {
//!         event.reply("thanks").await?;
//!     }
//! }
//! let rtt = client.ping().await?;
//! # let _ = (rtt, Duration::ZERO);
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! - [`Client::connect`] returns once the router has sent `welcome`; a
//!   certificate the router refuses is [`ConnectError::CertificateRefused`].
//! - The client reconnects by itself, with exponential backoff and full
//!   jitter; [`Client::states`] reports every change.
//! - Given the routers of one cluster ([`ClientConfig::with_routers`], or
//!   `routers` in the config file), it connects to the first that answers
//!   and fails over to the next when its connection is lost; the backoff
//!   waits only after a full round. [`Client::router`] says which router it
//!   is on.
//! - While it is disconnected, operations wait in a bounded queue for a
//!   bounded time, or fail at once ([`QueueMode`]).
//! - Deliveries of persistent and stored events are de-duplicated by
//!   `(from, id)`; those replayed after a (re)connect come first, in order.
//! - [`Client::publisher`] sends many events without waiting for each ack
//!   in turn; their acks come back on one stream ([`Outcomes`]).
//! - [`Client::peers`] is who else is connected, as far as the client
//!   knows; [`Client::presence`] streams the changes ([`Presences`]), with
//!   the difference only after a reconnect; [`Client::roster`] asks the
//!   router for everyone connected now and, in a cluster, on which router.
//! - With [`ClientConfig::replace`] false, the client never takes over an
//!   identity that is connected: the router refuses it (`IN_USE`).
//! - [`ConfigOverrides`] layers a command line's connection flags over the
//!   config file and the `ICOM_*` environment.
#![warn(missing_docs)]

mod answer;
mod backoff;
mod client;
mod config;
mod connection;
mod control;
mod core;
mod data;
mod dedup;
mod error;
mod event;
mod gate;
mod homing;
mod inbound;
mod loss;
mod outbound;
mod overrides;
mod presence;
mod publish;
mod replay;
mod routers;
mod session;
mod state;
mod supervisor;
mod tls;

pub use client::Client;
pub use config::{
    merge_source, ClientConfig, InboundConfig, QueueConfig, QueueMode, ReconnectConfig, DEV_DIR,
    DEV_OPERATOR, DEV_ROUTER,
};
pub use data::{DataError, MsgPack, ToData};
pub use error::{
    ConfigError, ConnectError, ForgetError, PingError, RequestError, RosterError, SendError,
    Unavailable,
};
pub use event::{Event, Events};
pub use outbound::SendOptions;
pub use overrides::ConfigOverrides;
pub use presence::Presences;
pub use publish::{Outcomes, Published, Publisher};
pub use routers::MAX_ROUTERS;
pub use state::{State, States};

pub use icom_protocol::{Ack, AckCode, AckError, Persist, Presence, RosterEntry, Target, Welcome};

//! Connection state changes, observable as a stream.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;

use icom_protocol::lock;

/// The state of the client's connection to the router.
///
/// `router` is always a router's address as configured (`host:port`, an
/// entry of `router` or `routers`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Connected: the router sent `welcome`.
    Connected {
        /// This client's identity, as the router read it from the certificate.
        server_id: String,
        /// The router's id for this connection.
        session_id: String,
        /// The router this client is connected to.
        router: String,
    },
    /// The connection is gone, or an attempt failed; a reconnect follows.
    Disconnected {
        /// Why.
        reason: String,
        /// The router that was lost or could not be reached; `None` before
        /// the first attempt.
        router: Option<String>,
    },
    /// The next connection attempt starts after `delay`: zero when the
    /// client moves on to the next router of its list, the backoff delay
    /// once every router of a round has failed.
    Reconnecting {
        /// Attempts since the last healthy connection, this one included.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// The router it will dial.
        router: String,
    },
    /// Another instance with the same identity connected and replaced this
    /// one; the client waits a long time before it tries again (the same
    /// router), so as not to fight it.
    Replaced {
        /// The wait before the next attempt.
        retry_in: Duration,
        /// The router that replaced this connection, tried again after the wait.
        router: String,
    },
    /// The router refused this client (certificate refused, revoked, bad
    /// identity); the client goes on trying with backoff.
    Refused {
        /// What the router said.
        reason: String,
        /// The router that refused it.
        router: String,
    },
    /// The client was closed; this is the last state.
    Closed,
}

impl State {
    /// The router the state is about, if any (see each variant).
    pub fn router(&self) -> Option<&str> {
        match self {
            State::Connected { router, .. }
            | State::Reconnecting { router, .. }
            | State::Replaced { router, .. }
            | State::Refused { router, .. } => Some(router),
            State::Disconnected { router, .. } => router.as_deref(),
            State::Closed => None,
        }
    }
}

/// The stream of state changes from [`Client::states`](crate::Client::states).
///
/// A reader that falls far behind skips the oldest changes it missed.
#[derive(Debug)]
pub struct States {
    rx: broadcast::Receiver<State>,
}

impl States {
    /// The next state change; `None` once the client is gone.
    pub async fn next(&mut self) -> Option<State> {
        loop {
            match self.rx.recv().await {
                Ok(state) => return Some(state),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The current state, and the channel that announces changes.
#[derive(Debug)]
pub(crate) struct StateCell {
    current: Mutex<State>,
    changes: broadcast::Sender<State>,
}

impl StateCell {
    pub(crate) fn new(initial: State) -> StateCell {
        StateCell {
            current: Mutex::new(initial),
            changes: broadcast::Sender::new(64),
        }
    }

    pub(crate) fn set(&self, state: State) {
        tracing::debug!(?state, "connection state");
        *lock(&self.current) = state.clone();
        // No subscriber is fine: the change is only recorded.
        let _ = self.changes.send(state);
    }

    pub(crate) fn current(&self) -> State {
        lock(&self.current).clone()
    }

    pub(crate) fn subscribe(&self) -> States {
        States {
            rx: self.changes.subscribe(),
        }
    }
}

//! The client: a cheap handle to the shared [`Core`], with the public
//! operations (send, request, publish, forget, ping, roster), the state,
//! who else is connected, and close.

use std::sync::Arc;
use std::time::Duration;

use icom_protocol::{
    lock, validate_persist_id, validate_server_id, Ack, Control, Forget, Ping, Roster, RosterEntry,
    Target, Welcome, Who, FEATURE_WHO, MAX_SERVER_ID_LEN,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::answer::Reply;
use crate::config::ClientConfig;
use crate::connection::Live;
use crate::core::{Core, WaitError, ATTEMPTS};
use crate::data::ToData;
use crate::error::{
    refusal, ConfigError, ConnectError, ForgetError, PingError, RequestError, RosterError,
    SendError, Unavailable,
};
use crate::event::{Event, Events};
use crate::outbound::{send, transmit, SendOptions};
use crate::presence::Presences;
use crate::publish::{Outcomes, Publisher};
use crate::session::MAX_PEERS;
use crate::state::{State, States};
use crate::supervisor::{self, First};

/// A connected ICOM client. Cloning is cheap; every clone is the same
/// client. Dropping the last clone closes it; [`Client::close`] does so and
/// waits until the router has been told.
#[derive(Debug, Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

impl Client {
    /// Connects to the router and returns once it has sent `welcome`, with
    /// the stream of events for this client. From then on the client stays
    /// connected by itself.
    ///
    /// With several routers ([`ClientConfig::routers`]), it tries each once
    /// in list order and keeps the first that answers.
    ///
    /// # Errors
    /// [`ConnectError`]: a certificate the router refuses is
    /// [`ConnectError::CertificateRefused`]. When every router failed, the
    /// error is a refusal if a router refused this client, or else the
    /// last router's.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ConnectError> {
        let core = Core::new(config)?;
        let mut refusal = None;
        let mut last = None;
        for index in 0..core.routers.len() {
            match core.establish(index).await {
                Ok((live, reader)) => return Ok(Client::run(core, Some((index, live, reader)))),
                // Not about one router: the next would fail the same way.
                Err(e @ ConnectError::Config(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(router = %core.routers.get(index), error = %e, "cannot connect");
                    if e.is_refused() {
                        refusal.get_or_insert(e);
                    } else {
                        last = Some(e);
                    }
                }
            }
        }
        Err(refusal
            .or(last)
            .unwrap_or_else(|| ConnectError::Connection("no router to dial".into())))
    }

    /// Starts a client that connects in the background (with the same
    /// backoff as a reconnect) and returns at once; [`Client::states`]
    /// tells when it is connected. Operations wait for the connection as
    /// the queue config says. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ConfigError`] when the files or settings are not usable.
    pub fn start(config: ClientConfig) -> Result<(Client, Events), ConfigError> {
        Ok(Client::run(Core::new(config)?, None))
    }

    fn run(core: Arc<Core>, first: Option<First>) -> (Client, Events) {
        let (events_tx, events_rx) = mpsc::channel::<Event>(core.cfg.inbound.events_buffer.max(1));
        if let Some((_, live, _)) = &first {
            supervisor::publish(&core, live);
        }
        let task = tokio::spawn(supervisor::run(core.clone(), first, events_tx));
        *lock(&core.supervisor) = Some(task);
        let client = Client {
            handle: Arc::new(Handle { core }),
        };
        (client, Events::new(events_rx))
    }

    /// Sends `event` with `data` to one server and returns the router's ack.
    ///
    /// # Errors
    /// [`SendError`]; an ack that is not ok is [`SendError::Refused`].
    pub async fn send(
        &self,
        server: &str,
        event: &str,
        data: impl ToData,
    ) -> Result<Ack, SendError> {
        self.send_to(
            Target::Server(server.into()),
            event,
            data,
            SendOptions::new(),
        )
        .await
    }

    /// Sends `event` with `data` to every other server (`"all"`).
    ///
    /// # Errors
    /// [`SendError`], as for [`Client::send`].
    pub async fn broadcast(&self, event: &str, data: impl ToData) -> Result<Ack, SendError> {
        self.send_to(Target::All, event, data, SendOptions::new())
            .await
    }

    /// Sends `event` with `data` to `target`, with persistence or a ttl.
    ///
    /// # Errors
    /// [`SendError`], as for [`Client::send`].
    pub async fn send_to(
        &self,
        target: Target,
        event: &str,
        data: impl ToData,
        options: SendOptions,
    ) -> Result<Ack, SendError> {
        let data = data.to_data()?;
        send(self.core(), target, event, data, &options, None).await
    }

    /// A [`Publisher`], which sends events without waiting for their acks,
    /// and the [`Outcomes`] through which those acks come back.
    pub fn publisher(&self) -> (Publisher, Outcomes) {
        Publisher::new(self.core().clone())
    }

    /// Sends a request to `server` and returns its reply (the event whose
    /// `reply_to` is the request's id), within `timeout` in all.
    ///
    /// # Errors
    /// [`RequestError::Timeout`], [`RequestError::ConnectionLost`], or the
    /// [`SendError`] of the request itself.
    pub async fn request(
        &self,
        server: &str,
        event: &str,
        data: impl ToData,
        timeout: Duration,
    ) -> Result<Event, RequestError> {
        let data = data.to_data().map_err(SendError::from)?;
        let target = Target::Server(server.into());
        let core = self.core();
        let exchange = async {
            let (_, reply) =
                transmit(core, target, event, data, &SendOptions::new(), None, true).await?;
            let Some(reply) = reply else {
                return Err(RequestError::ConnectionLost);
            };
            match reply.wait(timeout).await {
                Ok(Reply::Event(event)) => Ok(event),
                Ok(Reply::PeerLeft) => Err(RequestError::PeerLeft(server.to_owned())),
                Err(WaitError::Lost) => Err(RequestError::ConnectionLost),
                Err(WaitError::Timeout) => Err(RequestError::Timeout(timeout)),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout(timeout)))
    }

    /// Drops a persistent event.
    ///
    /// # Errors
    /// [`ForgetError`]; `not_found` and `forbidden` are [`ForgetError::Refused`].
    pub async fn forget(&self, persist_id: &str) -> Result<Ack, ForgetError> {
        validate_persist_id(persist_id).map_err(|e| ForgetError::Invalid(e.to_string()))?;
        let core = self.core();
        let timeout = core.ack_timeout;
        let _permit = core.window().await.map_err(|e| match e {
            SendError::AckTimeout(t) => ForgetError::AckTimeout(t),
            _ => ForgetError::Unavailable(Unavailable::Closed),
        })?;
        for _ in 0..ATTEMPTS {
            let live = core.gate.get().await?;
            let id = core.next_id();
            let Some(waiter) = core.register::<Ack>(id, &live, None) else {
                core.stale(&live);
                continue;
            };
            let forget = Control::Forget(Forget {
                id,
                persist_id: persist_id.into(),
            });
            if live.write_control(&forget).await.is_err() {
                core.gone(&live);
                continue;
            }
            return match waiter.wait(timeout).await {
                Ok(ack) if ack.ok => Ok(ack),
                Ok(ack) => {
                    let (code, message, ack) = refusal(ack);
                    Err(ForgetError::Refused { code, message, ack })
                }
                Err(WaitError::Lost) => Err(ForgetError::ConnectionLost),
                Err(WaitError::Timeout) => Err(ForgetError::AckTimeout(timeout)),
            };
        }
        Err(ForgetError::ConnectionLost)
    }

    /// Measures the round trip to the router (control `ping` / `pong`).
    ///
    /// # Errors
    /// [`PingError`].
    pub async fn ping(&self) -> Result<Duration, PingError> {
        let core = self.core();
        let timeout = core.ack_timeout;
        for _ in 0..ATTEMPTS {
            let live = core.gate.get().await?;
            let nonce = core.next_id();
            let Some(waiter) = core.register::<()>(nonce, &live, None) else {
                core.stale(&live);
                continue;
            };
            let started = Instant::now();
            if live
                .write_control(&Control::Ping(Ping { nonce }))
                .await
                .is_err()
            {
                core.gone(&live);
                continue;
            }
            return match waiter.wait(timeout).await {
                Ok(()) => Ok(started.elapsed()),
                Err(WaitError::Lost) => Err(PingError::ConnectionLost),
                Err(WaitError::Timeout) => Err(PingError::Timeout(timeout)),
            };
        }
        Err(PingError::ConnectionLost)
    }

    /// The stream of connection state changes from now on.
    pub fn states(&self) -> States {
        self.core().state.subscribe()
    }

    /// The connection state now.
    pub fn state(&self) -> State {
        self.core().state.current()
    }

    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        self.core().gate.current().is_some()
    }

    /// The router of the live connection, as configured (`host:port`);
    /// `None` while disconnected.
    pub fn router(&self) -> Option<String> {
        self.core().gate.current().map(|live| live.router.clone())
    }

    /// The `welcome` of the live connection: identity, groups, limits.
    pub fn welcome(&self) -> Option<Welcome> {
        self.core().gate.current().map(|live| live.welcome.clone())
    }

    /// The other servers connected, as far as this client knows (from
    /// `welcome` and `presence`), in order: a snapshot. While the client is
    /// disconnected, the set as it was when the connection was lost; the
    /// next `welcome` replaces it ([`Client::presence`] reports what
    /// changed).
    pub fn peers(&self) -> Vec<String> {
        self.core().peers()
    }

    /// The changes of [`Client::peers`] from now on: servers that came and
    /// left, and after a reconnect the difference only. See [`Presences`].
    pub fn presence(&self) -> Presences {
        Presences::new(self.core().clone())
    }

    /// Asks the router who is connected now, every server but this one, in
    /// order of id, each with the router it is on in a cluster
    /// ([`RosterEntry::router`], `None` for a router on its own). Unlike
    /// [`Client::peers`], this is the router's table at the moment it
    /// answers (a page of up to 1000 servers at a time).
    ///
    /// # Errors
    /// [`RosterError`]: [`RosterError::Unsupported`] from a router that
    /// predates `who`.
    pub async fn roster(&self) -> Result<Vec<RosterEntry>, RosterError> {
        let core = self.core();
        for _ in 0..ATTEMPTS {
            let live = core.gate.get().await?;
            if !live.welcome.has(FEATURE_WHO) {
                return Err(RosterError::Unsupported);
            }
            match roster_on(core, &live).await {
                Err(RosterError::ConnectionLost) => core.stale(&live),
                done => return done,
            }
        }
        Err(RosterError::ConnectionLost)
    }

    /// Closes the connection (`NORMAL`), stops reconnecting, fails what
    /// still waits, ends the events stream, and waits (briefly) until the
    /// router has been told.
    pub async fn close(&self) {
        let core = self.core();
        core.shutdown.cancel();
        let task = lock(&core.supervisor).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if let Some(endpoint) = core.take_endpoint() {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
    }

    fn core(&self) -> &Arc<Core> {
        &self.handle.core
    }
}

/// Every page of `who` on `live`, one after the other.
async fn roster_on(core: &Arc<Core>, live: &Live) -> Result<Vec<RosterEntry>, RosterError> {
    let timeout = core.ack_timeout;
    let mut servers: Vec<RosterEntry> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let id = core.next_id();
        let Some(waiter) = core.register::<Roster>(id, live, None) else {
            return Err(RosterError::ConnectionLost);
        };
        let who = Control::Who(Who {
            id,
            after: after.clone(),
        });
        if live.write_control(&who).await.is_err() {
            return Err(RosterError::ConnectionLost);
        }
        let page = match waiter.wait(timeout).await {
            Ok(page) => page,
            Err(WaitError::Lost) => return Err(RosterError::ConnectionLost),
            Err(WaitError::Timeout) => return Err(RosterError::Timeout(timeout)),
        };
        // Names from the network: server ids, and router names as short
        // (so that what is kept stays bounded with the count).
        if let Some(bad) = page.servers.iter().find(|e| {
            validate_server_id(&e.server_id).is_err()
                || e.router
                    .as_ref()
                    .is_some_and(|r| r.len() > MAX_SERVER_ID_LEN)
        }) {
            let name = bad
                .server_id
                .chars()
                .take(MAX_SERVER_ID_LEN)
                .collect::<String>();
            return Err(RosterError::Invalid(format!("a server named {name:?}")));
        }
        let last = page.servers.last().map(|e| e.server_id.clone());
        servers.extend(page.servers);
        if servers.len() > MAX_PEERS {
            return Err(RosterError::Invalid(format!(
                "more than {MAX_PEERS} servers"
            )));
        }
        if !page.more {
            return Ok(servers);
        }
        // The next page starts after this one's last id, which must move on.
        match last {
            Some(last) if after.as_ref().is_none_or(|a| last > *a) => after = Some(last),
            _ => {
                return Err(RosterError::Invalid(
                    "a page says more follow, but does not move on".into(),
                ))
            }
        }
    }
}

/// Closes the client when the last [`Client`] clone goes.
#[derive(Debug)]
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.shutdown.cancel();
    }
}

//! The client: a cheap handle to the shared core that owns the endpoint,
//! the gate to the live connection, ids, and the reconnecting supervisor.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use icom_protocol::{validate_persist_id, Ack, Control, Forget, Ping, Presence, Target, Welcome};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ms, ClientConfig};
use crate::connection::{establish, lock, FrameReader, Live, Reply, WaitError, ACKS, PONGS};
use crate::data::ToData;
use crate::dedup::Dedup;
use crate::error::{
    refusal, ConfigError, ConnectError, ForgetError, PingError, RequestError, SendError,
    Unavailable,
};
use crate::event::{Event, Events};
use crate::gate::Gate;
use crate::ids::IdGen;
use crate::outbound::SendOptions;
use crate::publish::{Outcomes, Publisher};
use crate::state::{State, StateCell, States};
use crate::supervisor;

/// How many times an operation tries again when its connection breaks
/// before anything of it reached the router.
pub(crate) const ATTEMPTS: u32 = 3;

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
    /// # Errors
    /// [`ConnectError`]: a certificate the router refuses is
    /// [`ConnectError::CertificateRefused`].
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ConnectError> {
        let (core, events_tx, events) = Core::new(config)?;
        let first = core.establish().await?;
        Ok((Client::run(core, Some(first), events_tx), events))
    }

    /// Starts a client that connects in the background (with the same
    /// backoff as a reconnect) and returns at once; [`Client::states`]
    /// tells when it is connected. Operations wait for the connection as
    /// the queue config says. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ConfigError`] when the files or settings are not usable.
    pub fn start(config: ClientConfig) -> Result<(Client, Events), ConfigError> {
        let (core, events_tx, events) = Core::new(config)?;
        Ok((Client::run(core, None, events_tx), events))
    }

    fn run(
        core: Arc<Core>,
        first: Option<(Arc<Live>, FrameReader)>,
        events: mpsc::Sender<Event>,
    ) -> Client {
        if let Some((live, _)) = &first {
            supervisor::publish(&core, live);
        }
        let task = tokio::spawn(supervisor::run(core.clone(), first, events));
        *lock(&core.supervisor) = Some(task);
        Client {
            handle: Arc::new(Handle { core }),
        }
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
        self.core().send(target, event, data, &options, None).await
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
            let (_, reply) = core
                .transmit(target, event, data, &SendOptions::new(), None, true)
                .await?;
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
        let _permit = tokio::time::timeout(timeout, core.in_flight.acquire())
            .await
            .map_err(|_| ForgetError::AckTimeout(timeout))?
            .map_err(|_| Unavailable::Closed)?;
        for _ in 0..ATTEMPTS {
            let live = core.gate.get().await?;
            let id = core.ids.next();
            let Some(waiter) = live.register(ACKS, id, None) else {
                core.gone(&live);
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
            let nonce = core.ids.next();
            let Some(waiter) = live.register(PONGS, nonce, None) else {
                core.gone(&live);
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

    /// The `welcome` of the live connection: identity, groups, limits.
    pub fn welcome(&self) -> Option<Welcome> {
        self.core().gate.current().map(|live| live.welcome.clone())
    }

    /// The other servers connected to the router, as far as this client
    /// knows (from `welcome` and `presence`).
    pub fn peers(&self) -> Vec<String> {
        lock(&self.core().peers).iter().cloned().collect()
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
        let endpoint = lock(&core.endpoint).take();
        if let Some((endpoint, _)) = endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
    }

    fn core(&self) -> &Arc<Core> {
        &self.handle.core
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

/// What every clone of a client, its events and its tasks share.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) cfg: ClientConfig,
    quic: quinn::ClientConfig,
    /// The local endpoint, and whether it is bound for IPv6.
    endpoint: Mutex<Option<(quinn::Endpoint, bool)>>,
    pub(crate) gate: Gate<Arc<Live>>,
    pub(crate) ids: IdGen,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) ack_timeout: Duration,
    pub(crate) state: StateCell,
    pub(crate) dedup: Mutex<Dedup>,
    peers: Mutex<BTreeSet<String>>,
    pub(crate) shutdown: CancellationToken,
    generation: AtomicU64,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Core {
    fn new(cfg: ClientConfig) -> Result<(Arc<Core>, mpsc::Sender<Event>, Events), ConfigError> {
        let quic = crate::tls::quic_config(&cfg)?;
        if cfg.max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                setting: "max_in_flight",
                detail: "must be at least 1".into(),
            });
        }
        let (events_tx, events_rx) = mpsc::channel(cfg.inbound.events_buffer.max(1));
        let core = Core {
            quic,
            endpoint: Mutex::new(None),
            gate: Gate::new(&cfg.queue),
            ids: IdGen::new(),
            in_flight: Arc::new(Semaphore::new(
                cfg.max_in_flight.min(Semaphore::MAX_PERMITS),
            )),
            ack_timeout: ms(cfg.ack_timeout_ms),
            state: StateCell::new(State::Disconnected {
                reason: "not connected yet".into(),
            }),
            dedup: Mutex::new(Dedup::new(cfg.inbound.dedup_window)),
            peers: Mutex::new(BTreeSet::new()),
            shutdown: CancellationToken::new(),
            generation: AtomicU64::new(0),
            supervisor: Mutex::new(None),
            cfg,
        };
        Ok((Arc::new(core), events_tx, Events::new(events_rx)))
    }

    /// One connection attempt, up to `welcome`, within the connect timeout.
    pub(crate) async fn establish(&self) -> Result<(Arc<Live>, FrameReader), ConnectError> {
        let timeout = ms(self.cfg.connect_timeout_ms);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let attempt = async {
            let addr = crate::connection::resolve(&self.cfg.router).await?;
            let endpoint = self.endpoint_for(addr)?;
            establish(&endpoint, &self.quic, &self.cfg, addr, generation).await
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(ConnectError::Timeout(timeout)))
    }

    /// The local endpoint, bound for the router's address family.
    fn endpoint_for(&self, addr: SocketAddr) -> Result<quinn::Endpoint, ConfigError> {
        let mut slot = lock(&self.endpoint);
        if let Some((endpoint, v6)) = slot.as_ref() {
            if *v6 == addr.is_ipv6() {
                return Ok(endpoint.clone());
            }
        }
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = crate::tls::endpoint(bind, &self.cfg).map_err(ConfigError::Socket)?;
        *slot = Some((endpoint.clone(), addr.is_ipv6()));
        Ok(endpoint)
    }

    /// The connection went away under an operation.
    pub(crate) fn gone(&self, live: &Live) {
        self.gate.down_if(|l| l.generation == live.generation);
    }

    /// Records who is connected, from `welcome`.
    pub(crate) fn set_peers(&self, peers: &[String]) {
        *lock(&self.peers) = peers.iter().cloned().collect();
    }

    /// Records a `presence`.
    pub(crate) fn presence(&self, p: Presence) {
        let mut peers = lock(&self.peers);
        if p.online {
            peers.insert(p.server_id);
        } else {
            peers.remove(&p.server_id);
        }
    }
}

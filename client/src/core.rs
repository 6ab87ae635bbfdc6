//! The core every clone of a client, its events and its tasks share: the
//! configuration, the endpoint, the [`Session`] behind one lock, the gate
//! that operations wait at for a connection, the in-flight window, the
//! connection state and the channel of presence changes. The tasks that
//! drive a connection (supervisor, control, inbound) and the operations
//! (send, publish, ping, forget, roster) build on it; it depends on none
//! of them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use icom_protocol::{lock, Ack, Presence, Roster};
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ms, ClientConfig};
use crate::connection::{establish, resolve, FrameReader, Live};
use crate::error::{ConfigError, ConnectError, SendError, Unavailable};
use crate::event::Event;
use crate::gate::Gate;
use crate::routers::Routers;
use crate::session::{Ids, Kind, Link, Session};
use crate::state::{State, StateCell};

/// How many times an operation tries again when its connection breaks
/// before anything of it reached the router.
pub(crate) const ATTEMPTS: u32 = 3;
/// Presence changes a [`Presences`](crate::Presences) reader may fall
/// behind by before it catches up from the peer set instead.
const PRESENCE_BACKLOG: usize = 1024;

/// What every clone of a client, its events and its tasks share.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) cfg: ClientConfig,
    /// The routers to dial, in order.
    pub(crate) routers: Routers,
    quic: quinn::ClientConfig,
    /// The local endpoint, and whether it is bound for IPv6.
    endpoint: Mutex<Option<(quinn::Endpoint, bool)>>,
    /// Where operations wait for a connection.
    pub(crate) gate: Gate<Arc<Live>>,
    session: Mutex<Session<Waiting>>,
    /// Where the peer set's changes go; sent to only with the session's
    /// lock held (taken after it), so that a reader's snapshot of the set
    /// and its place in the channel agree. `None` once closed.
    changes: Mutex<Option<broadcast::Sender<Presence>>>,
    /// Taken without the session's lock (see [`Ids`]).
    ids: Ids,
    in_flight: Arc<Semaphore>,
    pub(crate) ack_timeout: Duration,
    pub(crate) state: StateCell,
    pub(crate) shutdown: CancellationToken,
    /// The reconnecting supervisor, joined on close.
    pub(crate) supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Core {
    /// A core for `cfg`, not connected.
    ///
    /// # Errors
    /// [`ConfigError`] when the TLS files or settings are not usable.
    pub(crate) fn new(cfg: ClientConfig) -> Result<Arc<Core>, ConfigError> {
        let routers = Routers::parse(&cfg.router, &cfg.routers)?;
        let quic = crate::tls::quic_config(&cfg)?;
        if cfg.max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                setting: "max_in_flight",
                detail: "must be at least 1".into(),
            });
        }
        Ok(Arc::new(Core {
            routers,
            quic,
            endpoint: Mutex::new(None),
            gate: Gate::new(&cfg.queue),
            session: Mutex::new(Session::new(cfg.inbound.dedup_window)),
            changes: Mutex::new(Some(broadcast::Sender::new(PRESENCE_BACKLOG))),
            ids: Ids::starting_at(first_id()),
            in_flight: Arc::new(Semaphore::new(
                cfg.max_in_flight.min(Semaphore::MAX_PERMITS),
            )),
            ack_timeout: ms(cfg.ack_timeout_ms),
            state: StateCell::new(State::Disconnected {
                reason: "not connected yet".into(),
                router: None,
            }),
            shutdown: CancellationToken::new(),
            supervisor: Mutex::new(None),
            cfg,
        }))
    }

    /// One connection attempt to router `index` of the list, up to
    /// `welcome`, within the connect timeout (and the QUIC idle timeout,
    /// for a router that does not answer at all).
    pub(crate) async fn establish(
        &self,
        index: usize,
    ) -> Result<(Arc<Live>, FrameReader), ConnectError> {
        let timeout = ms(self.cfg.connect_timeout_ms);
        let generation = lock(&self.session).next_generation();
        let router = self.routers.get(index);
        let attempt = async {
            let addr = resolve(router).await?;
            let endpoint = self.endpoint_for(addr)?;
            establish(&endpoint, &self.quic, &self.cfg, router, addr, generation).await
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

    /// The endpoint, taken out to wait until it is idle (on close).
    pub(crate) fn take_endpoint(&self) -> Option<quinn::Endpoint> {
        lock(&self.endpoint).take().map(|(e, _)| e)
    }

    /// `live` was welcomed: operations use it from now on, and its
    /// `welcome.peers` becomes the peer set (what changed since the last
    /// connection is announced).
    pub(crate) fn up(&self, live: &Arc<Live>) {
        let mut session = lock(&self.session);
        let changes = session.connected(live.generation, &live.welcome.peers);
        self.announce(changes);
        drop(session);
        self.gate.up(live.clone());
    }

    /// `live` is gone: operations stop using it, and what waits on it
    /// fails as lost.
    pub(crate) fn gone(&self, live: &Live) {
        let (_, failed) = lock(&self.session).disconnected(live.generation);
        self.gate.down_if(|l| l.generation == live.generation);
        drop(failed);
    }

    /// The client is closing: nothing waits any more, and no connection
    /// will be used again.
    pub(crate) fn closed(&self) {
        let mut session = lock(&self.session);
        let failed = session.close();
        // Ends every presence reader.
        lock(&self.changes).take();
        drop(session);
        self.gate.close();
        drop(failed);
    }

    /// The next event id.
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.next()
    }

    /// A place in the in-flight window (`max_in_flight`), waited for at
    /// most the ack timeout.
    pub(crate) async fn window(&self) -> Result<OwnedSemaphorePermit, SendError> {
        let timeout = self.ack_timeout;
        tokio::time::timeout(timeout, self.in_flight.clone().acquire_owned())
            .await
            .map_err(|_| SendError::AckTimeout(timeout))?
            .map_err(|_| Unavailable::Closed.into())
    }

    /// Registers a waiter for the answer to `id` on `live` (waiting on
    /// server `peer` too, for a request); `None` if `live` is no longer
    /// the connection in use.
    pub(crate) fn register<T: Answer>(
        self: &Arc<Self>,
        id: u64,
        live: &Live,
        peer: Option<&str>,
    ) -> Option<Waiter<T>> {
        let (tx, rx) = oneshot::channel();
        self.expect(id, live, peer, Route::Once(tx)).ok()?;
        Some(Waiter {
            core: self.clone(),
            id,
            rx,
            settled: false,
        })
    }

    /// Records that the answer to `id` on `live` goes by `route`; gives
    /// `route` back if `live` is no longer the connection in use.
    pub(crate) fn expect<T: Answer>(
        &self,
        id: u64,
        live: &Live,
        peer: Option<&str>,
        route: Route<T>,
    ) -> Result<(), Route<T>> {
        let mut session = lock(&self.session);
        if session.link() != Link::Up(live.generation) {
            return Err(route);
        }
        // The link was just checked under the same lock: this records it.
        let _ = session.expect(
            T::KIND,
            id,
            live.generation,
            peer,
            T::wrap(Slot(Some(route))),
        );
        Ok(())
    }

    /// Takes back the route of the answer to `id`, without telling it.
    pub(crate) fn unexpect<T: Answer>(&self, id: u64) -> Option<Route<T>> {
        let waiting = lock(&self.session).unexpect(T::KIND, id)?;
        T::unwrap(waiting).and_then(Slot::take)
    }

    /// Hands an answer to its waiter; gives it back if nobody waits.
    pub(crate) fn answer<T: Answer>(&self, id: u64, value: T) -> Result<(), T> {
        let waiting = lock(&self.session).answered(T::KIND, id);
        match waiting.and_then(T::unwrap) {
            Some(slot) => slot.send(value),
            None => Err(value),
        }
    }

    /// A `presence` on `live`: the peer set follows it; requests to a
    /// server that left fail. One from a connection no longer in use (its
    /// last frames, read as it went) is ignored: the next `welcome` says
    /// what holds.
    pub(crate) fn presence(&self, live: &Live, p: &Presence) {
        let mut session = lock(&self.session);
        if session.link() != Link::Up(live.generation) {
            return;
        }
        let (changed, failed) = session.presence(p);
        if changed {
            self.announce([p.clone()]);
        }
        drop(session);
        for waiting in failed {
            if let Some(slot) = Reply::unwrap(waiting) {
                let _ = slot.send(Reply::PeerLeft);
            }
        }
    }

    /// Records a delivery `(from, id)`; false for a redelivery.
    pub(crate) fn first_time(&self, from: &str, id: u64) -> bool {
        lock(&self.session).first_time(from, id)
    }

    /// The other servers connected, as far as this client knows.
    pub(crate) fn peers(&self) -> Vec<String> {
        lock(&self.session).peers().cloned().collect()
    }

    /// The peer set now, and a receiver of the changes that follow it
    /// (`None` once the client is closed), taken together.
    pub(crate) fn follow_peers(&self) -> (BTreeSet<String>, Option<broadcast::Receiver<Presence>>) {
        let session = lock(&self.session);
        let rx = lock(&self.changes)
            .as_ref()
            .map(broadcast::Sender::subscribe);
        (session.peers().cloned().collect(), rx)
    }

    /// Sends changes of the peer set to its readers; called with the
    /// session's lock held.
    fn announce(&self, changes: impl IntoIterator<Item = Presence>) {
        if let Some(tx) = lock(&self.changes).as_ref() {
            for change in changes {
                // No reader is fine: the set itself is the record.
                let _ = tx.send(change);
            }
        }
    }
}

/// The first event id: the current Unix time in ms × 1000, so that ids
/// keep rising across restarts of the client.
fn first_id() -> u64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 1000)
    });
    ms.saturating_mul(1000)
}

/// What a request gets.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The reply.
    Event(Event),
    /// The server asked disconnected before it replied.
    PeerLeft,
}

/// Where an answer goes.
#[derive(Debug)]
pub(crate) enum Route<T> {
    /// To one waiting operation.
    Once(oneshot::Sender<T>),
    /// Onto a channel that many operations share (a
    /// [`Publisher`](crate::Publisher)'s), with the id; a route dropped
    /// unanswered (the connection went away) sends `None` instead. The
    /// permit is the operation's place in the in-flight window, held until
    /// it is answered.
    Stream {
        id: u64,
        tx: mpsc::UnboundedSender<(u64, Option<T>)>,
        permit: OwnedSemaphorePermit,
    },
}

/// A route as the session keeps it: a stream route dropped unanswered
/// tells its channel.
#[derive(Debug)]
pub(crate) struct Slot<T>(Option<Route<T>>);

impl<T> Slot<T> {
    fn take(mut self) -> Option<Route<T>> {
        self.0.take()
    }

    /// Hands `value` on; gives it back if nobody takes it.
    fn send(mut self, value: T) -> Result<(), T> {
        match self.0.take() {
            Some(Route::Once(tx)) => tx.send(value),
            Some(Route::Stream { id, tx, permit }) => {
                drop(permit);
                match tx.send((id, Some(value))) {
                    Ok(()) => Ok(()),
                    Err(e) => e.0 .1.map_or(Ok(()), Err),
                }
            }
            None => Err(value),
        }
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        if let Some(Route::Stream { id, tx, permit }) = self.0.take() {
            drop(permit);
            let _ = tx.send((id, None));
        }
    }
}

/// What the session keeps for one waiting operation.
#[derive(Debug)]
pub(crate) enum Waiting {
    Ack(Slot<Ack>),
    Pong(Slot<()>),
    Reply(Slot<Reply>),
    Roster(Slot<Roster>),
}

/// An answer the router (or a peer) gives, and the kind the session files
/// it under.
pub(crate) trait Answer: Sized {
    /// Its kind.
    const KIND: Kind;
    /// Files a slot.
    fn wrap(slot: Slot<Self>) -> Waiting;
    /// The slot back, if it is of this kind.
    fn unwrap(w: Waiting) -> Option<Slot<Self>>;
}

impl Answer for Ack {
    const KIND: Kind = Kind::Ack;
    fn wrap(slot: Slot<Ack>) -> Waiting {
        Waiting::Ack(slot)
    }
    fn unwrap(w: Waiting) -> Option<Slot<Ack>> {
        match w {
            Waiting::Ack(s) => Some(s),
            _ => None,
        }
    }
}

impl Answer for () {
    const KIND: Kind = Kind::Pong;
    fn wrap(slot: Slot<()>) -> Waiting {
        Waiting::Pong(slot)
    }
    fn unwrap(w: Waiting) -> Option<Slot<()>> {
        match w {
            Waiting::Pong(s) => Some(s),
            _ => None,
        }
    }
}

impl Answer for Roster {
    const KIND: Kind = Kind::Roster;
    fn wrap(slot: Slot<Roster>) -> Waiting {
        Waiting::Roster(slot)
    }
    fn unwrap(w: Waiting) -> Option<Slot<Roster>> {
        match w {
            Waiting::Roster(s) => Some(s),
            _ => None,
        }
    }
}

impl Answer for Reply {
    const KIND: Kind = Kind::Reply;
    fn wrap(slot: Slot<Reply>) -> Waiting {
        Waiting::Reply(slot)
    }
    fn unwrap(w: Waiting) -> Option<Slot<Reply>> {
        match w {
            Waiting::Reply(s) => Some(s),
            _ => None,
        }
    }
}

/// How a waiter ended without its answer.
#[derive(Debug)]
pub(crate) enum WaitError {
    Timeout,
    Lost,
}

/// An operation waiting for its answer; it leaves the session when
/// dropped.
#[derive(Debug)]
pub(crate) struct Waiter<T: Answer> {
    core: Arc<Core>,
    id: u64,
    rx: oneshot::Receiver<T>,
    settled: bool,
}

impl<T: Answer> Waiter<T> {
    /// Waits for the answer, at most `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Result<T, WaitError> {
        let answer = tokio::time::timeout(timeout, &mut self.rx).await;
        match answer {
            Ok(Ok(v)) => {
                self.settled = true;
                Ok(v)
            }
            Ok(Err(_)) => {
                self.settled = true;
                Err(WaitError::Lost)
            }
            Err(_) => Err(WaitError::Timeout),
        }
    }
}

impl<T: Answer> Drop for Waiter<T> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = lock(&self.core.session).unexpect(T::KIND, self.id);
        }
    }
}

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

use icom_protocol::{lock, Presence};
use tokio::sync::{broadcast, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::answer::{Answer, Reply, Route, Slot, Waiting};
use crate::config::{ms, ClientConfig};
use crate::connection::{dial, greet, resolve, FrameReader, Live};
use crate::error::{ConfigError, ConnectError, SendError, Unavailable};
use crate::gate::Gate;
use crate::routers::Routers;
use crate::session::{Ids, Link, Session};
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
    /// Moves back to a preferred router that failed in a row: the next is
    /// tried that much later ([`crate::homing`]).
    pub(crate) failed_moves: std::sync::atomic::AtomicU32,
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
            failed_moves: std::sync::atomic::AtomicU32::new(0),
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
        let attempt = async {
            let conn = self.dial_unbounded(index).await?;
            self.greet_unbounded(index, conn).await
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(ConnectError::Timeout(timeout)))
    }

    /// The first half of [`Core::establish`]: the QUIC handshake with
    /// router `index`, within the connect timeout.
    pub(crate) async fn dial(&self, index: usize) -> Result<quinn::Connection, ConnectError> {
        let timeout = ms(self.cfg.connect_timeout_ms);
        tokio::time::timeout(timeout, self.dial_unbounded(index))
            .await
            .unwrap_or(Err(ConnectError::Timeout(timeout)))
    }

    /// The second half of [`Core::establish`]: `hello` and `welcome` on
    /// `conn`, which [`Core::dial`] made to router `index`, within the
    /// connect timeout.
    pub(crate) async fn greet(
        &self,
        index: usize,
        conn: quinn::Connection,
    ) -> Result<(Arc<Live>, FrameReader), ConnectError> {
        let timeout = ms(self.cfg.connect_timeout_ms);
        tokio::time::timeout(timeout, self.greet_unbounded(index, conn))
            .await
            .unwrap_or(Err(ConnectError::Timeout(timeout)))
    }

    async fn dial_unbounded(&self, index: usize) -> Result<quinn::Connection, ConnectError> {
        let addr = resolve(self.routers.get(index)).await?;
        let endpoint = self.endpoint_for(addr)?;
        dial(&endpoint, &self.quic, &self.cfg, addr).await
    }

    async fn greet_unbounded(
        &self,
        index: usize,
        conn: quinn::Connection,
    ) -> Result<(Arc<Live>, FrameReader), ConnectError> {
        let generation = lock(&self.session).next_generation();
        greet(conn, &self.cfg, self.routers.get(index), generation).await
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

    /// The client moves from `old` to `new`, welcomed: operations use
    /// `new` from now on, the requests waiting for a reply wait on it, and
    /// what waits on `old` itself (acks) stays there until `old` is gone.
    pub(crate) fn moved(&self, old: &Live, new: &Arc<Live>) {
        let mut session = lock(&self.session);
        let changes = session.connected(new.generation, &new.welcome.peers);
        session.moved(old.generation, new.generation);
        self.announce(changes);
        drop(session);
        self.gate.up(new.clone());
    }

    /// Holds `live`, the connection in use, for a move: new operations
    /// wait at the gate, and one that took `live` from the gate before
    /// but has not registered its answer yet tries again (and so waits),
    /// so that [`Core::unanswered_on`] counts all that will come on it.
    /// False if it is no longer the one in use.
    pub(crate) fn hold(&self, live: &Live) -> bool {
        let mut session = lock(&self.session);
        if !session.hold(live.generation) {
            return false;
        }
        let held = self.gate.hold_if(|l| l.generation == live.generation);
        if !held {
            session.release(live.generation);
        }
        held
    }

    /// Whether `live` is held for a move (see [`Core::hold`]).
    pub(crate) fn is_held(&self, live: &Live) -> bool {
        lock(&self.session).is_held(live.generation)
    }

    /// Lets operations use `live` again: the move did not happen.
    pub(crate) fn release(&self, live: &Live) {
        lock(&self.session).release(live.generation);
        self.gate.release_if(|l| l.generation == live.generation);
    }

    /// How many operations wait for an answer on `live` itself.
    pub(crate) fn unanswered_on(&self, live: &Live) -> usize {
        lock(&self.session).unanswered_on(live.generation)
    }

    /// `live` is gone: operations stop using it, and what waits on it
    /// fails as lost.
    pub(crate) fn gone(&self, live: &Live) {
        let (_, failed) = lock(&self.session).disconnected(live.generation);
        self.gate.down_if(|l| l.generation == live.generation);
        drop(failed);
    }

    /// An operation could not start on `live`: it went, the client moved
    /// off it, or it is held for a move. Operations stop taking it from
    /// the gate unless it is held (they wait then). What waits on it is
    /// left alone: its end fails that, and after a move the answers still
    /// come on it until it is retired.
    pub(crate) fn stale(&self, live: &Live) {
        self.gate.down_if_up(|l| l.generation == live.generation);
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
        if !session.accepts(live.generation) {
            return Err(route);
        }
        // Just checked under the same lock: this records it.
        let _ = session.expect(
            T::KIND,
            id,
            live.generation,
            peer,
            T::wrap(Slot::new(route)),
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

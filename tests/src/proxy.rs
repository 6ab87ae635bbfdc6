//! An in-process UDP impairment proxy: delay, jitter, loss, reordering, a
//! bandwidth cap and a bounded buffer between QUIC peers on loopback, the
//! only way these tests can stand in for a cross-datacenter link.
//!
//! Each direction is one link with one queue. A packet's release time is
//! `max(arrival + delay + jitter, previous release)`, after it has waited
//! its turn for the bandwidth cap, so packets leave in the order they came
//! unless [`Impairment::reorder`] asks otherwise: a sleep per packet would
//! reorder them and fake loss. Every random choice comes from a generator
//! seeded by [`Impairment::seed`], drawn in a fixed order per packet, so a
//! seed fixes which packets are lost or reordered.
//!
//! Clients are told apart by their source address: each gets its own
//! upstream-facing socket (a NAT table, bounded and evicting the least
//! recently used), so the upstream sees distinct peers.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use icom_protocol::lock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most clients the NAT table maps at once; a new one evicts the least
/// recently used.
pub const NAT_CAPACITY: usize = 1024;

/// How long a client's mapping lives without traffic either way.
pub const NAT_IDLE: Duration = Duration::from_secs(120);

/// The largest UDP payload the proxy reads.
const MAX_DATAGRAM: usize = 65_535;

/// The longest any one impairment holds a packet (delay, jitter, gap):
/// longer would only stall a test, and the clock's arithmetic stays safe.
const MAX_HOLD: Duration = Duration::from_secs(3600);

/// What one direction of the link does to the packets crossing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet. The queue
    /// stays first in, first out, so jitter never reorders by itself.
    pub jitter: Duration,
    /// The probability (0..1) that a packet is lost on entering the link.
    pub loss: f64,
    /// The fraction (0..1) of packets sent out of order: each is held
    /// [`Impairment::reorder_gap`] past its release while those behind it
    /// go on.
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_gap: Duration,
    /// The link's rate in bits per second; `None` for no cap.
    pub bandwidth_bps: Option<u64>,
    /// The most bytes the link holds at once (waiting out the bandwidth cap
    /// or the delay); a packet that would exceed it is dropped, as a
    /// router's buffer drops its tail.
    pub queue_limit_bytes: usize,
    /// The seed of this direction's randomness.
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment::none()
    }
}

impl Impairment {
    /// A perfect link: no delay, loss or cap, a 4 MiB buffer.
    pub fn none() -> Self {
        Impairment {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_gap: Duration::from_millis(10),
            bandwidth_bps: None,
            queue_limit_bytes: 4 << 20,
            seed: 0,
        }
    }

    /// A link adding half of `rtt` each way (use it for both directions).
    pub fn rtt(rtt: Duration) -> Self {
        Impairment::none().with_delay(rtt / 2)
    }

    /// With a one-way `delay`.
    pub fn with_delay(self, delay: Duration) -> Self {
        Impairment { delay, ..self }
    }

    /// With up to `jitter` extra delay per packet.
    pub fn with_jitter(self, jitter: Duration) -> Self {
        Impairment { jitter, ..self }
    }

    /// Losing each packet with probability `loss`.
    pub fn with_loss(self, loss: f64) -> Self {
        Impairment { loss, ..self }
    }

    /// Holding a fraction `reorder` of the packets back by `gap`.
    pub fn with_reorder(self, reorder: f64, gap: Duration) -> Self {
        Impairment {
            reorder,
            reorder_gap: gap,
            ..self
        }
    }

    /// Capped at `bps` bits per second.
    pub fn with_bandwidth(self, bps: u64) -> Self {
        Impairment {
            bandwidth_bps: Some(bps),
            ..self
        }
    }

    /// Holding at most `bytes` at once.
    pub fn with_queue_limit(self, bytes: usize) -> Self {
        Impairment {
            queue_limit_bytes: bytes,
            ..self
        }
    }

    /// Seeding its randomness with `seed`.
    pub fn with_seed(self, seed: u64) -> Self {
        Impairment { seed, ..self }
    }

    /// How long `len` bytes take to leave at the capped rate.
    fn serialization(&self, len: usize) -> Duration {
        match self.bandwidth_bps {
            None => Duration::ZERO,
            Some(bps) => {
                let nanos = (len as u128 * 8 * 1_000_000_000) / u128::from(bps.max(1));
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).min(MAX_HOLD)
            }
        }
    }
}

/// What one direction has done since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets that entered the link.
    pub packets_in: u64,
    /// Packets sent on to their destination.
    pub forwarded: u64,
    /// Packets lost at random.
    pub dropped_loss: u64,
    /// Packets dropped because the buffer was full.
    pub dropped_queue: u64,
    /// Packets dropped while the link was paused.
    pub dropped_paused: u64,
    /// Packets picked to be held back out of order.
    pub reordered: u64,
    /// Packets the proxy could not send (a socket error).
    pub send_failed: u64,
    /// Packets the link holds now, not yet sent.
    pub held: u64,
}

impl DirectionStats {
    /// Every packet dropped, for whatever reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_queue + self.dropped_paused + self.send_failed
    }
}

/// Both directions' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client → upstream.
    pub to_upstream: DirectionStats,
    /// Upstream → clients.
    pub to_client: DirectionStats,
    /// Clients in the NAT table now.
    pub clients: usize,
}

/// A running proxy on 127.0.0.1; dropping it stops every task it started.
pub struct ImpairmentProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ImpairmentProxy {
    /// Starts a proxy forwarding to `upstream` with the given impairment
    /// for each direction.
    ///
    /// # Errors
    /// When the client-facing socket cannot be bound.
    pub async fn start(
        upstream: SocketAddr,
        to_upstream: Impairment,
        to_client: Impairment,
    ) -> std::io::Result<ImpairmentProxy> {
        let listener = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listener.set_nonblocking(true)?;
        roomy(&listener);
        let listener = Arc::new(UdpSocket::from_std(listener)?);
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            listener,
            to_upstream: Link::new(to_upstream, 0x7570),
            to_client: Link::new(to_client, 0x646f),
            paused: AtomicBool::new(false),
            nat: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            cancel: CancellationToken::new(),
        });
        tokio::spawn(Arc::clone(&shared).accept_clients());
        tokio::spawn(Arc::clone(&shared).drain(Direction::ToUpstream));
        tokio::spawn(Arc::clone(&shared).drain(Direction::ToClient));
        Ok(ImpairmentProxy { addr, shared })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes both directions' impairments for the packets that arrive from
    /// now on, reseeding their randomness; packets already held keep their
    /// release times.
    pub fn set(&self, to_upstream: Impairment, to_client: Impairment) {
        self.shared.to_upstream.set(to_upstream);
        self.shared.to_client.set(to_client);
    }

    /// Both directions' counters, each read at one instant.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            to_upstream: self.shared.to_upstream.state().stats(),
            to_client: self.shared.to_client.state().stats(),
            clients: lock(&self.shared.nat).len(),
        }
    }

    /// Cuts the link both ways: packets arriving, and packets held that
    /// come due, are dropped until [`ImpairmentProxy::resume`].
    pub fn pause(&self) {
        self.shared.paused.store(true, AtomicOrdering::SeqCst);
    }

    /// Mends the link cut by [`ImpairmentProxy::pause`].
    pub fn resume(&self) {
        self.shared.paused.store(false, AtomicOrdering::SeqCst);
    }
}

impl Drop for ImpairmentProxy {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// Everything the proxy's tasks share.
struct Shared {
    upstream: SocketAddr,
    /// The client-facing socket.
    listener: Arc<UdpSocket>,
    to_upstream: Link,
    to_client: Link,
    paused: AtomicBool,
    nat: Mutex<HashMap<SocketAddr, Arc<Mapping>>>,
    /// The origin of [`Mapping::last_used`].
    epoch: Instant,
    cancel: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToUpstream,
    ToClient,
}

/// One client's upstream-facing socket.
struct Mapping {
    socket: Arc<UdpSocket>,
    /// Milliseconds since [`Shared::epoch`] of the last packet either way.
    last_used: AtomicU64,
    /// Stops the task reading `socket`.
    cancel: CancellationToken,
}

impl Shared {
    fn link(&self, dir: Direction) -> &Link {
        match dir {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Reads what clients send and queues it towards the upstream.
    async fn accept_clients(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                r = self.listener.recv_from(&mut buf) => r,
            };
            let (len, client) = match received {
                Ok(r) => r,
                Err(e) if transient(&e) => continue,
                Err(_) => return,
            };
            let paused = self.paused.load(AtomicOrdering::SeqCst);
            match self.mapping(client) {
                Ok(m) => {
                    let via = Arc::clone(&m.socket);
                    self.to_upstream
                        .push(&buf[..len], via, self.upstream, paused);
                }
                Err(_) => self.to_upstream.state().refuse(),
            }
        }
    }

    /// The client's mapping, made (evicting another if the table is full)
    /// if it has none.
    fn mapping(self: &Arc<Self>, client: SocketAddr) -> std::io::Result<Arc<Mapping>> {
        let now = self.now_ms();
        let mut nat = lock(&self.nat);
        if let Some(m) = nat.get(&client) {
            m.last_used.store(now, AtomicOrdering::Relaxed);
            return Ok(Arc::clone(m));
        }
        let idle = u64::try_from(NAT_IDLE.as_millis()).unwrap_or(u64::MAX);
        nat.retain(|_, m| {
            let keep = now.saturating_sub(m.last_used.load(AtomicOrdering::Relaxed)) < idle;
            if !keep {
                m.cancel.cancel();
            }
            keep
        });
        if nat.len() >= NAT_CAPACITY {
            let oldest = nat
                .iter()
                .min_by_key(|(_, m)| m.last_used.load(AtomicOrdering::Relaxed))
                .map(|(a, _)| *a);
            if let Some(m) = oldest.and_then(|a| nat.remove(&a)) {
                m.cancel.cancel();
            }
        }
        // A std socket binds without awaiting, so the table's lock is never
        // held across an await.
        let std_socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        std_socket.set_nonblocking(true)?;
        roomy(&std_socket);
        let mapping = Arc::new(Mapping {
            socket: Arc::new(UdpSocket::from_std(std_socket)?),
            last_used: AtomicU64::new(now),
            cancel: self.cancel.child_token(),
        });
        nat.insert(client, Arc::clone(&mapping));
        tokio::spawn(Arc::clone(self).relay_replies(client, Arc::clone(&mapping)));
        Ok(mapping)
    }

    /// Reads what the upstream sends to one client and queues it back.
    async fn relay_replies(self: Arc<Self>, client: SocketAddr, mapping: Arc<Mapping>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                biased;
                () = mapping.cancel.cancelled() => return,
                r = mapping.socket.recv_from(&mut buf) => r,
            };
            let len = match received {
                Ok((len, from)) if from == self.upstream => len,
                Ok(_) => continue,
                Err(e) if transient(&e) => continue,
                Err(_) => return,
            };
            mapping
                .last_used
                .store(self.now_ms(), AtomicOrdering::Relaxed);
            let paused = self.paused.load(AtomicOrdering::SeqCst);
            let via = Arc::clone(&self.listener);
            self.to_client.push(&buf[..len], via, client, paused);
        }
    }

    /// Sends each of a direction's packets when it comes due.
    async fn drain(self: Arc<Self>, dir: Direction) {
        let link = self.link(dir);
        loop {
            let next = {
                let mut state = link.state();
                match state.queue.peek() {
                    None => None,
                    Some(Reverse(p)) if p.release > Instant::now() => Some(Err(p.release)),
                    Some(_) => state.pop().map(Ok),
                }
            };
            match next {
                Some(Ok(packet)) => {
                    let outcome = if self.paused.load(AtomicOrdering::SeqCst) {
                        Sent::Paused
                    } else {
                        match packet.via.send_to(&packet.bytes, packet.to).await {
                            Ok(_) => Sent::Forwarded,
                            Err(_) => Sent::Failed,
                        }
                    };
                    link.state().sent(outcome);
                }
                Some(Err(release)) => tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return,
                    () = link.wake.notified() => {}
                    () = tokio::time::sleep_until(release) => {}
                },
                None => tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => return,
                    () = link.wake.notified() => {}
                },
            }
        }
    }
}

/// One direction: its queue and the task waking to drain it.
struct Link {
    state: Mutex<LinkState>,
    /// Told of every packet queued, so the drain can wait for an earlier
    /// release.
    wake: Notify,
    /// Mixed into the seed, so both directions given one seed still differ.
    salt: u64,
}

struct LinkState {
    impairment: Impairment,
    rng: StdRng,
    /// Held packets, earliest release first (ties in arrival order).
    queue: BinaryHeap<Reverse<Held>>,
    /// Arrivals so far: the tie-breaker keeping the queue first in, first out.
    seq: u64,
    held_bytes: usize,
    /// Packets taken off the queue and being sent.
    sending: u64,
    /// When the bandwidth cap lets the next packet start.
    line_free: Instant,
    /// The release of the last packet not held back: nothing in order
    /// leaves before it.
    last_release: Instant,
    stats: DirectionStats,
}

struct Held {
    release: Instant,
    seq: u64,
    to: SocketAddr,
    via: Arc<UdpSocket>,
    bytes: Vec<u8>,
}

enum Sent {
    Forwarded,
    Paused,
    Failed,
}

impl Link {
    fn new(impairment: Impairment, salt: u64) -> Link {
        let now = Instant::now();
        Link {
            state: Mutex::new(LinkState {
                rng: StdRng::seed_from_u64(impairment.seed ^ salt),
                impairment,
                queue: BinaryHeap::new(),
                seq: 0,
                held_bytes: 0,
                sending: 0,
                line_free: now,
                last_release: now,
                stats: DirectionStats::default(),
            }),
            wake: Notify::new(),
            salt,
        }
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        lock(&self.state)
    }

    fn set(&self, impairment: Impairment) {
        let mut state = self.state();
        state.rng = StdRng::seed_from_u64(impairment.seed ^ self.salt);
        state.impairment = impairment;
    }

    /// Lets a packet into the link, or drops it.
    fn push(&self, bytes: &[u8], via: Arc<UdpSocket>, to: SocketAddr, paused: bool) {
        let mut guard = self.state();
        let state = &mut *guard;
        state.stats.packets_in += 1;
        if paused {
            state.stats.dropped_paused += 1;
            return;
        }
        // Three draws per packet whatever happens to it, so a seed fixes
        // the pattern by packet number.
        let lost = state.rng.random::<f64>() < state.impairment.loss;
        let jitter = state
            .impairment
            .jitter
            .min(MAX_HOLD)
            .mul_f64(state.rng.random::<f64>());
        let held_back = state.rng.random::<f64>() < state.impairment.reorder;
        if lost {
            state.stats.dropped_loss += 1;
            return;
        }
        if state.held_bytes + bytes.len() > state.impairment.queue_limit_bytes {
            state.stats.dropped_queue += 1;
            return;
        }
        let now = Instant::now();
        let sent = state.line_free.max(now) + state.impairment.serialization(bytes.len());
        state.line_free = sent;
        let delay = state.impairment.delay.min(MAX_HOLD);
        let mut release = (sent + delay + jitter).max(state.last_release);
        state.last_release = release;
        if held_back {
            release += state.impairment.reorder_gap.min(MAX_HOLD);
            state.stats.reordered += 1;
        }
        state.seq += 1;
        state.held_bytes += bytes.len();
        state.queue.push(Reverse(Held {
            release,
            seq: state.seq,
            to,
            via,
            bytes: bytes.to_vec(),
        }));
        drop(guard);
        self.wake.notify_one();
    }
}

impl LinkState {
    fn pop(&mut self) -> Option<Held> {
        let Reverse(packet) = self.queue.pop()?;
        self.held_bytes -= packet.bytes.len();
        self.sending += 1;
        Some(packet)
    }

    fn sent(&mut self, outcome: Sent) {
        self.sending -= 1;
        match outcome {
            Sent::Forwarded => self.stats.forwarded += 1,
            Sent::Paused => self.stats.dropped_paused += 1,
            Sent::Failed => self.stats.send_failed += 1,
        }
    }

    /// A packet that came in but had no way out (no upstream socket).
    fn refuse(&mut self) {
        self.stats.packets_in += 1;
        self.stats.send_failed += 1;
    }

    fn stats(&self) -> DirectionStats {
        DirectionStats {
            held: self.queue.len() as u64 + self.sending,
            ..self.stats
        }
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.release, self.seq).cmp(&(other.release, other.seq))
    }
}

/// The socket buffers the proxy asks for: a QUIC peer sends bursts of a
/// few dozen datagrams at once, and a datagram the kernel drops for want of
/// room would be a loss no impairment asked for.
const SOCKET_BUFFER: usize = 8 << 20;

/// Asks for [`SOCKET_BUFFER`] each way; the OS may grant less. (Only the
/// buffers: quinn-udp's socket setup would also turn on GRO, and the proxy
/// must see datagrams one by one.)
fn roomy(socket: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
}

/// Errors a UDP socket reports for an earlier packet (an ICMP
/// unreachable), after which it still works.
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
    )
}

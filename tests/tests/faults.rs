//! Faults and abuse against a router in this process: a storm of
//! handshakes at once (within and over the connection limit), handshakes
//! that never complete, a client opening streams as fast as it can, streams
//! that are never finished, garbage datagrams at the port, and a client
//! reconnecting in a tight loop. Every test is bounded in count and time,
//! stops by itself, stays on 127.0.0.1 and asserts what held, never how
//! fast. `tests/FAULTS.md` lists them with the figures observed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{
    decode_control, encode_frame, frame_len, AckCode, CloseCode, Control, Deliver, Hello, Send,
    Target, FRAME_HEADER_LEN, NIL,
};
use icom_tests::{client_crypto, eventually, metric, routes, send, with_metrics, WAIT};
use icom_tests::{Impairment, ImpairmentProxy, RawClient, RawError, TestCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Handshakes started at once, all to be welcomed. Each welcome also fans
/// a presence out to every peer already in, so a storm's cost grows with
/// its square: debug builds do fewer to stay quick on a shared machine.
/// (2000 distinct servers welcomed at once does not settle within the
/// bound on 2 cores: FAULTS.md.)
const STORM: usize = if cfg!(debug_assertions) { 300 } else { 1000 };

/// Handshakes started at once against a limit of half as many.
const STORM_OVER: usize = if cfg!(debug_assertions) { 300 } else { 2000 };

/// The client endpoints (UDP sockets) a storm is spread over, each
/// connecting many times at once.
const STORM_ENDPOINTS: usize = 32;

/// The bound on a whole storm: it only stops a broken test from hanging.
const STORM_BOUND: Duration = Duration::from_secs(60);

/// Tasks that may come and go around a measurement (timers, blocking store
/// work, a draining endpoint): a leak grows with the connections, far past
/// this.
const TASK_SLACK: usize = 8;

/// A send of the event `fault` to the server `to`.
fn fault(id: u64, to: &str, data: Bytes) -> Send {
    send(id, Target::Server(to.into()), "fault", data)
}

/// The runtime's live tasks: the router's and this test's, in one process.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// A counter's value in a Prometheus text body; 0 when absent (a labelled
/// counter appears only once it has counted).
fn counter(body: &str, name: &str) -> f64 {
    metric(body, name).unwrap_or(0.0)
}

/// A control stream kept open: dropping it would disconnect.
type ControlStreams = (quinn::SendStream, quinn::RecvStream);

/// Opens the control stream, sends `hello` and returns the first frame the
/// router wrote.
async fn hello(conn: &quinn::Connection) -> Result<(ControlStreams, Control), String> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("opening the control stream: {e}"))?;
    let frame = encode_frame(&Control::Hello(Hello::new("icom-tests/faults")));
    send.write_all(&frame)
        .await
        .map_err(|e| format!("writing hello: {e}"))?;
    let first = read_control(&mut recv).await?;
    Ok(((send, recv), first))
}

async fn read_control(recv: &mut quinn::RecvStream) -> Result<Control, String> {
    loop {
        let mut header = [0u8; FRAME_HEADER_LEN];
        recv.read_exact(&mut header)
            .await
            .map_err(|e| format!("reading a frame: {e}"))?;
        let len = frame_len(header).map_err(|e| e.to_string())?;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body)
            .await
            .map_err(|e| format!("reading a frame: {e}"))?;
        if let Some(msg) = decode_control(&body).map_err(|e| e.to_string())? {
            return Ok(msg);
        }
    }
}

/// How one connection of a storm ended.
enum Outcome {
    /// Handshake, `hello`, and `welcome` as the first frame; held open.
    Welcomed(quinn::Connection, ControlStreams),
    /// The router refused it with CONNECTION_REFUSED before any crypto.
    Refused,
    /// Anything else, described.
    Failed(String),
}

async fn storm_one(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Outcome {
    let connecting = match endpoint.connect_with(config, addr, "localhost") {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    let conn = match connecting.await {
        Ok(c) => c,
        Err(quinn::ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            return Outcome::Refused
        }
        Err(e) => return Outcome::Failed(format!("handshake: {e}")),
    };
    match hello(&conn).await {
        Ok((ctrl, Control::Welcome(_))) => Outcome::Welcomed(conn, ctrl),
        Ok((_, other)) => Outcome::Failed(format!("the first frame is '{}'", other.name())),
        Err(e) => Outcome::Failed(match conn.close_reason() {
            Some(why) => format!("{e}: {why}"),
            None => e,
        }),
    }
}

/// A client endpoint whose socket asks for a 4 MiB receive buffer (the
/// kernel caps it at `net.core.rmem_max`): each storm socket carries many
/// connections, and the presence fanned out to them comes in bursts.
fn client_endpoint() -> quinn::Endpoint {
    use quinn::udp::{UdpSockRef, UdpSocketState};
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let state = UdpSocketState::new(UdpSockRef::from(&socket)).unwrap();
    let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), 4 << 20);
    let runtime = quinn::default_runtime().unwrap();
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).unwrap()
}

/// What a storm came to.
#[derive(Default)]
struct Storm {
    welcomed: Vec<(quinn::Connection, ControlStreams)>,
    refused: usize,
    failed: BTreeMap<String, usize>,
}

/// Starts `n` handshakes at once, each with its own identity
/// (`{prefix}{i}`), spread over [`STORM_ENDPOINTS`] client endpoints, and
/// waits for every one to be welcomed, refused or failed.
async fn storm(cluster: &TestCluster, prefix: &str, n: usize) -> Storm {
    let endpoints: Vec<quinn::Endpoint> = (0..STORM_ENDPOINTS).map(|_| client_endpoint()).collect();
    let configs: Vec<quinn::ClientConfig> = (0..n)
        .map(|i| {
            let issued = cluster.pki().client(&format!("{prefix}{i}"));
            quinn::ClientConfig::new(client_crypto(cluster.pki(), Some(&issued)))
        })
        .collect();
    let tasks: Vec<_> = configs
        .into_iter()
        .enumerate()
        .map(|(i, config)| {
            let endpoint = endpoints[i % STORM_ENDPOINTS].clone();
            tokio::spawn(storm_one(endpoint, config, cluster.addr()))
        })
        .collect();
    let mut out = Storm::default();
    let all = async {
        for t in tasks {
            match t.await.unwrap() {
                Outcome::Welcomed(conn, ctrl) => out.welcomed.push((conn, ctrl)),
                Outcome::Refused => out.refused += 1,
                Outcome::Failed(why) => *out.failed.entry(why).or_default() += 1,
            }
        }
    };
    tokio::time::timeout(STORM_BOUND, all)
        .await
        .expect("the storm ends within its bound");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_handshakes_is_welcomed_whole() {
    let cluster = TestCluster::start_with(|c| {
        c.limits.max_connections = (STORM + 10) as u32;
    })
    .await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;

    let began = std::time::Instant::now();
    let s = storm(&cluster, "s", STORM).await;
    let took = began.elapsed();
    assert!(s.failed.is_empty(), "failed: {:?}", s.failed);
    assert_eq!((s.welcomed.len(), s.refused), (STORM, 0));
    assert_eq!(cluster.stats().connections, STORM + 2);
    routes(&mut a, &b, 1).await;

    for (conn, _) in &s.welcomed {
        conn.close(0u32.into(), b"done");
    }
    drop(s);
    assert!(
        eventually(|| cluster.stats().connections == 2).await,
        "{:?}",
        cluster.stats()
    );
    routes(&mut a, &b, 2).await;
    eprintln!("storm: {STORM} handshakes at once, {STORM} welcomed (in {took:?}, not asserted)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_over_the_connection_limit_is_refused_cleanly() {
    // a and b hold two slots; the storm may fill the rest and no more.
    let room = STORM_OVER / 2;
    let cluster = TestCluster::start_with(move |c| {
        c.limits.max_connections = (room + 2) as u32;
        with_metrics(c);
    })
    .await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;

    let s = storm(&cluster, "s", STORM_OVER).await;
    assert!(s.failed.is_empty(), "failed: {:?}", s.failed);
    assert_eq!(s.welcomed.len(), room, "exactly the free slots");
    assert_eq!(s.refused, STORM_OVER - room, "the rest refused");
    assert_eq!(cluster.stats().connections, room + 2);
    routes(&mut a, &b, 1).await;
    // A refused client may have retransmitted its Initial before the
    // refusal reached it: the counter counts refusals, at least one each.
    let (_, body) = cluster.http_get("/metrics").await;
    assert!(
        counter(&body, "icom_connections_refused_total{reason=\"limit\"}")
            >= (STORM_OVER - room) as f64
    );

    // The slots come back when the storm leaves.
    for (conn, _) in &s.welcomed {
        conn.close(0u32.into(), b"done");
    }
    drop(s);
    assert!(eventually(|| cluster.stats().connections == 2).await);
    let again = storm(&cluster, "t", room).await;
    assert!(again.failed.is_empty(), "failed: {:?}", again.failed);
    assert_eq!((again.welcomed.len(), again.refused), (room, 0));
    routes(&mut a, &b, 2).await;
    eprintln!(
        "storm over the limit: {STORM_OVER} at once, {room} welcomed, {} refused",
        STORM_OVER - room
    );
}

/// More handshakes at once than `limits.max_handshakes`: those past it
/// wait their turn in QUIC's queue, and every one is welcomed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_past_max_handshakes_waits_its_turn_and_is_welcomed_whole() {
    let cluster = TestCluster::start_with(|c| {
        c.limits.max_connections = (STORM + 10) as u32;
        c.limits.max_handshakes = 2;
    })
    .await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    let s = storm(&cluster, "s", STORM).await;
    assert!(s.failed.is_empty(), "failed: {:?}", s.failed);
    assert_eq!((s.welcomed.len(), s.refused), (STORM, 0));
    assert_eq!(cluster.stats().connections, STORM + 2);
    routes(&mut a, &b, 1).await;
}

/// A handshake that never finishes holds its place among the handshakes
/// under way for a second at most: with `limits.max_handshakes = 1` and
/// one half-open handshake, the next client is still welcomed, long
/// before the half-open one's idle timeout (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_handshake_does_not_keep_the_others_waiting() {
    let cluster = TestCluster::start_with(|c| {
        c.limits.max_handshakes = 1;
        c.transport.idle_timeout_secs = 30;
    })
    .await;
    let _half = half_open(&cluster, "half").await;
    let joined = tokio::time::timeout(Duration::from_secs(15), async {
        let mut a = cluster.raw("a").await;
        let b = cluster.raw("b").await;
        routes(&mut a, &b, 1).await;
    })
    .await;
    assert!(
        joined.is_ok(),
        "the next clients waited for the half-open handshake"
    );
}

/// A proxy to the router that loses everything the router answers.
async fn lossy_proxy(cluster: &TestCluster) -> ImpairmentProxy {
    let lossy = Impairment {
        loss: 1.0,
        ..Impairment::none()
    };
    ImpairmentProxy::start(cluster.addr(), Impairment::none(), lossy)
        .await
        .unwrap()
}

/// Starts a handshake through a proxy that loses everything the router
/// answers, and waits until the router has answered it (it holds a place
/// among the handshakes under way).
async fn half_open(cluster: &TestCluster, name: &str) -> (ImpairmentProxy, quinn::Endpoint) {
    let proxy = lossy_proxy(cluster).await;
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let issued = cluster.pki().client(name);
    let config = quinn::ClientConfig::new(client_crypto(cluster.pki(), Some(&issued)));
    drop(tokio::spawn(
        endpoint
            .connect_with(config, proxy.addr(), "localhost")
            .unwrap(),
    ));
    assert!(eventually(|| proxy.stats().to_client.packets_in > 0).await);
    proxy.pause();
    (proxy, endpoint)
}

/// Once a handshake has held its place past a second (as a flood of
/// Initials from spoofed addresses would), the router is wary: while every
/// place is taken, a new address must answer a QUIC Retry before it waits
/// for a place. A real client does, and is welcomed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_handshakes_are_abandoned_a_new_address_is_sent_a_retry() {
    let cluster = TestCluster::start_with(|c| {
        c.limits.max_handshakes = 1;
        c.transport.idle_timeout_secs = 30;
        with_metrics(c);
    })
    .await;
    let metric_now = |name: &'static str| {
        let cluster = &cluster;
        async move { counter(&cluster.http_get("/metrics").await.1, name) }
    };
    let _first = half_open(&cluster, "half1").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric_now("icom_handshakes_slow_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slow handshake counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric_now("icom_handshake_retries_total").await, 0.0);
    // Another one takes the place (for a second); the next address is
    // sent a Retry, answers it, and waits its turn.
    let _second = half_open(&cluster, "half2").await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    routes(&mut a, &b, 1).await;
    assert!(
        metric_now("icom_handshake_retries_total").await >= 1.0,
        "no Retry while wary and full"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_hold_a_slot_only_until_the_idle_timeout() {
    const HALF_OPEN: usize = 3;
    let cluster = TestCluster::start_with(|c| {
        c.transport.idle_timeout_secs = 2;
        c.transport.keep_alive_secs = 1;
        c.limits.max_connections = (HALF_OPEN + 2) as u32;
        with_metrics(c);
    })
    .await;
    // Each half-open client goes through its own proxy that loses
    // everything the router answers: the router has the ClientHello and
    // waits for a Finished that never comes.
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let mut proxies = Vec::new();
    let mut pending = Vec::new();
    for i in 0..HALF_OPEN {
        let proxy = lossy_proxy(&cluster).await;
        let issued = cluster.pki().client(&format!("half{i}"));
        let config = quinn::ClientConfig::new(client_crypto(cluster.pki(), Some(&issued)));
        let connecting = endpoint
            .connect_with(config, proxy.addr(), "localhost")
            .unwrap();
        pending.push(tokio::spawn(connecting));
        proxies.push(proxy);
    }
    // The router answered every ClientHello (so it accepted each, holding
    // a slot); then the link goes silent both ways.
    assert!(eventually(|| proxies.iter().all(|p| p.stats().to_client.packets_in > 0)).await);
    for p in &proxies {
        p.pause();
    }

    // The router keeps serving others meanwhile.
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    routes(&mut a, &b, 1).await;
    // Every slot is taken: the half-open handshakes hold theirs.
    match RawClient::connect(cluster.addr(), cluster.pki(), &cluster.pki().client("c")).await {
        Err(RawError::Closed(quinn::ConnectionError::ConnectionClosed(c))) => {
            assert_eq!(c.error_code, quinn::TransportErrorCode::CONNECTION_REFUSED);
        }
        Err(e) => panic!("expected CONNECTION_REFUSED, got {e}"),
        Ok(_) => panic!("a connection past the limit was accepted"),
    }

    // After the idle timeout the router drops them and frees their slots.
    let deadline = tokio::time::Instant::now() + WAIT;
    let dropped = loop {
        let (_, body) = cluster.http_get("/metrics").await;
        let n = counter(
            &body,
            "icom_connections_refused_total{reason=\"handshake\"}",
        );
        if n >= HALF_OPEN as f64 || tokio::time::Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        dropped, HALF_OPEN as f64,
        "each half-open handshake dropped once"
    );
    let mut late = Vec::new();
    for i in 0..HALF_OPEN {
        late.push(cluster.raw(&format!("late{i}")).await);
    }
    assert_eq!(cluster.stats().connections, HALF_OPEN + 2);
    routes(&mut a, &b, 2).await;
    for p in pending {
        p.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_is_acked_whole_with_bounded_queues() {
    const EVENTS: u64 = if cfg!(debug_assertions) {
        5_000
    } else {
        20_000
    };
    const MAX_STREAMS: u32 = 1024;
    const QUEUE_EVENTS: usize = 256;
    const QUEUE_BYTES: usize = 256 * 1024;
    let cluster = TestCluster::start_with(|c| {
        c.limits.max_streams = MAX_STREAMS;
        c.limits.max_event_bytes = 8 * 1024;
        c.limits.outbound_queue_events = QUEUE_EVENTS as u32;
        c.limits.outbound_queue_bytes = QUEUE_BYTES as u64;
    })
    .await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    assert!(EVENTS > u64::from(MAX_STREAMS));

    // b reads every delivery.
    let received = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (conn, received) = (b.conn.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok(mut s) = conn.accept_uni().await {
                let bytes = s.read_to_end(1 << 20).await.unwrap();
                let d = Deliver::decode(&Bytes::from(bytes)).unwrap();
                received.lock().unwrap().push(d.id);
            }
        })
    };
    // a opens streams as fast as flow control lets it, never waiting for
    // an ack.
    let writer = {
        let conn = a.conn.clone();
        let payload = Bytes::from(rmp_serde::to_vec(&"f".repeat(100)).unwrap());
        tokio::spawn(async move {
            for id in 1..=EVENTS {
                let mut s = conn.open_uni().await.unwrap();
                s.write_all(&fault(id, "b", payload.clone()).encode())
                    .await
                    .unwrap();
                s.finish().unwrap();
            }
        })
    };
    // The queues are sampled at every ack.
    let (mut peak_events, mut peak_bytes) = (0, 0);
    let mut acks = BTreeMap::new();
    while acks.len() < EVENTS as usize {
        let stats = cluster.stats();
        peak_events = stats.queued_events.max(peak_events);
        peak_bytes = stats.queued_bytes.max(peak_bytes);
        if let Control::Ack(ack) = a.next_control().await.unwrap() {
            assert!(acks.insert(ack.id, ack).is_none(), "one ack per stream");
        }
    }
    writer.await.unwrap();
    assert_eq!(
        acks.keys().copied().collect::<Vec<_>>(),
        (1..=EVENTS).collect::<Vec<_>>()
    );
    let mut ok = BTreeSet::new();
    let mut congested = 0;
    for (id, ack) in &acks {
        match &ack.error {
            None => {
                ok.insert(*id);
            }
            Some(e) => {
                assert_eq!(e.code, AckCode::Congested, "{ack:?}");
                congested += 1;
            }
        }
    }
    // Every event acked ok reached b, and nothing else did.
    assert!(eventually(|| received.lock().unwrap().len() >= ok.len()).await);
    let got: BTreeSet<u64> = received.lock().unwrap().iter().copied().collect();
    assert_eq!(got, ok);
    reader.abort();
    assert!(peak_events <= QUEUE_EVENTS, "{peak_events}");
    assert!(peak_bytes <= QUEUE_BYTES, "{peak_bytes}");
    assert_eq!(cluster.stats().queued_events, 0);
    eprintln!(
        "stream flood: {EVENTS} streams, {} ok, {congested} congested, queue peak {peak_events} events / {peak_bytes} bytes",
        ok.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_streams_get_no_ack_and_leak_nothing() {
    const MAX_STREAMS: u32 = 1024;
    let cluster = TestCluster::start_with(|c| c.limits.max_streams = MAX_STREAMS).await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    routes(&mut a, &b, 1).await;
    let before = alive_tasks();

    let mut x = cluster.raw("x").await;
    // Every stream the router allows, each holding the start of a send.
    let whole = fault(7, "b", Bytes::from_static(NIL)).encode();
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS {
        let mut s = x.conn.open_uni().await.unwrap();
        s.write_all(&whole[..6]).await.unwrap();
        open.push(s);
    }
    // Flow control caps it: one more waits for a stream to end.
    let one_more = {
        let conn = x.conn.clone();
        tokio::spawn(async move { conn.open_uni().await })
    };
    // The router still answers x, with no ack for what never ended.
    assert_eq!(x.ping(9).await.unwrap(), 9);
    assert!(
        !x.backlog.iter().any(|m| matches!(m, Control::Ack(_))),
        "no ack: {:?}",
        x.backlog
    );
    assert!(!one_more.is_finished(), "the stream limit held");
    // And it serves the others.
    routes(&mut a, &b, 2).await;

    // Finishing some: each is acked (a cut-off send is malformed), and
    // once enough have ended (quinn announces credit in steps of an eighth
    // of the limit) the waiting stream opens. The presence batch of a and
    // b may come to x among the acks: x may have been welcomed before it
    // went out (docs/PROTOCOL.md §3.2).
    let finished = MAX_STREAMS as usize / 4;
    for s in open.drain(..finished) {
        let mut s = s;
        s.finish().unwrap();
    }
    let mut malformed = 0;
    while malformed < finished {
        match x.next_control().await.unwrap() {
            Control::Ack(ack) => {
                assert_eq!(ack.error.unwrap().code, AckCode::Malformed);
                malformed += 1;
            }
            Control::Presence(p) if p.online && ["a", "b"].contains(&p.server_id.as_str()) => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    let extra = tokio::time::timeout(WAIT, one_more)
        .await
        .expect("a stream frees up")
        .unwrap()
        .unwrap();

    // The client leaves with its streams still open: nothing stays behind.
    x.conn.close(0u32.into(), b"bye");
    drop((open, extra, x));
    assert!(eventually(|| cluster.stats().connections == 2).await);
    assert!(
        eventually(|| alive_tasks() <= before + TASK_SLACK).await,
        "tasks: {} before, {} after",
        before,
        alive_tasks()
    );
    routes(&mut a, &b, 3).await;
    eprintln!(
        "unfinished streams: {MAX_STREAMS} held open, tasks {before} before / {} after",
        alive_tasks()
    );
}

/// A datagram that looks like a client's Initial (long header, version 1,
/// random connection ids, padded like a real one) but holds noise.
fn initial_looking(rng: &mut StdRng) -> Vec<u8> {
    let mut d = vec![0xc0 | (rng.random::<u8>() & 0x0f), 0, 0, 0, 1];
    let dcid: usize = rng.random_range(8..=20);
    d.push(dcid as u8);
    d.extend((0..dcid).map(|_| rng.random::<u8>()));
    let scid: usize = rng.random_range(0..=20);
    d.push(scid as u8);
    d.extend((0..scid).map(|_| rng.random::<u8>()));
    d.push(0); // no token
    let size: usize = if rng.random_bool(0.8) {
        1200
    } else {
        rng.random_range(40..1200)
    };
    let rest = size.saturating_sub(d.len() + 2);
    d.push(0x40 | ((rest >> 8) as u8 & 0x3f));
    d.push(rest as u8);
    d.extend((0..rest).map(|_| rng.random::<u8>()));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_at_the_port_change_nothing() {
    const DATAGRAMS: usize = 4000;
    let cluster = TestCluster::start_with(with_metrics).await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    let noise = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = StdRng::seed_from_u64(0x1c0_fa17);
    let mut id = 0;
    for i in 0..DATAGRAMS {
        let datagram = match i % 4 {
            // Pure noise, any size.
            0 => {
                let len = rng.random_range(1..=1500);
                (0..len).map(|_| rng.random::<u8>()).collect()
            }
            1 => initial_looking(&mut rng),
            // A long header of an unknown version (the router answers
            // version negotiation, statelessly).
            2 => {
                let mut d = initial_looking(&mut rng);
                d[1..5].copy_from_slice(&rng.random::<u32>().to_be_bytes());
                d
            }
            // A short header for a connection that does not exist.
            _ => {
                let len = rng.random_range(21..=1400);
                let mut d: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
                d[0] = 0x40 | (d[0] & 0x3f);
                d
            }
        };
        noise.send_to(&datagram, cluster.addr()).await.unwrap();
        if i % 500 == 499 {
            id += 1;
            routes(&mut a, &b, id).await;
        }
    }
    // Nothing was taken for a connection; real ones still come in.
    let c = cluster.raw("c").await;
    assert_eq!(cluster.stats().connections, 3);
    routes(&mut a, &b, id + 1).await;
    let (_, body) = cluster.http_get("/metrics").await;
    assert_eq!(counter(&body, "icom_connections_accepted_total"), 3.0);
    assert_eq!(
        counter(
            &body,
            "icom_connections_refused_total{reason=\"handshake\"}"
        ),
        0.0
    );
    drop(c);
    eprintln!("garbage: {DATAGRAMS} datagrams, {id} events routed between them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_in_a_tight_loop_leaves_a_consistent_table() {
    const CYCLES: u64 = 200;
    let cluster = TestCluster::start().await;
    let mut steady = cluster.raw("steady").await;
    let partner = cluster.raw("partner").await;
    routes(&mut steady, &partner, 1).await;
    let before = alive_tasks();
    let mut tasks = BTreeMap::new();
    let mut replaced = 0;
    for cycle in 1..=CYCLES {
        let mut f = cluster.raw("flappy").await;
        if cycle % 10 == 0 {
            // An overlap: the newer connection wins, the older is REPLACED.
            let newer = cluster.raw("flappy").await;
            // The bound is generous: the machine may be busy.
            f.expect_closed_within(CloseCode::Replaced, 3 * WAIT).await;
            replaced += 1;
            f = newer;
        }
        if cycle % 2 == 0 {
            // The protocol's way out.
            f.finish_control();
            f.expect_closed_within(CloseCode::Normal, 3 * WAIT).await;
        } else {
            // Abrupt, and straight into the next cycle.
            f.conn.close(0u32.into(), b"bye");
        }
        drop(f);
        if cycle % 25 == 0 {
            routes(&mut steady, &partner, 1 + cycle).await;
        }
        if cycle == 50 || cycle == CYCLES {
            assert!(eventually(|| cluster.stats().connections == 2).await);
            assert!(
                eventually(|| alive_tasks() <= before + TASK_SLACK).await,
                "cycle {cycle}: tasks {before} before, {} now",
                alive_tasks()
            );
            tasks.insert(cycle, alive_tasks());
        }
    }

    // Presence to the steady client: flappy on, off, on, off… ending off.
    let mut seen = Vec::new();
    let consistent = |seen: &[bool]| {
        seen.iter().filter(|o| **o).count() == seen.iter().filter(|o| !**o).count()
            && seen.last() == Some(&false)
    };
    let mut pending = std::mem::take(&mut steady.backlog);
    loop {
        for m in pending.drain(..) {
            if let Control::Presence(p) = m {
                if p.server_id == "flappy" {
                    seen.push(p.online);
                }
            }
        }
        if consistent(&seen) {
            break;
        }
        pending.push(steady.next_control().await.unwrap());
    }
    for (i, online) in seen.iter().enumerate() {
        assert_eq!(
            *online,
            i % 2 == 0,
            "presence out of order at {i}: {seen:?}"
        );
    }
    // The table holds exactly the two that stayed, and a newcomer is told
    // so (its welcome counts the last presence batch, which steady has
    // seen by now).
    let probe = cluster.raw("probe").await;
    let mut peers = probe.welcome.clone().unwrap().peers;
    peers.sort();
    assert_eq!(peers, ["partner", "steady"]);
    drop(probe);
    eprintln!(
        "reconnect loop: {CYCLES} cycles, {replaced} replaced, {} online/offline pairs, tasks {before} before / {tasks:?} settled at cycles",
        seen.len() / 2,
    );
}

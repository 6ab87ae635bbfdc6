//! The impairment proxy: what each impairment does to datagrams through a
//! plain UDP echo server, then ICOM events crossing a slow, lossy link to
//! the real router.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{Control, Send, Target};
use icom_tests::{
    client_crypto, Impairment, ImpairmentProxy, ProxyStats, RawClient, TestCluster, WAIT,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A UDP server sending every datagram back, noting who sent it.
struct Echo {
    addr: SocketAddr,
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
    _stop: DropGuard,
}

impl Echo {
    async fn start() -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(HashSet::new()));
        let stop = CancellationToken::new();
        let (seen, done) = (Arc::clone(&peers), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let (len, from) = tokio::select! {
                    () = done.cancelled() => return,
                    r = socket.recv_from(&mut buf) => r.unwrap(),
                };
                seen.lock().unwrap().insert(from);
                socket.send_to(&buf[..len], from).await.unwrap();
            }
        });
        Echo {
            addr,
            peers,
            _stop: stop.drop_guard(),
        }
    }
}

/// A UDP client of the proxy: sends numbered datagrams, collects the
/// numbers echoed back in arrival order.
struct Peer {
    socket: Arc<UdpSocket>,
    echoed: mpsc::Receiver<u64>,
    _stop: DropGuard,
}

impl Peer {
    async fn connect(to: SocketAddr) -> Peer {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        socket.connect(to).await.unwrap();
        let (tx, echoed) = mpsc::channel(65_536);
        let stop = CancellationToken::new();
        let (reader, done) = (Arc::clone(&socket), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let len = tokio::select! {
                    () = done.cancelled() => return,
                    r = reader.recv(&mut buf) => r.unwrap(),
                };
                assert!(len >= 8, "a datagram of {len} bytes");
                let n = u64::from_be_bytes(buf[..8].try_into().unwrap());
                if tx.send(n).await.is_err() {
                    return;
                }
            }
        });
        Peer {
            socket,
            echoed,
            _stop: stop.drop_guard(),
        }
    }

    /// Sends `n` in a datagram of `size` bytes (at least 8).
    async fn send(&self, n: u64, size: usize) {
        let mut datagram = vec![0u8; size.max(8)];
        datagram[..8].copy_from_slice(&n.to_be_bytes());
        self.socket.send(&datagram).await.unwrap();
    }

    /// The next number echoed back.
    async fn next(&mut self) -> u64 {
        tokio::time::timeout(WAIT, self.echoed.recv())
            .await
            .expect("an echo within the bound")
            .expect("the reader runs")
    }

    /// The next `count` numbers echoed back.
    async fn take(&mut self, count: u64) -> Vec<u64> {
        let mut got = Vec::new();
        for _ in 0..count {
            got.push(self.next().await);
        }
        got
    }
}

/// Sends `numbers` in small bursts, each let into the proxy before the
/// next, so no socket buffer on loopback overflows and loses what the
/// proxy never saw.
async fn send_paced(proxy: &ImpairmentProxy, peer: &Peer, numbers: &[u64], size: usize) {
    let base = proxy.stats().to_upstream.packets_in;
    let mut sent = 0;
    for burst in numbers.chunks(16) {
        for &n in burst {
            peer.send(n, size).await;
        }
        sent += burst.len() as u64;
        until(proxy, |s| s.to_upstream.packets_in >= base + sent).await;
    }
}

/// Waits until `done` holds for the proxy's counters; the bound only stops
/// a broken test from hanging.
async fn until(proxy: &ImpairmentProxy, done: impl Fn(&ProxyStats) -> bool) -> ProxyStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = proxy.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never got to {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until `sent` datagrams have crossed both ways or been dropped, and
/// nothing is held: the replies still to come are then exactly those the
/// proxy forwarded to the client.
async fn settled(proxy: &ImpairmentProxy, sent: u64) -> ProxyStats {
    until(proxy, |s| {
        s.to_upstream.packets_in == sent
            && s.to_upstream.held == 0
            && s.to_client.packets_in == s.to_upstream.forwarded
            && s.to_client.held == 0
    })
    .await
}

fn in_order(got: &[u64]) -> bool {
    got.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test]
async fn a_perfect_link_delivers_everything_in_order() {
    let echo = Echo::start().await;
    let proxy = ImpairmentProxy::start(echo.addr, Impairment::none(), Impairment::none())
        .await
        .unwrap();
    let mut peer = Peer::connect(proxy.addr()).await;
    let numbers: Vec<u64> = (0..500).collect();
    send_paced(&proxy, &peer, &numbers, 64).await;
    assert_eq!(peer.take(500).await, numbers);
    let stats = settled(&proxy, 500).await;
    for dir in [stats.to_upstream, stats.to_client] {
        assert_eq!(
            (dir.packets_in, dir.forwarded, dir.dropped()),
            (500, 500, 0)
        );
        assert_eq!(dir.reordered, 0);
    }
    assert_eq!(stats.clients, 1);
}

#[tokio::test]
async fn loss_drops_exactly_what_the_stats_count_and_a_seed_repeats_it() {
    async fn run(seed: u64) -> (Vec<u64>, ProxyStats) {
        let echo = Echo::start().await;
        let lossy = |seed| Impairment::none().with_loss(0.3).with_seed(seed);
        let proxy = ImpairmentProxy::start(echo.addr, lossy(seed), lossy(seed + 1))
            .await
            .unwrap();
        let mut peer = Peer::connect(proxy.addr()).await;
        let numbers: Vec<u64> = (0..400).collect();
        send_paced(&proxy, &peer, &numbers, 32).await;
        let stats = settled(&proxy, 400).await;
        (peer.take(stats.to_client.forwarded).await, stats)
    }

    let (got, stats) = run(7).await;
    let (up, down) = (stats.to_upstream, stats.to_client);
    assert!(up.dropped_loss > 0 && down.dropped_loss > 0, "{stats:?}");
    assert_eq!(up.dropped(), up.dropped_loss);
    assert_eq!(down.dropped(), down.dropped_loss);
    assert_eq!(
        got.len() as u64 + up.dropped_loss + down.dropped_loss,
        400,
        "every datagram either came back or was counted lost: {stats:?}"
    );
    assert!(in_order(&got), "loss never reorders");

    let (again, _) = run(7).await;
    assert_eq!(again, got, "the same seed loses the same datagrams");
}

#[tokio::test]
async fn delay_adds_to_the_round_trip() {
    let echo = Echo::start().await;
    let link = Impairment::rtt(Duration::from_millis(100));
    assert_eq!(link.delay, Duration::from_millis(50));
    let proxy = ImpairmentProxy::start(echo.addr, link.clone(), link)
        .await
        .unwrap();
    let mut peer = Peer::connect(proxy.addr()).await;
    for n in 0..5 {
        let sent = Instant::now();
        peer.send(n, 32).await;
        assert_eq!(peer.next().await, n);
        let rtt = sent.elapsed();
        assert!(rtt >= Duration::from_millis(100), "round trip {rtt:?}");
    }
}

#[tokio::test]
async fn reordering_sends_some_out_of_order_and_loses_none() {
    let echo = Echo::start().await;
    let shuffled = Impairment::none()
        .with_reorder(0.2, Duration::from_millis(250))
        .with_seed(3);
    let proxy = ImpairmentProxy::start(echo.addr, shuffled, Impairment::none())
        .await
        .unwrap();
    let mut peer = Peer::connect(proxy.addr()).await;
    let numbers: Vec<u64> = (0..200).collect();
    send_paced(&proxy, &peer, &numbers, 32).await;
    let got = peer.take(200).await;
    assert!(!in_order(&got), "some arrive out of order");
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, numbers, "none lost, none twice");
    let stats = settled(&proxy, 200).await;
    assert!(stats.to_upstream.reordered > 0);
    assert_eq!(stats.to_upstream.dropped() + stats.to_client.dropped(), 0);
}

#[tokio::test]
async fn a_burst_past_the_buffer_is_tail_dropped() {
    let echo = Echo::start().await;
    // 1000-byte datagrams at 10 kB/s leave one per 100 ms; the buffer
    // holds ten.
    let narrow = Impairment::none()
        .with_bandwidth(80_000)
        .with_queue_limit(10_000);
    let proxy = ImpairmentProxy::start(echo.addr, narrow, Impairment::none())
        .await
        .unwrap();
    let mut peer = Peer::connect(proxy.addr()).await;
    let numbers: Vec<u64> = (0..50).collect();
    send_paced(&proxy, &peer, &numbers, 1000).await;
    let stats = settled(&proxy, 50).await;
    let up = stats.to_upstream;
    assert!(up.dropped_queue > 0, "{stats:?}");
    assert!(up.forwarded >= 10, "an empty buffer takes ten: {stats:?}");
    assert_eq!(up.forwarded + up.dropped_queue, 50, "{stats:?}");
    assert_eq!(up.dropped(), up.dropped_queue);
    let got = peer.take(stats.to_client.forwarded).await;
    assert_eq!(got.len() as u64, up.forwarded);
    assert!(in_order(&got));
    assert_eq!(
        got[..10],
        numbers[..10],
        "the tail is dropped, not the head"
    );
}

#[tokio::test]
async fn each_client_gets_its_own_replies() {
    let echo = Echo::start().await;
    let proxy = ImpairmentProxy::start(echo.addr, Impairment::none(), Impairment::none())
        .await
        .unwrap();
    let mut peers = Vec::new();
    for _ in 0..5 {
        peers.push(Peer::connect(proxy.addr()).await);
    }
    let per_peer = 40u64;
    for round in 0..per_peer {
        for (i, peer) in peers.iter().enumerate() {
            peer.send(i as u64 * 1_000 + round, 32).await;
        }
        let sent = (round + 1) * peers.len() as u64;
        until(&proxy, |s| s.to_upstream.packets_in >= sent).await;
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        let want: Vec<u64> = (0..per_peer).map(|r| i as u64 * 1_000 + r).collect();
        assert_eq!(peer.take(per_peer).await, want, "client {i}");
    }
    assert_eq!(proxy.stats().clients, 5);
    assert_eq!(
        echo.peers.lock().unwrap().len(),
        5,
        "the upstream sees five distinct peers"
    );
}

#[tokio::test]
async fn a_paused_link_carries_nothing_until_resumed() {
    let echo = Echo::start().await;
    let proxy = ImpairmentProxy::start(echo.addr, Impairment::none(), Impairment::none())
        .await
        .unwrap();
    let mut peer = Peer::connect(proxy.addr()).await;
    proxy.pause();
    peer.send(1, 32).await;
    let stats = until(&proxy, |s| s.to_upstream.packets_in == 1).await;
    assert_eq!(stats.to_upstream.dropped_paused, 1);
    proxy.resume();
    peer.send(2, 32).await;
    assert_eq!(peer.next().await, 2);
}

fn event(id: u64, data: &Bytes) -> Send {
    icom_tests::send(
        id,
        Target::Server("b".into()),
        "over_the_ocean",
        data.clone(),
    )
}

#[tokio::test]
async fn events_cross_a_slow_lossy_link_exactly_once() {
    let cluster = TestCluster::start().await;
    let ocean = |seed| {
        Impairment::rtt(Duration::from_millis(50))
            .with_loss(0.02)
            .with_seed(seed)
    };
    let proxy = ImpairmentProxy::start(cluster.addr(), ocean(11), ocean(12))
        .await
        .unwrap();
    let crypto = client_crypto(cluster.pki(), Some(&cluster.pki().client("a")));
    let mut a = RawClient::connect_with(proxy.addr(), crypto).await.unwrap();
    a.hello().await.unwrap();
    let b = cluster.raw("b").await;

    // All 200 in flight at once, a kilobyte each so they fill a few hundred
    // packets, then their acks in whatever order.
    let data = Bytes::from(rmp_serde::to_vec(&"x".repeat(1000)).unwrap());
    for id in 1..=200 {
        a.send_event_bytes(&event(id, &data).encode())
            .await
            .unwrap();
    }
    let mut acked = HashSet::new();
    while acked.len() < 200 {
        let ack = a
            .control_until(|m| match m {
                Control::Ack(ack) => Some(ack.clone()),
                _ => None,
            })
            .await
            .unwrap();
        assert!(ack.ok, "{ack:?}");
        assert_eq!((ack.delivered, ack.queued), (1, 0), "{ack:?}");
        assert!(acked.insert(ack.id), "ack {} twice", ack.id);
    }

    let mut delivered = HashSet::new();
    while delivered.len() < acked.len() {
        let d = b.deliver().await.unwrap();
        assert_eq!(d.from, "a");
        assert_eq!(d.data, data, "payload bytes untouched");
        assert!(acked.contains(&d.id), "{} was never acked", d.id);
        assert!(delivered.insert(d.id), "{} delivered twice", d.id);
    }
    assert!(b.no_delivery_within(Duration::from_millis(200)).await);

    let stats = proxy.stats();
    assert!(
        stats.to_upstream.dropped_loss + stats.to_client.dropped_loss > 0,
        "the link lost packets, and QUIC made up for them: {stats:?}"
    );
}

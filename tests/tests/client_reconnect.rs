//! The client stays connected by itself: a router restart, sends that wait
//! for the connection in a bounded queue, fail-fast mode, and a client
//! started before its router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::time::{Duration, Instant};

use client_support::{
    config, connect, connect_with, connected, disconnected, next_event, wait_state,
};
use icom_client::{Client, QueueMode, ReconnectConfig, SendError, State, Unavailable};
use icom_tests::{TestCluster, WAIT};

#[tokio::test]
async fn the_client_reconnects_after_a_router_restart_and_events_flow_again() {
    let mut cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let (b, mut eb) = connect(&cluster, "server_2").await;
    a.send("server_2", "before", 1).await.unwrap();
    assert_eq!(next_event(&mut eb).await.event, "before");

    let (mut sa, mut sb) = (a.states(), b.states());
    cluster.restart().await;
    let gone = wait_state(&mut sa, |s| !connected(s)).await;
    assert!(disconnected(&gone), "{gone:?}");
    wait_state(&mut sa, connected).await;
    if !b.is_connected() {
        wait_state(&mut sb, connected).await;
    }

    // No call from the application: the clients are back.
    let ack = a.send("server_2", "after", 2).await.unwrap();
    assert_eq!(ack.delivered, 1);
    let e = next_event(&mut eb).await;
    assert_eq!((e.event.as_str(), e.decode::<i32>().unwrap()), ("after", 2));
    a.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_back_soon_after_a_router_that_was_down_for_a_while() {
    let mut cluster = TestCluster::start().await;
    // The default reconnect settings (100 ms doubling up to 30 s), with a
    // 5 s connect timeout: what brings the client back is the attempt in
    // flight, whose Initial QUIC retransmits until the router answers.
    let mut cfg = config(&cluster, "server_1");
    cfg.reconnect = ReconnectConfig::default();
    let (a, _ea) = connect_with(cfg).await;
    let mut states = a.states();
    // Down long enough for a doubling backoff to reach seconds.
    cluster.restart_after(Duration::from_secs(4)).await;
    let back = Instant::now();
    let gone = wait_state(&mut states, |s| !connected(s)).await;
    assert!(disconnected(&gone), "{gone:?}");
    wait_state(&mut states, connected).await;
    let took = back.elapsed();
    // A retransmission or a short delay, then a handshake: about a second
    // here. The bound is generous; what it rules out is waiting for the
    // 30 s backoff cap or the idle timeout.
    assert!(took < WAIT, "back {took:?} after the router");
    a.ping().await.unwrap();
}

#[tokio::test]
async fn a_send_while_the_router_is_down_waits_and_goes_through() {
    let mut cluster = TestCluster::start().await;
    let mut cfg = config(&cluster, "server_1");
    cfg.queue.timeout_ms = WAIT.as_millis() as u64;
    let (a, mut ea) = connect_with(cfg).await;
    let mut states = a.states();
    cluster.stop().await;
    wait_state(&mut states, |s| !connected(s)).await;
    assert!(!a.is_connected());

    let waiting = tokio::spawn({
        let a = a.clone();
        // To itself: the only recipient that is sure to be back.
        async move { a.send("server_1", "queued", 3).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    cluster.restart().await;

    let ack = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the queued send ends")
        .unwrap()
        .expect("it goes through after the reconnect");
    assert_eq!(ack.delivered, 1);
    assert_eq!(next_event(&mut ea).await.event, "queued");
}

#[tokio::test]
async fn the_disconnected_queue_is_bounded_in_size_and_time() {
    let mut cluster = TestCluster::start().await;
    let mut cfg = config(&cluster, "server_1");
    cfg.queue.capacity = 2;
    cfg.queue.timeout_ms = 400;
    let (a, _ea) = connect_with(cfg).await;
    let mut states = a.states();
    cluster.stop().await;
    wait_state(&mut states, |s| !connected(s)).await;

    let started = Instant::now();
    let (r1, r2, r3) = tokio::join!(
        a.send("server_1", "one", 1),
        a.send("server_1", "two", 2),
        a.send("server_1", "three", 3),
    );
    let results = [r1, r2, r3];
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(SendError::Unavailable(Unavailable::QueueFull(2)))))
        .count();
    let timed_out = results
        .iter()
        .filter(|r| {
            matches!(r, Err(SendError::Unavailable(Unavailable::QueueTimeout(t))) if *t == Duration::from_millis(400))
        })
        .count();
    assert_eq!((full, timed_out), (1, 2), "{results:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < WAIT,
        "{elapsed:?}"
    );
    assert!(results.iter().all(|r| match r {
        Err(e) =>
            e.is_timeout() == matches!(e, SendError::Unavailable(Unavailable::QueueTimeout(_))),
        Ok(_) => false,
    }));
    // Others' places are free again, and wait as long as before.
    let again = a.send("server_1", "four", 4).await;
    assert!(matches!(
        again,
        Err(SendError::Unavailable(Unavailable::QueueTimeout(_)))
    ));
    // Ping and forget wait at the same gate.
    assert!(a.ping().await.unwrap_err().is_timeout());
}

#[tokio::test]
async fn fail_fast_mode_does_not_wait() {
    let mut cluster = TestCluster::start().await;
    let mut cfg = config(&cluster, "server_1");
    cfg.queue.mode = QueueMode::FailFast;
    let (a, _ea) = connect_with(cfg).await;
    let mut states = a.states();
    cluster.stop().await;
    wait_state(&mut states, |s| !connected(s)).await;
    // `Disconnected`, not `QueueTimeout`: it did not wait at the gate.
    let err = a.send("server_1", "x", 1).await.unwrap_err();
    assert!(
        matches!(err, SendError::Unavailable(Unavailable::Disconnected)),
        "{err:?}"
    );
    cluster.restart().await;
    wait_state(&mut states, connected).await;
    a.send("server_1", "x", 1).await.unwrap();
}

#[tokio::test]
async fn a_client_started_before_its_router_connects_when_it_comes_up() {
    let mut cluster = TestCluster::start().await;
    let cfg = config(&cluster, "server_1");
    cluster.stop().await;
    let (a, mut events) = Client::start(cfg).unwrap();
    let mut states = a.states();
    let s = wait_state(&mut states, |s| matches!(s, State::Reconnecting { .. })).await;
    assert!(matches!(s, State::Reconnecting { .. }));
    cluster.restart().await;
    wait_state(&mut states, connected).await;
    a.send("server_1", "hello", "me").await.unwrap();
    assert_eq!(next_event(&mut events).await.json().unwrap(), "me");
}

#[tokio::test]
async fn an_in_flight_send_fails_cleanly_when_the_connection_drops() {
    let mut cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    // Many sends in flight while the router stops: every one ends, with an
    // ack or a clear error, and none hangs.
    let sends: Vec<_> = (0..200)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.send("server_1", "burst", i).await })
        })
        .collect();
    cluster.stop().await;
    for s in sends {
        let r = tokio::time::timeout(WAIT * 2, s)
            .await
            .expect("every send ends")
            .unwrap();
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    SendError::ConnectionLost
                        | SendError::Unavailable(Unavailable::QueueTimeout(_))
                ),
                "{e:?}"
            );
        }
    }
}

//! A client given the routers of one cluster: it connects to the first
//! that answers, moves on to the next when its router goes (even without a
//! word: killed, no close, no reset), says which router it is on, and does
//! not hop between routers after `REPLACED`; it moves back to the first
//! router once that one answers again, with no send failing for it and, in
//! a cluster, no presence change for the other servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use client_support::{config, config_for, connect_with, next_event, wait_state};
use icom_client::{Client, ClientConfig, State, States};
use icom_protocol::Target;
use icom_tests::{
    send, silent_udp_socket, workspace_bin, Impairment, ImpairmentProxy, RouterFiles,
    RouterProcess, Routers, TestCluster, WAIT,
};

/// How long a client may take to notice a router that went silent and be
/// on the next one. Generous: with the default keep-alive (2 s) and idle
/// timeout (6 s) it takes 6 to 8 s; the router's own idle timeout, which
/// decided before, is 30 s.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// Waits, up to `bound`, for a state that `pred` accepts.
async fn state_within(
    states: &mut States,
    bound: Duration,
    pred: impl Fn(&State) -> bool,
) -> State {
    tokio::time::timeout(bound, async {
        loop {
            let state = states.next().await.expect("the client is alive");
            if pred(&state) {
                return state;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no such state within {bound:?}"))
}

/// Sends `event` from `from` to `to` until it is delivered, within the
/// bound: `from`'s router may not have heard of `to` yet (`not_found`).
async fn send_once_it_knows(from: &Client, to: &str, event: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match from.send(to, event, 1).await {
            Ok(ack) if ack.delivered == 1 => return,
            other => {
                assert!(Instant::now() < deadline, "cannot reach {to}: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn connected_to(router: &str) -> impl Fn(&State) -> bool + '_ {
    move |s| matches!(s, State::Connected { router: r, .. } if r == router)
}

#[tokio::test]
async fn a_client_given_a_dead_router_first_connects_to_the_next_and_says_so() {
    let cluster = TestCluster::start().await;
    let silent = silent_udp_socket();
    let (dead, live) = (
        silent.local_addr().unwrap().to_string(),
        cluster.addr().to_string(),
    );
    let mut cfg = config(&cluster, "server_1").with_routers([dead.clone(), live.clone()]);
    cfg.connect_timeout_ms = 1_000;

    // Client::connect: the first router does not answer, the second does.
    let (a, mut events) = connect_with(cfg.clone()).await;
    assert_eq!(a.router(), Some(live.clone()));
    assert!(connected_to(&live)(&a.state()), "{:?}", a.state());
    a.send("server_1", "on_the_live_one", 1).await.unwrap();
    assert_eq!(next_event(&mut events).await.event, "on_the_live_one");
    a.close().await;

    // Client::start: the same, in the background, and the states say
    // which router each attempt is for.
    let (b, _events) = Client::start(cfg).unwrap();
    let mut states = b.states();
    let first = state_within(&mut states, WAIT, |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    assert_eq!(first.router(), Some(dead.as_str()), "{first:?}");
    let lost = state_within(&mut states, WAIT, |s| {
        matches!(s, State::Disconnected { .. })
    })
    .await;
    assert_eq!(lost.router(), Some(dead.as_str()), "{lost:?}");
    // On to the next router at once: no backoff wait between the two.
    let next = state_within(&mut states, WAIT, |s| {
        matches!(s, State::Reconnecting { .. })
    })
    .await;
    assert!(
        matches!(&next, State::Reconnecting { delay, router, .. } if delay.is_zero() && *router == live),
        "{next:?}"
    );
    state_within(&mut states, WAIT, connected_to(&live)).await;
    assert_eq!(b.router(), Some(live));
    b.close().await;
    drop(silent);
}

fn process_client(files: &RouterFiles, id: &str, routers: &[String]) -> ClientConfig {
    let (dir, issued) = (files.dir(), files.pki().client(id));
    let (cert, key) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    // The default keep-alive and idle timeout: they are what is tested.
    let mut c = ClientConfig::new("", "localhost", dir.join("ca.pem"), cert, key)
        .with_routers(routers.iter().cloned());
    c.reconnect.initial_ms = 50;
    c.reconnect.max_ms = 500;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_router_is_killed_is_on_the_next_one_well_before_the_idle_timeout() {
    let bin = workspace_bin("icom-server", "icom-server");
    let files_a = RouterFiles::new("");
    let files_b = files_a.sibling("");
    let mut router_a = RouterProcess::start(&mut files_a.command(&bin));
    let mut router_b = RouterProcess::start(&mut files_b.command(&bin));
    let (a, b) = (files_a.addr().to_string(), files_b.addr().to_string());

    let (x, mut x_events) =
        connect_with(process_client(&files_a, "x", &[a.clone(), b.clone()])).await;
    assert_eq!(x.router(), Some(a.clone()));
    let (y, mut y_events) =
        connect_with(process_client(&files_b, "y", std::slice::from_ref(&b))).await;
    let mut states = x.states();

    // Killed: no QUIC close, and no restart to reset the connection.
    router_a.signal("KILL");
    router_a.wait_exit(Duration::from_secs(10));
    let lost = state_within(&mut states, FAILOVER_BOUND, |s| {
        !matches!(s, State::Connected { .. })
    })
    .await;
    // The client's own idle timeout noticed: nothing else could, as the
    // router is gone without a word.
    assert!(
        matches!(&lost, State::Disconnected { reason, router: Some(r) }
            if reason == "the connection timed out" && *r == a),
        "{lost:?}"
    );
    state_within(&mut states, FAILOVER_BOUND, connected_to(&b)).await;
    assert_eq!(x.router(), Some(b.clone()));

    // Both ways on router B.
    send_once_it_knows(&x, "y", "from_x").await;
    assert_eq!(next_event(&mut y_events).await.event, "from_x");
    y.send("x", "from_y", 2).await.unwrap();
    let got = next_event(&mut x_events).await;
    assert_eq!((got.event.as_str(), got.from.as_str()), ("from_y", "y"));

    x.close().await;
    y.close().await;
    router_b.signal("TERM");
    router_b.wait_exit(Duration::from_secs(10));
}

#[tokio::test]
async fn a_replaced_client_does_not_hop_to_another_router() {
    let a = TestCluster::start().await;
    let b = a.sibling().await;
    let routers = [a.addr().to_string(), b.addr().to_string()];
    let mut cfg = config(&a, "server_1").with_routers(routers.clone());
    cfg.reconnect.replaced_delay_ms = 60_000;
    let (old, _e1) = connect_with(cfg.clone()).await;
    let mut states = old.states();
    let (new, _e2) = connect_with(cfg).await;
    assert_eq!(new.router(), Some(routers[0].clone()));
    let state = wait_state(&mut states, |s| !matches!(s, State::Connected { .. })).await;
    assert_eq!(
        state,
        State::Replaced {
            retry_in: Duration::from_secs(60),
            router: routers[0].clone(),
        }
    );
    // It waits, rather than connecting to router B (from where it would
    // replace the new one in turn, if the routers shared their table).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(old.state(), state);
    assert!(!old.is_connected());
    assert!(new.is_connected());
    assert_eq!(b.stats().connections, 0, "{:?}", b.stats());
}

/// Sends events named `event` to itself one after the other until `stop`,
/// each awaited: how many were acked as delivered, and the first that was
/// not.
async fn sends_to_itself(
    client: Client,
    id: &'static str,
    event: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, Option<String>) {
    let mut n = 0u64;
    while !*stop.borrow() {
        match client.send(id, &event, n).await {
            Ok(ack) if ack.ok && ack.delivered == 1 => n += 1,
            other => return (n, Some(format!("send {n}: {other:?}"))),
        }
    }
    (n, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moves_back_to_the_first_router_when_it_answers_again_and_no_send_fails() {
    let mut a = TestCluster::start().await;
    let b = a.sibling().await;
    let routers = [a.addr().to_string(), b.addr().to_string()];
    let mut cfg = config(&a, "server_1").with_routers(routers.clone());
    cfg.reconnect.return_ms = 200;
    let (x, mut x_events) = connect_with(cfg.clone()).await;
    // Two clients that do not move back: one with `return_ms = 0`, one
    // that must not replace its identity.
    let mut stay = config(&a, "server_2").with_routers(routers.clone());
    stay.reconnect.return_ms = 0;
    let (y, _y_events) = connect_with(stay).await;
    let mut keep = config(&a, "server_3").with_routers(routers.clone());
    keep.reconnect.return_ms = 200;
    keep.replace = false;
    let (z, _z_events) = connect_with(keep).await;
    assert_eq!(x.router(), Some(routers[0].clone()));
    let (mut states, mut y_states, mut z_states) = (x.states(), y.states(), z.states());

    a.stop().await;
    state_within(&mut states, WAIT, connected_to(&routers[1])).await;
    wait_state(&mut y_states, connected_to(&routers[1])).await;
    wait_state(&mut z_states, connected_to(&routers[1])).await;
    assert_eq!(b.stats().connections, 3, "{:?}", b.stats());

    // Events flow through the move from several senders at once, each one
    // event at a time: every one is acked as delivered, and arrives once
    // (events are not ordered, docs/PROTOCOL.md §7: the last on the old
    // connection may be read after the first on the new).
    const SENDERS: usize = 8;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let senders: Vec<_> = (0..SENDERS)
        .map(|k| {
            let loop_k =
                sends_to_itself(x.clone(), "server_1", format!("loop{k}"), stopped.clone());
            tokio::spawn(loop_k)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.restart().await;
    let back = state_within(&mut states, WAIT, |s| matches!(s, State::Connected { .. })).await;
    assert_eq!(back.router(), Some(routers[0].as_str()), "{back:?}");
    assert_eq!(x.router(), Some(routers[0].clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true).unwrap();
    let mut sent = Vec::new();
    for (k, sender) in senders.into_iter().enumerate() {
        let (n, failed) = sender.await.unwrap();
        assert_eq!(failed, None, "sender {k}, after {n} sends");
        assert!(n > 0, "sender {k} sent nothing");
        sent.push(n);
    }
    let mut got = vec![Vec::new(); SENDERS];
    for _ in 0..sent.iter().sum::<u64>() {
        let e = next_event(&mut x_events).await;
        assert_eq!(e.from, "server_1");
        let k: usize = e.event.strip_prefix("loop").unwrap().parse().unwrap();
        got[k].push(e.decode::<u64>().unwrap());
    }
    for (k, (got, sent)) in got.iter_mut().zip(&sent).enumerate() {
        got.sort_unstable();
        assert_eq!(*got, (0..*sent).collect::<Vec<_>>(), "loop{k}: each once");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), x_events.next())
            .await
            .is_err(),
        "nothing more arrived"
    );

    // The old connection is closed (these routers share no table: the
    // client closes it) and the other clients stayed where they were.
    let deadline = Instant::now() + WAIT;
    while b.stats().connections != 2 {
        assert!(Instant::now() < deadline, "{:?}", b.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.stats().connections, 1, "{:?}", a.stats());
    assert_eq!(y.router(), Some(routers[1].clone()));
    assert_eq!(z.router(), Some(routers[1].clone()));
    x.close().await;
    y.close().await;
    z.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_a_client_moves_back_without_a_presence_change_for_the_others() {
    let mut rs = Routers::start(3, 2).await;
    let routers = [
        rs.router(0).addr().to_string(),
        rs.router(1).addr().to_string(),
    ];
    let mut cfg = config_for(rs.router(0).client_files("x")).with_routers(routers.clone());
    cfg.reconnect.return_ms = 200;
    let (x, mut x_events) = connect_with(cfg).await;
    let mut w = rs.router(1).raw("w").await;
    let mut states = x.states();

    rs.routers[0].stop().await;
    state_within(&mut states, WAIT, connected_to(&routers[1])).await;
    // x is on w's router now; what w hears of that settles.
    let _ = w.presence_within(Duration::from_millis(500)).await;

    // Events flow through the move: its router closes the old connection
    // (REPLACED) as soon as the cluster hands the identity over, and still
    // no send fails, since the move waited for their acks first.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(sends_to_itself(x.clone(), "x", "loop".into(), stopped));
    rs.routers[0].restart().await;
    let back = state_within(&mut states, WAIT, |s| matches!(s, State::Connected { .. })).await;
    assert_eq!(back.router(), Some(routers[0].as_str()), "{back:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true).unwrap();
    let (sent, failed) = sender.await.unwrap();
    assert_eq!(failed, None, "after {sent} sends");
    let mut got = Vec::new();
    for _ in 0..sent {
        got.push(next_event(&mut x_events).await.decode::<u64>().unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (0..sent).collect::<Vec<_>>(), "each once");
    // The cluster handed the identity over: w saw x neither leave nor come.
    let heard = w.presence_within(Duration::from_secs(2)).await;
    assert!(heard.iter().all(|(id, _)| id != "x"), "{heard:?}");
    assert_eq!(
        rs.router(1).stats().connections,
        1,
        "{:?}",
        rs.router(1).stats()
    );

    // Both ways across the routers, from where x is now.
    send_once_it_knows(&x, "w", "from_x").await;
    assert_eq!(w.deliver().await.unwrap().event, "from_x");
    let ack = w
        .send(&send(
            7,
            Target::Server("x".into()),
            "from_w",
            Bytes::from_static(&[0xc0]),
        ))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(next_event(&mut x_events).await.event, "from_w");
    x.close().await;
}

/// A move back whose `welcome` comes too late: the first router's answers
/// take 3.5 s to arrive, so the QUIC handshake is done within the connect
/// timeout but `welcome` misses the move's 3 s bound. That router took
/// the identity on `hello`, and the cluster closed the old connection
/// with `REPLACED`: the move's own doing, not another instance's takeover.
/// The client reconnects at once instead of waiting `replaced_delay_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_back_whose_welcome_comes_late_is_no_takeover() {
    let rs = Routers::start(3, 2).await;
    let late = Impairment {
        delay: Duration::from_millis(3500),
        ..Impairment::none()
    };
    let slow = ImpairmentProxy::start(rs.router(0).addr(), Impairment::none(), late)
        .await
        .unwrap();
    let routers = [slow.addr().to_string(), rs.router(1).addr().to_string()];
    let mut cfg = config_for(rs.router(0).client_files("x")).with_routers(routers.clone());
    cfg.reconnect.return_ms = 200;
    // Connecting through the slow link takes 7 s: past the timeout, the
    // client is on the second router.
    let (x, _events) = connect_with(cfg).await;
    assert!(connected_to(&routers[1])(&x.state()), "{:?}", x.state());
    let mut states = x.states();

    let next = state_within(&mut states, Duration::from_secs(20), |s| {
        !matches!(s, State::Connected { .. })
    })
    .await;
    assert!(
        matches!(
            next,
            State::Disconnected { .. } | State::Reconnecting { .. }
        ),
        "{next:?}"
    );
    state_within(&mut states, Duration::from_secs(30), |s| {
        matches!(s, State::Connected { .. })
    })
    .await;
    x.close().await;
}

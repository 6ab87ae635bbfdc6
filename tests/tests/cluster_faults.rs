//! Cluster mode under faults (docs/PROTOCOL.md §12): a router SIGKILLed
//! (its servers move to another router by themselves; the others see them
//! go and come back), a router stopped gracefully (its servers move without
//! a presence change), a NATS node killed (routing goes on), and NATS down
//! and back (local routing goes on, cross-router sends get `unreachable`
//! at once, the cluster converges).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::time::Duration;

use bytes::Bytes;
use client_support::{config, connect_with, next_event};
use icom_protocol::{AckCode, Control, Presence, Target};
use icom_tests::{eventually, send, RawClient, Routers, WAIT};

fn data() -> Bytes {
    Bytes::from(rmp_serde::to_vec(&"x").unwrap())
}

/// The presence messages `c` receives until `until` is among them.
async fn presence_until(c: &mut RawClient, until: (&str, bool)) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let m = tokio::time::timeout_at(deadline, c.next_control())
            .await
            .unwrap_or_else(|_| panic!("no presence {until:?} in time; heard {out:?}"))
            .unwrap();
        if let Control::Presence(Presence { server_id, online }) = m {
            let done = server_id == until.0 && online == until.1;
            out.push((server_id, online));
            if done {
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_routers_servers_move_by_themselves_and_the_others_see_them_go_and_come_back() {
    let rs = Routers::start(3, 1).await;
    let (_files, doomed) = rs.spawn_binary("doomed", "").await;
    let doomed_addr = _files.addr().to_string();
    let mut watcher = rs.router(0).raw("watcher").await;

    // A client listing the doomed router first, then router 0.
    let cfg = config(rs.router(0), "mover")
        .with_routers([doomed_addr.clone(), rs.router(0).addr().to_string()]);
    let (mover, mut events) = connect_with(cfg).await;
    assert_eq!(mover.router(), Some(doomed_addr.clone()));
    watcher.view_becomes(&["mover"]).await;
    let ack = watcher
        .send(&send(1, Target::Server("mover".into()), "before", data()))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(next_event(&mut events).await.event, "before");

    doomed.signal("KILL");
    // The test routers' timeout (TEST_ROUTER_TIMEOUT_MS, 1.5 s) is below
    // the time the client takes to notice the silence (6 to 8 s), so the
    // server is announced as gone before it is back.
    // Router 0 announces the dead router's server as gone (after
    // router_timeout_ms of silence), and back once it moved to router 0.
    let heard = presence_until(&mut watcher, ("mover", true)).await;
    assert_eq!(
        heard,
        [("mover".to_owned(), false), ("mover".to_owned(), true)]
    );
    assert!(
        eventually(|| mover.router() == Some(rs.router(0).addr().to_string())).await,
        "the client is on router 0: {:?}",
        mover.router()
    );
    let ack = watcher
        .send(&send(2, Target::Server("mover".into()), "after", data()))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(next_event(&mut events).await.event, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_stopped_gracefully_hands_its_servers_over_without_a_presence_change() {
    // A router timeout far above the test's waits: router 1 leaves router
    // 0's view only by saying goodbye.
    let mut rs = Routers::start_with(3, 2, |_, c| {
        if let Some(cl) = &mut c.cluster {
            cl.router_timeout_ms = 600_000;
        }
    })
    .await;
    let mut watcher = rs.router(0).raw("watcher").await;
    let cfg = config(rs.router(1), "mover").with_routers([
        rs.router(1).addr().to_string(),
        rs.router(0).addr().to_string(),
    ]);
    let (mover, mut events) = connect_with(cfg).await;
    watcher.view_becomes(&["mover"]).await;
    rs.routers[1].stop().await;
    assert!(
        eventually(|| mover.router() == Some(rs.router(0).addr().to_string())).await,
        "the client is on router 0: {:?}",
        mover.router()
    );
    rs.remote_servers(0, 0).await;
    assert!(
        eventually(|| rs.router(0).stats().routers == 0).await,
        "router 1 said goodbye"
    );
    // Router 0 holds mover now, and the watcher never saw it leave.
    let ack = watcher
        .send(&send(3, Target::Server("mover".into()), "after", data()))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(next_event(&mut events).await.event, "after");
    let heard = watcher.presence_within(Duration::from_millis(500)).await;
    assert!(heard.is_empty(), "{heard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_goes_on_when_a_nats_node_dies() {
    // A router timeout longer than a NATS reconnect: the routers do not
    // take each other for dead meanwhile.
    let mut rs = Routers::start_with(3, 2, |_, c| {
        if let Some(cl) = &mut c.cluster {
            cl.router_timeout_ms = 10_000;
        }
    })
    .await;
    let mut a = rs.router(0).raw("a").await;
    let b = rs.router(1).raw("b").await;
    rs.remote_servers(0, 1).await;
    for node in [0, 1] {
        rs.nats.kill(node);
        // Each router is on some node; one on the dead node reconnects to
        // another by itself. A send may fail while it does; then it goes.
        let mut id = 100 * (node as u64 + 1);
        let delivered = loop {
            id += 1;
            let ack = a
                .send(&send(id, Target::Server("b".into()), "e", data()))
                .await
                .unwrap();
            if ack.ok {
                break ack.delivered;
            }
            assert_eq!(
                ack.error.as_ref().unwrap().code,
                AckCode::Unreachable,
                "{ack:?}"
            );
            assert!(
                id < 100 * (node as u64 + 1) + 200,
                "routing did not resume: {ack:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(delivered, 1);
        assert_eq!(b.deliver().await.unwrap().id, id);
        rs.nats.restart(node).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_local_routing_goes_on_remote_sends_are_unreachable_and_the_cluster_converges()
{
    let mut rs = Routers::start(3, 2).await;
    let mut a1 = rs.router(0).raw("a1").await;
    let a2 = rs.router(0).raw("a2").await;
    let b1 = rs.router(1).raw("b1").await;
    rs.remote_servers(0, 1).await;
    for node in 0..3 {
        rs.nats.kill(node);
    }
    assert!(
        eventually(|| !rs.router(0).stats().cluster_reachable).await,
        "router 0 noticed NATS is gone"
    );
    // On one router: as before.
    let ack = a1
        .send(&send(1, Target::Server("a2".into()), "e", data()))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(a2.deliver().await.unwrap().id, 1);
    // To the other router: `unreachable` at once, from the lost link, not
    // after waiting for an answer that cannot come.
    let ack = a1
        .send(&send(2, Target::Server("b1".into()), "e", data()))
        .await
        .unwrap();
    assert!(!ack.ok);
    let e = ack.error.unwrap();
    assert_eq!(e.code, AckCode::Unreachable);
    assert!(e.message.contains("lost the cluster"), "{}", e.message);
    // A broadcast reaches this router's servers, and says it did no more.
    let ack = a1.send(&send(3, Target::All, "e", data())).await.unwrap();
    assert_eq!((ack.ok, ack.delivered), (false, 1), "{ack:?}");
    assert_eq!(ack.error.unwrap().code, AckCode::Unreachable);
    assert_eq!(a2.deliver().await.unwrap().id, 3);

    rs.nats.restart_all().await;
    assert!(
        eventually(|| rs.routers.iter().all(|r| r.stats().cluster_reachable)).await,
        "the routers reconnected to NATS by themselves"
    );
    rs.converged().await;
    rs.remote_servers(0, 1).await;
    rs.remote_servers(1, 2).await;
    let ack = a1
        .send(&send(4, Target::Server("b1".into()), "e", data()))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(b1.deliver().await.unwrap().id, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_routers_servers_that_move_before_its_timeout_never_show_offline() {
    // A router timeout longer than the client takes to notice the silence
    // (6 to 8 s), as with the defaults (10 s).
    let rs = Routers::start_with(3, 1, |_, c| {
        if let Some(cl) = &mut c.cluster {
            cl.router_timeout_ms = 12_000;
        }
    })
    .await;
    let (files, doomed) = rs.spawn_binary("doomed", "").await;
    let mut watcher = rs.router(0).raw("watcher").await;
    let cfg = config(rs.router(0), "mover")
        .with_routers([files.addr().to_string(), rs.router(0).addr().to_string()]);
    let (mover, mut events) = connect_with(cfg).await;
    watcher.view_becomes(&["mover"]).await;
    doomed.signal("KILL");
    let bound = tokio::time::Instant::now() + WAIT * 4;
    while mover.router() != Some(rs.router(0).addr().to_string()) {
        assert!(
            tokio::time::Instant::now() < bound,
            "the client did not move"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Until router 0 gives the dead router up, and after.
    while rs.router(0).stats().routers > 0 {
        assert!(
            tokio::time::Instant::now() < bound,
            "the dead router was never given up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let heard = watcher.presence_within(Duration::from_millis(500)).await;
    assert!(heard.is_empty(), "{heard:?}");
    let ack = watcher
        .send(&send(5, Target::Server("mover".into()), "after", data()))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(next_event(&mut events).await.event, "after");
}

//! Stored events through the client: replayed before live ones and in
//! order, redeliveries de-duplicated, persistence and `forget`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::time::Duration;

use client_support::{config, connect, connect_with, connected, next_event, wait_state};
use icom_client::{Persist, SendOptions, Target};
use icom_tests::TestCluster;

#[tokio::test]
async fn stored_events_are_replayed_in_order_before_live_ones() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let to_b = Target::Server("server_2".into());
    let ttl = SendOptions::new().ttl(Duration::from_secs(60));
    // Sent at once, so they reach the router in any order.
    let sends: Vec<_> = (0..40)
        .map(|n| {
            let (a, to_b, ttl) = (a.clone(), to_b.clone(), ttl.clone());
            tokio::spawn(async move { a.send_to(to_b, "queued", n, ttl).await })
        })
        .collect();
    for s in sends {
        let ack = s.await.unwrap().unwrap();
        assert_eq!((ack.delivered, ack.queued), (0, 1));
    }

    let (_b, mut eb) = connect(&cluster, "server_2").await;
    a.send("server_2", "live", -1).await.unwrap();
    let mut replayed = Vec::new();
    for _ in 0..40 {
        let e = next_event(&mut eb).await;
        assert_eq!(
            e.event, "queued",
            "a live event came before the replay ended"
        );
        replayed.push((e.sent_ms, e.id));
    }
    let mut sorted = replayed.clone();
    sorted.sort_unstable();
    assert_eq!(
        replayed, sorted,
        "replayed events are in (sent_ms, id) order"
    );
    assert_eq!(next_event(&mut eb).await.event, "live");
}

#[tokio::test]
async fn a_persistent_event_replayed_after_a_reconnect_is_not_handed_on_twice() {
    let mut cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let (b, mut eb) = connect_with(config(&cluster, "server_2")).await;
    let ack = a
        .send_to(
            Target::Server("server_2".into()),
            "jip_state",
            "flag captured",
            SendOptions::new().persist("flag-state"),
        )
        .await
        .unwrap();
    assert_eq!(ack.persist_id.as_deref(), Some("flag-state"));
    let first = next_event(&mut eb).await;
    assert_eq!(first.persist_id.as_deref(), Some("flag-state"));

    // The router restarts and replays the stored event to b.
    let (mut sa, mut sb) = (a.states(), b.states());
    cluster.restart().await;
    wait_state(&mut sb, connected).await;
    if !a.is_connected() {
        wait_state(&mut sa, connected).await;
    }
    a.send("server_2", "after", 1).await.unwrap();
    let next = next_event(&mut eb).await;
    assert_eq!(
        (next.event.as_str(), next.from.as_str()),
        ("after", "server_1"),
        "the redelivered {:?} was handed on again",
        first.persist_id
    );
}

#[tokio::test]
async fn a_persistent_broadcast_reaches_a_server_that_connects_later_until_forgotten() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let ack = a
        .send_to(
            Target::All,
            "global_alert",
            "restart in 5 min",
            SendOptions {
                persist: Some(Persist::Auto),
                ttl: None,
            },
        )
        .await
        .unwrap();
    let pid = ack.persist_id.clone().expect("the router names it");

    let (late, mut el) = connect(&cluster, "server_3").await;
    let e = next_event(&mut el).await;
    assert_eq!(e.event, "global_alert");
    assert_eq!(e.persist_id.as_deref(), Some(pid.as_str()));
    late.close().await;

    let ack = a.forget(&pid).await.unwrap();
    assert!(ack.ok);
    let (_later, mut el) = connect(&cluster, "server_4").await;
    a.send("server_4", "plain", 1).await.unwrap();
    assert_eq!(next_event(&mut el).await.event, "plain");
}

//! Persistent events (the JIP queue), offline delivery with a TTL, and
//! their bounds (docs/PROTOCOL.md §5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{AckCode, Control, Forget, Persist, Send, Target};
use icom_tests::{joiners_get_every_acked_send, persistent, RawClient, TestCluster};

fn send(id: u64, to: Target, event: &str) -> Send {
    let data = Bytes::from(rmp_serde::to_vec(&format!("payload {id}")).unwrap());
    icom_tests::send(id, to, event, data)
}

/// Reads `replayed` and the deliveries that came with it, sorted by the
/// router's stored order (sent_ms, then id).
async fn replay_of(c: &mut RawClient) -> (u32, Vec<icom_protocol::Deliver>) {
    let mut got = c.replayed().await.unwrap();
    let count = u32::try_from(got.len()).unwrap();
    got.sort_by_key(|d| (d.sent_ms, d.id));
    (count, got)
}

/// A client that stops one stream of its replay (an event larger than it
/// takes now, say) still gets the rest, and `replayed`.
#[tokio::test]
async fn a_replay_goes_on_past_a_stream_the_client_stopped() {
    let cluster = TestCluster::start().await;
    let mut hq = cluster.raw("hq").await;
    let big = Send {
        data: Bytes::from(rmp_serde::to_vec(&"x".repeat(200_000)).unwrap()),
        ..persistent(1, Target::All, "big")
    };
    assert!(hq.send(&big).await.unwrap().ok);
    assert!(
        hq.send(&persistent(2, Target::All, "small"))
            .await
            .unwrap()
            .ok
    );
    // x takes 16 KiB a stream before it reads: the router's write of the
    // big event waits, and x stops that stream.
    let mut x = cluster.raw_with_window("x", 16_384).await;
    let mut first = tokio::time::timeout(icom_tests::WAIT, x.conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    first.stop(0u32.into()).unwrap();
    drop(first);
    let next = x.deliver().await.unwrap();
    assert_eq!(next.persist_id.as_deref(), Some("small"));
    let count = x
        .control_until(|m| match m {
            Control::Replayed(r) => Some(r.count),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(count, 2, "both were due");
}

/// A server that connects while persistent sends are being stored gets
/// every one of them, from its replay or live: none falls between the
/// send's resolution (before the server registered) and the server's
/// replay (read before the event was stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_connects_while_persistent_sends_are_stored_gets_every_one() {
    let cluster = TestCluster::start().await;
    joiners_get_every_acked_send(&cluster, &cluster, |id, from, senders, _| {
        // Not to the senders, who do not read their deliveries.
        persistent(
            id,
            Target::Except(senders.to_vec()),
            &format!("{from}-{id}"),
        )
    })
    .await;
}

/// The same for sends with a ttl to named servers: the copy queued for a
/// server that was offline when the send was resolved reaches it, from
/// its replay or live, while it is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_connects_while_its_copies_are_queued_gets_every_one() {
    let cluster = TestCluster::start().await;
    joiners_get_every_acked_send(&cluster, &cluster, |id, _, _, joiners| Send {
        ttl_ms: Some(60_000),
        ..send(id, Target::Servers(joiners.to_vec()), "e")
    })
    .await;
}

/// A sender that does not read its acks holds back only its acks: its
/// persistent sends are still stored, and a server that connects meanwhile
/// gets its replay of them at once.
#[tokio::test]
async fn a_sender_that_reads_no_acks_holds_back_no_replay() {
    const SENDS: u64 = 300;
    let cluster = TestCluster::start_with(|c| c.limits.control_queue = 1).await;
    // A control stream window of 1 KiB: a dozen acks fill it.
    let mut hq = cluster.raw_with_window("hq", 1024).await;
    for id in 1..=SENDS {
        let send = persistent(id, Target::All, &format!("p{id}"));
        hq.send_event_bytes(&send.encode()).await.unwrap();
    }
    let mut x = cluster.raw("x").await;
    let replayed = x
        .replayed()
        .await
        .expect("the replay, while hq reads nothing");
    // What was not stored yet when x registered comes live.
    let mut got: std::collections::BTreeSet<String> = replayed
        .into_iter()
        .map(|d| d.persist_id.unwrap())
        .collect();
    while (got.len() as u64) < SENDS {
        got.insert(x.deliver().await.unwrap().persist_id.unwrap());
    }
    // hq's acks all come once it reads.
    let mut ok = 0;
    while ok < SENDS {
        if let Control::Ack(ack) = hq.next_control().await.unwrap() {
            assert!(ack.ok, "{ack:?}");
            ok += 1;
        }
    }
}

#[tokio::test]
async fn a_late_joiner_gets_exactly_the_persistent_events_that_include_it() {
    let cluster = TestCluster::start_with(|c| {
        c.groups.insert("eu".into(), vec!["eu-*".into()]);
    })
    .await;
    let mut hq = cluster.raw("hq").await;
    let live = cluster.raw("eu-1").await;
    let ack = hq.send(&persistent(1, Target::All, "alert")).await.unwrap();
    assert!(ack.ok);
    assert_eq!(ack.persist_id.as_deref(), Some("alert"));
    assert_eq!((ack.delivered, ack.queued), (1, 0));
    let d = live.deliver().await.unwrap();
    assert_eq!(
        d.persist_id.as_deref(),
        Some("alert"),
        "live deliveries carry it"
    );

    assert!(
        hq.send(&persistent(2, Target::Group("eu".into()), "eu-state"))
            .await
            .unwrap()
            .ok
    );
    let ack = hq
        .send(&persistent(3, Target::Server("eu-2".into()), "for-eu-2"))
        .await
        .unwrap();
    assert!(
        ack.ok,
        "a persistent send to an offline server is stored, not not_found"
    );
    assert_eq!((ack.delivered, ack.queued), (0, 1));
    assert!(
        hq.send(&persistent(4, Target::Server("us-1".into()), "for-us-1"))
            .await
            .unwrap()
            .ok
    );
    let auto = Send {
        persist: Some(Persist::Auto),
        ..send(5, Target::Everyone, "hello")
    };
    let ack = hq.send(&auto).await.unwrap();
    let auto_id = ack.persist_id.clone().expect("an auto id in the ack");
    assert!(!auto_id.is_empty());

    let mut eu2 = cluster.raw("eu-2").await;
    let (count, got) = replay_of(&mut eu2).await;
    assert_eq!(count, 4);
    let ids: Vec<u64> = got.iter().map(|d| d.id).collect();
    assert_eq!(
        ids,
        vec![1, 2, 3, 5],
        "stored order, only what includes eu-2"
    );
    assert!(got.iter().all(|d| d.from == "hq" && d.persist_id.is_some()));
    assert_eq!(got[3].persist_id.as_deref(), Some(auto_id.as_str()));
    assert!(eu2.no_delivery_within(Duration::from_millis(100)).await);

    let mut us1 = cluster.raw("us-1").await;
    let (_, got) = replay_of(&mut us1).await;
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![1, 4, 5]);

    // The sender gets "everyone" back too when it reconnects, but not "all".
    drop(hq);
    let mut hq2 = cluster.raw("hq").await;
    let (_, got) = replay_of(&mut hq2).await;
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![5]);
}

#[tokio::test]
async fn replace_and_forget() {
    let cluster = TestCluster::start().await;
    let mut a = cluster.raw("a").await;
    assert!(
        a.send(&persistent(1, Target::All, "notice"))
            .await
            .unwrap()
            .ok
    );
    assert!(
        a.send(&persistent(2, Target::All, "other"))
            .await
            .unwrap()
            .ok
    );
    assert!(
        a.send(&persistent(3, Target::All, "notice"))
            .await
            .unwrap()
            .ok
    );
    let mut b = cluster.raw("b").await;
    let (_, got) = replay_of(&mut b).await;
    assert_eq!(
        got.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![2, 3],
        "3 replaced 1"
    );

    a.send_control(&Control::Forget(Forget {
        id: 50,
        persist_id: "notice".into(),
    }))
    .await
    .unwrap();
    let ack = a.ack(50).await.unwrap();
    assert!(ack.ok, "{ack:?}");
    a.send_control(&Control::Forget(Forget {
        id: 51,
        persist_id: "notice".into(),
    }))
    .await
    .unwrap();
    let ack = a.ack(51).await.unwrap();
    assert_eq!(ack.error.unwrap().code, AckCode::NotFound);

    let mut c = cluster.raw("c").await;
    let (_, got) = replay_of(&mut c).await;
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![2]);
}

#[tokio::test]
async fn ttl_copies_wait_for_offline_servers_and_expire() {
    let cluster = TestCluster::start().await;
    let mut a = cluster.raw("a").await;
    let long = Send {
        ttl_ms: Some(60_000),
        ..send(1, Target::Server("later".into()), "drop")
    };
    let ack = a.send(&long).await.unwrap();
    assert!(ack.ok);
    assert_eq!((ack.delivered, ack.queued), (0, 1));
    let short = Send {
        ttl_ms: Some(1),
        ..send(2, Target::Server("later".into()), "drop")
    };
    assert_eq!(a.send(&short).await.unwrap().queued, 1);
    // Without ttl or persist, offline is not_found.
    let plain = send(3, Target::Server("later".into()), "drop");
    assert_eq!(
        a.send(&plain).await.unwrap().error.unwrap().code,
        AckCode::NotFound
    );
    tokio::time::sleep(Duration::from_millis(20)).await; // let the 1 ms TTL pass
    let mut later = cluster.raw("later").await;
    let (count, got) = replay_of(&mut later).await;
    assert_eq!(count, 1, "the expired copy is never delivered");
    assert_eq!(got[0].id, 1);
    assert_eq!(got[0].persist_id, None);
    // Once its delivery is acknowledged, the copy is gone: a reconnect gets nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(later);
    let mut again = cluster.raw("later").await;
    let (count, _) = replay_of(&mut again).await;
    assert_eq!(count, 0);
    // For a connected recipient, ttl changes nothing.
    let ack = a
        .send(&Send {
            ttl_ms: Some(5),
            ..send(4, Target::Server("later".into()), "x")
        })
        .await
        .unwrap();
    assert_eq!((ack.delivered, ack.queued), (1, 0));
    assert_eq!(again.deliver().await.unwrap().id, 4);
}

#[tokio::test]
async fn offline_queues_are_bounded() {
    let cluster = TestCluster::start_with(|c| {
        c.store.queue_events = 3;
    })
    .await;
    let mut a = cluster.raw("a").await;
    for id in 1..=3 {
        let ack = a
            .send(&Send {
                ttl_ms: Some(60_000),
                ..send(id, Target::Servers(vec!["off".into(), "off2".into()]), "e")
            })
            .await
            .unwrap();
        assert_eq!(ack.queued, 2);
    }
    let ack = a
        .send(&Send {
            ttl_ms: Some(60_000),
            ..send(4, Target::Server("off".into()), "e")
        })
        .await
        .unwrap();
    assert!(!ack.ok);
    assert_eq!(ack.error.unwrap().code, AckCode::Congested);
    assert_eq!(ack.queued, 0);
}

#[tokio::test]
async fn the_store_survives_a_restart() {
    let mut cluster = TestCluster::start().await;
    let mut a = cluster.raw("a").await;
    assert!(
        a.send(&persistent(1, Target::All, "keep"))
            .await
            .unwrap()
            .ok
    );
    let q = Send {
        ttl_ms: Some(60_000),
        ..send(2, Target::Server("b".into()), "q")
    };
    assert_eq!(a.send(&q).await.unwrap().queued, 1);
    drop(a);
    cluster.restart().await;
    let mut b = cluster.raw("b").await;
    let (count, got) = replay_of(&mut b).await;
    assert_eq!(count, 2);
    assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), vec![1, 2]);
}

/// A reload keeps what a running router cannot change: the store's bounds
/// (the store is open) and `max_event_bytes` (every live connection's
/// `welcome` announced it); it takes a restart.
#[tokio::test]
async fn a_reload_keeps_the_store_bounds_and_the_event_size_limit() {
    let mut cluster = TestCluster::start().await;
    let mut hq = cluster.raw("hq").await;
    let announced = hq.welcome.as_ref().unwrap().limits.max_event_bytes;
    cluster.rewrite_config(|c| {
        c.store.max_persistent = 1;
        c.limits.max_event_bytes = 1024;
        c.limits.partial_bytes = 1024;
    });
    cluster.reload();
    // 2 KiB of data: within what the welcome announced.
    let big = Send {
        data: Bytes::from(rmp_serde::to_vec(&"x".repeat(2048)).unwrap()),
        ..persistent(1, Target::All, "one")
    };
    let ack = hq.send(&big).await.unwrap();
    assert!(ack.ok, "{ack:?} (announced {announced})");
    // A second persistent event: the running bound is still the old one.
    let ack = hq.send(&persistent(2, Target::All, "two")).await.unwrap();
    assert!(ack.ok, "{ack:?}");
    let mut late = cluster.raw("late").await;
    assert_eq!(
        late.welcome.as_ref().unwrap().limits.max_event_bytes,
        announced
    );
    // Nor does the bound on unfinished streams fall below it: 4 KiB that
    // arrive in two pieces are taken.
    let bytes = Send {
        data: Bytes::from(rmp_serde::to_vec(&"y".repeat(4096)).unwrap()),
        ..send(3, Target::Server("hq".into()), "e")
    }
    .encode();
    let mut stream = late.conn.open_uni().await.unwrap();
    stream.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&bytes[bytes.len() / 2..]).await.unwrap();
    stream.finish().unwrap();
    let ack = late.ack(3).await.unwrap();
    assert!(ack.ok, "{ack:?}");
}

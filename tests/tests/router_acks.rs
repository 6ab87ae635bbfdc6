//! Every ack code, and hostile event streams: the right code each time, and
//! the connection and the router go on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use icom_protocol::{AckCode, Persist, Send, Target, NIL};
use icom_tests::{RawClient, TestCluster};

fn send(id: u64, to: Target) -> Send {
    icom_tests::send(id, to, "e", Bytes::from_static(NIL))
}

fn code(ack: &icom_protocol::Ack) -> AckCode {
    ack.error.as_ref().expect("an error").code
}

#[tokio::test]
async fn not_found_names_the_missing_server_and_delivers_to_the_rest() {
    let cluster = TestCluster::start().await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    let ack = a
        .send(&send(1, Target::Server("ghost".into())))
        .await
        .unwrap();
    assert!(!ack.ok);
    assert_eq!(code(&ack), AckCode::NotFound);
    assert!(ack.error.unwrap().message.contains("ghost"));

    // Partial delivery: b gets it, ghost is reported.
    let ack = a
        .send(&send(2, Target::Servers(vec!["ghost".into(), "b".into()])))
        .await
        .unwrap();
    assert!(!ack.ok);
    assert_eq!((ack.delivered, ack.queued), (1, 0));
    assert_eq!(code(&ack), AckCode::NotFound);
    assert_eq!(b.deliver().await.unwrap().id, 2);
}

#[tokio::test]
async fn invalid_sends() {
    let mut groups_cluster = TestCluster::start().await;
    let mut a = groups_cluster.raw("a").await;
    let _b = groups_cluster.raw("b").await;
    let base = send(10, Target::Server("b".into()));
    let cases: Vec<(Send, u64)> = vec![
        (
            Send {
                id: 0,
                ..base.clone()
            },
            0,
        ),
        (
            Send {
                id: 11,
                ttl_ms: Some(0),
                ..base.clone()
            },
            11,
        ),
        (
            Send {
                id: 12,
                event: String::new(),
                ..base.clone()
            },
            12,
        ),
        (
            Send {
                id: 13,
                event: "x".repeat(129),
                ..base.clone()
            },
            13,
        ),
        (
            Send {
                id: 14,
                event: "bell\u{7}".into(),
                ..base.clone()
            },
            14,
        ),
        (
            Send {
                id: 15,
                to: Target::Servers(vec![]),
                ..base.clone()
            },
            15,
        ),
        (
            Send {
                id: 16,
                to: Target::Group("nope".into()),
                ..base.clone()
            },
            16,
        ),
        (
            Send {
                id: 17,
                persist: Some(Persist::Id("p\n".into())),
                ..base.clone()
            },
            17,
        ),
        (
            Send {
                id: 18,
                to: Target::Server("no such id!".into()),
                ..base.clone()
            },
            18,
        ),
    ];
    for (s, want_id) in cases {
        let ack = a
            .send(&Send {
                id: s.id,
                ..s.clone()
            })
            .await;
        let ack = match ack {
            Ok(a) => a,
            Err(e) => panic!("{s:?}: {e}"),
        };
        assert_eq!(ack.id, want_id);
        assert!(!ack.ok, "{s:?}");
        assert_eq!(code(&ack), AckCode::Invalid, "{s:?}: {ack:?}");
        assert_eq!((ack.delivered, ack.queued), (0, 0));
    }
    // An unknown group of 500,000 bytes: the ack repeats 64 characters of
    // it, not the whole name (a frame of up to 1 MiB, for each such send).
    let ack = a
        .send(&Send {
            id: 20,
            to: Target::Group("g".repeat(500_000)),
            ..base.clone()
        })
        .await
        .unwrap();
    assert_eq!(code(&ack), AckCode::Invalid);
    let message = &ack.error.as_ref().unwrap().message;
    assert!(message.len() < 200, "{} bytes", message.len());
    assert!(message.contains("(500000 bytes)"), "{message}");
    // The connection goes on.
    assert!(
        a.send(&send(19, Target::Server("b".into())))
            .await
            .unwrap()
            .ok
    );
    groups_cluster.stop().await;
}

#[tokio::test]
async fn malformed_streams_get_malformed_and_the_connection_goes_on() {
    let cluster = TestCluster::start().await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;

    // Garbage: no id readable.
    a.send_event_bytes(b"\xde\xad\xbe\xef garbage")
        .await
        .unwrap();
    let ack = a.ack(0).await.unwrap();
    assert_eq!(code(&ack), AckCode::Malformed);

    // Empty stream.
    a.send_event_bytes(b"").await.unwrap();
    assert_eq!(code(&a.ack(0).await.unwrap()), AckCode::Malformed);

    // Truncated after the id: the ack names it.
    let full = send(31, Target::Server("b".into())).encode();
    a.send_event_bytes(&full[..full.len() - 3]).await.unwrap();
    let ack = a.ack(31).await.unwrap();
    assert_eq!(code(&ack), AckCode::Malformed);

    // A control message on an event stream.
    a.send_event_bytes(
        &rmp_serde::to_vec_named(&serde_json::json!({"ping": {"nonce": 1}})).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code(&a.ack(0).await.unwrap()), AckCode::Malformed);

    // Nothing reached b, and a's next good send goes through.
    assert!(
        b.no_delivery_within(std::time::Duration::from_millis(100))
            .await
    );
    assert!(
        a.send(&send(32, Target::Server("b".into())))
            .await
            .unwrap()
            .ok
    );
    assert_eq!(b.deliver().await.unwrap().id, 32);
}

#[tokio::test]
async fn oversized_events_are_stopped_and_acked_too_large() {
    let cluster = TestCluster::start_with(|c| c.limits.max_event_bytes = 4096).await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    assert_eq!(a.welcome.as_ref().unwrap().limits.max_event_bytes, 4096);

    let big = Send {
        data: Bytes::from(rmp_serde::to_vec(&"x".repeat(100_000)).unwrap()),
        ..send(41, Target::Server("b".into()))
    };
    let bytes = big.encode();
    let mut stream = a.conn.open_uni().await.unwrap();
    // The router stops reading: the write fails or the stream is stopped
    // with TOO_LARGE (6).
    let _ = stream.write_all(&bytes).await;
    let stopped = stream.stopped().await;
    assert_eq!(stopped.unwrap(), Some(6u32.into()));
    let ack = a.ack(41).await.unwrap();
    assert_eq!(code(&ack), AckCode::TooLarge);
    assert_eq!(ack.id, 41, "the id is read from the prefix");

    // Exactly at the limit is fine.
    let mut fits = send(42, Target::Server("b".into()));
    let overhead = fits.encode().len() - 1;
    let n = 4096 - overhead - 3;
    fits.data = Bytes::from(rmp_serde::to_vec(&"y".repeat(n)).unwrap());
    assert_eq!(fits.encode().len(), 4096);
    assert!(a.send(&fits).await.unwrap().ok);
    let d = b.deliver().await.unwrap();
    assert_eq!(d.id, 42);
    assert_eq!(d.data, fits.data, "the stream of several packets, whole");
    assert!(
        b.no_delivery_within(std::time::Duration::from_millis(50))
            .await
    );
}

/// The router holds at most `limits.partial_bytes` of one client's
/// unfinished event streams: the stream that would pass the bound is
/// stopped with CONGESTED (8) and acked `congested`, the others go on, and
/// the bytes they held are free again once they end.
#[tokio::test]
async fn unfinished_streams_past_the_partial_bound_are_stopped_and_acked_congested() {
    let cluster = TestCluster::start_with(|c| {
        c.limits.max_event_bytes = 16_384;
        c.limits.partial_bytes = 65_536;
    })
    .await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    let data = Bytes::from(rmp_serde::to_vec(&"x".repeat(15_000)).unwrap());
    // `n` events of 15 KB, each written but for its last byte.
    let conn = a.conn.clone();
    let begin = |first: u64, n: u64| {
        let (conn, data) = (conn.clone(), data.clone());
        async move {
            let mut begun = Vec::new();
            for id in first..first + n {
                let bytes = Send {
                    data: data.clone(),
                    ..send(id, Target::Server("b".into()))
                }
                .encode();
                let mut s = conn.open_uni().await.unwrap();
                s.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
                begun.push((id, s, bytes[bytes.len() - 1]));
            }
            begun
        }
    };
    // 75 KB unfinished: one stream is refused; the other four (60 KB) fit.
    let begun = begin(1, 5).await;
    let refused = loop {
        if let icom_protocol::Control::Ack(ack) = a.next_control().await.unwrap() {
            break ack;
        }
    };
    assert_eq!(code(&refused), AckCode::Congested, "{refused:?}");
    assert!(
        (1..=5).contains(&refused.id),
        "the id read from the stream: {refused:?}"
    );
    let mut finished = Vec::new();
    for (id, mut s, last) in begun {
        if id == refused.id {
            assert_eq!(s.stopped().await.unwrap(), Some(8u32.into()));
            continue;
        }
        s.write_all(&[last]).await.unwrap();
        s.finish().unwrap();
        finished.push(id);
    }
    for id in &finished {
        let ack = a.ack(*id).await.unwrap();
        assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    }
    assert_eq!(finished.len(), 4);
    for _ in 0..4 {
        assert_eq!(b.deliver().await.unwrap().data, data);
    }
    // What they held is free: four more unfinished at once all fit.
    for (id, mut s, last) in begin(11, 4).await {
        s.write_all(&[last]).await.unwrap();
        s.finish().unwrap();
        let ack = a.ack(id).await.unwrap();
        assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    }
}

#[tokio::test]
async fn a_recipient_that_never_reads_congests_within_the_bound() {
    const QUEUE_EVENTS: u32 = 32;
    const QUEUE_BYTES: u64 = 64 * 1024;
    let cluster = TestCluster::start_with(|c| {
        c.limits.outbound_queue_events = QUEUE_EVENTS;
        c.limits.outbound_queue_bytes = QUEUE_BYTES;
        c.limits.max_event_bytes = 8 * 1024;
    })
    .await;
    let mut a = cluster.raw("a").await;
    // `sink` lets the router open 4 streams and never reads them.
    let _sink = cluster.raw_with_streams("sink", 4).await;

    let payload = Bytes::from(rmp_serde::to_vec(&"z".repeat(1000)).unwrap());
    let mut congested = 0;
    let mut delivered = 0;
    for id in 1..=400u64 {
        let s = Send {
            data: payload.clone(),
            ..send(id, Target::Server("sink".into()))
        };
        let ack = a.send(&s).await.unwrap();
        if ack.ok {
            delivered += 1;
        } else {
            assert_eq!(code(&ack), AckCode::Congested, "{ack:?}");
            congested += 1;
        }
        let stats = cluster.stats();
        assert!(stats.queued_events <= QUEUE_EVENTS as usize, "{stats:?}");
        assert!(stats.queued_bytes <= QUEUE_BYTES as usize, "{stats:?}");
    }
    assert!(congested > 0, "the queue filled: {delivered} delivered");
    assert!(delivered >= QUEUE_EVENTS as usize, "{delivered}");
    // Other traffic is unaffected.
    let b = cluster.raw("b").await;
    assert!(
        a.send(&send(999, Target::Server("b".into())))
            .await
            .unwrap()
            .ok
    );
    assert_eq!(b.deliver().await.unwrap().id, 999);
}

/// A client `name`, welcomed, whose control stream has room for a few
/// dozen acks until it is read.
async fn slow_reader(cluster: &TestCluster, name: &str) -> RawClient {
    cluster.raw_with_window(name, 1024).await
}

/// A client that reads its control stream late: its acks wait in the
/// router (the control queue full, the stream's flow control shut), and
/// every one arrives once it reads.
#[tokio::test]
async fn acks_wait_for_a_client_that_reads_its_control_stream_late() {
    const EVENTS: u64 = 300;
    let cluster = TestCluster::start_with(|c| c.limits.control_queue = 1).await;
    let mut slow = slow_reader(&cluster, "slow").await;
    let b = cluster.raw("b").await;
    for id in 1..=EVENTS {
        slow.send_event_bytes(&send(id, Target::Server("b".into())).encode())
            .await
            .unwrap();
    }
    // Every event is routed meanwhile.
    for _ in 1..=EVENTS {
        b.deliver().await.unwrap();
    }
    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < EVENTS as usize {
        if let icom_protocol::Control::Ack(a) = slow.next_control().await.unwrap() {
            assert!(a.ok, "{a:?}");
            assert!(acked.insert(a.id), "ack {} twice", a.id);
        }
    }
    assert_eq!(acked, (1..=EVENTS).collect());
}

/// A client that sends events and never reads its control stream: once
/// `limits.max_streams` of its streams wait for their ack, the router takes
/// no more of them (the rest wait in QUIC, within the client's stream
/// limit), so the work waiting on that client stays bounded. Once it
/// reads, every event is routed and acked, each once.
#[tokio::test]
async fn a_client_that_never_reads_its_acks_is_held_at_the_stream_bound() {
    const EVENTS: u64 = 5000;
    const MAX_STREAMS: u32 = 1024;
    let cluster = TestCluster::start_with(|c| {
        c.limits.control_queue = 1;
        c.limits.max_streams = MAX_STREAMS;
    })
    .await;
    let mut deaf = slow_reader(&cluster, "deaf").await;
    let b = cluster.raw("b").await;
    let conn = deaf.conn.clone();
    let sender = tokio::spawn(async move {
        for id in 1..=EVENTS {
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(&send(id, Target::Server("b".into())).encode())
                .await
                .unwrap();
            s.finish().unwrap();
        }
    });
    // Routed until the router stops taking streams: no delivery for a
    // second. The bound: the streams held unanswered, plus the acks in
    // the control queue (one batch), in the writer's hand and in the
    // stream's 1 KiB window, a few dozen each.
    let mut routed = 0u64;
    while let Ok(got) = tokio::time::timeout(std::time::Duration::from_secs(1), b.deliver()).await {
        got.unwrap();
        routed += 1;
    }
    eprintln!("{routed} of {EVENTS} events routed while the client read no acks");
    assert!(
        routed > 0 && routed <= u64::from(MAX_STREAMS) + 256,
        "{routed} of {EVENTS} events routed to a client that reads no acks"
    );
    assert!(!sender.is_finished(), "every stream was taken");
    let deliveries = async {
        for _ in routed..EVENTS {
            b.deliver().await.unwrap();
        }
    };
    let acks = async {
        let mut acked = std::collections::BTreeSet::new();
        while acked.len() < EVENTS as usize {
            if let icom_protocol::Control::Ack(a) = deaf.next_control().await.unwrap() {
                assert!(a.ok, "{a:?}");
                assert!(acked.insert(a.id), "ack {} twice", a.id);
            }
        }
        acked
    };
    let ((), acked) = tokio::join!(deliveries, acks);
    assert_eq!(acked, (1..=EVENTS).collect());
    sender.await.unwrap();
}

/// An event stream that is not whole when the router accepts it (the
/// sender pauses mid-event) is read to its end, routed and acked like any
/// other; a persistent one too.
#[tokio::test]
async fn an_event_that_arrives_in_pieces_is_routed_whole() {
    let cluster = TestCluster::start().await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    let data = Bytes::from(rmp_serde::to_vec(&"piece".repeat(300)).unwrap());
    let plain = icom_tests::send(41, Target::Server("b".into()), "e", data.clone());
    let stored = Send {
        id: 42,
        persist: Some(Persist::Auto),
        ..plain.clone()
    };
    for s in [plain, stored] {
        let bytes = s.encode();
        let mut stream = a.conn.open_uni().await.unwrap();
        stream.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
        // The router has accepted the stream and holds half of it.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stream.write_all(&bytes[bytes.len() / 2..]).await.unwrap();
        stream.finish().unwrap();
        let ack = a.ack(s.id).await.unwrap();
        assert!(ack.ok, "{ack:?}");
        assert_eq!(ack.delivered, 1);
        assert_eq!(ack.persist_id.is_some(), s.persist.is_some());
        let got = b.deliver().await.unwrap();
        assert_eq!((got.id, &got.data[..]), (s.id, &data[..]));
    }
}

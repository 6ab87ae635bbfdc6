//! Every control message and every target kind, asserted on what arrived.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use icom_protocol::{Control, Presence, Send, Target, NIL};
use icom_tests::TestCluster;

fn send(id: u64, to: Target, event: &str, data: &[u8]) -> Send {
    icom_tests::send(id, to, event, Bytes::copy_from_slice(data))
}

fn json(v: serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(&v).unwrap()
}

#[tokio::test]
async fn hello_welcome_replayed_ping_presence() {
    let cluster = TestCluster::start_with(|c| {
        c.groups.insert("eu".into(), vec!["eu-*".into()]);
        c.groups.insert("all-1".into(), vec!["*-1".into()]);
    })
    .await;
    let mut a = cluster.raw("eu-1").await;
    let w = a.welcome.clone().unwrap();
    assert_eq!(w.server_id, "eu-1");
    assert_eq!(w.groups, vec!["all-1".to_owned(), "eu".to_owned()]);
    assert!(w.peers.is_empty());
    assert_eq!(w.limits.max_event_bytes, 1 << 20);
    assert!(w.limits.max_streams >= 1024);
    let uuid = &w.session_id;
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(uuid.matches('-').count(), 4, "{uuid}");
    assert_eq!(
        a.next_control().await.unwrap(),
        Control::Replayed(icom_protocol::Replayed { count: 0 })
    );

    let mut b = cluster.raw("us-1").await;
    // eu-1 is in the welcome if its presence batch went out before us-1
    // connected (docs/PROTOCOL.md §3.2), else in the batch that follows.
    if b.welcome.as_ref().unwrap().peers.is_empty() {
        assert_eq!(
            b.control_until(|m| matches!(m, Control::Presence(_)).then(|| m.clone()))
                .await
                .unwrap(),
            Control::Presence(Presence {
                server_id: "eu-1".into(),
                online: true
            })
        );
    } else {
        assert_eq!(b.welcome.as_ref().unwrap().peers, vec!["eu-1".to_owned()]);
    }
    assert!(b.welcome.as_ref().unwrap().groups == vec!["all-1".to_owned()]);
    assert_eq!(
        a.next_control().await.unwrap(),
        Control::Presence(Presence {
            server_id: "us-1".into(),
            online: true
        })
    );

    assert_eq!(a.ping(42).await.unwrap(), 42);

    // b leaves by finishing its control stream: a is told, b is not told
    // about itself.
    b.finish_control();
    let gone = a
        .control_until(|m| match m {
            Control::Presence(p) => Some(p.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        gone,
        Presence {
            server_id: "us-1".into(),
            online: false
        }
    );
    b.expect_closed(icom_protocol::CloseCode::Normal).await;
}

#[tokio::test]
async fn every_target_kind_reaches_exactly_its_recipients() {
    let cluster = TestCluster::start_with(|c| {
        c.groups.insert("eu".into(), vec!["eu-*".into()]);
    })
    .await;
    let ids = ["eu-1", "eu-2", "us-1", "us-2"];
    let mut peers = Vec::new();
    for id in ids {
        peers.push(cluster.raw(id).await);
    }
    let cases: Vec<(Target, Vec<&str>)> = vec![
        (Target::Server("us-1".into()), vec!["us-1"]),
        (Target::Server("eu-1".into()), vec!["eu-1"]),
        (
            Target::Servers(vec!["us-1".into(), "us-2".into(), "us-1".into()]),
            vec!["us-1", "us-2"],
        ),
        (Target::Group("eu".into()), vec!["eu-2"]),
        (Target::All, vec!["eu-2", "us-1", "us-2"]),
        (Target::Everyone, vec!["eu-1", "eu-2", "us-1", "us-2"]),
        (Target::Except(vec!["us-2".into()]), vec!["eu-2", "us-1"]),
        (Target::Except(vec![]), vec!["eu-2", "us-1", "us-2"]),
    ];
    let payload =
        json(serde_json::json!({"coords": [1234.5, 5678.9, 0.0], "name": "drop \"A\" ✓"}));
    for (n, (target, want)) in cases.into_iter().enumerate() {
        let id = 1000 + n as u64;
        let ack = peers[0]
            .send(&send(id, target.clone(), "supply_drop", &payload))
            .await
            .unwrap();
        assert!(ack.ok, "{target:?}: {ack:?}");
        assert_eq!(ack.delivered as usize, want.len(), "{target:?}");
        assert_eq!(ack.queued, 0);
        for (peer, name) in peers.iter().zip(ids) {
            if want.contains(&name) {
                let d = peer.deliver().await.unwrap();
                assert_eq!(d.from, "eu-1", "stamped by the router");
                assert_eq!(d.id, id);
                assert_eq!(d.event, "supply_drop");
                assert_eq!(&d.data[..], &payload[..], "payload bytes untouched");
                assert!(d.sent_ms > 1_700_000_000_000);
                assert_eq!(d.persist_id, None);
            }
        }
        for (peer, name) in peers.iter().zip(ids) {
            if !want.contains(&name) {
                assert!(
                    peer.no_delivery_within(std::time::Duration::from_millis(50))
                        .await,
                    "{name} got {target:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn empty_group_and_lonely_all_are_ok_with_nothing() {
    let cluster = TestCluster::start_with(|c| {
        c.groups.insert("nobody".into(), vec!["zz-*".into()]);
    })
    .await;
    let mut a = cluster.raw("a").await;
    for (i, t) in [
        Target::Group("nobody".into()),
        Target::All,
        Target::Except(vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let ack = a.send(&send(i as u64 + 1, t, "e", NIL)).await.unwrap();
        assert!(ack.ok && ack.delivered == 0 && ack.queued == 0, "{ack:?}");
        assert!(ack.error.is_none());
    }
}

#[tokio::test]
async fn reply_to_is_carried_and_data_defaults_to_nil() {
    let cluster = TestCluster::start().await;
    let mut a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    let mut s = send(7, Target::Server("b".into()), "answer", NIL);
    s.reply_to = Some(3);
    assert!(a.send(&s).await.unwrap().ok);
    let d = b.deliver().await.unwrap();
    assert_eq!(d.reply_to, Some(3));
    assert_eq!(&d.data[..], NIL);
}

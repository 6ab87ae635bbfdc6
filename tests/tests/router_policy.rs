//! The policy on a live router: `forbidden` acks naming the rule, persist
//! permission, forget permission, and a reload that changes the verdict for
//! the next send without dropping connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use icom_protocol::{AckCode, Control, Forget, Persist, Send, Target, NIL};
use icom_server::policy::{Mode, RuleFile};
use icom_tests::TestCluster;

fn send(id: u64, to: &str, event: &str) -> Send {
    icom_tests::send(
        id,
        Target::Server(to.into()),
        event,
        Bytes::from_static(NIL),
    )
}

#[tokio::test]
async fn whitelist_verdicts_and_a_live_reload() {
    let mut cluster = TestCluster::start_with(|c| {
        c.groups.insert("eu".into(), vec!["eu-*".into()]);
        c.policy.mode = Mode::Whitelist;
        c.policy.trusted = vec!["admin".into()];
        c.policy.rule = vec![RuleFile {
            name: Some("supply".into()),
            senders: vec!["group:eu".into()],
            events: vec!["supply_*".into()],
            targets: vec!["group:eu".into()],
            persist: Some(false),
        }];
    })
    .await;
    let mut eu1 = cluster.raw("eu-1").await;
    let eu2 = cluster.raw("eu-2").await;
    let mut us1 = cluster.raw("us-1").await;
    let mut admin = cluster.raw("admin").await;

    assert!(eu1.send(&send(1, "eu-2", "supply_drop")).await.unwrap().ok);
    assert_eq!(eu2.deliver().await.unwrap().id, 1);

    let denied = eu1.send(&send(2, "us-1", "supply_drop")).await.unwrap();
    let e = denied.error.unwrap();
    assert_eq!(e.code, AckCode::Forbidden);
    assert!(e.message.contains("no policy rule allows"), "{}", e.message);
    assert_eq!(denied.delivered, 0);

    let denied = us1.send(&send(3, "eu-2", "supply_drop")).await.unwrap();
    assert_eq!(denied.error.unwrap().code, AckCode::Forbidden);

    let p = Send {
        persist: Some(Persist::Id("x".into())),
        ..send(4, "eu-2", "supply_drop")
    };
    let denied = eu1.send(&p).await.unwrap();
    let e = denied.error.unwrap();
    assert_eq!(e.code, AckCode::Forbidden);
    assert!(
        e.message.contains("policy supply does not allow"),
        "{}",
        e.message
    );

    assert!(
        admin
            .send(&Send {
                persist: Some(Persist::Auto),
                ..send(5, "us-1", "anything")
            })
            .await
            .unwrap()
            .ok
    );
    // Forget: only who may persist.
    eu1.send_control(&Control::Forget(Forget {
        id: 6,
        persist_id: "x".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        eu1.ack(6).await.unwrap().error.unwrap().code,
        AckCode::Forbidden
    );
    admin
        .send_control(&Control::Forget(Forget {
            id: 7,
            persist_id: "x".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        admin.ack(7).await.unwrap().error.unwrap().code,
        AckCode::NotFound
    );

    // Reload: us-1 may now send anything to eu members.
    cluster.rewrite_config(|c| {
        c.policy.rule.push(RuleFile {
            senders: vec!["us-*".into()],
            targets: vec!["group:eu".into()],
            ..RuleFile::default()
        });
    });
    cluster.reload();
    let ack = us1.send(&send(8, "eu-2", "supply_drop")).await.unwrap();
    assert!(ack.ok, "{ack:?}");
    assert_eq!(eu2.deliver().await.unwrap().id, 8);

    // Closed: nothing is routed, but the trusted still may; no one dropped.
    cluster.rewrite_config(|c| c.policy.mode = Mode::Closed);
    cluster.reload();
    let ack = eu1.send(&send(9, "eu-2", "supply_drop")).await.unwrap();
    assert!(ack.error.unwrap().message.contains("closed"));
    assert!(admin.send(&send(10, "eu-2", "x")).await.unwrap().ok);
    assert_eq!(eu2.deliver().await.unwrap().id, 10);
    assert_eq!(cluster.stats().connections, 4);
}

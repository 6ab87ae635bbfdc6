//! Presence in batches (docs/PROTOCOL.md §3.2): changes gather for
//! `limits.presence_batch_ms` and reach every client together, in the order
//! they happened; a welcome lists what the others have been told, so that
//! every client's view, welcome plus presence, goes through the same
//! states; and a mass join settles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use icom_protocol::{Control, Presence};
use icom_tests::{metric, with_metrics, RawClient, TestCluster, WAIT};

fn presence(id: &str, online: bool) -> Control {
    Control::Presence(Presence {
        server_id: id.into(),
        online,
    })
}

/// The next presence message, skipping `replayed`.
async fn next_presence(c: &mut RawClient) -> Control {
    loop {
        match c.next_control().await.unwrap() {
            Control::Replayed(_) => continue,
            other => return other,
        }
    }
}

/// Whether a presence message comes within `within` (`replayed` skipped).
async fn presence_within(c: &mut RawClient, within: Duration) -> Option<Control> {
    tokio::time::timeout(within, next_presence(c)).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_one_window_go_out_together_in_order() {
    // The longest window: everything below happens inside the first one.
    let cluster = TestCluster::start_with(|c| {
        c.limits.presence_batch_ms = 10_000;
        with_metrics(c);
    })
    .await;
    let mut a = cluster.raw("a").await;
    let mut b = cluster.raw("b").await;
    let mut c = cluster.raw("c").await;
    b.finish_control();
    b.expect_closed(icom_protocol::CloseCode::Normal).await;
    let mut d = cluster.raw("d").await;
    // Nobody has been told of anybody yet: every welcome is empty, even
    // though a, c and d are connected.
    for client in [&a, &c, &d] {
        assert_eq!(client.welcome.as_ref().unwrap().peers, Vec::<String>::new());
    }
    assert_eq!(cluster.stats().connections, 3);

    // One batch, every change in order, none about the client itself.
    let heard = |of: &[(&str, bool)]| {
        of.iter()
            .map(|(id, on)| presence(id, *on))
            .collect::<Vec<_>>()
    };
    for (client, expected) in [
        (
            &mut a,
            heard(&[("b", true), ("c", true), ("b", false), ("d", true)]),
        ),
        (
            &mut c,
            heard(&[("a", true), ("b", true), ("b", false), ("d", true)]),
        ),
        (
            &mut d,
            heard(&[("a", true), ("b", true), ("c", true), ("b", false)]),
        ),
    ] {
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            got.push(next_presence(client).await);
        }
        assert_eq!(got, expected);
    }
    let (_, body) = cluster.http_get("/metrics").await;
    assert_eq!(metric(&body, "icom_presence_batches_total"), Some(1.0));
    assert_eq!(metric(&body, "icom_presence_messages_total"), Some(12.0));
    assert_eq!(
        presence_within(&mut a, Duration::from_millis(500)).await,
        None,
        "one batch, nothing after it"
    );

    // A server that joins now is welcomed with what the others were told.
    let e = cluster.raw("e").await;
    let told: BTreeSet<String> = e.welcome.as_ref().unwrap().peers.iter().cloned().collect();
    assert_eq!(told, ["a", "c", "d"].map(String::from).into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_join_settles_with_every_view_complete() {
    const N: usize = 150;
    let cluster = Arc::new(TestCluster::start().await);
    let joins: Vec<_> = (0..N)
        .map(|i| {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.raw(&format!("s{i}")).await })
        })
        .collect();
    let mut clients = Vec::new();
    for j in joins {
        clients.push(j.await.unwrap());
    }
    let everyone: BTreeSet<String> = (0..N).map(|i| format!("s{i}")).collect();
    let views = clients.into_iter().map(|mut c| {
        let everyone = everyone.clone();
        tokio::spawn(async move {
            let me = c.welcome.as_ref().unwrap().server_id.clone();
            let mut view: BTreeSet<String> =
                c.welcome.as_ref().unwrap().peers.iter().cloned().collect();
            let mut others = everyone.clone();
            others.remove(&me);
            let settled = tokio::time::timeout(WAIT * 3, async {
                while view != others {
                    match next_presence(&mut c).await {
                        Control::Presence(p) if p.online => assert!(view.insert(p.server_id)),
                        Control::Presence(p) => assert!(view.remove(&p.server_id)),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
            .await;
            assert!(
                settled.is_ok(),
                "{me}: {} of {} known",
                view.len(),
                others.len()
            );
            c
        })
    });
    let mut done = Vec::new();
    for v in views {
        done.push(v.await.unwrap());
    }
    assert_eq!(done.len(), N);
}

//! Who is connected, and an identity that must not be taken over
//! (docs/PROTOCOL.md §1.4, §3.1, §3.2): `welcome.features`, `who` answered with
//! the table as it is now, and `hello.replace: false` refused with
//! `IN_USE` while the connection it would have replaced goes on; a client
//! that asks `who` and does not read holds at most four pages (§9).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{CloseCode, Control, Hello, Roster, Target, Who, NIL};
use icom_tests::{client_crypto, send, RawClient, TestCluster};

/// Sends `who` and returns the `roster` that answers it.
async fn who(c: &mut RawClient, id: u64, after: Option<&str>) -> Roster {
    c.send_control(&Control::Who(Who {
        id,
        after: after.map(str::to_owned),
    }))
    .await
    .unwrap();
    c.control_until(|m| match m {
        Control::Roster(r) if r.id == id => Some(r.clone()),
        _ => None,
    })
    .await
    .unwrap()
}

/// The next `presence` `c` reads, as `(server_id, online)`.
async fn next_presence(c: &mut RawClient) -> (String, bool) {
    c.control_until(|m| match m {
        Control::Presence(p) => Some((p.server_id.clone(), p.online)),
        _ => None,
    })
    .await
    .unwrap()
}

fn ids(r: &Roster) -> Vec<&str> {
    r.servers.iter().map(|e| e.server_id.as_str()).collect()
}

#[tokio::test]
async fn who_lists_every_other_server_connected_now_in_order() {
    let cluster = TestCluster::start().await;
    let mut asker = cluster.raw("m-asker").await;
    let welcome = asker.welcome.clone().unwrap();
    assert!(welcome.has("who") && welcome.has("replace"), "{welcome:?}");
    assert!(who(&mut asker, 1, None).await.servers.is_empty());

    let _c = cluster.raw("c").await;
    let _a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    // The table as it is now: no wait for a presence batch.
    let r = who(&mut asker, 2, None).await;
    assert_eq!((ids(&r), r.more), (vec!["a", "b", "c"], false));
    assert!(
        r.servers.iter().all(|e| e.router.is_none()),
        "a router on its own names no router: {r:?}"
    );
    let r = who(&mut asker, 3, Some("a")).await;
    assert_eq!(ids(&r), ["b", "c"]);

    // One that left is gone from the next answer.
    b.conn.close(0u32.into(), b"bye");
    let gone = icom_tests::eventually(|| cluster.stats().connections == 3).await;
    assert!(gone, "the router saw b go");
    let r = who(&mut asker, 4, None).await;
    assert_eq!(ids(&r), ["a", "c"]);
}

#[tokio::test]
async fn a_client_that_asks_not_to_replace_is_refused_in_use_and_the_other_stays() {
    let cluster = TestCluster::start().await;
    let mut watcher = cluster.raw("watcher").await;
    let x = cluster.raw("x").await;
    watcher.view_becomes(&["x"]).await;

    let not_replacing = Hello {
        replace: Some(false),
        ..Hello::new("icom-tests/careful")
    };
    let pki = cluster.pki();
    let mut careful = RawClient::connect(cluster.addr(), pki, &pki.client("x"))
        .await
        .unwrap();
    assert!(careful.hello_with(not_replacing.clone()).await.is_err());
    careful.expect_closed(CloseCode::InUse).await;

    // The connection it would have replaced goes on, and nobody saw x go.
    let ack = watcher
        .send(&send(
            1,
            Target::Server("x".into()),
            "e",
            Bytes::from_static(NIL),
        ))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(x.deliver().await.unwrap().id, 1);
    // y joins after the refusal: the next presence the watcher hears is
    // y's, so none came for x before it.
    let _y = cluster.raw("y").await;
    assert_eq!(next_presence(&mut watcher).await, ("y".to_owned(), true));

    // Once x has left, the same hello is welcomed.
    x.conn.close(0u32.into(), b"bye");
    assert_eq!(next_presence(&mut watcher).await, ("x".to_owned(), false));
    let mut careful = RawClient::connect(cluster.addr(), pki, &pki.client("x"))
        .await
        .unwrap();
    careful.hello_with(not_replacing).await.unwrap();
    assert_eq!(next_presence(&mut watcher).await, ("x".to_owned(), true));

    // `replace: true`, like no field, takes over as ever.
    let mut bold = RawClient::connect(cluster.addr(), pki, &pki.client("x"))
        .await
        .unwrap();
    bold.hello_with(Hello {
        replace: Some(true),
        ..Hello::new("icom-tests/bold")
    })
    .await
    .unwrap();
    careful.expect_closed(CloseCode::Replaced).await;
}

#[tokio::test]
async fn a_client_asking_who_without_reading_is_held_back_four_pages_ahead() {
    let cluster = TestCluster::start().await;
    let mut others = Vec::new();
    for i in 0..20 {
        others.push(cluster.raw(&format!("server_{i:02}")).await);
    }
    // A small receive window: the router's pages stop at the client's QUIC
    // stack, unacknowledged, once a few are unread.
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(2048u32.into())
        .receive_window((64u32 * 1024).into());
    let pki = cluster.pki();
    let crypto = client_crypto(pki, Some(&pki.client("asker")));
    let mut c = RawClient::connect_transport(cluster.addr(), crypto, transport)
        .await
        .unwrap();
    c.hello().await.unwrap();
    // 200 `who`, then the end of the control stream (goodbye), unread.
    for id in 1..=200 {
        c.send_control(&Control::Who(Who { id, after: None }))
            .await
            .unwrap();
    }
    c.finish_control();
    // The router stopped reading once four pages waited: it has not come
    // to the goodbye (which it answers by closing the connection).
    assert!(
        tokio::time::timeout(Duration::from_secs(1), c.closed())
            .await
            .is_err(),
        "the router read the whole control stream with pages unread"
    );
    // Reading: the pages come in order, each whole, and the router goes on
    // to the goodbye. That close cuts what was still on its way: the four
    // pages held and what the client's 2 KB window had taken in unread
    // (about six pages of 20 servers).
    let mut got = 0;
    while let Ok(page) = c
        .control_until(|m| match m {
            Control::Roster(r) => Some((r.id, r.servers.len(), r.more)),
            _ => None,
        })
        .await
    {
        got += 1;
        assert_eq!(page, (got, 20, false));
    }
    assert!(got >= 180, "{got} pages before the close");
    c.expect_closed(CloseCode::Normal).await;
    drop(others);
}

//! Who else is connected, through the client library: `Client::peers` (a
//! snapshot), `Client::presence` (the changes), consistent with `welcome`
//! through a connect, a peer leaving, a peer replaced and the client's own
//! reconnect (after which only the difference is reported); and
//! `Client::roster`, the router's table now.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use client_support::{config, connect, connect_with, connected, wait_state};
use icom_client::{Client, ConnectError, Presence, Presences};
use icom_protocol::CloseCode;
use icom_tests::{Impairment, ImpairmentProxy, TestCluster, WAIT};

fn change(id: &str, online: bool) -> Presence {
    Presence {
        server_id: id.into(),
        online,
    }
}

/// The next change, within the bound.
async fn next(p: &mut Presences) -> Presence {
    tokio::time::timeout(WAIT, p.next())
        .await
        .expect("a presence change within the bound")
        .expect("the presence stream is open")
}

/// Reads changes until the stream's view is `want` (a welcome may not hold
/// a server whose join is still in the router's presence batch).
async fn view_becomes(p: &mut Presences, want: &[&str]) {
    while p.peers() != want {
        next(p).await;
    }
}

#[tokio::test]
async fn peers_and_presence_follow_connects_and_leaves() {
    let cluster = TestCluster::start().await;
    let _a = cluster.raw("a").await;
    let (b, _eb) = connect(&cluster, "b").await;
    let mut presence = b.presence();
    view_becomes(&mut presence, &["a"]).await;
    assert_eq!(b.peers(), ["a"]);

    let c = cluster.raw("c").await;
    assert_eq!(next(&mut presence).await, change("c", true));
    assert_eq!(b.peers(), ["a", "c"]);
    c.conn.close(0u32.into(), b"bye");
    assert_eq!(next(&mut presence).await, change("c", false));
    assert_eq!(b.peers(), ["a"]);
    assert_eq!(presence.peers(), b.peers());

    // A second stream starts from the set as it is, not from the start.
    let mut later = b.presence();
    assert_eq!(later.peers(), ["a"]);
    let _d = cluster.raw("d").await;
    assert_eq!(next(&mut later).await, change("d", true));
    assert_eq!(next(&mut presence).await, change("d", true));

    // The router's own answer: everyone but b, in order.
    let roster = b.roster().await.unwrap();
    let ids: Vec<&str> = roster.iter().map(|e| e.server_id.as_str()).collect();
    assert_eq!(ids, ["a", "d"]);
    assert!(roster.iter().all(|e| e.router.is_none()));

    // Closing the client ends the streams.
    b.close().await;
    assert!(tokio::time::timeout(WAIT, presence.next())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_peer_replaced_is_no_change() {
    let cluster = TestCluster::start().await;
    let (b, _eb) = connect(&cluster, "b").await;
    let mut presence = b.presence();
    let x = cluster.raw("x").await;
    assert_eq!(next(&mut presence).await, change("x", true));

    let _x2 = cluster.raw("x").await;
    x.expect_closed(CloseCode::Replaced).await;
    // y joins after the replacement: the next change is y's, so none came
    // for x.
    let _y = cluster.raw("y").await;
    assert_eq!(next(&mut presence).await, change("y", true));
    assert_eq!(b.peers(), ["x", "y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_own_reconnect_the_client_reports_the_difference_only() {
    let cluster = TestCluster::start().await;
    let _a = cluster.raw("a").await;
    let c = cluster.raw("c").await;
    // b reaches the router through a link this test can cut; it gives a
    // silent router up after 1 s.
    let proxy = ImpairmentProxy::start(cluster.addr(), Impairment::none(), Impairment::none())
        .await
        .unwrap();
    let mut cfg = config(&cluster, "b");
    cfg.router = proxy.addr().to_string();
    cfg.keep_alive_ms = 200;
    cfg.idle_timeout_ms = 1000;
    let (b, _eb) = connect_with(cfg).await;
    let mut presence = b.presence();
    view_becomes(&mut presence, &["a", "c"]).await;
    let mut states = b.states();

    proxy.pause();
    wait_state(&mut states, |s| !connected(s)).await;
    // While it is disconnected, the set is the last one it knew.
    assert_eq!(b.peers(), ["a", "c"]);
    // Meanwhile c leaves and d comes; a stays.
    c.conn.close(0u32.into(), b"bye");
    let _d = cluster.raw("d").await;
    proxy.resume();
    wait_state(&mut states, connected).await;

    // Exactly what changed, in whichever order the welcome and the presence
    // batches bring it, and nothing about a.
    let mut got = vec![next(&mut presence).await, next(&mut presence).await];
    got.sort_by(|x, y| x.server_id.cmp(&y.server_id));
    assert_eq!(got, [change("c", false), change("d", true)]);
    let _e = cluster.raw("e").await;
    assert_eq!(next(&mut presence).await, change("e", true));
    assert_eq!(b.peers(), ["a", "d", "e"]);
    assert_eq!(presence.peers(), b.peers());
}

#[tokio::test]
async fn a_client_that_must_not_replace_is_refused_and_the_other_goes_on() {
    let cluster = TestCluster::start().await;
    let (watcher, _ew) = connect(&cluster, "watcher").await;
    let mut presence = watcher.presence();
    let (x, mut ex) = connect(&cluster, "x").await;
    assert_eq!(next(&mut presence).await, change("x", true));

    let mut careful = config(&cluster, "x");
    careful.replace = false;
    let refused = tokio::time::timeout(WAIT, Client::connect(careful.clone()))
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(ConnectError::InUse)),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(refused.unwrap_err().is_refused());
    // x is still the one connected.
    let ack = watcher.send("x", "still_there", 1).await.unwrap();
    assert_eq!(ack.delivered, 1);
    let e = tokio::time::timeout(WAIT, ex.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.event, "still_there");
    assert!(x.is_connected());

    // Once x has gone, it connects.
    x.close().await;
    assert_eq!(next(&mut presence).await, change("x", false));
    let (again, _) = connect_with(careful).await;
    assert_eq!(next(&mut presence).await, change("x", true));
    again.close().await;
}

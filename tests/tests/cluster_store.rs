//! Persistent events and offline queues in cluster mode (docs/PROTOCOL.md
//! §12.6): stored in JetStream (a 3-node NATS cluster, 3 replicas), so a
//! sender on one router and a server that joins later on another get what
//! one router gives: the late joiner's replay, replace and forget, copies
//! queued for an offline server and deleted once delivered, expiry, the
//! bounds, cluster-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{AckCode, Control, Deliver, Forget, Send, Target};
use icom_tests::{
    eventually, joiners_get_every_acked_send, persistent, workspace_bin, RawClient, RawError,
    RouterFiles, Routers, TestCluster,
};

fn send(id: u64, to: Target, event: &str) -> Send {
    let data = Bytes::from(rmp_serde::to_vec(&format!("payload {id}")).unwrap());
    icom_tests::send(id, to, event, data)
}

fn ttl(id: u64, to: &str, ms: u32) -> Send {
    Send {
        ttl_ms: Some(ms),
        ..send(id, Target::Server(to.into()), "later")
    }
}

/// The ids of a replay, in the order they came.
async fn replay_ids(c: &mut RawClient) -> Vec<(String, u64)> {
    c.replayed()
        .await
        .unwrap()
        .into_iter()
        .map(|d: Deliver| (d.from, d.id))
        .collect()
}

fn ids(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(f, i)| ((*f).to_owned(), *i)).collect()
}

/// Servers that connect while persistent and ttl sends are being stored
/// get every one of them, on the sender's router or another: in a cluster
/// the replay follows the shared store (one router's replay waits for the
/// sends under way instead, `router_persist`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_connect_while_sends_are_stored_get_every_one() {
    let rs = Routers::start(1, 2).await;
    for joiners_at in [0, 1] {
        joiners_get_every_acked_send(
            rs.router(0),
            rs.router(joiners_at),
            |id, from, senders, _| {
                persistent(
                    id,
                    Target::Except(senders.to_vec()),
                    &format!("{from}-{id}"),
                )
            },
        )
        .await;
    }
    let rs = Routers::start(1, 2).await;
    joiners_get_every_acked_send(rs.router(0), rs.router(0), |id, _, _, joiners| Send {
        ttl_ms: Some(60_000),
        ..send(id, Target::Servers(joiners.to_vec()), "e")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_on_another_router_gets_the_persistent_events_in_stored_order() {
    let rs = Routers::start_with(3, 2, |_, c| {
        c.groups.insert("eu".into(), vec!["eu-*".into()]);
    })
    .await;
    let mut hq = rs.router(0).raw("hq").await;
    assert_eq!(replay_ids(&mut hq).await, vec![]);
    for (s, pid) in [
        (persistent(1, Target::All, "alert"), "alert"),
        (
            persistent(2, Target::Group("eu".into()), "eu-state"),
            "eu-state",
        ),
        (
            persistent(3, Target::Server("eu-2".into()), "for-eu-2"),
            "for-eu-2",
        ),
        (persistent(4, Target::All, "gone"), "gone"),
        // Replaces "alert": stored last now.
        (persistent(5, Target::All, "alert"), "alert"),
    ] {
        let ack = hq.send(&s).await.unwrap();
        assert!(ack.ok, "{ack:?}");
        assert_eq!(ack.persist_id.as_deref(), Some(pid));
    }
    // The one for eu-2 by name: owed to it, counted as queued.
    // Forget "gone" from the other router.
    let mut other = rs.router(1).raw("other").await;
    let _ = replay_ids(&mut other).await;
    other
        .send_control(&Control::Forget(Forget {
            id: 9,
            persist_id: "gone".into(),
        }))
        .await
        .unwrap();
    let ack = other.ack(9).await.unwrap();
    assert!(ack.ok, "{ack:?}");
    other
        .send_control(&Control::Forget(Forget {
            id: 10,
            persist_id: "never-stored".into(),
        }))
        .await
        .unwrap();
    let ack = other.ack(10).await.unwrap();
    assert_eq!(ack.error.unwrap().code, AckCode::NotFound);

    // A late joiner on router 1: stored order, replaced moved last, the
    // forgotten one gone.
    let mut eu2 = rs.router(1).raw("eu-2").await;
    assert_eq!(
        replay_ids(&mut eu2).await,
        ids(&[("hq", 2), ("hq", 3), ("hq", 5)])
    );
    // On router 0, one that is not in eu gets only the broadcast.
    let mut us1 = rs.router(0).raw("us-1").await;
    assert_eq!(replay_ids(&mut us1).await, ids(&[("hq", 5)]));
    // The sender, back on the other router, is not replayed its own
    // broadcast.
    drop(hq);
    let mut hq = rs.router(1).raw("hq").await;
    assert_eq!(replay_ids(&mut hq).await, vec![]);
    // Both routers count the same store.
    for i in 0..2 {
        assert!(
            eventually(|| rs.router(i).stats().stored_persistent == 3).await,
            "router {i}: {:?}",
            rs.router(i).stats()
        );
    }
}

/// A server that joins a router cut off from NATS is replayed what that
/// router last saw of the store. A persistent event stored elsewhere
/// meanwhile reaches it once the router is back and has read the stream
/// again, however long after the join that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_taken_while_the_router_is_cut_off_gets_what_it_missed_later() {
    // Router 1 knows only NATS node 2, and gives a replay up to 1 s.
    let mut rs = Routers::start_with(3, 2, |i, c| {
        if let Some(cl) = c.cluster.as_mut().filter(|_| i == 1) {
            cl.urls = vec![cl.urls[2].clone()];
            cl.store_timeout_ms = 1000;
        }
    })
    .await;
    let mut hq = rs.router(0).raw("hq").await;
    assert_eq!(replay_ids(&mut hq).await, vec![]);
    rs.nats.kill(2);
    assert!(eventually(|| !rs.router(1).stats().cluster_reachable).await);
    // Stored through router 0: the stream keeps a majority of its nodes
    // (a send may find it electing a leader; then it goes again).
    let mut id = 0;
    loop {
        id += 1;
        let ack = hq
            .send(&persistent(id, Target::All, "alert"))
            .await
            .unwrap();
        if ack.ok {
            break;
        }
        assert!(id < 100, "not stored: {ack:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // x joins router 1, whose view of the store cannot have it.
    let mut x = rs.router(1).raw("x").await;
    assert_eq!(replay_ids(&mut x).await, vec![]);
    // Longer than a join is followed otherwise (10 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    rs.nats.restart(2).await;
    let got = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            match x.deliver().await {
                Ok(d) => return d,
                Err(RawError::Timeout(_)) => {}
                Err(e) => panic!("x's connection: {e}"),
            }
        }
    })
    .await
    .expect("the event stored meanwhile, once router 1 is back");
    assert_eq!(got.from, "hq");
    assert_eq!(got.persist_id.as_deref(), Some("alert"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_queued_on_one_router_is_delivered_on_another_once() {
    let rs = Routers::start(3, 2).await;
    let mut a = rs.router(0).raw("a").await;
    let _ = replay_ids(&mut a).await;
    // Named and offline: a ttl send queues a copy, a persistent one is
    // owed to it; a plain send is not_found.
    let ack = a.send(&ttl(1, "off", 60_000)).await.unwrap();
    assert!(ack.ok, "{ack:?}");
    assert_eq!((ack.delivered, ack.queued), (0, 1));
    let ack = a
        .send(&persistent(2, Target::Server("off".into()), "p"))
        .await
        .unwrap();
    assert_eq!((ack.ok, ack.delivered, ack.queued), (true, 0, 1));
    let ack = a
        .send(&send(3, Target::Server("off".into()), "now"))
        .await
        .unwrap();
    assert_eq!(ack.error.unwrap().code, AckCode::NotFound);

    let mut off = rs.router(1).raw("off").await;
    assert_eq!(replay_ids(&mut off).await, ids(&[("a", 1), ("a", 2)]));
    // Once the copy's delivery was acknowledged, it is deleted
    // cluster-wide: back on router 0, only the persistent event.
    assert!(
        eventually(|| (0..2).all(|i| rs.router(i).stats().stored_queued == 0)).await,
        "the delivered copy is still stored"
    );
    drop(off);
    let mut off = rs.router(0).raw("off").await;
    assert_eq!(replay_ids(&mut off).await, ids(&[("a", 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_copy_is_not_delivered() {
    let rs = Routers::start(3, 2).await;
    let mut a = rs.router(0).raw("a").await;
    let _ = replay_ids(&mut a).await;
    let ack = a.send(&ttl(1, "off", 500)).await.unwrap();
    assert_eq!(ack.queued, 1, "{ack:?}");
    let ack = a.send(&ttl(2, "off", 600_000)).await.unwrap();
    assert_eq!(ack.queued, 1, "{ack:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut off = rs.router(1).raw("off").await;
    assert_eq!(replay_ids(&mut off).await, ids(&[("a", 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_bound_holds_across_routers() {
    let rs = Routers::start_with(3, 2, |_, c| c.store.queue_events = 2).await;
    let mut a = rs.router(0).raw("a").await;
    let mut b = rs.router(1).raw("b").await;
    let _ = replay_ids(&mut a).await;
    let _ = replay_ids(&mut b).await;
    for id in 1..=2 {
        assert_eq!(a.send(&ttl(id, "off", 60_000)).await.unwrap().queued, 1);
    }
    // A third from router 0 hits the bound at once (its own writes are
    // booked); from router 1 once it has read router 0's.
    let ack = a.send(&ttl(3, "off", 60_000)).await.unwrap();
    assert_eq!(ack.error.unwrap().code, AckCode::Congested);
    assert!(eventually(|| rs.router(1).stats().stored_queued == 2).await);
    let ack = b.send(&ttl(4, "off", 60_000)).await.unwrap();
    assert!(!ack.ok);
    let e = ack.error.unwrap();
    assert_eq!(e.code, AckCode::Congested);
    assert!(
        e.message.contains("offline queue of 'off'"),
        "{}",
        e.message
    );
    let mut off = rs.router(1).raw("off").await;
    assert_eq!(replay_ids(&mut off).await, ids(&[("a", 1), ("a", 2)]));
}

/// The import command's section: `[cluster]` of a router named `name`.
fn cluster_toml(rs: &Routers, name: &str) -> String {
    let mut table = toml::map::Map::new();
    table.insert(
        "cluster".into(),
        toml::Value::try_from(icom_tests::cluster_section(&rs.nats, name)).unwrap(),
    );
    toml::to_string(&table).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_routers_store_imported_is_replayed_through_the_cluster() {
    // One router on its own, with a JIP queue and an offline queue.
    let mut single = TestCluster::start().await;
    let mut hq = single.raw("hq").await;
    let _ = replay_ids(&mut hq).await;
    for s in [
        persistent(1, Target::All, "alert"),
        persistent(2, Target::Server("late".into()), "for-late"),
        ttl(3, "off", 600_000),
        ttl(4, "late", 600_000),
    ] {
        let ack = hq.send(&s).await.unwrap();
        assert!(ack.ok, "{ack:?}");
    }
    drop(hq);
    single.stop().await;
    let data_dir = single.dir().join("data");

    // A cluster; "off" is connected when the import runs: its copy
    // reaches it from the store, live.
    let rs = Routers::start(3, 2).await;
    let mut off = rs.router(1).raw("off").await;
    assert_eq!(replay_ids(&mut off).await, vec![]);
    let files = RouterFiles::with_pki(rs.router(0).shared_pki(), &cluster_toml(&rs, "importer"));
    let bin = workspace_bin("icom-server", "icom-server");
    let import = |extra: &[&str]| {
        files
            .command(&bin)
            .arg("--import-store")
            .arg(&data_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = import(&[]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("imported 2 persistent events and 2 queued copies"),
        "{said}"
    );
    // Its copy, and perhaps the broadcast (a server that joined in the
    // last seconds gets new persistent events from the store too, since a
    // router that did not know of it yet could not send them), once each.
    let mut got = vec![off.deliver().await.unwrap().id];
    while let Ok(d) = tokio::time::timeout(Duration::from_millis(500), off.deliver()).await {
        got.push(d.unwrap().id);
    }
    got.sort_unstable();
    assert!(got == [3] || got == [1, 3], "{got:?}");

    // A late joiner on router 0: its replay, in the single router's order.
    let mut late = rs.router(0).raw("late").await;
    assert_eq!(
        replay_ids(&mut late).await,
        ids(&[("hq", 1), ("hq", 2), ("hq", 4)])
    );
    assert!(
        eventually(|| rs.router(1).stats().stored_queued == 0).await,
        "delivered copies are deleted: {:?}",
        rs.router(1).stats()
    );
    // The import left a note; a second one is refused, since the copies
    // delivered meanwhile would come back, and nothing is copied.
    let note = std::fs::read_to_string(data_dir.join(icom_server::IMPORTED_FILE)).unwrap();
    assert!(
        note.contains("2 persistent events, 2 queued copies"),
        "{note}"
    );
    let again = import(&[]);
    let said = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(!again.status.success(), "{said}");
    assert!(said.contains("was imported before"), "{said}");
    assert!(said.contains("--import-again"), "{said}");
    assert_eq!(rs.router(1).stats().stored_queued, 0);
    // Asked for again, it imports what is still in the file: the
    // persistent events replace themselves, the delivered copies return.
    let forced = import(&["--import-again"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(eventually(|| rs.router(0).stats().stored_persistent == 2).await);
    let mut got = vec![off.deliver().await.unwrap().id];
    while let Ok(d) = tokio::time::timeout(Duration::from_millis(500), off.deliver()).await {
        got.push(d.unwrap().id);
    }
    assert!(
        got.contains(&3),
        "the copy delivered before came back: {got:?}"
    );

    // A missing store is an error that says so.
    let out = files
        .command(&bin)
        .arg("--import-store")
        .arg(single.dir().join("nothing-here"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

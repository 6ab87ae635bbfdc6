//! Two routers of one cluster on a 3-node NATS cluster with mutual TLS
//! (docs/PROTOCOL.md §12): a sender on one router and recipients on the
//! other get the same acks and deliveries as on one router, for every
//! target kind; requests and replies, presence, the policy and takeovers
//! cross routers (what waited for a server that moved still reaches it); `who` (and `icom peers`) names the router of each server,
//! and a client that must not replace an identity is refused by another
//! router too (persistent and ttl sends: tests/cluster_store.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use icom_certs::Issued;
use icom_protocol::{AckCode, CloseCode, Send, Target};
use icom_server::policy::{Mode, RuleFile};
use icom_tests::{delivered_ids, eventually, send, stuck_deliveries, RawClient, Routers};

fn data(s: &str) -> Bytes {
    Bytes::from(rmp_serde::to_vec(&s).unwrap())
}

fn names(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// Connects `id` to router `i` and waits until every router knows the
/// servers of the others (`total` servers in all, one router's own not
/// counted).
async fn connect_all(rs: &Routers, at: &[(&str, usize)]) -> Vec<RawClient> {
    let mut out = Vec::new();
    for (id, i) in at {
        out.push(rs.router(*i).raw(id).await);
    }
    for i in 0..rs.routers.len() {
        let elsewhere = at.iter().filter(|(_, r)| *r != i).count();
        rs.remote_servers(i, elsewhere).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_kind_crosses_routers_with_the_acks_of_one_router() {
    let rs = Routers::start_with(3, 2, |_, c| {
        c.groups.insert("g".into(), vec!["a2".into(), "b1".into()]);
    })
    .await;
    let mut c = connect_all(&rs, &[("a1", 0), ("a2", 0), ("b1", 1), ("b2", 1)]).await;
    let (sender, rest) = c.split_first_mut().unwrap();
    let (a2, b1, b2) = (&rest[0], &rest[1], &rest[2]);

    // One server on the other router: the payload arrives byte for byte.
    let payload = data("across");
    let ack = sender
        .send(&send(1, Target::Server("b1".into()), "e1", payload.clone()))
        .await
        .unwrap();
    assert!(ack.ok, "{ack:?}");
    assert_eq!(ack.delivered, 1);
    let d = b1.deliver().await.unwrap();
    assert_eq!((d.from.as_str(), d.id, d.event.as_str()), ("a1", 1, "e1"));
    assert_eq!(d.data, payload);

    // A list across both routers, with one that is connected nowhere: the
    // others get it, the ack names the first failure.
    let ack = sender
        .send(&send(
            2,
            Target::Servers(names(&["b1", "nobody", "a2", "b2"])),
            "e2",
            data("x"),
        ))
        .await
        .unwrap();
    assert!(!ack.ok);
    assert_eq!(ack.delivered, 3);
    let e = ack.error.unwrap();
    assert_eq!(e.code, AckCode::NotFound);
    assert!(e.message.contains("nobody"), "{}", e.message);
    for r in [a2, b1, b2] {
        assert_eq!(r.deliver().await.unwrap().id, 2);
    }

    // A group with members on both routers.
    let ack = sender
        .send(&send(3, Target::Group("g".into()), "e3", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 2, "{ack:?}");
    for r in [a2, b1] {
        assert_eq!(r.deliver().await.unwrap().id, 3);
    }

    // All, everyone, except.
    let ack = sender
        .send(&send(4, Target::All, "e4", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 3, "{ack:?}");
    for r in [a2, b1, b2] {
        assert_eq!(r.deliver().await.unwrap().id, 4);
    }
    let ack = sender
        .send(&send(5, Target::Everyone, "e5", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 4, "{ack:?}");
    assert_eq!(sender.deliver().await.unwrap().id, 5);
    for r in [a2, b1, b2] {
        assert_eq!(r.deliver().await.unwrap().id, 5);
    }
    let ack = sender
        .send(&send(6, Target::Except(names(&["b1"])), "e6", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 2, "{ack:?}");
    for r in [a2, b2] {
        assert_eq!(r.deliver().await.unwrap().id, 6);
    }
    assert!(b1.no_delivery_within(Duration::from_millis(300)).await);

    // Router 1 still knows router 0's two servers (the metrics test counts
    // the forwards of a broadcast: one per router, not per recipient).
    assert_eq!(rs.router(1).stats().remote_servers, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_reply_cross_routers() {
    let rs = Routers::start(3, 2).await;
    let mut c = connect_all(&rs, &[("asker", 0), ("answerer", 1)]).await;
    let (asker, rest) = c.split_first_mut().unwrap();
    let answerer = &mut rest[0];
    let ack = asker
        .send(&send(
            10,
            Target::Server("answerer".into()),
            "question",
            data("q"),
        ))
        .await
        .unwrap();
    assert!(ack.ok, "{ack:?}");
    let q = answerer.deliver().await.unwrap();
    assert_eq!(q.id, 10);
    let reply = Send {
        reply_to: Some(q.id),
        ..send(20, Target::Server(q.from.clone()), "question", data("a"))
    };
    let ack = answerer.send(&reply).await.unwrap();
    assert!(ack.ok, "{ack:?}");
    let r = asker.deliver().await.unwrap();
    assert_eq!(
        (r.reply_to, r.from.as_str(), r.data.clone()),
        (Some(10), "answerer", data("a"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_and_presence_cover_the_whole_cluster() {
    let rs = Routers::start(3, 2).await;
    let _c = connect_all(&rs, &[("a1", 0), ("b1", 1), ("b2", 1)]).await;
    // A newcomer on router 0 learns of the servers of both: from its
    // welcome, and the presence batch on its way (§3.2).
    let mut newcomer = rs.router(0).raw("a2").await;
    newcomer.view_becomes(&["a1", "b1", "b2"]).await;
    // A server joining and leaving router 1 is announced on router 0.
    let mut b3 = rs.router(1).raw("b3").await;
    b3.finish_control();
    b3.expect_closed(CloseCode::Normal).await;
    let heard = newcomer.presence_within(Duration::from_secs(3)).await;
    assert_eq!(heard, [("b3".to_owned(), true), ("b3".to_owned(), false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_is_checked_at_the_senders_router() {
    // Router 0 allows only "allowed"; router 1 is open.
    let rs = Routers::start_with(3, 2, |i, c| {
        if i == 0 {
            c.policy.mode = Mode::Whitelist;
            c.policy.rule = vec![RuleFile {
                events: vec!["allowed".into()],
                ..RuleFile::default()
            }];
        }
    })
    .await;
    let mut c = connect_all(&rs, &[("a1", 0), ("b1", 1)]).await;
    let (a1, rest) = c.split_first_mut().unwrap();
    let b1 = &mut rest[0];
    let ack = a1
        .send(&send(1, Target::Server("b1".into()), "other", data("x")))
        .await
        .unwrap();
    assert_eq!(ack.error.unwrap().code, AckCode::Forbidden);
    let ack = a1
        .send(&send(2, Target::Server("b1".into()), "allowed", data("x")))
        .await
        .unwrap();
    assert!(ack.ok, "{ack:?}");
    assert_eq!(b1.deliver().await.unwrap().id, 2);
    // The other way, router 1's (open) policy decides.
    let ack = b1
        .send(&send(3, Target::Server("a1".into()), "other", data("x")))
        .await
        .unwrap();
    assert!(ack.ok, "{ack:?}");
    assert_eq!(a1.deliver().await.unwrap().id, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_connecting_to_another_router_replaces_the_old_connection() {
    let rs = Routers::start(3, 3).await;
    let mut c = connect_all(&rs, &[("x", 0), ("watcher", 2), ("sender", 2)]).await;
    let sender = c.pop().unwrap();
    let mut watcher = c.pop().unwrap();
    let old = c.pop().unwrap();
    let mut sender = sender;
    watcher.view_becomes(&["x", "sender"]).await;
    // x connects to router 1: the connection on router 0 is replaced.
    let new = rs.router(1).raw("x").await;
    old.expect_closed(CloseCode::Replaced).await;
    rs.remote_servers(2, 1).await;
    // Events for x go to the new connection only.
    let ack = sender
        .send(&send(7, Target::Server("x".into()), "e", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(new.deliver().await.unwrap().id, 7);
    // The watcher saw no offline/online pair for x.
    let heard = watcher.presence_within(Duration::from_secs(1)).await;
    assert!(heard.iter().all(|(id, _)| id != "x"), "{heard:?}");
    assert_eq!(rs.router(0).stats().connections, 0);
}

/// Two routers; `sender` and `x` on router 0, `x` letting it open one
/// stream at a time and not reading: event 1 is on x's stream, 2 in
/// router 0's writer's hand, 3..=10 waiting in its queue. With x's
/// certificate on router 0.
async fn x_stuck_on_router_0() -> (Routers, RawClient, RawClient, Issued) {
    let rs = Routers::start(3, 2).await;
    let mut sender = rs.router(0).raw("sender").await;
    let cert = rs.router(0).pki().client("x");
    let old = rs.router(0).raw_issued(&cert, 1).await;
    stuck_deliveries(&mut sender, "x", 10, || rs.router(0).stats().queued_events).await;
    (rs, sender, old, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_an_identity_that_moves_is_still_written_to_the_old_connection() {
    let (rs, mut sender, old, _) = x_stuck_on_router_0().await;

    // x moves to router 1, as a client moving back does: the old
    // connection is read until router 0 closes it. (Router 1 welcomes x
    // before router 0 has let go, so wait for that first: router 0 then
    // counts only the sender.)
    let new = rs.router(1).raw("x").await;
    assert!(eventually(|| rs.router(0).stats().connections == 1).await);
    let mut got = Vec::new();
    let end = loop {
        match old.deliver().await {
            Ok(d) => got.push(d.id),
            Err(e) => break e,
        }
    };
    got.sort_unstable();
    assert_eq!(got, (1..=10).collect::<Vec<u64>>(), "then {end}");
    old.expect_closed(CloseCode::Replaced).await;
    // None of them went to the new connection; what is sent now does.
    assert!(new.no_delivery_within(Duration::from_millis(300)).await);
    rs.remote_servers(0, 1).await;
    let ack = sender
        .send(&send(11, Target::Server("x".into()), "e", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(new.deliver().await.unwrap().id, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_an_identity_that_moved_off_a_dead_connection_follows_it() {
    let (rs, _sender, old, _) = x_stuck_on_router_0().await;

    // x comes back on router 1 and never reads the old connection (as if
    // its process had restarted): router 0 gives it up, cannot write what
    // waits there, closes it after its bound and forwards the rest to
    // router 1. Event 1 was on the old connection's stream: lost with it.
    let new = rs.router(1).raw("x").await;
    // Given up, the old connection is no longer counted as a server of
    // router 0, but what waits in its queue still is.
    assert!(eventually(|| rs.router(0).stats().connections == 1).await);
    let stats = rs.router(0).stats();
    assert_eq!(stats.queued_events, 8, "{stats:?}");
    assert_eq!(delivered_ids(&new, 9).await, (2..=10).collect::<Vec<u64>>());
    old.expect_closed(CloseCode::Replaced).await;
    assert!(new.no_delivery_within(Duration::from_millis(300)).await);
    assert!(eventually(|| rs.router(0).stats().queued_bytes == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_a_connection_being_given_up_closes_it() {
    let (rs, _sender, old, cert) = x_stuck_on_router_0().await;

    // x comes back on router 1; router 0 gives the old connection up and
    // would keep it for its bound. A reload that revokes the certificate
    // it came with closes it at once, and names it.
    let _new = rs.router(1).raw("x").await;
    assert!(eventually(|| rs.router(0).stats().connections == 1).await);
    rs.router(0).write_crl(&[&cert]);
    assert_eq!(rs.router(0).reload().revoked, vec!["x".to_owned()]);
    old.expect_closed(CloseCode::Revoked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_show_the_link_the_other_routers_and_the_events_that_crossed() {
    let rs = Routers::start_with(1, 2, |_, c| icom_tests::with_metrics(c)).await;
    let mut c = connect_all(&rs, &[("a1", 0), ("b1", 1), ("b2", 1)]).await;
    let (a1, rest) = c.split_first_mut().unwrap();
    // One broadcast to two servers on router 1: one forward.
    let ack = a1
        .send(&send(1, Target::All, "e", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 2, "{ack:?}");
    for r in rest.iter() {
        assert_eq!(r.deliver().await.unwrap().id, 1);
    }
    let (status, body) = rs.router(0).http_get("/metrics").await;
    assert_eq!(status, 200);
    let m = |name: &str| icom_tests::metric(&body, name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(m("icom_cluster_link_up"), 1.0);
    assert_eq!(m("icom_cluster_routers"), 1.0);
    assert_eq!(m("icom_cluster_remote_servers"), 2.0);
    assert_eq!(m("icom_cluster_forwarded_events_total"), 1.0);
    assert!(m("icom_cluster_nats_rtt_seconds") > 0.0);
    let (_, body) = rs.router(1).http_get("/metrics").await;
    assert_eq!(
        icom_tests::metric(&body, "icom_cluster_received_events_total"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dev_routers_in_one_directory_form_a_cluster_over_plain_nats() {
    use icom_tests::{free_udp_port, workspace_bin, NatsCluster, RouterProcess};
    let nats = NatsCluster::start_plain(1).await;
    let bin = workspace_bin("icom-server", "icom-server");
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let start = |port: u16, data: &str| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.current_dir(dir.path()).args([
            "--dev",
            "--nats",
            &nats.url(0),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data,
        ]);
        let mut router = RouterProcess::spawn(&mut cmd);
        router.wait_log("connected to NATS");
        router
    };
    // The first makes ./icom-dev; the second shares its CA.
    let mut r1 = start(p1, "icom-dev/data-1");
    let _r2 = start(p2, "icom-dev/data-2");
    assert!(r1.wait_log("name=dev-").contains(&format!("dev-{p1}")));
    let d = dir.path().join("icom-dev");
    let config = |port: u16, id: &str| {
        icom_client::ClientConfig::new(
            format!("127.0.0.1:{port}"),
            "localhost",
            d.join("ca.pem"),
            d.join(format!("{id}.pem")),
            d.join(format!("{id}.key")),
        )
    };
    let (listener, mut events) = icom_client::Client::connect(config(p2, "server_1"))
        .await
        .unwrap();
    let (sender, _) = icom_client::Client::connect(config(p1, "server_2"))
        .await
        .unwrap();
    // The sender's router hears of server_1 within a few heartbeats.
    let mut sent = None;
    for _ in 0..100 {
        if let Ok(ack) = sender.send("server_1", "hello", "across").await {
            sent = Some(ack);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sent.expect("a send across the two dev routers").delivered,
        1
    );
    let e = tokio::time::timeout(icom_tests::WAIT, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.event.as_str(), e.from.as_str()), ("hello", "server_2"));
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_flapping_between_routers_moves_at_most_once_a_second() {
    let rs = Routers::start_with(3, 3, |i, c| {
        if i == 0 {
            icom_tests::with_metrics(c);
        }
    })
    .await;
    let mut c = connect_all(&rs, &[("x", 0), ("watcher", 2)]).await;
    let mut watcher = c.pop().unwrap();
    let first = c.pop().unwrap();
    watcher.view_becomes(&["x"]).await;
    // x's claim on router 0 is a second old: the first move is not held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Back and forth at once: router 1, then router 0 again.
    let second = rs.router(1).raw("x").await;
    let moved = std::time::Instant::now();
    first.expect_closed(CloseCode::Replaced).await;
    let third = rs.router(0).raw("x").await;
    // Router 0 holds the second move back for the rest of the second since
    // x moved: its beats (every 200 ms here) do not claim x meanwhile, so
    // the second connection is still open 700 ms after the move. (A run
    // slower than that to get here has nothing left to look at.)
    let rest = Duration::from_millis(700).saturating_sub(moved.elapsed());
    if rest.is_zero() {
        eprintln!("the third connection came after 700 ms: the hold is not looked at");
    } else {
        let early = tokio::time::timeout(rest, second.closed()).await;
        assert!(early.is_err(), "closed within the hold: {early:?}");
    }
    second.expect_closed(CloseCode::Replaced).await;
    // Router 0 held the second move back, since x had just moved.
    let (_, body) = rs.router(0).http_get("/metrics").await;
    assert_eq!(
        icom_tests::metric(&body, "icom_cluster_takeovers_held_total"),
        Some(1.0),
        "{body}"
    );
    // The last connection holds x everywhere; nobody saw it leave.
    let mut sender = rs.router(2).raw("sender").await;
    rs.remote_servers(2, 1).await;
    let ack = sender
        .send(&send(9, Target::Server("x".into()), "e", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(third.deliver().await.unwrap().id, 9);
    let heard = watcher.presence_within(Duration::from_millis(500)).await;
    assert!(heard.iter().all(|(id, _)| id != "x"), "{heard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_and_icom_peers_name_the_router_of_every_server() {
    let rs = Routers::start(1, 2).await;
    let _c = connect_all(&rs, &[("a1", 0), ("b1", 1), ("b2", 1)]).await;
    // The operator's CLI on router 0 sees every server, and where it is.
    let files = rs.router(0).client_files("ops");
    let out = tokio::process::Command::new(icom_tests::workspace_bin("icom-client", "icom"))
        .arg("--router")
        .arg(files.addr.to_string())
        .arg("--server-name")
        .arg(&files.server_name)
        .arg("--ca")
        .arg(&files.ca)
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .arg("peers")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"server_id": "a1", "router": "r0"}),
            serde_json::json!({"server_id": "b1", "router": "r1"}),
            serde_json::json!({"server_id": "b2", "router": "r1"}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_must_not_replace_is_refused_by_another_router_too() {
    let rs = Routers::start(1, 2).await;
    let mut c = connect_all(&rs, &[("x", 0), ("watcher", 1)]).await;
    let pki = rs.router(1).pki();
    let mut careful = RawClient::connect(rs.router(1).addr(), pki, &pki.client("x"))
        .await
        .unwrap();
    let hello = icom_protocol::Hello {
        replace: Some(false),
        ..icom_protocol::Hello::new("icom-tests/careful")
    };
    assert!(careful.hello_with(hello).await.is_err());
    careful.expect_closed(CloseCode::InUse).await;
    // x stays on router 0, reachable from router 1.
    let ack = c[1]
        .send(&send(1, Target::Server("x".into()), "e", data("x")))
        .await
        .unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(c[0].deliver().await.unwrap().id, 1);
}

//! Identity and connection life: the certificate matrix (each refused
//! before any welcome), every close code, replacement races, revocation at
//! start and after a reload, and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use icom_certs::Issued;
use icom_protocol::{CloseCode, Control, Hello, Ping, Send, Target, NIL};
use icom_tests::{
    client_crypto, delivered_ids, eventually, stuck_deliveries, RawClient, RawError, TestCluster,
};

fn send(id: u64, to: &str) -> Send {
    icom_tests::send(id, Target::Server(to.into()), "e", Bytes::from_static(NIL))
}

/// Connects with `crypto` and says hello; returns how it ended.
async fn attempt(cluster: &TestCluster, issued: Option<&Issued>) -> Result<(), RawError> {
    let crypto = client_crypto(cluster.pki(), issued);
    let mut c = RawClient::connect_with(cluster.addr(), crypto).await?;
    c.hello().await.map(|_| ())
}

/// Asserts the TLS handshake refused the certificate: no welcome, and the
/// connection ended with a transport (crypto) error, not an application code.
fn assert_tls_refused(what: &str, r: Result<(), RawError>) {
    match r {
        Err(RawError::Closed(quinn::ConnectionError::ConnectionClosed(c))) => {
            let code = u64::from(c.error_code);
            assert!(
                (0x100..0x200).contains(&code),
                "{what}: expected a TLS alert, got {c}"
            );
        }
        Err(RawError::Closed(quinn::ConnectionError::TransportError(_))) => {}
        other => panic!("{what}: expected a TLS refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn certificate_matrix() {
    let cluster = TestCluster::start().await;
    let pki = cluster.pki();
    // Refused by TLS, before anything reaches the router's logic.
    assert_tls_refused("no client cert", attempt(&cluster, None).await);
    assert_tls_refused(
        "other CA, same CN",
        attempt(&cluster, Some(&pki.other_ca("x"))).await,
    );
    assert_tls_refused("expired", attempt(&cluster, Some(&pki.expired("x"))).await);
    assert_tls_refused(
        "not yet valid",
        attempt(&cluster, Some(&pki.not_yet_valid("x"))).await,
    );
    assert_tls_refused(
        "serverAuth-only EKU",
        attempt(&cluster, Some(&pki.server_auth_only("x"))).await,
    );
    // Refused by the router right after the handshake: BAD_IDENTITY.
    for bad in [
        pki.bad_cn("bad cn!"),
        pki.bad_cn("-x"),
        pki.bad_cn(&"x".repeat(65)),
        pki.two_cns("a", "b"),
        pki.no_cn(),
    ] {
        let c = RawClient::connect(cluster.addr(), pki, &bad).await.unwrap();
        c.expect_closed(CloseCode::BadIdentity).await;
    }
    // No EKU at all is unrestricted (RFC 5280): accepted.
    assert!(attempt(&cluster, Some(&pki.no_eku("free"))).await.is_ok());
    assert!(attempt(&cluster, Some(&pki.client("good"))).await.is_ok());
}

#[tokio::test]
async fn revoked_at_start_and_after_reload() {
    let cluster = TestCluster::start().await;
    let early = cluster.pki().client("early");
    let late = cluster.pki().client("late");
    // The CRL revokes `early` before it connects: written, then reloaded
    // (a router started with it behaves the same; see the binary test).
    cluster.write_crl(&[&early]);
    assert_eq!(cluster.reload().revoked, Vec::<String>::new());
    assert_tls_refused("revoked at connect", attempt(&cluster, Some(&early)).await);

    // `late` is connected and working when its revocation arrives.
    let mut c = RawClient::connect(cluster.addr(), cluster.pki(), &late)
        .await
        .unwrap();
    c.hello().await.unwrap();
    let mut other = cluster.raw("other").await;
    assert!(other.send(&send(1, "late")).await.unwrap().ok);
    cluster.write_crl(&[&early, &late]);
    assert_eq!(cluster.reload().revoked, vec!["late".to_owned()]);
    c.expect_closed(CloseCode::Revoked).await;
    // Unrelated connections go on.
    assert!(other.send(&send(2, "other")).await.unwrap().ok);
}

#[tokio::test]
async fn a_router_started_with_a_crl_refuses_what_it_lists() {
    let pki_holder = TestCluster::start().await;
    let bad = pki_holder.pki().client("bad");
    pki_holder.write_crl(&[&bad]);
    let mut cluster = pki_holder;
    cluster.restart().await;
    assert_tls_refused(
        "revoked in the CRL at start",
        attempt(&cluster, Some(&bad)).await,
    );
    assert!(attempt(&cluster, Some(&cluster.pki().client("good")))
        .await
        .is_ok());
}

#[tokio::test]
async fn protocol_violations_close_with_protocol() {
    let cluster = TestCluster::start_with(|c| c.limits.hello_timeout_secs = 1).await;
    let pki = cluster.pki();
    let connect = || async {
        RawClient::connect(cluster.addr(), pki, &pki.client("p"))
            .await
            .unwrap()
    };

    // A first frame that is not hello.
    let mut c = connect().await;
    c.send_control(&Control::Ping(Ping { nonce: 1 }))
        .await
        .unwrap();
    c.expect_closed(CloseCode::Protocol).await;

    // An unsupported protocol version.
    let mut c = connect().await;
    c.send_control(&Control::Hello(Hello {
        protocol: 2,
        agent: "future".into(),
        replace: None,
    }))
    .await
    .unwrap();
    c.expect_closed(CloseCode::Protocol).await;

    // An event stream before hello.
    let c = connect().await;
    c.send_event_bytes(&send(1, "p").encode()).await.unwrap();
    c.expect_closed(CloseCode::Protocol).await;

    // A frame header over 1 MiB.
    let mut c = connect().await;
    c.hello().await.unwrap();
    c.write_control_bytes(&(2u32 << 20).to_be_bytes())
        .await
        .unwrap();
    c.expect_closed(CloseCode::Protocol).await;

    // A frame that is not a message.
    let mut c = connect().await;
    c.hello().await.unwrap();
    c.write_control_bytes(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1])
        .await
        .unwrap();
    c.expect_closed(CloseCode::Protocol).await;

    // A router-only message from a client.
    let mut c = connect().await;
    c.hello().await.unwrap();
    c.send_control(&Control::Replayed(icom_protocol::Replayed { count: 1 }))
        .await
        .unwrap();
    c.expect_closed(CloseCode::Protocol).await;

    // No hello in time (1 s here).
    let mut c = connect().await;
    c.write_control_bytes(&[]).await.unwrap();
    c.expect_closed(CloseCode::Protocol).await;

    // An unknown message name is ignored, and the connection goes on.
    let mut c = connect().await;
    c.hello().await.unwrap();
    let unknown = rmp_serde::to_vec_named(&serde_json::json!({"subscribe": {"x": 1}})).unwrap();
    let mut frame = (unknown.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&unknown);
    c.write_control_bytes(&frame).await.unwrap();
    assert!(c.ping(5).await.is_ok());
}

#[tokio::test]
async fn a_newer_connection_replaces_the_older() {
    let cluster = TestCluster::start().await;
    let mut watcher = cluster.raw("watcher").await;
    let old = cluster.raw("x").await;
    watcher
        .control_until(|m| matches!(m, Control::Presence(p) if p.online).then_some(()))
        .await
        .unwrap();
    let new = cluster.raw("x").await;
    old.expect_closed(CloseCode::Replaced).await;
    for id in 1..=20 {
        let ack = watcher.send(&send(id, "x")).await.unwrap();
        assert!(ack.ok && ack.delivered == 1, "{ack:?}");
        assert_eq!(new.deliver().await.unwrap().id, id);
    }
    // The identity never left: no presence change reached the watcher.
    watcher.ping(9).await.unwrap();
    assert!(
        !watcher
            .backlog
            .iter()
            .any(|m| matches!(m, Control::Presence(_))),
        "{:?}",
        watcher.backlog
    );
    assert_eq!(cluster.stats().connections, 2);
}

#[tokio::test]
async fn deliveries_waiting_for_a_replaced_connection_go_to_the_new_one() {
    let cluster = TestCluster::start().await;
    let mut sender = cluster.raw("sender").await;
    let old = cluster.raw_with_streams("x", 1).await;
    // 1 on the old connection's stream, 2 in the writer's hand, 3..=10
    // waiting in the queue.
    stuck_deliveries(&mut sender, "x", 10, || cluster.stats().queued_events).await;

    // The queue moves to the new connection as it replaces the old; event
    // 2 follows once the old writer finds its connection gone. Event 1
    // was on the old connection's stream: it is lost with it.
    let new = cluster.raw("x").await;
    old.expect_closed(CloseCode::Replaced).await;
    assert_eq!(delivered_ids(&new, 9).await, (2..=10).collect::<Vec<u64>>());
    assert!(new.no_delivery_within(Duration::from_millis(300)).await);
    let ack = sender.send(&send(11, "x")).await.unwrap();
    assert!(ack.ok && ack.delivered == 1, "{ack:?}");
    assert_eq!(new.deliver().await.unwrap().id, 11);
}

#[tokio::test]
async fn replacement_races_leave_one_survivor_that_gets_everything() {
    let cluster = TestCluster::start().await;
    let mut sender = cluster.raw("sender").await;
    for round in 0..5u64 {
        let (ca, cb) = (cluster.pki().client("racer"), cluster.pki().client("racer"));
        let (a, b) = tokio::join!(
            RawClient::connect(cluster.addr(), cluster.pki(), &ca),
            RawClient::connect(cluster.addr(), cluster.pki(), &cb),
        );
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let (ha, hb) = tokio::join!(a.hello(), b.hello());
        // Both may be welcomed; exactly one is then replaced.
        let (survivor, loser) = match (ha, hb) {
            (Ok(_), Err(_)) => (a, b),
            (Err(_), Ok(_)) => (b, a),
            (Ok(_), Ok(_)) => {
                tokio::select! {
                    code = a.closed() => { assert_eq!(code.unwrap(), 1); (b, a) }
                    code = b.closed() => { assert_eq!(code.unwrap(), 1); (a, b) }
                }
            }
            (Err(ea), Err(eb)) => panic!("both failed: {ea} / {eb}"),
        };
        assert_eq!(
            loser.closed().await.unwrap(),
            u64::from(CloseCode::Replaced.code())
        );
        for n in 0..10 {
            let id = round * 100 + n + 1;
            let ack = sender.send(&send(id, "racer")).await.unwrap();
            assert!(ack.ok && ack.delivered == 1, "round {round}: {ack:?}");
            assert_eq!(survivor.deliver().await.unwrap().id, id);
        }
        survivor.conn.close(0u32.into(), b"bye");
        // Wait until the router has seen it go.
        assert!(eventually(|| cluster.stats().connections == 1).await);
    }
}

#[tokio::test]
async fn shutdown_closes_every_client_with_shutdown() {
    let mut cluster = TestCluster::start().await;
    let a = cluster.raw("a").await;
    let b = cluster.raw("b").await;
    cluster.stop().await;
    a.expect_closed(CloseCode::Shutdown).await;
    b.expect_closed(CloseCode::Shutdown).await;
    // Nothing is listening any more: a new client cannot get in.
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        attempt(&cluster, Some(&cluster.pki().client("late"))),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(()))), "a stopped router let a client in");
}

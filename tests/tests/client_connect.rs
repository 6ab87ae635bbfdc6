//! The client library against a real router: connecting, refusals,
//! sending, receiving, ping, forget, `REPLACED` and closing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::time::Duration;

use client_support::{config, config_for, connect, connect_with, next_event, wait_state};
use icom_client::{
    AckCode, Client, ConnectError, ForgetError, MsgPack, SendError, SendOptions, State, Target,
};
use icom_tests::{TestCluster, WAIT};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SupplyDrop {
    coords: Vec<f64>,
    crate_kind: String,
}

#[tokio::test]
async fn connect_returns_after_welcome_with_the_certificate_identity() {
    let cluster = TestCluster::start().await;
    let (other, _e) = connect(&cluster, "server_2").await;
    let (client, _events) = connect(&cluster, "server_1").await;
    assert!(client.is_connected());
    let welcome = client.welcome().expect("a live connection");
    assert_eq!(welcome.server_id, "server_1");
    assert!(
        matches!(client.state(), State::Connected { server_id, .. } if server_id == "server_1")
    );
    // It says which router it is on.
    let router = cluster.addr().to_string();
    assert_eq!(client.router(), Some(router.clone()));
    assert_eq!(client.state().router(), Some(router.as_str()));
    // The welcome lists server_2 if its presence batch went out before
    // server_1 connected; the batch brings it otherwise.
    assert!(welcome.peers.is_empty() || welcome.peers == ["server_2"]);
    client_support::eventually(|| client.peers() == ["server_2"]).await;
    other.close().await;
    client_support::eventually(|| client.peers().is_empty()).await;
    client.close().await;
}

#[tokio::test]
async fn a_certificate_the_router_refuses_is_a_clear_error() {
    let cluster = TestCluster::start().await;
    let pki = cluster.pki();
    let bad = [
        ("other_ca", pki.other_ca("server_1")),
        ("expired", pki.expired("server_1")),
        ("server_auth_only", pki.server_auth_only("server_1")),
    ];
    for (name, issued) in bad {
        let cfg = config_for(cluster.files_for(name, &issued));
        let err = tokio::time::timeout(WAIT, Client::connect(cfg))
            .await
            .expect("refused within the bound")
            .expect_err("the router refuses it");
        assert!(
            matches!(err, ConnectError::CertificateRefused { .. }),
            "{name}: {err:?}"
        );
        assert!(err.is_refused());
        assert!(
            err.to_string()
                .starts_with("the router refused this client's certificate"),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn a_router_this_client_does_not_trust_is_a_clear_error() {
    let cluster = TestCluster::start().await;
    let mut cfg = config(&cluster, "server_1");
    let stranger = icom_certs::testing::TestPki::new();
    let ca = cluster.dir().join("stranger-ca.pem");
    std::fs::write(&ca, stranger.ca().cert_pem()).unwrap();
    cfg.ca = ca;
    let err = Client::connect(cfg).await.expect_err("not trusted");
    assert!(matches!(err, ConnectError::RouterNotTrusted(_)), "{err:?}");
    assert!(!err.is_refused());
}

#[tokio::test]
async fn missing_files_are_config_errors() {
    let cluster = TestCluster::start().await;
    let mut cfg = config(&cluster, "server_1");
    cfg.key = cluster.dir().join("nope.key");
    let err = Client::connect(cfg).await.expect_err("no key");
    assert!(matches!(err, ConnectError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("nope.key"), "{err}");
}

#[tokio::test]
async fn send_delivers_serde_json_and_raw_msgpack_data() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let (_b, mut eb) = connect(&cluster, "server_2").await;

    let drop = SupplyDrop {
        coords: vec![1234.5, 5678.9, 0.0],
        crate_kind: "ammo".into(),
    };
    let ack = a.send("server_2", "supply_drop", &drop).await.unwrap();
    assert!(ack.ok);
    assert_eq!((ack.delivered, ack.queued), (1, 0));
    let e = next_event(&mut eb).await;
    assert_eq!(e.from, "server_1");
    assert_eq!(e.id, ack.id);
    assert_eq!(e.event, "supply_drop");
    assert_eq!(e.decode::<SupplyDrop>().unwrap(), drop);
    assert_eq!(e.persist_id, None);
    assert_eq!(e.reply_to, None);
    assert!(e.sent_ms > 1_600_000_000_000);

    let json = serde_json::json!({"text": "hi", "n": [1, 2]});
    a.send("server_2", "json", json.clone()).await.unwrap();
    assert_eq!(next_event(&mut eb).await.json().unwrap(), json);

    // [1, "x"] encoded by hand.
    let raw = MsgPack(bytes::Bytes::from_static(&[0x92, 0x01, 0xa1, b'x']));
    a.send("server_2", "raw", raw).await.unwrap();
    let e = next_event(&mut eb).await;
    assert_eq!(e.data.as_ref(), &[0x92, 0x01, 0xa1, b'x']);
    assert_eq!(e.json().unwrap(), serde_json::json!([1, "x"]));

    // Ids rise.
    let ack2 = a.send("server_2", "again", ()).await.unwrap();
    assert!(ack2.id > ack.id);
    assert_eq!(next_event(&mut eb).await.event, "again");

    // A payload of many packets each way comes out whole, byte for byte:
    // both ends read a stream of several chunks.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let ack3 = a
        .send("server_2", "big", serde_bytes_like(&big))
        .await
        .unwrap();
    assert!(ack3.ok);
    let e = next_event(&mut eb).await;
    assert_eq!((e.event.as_str(), e.id), ("big", ack3.id));
    assert_eq!(e.data, serde_bytes_like(&big).0);
    a.close().await;
}

#[tokio::test]
async fn broadcast_reaches_every_other_server() {
    let cluster = TestCluster::start().await;
    let (a, mut ea) = connect(&cluster, "server_1").await;
    let (_b, mut eb) = connect(&cluster, "server_2").await;
    let (_c, mut ec) = connect(&cluster, "server_3").await;
    let ack = a
        .broadcast("global_alert", "restart in 5 min")
        .await
        .unwrap();
    assert_eq!(ack.delivered, 2);
    for events in [&mut eb, &mut ec] {
        let e = next_event(events).await;
        assert_eq!(e.event, "global_alert");
        assert_eq!(e.json().unwrap(), "restart in 5 min");
    }
    // "everyone" includes the sender.
    let ack = a
        .send_to(Target::Everyone, "hello_all", 1, SendOptions::new())
        .await
        .unwrap();
    assert_eq!(ack.delivered, 3);
    assert_eq!(next_event(&mut ea).await.event, "hello_all");
}

#[tokio::test]
async fn refusals_are_errors_that_carry_the_ack() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let err = a.send("nobody", "x", 1).await.expect_err("not connected");
    match &err {
        SendError::Refused { code, ack, .. } => {
            assert_eq!(*code, AckCode::NotFound);
            assert!(!ack.ok);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(err.ack().is_some());

    let err = a
        .send("server_2", "bad\nname", 1)
        .await
        .expect_err("invalid");
    assert!(matches!(err, SendError::Invalid(_)), "{err:?}");
    let err = a
        .send_to(
            Target::Server("server_2".into()),
            "e",
            1,
            SendOptions::new().ttl(Duration::ZERO),
        )
        .await
        .expect_err("ttl 0");
    assert!(matches!(err, SendError::Invalid(_)), "{err:?}");

    let big = vec![7u8; 2 << 20];
    let err = a
        .send("server_2", "big", serde_bytes_like(&big))
        .await
        .expect_err("too large");
    assert!(matches!(err, SendError::TooLarge { .. }), "{err:?}");
}

/// A MessagePack bin of `bytes`, pre-encoded.
fn serde_bytes_like(bytes: &[u8]) -> MsgPack {
    let mut out = vec![0xc6];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    MsgPack(out.into())
}

#[tokio::test]
async fn ping_measures_a_round_trip() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    for _ in 0..3 {
        let rtt = a.ping().await.unwrap();
        assert!(rtt > Duration::ZERO && rtt < WAIT, "{rtt:?}");
    }
}

#[tokio::test]
async fn forget_of_an_unknown_persist_id_is_refused() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    match a.forget("no-such-notice").await {
        Err(ForgetError::Refused { code, .. }) => assert_eq!(code, AckCode::NotFound),
        other => panic!("expected not_found, got {other:?}"),
    }
    assert!(matches!(a.forget("").await, Err(ForgetError::Invalid(_))));
}

#[tokio::test]
async fn a_replaced_client_backs_off_and_says_so() {
    let cluster = TestCluster::start().await;
    let mut cfg = config(&cluster, "server_1");
    cfg.reconnect.replaced_delay_ms = 60_000;
    let (old, _e1) = connect_with(cfg.clone()).await;
    let mut states = old.states();
    let (new, _e2) = connect_with(cfg).await;
    let state = wait_state(&mut states, |s| !matches!(s, State::Connected { .. })).await;
    assert_eq!(
        state,
        State::Replaced {
            retry_in: Duration::from_secs(60),
            router: cluster.addr().to_string(),
        }
    );
    assert!(!old.is_connected());
    // The old one does not fight back: the new one stays connected.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(new.is_connected());
    new.ping().await.unwrap();
    assert_eq!(old.state(), state);
}

#[tokio::test]
async fn close_ends_the_events_and_states_streams() {
    let cluster = TestCluster::start().await;
    let (a, mut events) = connect(&cluster, "server_1").await;
    let mut states = a.states();
    let twin = a.clone();
    a.close().await;
    assert_eq!(
        wait_state(&mut states, |s| *s == State::Closed).await,
        State::Closed
    );
    let end = tokio::time::timeout(WAIT, events.next()).await.unwrap();
    assert!(end.is_none());
    assert!(matches!(
        twin.send("server_1", "x", 1).await,
        Err(SendError::Unavailable(icom_client::Unavailable::Closed))
    ));
}

#[tokio::test]
async fn a_certificate_without_a_valid_identity_is_refused() {
    let cluster = TestCluster::start().await;
    let issued = cluster.pki().bad_cn("not a valid id!");
    let cfg = config_for(cluster.files_for("bad_cn", &issued));
    let err = Client::connect(cfg).await.expect_err("BAD_IDENTITY");
    assert!(
        matches!(&err, ConnectError::Refused(r) if r.contains("BAD_IDENTITY")),
        "{err:?}"
    );
    assert!(err.is_refused());
}

#[tokio::test]
async fn a_certificate_revoked_while_connected_is_reported_as_refused() {
    let cluster = TestCluster::start().await;
    let issued = cluster.pki().client("server_1");
    let (a, _ea) = connect_with(config_for(cluster.files_for("server_1", &issued))).await;
    let mut states = a.states();
    cluster.write_crl(&[&issued]);
    cluster.reload();
    let state = wait_state(&mut states, |s| matches!(s, State::Refused { .. })).await;
    assert!(
        matches!(&state, State::Refused { reason, router } if reason.contains("REVOKED") && *router == cluster.addr().to_string()),
        "{state:?}"
    );
    assert!(!a.is_connected());
}

/// A publisher's events are acked through its outcomes, each with its id;
/// an outcome keeps its event's place in the window until it is read, so
/// a publisher whose outcomes nobody reads stops at `max_in_flight`
/// instead of piling acks up.
#[tokio::test]
async fn a_publisher_stops_at_its_window_while_its_outcomes_are_unread() {
    let cluster = TestCluster::start().await;
    let (_other, mut received) = connect(&cluster, "server_2").await;
    let mut cfg = config(&cluster, "server_1");
    cfg.max_in_flight = 2;
    cfg.ack_timeout_ms = 1000;
    let (client, _events) = connect_with(cfg).await;
    let (publisher, mut outcomes) = client.publisher();
    let to = Target::Server("server_2".into());
    let options = SendOptions::default();
    let first = publisher.publish(&to, "e", 1, &options).await.unwrap();
    let second = publisher.publish(&to, "e", 2, &options).await.unwrap();
    // Both are delivered (and so acked), but nobody read the acks: the
    // window is full.
    for _ in 0..2 {
        next_event(&mut received).await;
    }
    let third = tokio::time::timeout(
        Duration::from_millis(1500),
        publisher.publish(&to, "e", 3, &options),
    )
    .await;
    assert!(
        matches!(third, Err(_) | Ok(Err(SendError::AckTimeout(_)))),
        "{third:?}"
    );
    let mut ids = Vec::new();
    for _ in 0..2 {
        let done = tokio::time::timeout(WAIT, outcomes.next())
            .await
            .unwrap()
            .unwrap();
        assert!(done.result.is_ok(), "{done:?}");
        ids.push(done.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, [first, second]);
    // Read, they gave their places back.
    let fourth = publisher.publish(&to, "e", 4, &options).await.unwrap();
    let done = tokio::time::timeout(WAIT, outcomes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((done.id, done.result.is_ok()), (fourth, true));
}

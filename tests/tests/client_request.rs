//! Request / reply through a real router: the reply comes back to its
//! request, and timeouts, a peer that leaves and a lost connection end a
//! request with a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::time::{Duration, Instant};

use client_support::{connect, connected, next_event, wait_state};
use icom_client::{AckCode, Events, RequestError, SendError};
use icom_tests::{TestCluster, WAIT};

/// Answers every event with `{"echo": data}`.
fn echo(mut events: Events) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            let data = serde_json::json!({ "echo": e.json().unwrap() });
            e.reply(data).await.unwrap();
        }
    })
}

#[tokio::test]
async fn a_request_gets_its_reply() {
    let cluster = TestCluster::start().await;
    let (a, mut ea) = connect(&cluster, "server_1").await;
    let (_b, eb) = connect(&cluster, "server_2").await;
    let _echo = echo(eb);

    let reply = a
        .request(
            "server_2",
            "bank_transfer",
            serde_json::json!({"n": 1}),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(reply.from, "server_2");
    assert_eq!(reply.event, "bank_transfer");
    assert!(reply.reply_to.is_some());
    assert_eq!(reply.json().unwrap(), serde_json::json!({"echo": {"n": 1}}));

    // Many at once: each gets its own reply.
    let requests: Vec<_> = (0..50)
        .map(|n| {
            let a = a.clone();
            tokio::spawn(async move { (n, a.request("server_2", "calc", n, WAIT).await) })
        })
        .collect();
    for r in requests {
        let (n, reply) = r.await.unwrap();
        assert_eq!(
            reply.unwrap().json().unwrap(),
            serde_json::json!({ "echo": n })
        );
    }
    // Replies go to their requests, not to the events stream.
    assert!(ea.try_next().is_none());
}

#[tokio::test]
async fn a_request_to_itself_works() {
    let cluster = TestCluster::start().await;
    let (a, ea) = connect(&cluster, "server_1").await;
    let _echo = echo(ea);
    let reply = a.request("server_1", "self", 5, WAIT).await.unwrap();
    assert_eq!(reply.json().unwrap(), serde_json::json!({"echo": 5}));
}

#[tokio::test]
async fn a_request_without_reply_times_out() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let (_b, mut eb) = connect(&cluster, "server_2").await;
    let started = Instant::now();
    let err = a
        .request("server_2", "silent", 1, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Timeout(t) if t == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.is_timeout());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < WAIT,
        "{elapsed:?}"
    );
    // The request did reach b; a late reply is not lost: it is an event.
    let request = next_event(&mut eb).await;
    request.reply("late").await.unwrap();
}

#[tokio::test]
async fn a_request_to_an_absent_server_is_refused_at_once() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let err = a.request("nobody", "q", 1, WAIT).await.unwrap_err();
    match err {
        RequestError::Send(SendError::Refused { code, .. }) => assert_eq!(code, AckCode::NotFound),
        other => panic!("expected not_found, got {other:?}"),
    }
}

#[tokio::test]
async fn a_request_fails_when_the_peer_goes_away() {
    let cluster = TestCluster::start().await;
    let (a, _ea) = connect(&cluster, "server_1").await;
    let (b, mut eb) = connect(&cluster, "server_2").await;
    let request = tokio::spawn({
        let a = a.clone();
        async move { a.request("server_2", "will_not_answer", 1, WAIT * 3).await }
    });
    // b receives the request, then leaves without replying.
    next_event(&mut eb).await;
    b.close().await;
    let err = tokio::time::timeout(WAIT, request)
        .await
        .expect("the request ends long before its timeout")
        .unwrap()
        .unwrap_err();
    // `PeerLeft`, not a timeout: it ended when b left.
    assert!(
        matches!(&err, RequestError::PeerLeft(s) if s == "server_2"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_request_fails_when_the_connection_is_lost() {
    let mut cluster = TestCluster::start().await;
    let (a, mut ea) = connect(&cluster, "server_1").await;
    let mut states = a.states();
    let request = tokio::spawn({
        let a = a.clone();
        async move { a.request("server_1", "unanswered", 1, WAIT * 3).await }
    });
    next_event(&mut ea).await;
    cluster.stop().await;
    let err = tokio::time::timeout(WAIT, request)
        .await
        .expect("the request ends with the connection")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RequestError::ConnectionLost), "{err:?}");
    wait_state(&mut states, |s| !connected(s)).await;
}

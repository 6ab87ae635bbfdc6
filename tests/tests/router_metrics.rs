//! The metrics and health endpoint: counters move with real traffic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use icom_protocol::{Target, NIL};
use icom_tests::{metric, send, with_metrics, TestCluster};

fn value(body: &str, name: &str) -> f64 {
    metric(body, name).unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let mut cluster = TestCluster::start_with(with_metrics).await;
    assert_eq!(cluster.http_get("/healthz").await.0, 200);
    assert_eq!(cluster.http_get("/readyz").await.0, 200);
    assert_eq!(cluster.http_get("/nope").await.0, 404);

    let mut a = cluster.raw("a").await;
    let _b = cluster.raw("b").await;
    for id in 1..=3 {
        let s = send(id, Target::Server("b".into()), "e", Bytes::from_static(NIL));
        assert!(a.send(&s).await.unwrap().ok);
    }
    let bad = send(
        9,
        Target::Server("ghost".into()),
        "e",
        Bytes::from_static(NIL),
    );
    assert!(!a.send(&bad).await.unwrap().ok);
    let (status, body) = cluster.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(value(&body, "icom_connections"), 2.0);
    assert_eq!(value(&body, "icom_connections_accepted_total"), 2.0);
    assert_eq!(value(&body, "icom_events_routed_total"), 3.0);
    assert_eq!(value(&body, "icom_deliveries_total"), 3.0);
    assert_eq!(
        value(&body, "icom_events_refused_total{code=\"not_found\"}"),
        1.0
    );
    assert_eq!(value(&body, "icom_stored_persistent_events"), 0.0);
    cluster.reload();
    let (_, body) = cluster.http_get("/metrics").await;
    assert_eq!(value(&body, "icom_reloads_total{result=\"ok\"}"), 1.0);
    cluster.stop().await;
}

//! The metrics and health endpoint: counters move with real traffic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use icom_protocol::{Send, Target, NIL};
use icom_tests::TestCluster;

fn value(body: &str, metric: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(metric) && l[metric.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {metric} in:\n{body}"))
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let mut cluster = TestCluster::start_with(|c| {
        c.metrics.enabled = true;
        c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    assert_eq!(cluster.http_get("/healthz").await.0, 200);
    assert_eq!(cluster.http_get("/readyz").await.0, 200);
    assert_eq!(cluster.http_get("/nope").await.0, 404);

    let mut a = cluster.raw("a").await;
    let _b = cluster.raw("b").await;
    for id in 1..=3 {
        let s = Send {
            id,
            to: Target::Server("b".into()),
            event: "e".into(),
            data: Bytes::from_static(NIL),
            persist: None,
            ttl_ms: None,
            reply_to: None,
        };
        assert!(a.send(&s).await.unwrap().ok);
    }
    let bad = Send {
        id: 9,
        to: Target::Server("ghost".into()),
        event: "e".into(),
        data: Bytes::from_static(NIL),
        persist: None,
        ttl_ms: None,
        reply_to: None,
    };
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

//! The client library across a simulated cross-datacenter link (the
//! impairment proxy at 50 ms RTT and 2% loss each way): every acked event
//! is delivered exactly once, and request/reply works, both ways.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::collections::HashSet;
use std::time::Duration;

use client_support::{config_for, connect, connect_with, next_event};
use icom_tests::{Impairment, ImpairmentProxy, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_and_requests_cross_a_lossy_link() {
    let cluster = TestCluster::start().await;
    let link = Impairment::rtt(Duration::from_millis(50)).with_loss(0.02);
    let proxy =
        ImpairmentProxy::start(cluster.addr(), link.clone().with_seed(7), link.with_seed(8))
            .await
            .unwrap();
    // `far` is across the link; `near` is direct.
    let mut files = cluster.client_files("far");
    files.addr = proxy.addr();
    let (far, mut far_events) = connect_with(config_for(files)).await;
    let (near, mut near_events) = connect(&cluster, "near").await;

    // 300 events from far to near, all in flight at once.
    let mut sends = Vec::new();
    for n in 0..300u32 {
        let far = far.clone();
        sends.push(tokio::spawn(async move {
            far.send("near", "tick", &n).await.map(|ack| (n, ack))
        }));
    }
    let mut acked = HashSet::new();
    for s in sends {
        let (n, ack) = s.await.unwrap().expect("every send is acked ok");
        assert_eq!(ack.delivered, 1);
        acked.insert(n);
    }
    assert_eq!(acked.len(), 300);
    let mut got = HashSet::new();
    while got.len() < acked.len() {
        let e = next_event(&mut near_events).await;
        assert_eq!(e.from, "far");
        let n: u32 = e.decode().unwrap();
        assert!(got.insert(n), "event {n} delivered twice");
    }
    assert_eq!(got, acked);

    // Request/reply, near asking far (the reply crosses the link back).
    let responder = tokio::spawn(async move {
        for _ in 0..20 {
            let e = next_event(&mut far_events).await;
            let n: u32 = e.decode().unwrap();
            e.reply(&(n * 2)).await.unwrap();
        }
    });
    for n in 0..20u32 {
        let reply = near
            .request("far", "double", &n, Duration::from_secs(10))
            .await
            .expect("a reply across the link");
        assert_eq!(reply.decode::<u32>().unwrap(), n * 2);
    }
    responder.await.unwrap();
    // And far asking near.
    let asker = far.clone();
    let ask = tokio::spawn(async move {
        asker
            .request("near", "echo", "ping", Duration::from_secs(10))
            .await
    });
    let e = next_event(&mut near_events).await;
    e.reply(&"pong").await.unwrap();
    assert_eq!(
        ask.await.unwrap().unwrap().decode::<String>().unwrap(),
        "pong"
    );

    let stats = proxy.stats();
    assert!(
        stats.to_upstream.dropped_loss + stats.to_client.dropped_loss > 0,
        "the link really lost packets: {stats:?}"
    );
}

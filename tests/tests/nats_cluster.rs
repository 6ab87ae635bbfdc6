//! The NATS test cluster itself ([`NatsCluster`]): three nodes with mutual
//! TLS form a cluster with a JetStream meta leader, a client without a
//! certificate from the test CA is refused, a node killed with SIGKILL
//! restarts on its ports and store and rejoins, and the plain mode serves
//! `nats://`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use icom_certs::{load_certs, load_key};
use icom_tests::{NatsClientFiles, NatsCluster, NATS_WAIT};
use rustls_pki_types::ServerName;

/// Connects to `url` with the cluster's client files (or only its CA when
/// `with_cert` is false); fails rather than retries.
async fn connect(
    files: &NatsClientFiles,
    url: &str,
    with_cert: bool,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(files.ca.clone())
        .connection_timeout(Duration::from_secs(10));
    if with_cert {
        options = options.add_client_certificate(files.cert.clone(), files.key.clone());
    }
    options.connect(url).await
}

/// The plain-text INFO line a NATS server sends first, as JSON.
fn read_info(stream: &mut TcpStream) -> serde_json::Value {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "the INFO line ended early"
        );
        line.push(byte[0]);
        assert!(line.len() < 64 * 1024, "no end to the INFO line");
    }
    let text = String::from_utf8(line).unwrap();
    let json = text
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("not an INFO line: {text}"));
    serde_json::from_str(json.trim()).unwrap()
}

/// Opens a TCP connection to `addr`, reads INFO, upgrades to TLS trusting
/// `ca` and presenting the certificate in `client` (if any), then sends
/// CONNECT and PING. Ok(what the server said) once it says PONG; Err(why)
/// if the handshake or the exchange fails.
fn raw_tls_ping(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> (serde_json::Value, Result<String, String>) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(NATS_WAIT)).unwrap();
    let info = read_info(&mut tcp);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert).unwrap(), load_key(key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);

    let result = (|| {
        tls.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":true}\r\nPING\r\n",
        )
        .map_err(|e| format!("writing CONNECT: {e}"))?;
        let mut said = String::new();
        let mut buf = [0u8; 4096];
        while !said.contains("PONG") {
            let n = tls.read(&mut buf).map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                return Err(format!("closed after {said:?}"));
            }
            said.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(said)
    })();
    (info, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tls_nodes_form_a_cluster_with_a_jetstream_meta_leader() {
    let started = Instant::now();
    let cluster = NatsCluster::start(3).await;
    eprintln!(
        "a 3-node TLS NATS cluster formed in {:?}",
        started.elapsed()
    );

    assert_eq!(cluster.len(), 3);
    let urls = cluster.urls();
    for (i, url) in urls.iter().enumerate() {
        assert_eq!(url, &format!("tls://{}", cluster.client_addr(i)));
    }
    let names: Vec<&str> = (0..3).map(|i| cluster.server_name(i)).collect();
    assert_eq!(names, ["n0", "n1", "n2"]);

    let mut leaders = Vec::new();
    for i in 0..3 {
        let mut want: Vec<String> = names
            .iter()
            .filter(|n| **n != names[i])
            .map(|n| (*n).to_owned())
            .collect();
        want.sort();
        assert_eq!(
            cluster.route_peers(i).await,
            Some(want),
            "node {i}'s routes"
        );
        let leader = cluster.meta_leader(i).await.expect("a meta leader");
        assert!(names.contains(&leader.as_str()), "{leader}");
        leaders.push(leader);
        // The routes run mutual TLS too (the routes formed, so over it).
        let varz = cluster.monitor_json(i, "/varz").await.unwrap();
        assert_eq!(varz["cluster"]["tls_required"], true, "{}", varz["cluster"]);
        assert_eq!(varz["cluster"]["tls_verify"], true, "{}", varz["cluster"]);
        // JetStream's store is in the node's own directory.
        let jsz = cluster.monitor_json(i, "/jsz").await.unwrap();
        let store = jsz["config"]["store_dir"].as_str().unwrap();
        assert!(
            Path::new(store).starts_with(cluster.store_dir(i)),
            "{store}"
        );
    }
    leaders.dedup();
    assert_eq!(leaders.len(), 1, "one meta leader: {leaders:?}");

    // A message published on one node reaches a subscriber on another,
    // over the routes.
    let files = cluster.tls().expect("a TLS cluster has client files");
    let sub_client = connect(files, &urls[0], true).await.unwrap();
    let pub_client = connect(files, &urls[2], true).await.unwrap();
    let mut sub = sub_client.subscribe("icom.test").await.unwrap();
    sub_client.flush().await.unwrap();
    // Interest crosses the routes shortly after the subscription; publish
    // until the subscriber sees a message (bounded by NATS_WAIT).
    let got = tokio::time::timeout(NATS_WAIT, async {
        loop {
            pub_client.publish("icom.test", "hi".into()).await.unwrap();
            pub_client.flush().await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("a message across the cluster");
    assert_eq!(&got.payload[..], b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_from_the_test_ca_is_refused() {
    let cluster = NatsCluster::start(3).await;
    let files = cluster.tls().unwrap().clone();
    let addr = cluster.client_addr(1);

    let (info, with_cert) = tokio::task::spawn_blocking({
        let files = files.clone();
        move || raw_tls_ping(addr, &files.ca, Some((&files.cert, &files.key)))
    })
    .await
    .unwrap();
    assert_eq!(info["tls_required"], true, "{info}");
    assert_eq!(info["tls_verify"], true, "{info}");
    let said = with_cert.expect("the client certificate is accepted");
    assert!(said.contains("PONG"), "{said}");

    let (_, without) = tokio::task::spawn_blocking({
        let files = files.clone();
        move || raw_tls_ping(addr, &files.ca, None)
    })
    .await
    .unwrap();
    let why = without.expect_err("a TLS client without a certificate must be refused");
    eprintln!("without a certificate: {why}");

    // The same through the NATS client the routers use.
    let url = cluster.url(1);
    connect(&files, &url, true)
        .await
        .expect("with the certificate");
    assert!(connect(&files, &url, false).await.is_err());
    // A certificate of the right name from another CA is refused too.
    let dir = tempfile::tempdir().unwrap();
    let stranger = cluster.pki().unwrap().other_ca(icom_tests::NATS_CLIENT_CN);
    let other = NatsClientFiles {
        ca: files.ca.clone(),
        cert: dir.path().join("other.pem"),
        key: dir.path().join("other.key"),
    };
    std::fs::write(&other.cert, &stranger.cert_pem).unwrap();
    std::fs::write(&other.key, &stranger.key_pem).unwrap();
    assert!(connect(&other, &url, true).await.is_err());
    // And a plain-text client gets nowhere.
    let plain = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(format!("nats://{addr}"))
        .await;
    assert!(plain.is_err(), "a plain-text client connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarts_on_its_ports_and_store_and_rejoins() {
    let mut cluster = NatsCluster::start(3).await;
    let files = cluster.tls().unwrap().clone();
    let client = connect(&files, &cluster.url(0), true).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "ICOM_TEST".into(),
        subjects: vec!["icom.test.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    publish_acked(&js, "icom.test.a", "one").await;
    let url_before = cluster.url(1);
    let store_before = cluster.store_dir(1).to_owned();

    cluster.kill(1);
    assert!(!cluster.running(1));
    assert!(cluster.monitor_get(1, "/healthz").await.is_none());
    // The others drop their routes to it.
    let alone = tokio::time::timeout(NATS_WAIT, async {
        while cluster.route_peers(0).await != Some(vec!["n2".to_owned()]) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        alone.is_ok(),
        "node 0 still routes to {:?}",
        cluster.route_peers(0).await
    );
    // Two of three keep the stream writable meanwhile.
    publish_acked(&js, "icom.test.b", "two").await;

    let started = Instant::now();
    cluster.restart(1).await;
    eprintln!("node 1 rejoined in {:?}", started.elapsed());
    assert!(cluster.running(1));
    assert_eq!(cluster.url(1), url_before);
    assert_eq!(cluster.store_dir(1), store_before);
    for i in 0..3 {
        assert_eq!(cluster.route_peers(i).await.map(|p| p.len()), Some(2));
    }
    // The restarted node's replica catches up on what it missed.
    let caught_up = tokio::time::timeout(NATS_WAIT, async {
        loop {
            if local_messages(&cluster, 1, "ICOM_TEST").await == Some(2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "node 1 holds {:?} messages of ICOM_TEST",
        local_messages(&cluster, 1, "ICOM_TEST").await
    );
    // Clients connect to it on its old URL.
    let again = connect(&files, &cluster.url(1), true).await.unwrap();
    again.flush().await.unwrap();
}

/// Publishes to a stream until it acks (bounded by [`NATS_WAIT`]): just
/// after a stream is made, or a node comes and goes, a node other than the
/// stream leader may not know of the stream's interest yet, and the
/// publish finds no responders.
async fn publish_acked(js: &jetstream::Context, subject: &'static str, payload: &'static str) {
    let deadline = Instant::now() + NATS_WAIT;
    loop {
        let acked = match js.publish(subject, payload.into()).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("publishing to {subject}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// How many messages node `i`'s own replica of `stream` holds, from its
/// `/jsz?streams=true`.
async fn local_messages(cluster: &NatsCluster, i: usize, stream: &str) -> Option<u64> {
    let jsz = cluster.monitor_json(i, "/jsz?streams=true").await?;
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == stream)
        .and_then(|s| s["state"]["messages"].as_u64())
}

#[tokio::test]
async fn a_plain_node_serves_nats_urls_with_jetstream() {
    let cluster = NatsCluster::start_plain(1).await;
    assert!(cluster.tls().is_none() && cluster.pki().is_none());
    let url = cluster.url(0);
    assert_eq!(url, format!("nats://{}", cluster.client_addr(0)));

    let info = tokio::task::spawn_blocking({
        let addr = cluster.client_addr(0);
        move || read_info(&mut TcpStream::connect(addr).unwrap())
    })
    .await
    .unwrap();
    assert_ne!(info["tls_required"], true, "{info}");
    assert_eq!(info["jetstream"], true, "{info}");

    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "icom_test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    kv.put("k", "v".into()).await.unwrap();
    assert_eq!(kv.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

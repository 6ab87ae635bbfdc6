//! A router killed with SIGKILL and started again on the same address and
//! data dir: the connections of its previous run end at once (a QUIC
//! stateless reset, signed with the key kept in the data dir), and clients
//! route again long before their idle timeout would have ended them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use client_support::{connected, next_event, wait_state};
use icom_certs::testing::TestPki;
use icom_client::{Client, ClientConfig, State};
use icom_tests::{free_udp_port, workspace_bin, RouterProcess};

/// The clients' idle timeout, as the router's config below sets it: a
/// restart noticed only by it would take this long.
const IDLE_TIMEOUT_MS: u64 = 30_000;

fn write_router_config(dir: &Path, pki: &TestPki, port: u16) -> std::path::PathBuf {
    pki.write_to(dir).unwrap();
    let path = dir.join("icom-server.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n\
             [transport]\nidle_timeout_secs = {}\nkeep_alive_secs = 1\n\
             [tls]\nca = \"ca.pem\"\ncert = \"router.pem\"\nkey = \"router.key\"\ncrl = \"crl.pem\"\n",
            IDLE_TIMEOUT_MS / 1000
        ),
    )
    .unwrap();
    path
}

fn client_config(dir: &Path, pki: &TestPki, port: u16, id: &str) -> ClientConfig {
    let issued = pki.client(id);
    let (cert, key) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let mut c = ClientConfig::new(
        format!("127.0.0.1:{port}"),
        "localhost",
        dir.join("ca.pem"),
        cert,
        key,
    );
    c.idle_timeout_ms = IDLE_TIMEOUT_MS;
    c.keep_alive_ms = 1_000;
    c.reconnect.initial_ms = 50;
    c.reconnect.max_ms = 500;
    c
}

fn start(config: &Path) -> RouterProcess {
    let bin = workspace_bin("icom-server", "icom-server");
    let mut router = RouterProcess::spawn(Command::new(bin).arg("--config").arg(config));
    router.wait_log("listening");
    router
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_and_restarted_is_routing_again_in_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let port = free_udp_port();
    let config = write_router_config(dir.path(), &pki, port);
    let mut router = start(&config);
    let key = std::fs::read(dir.path().join("data").join("reset.key")).unwrap();
    assert_eq!(key.len(), 32, "the reset key is kept in the data dir");

    let (a, _a_events) = Client::connect(client_config(dir.path(), &pki, port, "a"))
        .await
        .unwrap();
    let (b, mut b_events) = Client::connect(client_config(dir.path(), &pki, port, "b"))
        .await
        .unwrap();
    a.send("b", "before", 1).await.unwrap();
    assert_eq!(next_event(&mut b_events).await.event, "before");
    let mut a_states = a.states();

    router.signal("KILL");
    router.wait_exit(Duration::from_secs(10));
    let mut router = start(&config);
    let restarted = Instant::now();
    assert_eq!(
        std::fs::read(dir.path().join("data").join("reset.key")).unwrap(),
        key,
        "a restart keeps the key"
    );

    // The old connection ends by a reset, not by its idle timeout.
    let state = wait_state(&mut a_states, |s| !connected(s)).await;
    assert!(
        !matches!(&state, State::Disconnected { reason } if reason.contains("timed out")),
        "{state:?}"
    );
    wait_state(&mut a_states, connected).await;
    // And both route again; the client retries a send the restart cut off.
    let deadline = Instant::now() + Duration::from_millis(IDLE_TIMEOUT_MS / 2);
    loop {
        match a.send("b", "after", 2).await {
            Ok(ack) if ack.delivered == 1 => break,
            other => {
                assert!(Instant::now() < deadline, "not routing again: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(next_event(&mut b_events).await.event, "after");
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_millis(IDLE_TIMEOUT_MS / 2),
        "routing again took {took:?}, the idle timeout is {IDLE_TIMEOUT_MS} ms"
    );
    a.close().await;
    b.close().await;
    router.signal("TERM");
    router.wait_exit(Duration::from_secs(10));
}

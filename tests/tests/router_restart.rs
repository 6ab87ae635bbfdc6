//! A router killed with SIGKILL and started again on the same address and
//! data dir: the connections of its previous run end at once (a QUIC
//! stateless reset, signed with the key kept in the data dir), and clients
//! route again long before their idle timeout would have ended them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::time::{Duration, Instant};

use client_support::{connected, next_event, wait_state};
use icom_client::{Client, ClientConfig, State};
use icom_tests::{workspace_bin, RouterFiles, RouterProcess};

/// The clients' idle timeout, as the router's config below sets it: a
/// restart noticed only by it would take this long.
const IDLE_TIMEOUT_MS: u64 = 30_000;

fn client_config(files: &RouterFiles, id: &str) -> ClientConfig {
    let (dir, issued) = (files.dir(), files.pki().client(id));
    let (cert, key) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let mut c = ClientConfig::new(
        files.addr().to_string(),
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

fn start(files: &RouterFiles) -> RouterProcess {
    RouterProcess::start(&mut files.command(workspace_bin("icom-server", "icom-server")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_and_restarted_is_routing_again_in_seconds() {
    let files = RouterFiles::new(&format!(
        "[transport]\nidle_timeout_secs = {}\nkeep_alive_secs = 1",
        IDLE_TIMEOUT_MS / 1000
    ));
    let key_file = files.dir().join("data").join("reset.key");
    let mut router = start(&files);
    let key = std::fs::read(&key_file).unwrap();
    assert_eq!(key.len(), 32, "the reset key is kept in the data dir");

    let (a, _a_events) = Client::connect(client_config(&files, "a")).await.unwrap();
    let (b, mut b_events) = Client::connect(client_config(&files, "b")).await.unwrap();
    a.send("b", "before", 1).await.unwrap();
    assert_eq!(next_event(&mut b_events).await.event, "before");
    let mut a_states = a.states();

    router.signal("KILL");
    router.wait_exit(Duration::from_secs(10));
    let mut router = start(&files);
    let restarted = Instant::now();
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        key,
        "a restart keeps the key"
    );

    // The old connection ends by a reset, not by its idle timeout.
    let state = wait_state(&mut a_states, |s| !connected(s)).await;
    assert!(
        !matches!(&state, State::Disconnected { reason, .. } if reason.contains("timed out")),
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

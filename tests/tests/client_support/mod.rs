//! Helpers shared by the `client_*` tests: a client config for a test
//! cluster with quick reconnects, and bounded waits.
#![allow(dead_code, unreachable_pub)]

use icom_client::{Client, ClientConfig, Event, Events, State, States};
use icom_tests::{ClientFiles, TestCluster, WAIT};

/// A client config for `files`, reconnecting quickly.
pub fn config_for(files: ClientFiles) -> ClientConfig {
    let mut c = ClientConfig::new(
        files.addr.to_string(),
        files.server_name,
        files.ca,
        files.cert,
        files.key,
    );
    c.agent = "icom-tests/client".into();
    c.connect_timeout_ms = 5_000;
    c.reconnect.initial_ms = 20;
    c.reconnect.max_ms = 200;
    c
}

/// A client config for `id` on `cluster` (a good certificate).
pub fn config(cluster: &TestCluster, id: &str) -> ClientConfig {
    config_for(cluster.client_files(id))
}

/// Connects `id` to `cluster`.
pub async fn connect(cluster: &TestCluster, id: &str) -> (Client, Events) {
    connect_with(config(cluster, id)).await
}

/// Connects with `config`.
pub async fn connect_with(config: ClientConfig) -> (Client, Events) {
    tokio::time::timeout(WAIT, Client::connect(config))
        .await
        .expect("connect within the bound")
        .expect("connect succeeds")
}

/// The next event, within the bound.
pub async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event within the bound")
        .expect("the events stream is open")
}

/// Waits for a state that `pred` accepts, within the bound.
pub async fn wait_state(states: &mut States, pred: impl Fn(&State) -> bool) -> State {
    tokio::time::timeout(WAIT, async {
        loop {
            let state = states.next().await.expect("the client is alive");
            if pred(&state) {
                return state;
            }
        }
    })
    .await
    .expect("the state within the bound")
}

/// Whether `s` is `Connected`.
pub fn connected(s: &State) -> bool {
    matches!(s, State::Connected { .. })
}

/// Whether `s` says the connection is gone.
pub fn disconnected(s: &State) -> bool {
    matches!(s, State::Disconnected { .. } | State::Reconnecting { .. })
}

/// Polls `f` until it is true, within the bound (for facts with no event).
///
/// # Panics
/// If it is not true within the bound.
pub async fn eventually(f: impl FnMut() -> bool) {
    assert!(
        icom_tests::eventually(f).await,
        "the condition within the bound"
    );
}

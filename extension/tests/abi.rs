//! Drives the built library as Arma 3 does: `dlopen`, the `RVExtension*`
//! symbols and the registered callback, never a Rust function of the crate.
//!
//! One scenario, run twice: against the debug build with unquoted string
//! arguments (which debug builds of arma-rs extensions accept), and against
//! a release build with every string quoted as SQF's `str` quotes it
//! (`"he said ""hi"""`), as the game passes them. Through it: connect to a
//! real router, events both ways with an icom-client peer, request/reply
//! both ways, 100 KB payloads fetched in pages, presence (`presence`
//! callbacks as servers come and go, 150 at once among them, and
//! `icom:peers`, by handle when long), a burst larger than the callback
//! window while the "engine" keeps answering -1 (queue full), bad
//! arguments, logs, and disconnect.
//!
//! The release library is `ARMA_EXTENSION_RELEASE_LIB` if set, else built
//! here with `cargo build -p icom-extension --release` into
//! `target/abi-release` (slow the first time, cached after). (Not an
//! `ICOM_*` name: the router's config reads every `ICOM_*` variable.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod game;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use icom_client::{Client, ClientConfig, Events, MsgPack};
use icom_tests::{TestCluster, WAIT};
use serde_json::{json, Value};

use game::{Game, Quoting};

#[test]
fn drives_the_built_library_as_the_game_does() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::start());

    let debug = game::built_library();
    scenario(&rt, &cluster, &debug, 0, Quoting::Unquoted, "game-debug");

    let release = release_library();
    scenario(&rt, &cluster, &release, 1, Quoting::Sqf, "game-release");
}

fn release_library() -> PathBuf {
    if let Some(path) = std::env::var_os("ARMA_EXTENSION_RELEASE_LIB") {
        return PathBuf::from(path);
    }
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("abi-release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "icom-extension", "--release", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running cargo build --release");
    assert!(status.success(), "the release build failed");
    target
        .join("release")
        .join(libloading::library_filename("icom"))
}

/// The whole scenario against one library.
fn scenario(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    library: &std::path::Path,
    slot: usize,
    quoting: Quoting,
    me: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let files = cluster.client_files(me);
    let config = dir.path().join("icom.toml");
    let toml_path = |p: &std::path::Path| p.display().to_string().replace('\\', "/");
    std::fs::write(
        &config,
        format!(
            "router = \"{}\"\nserver_name = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [logs]\ndir = \"logs\"\n",
            files.addr,
            files.server_name,
            toml_path(&files.ca),
            toml_path(&files.cert),
            toml_path(&files.key),
        ),
    )
    .unwrap();
    // The extension reads ICOM_CONFIG when it loads and when it connects.
    std::env::set_var("ICOM_CONFIG", &config);

    let peer_files = cluster.client_files(&format!("peer-{slot}"));
    let (peer, mut events) = rt
        .block_on(Client::connect(ClientConfig::new(
            peer_files.addr.to_string(),
            "localhost",
            peer_files.ca,
            peer_files.cert,
            peer_files.key,
        )))
        .unwrap();
    let peer_id = format!("peer-{slot}");

    let mut game = Game::load(library, slot, quoting);
    assert_eq!(
        game.feature_flags() & 4,
        4,
        "RVExtensionFeatureFlags has NoDefaultCall"
    );
    assert_eq!(game.version(), env!("CARGO_PKG_VERSION"));
    game.register_callback();

    // connect (Forge's argument order: address, server id)
    let (ticket, code) = game.call("icom:connect", &[game.s(""), game.s(me)]);
    assert_eq!(code, 0, "{ticket}");
    let state = game.next(|k, v| k == "state" && v["state"] == "connected");
    assert_eq!(state["server_id"], me);

    presence(rt, cluster, &mut game, me, &peer_id, slot);

    // game → peer, with unicode and quotes
    let data = json!({"coords": [1234.5, 5678.9, 0.0], "who": "Jürgen \"Ace\" 東京", "n": null, "ok": true});
    let (ticket, code) = game.call(
        "icom:send",
        &[
            game.s(&peer_id),
            game.s("supply_drop"),
            game.s(&data.to_string()),
        ],
    );
    assert_eq!(code, 0, "{ticket}");
    let ack = game.next(|k, v| k == "ack" && v["id"] == ticket.as_str());
    assert_eq!(
        (ack["ok"].clone(), ack["delivered"].clone()),
        (json!(true), json!(1))
    );
    let got = next_event(rt, &mut events);
    assert_eq!((got.event.as_str(), got.from.as_str()), ("supply_drop", me));
    assert_eq!(got.json().unwrap(), data);

    // Forge's names: send_event and broadcast
    let (ticket, code) = game.call(
        "icom:send_event",
        &[game.s(&peer_id), game.s("forge_event"), game.s("[1,2,3]")],
    );
    assert_eq!(code, 0, "{ticket}");
    assert_eq!(
        next_event(rt, &mut events).json().unwrap(),
        json!([1, 2, 3])
    );
    let (_, code) = game.call(
        "icom:broadcast",
        &[game.s("global_alert"), game.s("{\"text\":\"restart\"}")],
    );
    assert_eq!(code, 0);
    assert_eq!(next_event(rt, &mut events).event, "global_alert");

    // send_to with a target map and options
    let target = json!({"servers": [peer_id]}).to_string();
    let (ticket, code) = game.call(
        "icom:send_to",
        &[
            game.s(&target),
            game.s("spawn_mission"),
            game.s("{\"id\":7}"),
            game.s("{\"ttl\":60}"),
        ],
    );
    assert_eq!(code, 0, "{ticket}");
    assert_eq!(next_event(rt, &mut events).event, "spawn_mission");
    let ack = game.next(|k, v| k == "ack" && v["id"] == ticket.as_str());
    assert_eq!(ack["ok"], true);

    // peer → game
    let secret = "TOP-SECRET-PAYLOAD";
    let sent = json!({"text": "he said \"hi\"", "nested": [[1, {"a": null}]], "secret": secret, "big": 16_777_217});
    rt.block_on(peer.send(me, "global_alert", &sent)).unwrap();
    let ev = game.next(|k, v| k == "event" && v["event"] == "global_alert");
    assert_eq!(ev["from"], peer_id);
    assert_eq!(ev["data"], sent);
    assert!(ev["id"].is_string() && ev["sent_ms"].is_string(), "{ev}");

    // request from the game, answered by the peer
    let (ticket, code) = game.call(
        "icom:request",
        &[
            game.s(&peer_id),
            game.s("bank_balance"),
            game.s("{\"player\":\"76561198000000000\"}"),
            "5".into(),
        ],
    );
    assert_eq!(code, 0, "{ticket}");
    let request = next_event(rt, &mut events);
    assert_eq!(request.event, "bank_balance");
    rt.block_on(request.reply(json!({"balance": 1500})))
        .unwrap();
    let reply = game.next(|k, v| k == "reply" && v["id"] == ticket.as_str());
    assert_eq!(reply["data"], json!({"balance": 1500}));
    assert_eq!(reply["from"], peer_id);

    // request from the peer, answered by the game
    let asking = {
        let peer = peer.clone();
        let me = me.to_owned();
        rt.spawn(async move { peer.request(&me, "whoami", json!({"q": 1}), WAIT).await })
    };
    let ev = game.next(|k, v| k == "event" && v["event"] == "whoami");
    let handle = ev["request"].as_str().unwrap().to_owned();
    let (ticket, code) = game.call(
        "icom:reply",
        &[game.s(&handle), game.s("{\"name\":\"game\"}")],
    );
    assert_eq!(code, 0, "{ticket}");
    let answer = rt.block_on(asking).unwrap().unwrap();
    assert_eq!(answer.json().unwrap(), json!({"name": "game"}));
    let ack = game.next(|k, v| k == "ack" && v["id"] == ticket.as_str());
    assert_eq!(ack["ok"], true);

    // 100 KB both ways: the game gets it by handle and fetches it in pages
    let big =
        json!({"blob": "ü✓".repeat(20_000), "list": (0..2000).collect::<Vec<_>>(), "q": "\"x\""});
    rt.block_on(peer.send(me, "big_state", &big)).unwrap();
    let ev = game.next(|k, v| k == "event" && v["event"] == "big_state");
    assert_eq!(ev["data"], big);
    assert!(game.fetched_pages() > 10, "{} pages", game.fetched_pages());
    let (ticket, code) = game.call(
        "icom:send",
        &[
            game.s(&peer_id),
            game.s("big_back"),
            game.s(&big.to_string()),
        ],
    );
    assert_eq!(code, 0, "{ticket}");
    assert_eq!(next_event(rt, &mut events).json().unwrap(), big);
    // ... and a big reply
    let (ticket, code) = game.call(
        "icom:request",
        &[
            game.s(&peer_id),
            game.s("big_request"),
            game.s("null"),
            "5".into(),
        ],
    );
    assert_eq!(code, 0);
    let request = next_event(rt, &mut events);
    rt.block_on(request.reply(&big)).unwrap();
    let reply = game.next(|k, v| k == "reply" && v["id"] == ticket.as_str());
    assert_eq!(reply["data"], big);

    // a burst larger than the callback window, while the engine keeps
    // answering -1 now and then: all of it arrives, once
    let burst = 300;
    rt.block_on(async {
        for n in 0..burst {
            peer.send(me, "tick", MsgPack(rmp_serde::to_vec(&n).unwrap().into()))
                .await
                .unwrap();
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < burst {
        let ev = game.next(|k, v| k == "event" && v["event"] == "tick");
        assert!(
            seen.insert(ev["data"].as_u64().unwrap()),
            "a duplicate: {ev}"
        );
    }
    assert!(game.refusals() > 0, "the engine said -1 at least once");

    // bad arguments: clear errors, no panic
    let (out, code) = game.call("icom:send", &[game.s(&peer_id), game.s("e")]);
    assert_eq!(
        (out.as_str(), code),
        ("", 22),
        "wrong count: arma-rs's code 2x"
    );
    let (out, code) = game.call(
        "icom:send",
        &[game.s(&peer_id), game.s("e"), game.s("{'bad':1}")],
    );
    assert_eq!(code, 9);
    assert!(out.contains("not valid JSON"), "{out}");
    let (out, code) = game.call(
        "icom:send_to",
        &[game.s("[]"), game.s("e"), game.s("1"), game.s("")],
    );
    assert_eq!(code, 9);
    assert!(out.contains("bad target"), "{out}");
    let (_, code) = game.call("icom:launch_missiles", &[]);
    assert_eq!(code, 1, "unknown command");
    let (out, code) = game.call("icom:fetch", &[game.s("999999"), "0".into()]);
    assert_eq!(code, 9);
    assert!(out.contains("no payload"), "{out}");

    // status still answers, and nothing was shed
    let (out, code) = game.call("icom:status", &[]);
    assert_eq!(code, 0, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["state"], "connected");
    assert_eq!(status["server_id"], me);
    assert_eq!(status["shed"]["total"], 0);
    assert_eq!(status["callbacks"]["credit"], true);

    // disconnect
    let (_, code) = game.call("icom:disconnect", &[]);
    assert_eq!(code, 0);
    game.next(|k, v| k == "state" && v["state"] == "closed");

    // the logs: per-module files, no payloads in them
    let logs = dir.path().join("logs");
    let connection = game::wait_for_file(&logs.join("connection.log"), "connected");
    assert!(connection.contains(me), "{connection}");
    let events_log = game::wait_for_file(&logs.join("events.log"), "supply_drop");
    for text in [&connection, &events_log] {
        assert!(!text.contains(secret), "a payload reached the logs");
        assert!(!text.contains("PRIVATE KEY"));
    }
    game::wait_for_file(&logs.join("errors.log"), "bad target");

    rt.block_on(peer.close());
    std::env::remove_var("ICOM_CONFIG");
}

/// Presence: the servers already connected come first as `presence`
/// callbacks, then each that comes and goes, consistently (never online
/// twice, never offline unless online); `icom:peers` answers at once, by
/// handle when long.
fn presence(
    rt: &tokio::runtime::Runtime,
    cluster: &TestCluster,
    game: &mut Game,
    me: &str,
    peer_id: &str,
    slot: usize,
) {
    let mut view = BTreeSet::new();
    follow(game, &mut view, |v| v.contains(peer_id));
    let (out, code) = game.call("icom:peers", &[]);
    assert_eq!(code, 0, "{out}");
    let peers = game.answer(&out);
    let peers: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        peers.contains(&peer_id) && !peers.contains(&me),
        "{peers:?}"
    );

    // 150 servers with long names at once: every join and every leave
    // arrives, in batches, and `icom:peers` is too long to answer inline.
    let crowd: Vec<String> = (0..150)
        .map(|n| format!("crowd-{slot}-{n:03}-{}", "x".repeat(50)))
        .collect();
    let raws = rt.block_on(async {
        let mut raws = Vec::new();
        for id in &crowd {
            raws.push(cluster.raw(id).await);
        }
        raws
    });
    follow(game, &mut view, |v| crowd.iter().all(|id| v.contains(id)));
    let (out, code) = game.call("icom:peers", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"handle\""), "{out}");
    let listed = game.answer(&out);
    for id in &crowd {
        assert!(listed.as_array().unwrap().contains(&json!(id)), "{id}");
    }
    drop(raws);
    follow(game, &mut view, |v| crowd.iter().all(|id| !v.contains(id)));
    assert!(view.contains(peer_id), "{view:?}");
}

/// Applies `presence` callbacks (`[[server_id, online], ...]`) to `view`
/// until `done(view)`; a change that does not fit the view fails.
fn follow(game: &mut Game, view: &mut BTreeSet<String>, done: impl Fn(&BTreeSet<String>) -> bool) {
    while !done(view) {
        let batch = game.next(|k, _| k == "presence");
        for pair in batch.as_array().expect("an array of pairs") {
            let id = pair[0].as_str().unwrap().to_owned();
            if pair[1].as_bool().unwrap() {
                assert!(view.insert(id.clone()), "{id} online twice");
            } else {
                assert!(view.remove(&id), "{id} offline while not online");
            }
        }
    }
}

fn next_event(rt: &tokio::runtime::Runtime, events: &mut Events) -> icom_client::Event {
    rt.block_on(async { tokio::time::timeout(WAIT, events.next()).await })
        .expect("the peer gets an event in time")
        .expect("the peer's event stream is open")
}

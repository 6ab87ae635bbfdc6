//! How long each command takes to return, measured through the C ABI as
//! the game calls it: the optimised library loaded with `dlopen`, connected
//! to a real router (in-process), `RVExtensionArgs` with SQF-quoted
//! arguments and the engine's 10,240-byte buffer. Prints a markdown table of
//! p50 / p99 / p99.9 / max per command (the target: p99 under 100 µs).
//!
//! `cargo bench -p icom-extension --bench abi` (set `BENCH_ITERATIONS` to
//! change the 20,000 calls per command).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/game/mod.rs"]
mod game;

use std::ffi::{c_char, CString};
use std::time::{Duration, Instant};

use game::{Game, Quoting, OUTPUT_SIZE};
use icom_tests::TestCluster;

fn main() {
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = rt.block_on(TestCluster::start());
    let dir = tempfile::tempdir().unwrap();
    let files = cluster.client_files("bench");
    let config = dir.path().join("icom.toml");
    let path = |p: &std::path::Path| p.display().to_string().replace('\\', "/");
    std::fs::write(
        &config,
        format!(
            "router = \"{}\"\nserver_name = \"localhost\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [logs]\ndir = \"logs\"\n[limits]\ncommands_in_flight = 1000000\n",
            files.addr,
            path(&files.ca),
            path(&files.cert),
            path(&files.key)
        ),
    )
    .unwrap();
    std::env::set_var("ICOM_CONFIG", &config);
    // A peer to send to, and to ask.
    let peer_files = cluster.client_files("peer");
    let (peer, mut events) = rt
        .block_on(icom_client::Client::connect(
            icom_client::ClientConfig::new(
                peer_files.addr.to_string(),
                "localhost",
                peer_files.ca,
                peer_files.cert,
                peer_files.key,
            ),
        ))
        .unwrap();
    rt.spawn(async move { while events.next().await.is_some() {} });

    let library = game::built_library();
    let mut g = Game::load(&library, 0, Quoting::Sqf);
    g.register_callback();
    let (_, code) = g.call("icom:connect", &[g.s(""), g.s("")]);
    assert_eq!(code, 0);
    g.next(|k, v| k == "state" && v["state"] == "connected");

    // One received event, so that `reply` has something to answer.
    rt.block_on(peer.send("bench", "ask", serde_json::json!({"q": 1})))
        .unwrap();
    let asked = g.next(|k, v| k == "event" && v["event"] == "ask");
    let request = asked["request"].as_str().unwrap().to_owned();

    let small = r#"{"coords":[1234.5,5678.9,0],"kind":"ammo","crates":4}"#;
    let cases: Vec<(&str, &str, Vec<String>)> = vec![
        ("version", "icom:version", vec![]),
        ("status", "icom:status", vec![]),
        (
            "send (55-byte JSON)",
            "icom:send",
            vec![g.s("peer"), g.s("supply_drop"), g.s(small)],
        ),
        (
            "send_event (Forge)",
            "icom:send_event",
            vec![g.s("peer"), g.s("supply_drop"), g.s(small)],
        ),
        (
            "broadcast",
            "icom:broadcast",
            vec![g.s("global_alert"), g.s(r#"{"text":"restart in 5 min"}"#)],
        ),
        (
            "send_to (group, ttl)",
            "icom:send_to",
            vec![
                g.s(r#"{"servers":["peer"]}"#),
                g.s("spawn_mission"),
                g.s(small),
                g.s(r#"{"ttl":60}"#),
            ],
        ),
        (
            "request",
            "icom:request",
            vec![g.s("peer"), g.s("bank"), g.s(small), "5".into()],
        ),
        ("reply", "icom:reply", vec![g.s(&request), g.s(small)]),
        ("ready (credit)", "icom:ready", vec!["0".into()]),
        (
            "fetch (no such payload)",
            "icom:fetch",
            vec![g.s("1"), "0".into()],
        ),
        (
            "send, bad JSON (error path)",
            "icom:send",
            vec![g.s("peer"), g.s("e"), g.s("{bad")],
        ),
        ("forget", "icom:forget", vec![g.s("restart-notice")]),
    ];

    println!("| command | calls | p50 | p99 | p99.9 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut out = vec![0 as c_char; OUTPUT_SIZE];
    for (label, function, args) in &cases {
        let function = CString::new(*function).unwrap();
        let args: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap())
            .collect();
        let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
        // warm up
        for _ in 0..200 {
            g.call_raw(&function, &argv, &mut out);
        }
        g.settle();
        let mut times = Vec::with_capacity(iterations);
        for i in 0..iterations {
            let started = Instant::now();
            let code = g.call_raw(&function, &argv, &mut out);
            times.push(started.elapsed());
            assert!(
                code == 0 || label.contains("error") || label.contains("no such"),
                "{label}: code {code}"
            );
            if i % 100 == 99 {
                // A frame's worth of calls; then the callbacks come back.
                g.settle();
            }
        }
        g.settle();
        times.sort_unstable();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            times.len(),
            us(at(0.5)),
            us(at(0.99)),
            us(at(0.999)),
            us(*times.last().unwrap())
        );
    }
    let (status, _) = g.call("icom:status", &[]);
    eprintln!("status after the run: {status}");
    std::env::remove_var("ICOM_CONFIG");
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

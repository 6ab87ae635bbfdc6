//! `icom-bench`, every scenario once at a tiny size: the built binary with
//! `--json`, its JSON line parsed, and the counts checked to add up (sent =
//! acked = delivered, and so on). Never a verdict on time: speed is for
//! `BENCHMARKS.md`, measured on a quiet machine. Once more against a router
//! already running, named by the connection flags (`--router`, `--ca`,
//! `--cert '{id}.pem'`, ...).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::Command;

use icom_tests::TestCluster;
use serde_json::Value;

/// Runs `icom-bench --json <args>` and returns its JSON line, after
/// checking that it exited 0 (every count added up).
fn bench<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Value {
    let bench = icom_tests::workspace_bin("icom-bench", "icom-bench");
    let out = Command::new(bench)
        .arg("--json")
        .arg("--server-bin")
        .arg(server_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("icom-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!("no JSON line from {args:?}\nstdout: {stdout}\nstderr: {stderr}")
        });
    let v: Value = serde_json::from_str(line).expect("the last line is JSON");
    assert!(
        out.status.success() && v["ok"] == true,
        "{args:?}: exit {:?}, failures {}\nstderr: {stderr}",
        out.status.code(),
        v["failures"]
    );
    v
}

fn server_bin() -> PathBuf {
    icom_tests::workspace_bin("icom-server", "icom-server")
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count '{key}' in {v}"))
}

#[test]
fn tput_counts_every_event_acked_and_delivered() {
    let v = bench(&["tput", "--events", "300", "--window", "32", "--vs-limit"]);
    assert_eq!(v["scenario"], "tput");
    assert_eq!(n(&v, "sent"), 300);
    assert_eq!(n(&v, "acked"), 300);
    assert_eq!(n(&v, "delivered"), 300);
    assert_eq!(n(&v, "acked_deliveries"), 300);
    assert_eq!(n(&v, "failed"), 0);
    assert_eq!(n(&v, "limit_acked"), 300);
    assert_eq!(n(&v, "limit_received"), 300);
    assert!(v["router_cpu_s"].is_number(), "{v}");
    assert!(v["delivery_p50_us"].is_number(), "{v}");
    assert!(v["ratio_vs_limit"].is_number(), "{v}");
}

#[test]
fn tput_and_fanout_with_plain_quinn_peers_count_the_same() {
    let v = bench(&["tput", "--events", "200", "--window", "16", "--plain"]);
    assert_eq!(n(&v, "acked"), 200);
    assert_eq!(n(&v, "delivered"), 200);
    assert!(v["link"].as_str().unwrap().contains("plain"), "{v}");
    assert!(v["router_cpu_s_per_million_events"].is_number(), "{v}");
    let v = bench(&[
        "fanout",
        "--events",
        "40",
        "--receivers",
        "3",
        "--window",
        "8",
        "--plain",
    ]);
    assert_eq!(n(&v, "acked_deliveries"), 120);
    assert_eq!(n(&v, "delivered"), 120);
    // The router binary too: the plain peers load its certificates.
    let v = bench(&["--spawn", "tput", "--events", "100", "--plain"]);
    assert_eq!(n(&v, "delivered"), 100);
}

/// `router` (`--naive` or `--floor`) routes tput under a plain client and
/// fanout 1 → 3 (with `fanout_client`: `--plain`, or nothing for
/// `icom-client`), every event acked and delivered.
fn routes_tput_and_fanout(router: &str, fanout_client: &[&str]) {
    let v = bench(&[
        router, "tput", "--events", "200", "--window", "16", "--plain",
    ]);
    assert_eq!((n(&v, "acked"), n(&v, "delivered")), (200, 200));
    let name = router.trim_start_matches('-');
    assert!(v["method"].as_str().unwrap().contains(name), "{v}");
    assert!(v["router_cpu_s_per_million_events"].is_number(), "{v}");
    let mut fanout = vec![
        router,
        "fanout",
        "--events",
        "40",
        "--receivers",
        "3",
        "--window",
        "8",
    ];
    fanout.extend_from_slice(fanout_client);
    let v = bench(&fanout);
    assert_eq!((n(&v, "acked_deliveries"), n(&v, "delivered")), (120, 120));
}

#[test]
fn the_naive_router_routes_tput_and_fanout_for_both_kinds_of_client() {
    routes_tput_and_fanout("--naive", &[]);
}

#[test]
fn the_floor_router_routes_tput_and_fanout_for_both_kinds_of_client() {
    routes_tput_and_fanout("--floor", &["--plain"]);
    // icom-client, an event larger than a packet: the floor reads a
    // stream of several chunks and writes a delivery of several packets.
    let v = bench(&["--floor", "tput", "--events", "100", "--size", "5000"]);
    assert_eq!((n(&v, "acked"), n(&v, "delivered")), (100, 100));
}

#[test]
fn limit_counts_what_the_sink_received() {
    let v = bench(&["limit", "--events", "300", "--window", "32"]);
    assert_eq!(v["scenario"], "limit");
    assert_eq!(n(&v, "acked"), 300);
    assert_eq!(n(&v, "received"), 300);
}

#[test]
fn persist_counts_every_durable_send_stored_and_every_plain_one_delivered() {
    let v = bench(&[
        "persist", "--events", "300", "--window", "32", "--ids", "50",
    ]);
    assert_eq!(v["scenario"], "persist");
    for phase in ["persist", "ttl"] {
        assert_eq!(n(&v, &format!("{phase}_sent")), 300, "{v}");
        assert_eq!(n(&v, &format!("{phase}_acked")), 300, "{v}");
        assert_eq!(n(&v, &format!("{phase}_queued")), 300, "{v}");
        assert_eq!(n(&v, &format!("{phase}_failed")), 0, "{v}");
        assert!(v[format!("{phase}_vs_plain")].is_number(), "{v}");
    }
    assert_eq!(n(&v, "plain_acked"), 300);
    assert_eq!(n(&v, "plain_delivered"), 300);
    assert!(
        v["persist_router_cpu_s_per_million_events"].is_number(),
        "{v}"
    );
}

#[test]
fn fanout_delivers_every_broadcast_to_every_receiver() {
    let v = bench(&[
        "fanout",
        "--events",
        "40",
        "--receivers",
        "3",
        "--window",
        "8",
    ]);
    assert_eq!(n(&v, "sent"), 40);
    assert_eq!(n(&v, "acked"), 40);
    assert_eq!(n(&v, "acked_deliveries"), 120);
    assert_eq!(n(&v, "delivered"), 120);
}

#[test]
fn lat_answers_every_request() {
    let v = bench(&["lat", "--rate", "200", "--requests", "20"]);
    assert_eq!(n(&v, "requests"), 20);
    assert_eq!(n(&v, "replied"), 20);
    assert_eq!(n(&v, "answered"), 20);
    assert_eq!(n(&v, "failed"), 0);
    assert!(v["rtt_p99_us"].is_number(), "{v}");
    assert!(v["one_way_p50_us"].is_number(), "{v}");
}

#[test]
fn idle_connects_every_server_to_the_router_binary() {
    let v = bench(&["idle", "--servers", "20", "--settle-secs", "1"]);
    assert_eq!(n(&v, "servers"), 20);
    assert_eq!(n(&v, "connected"), 20);
    assert!(n(&v, "router_rss_kib") > 0, "{v}");
    assert!(v["rss_per_connection_kib"].is_number(), "{v}");
}

#[test]
fn join_welcomes_everyone_and_presence_settles() {
    let v = bench(&["join", "--servers", "30"]);
    assert_eq!(n(&v, "servers"), 30);
    assert_eq!(n(&v, "welcomed"), 30);
    assert!(v["settle_seconds"].is_number(), "{v}");
    // A server learns of each other one once: from its welcome or from one
    // presence message, never both.
    let messages = n(&v, "presence_messages");
    assert!((1..=30 * 29).contains(&messages), "{v}");
    assert!(n(&v, "presence_batches") >= 1, "{v}");
}

#[test]
fn wan_runs_through_the_impairment_proxy() {
    let v = bench(&[
        "wan",
        "--rtt-ms",
        "20",
        "--loss",
        "0.02",
        "lat",
        "--requests",
        "20",
    ]);
    assert_eq!(n(&v, "replied"), 20);
    assert!(n(&v, "proxy_packets") > 0, "{v}");
    let v = bench(&[
        "wan", "--rtt-ms", "10", "tput", "--events", "200", "--window", "32",
    ]);
    assert_eq!(n(&v, "delivered"), 200);
}

#[test]
fn soak_samples_the_router_while_traffic_and_churn_run() {
    let v = bench(&[
        "soak",
        "--seconds",
        "3",
        "--sample-secs",
        "1",
        "--servers",
        "3",
        "--rate",
        "20",
    ]);
    assert!(n(&v, "samples") >= 2, "{v}");
    assert!(n(&v, "ops") > 0, "{v}");
    assert!(n(&v, "rss_kib_last") > 0, "{v}");
    assert!(n(&v, "fds_last") > 0, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_already_running_is_reached_with_the_connection_flags() {
    let cluster = TestCluster::start().await;
    let files = cluster.client_files("server_1");
    cluster.client_files("server_2");
    let id = |ext: &str| files.cert.with_file_name(format!("{{id}}.{ext}"));
    let args: Vec<OsString> = vec![
        "--router".into(),
        files.addr.to_string().into(),
        "--server-name".into(),
        files.server_name.clone().into(),
        "--ca".into(),
        files.ca.clone().into(),
        "--cert".into(),
        id("pem").into(),
        "--key".into(),
        id("key").into(),
        "tput".into(),
        "--events".into(),
        "100".into(),
        "--window".into(),
        "16".into(),
    ];
    let v = tokio::task::spawn_blocking(move || bench(&args))
        .await
        .unwrap();
    assert_eq!(n(&v, "acked"), 100);
    assert_eq!(n(&v, "delivered"), 100);
    assert!(
        v["method"].as_str().unwrap().starts_with("remote router"),
        "{v}"
    );
}

#[test]
fn cluster_tput_fanout_and_lat_count_every_event_across_two_routers() {
    let v = bench(&["--cluster", "tput", "--events", "300", "--window", "32"]);
    assert_eq!(
        (n(&v, "sent"), n(&v, "acked"), n(&v, "delivered")),
        (300, 300, 300)
    );
    assert!(v["nats_cpu_s"].is_number(), "{v}");
    assert!(v["method"].as_str().unwrap().contains("two routers"), "{v}");
    let v = bench(&[
        "--cluster",
        "fanout",
        "--events",
        "40",
        "--receivers",
        "3",
        "--window",
        "8",
    ]);
    assert_eq!((n(&v, "acked_deliveries"), n(&v, "delivered")), (120, 120));
    let v = bench(&["--cluster", "lat", "--rate", "200", "--requests", "20"]);
    assert!(v["rtt_p50_us"].is_number(), "{v}");
}

/// Runs icom-bench with `args` and returns its stderr, checking that it
/// refused them (exit 1).
fn refused(args: &[&str]) -> String {
    let out = Command::new(icom_tests::workspace_bin("icom-bench", "icom-bench"))
        .args(args)
        .output()
        .expect("icom-bench runs");
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cluster_refuses_the_scenarios_that_measure_one_router() {
    let err = refused(&["--cluster", "join", "--servers", "5"]);
    assert!(
        err.contains("--cluster runs tput, fanout, lat and persist"),
        "{err}"
    );
    for args in [
        ["--naive", "persist", "--events", "10"],
        ["--floor", "lat", "--requests", "10"],
    ] {
        let err = refused(&args);
        assert!(
            err.contains("--naive and --floor run tput and fanout"),
            "{err}"
        );
    }
}

#[test]
fn cluster_persist_stores_every_durable_send_in_jetstream_with_three_replicas() {
    let v = bench(&[
        "--cluster",
        "--nats-nodes",
        "3",
        "persist",
        "--events",
        "200",
        "--window",
        "32",
    ]);
    for phase in ["persist", "ttl"] {
        assert_eq!(
            (
                n(&v, &format!("{phase}_acked")),
                n(&v, &format!("{phase}_queued"))
            ),
            (200, 200),
            "{v}"
        );
        assert!(v[format!("{phase}_nats_cpu_s")].is_number(), "{v}");
    }
    assert!(
        v["method"].as_str().unwrap().contains("nats_nodes=3"),
        "{v}"
    );
}

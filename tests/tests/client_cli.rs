//! The `icom` binary against a real router: what it prints, and its exit
//! codes (0 success, 2 usage, 3 refused, 4 timeout).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use client_support::{connect, next_event};
use icom_tests::{ClientFiles, TestCluster, WAIT};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

/// The `icom` binary of this workspace, built once for this test run.
fn icom_bin() -> PathBuf {
    icom_tests::workspace_bin("icom-client", "icom")
}

/// `icom` with the connection flags of `files`.
fn icom(files: &ClientFiles) -> Command {
    icom_to(files, &[files.addr.to_string()])
}

/// `icom` with the connection flags of `files`, and one `--router` flag
/// for each of `routers`.
fn icom_to(files: &ClientFiles, routers: &[String]) -> Command {
    let mut cmd = Command::new(icom_bin());
    for router in routers {
        cmd.arg("--router").arg(router);
    }
    cmd.arg("--server-name")
        .arg(&files.server_name)
        .arg("--ca")
        .arg(&files.ca)
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::time::timeout(WAIT * 2, cmd.output())
        .await
        .expect("icom ends within the bound")
        .expect("icom runs")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_else(|| {
        panic!(
            "no output; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("icom exits, not killed")
}

#[tokio::test]
async fn listen_prints_what_send_sent_as_a_json_line() {
    let cluster = TestCluster::start().await;
    let sender = cluster.client_files("server_1");
    let receiver = cluster.client_files("server_2");

    let mut listen = icom(&receiver);
    listen
        .args(["listen", "--count", "1", "--timeout", "20000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut listener = listen.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(listener.stdout.take().unwrap()).lines();

    // Until the listener is connected, the router acks not_found (exit 3).
    let ack = tokio::time::timeout(WAIT * 2, async {
        loop {
            let mut send = icom(&sender);
            send.args([
                "send",
                "--to",
                "server_2",
                "--event",
                "supply_drop",
                "--data",
                r#"{"coords":[1.5,2.5],"kind":"ammo"}"#,
            ]);
            let out = run(send).await;
            match code(&out) {
                0 => return stdout_json(&out),
                3 => tokio::time::sleep(Duration::from_millis(50)).await,
                c => panic!("send exited {c}: {}", String::from_utf8_lossy(&out.stderr)),
            }
        }
    })
    .await
    .expect("the send is delivered within the bound");
    assert_eq!(ack["ok"], true);
    assert_eq!(ack["delivered"], 1);

    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("a line");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["from"], "server_1");
    assert_eq!(event["id"], ack["id"]);
    assert_eq!(event["event"], "supply_drop");
    assert_eq!(
        event["data"],
        serde_json::json!({"coords": [1.5, 2.5], "kind": "ammo"})
    );
    assert_eq!(event["persist_id"], serde_json::Value::Null);
    assert_eq!(event["reply_to"], serde_json::Value::Null);
    assert!(event["sent_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let status = tokio::time::timeout(WAIT, listener.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn broadcast_is_one_line_for_cron() {
    let cluster = TestCluster::start().await;
    let (_b, mut eb) = connect(&cluster, "server_2").await;
    let mut cmd = icom(&cluster.client_files("ops"));
    cmd.args([
        "broadcast",
        "--event",
        "global_alert",
        "--data",
        r#""restart in 5 min""#,
    ]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["delivered"], 1);
    let e = next_event(&mut eb).await;
    assert_eq!(e.from, "ops");
    assert_eq!(e.json().unwrap(), "restart in 5 min");
}

#[tokio::test]
async fn a_refused_send_exits_3_and_prints_the_ack() {
    let cluster = TestCluster::start().await;
    let mut cmd = icom(&cluster.client_files("server_1"));
    cmd.args(["send", "--to", "nobody", "--event", "x", "--data", "1"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 3);
    let ack = stdout_json(&out);
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"]["code"], "not_found");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));

    let mut forget = icom(&cluster.client_files("server_1"));
    forget.args(["forget", "no-such-notice"]);
    let out = run(forget).await;
    assert_eq!(code(&out), 3);
    assert_eq!(stdout_json(&out)["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_refused_certificate_exits_3_and_says_so() {
    let cluster = TestCluster::start().await;
    let bad = cluster.pki().other_ca("server_1");
    let mut cmd = icom(&cluster.files_for("intruder", &bad));
    cmd.args(["ping", "--count", "1"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the router refused this client's certificate"),
        "{stderr}"
    );
}

#[tokio::test]
async fn timeouts_exit_4() {
    let cluster = TestCluster::start().await;
    // A server that receives the request and never replies.
    let (_b, _eb) = connect(&cluster, "server_2").await;
    let mut cmd = icom(&cluster.client_files("server_1"));
    cmd.args([
        "request",
        "--to",
        "server_2",
        "--event",
        "q",
        "--data",
        "1",
        "--timeout",
        "300",
    ]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply within"));

    // No router at all on this port.
    let mut files = cluster.client_files("server_1");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    files.addr = socket.local_addr().unwrap();
    let mut cmd = icom(&files);
    cmd.args(["--connect-timeout", "500", "ping", "--count", "1"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));

    // listen --count that does not come in time.
    let mut cmd = icom(&cluster.client_files("server_3"));
    cmd.args(["listen", "--count", "1", "--timeout", "200"]);
    assert_eq!(code(&run(cmd).await), 4);
}

#[tokio::test]
async fn request_prints_the_reply() {
    let cluster = TestCluster::start().await;
    let (_b, mut eb) = connect(&cluster, "server_2").await;
    tokio::spawn(async move {
        while let Some(e) = eb.next().await {
            e.reply(serde_json::json!({"balance": 500})).await.unwrap();
        }
    });
    let mut cmd = icom(&cluster.client_files("server_1"));
    cmd.args([
        "request",
        "--to",
        "server_2",
        "--event",
        "balance",
        "--data",
        r#""alice""#,
    ]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let reply = stdout_json(&out);
    assert_eq!(reply["from"], "server_2");
    assert_eq!(reply["data"], serde_json::json!({"balance": 500}));
    assert!(reply["reply_to"].is_u64());
}

#[tokio::test]
async fn ping_prints_round_trips() {
    let cluster = TestCluster::start().await;
    let mut cmd = icom(&cluster.client_files("server_1"));
    cmd.args(["ping", "--count", "3", "--interval", "10"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("seq=1 time=") && lines[0].ends_with(" ms"),
        "{text}"
    );
}

#[tokio::test]
async fn config_file_and_environment_give_the_connection() {
    let cluster = TestCluster::start().await;
    let files = cluster.client_files("server_1");
    let toml = format!(
        "router = \"{}\"\nserver_name = \"localhost\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        files.addr, files.ca, files.cert, files.key
    );
    let path = cluster.dir().join("icom.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(icom_bin());
    cmd.arg("--config")
        .arg(&path)
        .args(["ping", "--count", "1"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));

    let mut cmd = Command::new(icom_bin());
    cmd.env("ICOM_ROUTER", files.addr.to_string())
        .env("ICOM_SERVER_NAME", "localhost")
        .env("ICOM_CA", &files.ca)
        .env("ICOM_CERT", &files.cert)
        .env("ICOM_KEY", &files.key)
        .args(["ping", "--count", "1"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));

    // A flag beats the file: a wrong router on the command line fails.
    let mut cmd = Command::new(icom_bin());
    cmd.arg("--config")
        .arg(&path)
        .args(["--router", "127.0.0.1:1", "--connect-timeout", "300"])
        .args(["ping", "--count", "1"]);
    assert_ne!(code(&run(cmd).await), 0);
}

#[tokio::test]
async fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let mut cmd = Command::new(icom_bin());
    cmd.args(["send", "--to", "a"]);
    assert_eq!(code(&run(cmd).await), 2);

    let mut cmd = Command::new(icom_bin());
    cmd.args(["send", "--to", "a", "--event", "e", "--data", "{not json"]);
    assert_eq!(code(&run(cmd).await), 2);

    let mut cmd = Command::new(icom_bin());
    cmd.arg("--help");
    let out = run(cmd).await;
    assert_eq!(code(&out), 0);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Exit status",
        "3  refused",
        "4  timed out",
        "--dev",
        "--config",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    // The benchmarks are `icom-bench`, a crate of their own.
    assert!(
        !help.contains("bench"),
        "icom --help mentions bench:\n{help}"
    );
}

#[tokio::test]
async fn persist_ttl_and_forget() {
    let cluster = TestCluster::start().await;
    let files = cluster.client_files("server_1");

    // --ttl stores it for an offline server.
    let mut cmd = icom(&files);
    cmd.args([
        "send", "--to", "server_9", "--event", "bank", "--data", "500",
    ])
    .args(["--ttl", "60000"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["queued"], 1);

    // --persist auto: the router names it; forget drops it.
    let mut cmd = icom(&files);
    cmd.args([
        "broadcast",
        "--event",
        "notice",
        "--data",
        r#""hi""#,
        "--persist",
        "auto",
    ]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let pid = stdout_json(&out)["persist_id"]
        .as_str()
        .expect("a persist id")
        .to_owned();
    let mut cmd = icom(&files);
    cmd.args(["forget", &pid]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["ok"], true);
}

#[tokio::test]
async fn status_with_two_routers_names_the_one_it_is_on() {
    let cluster = TestCluster::start().await;
    let files = cluster.client_files("server_1");
    let silent = icom_tests::silent_udp_socket();
    let (dead, live) = (
        silent.local_addr().unwrap().to_string(),
        files.addr.to_string(),
    );

    // The first router does not answer: the second does.
    let mut cmd = icom_to(&files, &[dead.clone(), live.clone()]);
    cmd.args(["--connect-timeout", "1000", "status"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let status = stdout_json(&out);
    assert_eq!(status["state"], "connected");
    assert_eq!(status["router"], live.as_str());
    assert_eq!(status["server_id"], "server_1");

    // In the other order, the first answers.
    let mut cmd = icom_to(&files, &[live.clone(), dead.clone()]);
    cmd.arg("status");
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["router"], live.as_str());

    // Sends go through the one that answers.
    let mut cmd = icom_to(&files, &[dead.clone(), live]);
    cmd.args([
        "--connect-timeout",
        "1000",
        "send",
        "--to",
        "server_1",
        "--event",
        "via_the_second",
    ]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout_json(&out)["delivered"], 1);
    drop(silent);
}

#[tokio::test]
async fn peers_prints_who_is_connected_one_line_each() {
    let cluster = TestCluster::start().await;
    let _b = cluster.raw("b-server").await;
    let _a = cluster.raw("a-server").await;
    let mut cmd = icom(&cluster.client_files("ops"));
    cmd.arg("peers");
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // In order of id, without ops itself; one router, so no router names.
    assert_eq!(
        lines,
        [
            serde_json::json!({"server_id": "a-server", "router": null}),
            serde_json::json!({"server_id": "b-server", "router": null}),
        ]
    );
}

#[tokio::test]
async fn listen_presence_prints_joins_and_leaves_as_json_lines() {
    let cluster = TestCluster::start().await;
    let mut listen = icom(&cluster.client_files("ops"));
    listen
        .args(["listen", "--presence", "--count", "3", "--timeout", "20000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut listener = listen.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(listener.stdout.take().unwrap()).lines();
    assert!(
        icom_tests::eventually(|| cluster.stats().connections == 1).await,
        "the listener connected"
    );

    let comer = cluster.raw("comer").await;
    comer.conn.close(0u32.into(), b"bye");
    let (sender, _) = connect(&cluster, "sender").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("a line");
        got.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    assert_eq!(
        got,
        [
            serde_json::json!({"server_id": "comer", "online": true}),
            serde_json::json!({"server_id": "comer", "online": false}),
            serde_json::json!({"server_id": "sender", "online": true}),
        ]
    );
    let status = tokio::time::timeout(WAIT, listener.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "--count 3 lines, then exit 0");
    sender.close().await;
}

#[tokio::test]
async fn the_cli_never_takes_a_connected_identity_over_without_replace() {
    let cluster = TestCluster::start().await;
    let (server, mut events) = connect(&cluster, "eu-1").await;
    let mut states = server.states();
    let mut cmd = icom(&cluster.client_files("eu-1"));
    cmd.args(["ping", "--count", "1"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 3, "refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("IN_USE") && stderr.contains("--replace"),
        "{stderr}"
    );
    // The game server's connection is untouched.
    let (other, _) = connect(&cluster, "other").await;
    other.send("eu-1", "still_yours", 1).await.unwrap();
    assert_eq!(next_event(&mut events).await.event, "still_yours");
    assert!(server.is_connected());

    // With --replace, the operator means it.
    let mut cmd = icom(&cluster.client_files("eu-1"));
    cmd.args(["--replace", "ping", "--count", "1"]);
    let out = run(cmd).await;
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let replaced = client_support::wait_state(&mut states, |s| {
        matches!(s, icom_client::State::Replaced { .. })
    })
    .await;
    assert!(matches!(replaced, icom_client::State::Replaced { .. }));
}

//! `icom-server --dev` and `icom --dev` together, as the README's first
//! steps run them: the CLI's own operator identity (`ops`) never replaces a
//! game server's connection, and `--dev --config` layers a file with groups
//! and a policy over the dev layout (`config/dev.example.toml`), again on a
//! reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use icom_tests::{free_udp_port, workspace_bin, RouterProcess, WAIT};

/// A dev router in `dir` on a free port (never 9090: a real one may run),
/// with `extra` arguments; returns it and its address.
fn dev_router(dir: &Path, extra: &[&str]) -> (RouterProcess, String) {
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let mut cmd = Command::new(workspace_bin("icom-server", "icom-server"));
    cmd.current_dir(dir)
        .args(["--dev", "--listen", &addr])
        .args(extra);
    let mut router = RouterProcess::spawn(&mut cmd);
    router.wait_log("listening");
    (router, addr)
}

/// `icom --dev --router <addr> <args>` run in `dir`.
fn icom(dir: &Path, addr: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("icom-client", "icom"));
    cmd.current_dir(dir)
        .args(["--dev", "--router", addr, "--connect-timeout", "5000"])
        .args(args);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("icom runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("icom exits, not killed")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The server ids `icom --dev peers` prints.
fn peers(dir: &Path, addr: &str) -> Vec<String> {
    let out = run(icom(dir, addr, &["peers"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["server_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Starts `icom --dev --as <id> listen <args>` and waits until the router
/// lists `id` (asked as the operator).
fn listener(dir: &Path, addr: &str, id: &str, args: &[&str]) -> std::process::Child {
    let mut cmd = icom(dir, addr, &["--as", id, "listen"]);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    while !peers(dir, addr).iter().any(|p| p == id) {
        assert!(Instant::now() < deadline, "{id} did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The first line `child` printed, as JSON, once it exited.
fn first_line(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().expect("a line")).unwrap()
}

#[test]
fn the_dev_operator_identity_does_not_replace_server_1() {
    let dir = tempfile::tempdir().unwrap();
    let (_router, addr) = dev_router(dir.path(), &[]);
    assert!(dir.path().join("icom-dev/ops.pem").exists());
    let mut listening = listener(dir.path(), &addr, "server_1", &["--count", "1"]);

    // What the README's new user ran: `icom --dev ping`, as ops.
    let out = run(icom(dir.path(), &addr, &["ping", "--count", "1"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        listening.try_wait().unwrap().is_none(),
        "the listener runs on"
    );
    assert_eq!(peers(dir.path(), &addr), ["server_1"]);

    // Asked for explicitly, server_1's identity is refused, not taken.
    let out = run(icom(dir.path(), &addr, &["--as", "server_1", "ping"]));
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("IN_USE"), "{}", stderr(&out));

    // And the listener is the same connection, still receiving.
    let out = run(icom(
        dir.path(),
        &addr,
        &[
            "--as", "server_2", "send", "--to", "server_1", "--event", "hello",
        ],
    ));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(first_line(listening)["event"], "hello");
}

#[test]
fn dev_mode_takes_a_config_file_with_groups_and_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.example.toml");
    std::fs::copy(&example, dir.path().join("dev.toml")).unwrap();
    let (mut router, addr) = dev_router(dir.path(), &["--config", "dev.toml"]);
    // The file has no [tls], listen or data_dir: --dev filled them in.
    assert!(dir.path().join("icom-dev/data").is_dir());
    let listening = listener(dir.path(), &addr, "server_1", &["--count", "2"]);

    let send = |who: &str, args: &[&str]| {
        let mut all = vec!["--as", who, "send"];
        all.extend_from_slice(args);
        run(icom(dir.path(), &addr, &all))
    };
    // The group and the rule: game servers send each other supply drops.
    let out = send("server_2", &["--group", "game", "--event", "supply_drop"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Nothing else.
    let out = send("server_2", &["--to", "server_1", "--event", "bank"]);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
    // The operator is trusted.
    let out = run(icom(
        dir.path(),
        &addr,
        &["send", "--to", "server_1", "--event", "global_alert"],
    ));
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = listening.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let events: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{} from {}",
                v["event"].as_str().unwrap(),
                v["from"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        events,
        ["supply_drop from server_2", "global_alert from ops"]
    );

    // Edited and reloaded, the file is layered over the dev layout again.
    let to_self = ["--to", "server_2", "--event", "bank"];
    assert_eq!(code(&send("server_2", &to_self)), 3, "forbidden so far");
    let text = std::fs::read_to_string(&example).unwrap();
    let edited = text.replace(
        r#"events = ["supply_*"]"#,
        r#"events = ["supply_*", "bank"]"#,
    );
    assert_ne!(edited, text, "the example's rule was edited");
    std::fs::write(dir.path().join("dev.toml"), edited).unwrap();
    router.signal("HUP");
    router.wait_log("reloaded");
    let out = send("server_2", &to_self);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// A reload asked for while the router is still starting (here it waits
/// for a NATS node that never answers) does not end it, as SIGHUP's
/// default action would; a stop then ends it cleanly.
#[cfg(unix)]
#[test]
fn a_sighup_while_the_router_starts_does_not_end_it() {
    let dir = tempfile::tempdir().unwrap();
    let silent_nats = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nats = format!("nats://{}", silent_nats.local_addr().unwrap());
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let mut cmd = Command::new(workspace_bin("icom-server", "icom-server"));
    cmd.current_dir(dir.path())
        .args(["--dev", "--listen", &addr, "--nats", &nats]);
    let mut router = RouterProcess::spawn(&mut cmd);
    router.wait_log("runtime started");
    router.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(router.running(), "a SIGHUP while starting ended the router");
    router.signal("TERM");
    let status = router.wait_exit(WAIT);
    assert!(status.success(), "{status}");
}

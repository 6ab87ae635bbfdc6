//! The `icom-server` binary as an operator runs it: `--dev` with no config,
//! `--check-config`, JSON logs, SIGHUP reload and SIGTERM shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{CloseCode, Persist, Send, Target};
use icom_tests::{free_udp_port, send, RawClient, RouterFiles, RouterProcess};

const BIN: &str = env!("CARGO_BIN_EXE_icom-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_shutdown_and_exits_zero() {
    let files = RouterFiles::new("");
    let mut router = RouterProcess::start(&mut files.command(BIN));
    let c = RawClient::welcomed(files.addr(), files.pki(), "a").await;

    router.signal("TERM");
    c.expect_closed(CloseCode::Shutdown).await;
    let status = router.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_crl_and_closes_revoked_connections() {
    let files = RouterFiles::new("");
    let (pki, addr) = (files.pki(), files.addr());
    let mut router = RouterProcess::start(&mut files.command(BIN));
    let victim = pki.client("victim");
    let mut c = RawClient::connect(addr, pki, &victim).await.unwrap();
    c.hello().await.unwrap();
    std::fs::write(files.dir().join("crl.pem"), pki.crl_revoking(&[&victim])).unwrap();
    router.signal("HUP");
    c.expect_closed(CloseCode::Revoked).await;
    router.wait_log("reloaded");
    // And it cannot come back.
    let back = RawClient::connect(addr, pki, &victim).await;
    let refused = match back {
        Err(_) => true,
        Ok(mut c) => c.hello().await.is_err(),
    };
    assert!(refused);
}

/// Command-line flags beat the file, a relative `--data-dir` is the
/// working directory's (the file's own relative paths are the file's),
/// and a SIGHUP reload layers the flags again: no setting "changed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_hold_over_the_file_and_through_a_reload() {
    let files = RouterFiles::new("");
    let cwd = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut router = RouterProcess::spawn(files.command(BIN).current_dir(cwd.path()).args([
        "--listen",
        &listen,
        "--data-dir",
        "flag-data",
    ]));
    router.wait_log("listening");
    let addr = listen.parse().unwrap();
    let _c = RawClient::welcomed(addr, files.pki(), "a").await;
    let store = icom_server::store::STORE_FILE;
    assert!(
        cwd.path().join("flag-data").join(store).exists(),
        "the store under the working directory"
    );
    assert!(
        !files.dir().join("flag-data").exists(),
        "not under the file's directory"
    );
    router.signal("HUP");
    let lines = router.log_until("reloaded");
    let changed: Vec<_> = lines.iter().filter(|l| l.contains("changed")).collect();
    assert!(
        changed.is_empty(),
        "a reload saw the flags as changes: {changed:?}"
    );
    let _b = RawClient::welcomed(addr, files.pki(), "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_a_router_that_starts_with_a_crl() {
    let files = RouterFiles::new("");
    let (pki, addr) = (files.pki(), files.addr());
    let banned = pki.client("banned");
    std::fs::write(files.dir().join("crl.pem"), pki.crl_revoking(&[&banned])).unwrap();
    let mut router = RouterProcess::spawn(files.command(BIN).args(["--log-format", "json"]));
    let line = router.wait_log("listening");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
    let refused = match RawClient::connect(addr, pki, &banned).await {
        Err(_) => true,
        Ok(mut c) => c.hello().await.is_err(),
    };
    assert!(refused, "a certificate on the CRL at start is refused");
    let _ok = RawClient::welcomed(addr, pki, "fine").await;
    // A bad identity is logged at warn with who and why, as JSON.
    let mut bad = RawClient::connect(addr, pki, &pki.bad_cn("bad cn!"))
        .await
        .unwrap();
    let _ = bad.hello().await;
    let line = router.wait_log("BAD_IDENTITY");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN");
    assert!(v["fields"]["remote"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[test]
fn dev_mode_needs_no_config_and_reuses_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    // --listen moves it off 9090 so the test never collides with a real one.
    let port = free_udp_port();
    let run = || {
        let mut router = RouterProcess::spawn(Command::new(BIN).current_dir(dir.path()).args([
            "--dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]));
        router.wait_log("listening");
        let mut stdout = BufReader::new(router.take_stdout().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert!(first.contains(&format!("127.0.0.1:{port}")), "{first}");
        router.signal("INT");
        assert!(router.wait_exit(Duration::from_secs(10)).success());
    };
    run();
    let ca = dir.path().join("icom-dev/ca.pem");
    for f in [
        "ca.pem",
        "ca.key",
        "router.pem",
        "router.key",
        "server_1.pem",
        "server_1.key",
        "server_2.pem",
        "server_2.key",
        "ops.pem",
        "ops.key",
        "crl.pem",
    ] {
        assert!(dir.path().join("icom-dev").join(f).exists(), "{f}");
    }
    let before = std::fs::read(&ca).unwrap();
    run();
    assert_eq!(std::fs::read(&ca).unwrap(), before, "the CA is reused");
}

#[test]
fn check_config_validates_without_starting() {
    let check = |config: &Path| {
        Command::new(BIN)
            .arg("--check-config")
            .arg(config)
            .output()
            .unwrap()
    };
    let files = RouterFiles::new("");
    let dir = files.dir();
    let out = check(files.config());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_streams = 10\n").unwrap();
    let out = check(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_streams"), "{err}");

    let missing_key = dir.join("nokey.toml");
    std::fs::write(
        &missing_key,
        "[tls]\nca = \"ca.pem\"\ncert = \"router.pem\"\nkey = \"nope.key\"\n",
    )
    .unwrap();
    let out = check(&missing_key);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_that_was_acked() {
    let files = RouterFiles::new("");
    let (pki, addr) = (files.pki(), files.addr());
    let mut router = RouterProcess::start(&mut files.command(BIN));
    let mut a = RawClient::welcomed(addr, pki, "a").await;
    let mut acked = Vec::new();
    for id in 1..=20u64 {
        let data = Bytes::from(rmp_serde::to_vec(&id).unwrap());
        let s = Send {
            persist: (id % 2 == 0).then(|| Persist::Id(format!("p{id}"))),
            ttl_ms: (id % 2 == 1).then_some(600_000),
            ..send(id, Target::Server("b".into()), "e", data)
        };
        let ack = a.send(&s).await.unwrap();
        assert!(ack.ok && ack.queued == 1, "{ack:?}");
        acked.push(id);
    }
    router.signal("KILL");
    router.wait_exit(Duration::from_secs(10));
    drop(a);

    let _router = RouterProcess::start(&mut files.command(BIN));
    let mut b = RawClient::welcomed(addr, pki, "b").await;
    let replayed = b.replayed().await.unwrap();
    assert_eq!(replayed.len(), 20);
    let mut got: Vec<u64> = replayed.iter().map(|d| d.id).collect();
    got.sort_unstable();
    assert_eq!(got, acked);
}

#[test]
fn a_corrupt_store_is_a_clear_error_and_exit() {
    let files = RouterFiles::new("");
    let dir = files.dir();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/icom.redb"), vec![0x5a; 4096]).unwrap();
    let out = files.command(BIN).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("icom.redb"), "{err}");
    // The file is left as it was, for the operator to inspect.
    assert_eq!(
        std::fs::read(dir.join("data/icom.redb")).unwrap(),
        vec![0x5a; 4096]
    );
}

#[test]
fn sigterm_while_waiting_for_nats_at_start_exits_zero() {
    // No NATS at this address: the router waits for it (up to
    // connect_timeout_ms) before it listens; a stop meanwhile is clean.
    let nats_port = icom_tests::free_tcp_port();
    let files = RouterFiles::new(&format!(
        "[cluster]\nurls = [\"tls://127.0.0.1:{nats_port}\"]\nname = \"r1\"\n\
         ca = \"ca.pem\"\ncert = \"router.pem\"\nkey = \"router.key\"\nconnect_timeout_ms = 60000\n"
    ));
    let mut router = RouterProcess::spawn(&mut files.command(BIN));
    router.wait_log("connecting to NATS");
    std::thread::sleep(Duration::from_millis(200));
    router.signal("TERM");
    let status = router.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
}

#[test]
fn check_config_checks_the_nats_tls_files() {
    let files = RouterFiles::new(
        "[cluster]\nurls = [\"tls://127.0.0.1:4222\"]\nname = \"r1\"\n\
         ca = \"ca.pem\"\ncert = \"nats.pem\"\nkey = \"nats.key\"\n",
    );
    let (mine, other) = (files.pki().client("r1"), files.pki().client("someone"));
    std::fs::write(files.dir().join("nats.pem"), &mine.cert_pem).unwrap();
    std::fs::write(files.dir().join("nats.key"), &mine.key_pem).unwrap();
    let check = || {
        Command::new(BIN)
            .arg("--check-config")
            .arg(files.config())
            .output()
            .unwrap()
    };
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A key that is not the certificate's.
    std::fs::write(files.dir().join("nats.key"), &other.key_pem).unwrap();
    let out = check();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NATS TLS"), "{err}");
}

#[test]
fn a_router_refuses_to_start_on_a_nats_without_jetstream_and_says_so() {
    // A NATS with JetStream off cannot hold the cluster's store: the
    // router exits with a message that says what to change.
    let port = icom_tests::free_tcp_port();
    let mut nats = Command::new(icom_tests::nats_server_bin())
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--dev", "--listen", "127.0.0.1:0"])
        .args(["--nats", &format!("nats://127.0.0.1:{port}")])
        .output()
        .unwrap();
    let _ = nats.kill();
    let _ = nats.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("creating the stream icom_store") && err.contains("JetStream"),
        "{err}"
    );
}

/// The worker threads of the router process `pid`, by their name.
#[cfg(target_os = "linux")]
fn workers_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "icom-worker")
        })
        .count()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_come_from_the_file_the_environment_or_the_flag() {
    let files = RouterFiles::new("workers = 3");
    let cases: [(&[&str], Option<&str>, usize); 4] = [
        (&[], None, 3),
        (&["--workers", "1"], None, 1),
        (&[], Some("4"), 4),
        (
            &["--workers", "0"],
            None,
            std::thread::available_parallelism().unwrap().get(),
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = files.command(BIN);
        cmd.args(args);
        if let Some(v) = env {
            cmd.env("ICOM_WORKERS", v);
        }
        let mut router = RouterProcess::spawn(&mut cmd);
        let line = router.wait_log("runtime started");
        assert!(line.contains(&format!("workers={expected}")), "{line}");
        // One worker is a current-thread runtime, on a thread of its own.
        let flavor = if expected == 1 {
            "flavor=CurrentThread"
        } else {
            "flavor=MultiThread"
        };
        assert!(line.contains(flavor), "{line}");
        router.wait_log("listening");
        assert_eq!(workers_of(router.id()), expected, "{args:?} {env:?}");
        // It routes with what it has.
        let _c = RawClient::welcomed(files.addr(), files.pki(), "a").await;
        router.signal("TERM");
        assert!(router.wait_exit(Duration::from_secs(10)).success());
    }
    // A reload keeps the threads it started with, and says so.
    let mut router = RouterProcess::spawn(&mut files.command(BIN));
    router.wait_log("listening");
    let text = std::fs::read_to_string(files.config()).unwrap();
    std::fs::write(files.config(), text.replace("workers = 3", "workers = 1")).unwrap();
    router.signal("HUP");
    router.wait_log("workers changed from 3 to 1: that takes a restart");
    router.wait_log("reloaded");
    assert_eq!(workers_of(router.id()), 3);
    router.signal("TERM");
    assert!(router.wait_exit(Duration::from_secs(10)).success());
    // The default file (no `workers`) gives one, a current-thread runtime.
    let files = RouterFiles::new("");
    let mut router = RouterProcess::spawn(&mut files.command(BIN));
    let line = router.wait_log("runtime started");
    assert!(
        line.contains("workers=1") && line.contains("flavor=CurrentThread"),
        "{line}"
    );
    router.wait_log("listening");
    assert_eq!(workers_of(router.id()), 1);
}

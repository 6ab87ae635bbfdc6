//! Faults against the real `icom-server` binary, where only a separate
//! process shows them: file descriptors exhausted (`prlimit`), a recipient
//! that never reads while a sender pushes at it (the router's RSS, read
//! from `/proc`), and SIGKILL under load. Every test is bounded, stops by
//! itself, stays on 127.0.0.1 and asserts what held, never how fast.
//! `tests/FAULTS.md` lists them with the figures observed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use icom_certs::testing::TestPki;
use icom_protocol::{AckCode, Control, Persist, Send, Target, NIL};
use icom_tests::{client_crypto, RawClient, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

const BIN: &str = env!("CARGO_BIN_EXE_icom-server");

/// The file descriptor limit the router runs under in the exhaustion test.
const NOFILE: usize = 64;

/// A router process, its log lines, and its `/proc` entries.
struct Router {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Router {
    /// Starts `icom-server --config <config>` (under `prlimit` with
    /// `nofile` open files, if given) and waits for it to listen.
    fn start(config: &Path, nofile: Option<usize>) -> Router {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        // prlimit execs the router: the child's pid is the router's.
        let mut child = cmd
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting icom-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let router = Router { child, lines };
        router.wait_log("listening");
        router
    }

    /// Waits (bounded) for a log line containing `needle`.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!("no log line containing {needle:?}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Open file descriptors numbered below [`NOFILE`], from
    /// `/proc/<pid>/fd`: a new descriptor must take a free number below the
    /// limit (one inherited from the test harness may sit above it).
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|fd| *fd < NOFILE)
            .count()
    }

    /// Resident set size in KiB, from `/proc/<pid>/status`.
    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// SIGKILL, then waits for the process to be gone.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A free UDP port on 127.0.0.1 (bound, read, released).
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Writes the test PKI and a config listening on `port` (with `extra`
/// TOML before the `[tls]` table) into `dir`.
fn write_config(dir: &Path, pki: &TestPki, port: u16, extra: &str) -> PathBuf {
    pki.write_to(dir).unwrap();
    let path = dir.join("icom-server.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n{extra}\n[tls]\nca = \"ca.pem\"\ncert = \"router.pem\"\nkey = \"router.key\"\ncrl = \"crl.pem\"\n"
        ),
    )
    .unwrap();
    path
}

fn event(id: u64, to: &str, data: Bytes) -> Send {
    Send {
        id,
        to: Target::Server(to.into()),
        event: "fault".into(),
        data,
        persist: None,
        ttl_ms: None,
        reply_to: None,
    }
}

async fn client(addr: SocketAddr, pki: &TestPki, id: &str) -> RawClient {
    let mut c = RawClient::connect(addr, pki, &pki.client(id))
        .await
        .unwrap();
    c.hello().await.unwrap();
    c
}

/// Sends one event a → b and checks it arrives: the router is serving.
async fn routes(a: &mut RawClient, b: &RawClient, id: u64) {
    let to = b.welcome.as_ref().unwrap().server_id.clone();
    let ack = a
        .send(&event(id, &to, Bytes::from_static(NIL)))
        .await
        .unwrap();
    assert!(ack.ok, "{ack:?}");
    assert_eq!(b.deliver().await.unwrap().id, id);
}

/// GETs `/healthz`; `None` if no answer within a short bound.
async fn healthz(addr: SocketAddr) -> Option<u16> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), get)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_file_descriptors_are_survived_and_recovered_from() {
    const QUIC_CLIENTS: usize = 150;
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (port, metrics_port) = (free_udp_port(), free_tcp_port());
    let config = write_config(
        dir.path(),
        &pki,
        port,
        &format!("[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let mut router = Router::start(&config, Some(NOFILE));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", router.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(NOFILE.to_string().as_str()),
        "{line}"
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    assert_eq!(healthz(metrics).await, Some(200));
    let idle_fds = router.fds();

    // Held connections to the metrics port take every descriptor left,
    // and a few more wait in the listen backlog.
    let mut held = Vec::new();
    for _ in 0..(NOFILE - idle_fds + 8) {
        match tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(metrics),
        )
        .await
        {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    let deadline = Instant::now() + WAIT;
    while router.fds() < NOFILE && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(router.fds(), NOFILE, "every descriptor is taken");
    let failed = router.wait_log("metrics accept failed");
    assert!(failed.contains("os error 24"), "{failed}");
    assert_eq!(healthz(metrics).await, None, "nothing more is accepted");

    // QUIC needs no descriptor per connection: one UDP socket serves all.
    let mut a = client(addr, &pki, "a").await;
    let b = client(addr, &pki, "b").await;
    routes(&mut a, &b, 1).await;
    let certs: Vec<_> = (0..QUIC_CLIENTS)
        .map(|i| pki.client(&format!("c{i}")))
        .collect();
    let crypto = |i: usize| client_crypto(&pki, Some(&certs[i]));
    let tasks: Vec<_> = (0..QUIC_CLIENTS)
        .map(|i| {
            let crypto = crypto(i);
            tokio::spawn(async move {
                let mut c = RawClient::connect_with(addr, crypto).await?;
                c.hello().await?;
                Ok::<_, icom_tests::RawError>(c)
            })
        })
        .collect();
    let mut welcomed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => welcomed.push(c),
            Err(e) => panic!("a QUIC client was not welcomed: {e}"),
        }
    }
    let probe = client(addr, &pki, "probe").await;
    assert_eq!(
        probe.welcome.as_ref().unwrap().peers.len(),
        QUIC_CLIENTS + 2,
        "every client is in the table"
    );
    routes(&mut a, &b, 2).await;
    assert_eq!(router.fds(), NOFILE, "still exhausted throughout");
    assert!(router.running(), "accept errors are not fatal");
    router.wait_log("metrics accept failed");

    // Released, the descriptors come back and health answers again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = None;
    while status != Some(200) && Instant::now() < deadline {
        status = healthz(metrics).await;
    }
    assert_eq!(status, Some(200), "/healthz answers after recovery");
    assert!(router.fds() < NOFILE);
    routes(&mut a, &b, 3).await;
    assert!(router.running());
    eprintln!(
        "fd exhaustion: limit {NOFILE}, {idle_fds} fds idle, {} QUIC clients welcomed while exhausted, recovered to {} fds",
        QUIC_CLIENTS + 3,
        router.fds()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_that_never_reads_leaves_the_router_rss_bounded() {
    const QUEUE_BYTES: u64 = 4 << 20;
    const SEND_WINDOW: u64 = 4 << 20;
    const RECEIVE_WINDOW: u64 = 4 << 20;
    /// Code, runtime, TLS and allocator slack, over the start-up RSS.
    const OVERHEAD: u64 = 32 << 20;
    const PUSH_FOR: Duration = Duration::from_secs(6);
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let port = free_udp_port();
    let config = write_config(
        dir.path(),
        &pki,
        port,
        &format!(
            "[limits]\noutbound_queue_bytes = {QUEUE_BYTES}\n[transport]\nsend_window = {SEND_WINDOW}\nreceive_window = {RECEIVE_WINDOW}\nstream_receive_window = 1048576\n"
        ),
    );
    let mut router = Router::start(&config, None);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut a = client(addr, &pki, "a").await;
    // The sink lets the router open 4 streams, and never reads them.
    let mut sink = RawClient::connect_opts(addr, client_crypto(&pki, Some(&pki.client("sink"))), 4)
        .await
        .unwrap();
    sink.hello().await.unwrap();
    let start_kib = router.rss_kib();
    // The queue and the batch being written (2 × queue), what quinn holds
    // for the sink (send window) and for the sender (receive window).
    let bound_kib = start_kib + (2 * QUEUE_BYTES + SEND_WINDOW + RECEIVE_WINDOW + OVERHEAD) / 1024;

    // RSS is sampled on a thread of its own all along.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pid, on) = (router.pid(), sampling.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    // 1 KB events, as fast as acks come back (at most 256 unacked), until
    // the window is closed.
    let window = Arc::new(Semaphore::new(256));
    let writer = {
        let (conn, window) = (a.conn.clone(), window.clone());
        let payload = Bytes::from(rmp_serde::to_vec(&"x".repeat(1000)).unwrap());
        tokio::spawn(async move {
            let mut id = 0;
            while let Ok(permit) = window.acquire().await {
                permit.forget();
                id += 1;
                let mut s = conn.open_uni().await.unwrap();
                s.write_all(&event(id, "sink", payload.clone()).encode())
                    .await
                    .unwrap();
                s.finish().unwrap();
            }
            id
        })
    };
    let (mut ok, mut congested, mut acked) = (0u64, 0u64, 0u64);
    let pushing = Instant::now();
    while pushing.elapsed() < PUSH_FOR {
        if count(
            a.next_control().await.unwrap(),
            &mut ok,
            &mut congested,
            &mut acked,
        ) {
            window.add_permits(1);
        }
    }
    window.close();
    let sent = writer.await.unwrap();
    while acked < sent {
        count(
            a.next_control().await.unwrap(),
            &mut ok,
            &mut congested,
            &mut acked,
        );
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_kib = sampler.join().unwrap();
    assert_eq!(ok + congested, sent, "every send acked ok or congested");
    assert!(congested > 0, "the sender was told the sink is congested");
    assert!(
        peak_kib <= bound_kib,
        "router RSS peaked at {peak_kib} KiB, over the bound {bound_kib} KiB"
    );
    // And the router serves others all the while.
    let b = client(addr, &pki, "b").await;
    routes(&mut a, &b, sent + 1).await;
    assert!(router.running());
    eprintln!(
        "never-reading recipient: {sent} × 1 KB sent in {PUSH_FOR:?} ({} MiB), {ok} ok, {congested} congested; router RSS {start_kib} KiB at start, peak {peak_kib} KiB, bound {bound_kib} KiB",
        sent * 1024 / (1 << 20)
    );
    drop(sink);
}

/// Counts one control message; true if it was an ack.
fn count(msg: Control, ok: &mut u64, congested: &mut u64, acked: &mut u64) -> bool {
    let Control::Ack(ack) = msg else { return false };
    *acked += 1;
    match ack.error {
        None => *ok += 1,
        Some(e) => {
            assert_eq!(e.code, AckCode::Congested, "{}", e.message);
            *congested += 1;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acked_event() {
    /// Acks collected before the kill.
    const KILL_AFTER: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let port = free_udp_port();
    let config = write_config(dir.path(), &pki, port, "");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut router = Router::start(&config, None);
    let mut a = client(addr, &pki, "a").await;

    // Persistent and ttl events for an offline "b", 32 in flight, until
    // the router dies under them.
    let window = Arc::new(Semaphore::new(32));
    let writer = {
        let (conn, window) = (a.conn.clone(), window.clone());
        tokio::spawn(async move {
            for id in 1.. {
                window.acquire().await.unwrap().forget();
                let mut send = event(id, "b", Bytes::from(rmp_serde::to_vec(&id).unwrap()));
                if id % 2 == 0 {
                    send.persist = Some(Persist::Id(format!("p{id}")));
                } else {
                    send.ttl_ms = Some(600_000);
                }
                let Ok(mut s) = conn.open_uni().await else {
                    return;
                };
                if s.write_all(&send.encode()).await.is_err() {
                    return;
                }
                let _ = s.finish();
            }
        })
    };
    let mut acked = BTreeSet::new();
    while acked.len() < KILL_AFTER {
        if let Control::Ack(ack) = a.next_control().await.unwrap() {
            assert!(ack.ok && ack.queued == 1, "{ack:?}");
            acked.insert(ack.id);
            window.add_permits(1);
        }
    }
    router.kill();
    // Acks already on their way count too: read what arrived, briefly.
    while let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_millis(300), a.next_control()).await
    {
        if let Control::Ack(ack) = msg {
            assert!(ack.ok && ack.queued == 1, "{ack:?}");
            acked.insert(ack.id);
        }
    }
    writer.abort();
    drop(a);

    let _router = Router::start(&config, None);
    let mut b = client(addr, &pki, "b").await;
    let count = b
        .control_until(|m| match m {
            Control::Replayed(r) => Some(r.count),
            _ => None,
        })
        .await
        .unwrap();
    let mut delivered = BTreeSet::new();
    for _ in 0..count {
        let d = b.deliver().await.unwrap();
        assert!(delivered.insert(d.id), "delivered once: {}", d.id);
    }
    let lost: Vec<_> = acked.difference(&delivered).collect();
    assert!(lost.is_empty(), "acked but lost: {lost:?}");
    eprintln!(
        "sigkill under load: {} acked before the kill, {count} replayed after the restart, none lost",
        acked.len()
    );
}

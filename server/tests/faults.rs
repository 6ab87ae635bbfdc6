//! Faults against the real `icom-server` binary, where only a separate
//! process shows them: file descriptors exhausted (`prlimit`), a recipient
//! that never reads while a sender pushes at it (the router's RSS, read
//! from `/proc`), and SIGKILL under load. Every test is bounded, stops by
//! itself, stays on 127.0.0.1 and asserts what held, never how fast.
//! `tests/FAULTS.md` lists them with the figures observed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use icom_protocol::{AckCode, Control, Persist, Send, Target};
use icom_tests::{client_crypto, free_tcp_port, http_get, routes, rss_kib, send, WAIT};
use icom_tests::{RawClient, RouterFiles, RouterProcess};
use tokio::sync::Semaphore;

const BIN: &str = env!("CARGO_BIN_EXE_icom-server");

/// The file descriptor limit the router runs under in the exhaustion test.
const NOFILE: usize = 64;

/// Starts `icom-server` from `files` (under `prlimit` with `nofile` open
/// files, if given), logging at info, and waits for it to listen.
fn start(files: &RouterFiles, nofile: Option<usize>) -> RouterProcess {
    let mut cmd = match nofile {
        // prlimit execs the router: the child's pid is the router's.
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}"))
                .arg(BIN)
                .arg("--config")
                .arg(files.config());
            c
        }
        None => files.command(BIN),
    };
    RouterProcess::start(cmd.env("RUST_LOG", "info").stdin(Stdio::null()))
}

/// The router's open file descriptors numbered below [`NOFILE`], from
/// `/proc/<pid>/fd`: a new descriptor must take a free number below the
/// limit (one inherited from the test harness may sit above it).
fn fds(router: &RouterProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", router.id()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
        .filter(|fd| *fd < NOFILE)
        .count()
}

/// A send of the event `fault` to the server `to`.
fn fault(id: u64, to: &str, data: Bytes) -> Send {
    send(id, Target::Server(to.into()), "fault", data)
}

/// GETs `/healthz`; `None` if no answer within a short bound.
async fn healthz(addr: SocketAddr) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(1), http_get(addr, "/healthz"))
        .await
        .ok()
        .flatten()
        .map(|(status, _)| status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_file_descriptors_are_survived_and_recovered_from() {
    const QUIC_CLIENTS: usize = 150;
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let metrics_port = free_tcp_port();
    let files = RouterFiles::new(&format!(
        "[metrics]\nenabled = true\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    ));
    let pki = files.pki();
    let mut router = start(&files, Some(NOFILE));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", router.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(NOFILE.to_string().as_str()),
        "{line}"
    );
    let addr = files.addr();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    assert_eq!(healthz(metrics).await, Some(200));
    let idle_fds = fds(&router);

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
    while fds(&router) < NOFILE && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fds(&router), NOFILE, "every descriptor is taken");
    let failed = router.wait_log("metrics accept failed");
    assert!(failed.contains("os error 24"), "{failed}");
    assert_eq!(healthz(metrics).await, None, "nothing more is accepted");

    // QUIC needs no descriptor per connection: one UDP socket serves all.
    let mut a = RawClient::welcomed(addr, pki, "a").await;
    let b = RawClient::welcomed(addr, pki, "b").await;
    routes(&mut a, &b, 1).await;
    let certs: Vec<_> = (0..QUIC_CLIENTS)
        .map(|i| pki.client(&format!("c{i}")))
        .collect();
    let crypto = |i: usize| client_crypto(pki, Some(&certs[i]));
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
    // Every client is in the table: a newcomer's view (its welcome, then
    // the presence batches still on their way) holds them all.
    let mut probe = RawClient::welcomed(addr, pki, "probe").await;
    let mut known: BTreeSet<String> = probe
        .welcome
        .as_ref()
        .unwrap()
        .peers
        .iter()
        .cloned()
        .collect();
    while known.len() < QUIC_CLIENTS + 2 {
        match probe
            .next_control()
            .await
            .expect("presence within the bound")
        {
            Control::Presence(p) if p.online => known.insert(p.server_id),
            Control::Presence(p) => known.remove(&p.server_id),
            _ => false,
        };
    }
    assert_eq!(
        known.len(),
        QUIC_CLIENTS + 2,
        "every client is in the table"
    );
    routes(&mut a, &b, 2).await;
    assert_eq!(fds(&router), NOFILE, "still exhausted throughout");
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
    assert!(fds(&router) < NOFILE);
    routes(&mut a, &b, 3).await;
    assert!(router.running());
    eprintln!(
        "fd exhaustion: limit {NOFILE}, {idle_fds} fds idle, {} QUIC clients welcomed while exhausted, recovered to {} fds",
        QUIC_CLIENTS + 3,
        fds(&router)
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
    let files = RouterFiles::new(&format!(
        "[limits]\noutbound_queue_bytes = {QUEUE_BYTES}\n[transport]\nsend_window = {SEND_WINDOW}\nreceive_window = {RECEIVE_WINDOW}\nstream_receive_window = 1048576\n"
    ));
    let pki = files.pki();
    let mut router = start(&files, None);
    let addr = files.addr();
    let mut a = RawClient::welcomed(addr, pki, "a").await;
    // The sink lets the router open 4 streams, and never reads them.
    let mut sink = RawClient::connect_opts(addr, client_crypto(pki, Some(&pki.client("sink"))), 4)
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
        let (pid, on) = (router.id(), sampling.clone());
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
                s.write_all(&fault(id, "sink", payload.clone()).encode())
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
    let b = RawClient::welcomed(addr, pki, "b").await;
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
    /// Senders at once, each with this many sends in flight: the store
    /// commits many writers together (group commit) at this rate.
    const SENDERS: usize = 4;
    const WINDOW: usize = 128;
    /// Acks collected before the kill.
    const KILL_AFTER: usize = 2000;
    let files = RouterFiles::new("");
    let pki = files.pki();
    let addr = files.addr();
    let mut router = start(&files, None);

    // Persistent and ttl events for an offline "b", from every sender at
    // once, until the router dies under them.
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let name = format!("a{i}");
        let a = RawClient::welcomed(addr, pki, &name).await;
        senders.push(tokio::spawn(durable_sender(
            a,
            name,
            WINDOW,
            acks_tx.clone(),
        )));
    }
    drop(acks_tx);
    let started = Instant::now();
    let mut acked = BTreeSet::new();
    while acked.len() < KILL_AFTER {
        let (from, ack) = acks.recv().await.expect("the senders run until the kill");
        assert!(ack.ok && ack.queued == 1, "{ack:?}");
        acked.insert((from, ack.id));
    }
    let rate = acked.len() as f64 / started.elapsed().as_secs_f64();
    router.signal("KILL");
    router.wait_exit(Duration::from_secs(10));
    // Acks already on their way count too: read what arrived, briefly.
    while let Ok(Some((from, ack))) =
        tokio::time::timeout(Duration::from_millis(300), acks.recv()).await
    {
        assert!(ack.ok && ack.queued == 1, "{ack:?}");
        acked.insert((from, ack.id));
    }
    for s in senders {
        s.abort();
    }

    let _router = start(&files, None);
    let mut b = RawClient::welcomed(addr, pki, "b").await;
    let replayed = b.replayed().await.unwrap();
    let count = replayed.len();
    let mut delivered = BTreeSet::new();
    for d in replayed {
        assert!(
            delivered.insert((d.from.clone(), d.id)),
            "delivered once: {} {}",
            d.from,
            d.id
        );
    }
    let lost: Vec<_> = acked.difference(&delivered).collect();
    assert!(lost.is_empty(), "acked but lost: {lost:?}");
    eprintln!(
        "sigkill under load: {SENDERS} senders, {} acked before the kill (about {rate:.0}/s), {count} replayed after the restart, none lost",
        acked.len()
    );
}

/// Sends persistent (even ids, an id of their own each) and ttl (odd ids)
/// events to the offline "b", `window` in flight, and passes every ack
/// on, with the sender's name, until the connection ends.
async fn durable_sender(
    mut a: RawClient,
    name: String,
    window: usize,
    acks: tokio::sync::mpsc::UnboundedSender<(String, icom_protocol::Ack)>,
) {
    let window = Arc::new(Semaphore::new(window));
    let writer = {
        let (conn, window, name) = (a.conn.clone(), window.clone(), name.clone());
        tokio::spawn(async move {
            for id in 1.. {
                window.acquire().await.unwrap().forget();
                let mut send = fault(id, "b", Bytes::from(rmp_serde::to_vec(&id).unwrap()));
                if id % 2 == 0 {
                    send.persist = Some(Persist::Id(format!("{name}-p{id}")));
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
    while let Ok(msg) = a.next_control().await {
        if let Control::Ack(ack) = msg {
            if acks.send((name.clone(), ack)).is_err() {
                break;
            }
            window.add_permits(1);
        }
    }
    writer.abort();
}

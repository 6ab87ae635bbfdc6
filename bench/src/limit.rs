//! `icom-bench limit`: the ceiling. The same client, with the same
//! settings, sends one stream per event straight into a sink that speaks
//! just enough ICOM/1 to take them: `hello` → `welcome`, then for each
//! event stream, read it, decode its header and ack it on the control
//! stream. No routing, no second hop. The sink runs on a runtime of its own
//! (threads `icom-sink`), with the router's own TLS and transport settings
//! (`icom_server::tls::load` of a default configuration).
//!
//! A router receives each event as the sink does, then sends it again:
//! it does at least this work, and a second connection's worth more.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use icom_certs::testing::TestPki;
use icom_client::{Client, ClientConfig, Target};
use icom_protocol::{
    decode_control, encode_frame, frame_len, Ack, Control, Limits, Replayed, Send, StreamCredit,
    Welcome, FRAME_HEADER_LEN,
};
use icom_server::Config;
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::cli::TputArgs;
use crate::env::Env;
use crate::os;
use crate::os::{router_runtime, OwnRuntime};
use crate::pump::{pump, Flow};
use crate::report::{self, Report};

/// The name of the sink's threads.
const SINK_THREADS: &str = "icom-sink";

/// Runs `limit` with the arguments of `tput`.
///
/// # Errors
/// When the sink or the client cannot be started.
pub(crate) async fn run(env: &Env, args: &TputArgs) -> anyhow::Result<Report> {
    let sink = Sink::start(env.router_threads).await?;
    let (dial, link) = env.link_to(sink.addr).await?;
    let mut config = sink.client("server_1", dial)?;
    config.max_in_flight = args.window.max(1);
    let (client, _events) = Client::connect(config)
        .await
        .context("connecting to the sink")?;
    let to = Target::Server("sink".into());
    let warmup = args.events / 10;
    let _ = pump(&client, Flow::new(&to, warmup, args.size)).await;
    let base = sink.received.load(Ordering::Relaxed);
    let cpu_before = os::threads_cpu(SINK_THREADS);
    let own_before = os::Proc::Own.cpu();
    let started = Instant::now();
    let sent = pump(&client, Flow::new(&to, args.events, args.size)).await;
    let elapsed = sent
        .done
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(started);
    let cpu_after = os::threads_cpu(SINK_THREADS);
    let own_after = os::Proc::Own.cpu();
    let received = sink.received.load(Ordering::Relaxed) - base;

    let mut report = Report::new("limit");
    report.add("link", "link", env.wan_label());
    report.add("events", "events", args.events);
    report.add("size_bytes", "data size (bytes)", args.size as u64);
    report.add("window", "window (sends in flight)", args.window as u64);
    report.add("acked", "acked ok", sent.acked);
    report.add("received", "received by the sink", received);
    report.seconds("seconds", "elapsed (s)", elapsed);
    report.rate(
        "events_per_s",
        "events/s (acked)",
        sent.acked.min(received),
        elapsed,
    );
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        let cpu = b.saturating_sub(a);
        report.seconds("sink_cpu_s", "sink CPU (s)", cpu);
        report.add(
            "sink_cpu_s_per_million_events",
            "sink CPU s / 1M events",
            report::round(cpu.as_secs_f64() * 1e6 / args.events.max(1) as f64, 3),
        );
    }
    if let (Some(a), Some(b), Some(c), Some(d)) = (cpu_before, cpu_after, own_before, own_after) {
        let client = d.saturating_sub(c).saturating_sub(b.saturating_sub(a));
        report.seconds("clients_cpu_s", "sending client CPU (s)", client);
    }
    report.check(
        sent.acked == args.events && sent.failed == 0 && received == args.events,
        format!(
            "acked {} of {}, sink received {received}, {} failed (first: {})",
            sent.acked,
            args.events,
            sent.failed,
            sent.first_error.as_deref().unwrap_or("none")
        ),
    );
    if let Some(link) = &link {
        link.add_usage(&mut report);
    }
    client.close().await;
    sink.stop();
    Ok(report)
}

/// A minimal ICOM/1 endpoint that acks every event and delivers nothing.
struct Sink {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    runtime: OwnRuntime,
    received: Arc<AtomicU64>,
    pki: TestPki,
    dir: TempDir,
}

impl Sink {
    async fn start(threads: usize) -> anyhow::Result<Sink> {
        let dir = tempfile::tempdir()?;
        let (pki, file) = crate::child::fresh_config(dir.path())?;
        let config = Config::try_from(file)?;
        let material = icom_server::tls::load(&config)?;
        let limits = Limits {
            max_event_bytes: config.limits.max_event_bytes as u32,
            max_streams: config.limits.max_streams,
        };
        let initial_streams = config.limits.initial_streams;
        let runtime = router_runtime(SINK_THREADS, threads)?;
        let received = Arc::new(AtomicU64::new(0));
        let (socket, _) = icom_server::tls::bind_udp(config.listen, &config.transport)?;
        let endpoint = runtime
            .spawn(async move {
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(material.server_config),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
            })
            .await?
            .context("binding the sink")?;
        let addr = endpoint.local_addr()?;
        let (ep, count) = (endpoint.clone(), received.clone());
        runtime.spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve(conn, count, limits, initial_streams).await;
                    }
                });
            }
        });
        Ok(Sink {
            addr,
            endpoint,
            runtime,
            received,
            pki,
            dir,
        })
    }

    fn client(&self, id: &str, dial: SocketAddr) -> anyhow::Result<ClientConfig> {
        let issued = self.pki.client(id);
        let (cert, key) = (
            self.dir.path().join(format!("{id}.pem")),
            self.dir.path().join(format!("{id}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem)?;
        std::fs::write(&key, &issued.key_pem)?;
        Ok(ClientConfig::new(
            dial.to_string(),
            "localhost",
            self.dir.path().join("ca.pem"),
            cert,
            key,
        ))
    }

    fn stop(self) {
        self.endpoint.close(0u32.into(), b"done");
        drop(self.runtime);
    }
}

/// Serves one connection: `hello` → `welcome`, then an ack per event.
async fn serve(
    conn: quinn::Connection,
    received: Arc<AtomicU64>,
    limits: Limits,
    initial_streams: u32,
) {
    let Ok((send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let mut header = [0u8; FRAME_HEADER_LEN];
    if recv.read_exact(&mut header).await.is_err() {
        return;
    }
    let Ok(len) = frame_len(header) else { return };
    let mut body = vec![0u8; len];
    if recv.read_exact(&mut body).await.is_err() {
        return;
    }
    let Ok(Some(Control::Hello(_))) = decode_control(&body) else {
        return;
    };
    let server_id = icom_server::tls::peer_identity(&conn)
        .map(|p| p.server_id)
        .unwrap_or_default();
    let (acks, rx) = mpsc::unbounded_channel();
    let _ = acks.send(Control::Welcome(Welcome {
        session_id: "00000000-0000-0000-0000-000000000000".into(),
        server_id,
        groups: Vec::new(),
        peers: Vec::new(),
        limits,
        features: None,
    }));
    let _ = acks.send(Control::Replayed(Replayed { count: 0 }));
    tokio::spawn(write_control(send, rx));
    let max = limits.max_event_bytes as usize;
    // Stream credit grows with use, as the router's does.
    let mut credit = StreamCredit::new(initial_streams, limits.max_streams);
    let open = Arc::new(AtomicU32::new(0));
    while let Ok(mut stream) = conn.accept_uni().await {
        let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(n) = credit.accepted(now_open, Instant::now, || conn.rtt()) {
            conn.set_max_concurrent_uni_streams(n.into());
        }
        // Most events are whole on arrival: read them here; a stream
        // still waiting for data finishes in a task of its own.
        let (acks, received, open) = (acks.clone(), received.clone(), open.clone());
        let mut read = Box::pin(async move {
            let bytes = read_all(&mut stream, max).await;
            open.fetch_sub(1, Ordering::Relaxed);
            take(&bytes, &acks, &received);
        });
        if poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx)))
            .await
            .is_pending()
        {
            tokio::spawn(read);
        }
    }
}

/// Reads a stream in order, as the router does: the usual event, one
/// chunk, without a copy. What breaks off or runs long is empty (and acked
/// `malformed`).
async fn read_all(stream: &mut quinn::RecvStream, max: usize) -> Bytes {
    let mut whole: Option<Bytes> = None;
    let mut rest = Vec::new();
    loop {
        match stream.read_chunk(max, true).await {
            Ok(Some(chunk)) => match whole.take() {
                None if rest.is_empty() => whole = Some(chunk.bytes),
                prev => {
                    rest.extend_from_slice(&prev.unwrap_or_default());
                    rest.extend_from_slice(&chunk.bytes);
                }
            },
            Ok(None) => return whole.unwrap_or_else(|| Bytes::from(rest)),
            Err(_) => return Bytes::new(),
        }
    }
}

/// Decodes one event's header and acks it.
fn take(bytes: &Bytes, acks: &mpsc::UnboundedSender<Control>, received: &AtomicU64) {
    let ack = match Send::decode(bytes) {
        Ok(send) => Ack::delivered(send.id, 1),
        Err(e) => Ack::failed(
            e.id.unwrap_or(0),
            icom_protocol::AckCode::Malformed,
            e.to_string(),
        ),
    };
    received.fetch_add(u64::from(ack.ok), Ordering::Relaxed);
    let _ = acks.send(Control::Ack(ack));
}

/// Writes control frames, coalescing what is waiting into one write.
async fn write_control(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Control>) {
    let mut batch = Vec::with_capacity(256);
    let mut buf = Vec::with_capacity(16 * 1024);
    while rx.recv_many(&mut batch, 256).await > 0 {
        buf.clear();
        for msg in batch.drain(..) {
            buf.extend_from_slice(&encode_frame(&msg));
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
}

//! `--naive`: the router under test is a straightforward one, written as a
//! first quinn router would be, to measure ICOM's against in the same run:
//! quinn's default transport settings (but for 1,024 concurrent streams
//! each way), a task per event stream reading it with `read_to_end`, the
//! recipients looked up in a map behind a mutex, a stream opened and
//! written with `write_all` for each, and each ack written to the control
//! stream by a writer task, one write per ack. It decodes the event's
//! header as ICOM does (the protocol crate), and has no policy, no bounds
//! on what waits, no store and no presence: the floor of what routing
//! costs with quinn when nothing is tuned. It serves the targets the
//! benches use (a server, several, all, everyone).
//!
//! It runs on a runtime of its own whose threads are named `icom-naive`,
//! with the same TLS material as a fresh ICOM router.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use icom_certs::testing::TestPki;
use icom_protocol::{
    decode_control, encode_frame, frame_len, lock, Ack, AckCode, Control, Deliver, Limits,
    Replayed, Send, Target, Welcome, FRAME_HEADER_LEN,
};
use icom_server::Config;
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::os::{router_runtime, OwnRuntime};

/// The name of the naive router's threads.
pub(crate) const NAIVE_THREADS: &str = "icom-naive";

/// Who is connected, by server id.
type Peers = Arc<Mutex<HashMap<String, quinn::Connection>>>;

/// The naive router, running.
pub(crate) struct Naive {
    pub(crate) addr: SocketAddr,
    endpoint: quinn::Endpoint,
    runtime: Option<OwnRuntime>,
    pub(crate) pki: TestPki,
    pub(crate) dir: TempDir,
}

impl Naive {
    /// Starts it on 127.0.0.1 with a fresh PKI, on `threads` threads.
    ///
    /// # Errors
    /// When the TLS material or the socket cannot be set up.
    pub(crate) async fn start(threads: usize) -> anyhow::Result<Naive> {
        let dir = tempfile::tempdir()?;
        let (pki, file) = crate::child::fresh_config(dir.path())?;
        let config = Config::try_from(file)?;
        let mut server = icom_server::tls::load(&config)?.server_config;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(1024u32.into())
            .max_concurrent_bidi_streams(1u32.into());
        server.transport_config(Arc::new(transport));
        let limits = Limits {
            max_event_bytes: config.limits.max_event_bytes as u32,
            max_streams: 1024,
        };
        let runtime = router_runtime(NAIVE_THREADS, threads)?;
        let socket = std::net::UdpSocket::bind(config.listen)?;
        let endpoint = runtime
            .spawn(async move {
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(server),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
            })
            .await?
            .context("binding the naive router")?;
        let addr = endpoint.local_addr()?;
        let (ep, peers) = (endpoint.clone(), Peers::default());
        runtime.spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let peers = peers.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        let _ = serve(conn, peers, limits).await;
                    }
                });
            }
        });
        Ok(Naive {
            addr,
            endpoint,
            runtime: Some(runtime),
            pki,
            dir,
        })
    }

    /// Stops it.
    pub(crate) fn stop(&mut self) {
        self.endpoint.close(0u32.into(), b"done");
        drop(self.runtime.take());
    }
}

/// One connection: `hello` → `welcome`, then a task per event stream.
async fn serve(conn: quinn::Connection, peers: Peers, limits: Limits) -> anyhow::Result<()> {
    let (send, mut recv) = conn.accept_bi().await?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let mut body = vec![0u8; frame_len(header)?];
    recv.read_exact(&mut body).await?;
    anyhow::ensure!(matches!(decode_control(&body)?, Some(Control::Hello(_))));
    let me = icom_server::tls::peer_identity(&conn)?.server_id;
    let others: Vec<String> = lock(&peers).keys().cloned().collect();
    lock(&peers).insert(me.clone(), conn.clone());
    let (control, rx) = mpsc::unbounded_channel();
    let _ = control.send(Control::Welcome(Welcome {
        session_id: "00000000-0000-0000-0000-000000000000".into(),
        server_id: me.clone(),
        groups: Vec::new(),
        peers: others,
        limits,
        features: None,
    }));
    let _ = control.send(Control::Replayed(Replayed { count: 0 }));
    tokio::spawn(write_control(send, rx));
    let max = limits.max_event_bytes as usize;
    while let Ok(mut stream) = conn.accept_uni().await {
        let (peers, control, me) = (peers.clone(), control.clone(), me.clone());
        tokio::spawn(async move {
            let ack = match stream.read_to_end(max).await {
                Ok(bytes) => route(&peers, &me, &Bytes::from(bytes)).await,
                Err(e) => Ack::failed(0, AckCode::Malformed, e.to_string()),
            };
            let _ = control.send(Control::Ack(ack));
        });
    }
    lock(&peers).remove(&me);
    Ok(())
}

/// Delivers one event to each recipient, a stream each, and acks it.
async fn route(peers: &Peers, from: &str, bytes: &Bytes) -> Ack {
    let send = match Send::decode(bytes) {
        Ok(s) => s,
        Err(e) => return Ack::failed(e.id.unwrap_or(0), AckCode::Malformed, e.to_string()),
    };
    let to: Vec<quinn::Connection> = {
        let peers = lock(peers);
        match &send.to {
            Target::Server(id) => peers.get(id).cloned().into_iter().collect(),
            Target::Servers(ids) => ids.iter().filter_map(|i| peers.get(i).cloned()).collect(),
            Target::All => peers
                .iter()
                .filter(|(id, _)| *id != from)
                .map(|(_, c)| c.clone())
                .collect(),
            _ => peers.values().cloned().collect(),
        }
    };
    let wire = Deliver {
        from: from.to_owned(),
        id: send.id,
        event: send.event,
        data: send.data,
        persist_id: None,
        reply_to: send.reply_to,
        sent_ms: 0,
    }
    .encode();
    let mut delivered = 0;
    for conn in to {
        if let Ok(mut s) = conn.open_uni().await {
            if s.write_all(&wire).await.is_ok() && s.finish().is_ok() {
                delivered += 1;
            }
        }
    }
    Ack::delivered(send.id, delivered)
}

/// Writes each control message as it comes, one write each.
async fn write_control(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Control>) {
    while let Some(msg) = rx.recv().await {
        if send.write_all(&encode_frame(&msg)).await.is_err() {
            return;
        }
    }
}

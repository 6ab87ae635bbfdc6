//! `--floor`: the naive router's routing, with quinn's async layer taken
//! out, to measure what that layer costs ICOM per event.
//!
//! One task owns the UDP socket and every connection's QUIC state machine
//! (quinn-proto, driven directly): it reads every datagram waiting,
//! handles the streams they complete, and writes every connection's
//! packets, then sleeps until the socket is readable or a QUIC timer is
//! due. No task per connection, no lock, no waker: the least a router on
//! quinn's state machine can spend on I/O. The QUIC transport settings,
//! the TLS material and the socket's buffers are a fresh ICOM router's;
//! the event path is ICOM's protocol code (a `send` decoded in place, the
//! `deliver` encoded once for its recipients, acks framed by hand), with
//! the naive router's rules: a server, several, or every other one; no
//! policy, store, presence or bound on what waits. A bench instrument, not
//! a router: it trusts its clients (the bench's).
//!
//! It runs on a runtime of its own, on the naive router's threads (their
//! CPU is what the bench reports).

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::BytesMut;
use icom_certs::testing::TestPki;
use icom_protocol::Limits;
use icom_server::Config;
use quinn_proto::{DatagramEvent, Dir, VarInt};
use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use tempfile::TempDir;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::naive::NAIVE_THREADS;
use crate::os::{router_runtime, OwnRuntime};

mod route;

use route::{Peer, Router};

/// The room for one `recvmmsg` entry: a GRO batch of datagrams.
const RECV_CHUNK: usize = 64 * 1024;

/// The floor router, running.
pub(crate) struct Floor {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<OwnRuntime>,
    pub(crate) pki: TestPki,
    pub(crate) dir: TempDir,
}

impl Floor {
    /// Starts it on 127.0.0.1 with a fresh PKI, on a thread of its own.
    ///
    /// # Errors
    /// When the TLS material or the socket cannot be set up.
    pub(crate) async fn start() -> anyhow::Result<Floor> {
        let dir = tempfile::tempdir()?;
        let (pki, file) = crate::child::fresh_config(dir.path())?;
        let config = Config::try_from(file)?;
        let server = icom_server::tls::load(&config)?.server_config;
        let (std_socket, _) = icom_server::tls::bind_udp(config.listen, &config.transport)?;
        std_socket.set_nonblocking(true)?;
        let addr = std_socket.local_addr()?;
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            Some(Arc::new(server)),
            true,
            None,
        );
        let router = Router::new(
            endpoint,
            Limits {
                max_event_bytes: config.limits.max_event_bytes as u32,
                max_streams: config.limits.max_streams,
            },
        );
        let runtime = router_runtime(NAIVE_THREADS, 1)?;
        let (stop, stopped) = oneshot::channel();
        let started = runtime
            .spawn(async move {
                let socket = UdpSocket::from_std(std_socket)?;
                let state = UdpSocketState::new((&socket).into())?;
                spawn_loop(router, socket, state, stopped);
                anyhow::Ok(())
            })
            .await?;
        started.context("binding the floor router")?;
        Ok(Floor {
            addr,
            stop: Some(stop),
            runtime: Some(runtime),
            pki,
            dir,
        })
    }

    /// Stops it.
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        drop(self.runtime.take());
    }
}

/// Spawns the driving loop on the current runtime.
fn spawn_loop(
    router: Router,
    socket: UdpSocket,
    state: UdpSocketState,
    stopped: oneshot::Receiver<()>,
) {
    tokio::spawn(async move {
        tokio::select! {
            r = drive(router, &socket, &state) => {
                if let Err(e) = r {
                    eprintln!("icom-bench: the floor router stopped: {e:#}");
                }
            }
            _ = stopped => {}
        }
    });
}

/// Reads, routes and writes until an error on the socket.
async fn drive(
    mut router: Router,
    socket: &UdpSocket,
    state: &UdpSocketState,
) -> anyhow::Result<()> {
    let mut recv_buf = vec![0u8; RECV_CHUNK * BATCH_SIZE];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    let mut out = Vec::with_capacity(RECV_CHUNK);
    loop {
        let mut busy = false;
        // Every datagram waiting.
        loop {
            let mut chunks = recv_buf.chunks_mut(RECV_CHUNK);
            let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("BATCH_SIZE chunks")));
            let got = socket.try_io(Interest::READABLE, || {
                state.recv(socket.into(), &mut iovs, &mut metas)
            });
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Err(e).context("receiving"),
            };
            busy = true;
            let now = Instant::now();
            for (meta, iov) in metas.iter().zip(iovs.iter()).take(n) {
                let mut data = BytesMut::from(&iov[..meta.len]);
                while !data.is_empty() {
                    let one = data.split_to(meta.stride.min(data.len()));
                    datagram(&mut router, now, meta, one, &mut out, socket, state).await?;
                }
            }
        }
        let now = Instant::now();
        busy |= router.pass(now);
        for peer in router.peers.values_mut() {
            transmit(&mut peer.conn, now, &mut out, socket, state).await?;
        }
        router.reap();
        if busy {
            continue;
        }
        let due = router
            .peers
            .values_mut()
            .filter_map(|p| p.conn.poll_timeout())
            .min();
        let sleep = async {
            match due {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = socket.readable() => r.context("waiting for the socket")?,
            () = sleep => {
                let now = Instant::now();
                for peer in router.peers.values_mut() {
                    if peer.conn.poll_timeout().is_some_and(|t| t <= now) {
                        peer.conn.handle_timeout(now);
                    }
                }
            }
        }
    }
}

/// Hands one datagram to the endpoint and the connection it is for.
async fn datagram(
    router: &mut Router,
    now: Instant,
    meta: &RecvMeta,
    data: BytesMut,
    out: &mut Vec<u8>,
    socket: &UdpSocket,
    state: &UdpSocketState,
) -> anyhow::Result<()> {
    out.clear();
    let ecn = meta.ecn.map(proto_ecn);
    match router
        .endpoint
        .handle(now, meta.addr, meta.dst_ip, ecn, data, out)
    {
        Some(DatagramEvent::ConnectionEvent(h, ev)) => {
            if let Some(p) = router.peers.get_mut(h) {
                p.conn.handle_event(ev);
            }
        }
        Some(DatagramEvent::NewConnection(incoming)) => {
            out.clear();
            match router.endpoint.accept(incoming, now, out, None) {
                Ok((h, mut conn)) => {
                    conn.set_max_concurrent_streams(
                        Dir::Uni,
                        VarInt::from_u32(router.limits.max_streams),
                    );
                    router.peers.insert(h, Peer::new(conn));
                }
                Err(e) => {
                    if let Some(t) = e.response {
                        send(&t, &out[..t.size], socket, state).await?;
                    }
                }
            }
        }
        Some(DatagramEvent::Response(t)) => send(&t, &out[..t.size], socket, state).await?,
        None => {}
    }
    Ok(())
}
/// Writes every packet the connection has to send.
async fn transmit(
    conn: &mut quinn_proto::Connection,
    now: Instant,
    out: &mut Vec<u8>,
    socket: &UdpSocket,
    state: &UdpSocketState,
) -> anyhow::Result<()> {
    loop {
        out.clear();
        let Some(t) = conn.poll_transmit(now, state.max_gso_segments(), out) else {
            return Ok(());
        };
        send(&t, &out[..t.size], socket, state).await?;
    }
}

/// Sends one transmit, waiting while the socket's buffer is full.
async fn send(
    t: &quinn_proto::Transmit,
    contents: &[u8],
    socket: &UdpSocket,
    state: &UdpSocketState,
) -> anyhow::Result<()> {
    let udp = quinn_udp::Transmit {
        destination: t.destination,
        ecn: t.ecn.map(udp_ecn),
        contents,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    loop {
        match socket.try_io(Interest::WRITABLE, || state.send(socket.into(), &udp)) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                socket.writable().await.context("waiting to send")?;
            }
            // A datagram the OS refused is a lost packet: QUIC sends it
            // again.
            Err(_) => return Ok(()),
        }
    }
}

fn proto_ecn(ecn: quinn_udp::EcnCodepoint) -> quinn_proto::EcnCodepoint {
    match ecn {
        quinn_udp::EcnCodepoint::Ect0 => quinn_proto::EcnCodepoint::Ect0,
        quinn_udp::EcnCodepoint::Ect1 => quinn_proto::EcnCodepoint::Ect1,
        quinn_udp::EcnCodepoint::Ce => quinn_proto::EcnCodepoint::Ce,
    }
}

fn udp_ecn(ecn: quinn_proto::EcnCodepoint) -> quinn_udp::EcnCodepoint {
    match ecn {
        quinn_proto::EcnCodepoint::Ect0 => quinn_udp::EcnCodepoint::Ect0,
        quinn_proto::EcnCodepoint::Ect1 => quinn_udp::EcnCodepoint::Ect1,
        quinn_proto::EcnCodepoint::Ce => quinn_udp::EcnCodepoint::Ce,
    }
}

//! `--plain` (`tput`, `fanout`): the router driven by a plain quinn
//! client instead of `icom-client`, as another implementation of ICOM/1
//! (or an older client) would drive it: quinn with its default transport
//! settings (`TransportConfig::default()`: only TLS and ALPN set), one
//! unidirectional stream per event (`open_uni`, `write_all`, `finish`),
//! each delivery read with `read_to_end`, and the acks read off the control
//! stream with the protocol's `FrameBuffer`. It shows what the router
//! costs when the client does nothing to help it (no ACK_FREQUENCY, no
//! GSO, quinn's default windows and stream limits). Works with every
//! placement: its certificates come from the same files as the client's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use icom_client::ClientConfig;
use icom_protocol::{encode_frame, Control, Deliver, FrameBuffer, Hello, Send, Target, ALPN};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::Semaphore;

use crate::payload::{self, EVENT};
use crate::pump::{Received, Sent};

/// The largest delivery a plain receiver reads (the router's default
/// `max_event_bytes` and then some).
const MAX_DELIVERY: usize = 2 << 20;

/// A plain ICOM/1 peer, welcomed.
pub(crate) struct Plain {
    pub(crate) conn: quinn::Connection,
    /// Kept open: finishing it is how a client says goodbye.
    _control: quinn::SendStream,
    /// The control stream's read half, and what was read of it and not
    /// yet taken (presence, `replayed`, acks).
    acks: Option<(quinn::RecvStream, FrameBuffer)>,
    _endpoint: quinn::Endpoint,
    next_id: u64,
}

impl Plain {
    /// Connects with the certificate, key, CA, address and name of
    /// `config`, sends `hello`, and waits for `welcome`.
    ///
    /// # Errors
    /// When a file does not load, or the router does not welcome it.
    pub(crate) async fn connect(config: &ClientConfig) -> anyhow::Result<Plain> {
        let addr: SocketAddr = tokio::net::lookup_host(&config.router)
            .await
            .with_context(|| format!("resolving {}", config.router))?
            .next()
            .with_context(|| format!("{} has no address", config.router))?;
        let local = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let mut endpoint = quinn::Endpoint::client(local).context("binding a plain client")?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(crypto(config)?));
        let conn = endpoint
            .connect(addr, &config.server_name)?
            .await
            .context("the plain client's handshake")?;
        let (mut control, mut recv) = conn.open_bi().await?;
        let hello = Control::Hello(Hello {
            protocol: icom_protocol::PROTOCOL_VERSION,
            agent: "icom-bench/plain".into(),
            replace: None,
        });
        control.write_all(&encode_frame(&hello)).await?;
        let mut frames = FrameBuffer::new();
        loop {
            match frames.next_message()? {
                Some(Control::Welcome(_)) => break,
                Some(_) => continue,
                None => {}
            }
            let chunk = recv
                .read_chunk(64 * 1024, true)
                .await?
                .context("the router ended the control stream before welcome")?;
            frames.extend(&chunk.bytes);
        }
        Ok(Plain {
            conn,
            _control: control,
            acks: Some((recv, frames)),
            _endpoint: endpoint,
            next_id: 0,
        })
    }
}

/// The TLS 1.3 client configuration of `config`'s files, ring only.
fn crypto(config: &ClientConfig) -> anyhow::Result<Arc<QuicClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in icom_certs::load_certs(&config.ca)? {
        roots.add(ca)?;
    }
    let chain = icom_certs::load_certs(&config.cert)?;
    let key = icom_certs::load_key(&config.key)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(QuicClientConfig::try_from(tls)?))
}

/// Sends `events` events of `size` bytes from `sender` to `to`, each a
/// stream of its own, with at most `window` deliveries' worth in flight
/// (each event takes `per_event` permits; each delivery gives one back),
/// while every receiver counts its share. Returns when every ack and
/// delivery is in, or the connection ends.
pub(crate) async fn phase(
    sender: &mut Plain,
    receivers: &[Plain],
    to: &Target,
    events: u64,
    size: usize,
    window: usize,
    per_event: u64,
) -> anyhow::Result<(Sent, Vec<Received>)> {
    let each = events * per_event / receivers.len().max(1) as u64;
    let credit = Arc::new(Semaphore::new(window * per_event as usize));
    let counting: Vec<_> = receivers
        .iter()
        .map(|r| tokio::spawn(receive(r.conn.clone(), each, credit.clone())))
        .collect();
    let (mut recv, mut frames) = sender.acks.take().context("the acks are being read")?;
    let acks = tokio::spawn(async move {
        let sent = read_acks(&mut recv, &mut frames, events).await;
        (recv, frames, sent)
    });
    let n = u32::try_from(per_event).unwrap_or(u32::MAX);
    for _ in 0..events {
        credit.acquire_many(n).await?.forget();
        sender.next_id += 1;
        let send = Send {
            id: sender.next_id,
            to: to.clone(),
            event: EVENT.into(),
            data: payload::stamped(size),
            persist: None,
            ttl_ms: None,
            reply_to: None,
        };
        let mut stream = sender.conn.open_uni().await.context("opening a stream")?;
        stream
            .write_all(&send.encode())
            .await
            .context("writing an event")?;
        let _ = stream.finish();
    }
    let (recv, frames, sent) = acks.await?;
    sender.acks = Some((recv, frames));
    let mut got = Vec::new();
    for c in counting {
        got.push(c.await?);
    }
    Ok((sent, got))
}

/// Reads acks off the control stream until `events` came or it ends.
async fn read_acks(recv: &mut quinn::RecvStream, frames: &mut FrameBuffer, events: u64) -> Sent {
    let mut s = Sent::default();
    while s.acked + s.failed < events {
        match frames.next_message() {
            Ok(Some(Control::Ack(ack))) => {
                if ack.ok {
                    s.acked += 1;
                } else {
                    s.failed += 1;
                    s.first_error
                        .get_or_insert_with(|| format!("{:?}", ack.error));
                }
                s.deliveries += u64::from(ack.delivered);
                s.queued += u64::from(ack.queued);
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => {
                s.first_error.get_or_insert_with(|| e.to_string());
                break;
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => frames.extend(&chunk.bytes),
            Ok(None) => break,
            Err(e) => {
                s.first_error.get_or_insert_with(|| e.to_string());
                break;
            }
        }
    }
    s.done = Some(Instant::now());
    s
}

/// Accepts and reads deliveries until `expect` came or the connection
/// ends, giving a permit back for each.
async fn receive(conn: quinn::Connection, expect: u64, credit: Arc<Semaphore>) -> Received {
    let mut r = Received::default();
    while r.count < expect {
        let Ok(mut stream) = conn.accept_uni().await else {
            break;
        };
        let Ok(bytes) = stream.read_to_end(MAX_DELIVERY).await else {
            break;
        };
        r.count += 1;
        r.last = Some(Instant::now());
        credit.add_permits(1);
        if let Some(age) = Deliver::decode(&Bytes::from(bytes))
            .ok()
            .and_then(|d| payload::age(&d.data))
        {
            r.latency.push(age);
        }
    }
    r
}

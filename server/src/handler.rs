//! One peer, from handshake to cleanup: identity from the certificate,
//! `hello` → `welcome`, replay, the control messages a client may send,
//! its event streams accepted (each is read, routed and acked by
//! [`crate::event`]), and the writer of outgoing deliveries. The frames
//! themselves are read and written by [`crate::connection`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use icom_protocol::{
    append_frame, CloseCode, Control, Hello, Limits as WireLimits, Pong, Presence, Replayed,
    Roster, StreamCredit, Welcome, FEATURE_REPLACE, FEATURE_WHO, PROTOCOL_VERSION,
};
use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::clock::now_ms;
use crate::connection::{
    close, counted_frame, write_control, write_event, ControlEnd, ControlReader, Written,
};
use crate::deliveries;
use crate::event::{Burst, Unanswered};
use crate::handshakes::Place;
use crate::outbound::Outbound;
use crate::router::{frame, Peer};
use crate::shared::Shared;
use crate::tls::{is_revoked, peer_identity};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// How long a QUIC peer may delay an acknowledgement unless told otherwise.
const DEFAULT_ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(25);

/// Drives one accepted connection until it ends; `place` is its place
/// among the handshakes under way, given up once the handshake is done or
/// has held it long enough ([`Place::hold`]).
pub(crate) async fn handle(shared: Arc<Shared>, connecting: quinn::Connecting, place: Place) {
    let remote = connecting.remote_address();
    let done = place
        .hold(std::pin::pin!(connecting), || {
            debug!(%remote, "a handshake gave its place up unfinished");
            shared.metrics.slow_handshakes.inc();
        })
        .await;
    let conn = match done {
        Ok(c) => c,
        Err(e) => {
            warn!(%remote, "handshake failed: {e}");
            shared.metrics.refuse("handshake");
            return;
        }
    };
    let identity = match peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            warn!(%remote, code = "BAD_IDENTITY", "refused: {e}");
            shared.metrics.refuse("bad_identity");
            close(&conn, CloseCode::BadIdentity);
            return;
        }
    };
    if is_revoked(&shared.crls(), &identity.serial) {
        warn!(%remote, server_id = %identity.server_id, code = "REVOKED", "refused: certificate revoked");
        close(&conn, CloseCode::Revoked);
        shared.metrics.refuse("revoked");
        return;
    }
    let span = tracing::info_span!("conn", server_id = %identity.server_id, %remote);
    run(shared, conn, identity.server_id, identity.serial)
        .instrument(span)
        .await;
}

async fn run(shared: Arc<Shared>, conn: quinn::Connection, server_id: String, serial: Vec<u8>) {
    let config = shared.config();
    let (ctrl_send, ctrl_recv, hello) = match await_hello(&conn, config.limits.hello_timeout).await
    {
        Ok(streams) => streams,
        Err(why) => {
            warn!(code = "PROTOCOL", "refused before hello: {why}");
            shared.metrics.refuse("protocol");
            close(&conn, CloseCode::Protocol);
            return;
        }
    };
    let session = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let (control_tx, control_rx) = mpsc::channel(config.limits.control_queue);
    let since = shared.table.claim_since(&server_id, now_ms());
    let peer = Arc::new(Peer {
        server_id: server_id.clone().into(),
        session,
        conn: conn.clone(),
        outbound: Outbound::new(
            config.limits.outbound_queue_events,
            config.limits.outbound_queue_bytes,
        ),
        control: control_tx.clone(),
        serial,
        since,
        announced: false.into(),
    });
    // The welcome is the first frame: the table queues it as it registers
    // the peer, before any presence can be.
    let groups = config.groups.groups_of(&server_id);
    let session_id = uuid::Uuid::new_v4().hyphenated().to_string();
    let limits = WireLimits {
        max_event_bytes: config.limits.max_event_bytes as u32,
        max_streams: config.limits.max_streams,
    };
    let replace = hello.replace != Some(false);
    let registered = shared.table.register(peer.clone(), replace, |peers| {
        welcome_frames(
            Welcome {
                session_id,
                server_id: server_id.clone(),
                groups,
                peers: Vec::new(),
                limits,
                features: Some(vec![FEATURE_REPLACE.into(), FEATURE_WHO.into()]),
            },
            peers,
        )
    });
    if registered.is_err() {
        info!(code = "IN_USE", agent = %hello.agent, "refused: the identity is connected, and the client asked not to replace it");
        shared.metrics.refuse("in_use");
        close(&conn, CloseCode::InUse);
        return;
    }
    let writer = tokio::spawn(write_control(ctrl_send, control_rx).in_current_span());
    // In a cluster: the identity is this router's everywhere (another
    // router's connection of it closed) before its events are routed.
    shared.space.joined(&peer).await;
    info!(session, "welcomed");
    shared.metrics.accepted.inc();
    // Stored events first, in stored order, then `replayed`, and only then
    // live deliveries (which wait in the outbound queue meanwhile).
    let replayed = tokio::select! {
        n = replay(&shared, &peer) => n,
        _ = conn.closed() => None,
        () = shared.shutdown.cancelled() => None,
    };
    if let Some(count) = replayed {
        let _ = control_tx
            .send(frame(&Control::Replayed(Replayed { count })))
            .await;
    }
    // Beside two round trips, what a retiring connection gives the
    // acknowledgements of what it wrote before its queue was finished.
    let ack_grace = 2 * config.transport.max_ack_delay.unwrap_or(DEFAULT_ACK_DELAY);
    let deliveries =
        tokio::spawn(deliveries::write(shared.clone(), peer.clone(), ack_grace).in_current_span());

    let why = serve(&shared, &peer, ctrl_recv).await;
    match &why {
        Ended::Protocol(msg) => {
            warn!(code = "PROTOCOL", "closing: {msg}");
            close(&conn, CloseCode::Protocol);
        }
        Ended::Finished => close(&conn, CloseCode::Normal),
        Ended::Lost(e) => debug!("connection ended: {e}"),
    }
    let waiting = peer.outbound.take_waiting();
    if shared.table.unregister(&server_id, session) {
        shared.space.left(&server_id, session);
    }
    drop(control_tx);
    writer.abort();
    let _ = deliveries.await;
    deliveries::pass_on(&shared, &peer, waiting.into()).await;
    info!(session, reason = %why, "disconnected");
    let stats = conn.stats();
    debug!(
        rtt = ?stats.path.rtt,
        lost_packets = stats.path.lost_packets,
        sent_packets = stats.path.sent_packets,
        datagrams_in = stats.udp_rx.datagrams,
        datagrams_out = stats.udp_tx.datagrams,
        "transport"
    );
}

#[derive(Debug)]
enum Ended {
    /// The peer broke the protocol.
    Protocol(String),
    /// The peer finished its control stream.
    Finished,
    /// The connection was closed or lost.
    Lost(quinn::ConnectionError),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Protocol(m) => write!(f, "protocol violation: {m}"),
            Ended::Finished => f.write_str("the client finished its control stream"),
            Ended::Lost(e) => write!(f, "{e}"),
        }
    }
}

/// Waits for the control stream and its `hello`; an event stream first,
/// another first frame, or silence past the timeout is a protocol error.
async fn await_hello(
    conn: &quinn::Connection,
    timeout: std::time::Duration,
) -> Result<(SendStream, ControlReader, Hello), String> {
    let work = async {
        let (send, recv) = tokio::select! {
            bi = conn.accept_bi() => bi.map_err(|e| format!("no control stream: {e}"))?,
            uni = conn.accept_uni() => return Err(early_stream(uni)),
        };
        let mut reader = ControlReader::new(recv);
        let first = tokio::select! {
            f = reader.next() => f,
            uni = conn.accept_uni() => return Err(early_stream(uni)),
        };
        match first {
            // A message of an unknown name is still not hello.
            Ok(_) if reader.skipped() > 0 => Err("the first frame is not hello".to_owned()),
            Ok(Control::Hello(h)) if h.protocol == PROTOCOL_VERSION => Ok((send, reader, h)),
            Ok(Control::Hello(h)) => Err(format!("unsupported protocol version {}", h.protocol)),
            Ok(other) => Err(format!("the first frame is '{}', not hello", other.name())),
            Err(ControlEnd::Finished) => Err("the control stream ended before hello".to_owned()),
            Err(end) => Err(end.to_string()),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no hello within {} s", timeout.as_secs()))?
}

fn early_stream(uni: Result<RecvStream, quinn::ConnectionError>) -> String {
    match uni {
        Ok(_) => "an event stream arrived before hello".to_owned(),
        Err(e) => format!("the connection ended before hello: {e}"),
    }
}

/// Serves the control stream and accepts event streams until the
/// connection ends.
///
/// The control stream is read by a task of its own, so that a frame half
/// read when an event stream arrives is never lost, and so that accepting
/// an event stream polls nothing else. The event streams ready at once are
/// taken as one burst: each is read and routed right here when it arrived
/// whole, as most do (only one still waiting for data gets a task of its
/// own), and their acks go out together. While `limits.max_streams`
/// streams wait for their ack, no more are taken: the peer's further
/// streams wait in QUIC, within its stream limit.
async fn serve(shared: &Arc<Shared>, peer: &Arc<Peer>, ctrl: ControlReader) -> Ended {
    let mut control =
        tokio::spawn(read_control(shared.clone(), peer.clone(), ctrl).in_current_span());
    let closed = peer.conn.closed();
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(closed, cancelled);
    let limits = shared.config().limits;
    let mut credit = StreamCredit::new(limits.initial_streams, limits.max_streams);
    let unanswered = Unanswered::new(limits.max_streams, limits.partial_bytes);
    let ended = loop {
        tokio::select! {
            biased;
            stream = peer.conn.accept_uni(), if unanswered.has_room() => match stream {
                Ok(first) => {
                    // Every stream ready now, one burst.
                    let mut burst = Burst::new(shared, peer);
                    let mut next = Some(first);
                    while let Some(recv) = next {
                        let held = unanswered.hold();
                        let open = unanswered.count();
                        if let Some(limit) = credit.accepted(open, Instant::now, || peer.conn.rtt()) {
                            debug!(limit, "more stream credit");
                            peer.conn.set_max_concurrent_uni_streams(limit.into());
                        }
                        burst.take(recv, held);
                        next = if burst.is_full() || !unanswered.has_room() {
                            None
                        } else {
                            accept_now(&peer.conn)
                        };
                    }
                    burst.answer();
                }
                Err(e) => break Ended::Lost(e),
            },
            () = unanswered.room(), if !unanswered.has_room() => {}
            ended = &mut control => {
                break ended.unwrap_or_else(|e| Ended::Protocol(format!("the control task failed: {e}")));
            }
            e = &mut closed => break Ended::Lost(e),
            () = &mut cancelled => {
                close(&peer.conn, CloseCode::Shutdown);
                break Ended::Lost(quinn::ConnectionError::LocallyClosed);
            }
        }
    };
    control.abort();
    ended
}

/// The next event stream if one is ready now, without waiting.
fn accept_now(conn: &quinn::Connection) -> Option<RecvStream> {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::pin!(conn.accept_uni()).poll(&mut cx) {
        Poll::Ready(Ok(recv)) => Some(recv),
        // An error comes again to the accept in `serve`'s loop.
        Poll::Ready(Err(_)) | Poll::Pending => None,
    }
}

/// Reads and answers control frames until the stream ends or breaks the
/// protocol.
async fn read_control(shared: Arc<Shared>, peer: Arc<Peer>, mut ctrl: ControlReader) -> Ended {
    let rosters = Arc::new(Semaphore::new(ROSTERS_WAITING));
    loop {
        let skipped = ctrl.skipped();
        let msg = ctrl.next().await;
        if ctrl.skipped() > skipped {
            debug!("ignored a control message of an unknown name");
        }
        match msg {
            Ok(msg) => {
                if let Err(e) = on_control(&shared, &peer, &rosters, msg).await {
                    return Ended::Protocol(e);
                }
            }
            Err(ControlEnd::Finished) => return Ended::Finished,
            Err(end) => match peer.conn.close_reason() {
                Some(reason) => return Ended::Lost(reason),
                None => return Ended::Protocol(end.to_string()),
            },
        }
    }
}

/// The most `roster` pages waiting for one client at once, queued or
/// written and not yet acknowledged by its QUIC stack. A `who` is a few
/// bytes and its page up to 1000 entries: past this, the router reads no
/// more of the client's control frames until a page is gone, so a client
/// that asks and does not read cannot make the router hold pages by the
/// thousand.
const ROSTERS_WAITING: usize = 4;

async fn on_control(
    shared: &Shared,
    peer: &Peer,
    rosters: &Arc<Semaphore>,
    msg: Control,
) -> Result<(), String> {
    match msg {
        Control::Ping(p) => {
            let _ = peer
                .control
                .send(frame(&Control::Pong(Pong { nonce: p.nonce })))
                .await;
        }
        Control::Forget(f) => {
            let ack = crate::dispatch::forget(shared, &peer.server_id, f.id, f.persist_id).await;
            let _ = peer.control.send(frame(&Control::Ack(ack))).await;
        }
        Control::Who(w) => {
            let Ok(place) = rosters.clone().acquire_owned().await else {
                return Ok(());
            };
            let here = shared.config().cluster.as_ref().map(|c| c.name.clone());
            let (servers, more) =
                shared
                    .table
                    .roster(&peer.server_id, w.after.as_deref(), here.as_deref());
            let roster = Control::Roster(Roster {
                id: w.id,
                servers,
                more,
            });
            let _ = peer.control.send(counted_frame(&roster, place)).await;
        }
        other => return Err(format!("a client may not send '{}'", other.name())),
    }
    Ok(())
}

/// The most peers one `welcome` lists: the others follow at once as
/// `presence` frames in the same write (PROTOCOL.md §3.2), so that the
/// welcome stays far under the 1 MiB frame bound (8,192 ids of 64
/// characters: about 540 KiB).
const WELCOME_PEERS: usize = 8192;

/// `welcome` listing at most [`WELCOME_PEERS`] of `peers`, then a
/// `presence` (online) frame for each of the rest, as one buffer.
fn welcome_frames(mut welcome: Welcome, mut peers: Vec<String>) -> Bytes {
    let rest = if peers.len() > WELCOME_PEERS {
        peers.split_off(WELCOME_PEERS)
    } else {
        Vec::new()
    };
    welcome.peers = peers;
    let mut out = Vec::new();
    append_frame(&mut out, &Control::Welcome(welcome));
    for server_id in rest {
        let online = Presence {
            server_id,
            online: true,
        };
        append_frame(&mut out, &Control::Presence(online));
    }
    Bytes::from(out)
}

/// Opens a stream for every stored event due to this peer, in stored
/// order. A queued copy is deleted once the peer's QUIC stack has
/// acknowledged its whole stream. Returns how many were opened.
async fn replay(shared: &Arc<Shared>, peer: &Arc<Peer>) -> Option<u32> {
    // The sends resolved before this peer registered are stored first.
    shared.storing.settled().await;
    let due = match shared.keep.due_for(peer, shared.config()).await {
        Ok(due) => due,
        Err(e) => {
            warn!("cannot read the stored events due: {e}");
            return None;
        }
    };
    let count = due.len() as u32;
    for item in due {
        match write_event(&peer.conn, item.wire).await? {
            Written::Whole(stream) if item.queued => {
                delete_when_acked(shared.clone(), stream, item.seq);
            }
            // One the client stopped (more than it takes now, say): kept,
            // and the rest of the replay goes on.
            Written::Whole(_) | Written::Cut => {}
        }
    }
    if count > 0 {
        info!(count, "replayed stored events");
    }
    Some(count)
}

/// Deletes the queued copy `seq` once the peer's QUIC stack acknowledged
/// the whole `stream` that carried it; kept if the stream was stopped or
/// the connection ended first.
pub(crate) fn delete_when_acked(shared: Arc<Shared>, stream: SendStream, seq: u64) {
    tokio::spawn(
        async move {
            if let Ok(None) = stream.stopped().await {
                if let Err(e) = shared.keep.delivered(seq).await {
                    warn!("could not delete a delivered queued event: {e}");
                }
            }
        }
        .in_current_span(),
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use icom_protocol::{FrameBuffer, MAX_FRAME_LEN};

    use super::*;

    /// 20,000 peers of 64-character ids: the welcome lists 8,192 and stays
    /// under the frame bound; presence frames follow for the rest, so that
    /// the client's list holds all of them.
    #[test]
    fn a_welcome_past_its_peers_bound_is_followed_by_presence() {
        let peers: Vec<String> = (0..20_000).map(|i| format!("{i:064}")).collect();
        let welcome = Welcome {
            session_id: "s".into(),
            server_id: "me".into(),
            groups: Vec::new(),
            peers: Vec::new(),
            limits: WireLimits {
                max_event_bytes: 1024,
                max_streams: 1024,
            },
            features: None,
        };
        let bytes = welcome_frames(welcome.clone(), peers.clone());
        let mut frames = FrameBuffer::new();
        frames.extend(&bytes);
        let Some(Control::Welcome(first)) = frames.next_message().unwrap() else {
            panic!("the welcome first");
        };
        assert_eq!(first.peers, peers[..WELCOME_PEERS]);
        let mut known: Vec<String> = first.peers;
        while let Some(msg) = frames.next_message().unwrap() {
            let Control::Presence(p) = msg else {
                panic!("{msg:?}");
            };
            assert!(p.online);
            known.push(p.server_id);
        }
        assert_eq!(known, peers);
        let welcome_len = icom_protocol::encode_frame(&Control::Welcome(Welcome {
            peers: peers[..WELCOME_PEERS].to_vec(),
            ..welcome.clone()
        }))
        .len();
        assert!(welcome_len < MAX_FRAME_LEN * 3 / 5, "{welcome_len}");
        // Few peers: the welcome alone.
        let small = welcome_frames(welcome, vec!["a".into()]);
        let mut frames = FrameBuffer::new();
        frames.extend(&small);
        assert!(
            matches!(frames.next_message().unwrap(), Some(Control::Welcome(w)) if w.peers == ["a"])
        );
        assert!(frames.next_message().unwrap().is_none());
    }
}

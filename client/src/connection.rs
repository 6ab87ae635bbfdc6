//! One connection to the router: the handshake up to `welcome`, the
//! control stream (frames both ways), event streams out, and the tables of
//! operations that wait for an `ack`, a `pong` or a reply.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use icom_protocol::{
    decode_control, encode_frame, split_frame, Ack, CloseCode, Control, Hello, Welcome,
    PROTOCOL_VERSION,
};
use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use crate::config::ClientConfig;
use crate::error::ConnectError;
use crate::event::Event;
use crate::loss::Loss;

/// Locks a mutex; a panic elsewhere while it was held does not matter to
/// the plain tables it guards.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection that has been welcomed.
#[derive(Debug)]
pub(crate) struct Live {
    /// Counts the connections of one client.
    pub(crate) generation: u64,
    pub(crate) conn: Connection,
    pub(crate) welcome: Welcome,
    /// Shared with the write tasks, which outlive a cancelled caller.
    control: Arc<tokio::sync::Mutex<SendStream>>,
    pending: Mutex<Pending>,
}

/// What waits for the router, by id.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    closed: bool,
    acks: HashMap<u64, Entry<Ack>>,
    pongs: HashMap<u64, Entry<()>>,
    replies: HashMap<u64, Entry<Reply>>,
}

/// One waiting operation: where its answer goes, and the server it waits
/// on, if any.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    /// `None` once answered.
    to: Option<To<T>>,
    peer: Option<Box<str>>,
}

/// Where an answer goes.
#[derive(Debug)]
pub(crate) enum To<T> {
    /// To one waiting operation.
    Once(oneshot::Sender<T>),
    /// Onto a channel that many operations share (a
    /// [`Publisher`](crate::Publisher)'s), with the id; an entry dropped
    /// unanswered (the connection went away) sends `None` instead. The
    /// permit is the operation's place in the in-flight window, held until
    /// it is answered.
    Stream {
        id: u64,
        tx: mpsc::UnboundedSender<(u64, Option<T>)>,
        permit: OwnedSemaphorePermit,
    },
}

impl<T> Entry<T> {
    /// Hands `value` on; gives it back if nobody takes it.
    fn send(mut self, value: T) -> Result<(), T> {
        match self.to.take() {
            Some(To::Once(tx)) => tx.send(value),
            Some(To::Stream { id, tx, permit }) => {
                drop(permit);
                match tx.send((id, Some(value))) {
                    Ok(()) => Ok(()),
                    Err(e) => e.0 .1.map_or(Ok(()), Err),
                }
            }
            None => Err(value),
        }
    }
}

impl<T> Drop for Entry<T> {
    fn drop(&mut self) {
        if let Some(To::Stream { id, tx, permit }) = self.to.take() {
            drop(permit);
            let _ = tx.send((id, None));
        }
    }
}

/// What a request gets.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The reply.
    Event(Event),
    /// The server asked disconnected before it replied.
    PeerLeft,
}

/// Picks one table of [`Pending`].
type Table<T> = fn(&mut Pending) -> &mut HashMap<u64, Entry<T>>;

pub(crate) const ACKS: Table<Ack> = |p| &mut p.acks;
pub(crate) const PONGS: Table<()> = |p| &mut p.pongs;
pub(crate) const REPLIES: Table<Reply> = |p| &mut p.replies;

/// Why an event stream could not be written.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// Nothing reached the router as a whole send: safe to try again on the
    /// next connection.
    NotSent,
}

/// How a waiter ended without its answer.
#[derive(Debug)]
pub(crate) enum WaitError {
    Timeout,
    Lost,
}

impl Live {
    /// Registers a waiter for `id` in `table`, waiting on `peer` if given;
    /// `None` if the connection is already gone.
    pub(crate) fn register<T>(
        self: &Arc<Self>,
        table: Table<T>,
        id: u64,
        peer: Option<&str>,
    ) -> Option<Waiter<T>> {
        let (tx, rx) = oneshot::channel();
        self.expect(table, id, peer, To::Once(tx)).ok()?;
        Some(Waiter {
            live: self.clone(),
            table,
            id,
            rx,
            settled: false,
        })
    }

    /// Records that the answer for `id` in `table` goes `to`, waiting on
    /// `peer` if given; gives `to` back if the connection is already gone.
    pub(crate) fn expect<T>(
        &self,
        table: Table<T>,
        id: u64,
        peer: Option<&str>,
        to: To<T>,
    ) -> Result<(), To<T>> {
        let mut pending = lock(&self.pending);
        if pending.closed {
            return Err(to);
        }
        let peer = peer.map(Box::from);
        table(&mut pending).insert(id, Entry { to: Some(to), peer });
        Ok(())
    }

    /// Takes back what waits for `id` in `table`, without telling it.
    pub(crate) fn unexpect<T>(&self, table: Table<T>, id: u64) -> Option<To<T>> {
        let entry = table(&mut lock(&self.pending)).remove(&id);
        entry.and_then(|mut e| e.to.take())
    }

    /// Hands an answer to its waiter; gives it back if nobody waits.
    pub(crate) fn answer<T>(&self, table: Table<T>, id: u64, value: T) -> Result<(), T> {
        let entry = table(&mut lock(&self.pending)).remove(&id);
        match entry {
            Some(entry) => entry.send(value),
            None => Err(value),
        }
    }

    /// `server` disconnected: the requests it has not answered fail.
    pub(crate) fn peer_left(&self, server: &str) {
        let mut pending = lock(&self.pending);
        let gone: Vec<u64> = pending
            .replies
            .iter()
            .filter(|(_, e)| e.peer.as_deref() == Some(server))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(entry) = pending.replies.remove(&id) {
                let _ = entry.send(Reply::PeerLeft);
            }
        }
    }

    /// Fails every waiter: the connection is gone.
    pub(crate) fn fail_pending(&self) {
        let mut pending = lock(&self.pending);
        pending.closed = true;
        pending.acks.clear();
        pending.pongs.clear();
        pending.replies.clear();
    }

    /// Writes one event stream: open, the whole send, FIN.
    pub(crate) async fn write_event(&self, bytes: Bytes) -> Result<(), StreamError> {
        let mut stream = self
            .conn
            .open_uni()
            .await
            .map_err(|_| StreamError::NotSent)?;
        match stream.write_chunk(bytes).await {
            Ok(()) => {}
            // The router stopped reading (too large): it acks that.
            Err(WriteError::Stopped(_)) => return Ok(()),
            Err(_) => return Err(StreamError::NotSent),
        }
        stream.finish().map_err(|_| StreamError::NotSent)
    }

    /// Writes one control frame. The write runs in its own task, so a
    /// caller that gives up (a timeout, a dropped future) cannot leave half
    /// a frame on the control stream.
    pub(crate) async fn write_control(&self, msg: &Control) -> Result<(), StreamError> {
        let frame = encode_frame(msg);
        let control = self.control.clone();
        tokio::spawn(async move {
            let mut control = control.lock().await;
            control.write_all(&frame).await
        })
        .await
        .map_err(|_| StreamError::NotSent)?
        .map_err(|_| StreamError::NotSent)
    }

    /// Closes the connection with `code`.
    pub(crate) fn close(&self, code: CloseCode) {
        self.conn
            .close(VarInt::from_u32(code.code()), code.as_str().as_bytes());
    }
}

/// An operation waiting for its answer; it leaves the table when dropped.
#[derive(Debug)]
pub(crate) struct Waiter<T> {
    live: Arc<Live>,
    table: Table<T>,
    id: u64,
    rx: oneshot::Receiver<T>,
    settled: bool,
}

impl<T> Waiter<T> {
    /// Waits for the answer, at most `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Result<T, WaitError> {
        let answer = tokio::time::timeout(timeout, &mut self.rx).await;
        match answer {
            Ok(Ok(v)) => {
                self.settled = true;
                Ok(v)
            }
            Ok(Err(_)) => {
                self.settled = true;
                Err(WaitError::Lost)
            }
            Err(_) => Err(WaitError::Timeout),
        }
    }
}

impl<T> Drop for Waiter<T> {
    fn drop(&mut self) {
        if !self.settled {
            (self.table)(&mut lock(&self.live.pending)).remove(&self.id);
        }
    }
}

/// Reads control frames off the control stream.
#[derive(Debug)]
pub(crate) struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
}

/// Why the control stream ended.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The router broke the framing or sent a bad message.
    Protocol(String),
    /// The stream or the connection ended.
    Closed(String),
}

impl FrameReader {
    pub(crate) fn new(recv: RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// The next control message of a known name (unknown ones are skipped).
    pub(crate) async fn next(&mut self) -> Result<Control, FrameError> {
        loop {
            let split = split_frame(&self.buf).map_err(|e| FrameError::Protocol(e.to_string()))?;
            if let Some((body, used)) = split {
                let msg = decode_control(body);
                self.buf.advance(used);
                match msg {
                    Ok(Some(msg)) => return Ok(msg),
                    Ok(None) => continue,
                    Err(e) => return Err(FrameError::Protocol(e.to_string())),
                }
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) => {
                    return Err(FrameError::Closed(
                        "the router ended the control stream".into(),
                    ))
                }
                Err(e) => return Err(FrameError::Closed(e.to_string())),
            }
        }
    }
}

/// Dials the router, says `hello` and waits for `welcome`.
///
/// # Errors
/// [`ConnectError`]; a certificate the router refuses is
/// [`ConnectError::CertificateRefused`].
pub(crate) async fn establish(
    endpoint: &quinn::Endpoint,
    quic: &quinn::ClientConfig,
    cfg: &ClientConfig,
    addr: SocketAddr,
    generation: u64,
) -> Result<(Arc<Live>, FrameReader), ConnectError> {
    let connecting = endpoint
        .connect_with(quic.clone(), addr, &cfg.server_name)
        .map_err(|e| ConnectError::Connection(e.to_string()))?;
    let conn = connecting
        .await
        .map_err(|e| Loss::of(&e).into_connect_error())?;
    // From here on, a failure may be the router's verdict on our
    // certificate: in TLS 1.3 the client's handshake is complete before the
    // server has checked the client's certificate, so any TLS alert now is
    // about that certificate.
    let verdict = |e: &ConnectionError| match Loss::of(e) {
        Loss::Handshake(alert) => ConnectError::CertificateRefused { alert },
        loss => loss.into_connect_error(),
    };
    let lost = |conn: &Connection, fallback: String| match conn.close_reason() {
        Some(e) => verdict(&e),
        None => ConnectError::Connection(fallback),
    };
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Err(verdict(&e)),
    };
    let hello = Control::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent: cfg.agent.clone(),
    });
    if let Err(e) = send.write_all(&encode_frame(&hello)).await {
        return Err(lost(&conn, e.to_string()));
    }
    let mut reader = FrameReader::new(recv);
    let welcome = loop {
        match reader.next().await {
            Ok(Control::Welcome(w)) => break w,
            Ok(Control::Presence(_)) => continue,
            Ok(other) => {
                let e = format!("expected 'welcome', got '{}'", other.name());
                close(&conn, CloseCode::Protocol);
                return Err(ConnectError::Protocol(e));
            }
            Err(FrameError::Protocol(e)) => {
                close(&conn, CloseCode::Protocol);
                return Err(ConnectError::Protocol(e));
            }
            Err(FrameError::Closed(e)) => {
                // Let the CONNECTION_CLOSE that ended the stream arrive.
                let _ = tokio::time::timeout(Duration::from_millis(200), conn.closed()).await;
                return Err(lost(&conn, e));
            }
        }
    };
    let live = Arc::new(Live {
        generation,
        conn,
        welcome,
        control: Arc::new(tokio::sync::Mutex::new(send)),
        pending: Mutex::new(Pending::default()),
    });
    Ok((live, reader))
}

fn close(conn: &Connection, code: CloseCode) {
    conn.close(VarInt::from_u32(code.code()), code.as_str().as_bytes());
}

pub(crate) async fn resolve(router: &str) -> Result<SocketAddr, ConnectError> {
    let resolve_error = |detail: String| ConnectError::Resolve {
        router: router.to_owned(),
        detail,
    };
    let mut addrs = tokio::net::lookup_host(router)
        .await
        .map_err(|e| resolve_error(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| resolve_error("no address".into()))
}

//! One connection to the router: the handshake up to `welcome`, and the
//! frames and streams over it (control frames both ways through
//! [`FrameBuffer`], one stream per event out). What waits for an answer is
//! the session's business (`crate::session`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{
    encode_frame, CloseCode, Control, FrameBuffer, Hello, Welcome, PROTOCOL_VERSION,
};
use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt, WriteError};

use crate::config::ClientConfig;
use crate::error::ConnectError;
use crate::loss::Loss;

/// A connection that has been welcomed.
#[derive(Debug)]
pub(crate) struct Live {
    /// Counts the connections of one client.
    pub(crate) generation: u64,
    /// The router's address as configured, `host:port`.
    pub(crate) router: String,
    pub(crate) conn: Connection,
    pub(crate) welcome: Welcome,
    /// Shared with the write tasks, which outlive a cancelled caller.
    control: Arc<tokio::sync::Mutex<SendStream>>,
    /// When a move off this connection last said `hello` to another
    /// router ([`Live::said_hello_elsewhere`]).
    hello_elsewhere: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Why an event stream could not be written.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// Nothing reached the router as a whole send: safe to try again on the
    /// next connection.
    NotSent,
}

impl Live {
    /// A move off this connection says `hello` to another router now: in
    /// a cluster, that router takes the identity, and this connection's
    /// router closes it with `REPLACED`, whether the move finishes or not.
    pub(crate) fn said_hello_elsewhere(&self) {
        *icom_protocol::lock(&self.hello_elsewhere) = Some(tokio::time::Instant::now());
    }

    /// Whether a move off this connection said `hello` elsewhere within
    /// the last `within`.
    pub(crate) fn said_hello_elsewhere_within(&self, within: Duration) -> bool {
        icom_protocol::lock(&self.hello_elsewhere).is_some_and(|at| at.elapsed() < within)
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

/// Reads control frames off the control stream.
#[derive(Debug)]
pub(crate) struct FrameReader {
    recv: RecvStream,
    frames: FrameBuffer,
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
            frames: FrameBuffer::new(),
        }
    }

    /// The next control message of a known name (unknown ones are skipped).
    pub(crate) async fn next(&mut self) -> Result<Control, FrameError> {
        loop {
            match self.frames.next_message() {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(e) => return Err(FrameError::Protocol(e.to_string())),
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.frames.extend(&chunk.bytes),
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

/// Dials the router at `addr`: the QUIC handshake, which tells that the
/// router is up, not yet that it accepts this client ([`greet`] does).
///
/// # Errors
/// [`ConnectError`].
pub(crate) async fn dial(
    endpoint: &quinn::Endpoint,
    quic: &quinn::ClientConfig,
    cfg: &ClientConfig,
    addr: SocketAddr,
) -> Result<Connection, ConnectError> {
    let connecting = endpoint
        .connect_with(quic.clone(), addr, &cfg.server_name)
        .map_err(|e| ConnectError::Connection(e.to_string()))?;
    connecting
        .await
        .map_err(|e| Loss::of(&e).into_connect_error())
}

/// Says `hello` on a connection [`dial`] made to `router`, and waits for
/// `welcome`.
///
/// # Errors
/// [`ConnectError`]; a certificate the router refuses is
/// [`ConnectError::CertificateRefused`].
pub(crate) async fn greet(
    conn: Connection,
    cfg: &ClientConfig,
    router: &str,
    generation: u64,
) -> Result<(Arc<Live>, FrameReader), ConnectError> {
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
        // Only a client that must not replace says so: a router before
        // `replace` gets the hello it always got.
        replace: (!cfg.replace).then_some(false),
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
        router: router.to_owned(),
        conn,
        welcome,
        control: Arc::new(tokio::sync::Mutex::new(send)),
        hello_elsewhere: std::sync::Mutex::new(None),
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

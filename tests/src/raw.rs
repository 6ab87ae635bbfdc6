//! A raw ICOM/1 peer: QUIC + TLS with a chosen certificate, and the
//! protocol frame by frame, so tests can send exactly the bytes they mean,
//! well-formed or not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use icom_certs::testing::TestPki;
use icom_certs::Issued;
use icom_protocol::{
    decode_control, encode_frame, frame_len, Ack, CloseCode, Control, Deliver, Hello, Ping, Send,
    Welcome, ALPN, FRAME_HEADER_LEN,
};
use quinn::crypto::rustls::QuicClientConfig;

use crate::WAIT;

/// What went wrong for a raw peer.
#[derive(Debug)]
pub enum RawError {
    /// The connection ended; the router's close code if it sent one.
    Closed(quinn::ConnectionError),
    /// A wait passed [`WAIT`].
    Timeout(&'static str),
    /// Something else, described.
    Other(String),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Closed(e) => write!(f, "connection closed: {e}"),
            RawError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            RawError::Other(m) => f.write_str(m),
        }
    }
}

/// A raw peer.
pub struct RawClient {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    ctrl: Option<(quinn::SendStream, quinn::RecvStream)>,
    /// The welcome, once read.
    pub welcome: Option<Welcome>,
    /// Control messages read while waiting for something else (presence…).
    pub backlog: Vec<Control>,
}

/// A client TLS config trusting `pki`'s CA; with a client cert if given.
pub fn client_crypto(pki: &TestPki, cert: Option<&Issued>) -> Arc<QuicClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki.ca().cert_der())
        .expect("the test CA is valid");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut tls = match cert {
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert_der()], c.key_der())
            .expect("a usable client cert"),
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(QuicClientConfig::try_from(tls).expect("a QUIC-capable TLS config"))
}

impl RawClient {
    /// Connects (QUIC + TLS) with `cert`; sends nothing yet.
    ///
    /// # Errors
    /// [`RawError`] when the handshake fails on this side.
    pub async fn connect(
        addr: SocketAddr,
        pki: &TestPki,
        cert: &Issued,
    ) -> Result<RawClient, RawError> {
        RawClient::connect_with(addr, client_crypto(pki, Some(cert))).await
    }

    /// Connects with a good certificate for `id` and completes `hello` →
    /// `welcome`.
    ///
    /// # Panics
    /// If either fails.
    pub async fn welcomed(addr: SocketAddr, pki: &TestPki, id: &str) -> RawClient {
        let mut c = RawClient::connect(addr, pki, &pki.client(id))
            .await
            .expect("connecting a raw client");
        c.hello().await.expect("hello → welcome");
        c
    }

    /// Connects with a ready TLS config.
    ///
    /// # Errors
    /// [`RawError`] when the handshake fails on this side.
    pub async fn connect_with(
        addr: SocketAddr,
        crypto: Arc<QuicClientConfig>,
    ) -> Result<RawClient, RawError> {
        RawClient::connect_opts(addr, crypto, 10_000).await
    }

    /// Connects with a ready TLS config, letting the router open at most
    /// `max_uni_streams` delivery streams at once (a small number makes a
    /// recipient that never reads).
    ///
    /// # Errors
    /// [`RawError`] when the handshake fails on this side.
    pub async fn connect_opts(
        addr: SocketAddr,
        crypto: Arc<QuicClientConfig>,
        max_uni_streams: u32,
    ) -> Result<RawClient, RawError> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(max_uni_streams.into())
            .send_fairness(false);
        RawClient::connect_transport(addr, crypto, transport).await
    }

    /// Connects with a ready TLS config and transport settings.
    ///
    /// # Errors
    /// [`RawError`] when the handshake fails on this side.
    pub async fn connect_transport(
        addr: SocketAddr,
        crypto: Arc<QuicClientConfig>,
        transport: quinn::TransportConfig,
    ) -> Result<RawClient, RawError> {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| RawError::Other(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(crypto);
        config.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(config);
        let connecting = endpoint
            .connect(addr, "localhost")
            .map_err(|e| RawError::Other(e.to_string()))?;
        let conn = tokio::time::timeout(WAIT, connecting)
            .await
            .map_err(|_| RawError::Timeout("the handshake"))?
            .map_err(RawError::Closed)?;
        Ok(RawClient {
            conn,
            endpoint,
            ctrl: None,
            welcome: None,
            backlog: Vec::new(),
        })
    }

    /// Opens the control stream (if not yet open) and writes `bytes` on it.
    ///
    /// # Errors
    /// [`RawError`] when the stream cannot be opened or written.
    pub async fn write_control_bytes(&mut self, bytes: &[u8]) -> Result<(), RawError> {
        if self.ctrl.is_none() {
            let streams = self.conn.open_bi().await.map_err(RawError::Closed)?;
            self.ctrl = Some(streams);
        }
        let (send, _) = self.ctrl.as_mut().expect("opened above");
        send.write_all(bytes)
            .await
            .map_err(|e| RawError::Other(format!("writing control: {e}")))
    }

    /// Sends one control message.
    ///
    /// # Errors
    /// As [`RawClient::write_control_bytes`].
    pub async fn send_control(&mut self, msg: &Control) -> Result<(), RawError> {
        self.write_control_bytes(&encode_frame(msg)).await
    }

    /// Finishes the control stream: the protocol's way to disconnect.
    pub fn finish_control(&mut self) {
        if let Some((send, _)) = self.ctrl.as_mut() {
            let _ = send.finish();
        }
    }

    /// Sends `hello` and reads `welcome`.
    ///
    /// # Errors
    /// [`RawError::Closed`] if the router closes instead.
    pub async fn hello(&mut self) -> Result<Welcome, RawError> {
        self.hello_with(Hello::new("icom-tests/raw")).await
    }

    /// Sends `hello` as given (e.g. with `replace: Some(false)`) and reads
    /// `welcome`.
    ///
    /// # Errors
    /// [`RawError::Closed`] if the router closes instead.
    pub async fn hello_with(&mut self, hello: Hello) -> Result<Welcome, RawError> {
        self.send_control(&Control::Hello(hello)).await?;
        match self.next_control().await? {
            Control::Welcome(w) => {
                self.welcome = Some(w.clone());
                Ok(w)
            }
            other => Err(RawError::Other(format!("expected welcome, got {other:?}"))),
        }
    }

    /// Reads the next control message of a known name.
    ///
    /// # Errors
    /// [`RawError`] on close, timeout or a bad frame.
    pub async fn next_control(&mut self) -> Result<Control, RawError> {
        let Some((_, recv)) = self.ctrl.as_mut() else {
            return Err(RawError::Other("no control stream".into()));
        };
        let conn = self.conn.clone();
        let read = async {
            loop {
                let mut header = [0u8; FRAME_HEADER_LEN];
                recv.read_exact(&mut header)
                    .await
                    .map_err(|e| read_failed(&conn, e))?;
                let len = frame_len(header).map_err(|e| RawError::Other(e.to_string()))?;
                let mut body = vec![0u8; len];
                recv.read_exact(&mut body)
                    .await
                    .map_err(|e| read_failed(&conn, e))?;
                match decode_control(&body).map_err(|e| RawError::Other(e.to_string()))? {
                    Some(msg) => return Ok(msg),
                    None => continue,
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .map_err(|_| RawError::Timeout("a control frame"))?
    }

    /// Sends `ping` with `nonce` and reads the `pong` that answers; the
    /// other control messages go to the backlog. Returns the pong's nonce.
    ///
    /// # Errors
    /// As [`RawClient::send_control`] and [`RawClient::control_until`].
    pub async fn ping(&mut self, nonce: u64) -> Result<u64, RawError> {
        self.send_control(&Control::Ping(Ping { nonce })).await?;
        self.control_until(|m| match m {
            Control::Pong(p) => Some(p.nonce),
            _ => None,
        })
        .await
    }

    /// Reads control messages until the ack of `id`; the others go to the
    /// backlog.
    ///
    /// # Errors
    /// As [`RawClient::next_control`].
    pub async fn ack(&mut self, id: u64) -> Result<Ack, RawError> {
        loop {
            match self.next_control().await? {
                Control::Ack(a) if a.id == id => return Ok(a),
                other => self.backlog.push(other),
            }
        }
    }

    /// The `presence` messages this client reads within `within`, in
    /// order, as `(server_id, online)`; other control messages are
    /// dropped.
    pub async fn presence_within(&mut self, within: Duration) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Ok(m)) = tokio::time::timeout_at(deadline, self.next_control()).await {
            if let Control::Presence(p) = m {
                out.push((p.server_id, p.online));
            }
        }
        out
    }

    /// Applies this client's `welcome.peers` and then the `presence`
    /// messages it reads until its view of who is connected is `want`;
    /// other control messages are dropped.
    ///
    /// # Panics
    /// If the view is not `want` within [`WAIT`], or the connection ends.
    pub async fn view_becomes(&mut self, want: &[&str]) {
        let want: std::collections::BTreeSet<String> =
            want.iter().map(|s| (*s).to_owned()).collect();
        let mut view: std::collections::BTreeSet<String> = self
            .welcome
            .as_ref()
            .expect("a welcomed client")
            .peers
            .iter()
            .cloned()
            .collect();
        let deadline = tokio::time::Instant::now() + WAIT;
        while view != want {
            let m = tokio::time::timeout_at(deadline, self.next_control())
                .await
                .unwrap_or_else(|_| panic!("the view stayed {view:?}, not {want:?}"))
                .expect("a control message");
            if let Control::Presence(p) = m {
                if p.online {
                    view.insert(p.server_id);
                } else {
                    view.remove(&p.server_id);
                }
            }
        }
    }

    /// Reads control messages until one matches `pick`; the others go to
    /// the backlog.
    ///
    /// # Errors
    /// As [`RawClient::next_control`].
    pub async fn control_until<T>(
        &mut self,
        mut pick: impl FnMut(&Control) -> Option<T>,
    ) -> Result<T, RawError> {
        if let Some(pos) = self.backlog.iter().position(|m| pick(m).is_some()) {
            let m = self.backlog.remove(pos);
            return Ok(pick(&m).expect("matched above"));
        }
        loop {
            let m = self.next_control().await?;
            match pick(&m) {
                Some(t) => return Ok(t),
                None => self.backlog.push(m),
            }
        }
    }

    /// Writes `bytes` as one event stream and finishes it.
    ///
    /// # Errors
    /// [`RawError`] when the stream cannot be opened or written.
    pub async fn send_event_bytes(&self, bytes: &[u8]) -> Result<(), RawError> {
        let mut s = self.conn.open_uni().await.map_err(RawError::Closed)?;
        s.write_all(bytes)
            .await
            .map_err(|e| RawError::Other(format!("writing an event: {e}")))?;
        let _ = s.finish();
        Ok(())
    }

    /// Sends a `send` and reads its ack.
    ///
    /// # Errors
    /// As [`RawClient::send_event_bytes`] and [`RawClient::ack`].
    pub async fn send(&mut self, send: &Send) -> Result<Ack, RawError> {
        self.send_event_bytes(&send.encode()).await?;
        self.ack(send.id).await
    }

    /// Reads `replayed` and then the deliveries it announced, in the order
    /// they came.
    ///
    /// # Errors
    /// As [`RawClient::control_until`] and [`RawClient::deliver`].
    pub async fn replayed(&mut self) -> Result<Vec<Deliver>, RawError> {
        let count = self
            .control_until(|m| match m {
                Control::Replayed(r) => Some(r.count),
                _ => None,
            })
            .await?;
        let mut got = Vec::new();
        for _ in 0..count {
            got.push(self.deliver().await?);
        }
        Ok(got)
    }

    /// Accepts the next event stream and decodes it as a `deliver`.
    ///
    /// # Errors
    /// [`RawError`] on close, timeout or a bad stream.
    pub async fn deliver(&self) -> Result<Deliver, RawError> {
        let bytes = self.deliver_bytes().await?;
        Deliver::decode(&bytes).map_err(|e| RawError::Other(format!("bad deliver: {e}")))
    }

    /// Accepts the next event stream and returns its bytes.
    ///
    /// # Errors
    /// [`RawError`] on close or timeout.
    pub async fn deliver_bytes(&self) -> Result<Bytes, RawError> {
        let read = async {
            let mut s = self.conn.accept_uni().await.map_err(RawError::Closed)?;
            s.read_to_end(usize::MAX)
                .await
                .map(Bytes::from)
                .map_err(|e| RawError::Other(format!("reading a deliver: {e}")))
        };
        tokio::time::timeout(WAIT, read)
            .await
            .map_err(|_| RawError::Timeout("a delivery"))?
    }

    /// Whether a delivery arrives within `within`: for asserting that none
    /// does (a bounded wait, never a verdict on speed).
    pub async fn no_delivery_within(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.conn.accept_uni())
            .await
            .is_err()
    }

    /// Waits for the connection to close and returns the router's close
    /// code, or the error if it was not an application close.
    pub async fn closed(&self) -> Result<u64, quinn::ConnectionError> {
        self.closed_within(WAIT).await
    }

    /// As [`RawClient::closed`], waiting at most `within`.
    async fn closed_within(&self, within: Duration) -> Result<u64, quinn::ConnectionError> {
        let e = tokio::time::timeout(within, self.conn.closed())
            .await
            .unwrap_or(quinn::ConnectionError::TimedOut);
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => Ok(c.error_code.into_inner()),
            other => Err(other),
        }
    }

    /// Waits for the router to close the connection with `code`.
    ///
    /// # Panics
    /// If it closes otherwise, or not within [`WAIT`].
    pub async fn expect_closed(&self, code: CloseCode) {
        self.expect_closed_within(code, WAIT).await;
    }

    /// Waits, at most `within`, for the router to close the connection
    /// with `code`.
    ///
    /// # Panics
    /// If it closes otherwise, or not within `within`.
    pub async fn expect_closed_within(&self, code: CloseCode, within: Duration) {
        match self.closed_within(within).await {
            Ok(c) => assert_eq!(
                c,
                u64::from(code.code()),
                "closed with {:?}, expected {code}",
                CloseCode::from_code(c)
            ),
            Err(e) => panic!("expected close code {code}, got {e}"),
        }
    }

    /// The endpoint (kept alive with the client).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}

fn read_failed(conn: &quinn::Connection, e: quinn::ReadExactError) -> RawError {
    match conn.close_reason() {
        Some(reason) => RawError::Closed(reason),
        None => RawError::Other(format!("reading control: {e}")),
    }
}

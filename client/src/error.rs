//! One error enum per operation: connecting, sending, requesting,
//! forgetting and pinging, and what they share (no connection to use).

use std::path::PathBuf;
use std::time::Duration;

use icom_protocol::{Ack, AckCode};
use thiserror::Error;

use crate::data::DataError;

/// What `IN_USE` means, for people.
pub(crate) const IN_USE: &str =
    "the router refused this client: its identity is connected already, \
     and this client does not replace a connected identity (IN_USE)";

/// Why a configuration could not be loaded or used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A file the config names does not exist or is not set.
    #[error("{what} not found: '{}'", path.display())]
    Missing {
        /// What the file is for.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {what} from '{}': {detail}", path.display())]
    Pem {
        /// What the file is for.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The TLS configuration was refused (e.g. the key does not match).
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    /// A setting has a value it may not have.
    #[error("invalid setting {setting}: {detail}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// Why.
        detail: String,
    },
    /// The config file or the environment did not load.
    #[error("cannot load the client config: {0}")]
    Load(Box<figment::Error>),
    /// The local UDP socket could not be opened.
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
}

/// Why [`Client::connect`](crate::Client::connect) failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The router's name did not resolve.
    #[error("cannot resolve router address '{router}': {detail}")]
    Resolve {
        /// The configured address.
        router: String,
        /// What went wrong.
        detail: String,
    },
    /// The router refused this client's certificate in the TLS handshake:
    /// another CA, expired, revoked, or not for client authentication.
    #[error("the router refused this client's certificate ({alert})")]
    CertificateRefused {
        /// The TLS alert the router sent.
        alert: String,
    },
    /// This client does not trust the router's certificate (another CA, or
    /// a name other than `server_name`).
    #[error("the router's certificate is not trusted: {0}")]
    RouterNotTrusted(String),
    /// The TLS handshake failed for another reason.
    #[error("the TLS handshake failed: {0}")]
    Handshake(String),
    /// The router closed the connection: `BAD_IDENTITY` (the certificate's
    /// CN is not a valid identity) or `REVOKED`.
    #[error("the router refused this client: {0}")]
    Refused(String),
    /// Another connection with the same identity replaced this one.
    #[error("the router replaced this connection with a newer one of the same identity")]
    Replaced,
    /// This identity is connected already, and this client is configured
    /// not to replace it ([`ClientConfig::replace`](crate::ClientConfig::replace)
    /// false): the router closed this connection with `IN_USE` and left
    /// the other alone.
    #[error("{IN_USE}")]
    InUse,
    /// No `welcome` within `connect_timeout_ms`.
    #[error("no welcome from the router within {0:?}")]
    Timeout(Duration),
    /// The router broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection failed or was closed.
    #[error("connection failed: {0}")]
    Connection(String),
}

impl ConnectError {
    /// Whether the router refused this client: its certificate or
    /// identity (retrying with the same files will not help), or an
    /// identity in use that it must not replace.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            ConnectError::CertificateRefused { .. }
                | ConnectError::Refused(_)
                | ConnectError::InUse
        )
    }
}

/// Why no connection was available for an operation.
#[derive(Debug, Clone, Error)]
pub enum Unavailable {
    /// Disconnected, and the queue mode is `fail_fast`.
    #[error("not connected to the router")]
    Disconnected,
    /// Disconnected, and the queue of waiting operations is full.
    #[error("not connected, and {0} operations already wait for the connection")]
    QueueFull(usize),
    /// Disconnected for longer than the queue timeout.
    #[error("not connected to the router within {0:?}")]
    QueueTimeout(Duration),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

/// Why a send did not get an `ok` ack.
#[derive(Debug, Error)]
pub enum SendError {
    /// No connection to send on.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The data could not be encoded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The event name, persist id or ttl breaks the rules of PROTOCOL.md §3.
    #[error("invalid send: {0}")]
    Invalid(String),
    /// The encoded send is larger than the router's `max_event_bytes`.
    #[error("the event is {size} bytes, more than the router's limit of {max}")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The router's limit.
        max: u32,
    },
    /// The connection was lost after the event was handed to QUIC: it may or
    /// may not have been routed.
    #[error("the connection was lost before the router acked the event")]
    ConnectionLost,
    /// No ack within `ack_timeout_ms`.
    #[error("no ack from the router within {0:?}")]
    AckTimeout(Duration),
    /// The router acked with `ok: false` (partly or not at all delivered);
    /// the ack says how many recipients it reached.
    #[error("the router refused the event: {code}: {message}")]
    Refused {
        /// The ack's error code.
        code: AckCode,
        /// The ack's error message.
        message: String,
        /// The whole ack.
        ack: Box<Ack>,
    },
}

impl SendError {
    /// Whether the operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            SendError::AckTimeout(_) | SendError::Unavailable(Unavailable::QueueTimeout(_))
        )
    }

    /// The ack, when the router refused the event.
    pub fn ack(&self) -> Option<&Ack> {
        match self {
            SendError::Refused { ack, .. } => Some(ack),
            _ => None,
        }
    }
}

/// Why a request got no reply.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The request itself was not sent, or the router refused it.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection was lost before the reply came.
    #[error("the connection was lost before the reply came")]
    ConnectionLost,
    /// The server asked disconnected before it replied.
    #[error("server '{0}' disconnected before it replied")]
    PeerLeft(String),
}

impl RequestError {
    /// Whether the request ran out of time.
    pub fn is_timeout(&self) -> bool {
        match self {
            RequestError::Timeout(_) => true,
            RequestError::Send(e) => e.is_timeout(),
            RequestError::ConnectionLost | RequestError::PeerLeft(_) => false,
        }
    }
}

/// Why a `forget` did not get an `ok` ack.
#[derive(Debug, Error)]
pub enum ForgetError {
    /// No connection to send on.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The persist id breaks the rules of PROTOCOL.md §3.
    #[error("invalid persist id: {0}")]
    Invalid(String),
    /// The connection was lost before the ack.
    #[error("the connection was lost before the router acked the forget")]
    ConnectionLost,
    /// No ack within `ack_timeout_ms`.
    #[error("no ack from the router within {0:?}")]
    AckTimeout(Duration),
    /// The router refused: `not_found` or `forbidden`.
    #[error("the router refused the forget: {code}: {message}")]
    Refused {
        /// The ack's error code.
        code: AckCode,
        /// The ack's error message.
        message: String,
        /// The whole ack.
        ack: Box<Ack>,
    },
}

impl ForgetError {
    /// Whether the operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ForgetError::AckTimeout(_) | ForgetError::Unavailable(Unavailable::QueueTimeout(_))
        )
    }
}

/// Why a ping got no pong.
#[derive(Debug, Error)]
pub enum PingError {
    /// No connection to ping on.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The connection was lost before the pong.
    #[error("the connection was lost before the pong")]
    ConnectionLost,
    /// No pong within `ack_timeout_ms`.
    #[error("no pong from the router within {0:?}")]
    Timeout(Duration),
}

impl PingError {
    /// Whether the operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            PingError::Timeout(_) | PingError::Unavailable(Unavailable::QueueTimeout(_))
        )
    }
}

/// Why [`Client::roster`](crate::Client::roster) has no answer.
#[derive(Debug, Error)]
pub enum RosterError {
    /// No connection to ask on.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The router does not answer `who` (it is older than this client; its
    /// `welcome` does not list the feature).
    #[error("the router does not list who is connected (it predates `who`)")]
    Unsupported,
    /// The connection was lost before the answer.
    #[error("the connection was lost before the router answered")]
    ConnectionLost,
    /// No answer within `ack_timeout_ms`.
    #[error("no answer from the router within {0:?}")]
    Timeout(Duration),
    /// The router's answer did not make sense (a page that does not move
    /// on, or more servers than a client follows).
    #[error("the router's answer is not usable: {0}")]
    Invalid(String),
}

impl RosterError {
    /// Whether the operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            RosterError::Timeout(_) | RosterError::Unavailable(Unavailable::QueueTimeout(_))
        )
    }
}

/// Builds the refusal of an ack that is not ok.
pub(crate) fn refusal(ack: Ack) -> (AckCode, String, Box<Ack>) {
    let (code, message) = match &ack.error {
        Some(e) => (e.code, e.message.clone()),
        None => (
            AckCode::Unknown,
            "the ack is not ok and names no error".into(),
        ),
    };
    (code, message, Box::new(ack))
}

//! The client's configuration: a serde type with defaults that figment loads
//! (defaults < TOML file < `ICOM_*` environment), and the dev layout that
//! `icom-server --dev` writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};

use crate::backoff::BackoffPolicy;
use crate::error::ConfigError;
use crate::routers::Routers;

/// The folder `icom-server --dev` writes its throwaway PKI to.
pub const DEV_DIR: &str = "icom-dev";
/// The router address of the dev layout.
pub const DEV_ROUTER: &str = "127.0.0.1:9090";
/// The operator identity `icom-server --dev` mints for the `icom` CLI
/// (beside the game servers `server_1` and `server_2`).
pub const DEV_OPERATOR: &str = "ops";

/// Everything a client needs to connect, and how it behaves. Durations are
/// in milliseconds, so that the TOML file stays plain.
///
/// ```toml
/// router = "icom.example.net:9090"   # or, for a cluster: routers = ["a.example.net:9090", "b.example.net:9090"]
/// server_name = "icom.example.net"
/// ca = "/etc/icom/ca.pem"
/// cert = "/etc/icom/eu-1.pem"
/// key = "/etc/icom/eu-1.key"
///
/// [queue]
/// mode = "wait"        # or "fail_fast"
/// capacity = 1024
/// timeout_ms = 10000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientConfig {
    /// The router's address, `host:port`; resolved again at every attempt.
    /// Empty when [`routers`](ClientConfig::routers) names the routers.
    pub router: String,
    /// The routers of one cluster (same CA, same `server_name`), in order
    /// of preference: the client dials the first that answers and, when
    /// its connection is lost, the next one, wrapping around. Giving both
    /// this and `router` is an error ([`ClientConfig::router_list`]):
    /// [`ClientConfig::with_routers`] sets this and clears `router`. In the
    /// layered sources, the highest source that names either wins.
    pub routers: Vec<String>,
    /// The name the router's certificate must hold (its SAN).
    pub server_name: String,
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This server's certificate chain (PEM); its CN is the identity.
    pub cert: PathBuf,
    /// This server's private key (PEM).
    pub key: PathBuf,
    /// Names the client software in `hello`.
    pub agent: String,
    /// Whether connecting replaces a connection of this identity that is
    /// up (docs/PROTOCOL.md §1.4). True, the default, is what a game
    /// server needs: after a restart, its new connection takes over from
    /// its dead one at once. False is for tools that borrow an identity
    /// (the `icom` CLI): the router then refuses the connection with
    /// `IN_USE` ([`ConnectError::InUse`](crate::ConnectError::InUse)) and
    /// leaves the connected one alone; on a reconnect, the client keeps
    /// trying, as after a refusal. A router older than `hello.replace`
    /// replaces all the same.
    pub replace: bool,
    /// How long a connection attempt may take, up to `welcome`.
    pub connect_timeout_ms: u64,
    /// How long to wait for the router's `ack` (or `pong`).
    pub ack_timeout_ms: u64,
    /// Sends and forgets that may await their ack at once.
    pub max_in_flight: usize,
    /// QUIC keep-alive interval (0: none); must be below
    /// `idle_timeout_ms`. The default, 2 s, is a third of the idle timeout,
    /// so that a lost keep-alive or two does not end a healthy connection.
    pub keep_alive_ms: u64,
    /// QUIC idle timeout: a router silent this long is given up (and the
    /// next one dialled). A router that dies without a word (killed, its
    /// host gone: no close, no stateless reset) is noticed only this way.
    /// The default, 6 s (3 keep-alive intervals), gives it up within
    /// 6 to 8 s of its last packet, instead of the router's 30 s: QUIC uses
    /// the smaller of both ends' values, so this one decides. It also
    /// bounds a connection attempt to a router that does not answer. A
    /// network outage longer than this ends the connection, which the
    /// client then reconnects.
    pub idle_timeout_ms: u64,
    /// The UDP socket's receive buffer, in bytes (0: the OS default). A
    /// burst of deliveries that overflows it is lost and retransmitted;
    /// the OS caps it at `net.core.rmem_max`.
    pub udp_receive_buffer: usize,
    /// The UDP socket's send buffer, in bytes (0: the OS default); the OS
    /// caps it at `net.core.wmem_max`.
    pub udp_send_buffer: usize,
    /// How many packets the router may receive from this client before it
    /// must acknowledge them (the QUIC ACK frequency extension); 0 keeps
    /// QUIC's default of every second packet. A gap is still acknowledged
    /// at once.
    pub ack_eliciting_threshold: u32,
    /// The longest the router may delay an acknowledgement, in ms (0: its
    /// own, 25 ms).
    pub max_ack_delay_ms: u64,
    /// What operations do while the client is disconnected.
    pub queue: QueueConfig,
    /// How the client reconnects.
    pub reconnect: ReconnectConfig,
    /// How the client receives.
    pub inbound: InboundConfig,
}

/// What an operation does when there is no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueMode {
    /// Wait for the connection, in a bounded queue, for a bounded time.
    Wait,
    /// Fail at once with [`Unavailable::Disconnected`](crate::Unavailable::Disconnected).
    FailFast,
}

/// The queue of operations that wait for a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Wait, or fail fast.
    pub mode: QueueMode,
    /// Operations that may wait at once; one more fails with `QueueFull`.
    pub capacity: usize,
    /// How long one operation waits before it fails with `QueueTimeout`.
    pub timeout_ms: u64,
}

/// Reconnection: exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconnectConfig {
    /// The cap of the first delay.
    pub initial_ms: u64,
    /// The largest delay.
    pub max_ms: u64,
    /// A connection that stayed up this long resets the backoff.
    pub healthy_after_ms: u64,
    /// After `REPLACED` (another instance took this identity over), wait
    /// this long before trying again, so as not to fight it.
    pub replaced_delay_ms: u64,
    /// While connected to a router that is not the first of `routers`,
    /// try the routers before it about this often (each wait is this plus
    /// up to half of it again, at random, so that the servers that failed
    /// over together do not come back at one instant), and move to the
    /// first that welcomes the client. The move first lets what is in
    /// flight be answered (2 s at most), so a send answered in time does not
    /// fail for it. 0: never move back.
    /// Needs `replace` (a client that must not replace stays where it is).
    pub return_ms: u64,
}

/// Receiving: buffers and windows, each bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InboundConfig {
    /// Events received and not yet taken by the application. When it is
    /// full, the client stops reading, and QUIC flow control pushes back.
    pub events_buffer: usize,
    /// `(from, id)` pairs remembered to drop redelivered events.
    pub dedup_window: usize,
    /// After `welcome`, how long to hold deliveries back while the stored
    /// events are replayed, so they can be handed on in order.
    pub replay_wait_ms: u64,
    /// At most this many deliveries are held back for the replay.
    pub replay_buffer: usize,
    /// Concurrent uni streams the router may open to this client, at most.
    pub max_streams: u32,
    /// Concurrent uni streams the router may open at first; the credit
    /// doubles, up to `max_streams`, whenever the router uses half of it
    /// (QUIC keeps some 50 bytes per allowed stream).
    pub initial_streams: u32,
    /// QUIC receive window of one stream, in bytes.
    pub stream_window: u32,
    /// QUIC receive window of the whole connection, in bytes.
    pub connection_window: u32,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            router: DEV_ROUTER.into(),
            routers: Vec::new(),
            server_name: "localhost".into(),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            agent: concat!("icom-client/", env!("CARGO_PKG_VERSION")).into(),
            replace: true,
            connect_timeout_ms: 10_000,
            ack_timeout_ms: 30_000,
            max_in_flight: 8192,
            keep_alive_ms: 2_000,
            idle_timeout_ms: 6_000,
            udp_receive_buffer: 8 << 20,
            udp_send_buffer: 4 << 20,
            ack_eliciting_threshold: 32,
            max_ack_delay_ms: 0,
            queue: QueueConfig::default(),
            reconnect: ReconnectConfig::default(),
            inbound: InboundConfig::default(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            mode: QueueMode::Wait,
            capacity: 1024,
            timeout_ms: 10_000,
        }
    }
}

impl Default for ReconnectConfig {
    fn default() -> ReconnectConfig {
        ReconnectConfig {
            initial_ms: 100,
            max_ms: 30_000,
            healthy_after_ms: 10_000,
            replaced_delay_ms: 300_000,
            return_ms: 60_000,
        }
    }
}

impl Default for InboundConfig {
    fn default() -> InboundConfig {
        InboundConfig {
            events_buffer: 8192,
            dedup_window: 65_536,
            replay_wait_ms: 2_000,
            replay_buffer: 65_536,
            max_streams: 16_384,
            initial_streams: 128,
            stream_window: 2 << 20,
            connection_window: 64 << 20,
        }
    }
}

impl ClientConfig {
    /// A config for `router`, checked against `server_name`, with the given
    /// CA, certificate and key, and defaults for everything else.
    pub fn new(
        router: impl Into<String>,
        server_name: impl Into<String>,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> ClientConfig {
        ClientConfig {
            router: router.into(),
            server_name: server_name.into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            ..ClientConfig::default()
        }
    }

    /// The same config with the routers of one cluster instead of one
    /// router: `router` is cleared and `routers` set, in this order of
    /// preference.
    #[must_use]
    pub fn with_routers<S: Into<String>>(
        mut self,
        routers: impl IntoIterator<Item = S>,
    ) -> ClientConfig {
        self.router.clear();
        self.routers = routers.into_iter().map(Into::into).collect();
        self
    }

    /// The routers to dial, in order: `routers`, or `router` alone.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when both `router` and `routers` are given
    /// or neither is, when an address is empty or repeated, or when there
    /// are more than [`MAX_ROUTERS`](crate::MAX_ROUTERS).
    pub fn router_list(&self) -> Result<Vec<String>, ConfigError> {
        Routers::parse(&self.router, &self.routers).map(Routers::into_vec)
    }

    /// The layout of `icom-server --dev`, seen from the folder it ran in:
    /// router `127.0.0.1:9090`, name `localhost`, `./icom-dev/ca.pem` and
    /// `./icom-dev/<identity>.pem` / `.key`.
    pub fn dev(identity: &str) -> ClientConfig {
        let dir = Path::new(".").join(DEV_DIR);
        ClientConfig::new(
            DEV_ROUTER,
            "localhost",
            dir.join("ca.pem"),
            dir.join(format!("{identity}.pem")),
            dir.join(format!("{identity}.key")),
        )
    }

    /// The figment that loads a config: `base` < the TOML `file` (if any) <
    /// `ICOM_*` environment variables (`ICOM_ROUTER`, `ICOM_SERVER_NAME`,
    /// `ICOM_QUEUE__TIMEOUT_MS`, ...). Merge more providers on top.
    ///
    /// A source that names the router, as `router` or as `routers`,
    /// replaces what the sources below it said about either; one source
    /// that gives both is an error.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] if `file` does not exist;
    /// [`ConfigError::Invalid`] if one source gives both `router` and
    /// `routers`.
    pub fn figment(base: &ClientConfig, file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(base));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Missing {
                    what: "config file",
                    path: file.to_owned(),
                });
            }
            figment = merge_source(figment, Toml::file_exact(file), "the config file")?;
        }
        merge_source(
            figment,
            Env::prefixed("ICOM_").split("__"),
            "the ICOM_* environment",
        )
    }

    /// Loads a config: defaults < `file` < `ICOM_*` environment.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] or [`ConfigError::Load`].
    pub fn load(file: Option<&Path>) -> Result<ClientConfig, ConfigError> {
        ClientConfig::figment(&ClientConfig::default(), file)?
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    pub(crate) fn backoff(&self) -> BackoffPolicy {
        BackoffPolicy {
            initial: ms(self.reconnect.initial_ms.max(1)),
            max: ms(self.reconnect.max_ms.max(self.reconnect.initial_ms.max(1))),
            healthy_after: ms(self.reconnect.healthy_after_ms),
        }
    }
}

/// Merges `source` over `figment`, as [`ClientConfig::figment`] layers its
/// sources: if `source` names the router (`router` or `routers`), what the
/// sources below said about either is dropped first, so that the highest
/// source naming the router wins. For any config whose top-level keys
/// `router` and `routers` mean what they mean here (the extension's
/// `icom.toml`).
///
/// # Errors
/// [`ConfigError::Invalid`] if `source` (called `what` in the message)
/// gives both.
pub fn merge_source(
    figment: Figment,
    source: impl Provider,
    what: &str,
) -> Result<Figment, ConfigError> {
    // A source that does not parse names nothing here; extracting the
    // config reports its error.
    let probe = Figment::from(&source);
    let figment = match (probe.contains("router"), probe.contains("routers")) {
        (true, true) => {
            return Err(ConfigError::Invalid {
                setting: "routers",
                detail: format!(
                    "{what} gives both `router` and `routers`: give one router, or the list"
                ),
            })
        }
        // In the default profile, as the file and the environment are (a
        // `(key, value)` pair would be global, above every later source).
        (true, false) => figment.merge(Serialized::default("routers", Vec::<String>::new())),
        (false, true) => figment.merge(Serialized::default("router", "")),
        (false, false) => figment,
    };
    Ok(figment.merge(source))
}

/// Milliseconds as a `Duration`.
pub(crate) fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_layout() {
        let c = ClientConfig::dev("server_2");
        assert_eq!(c.router, "127.0.0.1:9090");
        assert_eq!(c.server_name, "localhost");
        assert_eq!(c.ca, Path::new("./icom-dev/ca.pem"));
        assert_eq!(c.cert, Path::new("./icom-dev/server_2.pem"));
        assert_eq!(c.key, Path::new("./icom-dev/server_2.key"));
    }

    #[test]
    fn file_overrides_defaults_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("icom.toml");
        std::fs::write(
            &path,
            "router = \"r.example:9999\"\nca = \"/x/ca.pem\"\n[queue]\nmode = \"fail_fast\"\n",
        )
        .unwrap();
        let c: ClientConfig = ClientConfig::figment(&ClientConfig::default(), Some(&path))
            .unwrap()
            .extract()
            .unwrap();
        assert_eq!(c.router, "r.example:9999");
        assert_eq!(c.ca, Path::new("/x/ca.pem"));
        assert_eq!(c.queue.mode, QueueMode::FailFast);
        assert_eq!(c.queue.capacity, 1024);
        assert_eq!(c.server_name, "localhost");
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = ClientConfig::load(Some(Path::new("/nonexistent/icom.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/icom.toml"), "{err}");
    }
}

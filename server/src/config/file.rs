//! The configuration file's types, as written in `icom-server.toml`, with
//! their defaults: what serde and figment read before validation
//! ([`super::Config`]). `config/icom-server.example.toml` documents each key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::PolicyFile;

/// The configuration as written in `icom-server.toml`. Every field has a
/// default, so an empty file is valid (but has no certificates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory for the router's database.
    pub data_dir: PathBuf,
    /// Threads that run connections and routing (1 by default: one
    /// current-thread runtime; 0: one per CPU core).
    pub workers: u32,
    /// Certificates and keys.
    pub tls: TlsFiles,
    /// Bounds on what clients may use.
    pub limits: LimitsFile,
    /// Transport tuning.
    pub transport: TransportFile,
    /// Groups: a name, and the identity globs of its members.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Logging.
    pub log: LogFile,
    /// The persistence store's bounds.
    pub store: StoreFile,
    /// Who may send what to whom.
    pub policy: PolicyFile,
    /// The Prometheus and health endpoint.
    pub metrics: MetricsFile,
    /// Other routers sharing the routing space over NATS (absent: this
    /// router is alone).
    pub cluster: Option<super::ClusterFile>,
}

/// `[metrics]`: Prometheus metrics, `/healthz` and `/readyz` over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsFile {
    /// Serve them at all (off by default).
    pub enabled: bool,
    /// The TCP address; keep it on loopback or a private network.
    pub listen: SocketAddr,
}

impl Default for MetricsFile {
    fn default() -> Self {
        MetricsFile {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
        }
    }
}

/// `[store]`: bounds of the persistent and offline store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreFile {
    /// Bytes of stored events in all.
    pub max_bytes: u64,
    /// Persistent events.
    pub max_persistent: u32,
    /// Copies queued for one offline server.
    pub queue_events: u32,
    /// Bytes queued for one offline server.
    pub queue_bytes: u64,
    /// Seconds between sweeps of expired events.
    pub sweep_secs: u64,
    /// The database's page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreFile {
    fn default() -> Self {
        StoreFile {
            max_bytes: 256 << 20,
            max_persistent: 100_000,
            queue_events: 10_000,
            queue_bytes: 16 << 20,
            sweep_secs: 30,
            cache_bytes: 16 << 20,
        }
    }
}

/// `[tls]`: paths of the router's PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate(s) that client certificates must chain to.
    pub ca: PathBuf,
    /// The router's certificate chain.
    pub cert: PathBuf,
    /// The router's private key.
    pub key: PathBuf,
    /// The certificate revocation list(s); optional.
    pub crl: Option<PathBuf>,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest encoded `send`, in bytes.
    pub max_event_bytes: u32,
    /// Most connected clients at once; past it new handshakes are refused.
    pub max_connections: u32,
    /// Handshakes under way at once, at most; past it new connections
    /// wait their turn in QUIC's queue.
    pub max_handshakes: u32,
    /// Concurrent uni streams each client may open (at least 1024): the
    /// most its stream credit grows to.
    pub max_streams: u32,
    /// Bytes of one client's unfinished event streams (begun, not yet
    /// ended) the router holds at most; the stream that would pass it is
    /// stopped and acked `congested`. At least `max_event_bytes`.
    pub partial_bytes: u64,
    /// Concurrent uni streams a client may open at first; the credit
    /// doubles, up to `max_streams`, whenever the client uses half of it.
    pub initial_streams: u32,
    /// Events waiting for one recipient before its senders get `congested`.
    pub outbound_queue_events: u32,
    /// Bytes waiting for one recipient before its senders get `congested`.
    pub outbound_queue_bytes: u64,
    /// Control frames (acks, presence) waiting for one client.
    pub control_queue: u32,
    /// How long presence changes gather before they go out together, in
    /// ms (0: at once). Fewer, larger presence writes when many servers
    /// come or go at once; a change reaches clients this much later.
    pub presence_batch_ms: u64,
    /// The longest presence changes gather while they come in bursts, in
    /// ms: each batch that carries several changes doubles the wait of the
    /// next, up to this.
    pub presence_batch_max_ms: u64,
    /// Seconds a client has to send `hello` after the handshake.
    pub hello_timeout_secs: u64,
}

/// `[transport]`: QUIC settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportFile {
    /// Close a connection silent for this long, in seconds.
    pub idle_timeout_secs: u64,
    /// Send a keep-alive after this much quiet, in seconds (0: never).
    pub keep_alive_secs: u64,
    /// Per-stream receive window, in bytes.
    pub stream_receive_window: u32,
    /// Per-connection receive window, in bytes.
    pub receive_window: u32,
    /// Per-connection send window (unacknowledged bytes in flight), in bytes.
    pub send_window: u64,
    /// Interleave the streams of one connection when sending. Events are
    /// small, one per stream: sending each stream whole is cheaper.
    pub send_fairness: bool,
    /// Hand the OS several datagrams to one connection in one send (UDP
    /// GSO, where the OS has it). Less work per event at high rates; quinn
    /// keeps a send buffer per connection as large as the largest batch
    /// (some 8 KiB), against 1.5 KiB without.
    pub segmentation_offload: bool,
    /// The UDP socket's receive buffer, in bytes (0: the OS default). A
    /// burst that overflows it is lost and QUIC slows down; the OS caps it
    /// at `net.core.rmem_max`.
    pub udp_receive_buffer: u32,
    /// The UDP socket's send buffer, in bytes (0: the OS default); capped
    /// at `net.core.wmem_max`.
    pub udp_send_buffer: u32,
    /// How many packets a client may receive before it must acknowledge
    /// them (the QUIC ACK frequency extension); 0 keeps QUIC's default of
    /// every second packet. Fewer acknowledgements mean less work per
    /// event at high rates; a gap is still acknowledged at once.
    pub ack_eliciting_threshold: u32,
    /// The longest a client may delay an acknowledgement, in ms (0: the
    /// client's own, 25 ms). Used with `ack_eliciting_threshold`.
    pub max_ack_delay_ms: u32,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFile {
    /// `text` for people, `json` for log shippers.
    pub format: LogFormat,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            listen: SocketAddr::from(([0, 0, 0, 0], icom_protocol::DEFAULT_PORT)),
            data_dir: PathBuf::from("data"),
            workers: 1,
            tls: TlsFiles::default(),
            limits: LimitsFile::default(),
            transport: TransportFile::default(),
            groups: BTreeMap::new(),
            log: LogFile::default(),
            store: StoreFile::default(),
            policy: PolicyFile::default(),
            metrics: MetricsFile::default(),
            cluster: None,
        }
    }
}

impl Default for TlsFiles {
    fn default() -> Self {
        TlsFiles {
            ca: PathBuf::from("certs/ca.pem"),
            cert: PathBuf::from("certs/router.pem"),
            key: PathBuf::from("certs/router.key"),
            crl: None,
        }
    }
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_event_bytes: icom_protocol::DEFAULT_MAX_EVENT_BYTES as u32,
            max_connections: 1000,
            max_handshakes: 64,
            max_streams: 16_384,
            initial_streams: 32,
            partial_bytes: 64 << 20,
            outbound_queue_events: 8192,
            outbound_queue_bytes: 16 << 20,
            control_queue: 16384,
            presence_batch_ms: 20,
            presence_batch_max_ms: 1000,
            hello_timeout_secs: icom_protocol::HELLO_TIMEOUT_MS / 1000,
        }
    }
}

impl Default for TransportFile {
    fn default() -> Self {
        TransportFile {
            idle_timeout_secs: 30,
            keep_alive_secs: 5,
            stream_receive_window: 2 << 20,
            receive_window: 16 << 20,
            send_window: 16 << 20,
            send_fairness: false,
            segmentation_offload: true,
            udp_receive_buffer: 8 << 20,
            udp_send_buffer: 4 << 20,
            ack_eliciting_threshold: 32,
            max_ack_delay_ms: 0,
        }
    }
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            format: LogFormat::Text,
        }
    }
}

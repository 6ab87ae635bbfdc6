//! The router's configuration: a serde file type with defaults
//! ([`ConfigFile`]), loaded with figment (defaults < TOML file < `ICOM_*`
//! environment < command-line flags), converted into the validated
//! [`Config`] the rest of the router uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use icom_protocol::{validate_server_id, Groups, MIN_CLIENT_STREAMS};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::policy::{Policy, PolicyFile};
use crate::store::StoreLimits;

/// The configuration as written in `icom-server.toml`. Every field has a
/// default, so an empty file is valid (but has no certificates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory for the router's database.
    pub data_dir: PathBuf,
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
    /// Concurrent uni streams each client may open (at least 1024): the
    /// most its stream credit grows to.
    pub max_streams: u32,
    /// Concurrent uni streams a client may open at first; the credit
    /// doubles, up to `max_streams`, whenever the client uses half of it.
    pub initial_streams: u32,
    /// Events waiting for one recipient before its senders get `congested`.
    pub outbound_queue_events: u32,
    /// Bytes waiting for one recipient before its senders get `congested`.
    pub outbound_queue_bytes: u64,
    /// Control frames (acks, presence) waiting for one client.
    pub control_queue: u32,
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
            tls: TlsFiles::default(),
            limits: LimitsFile::default(),
            transport: TransportFile::default(),
            groups: BTreeMap::new(),
            log: LogFile::default(),
            store: StoreFile::default(),
            policy: PolicyFile::default(),
            metrics: MetricsFile::default(),
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
            max_streams: 16_384,
            initial_streams: 32,
            outbound_queue_events: 8192,
            outbound_queue_bytes: 16 << 20,
            control_queue: 16384,
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

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file, the environment or a flag could not be read into the file type.
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The top-level keys of the configuration file, which `ICOM_*`
/// environment variables may set.
pub const TOP_LEVEL_KEYS: [&str; 10] = [
    "listen",
    "data_dir",
    "tls",
    "limits",
    "transport",
    "groups",
    "log",
    "store",
    "policy",
    "metrics",
];

impl ConfigFile {
    /// Loads defaults < `path` (if given) < `ICOM_*` environment (nested
    /// keys with `__`, e.g. `ICOM_LIMITS__MAX_EVENT_BYTES`). Relative paths
    /// in the file are taken relative to the file's directory.
    ///
    /// # Errors
    /// [`ConfigError::Load`] naming the key and where it came from.
    pub fn load(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
        ConfigFile::figment(path)
            .extract::<ConfigFile>()
            .map(|mut c| {
                if let Some(dir) = path.and_then(Path::parent) {
                    c.rebase(dir);
                }
                c
            })
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    /// The figment behind [`ConfigFile::load`], for callers that merge
    /// command-line flags on top.
    pub fn figment(path: Option<&Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(ConfigFile::default()));
        if let Some(p) = path {
            f = f.merge(Toml::file_exact(p));
        }
        // Only the configuration's own keys: other ICOM_* variables (such
        // as ICOM_CONFIG, which names the file) are not configuration.
        f.merge(Env::prefixed("ICOM_").split("__").filter(|key| {
            let top = key.as_str().split('.').next().unwrap_or_default();
            TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
        }))
    }

    /// Makes relative paths relative to `dir`.
    pub fn rebase(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !dir.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.tls.ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        if let Some(c) = &mut self.tls.crl {
            fix(c);
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory for the router's database.
    pub data_dir: PathBuf,
    /// Certificate and key paths.
    pub tls: TlsFiles,
    /// Limits.
    pub limits: Limits,
    /// Transport settings.
    pub transport: Transport,
    /// Groups.
    pub groups: Groups,
    /// Log format.
    pub log_format: LogFormat,
    /// The store's bounds.
    pub store: StoreLimits,
    /// Time between sweeps of expired stored events.
    pub sweep_every: Duration,
    /// The compiled policy.
    pub policy: Policy,
    /// Where to serve metrics and health, if at all.
    pub metrics: Option<SocketAddr>,
    /// The file the configuration came from, re-read on reload.
    pub source: Option<PathBuf>,
}

/// Validated `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded `send`, in bytes.
    pub max_event_bytes: usize,
    /// Most connected clients at once.
    pub max_connections: usize,
    /// Concurrent uni streams each client may open, at most.
    pub max_streams: u32,
    /// Concurrent uni streams each client may open at first.
    pub initial_streams: u32,
    /// Events waiting for one recipient.
    pub outbound_queue_events: usize,
    /// Bytes waiting for one recipient.
    pub outbound_queue_bytes: usize,
    /// Control frames waiting for one client.
    pub control_queue: usize,
    /// Time a client has to send `hello`.
    pub hello_timeout: Duration,
}

/// Validated `[transport]`.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Keep-alive interval, if any.
    pub keep_alive: Option<Duration>,
    /// Per-stream receive window.
    pub stream_receive_window: u32,
    /// Per-connection receive window.
    pub receive_window: u32,
    /// Per-connection send window.
    pub send_window: u64,
    /// Whether to interleave streams when sending.
    pub send_fairness: bool,
    /// Several datagrams per send (UDP GSO).
    pub segmentation_offload: bool,
    /// The UDP receive buffer to ask for, if not the OS default.
    pub udp_receive_buffer: Option<usize>,
    /// The UDP send buffer to ask for, if not the OS default.
    pub udp_send_buffer: Option<usize>,
    /// Packets a client may receive before it acknowledges (0: QUIC's default).
    pub ack_eliciting_threshold: u32,
    /// The longest a client may delay an acknowledgement, if not its own.
    pub max_ack_delay: Option<Duration>,
}

impl TryFrom<ConfigFile> for Config {
    type Error = ConfigError;

    fn try_from(f: ConfigFile) -> Result<Config, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let l = &f.limits;
        if l.max_event_bytes < 1024 || l.max_event_bytes as usize > 64 << 20 {
            return bad(format!(
                "limits.max_event_bytes = {} must be between 1024 and {}",
                l.max_event_bytes,
                64 << 20
            ));
        }
        if l.max_streams < MIN_CLIENT_STREAMS {
            return bad(format!(
                "limits.max_streams = {} must be at least {MIN_CLIENT_STREAMS}",
                l.max_streams
            ));
        }
        if l.initial_streams == 0 || l.initial_streams > l.max_streams {
            return bad(format!(
                "limits.initial_streams = {} must be between 1 and max_streams = {}",
                l.initial_streams, l.max_streams
            ));
        }
        for (name, v) in [
            ("limits.max_connections", u64::from(l.max_connections)),
            (
                "limits.outbound_queue_events",
                u64::from(l.outbound_queue_events),
            ),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes),
            ("limits.control_queue", u64::from(l.control_queue)),
            ("limits.hello_timeout_secs", l.hello_timeout_secs),
            ("transport.idle_timeout_secs", f.transport.idle_timeout_secs),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if l.outbound_queue_bytes < u64::from(l.max_event_bytes) + 1024 {
            return bad(format!(
                "limits.outbound_queue_bytes = {} must hold at least one event (max_event_bytes + 1024)",
                l.outbound_queue_bytes
            ));
        }
        let t = &f.transport;
        if t.keep_alive_secs >= t.idle_timeout_secs {
            return bad(format!(
                "transport.keep_alive_secs = {} must be below idle_timeout_secs = {}",
                t.keep_alive_secs, t.idle_timeout_secs
            ));
        }
        let st = &f.store;
        if st.sweep_secs == 0 || st.max_persistent == 0 || st.queue_events == 0 {
            return bad(
                "store.sweep_secs, store.max_persistent and store.queue_events must be at least 1"
                    .into(),
            );
        }
        let mut groups = Groups::new();
        for (name, patterns) in &f.groups {
            if validate_server_id(name).is_err() {
                return bad(format!(
                    "group name {name:?} must follow the server id rule (letters, digits, '_', '.', '-')"
                ));
            }
            groups.insert(name.clone(), patterns);
        }
        let policy = Policy::new(&f.policy, &groups).map_err(ConfigError::Invalid)?;
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(Config {
            store: StoreLimits {
                max_bytes: size(st.max_bytes),
                max_persistent: st.max_persistent as usize,
                queue_events: st.queue_events as usize,
                queue_bytes: size(st.queue_bytes),
                cache_bytes: size(st.cache_bytes),
            },
            sweep_every: Duration::from_secs(st.sweep_secs),
            policy,
            metrics: f.metrics.enabled.then_some(f.metrics.listen),
            listen: f.listen,
            data_dir: f.data_dir,
            tls: f.tls,
            limits: Limits {
                max_event_bytes: l.max_event_bytes as usize,
                max_connections: l.max_connections as usize,
                max_streams: l.max_streams,
                initial_streams: l.initial_streams,
                outbound_queue_events: l.outbound_queue_events as usize,
                outbound_queue_bytes: usize::try_from(l.outbound_queue_bytes).unwrap_or(usize::MAX),
                control_queue: l.control_queue as usize,
                hello_timeout: Duration::from_secs(l.hello_timeout_secs),
            },
            transport: Transport {
                idle_timeout: Duration::from_secs(t.idle_timeout_secs),
                keep_alive: (t.keep_alive_secs > 0).then(|| Duration::from_secs(t.keep_alive_secs)),
                stream_receive_window: t.stream_receive_window,
                receive_window: t.receive_window,
                send_window: t.send_window,
                send_fairness: t.send_fairness,
                segmentation_offload: t.segmentation_offload,
                udp_receive_buffer: (t.udp_receive_buffer > 0)
                    .then_some(t.udp_receive_buffer as usize),
                udp_send_buffer: (t.udp_send_buffer > 0).then_some(t.udp_send_buffer as usize),
                ack_eliciting_threshold: t.ack_eliciting_threshold,
                max_ack_delay: (t.max_ack_delay_ms > 0)
                    .then(|| Duration::from_millis(u64::from(t.max_ack_delay_ms))),
            },
            groups,
            log_format: f.log.format,
            source: None,
        })
    }
}

impl Config {
    /// Loads and validates the configuration from `path` and the environment.
    ///
    /// # Errors
    /// [`ConfigError`] for unreadable files, bad values or bad ranges.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut c = Config::try_from(ConfigFile::load(path)?)?;
        c.source = path.map(Path::to_path_buf);
        Ok(c)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = Config::try_from(ConfigFile::default()).unwrap();
        assert_eq!(c.listen.port(), 9090);
        assert!(c.limits.max_streams >= 1024);
        assert_eq!(c.limits.max_event_bytes, 1 << 20);
    }

    #[test]
    fn bad_values_are_named() {
        let mut f = ConfigFile::default();
        f.limits.max_streams = 100;
        let e = Config::try_from(f).unwrap_err().to_string();
        assert!(e.contains("limits.max_streams"), "{e}");

        let mut f = ConfigFile::default();
        f.groups.insert("bad group".into(), vec!["x".into()]);
        assert!(Config::try_from(f).is_err());

        let mut f = ConfigFile::default();
        f.transport.keep_alive_secs = 30;
        assert!(Config::try_from(f).is_err());
    }

    #[test]
    fn file_then_environment_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "r.toml",
                "listen = \"127.0.0.1:7000\"\n[limits]\nmax_event_bytes = 4096\n[groups]\neu = [\"eu-*\"]\n[tls]\nca = \"pki/ca.pem\"\n",
            )?;
            jail.set_env("ICOM_LIMITS__MAX_EVENT_BYTES", "8192");
            // Not configuration: ignored, not an unknown key.
            jail.set_env("ICOM_CONFIG", "elsewhere.toml");
            jail.set_env("ICOM_CERTS_DIR", "certs");
            let path = jail.directory().join("r.toml");
            let c = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 7000);
            assert_eq!(c.limits.max_event_bytes, 8192, "env beats file");
            assert_eq!(c.groups.contains("eu", "eu-1"), Some(true));
            assert_eq!(
                c.tls.ca,
                jail.directory().join("pki/ca.pem"),
                "relative to the file"
            );
            let flagged: ConfigFile = ConfigFile::figment(Some(&path))
                .merge(Serialized::default("limits.max_event_bytes", 2048))
                .extract()?;
            assert_eq!(flagged.limits.max_event_bytes, 2048, "flags beat env");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("r.toml", "[limits]\nmax_event_byte = 4096\n")?;
            let path = jail.directory().join("r.toml");
            let e = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(e.contains("max_event_byte"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_example_files_document_every_key_and_validate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let text = std::fs::read_to_string(root.join("icom-server.example.toml")).unwrap();
        let mut example: ConfigFile = toml::from_str(&text).expect("the example parses");
        // The one key the example sets that has no default: the CRL.
        assert_eq!(example.tls.crl.take(), Some(PathBuf::from("certs/crl.pem")));
        assert_eq!(
            example,
            ConfigFile::default(),
            "the example shows the defaults"
        );
        // Every key of the defaults appears in the example, uncommented.
        let defaults = toml::Value::try_from(ConfigFile::default()).unwrap();
        let written: toml::Value = toml::from_str(&text).unwrap();
        fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let path = format!("{prefix}{k}");
                    keys(v, &format!("{path}."), out);
                    out.push(path);
                }
            }
        }
        let (mut want, mut have) = (Vec::new(), Vec::new());
        keys(&defaults, "", &mut want);
        keys(&written, "", &mut have);
        for k in want {
            assert!(have.contains(&k), "the example does not document {k}");
        }
        let policy_text = std::fs::read_to_string(root.join("policy.example.toml")).unwrap();
        let policy: ConfigFile = toml::from_str(&policy_text).expect("the policy example parses");
        Config::try_from(policy).expect("the policy example validates");
    }
}

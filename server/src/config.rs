//! The router's configuration: a serde file type with defaults
//! ([`ConfigFile`]), loaded with figment (defaults < TOML file < `ICOM_*`
//! environment < command-line flags), converted into the validated
//! [`Config`] the rest of the router uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use icom_protocol::{validate_server_id, Groups, MIN_CLIENT_STREAMS};
use thiserror::Error;

use crate::policy::Policy;
use crate::store::StoreLimits;

mod cluster;
mod file;

pub use self::cluster::{Cluster, ClusterFile, NatsTls};
pub use self::file::{
    ConfigFile, LimitsFile, LogFile, LogFormat, MetricsFile, StoreFile, TlsFiles, TransportFile,
};

/// The longest presence changes may gather, in ms.
const MAX_PRESENCE_BATCH_MS: u64 = 10_000;

/// The most worker threads `workers` may ask for.
const MAX_WORKERS: u32 = 1024;

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
pub const TOP_LEVEL_KEYS: [&str; 12] = [
    "listen",
    "data_dir",
    "workers",
    "tls",
    "limits",
    "transport",
    "groups",
    "log",
    "store",
    "policy",
    "metrics",
    "cluster",
];

impl ConfigFile {
    /// Loads defaults < `path` (if given) < `ICOM_*` environment (nested
    /// keys with `__`, e.g. `ICOM_LIMITS__MAX_EVENT_BYTES`). Relative paths
    /// in the file are taken relative to the file's directory.
    ///
    /// # Errors
    /// [`ConfigError::Load`] naming the key and where it came from.
    pub fn load(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
        ConfigFile::extract(&ConfigFile::figment(path))
    }

    /// Extracts the configuration from `figment`. A relative path that a
    /// file set is taken relative to that file's directory; one from the
    /// environment or a command-line flag stays as it is, relative to the
    /// working directory.
    ///
    /// # Errors
    /// [`ConfigError::Load`] naming the key and where it came from.
    pub fn extract(figment: &Figment) -> Result<ConfigFile, ConfigError> {
        let mut file: ConfigFile = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        file.rebase(figment);
        Ok(file)
    }

    /// The figment behind [`ConfigFile::load`], for callers that merge
    /// command-line flags on top.
    pub fn figment(path: Option<&Path>) -> Figment {
        ConfigFile::figment_over(&ConfigFile::default(), path)
    }

    /// As [`ConfigFile::figment`], with `base` instead of the defaults
    /// under the file (`--dev`: the dev layout, so that the file need only
    /// say what it changes).
    pub fn figment_over(base: &ConfigFile, path: Option<&Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(base));
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

    /// Makes each relative path that a file set relative to that file's
    /// directory (`figment`'s metadata says where each value came from).
    fn rebase(&mut self, figment: &Figment) {
        let fix = |key: &str, p: &mut PathBuf| {
            let from_file = figment
                .find_metadata(key)
                .and_then(|m| m.source.as_ref())
                .and_then(figment::Source::file_path)
                .and_then(Path::parent);
            if let Some(dir) = from_file {
                if p.is_relative() && !dir.as_os_str().is_empty() {
                    *p = dir.join(&*p);
                }
            }
        };
        fix("data_dir", &mut self.data_dir);
        fix("tls.ca", &mut self.tls.ca);
        fix("tls.cert", &mut self.tls.cert);
        fix("tls.key", &mut self.tls.key);
        if let Some(c) = &mut self.tls.crl {
            fix("tls.crl", c);
        }
        if let Some(c) = &mut self.cluster {
            for (key, p) in [
                ("cluster.ca", &mut c.ca),
                ("cluster.cert", &mut c.cert),
                ("cluster.key", &mut c.key),
            ] {
                if let Some(p) = p {
                    fix(key, p);
                }
            }
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
    /// Worker threads of the router's runtime (`workers`, 0 made one per
    /// core): read by the binary when it builds the runtime.
    pub workers: usize,
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
    /// The command line's settings, layered over the file again on reload.
    pub flags: Option<Arc<Figment>>,
    /// Other routers sharing the routing space over NATS, if any.
    pub cluster: Option<Cluster>,
    /// With `--dev`: the dev layout (certificates, listen address, data
    /// dir) the file was layered over; a reload layers it again.
    pub dev: Option<Arc<ConfigFile>>,
}

/// Validated `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded `send`, in bytes.
    pub max_event_bytes: usize,
    /// Most connected clients at once.
    pub max_connections: usize,
    /// Handshakes under way at once, at most.
    pub max_handshakes: usize,
    /// Concurrent uni streams each client may open, at most.
    pub max_streams: u32,
    /// Concurrent uni streams each client may open at first.
    pub initial_streams: u32,
    /// Bytes of one client's unfinished event streams held at most.
    pub partial_bytes: usize,
    /// Events waiting for one recipient.
    pub outbound_queue_events: usize,
    /// Bytes waiting for one recipient.
    pub outbound_queue_bytes: usize,
    /// Control frames waiting for one client.
    pub control_queue: usize,
    /// How long presence changes gather before they go out.
    pub presence_batch: Duration,
    /// How long they gather at most, in a burst.
    pub presence_batch_max: Duration,
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
        Config::from_file(f, false)
    }
}

impl Config {
    /// Validates a configuration file; `dev` (the `--dev` flag) allows
    /// plain NATS on loopback in `[cluster]`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn from_file(f: ConfigFile, dev: bool) -> Result<Config, ConfigError> {
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
        for (name, v) in [
            ("limits.presence_batch_ms", l.presence_batch_ms),
            ("limits.presence_batch_max_ms", l.presence_batch_max_ms),
        ] {
            if v > MAX_PRESENCE_BATCH_MS {
                return bad(format!(
                    "{name} = {v} must be at most {MAX_PRESENCE_BATCH_MS}"
                ));
            }
        }
        if l.partial_bytes < u64::from(l.max_event_bytes) {
            return bad(format!(
                "limits.partial_bytes = {} must be at least max_event_bytes = {}",
                l.partial_bytes, l.max_event_bytes
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
            ("limits.max_handshakes", u64::from(l.max_handshakes)),
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
        if f.workers > MAX_WORKERS {
            return bad(format!(
                "workers = {} must be at most {MAX_WORKERS} (0: one per CPU core)",
                f.workers
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
        let cluster = match &f.cluster {
            Some(c) => Some(c.validate(dev)?),
            None => None,
        };
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
            workers: match f.workers {
                0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                n => n as usize,
            },
            tls: f.tls,
            limits: Limits {
                max_event_bytes: l.max_event_bytes as usize,
                max_connections: l.max_connections as usize,
                max_handshakes: l.max_handshakes as usize,
                max_streams: l.max_streams,
                initial_streams: l.initial_streams,
                partial_bytes: usize::try_from(l.partial_bytes).unwrap_or(usize::MAX),
                outbound_queue_events: l.outbound_queue_events as usize,
                outbound_queue_bytes: usize::try_from(l.outbound_queue_bytes).unwrap_or(usize::MAX),
                control_queue: l.control_queue as usize,
                presence_batch: Duration::from_millis(l.presence_batch_ms),
                presence_batch_max: Duration::from_millis(l.presence_batch_max_ms),
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
            flags: None,
            cluster,
            dev: None,
        })
    }

    /// Loads and validates the configuration from `path` and the environment.
    ///
    /// # Errors
    /// [`ConfigError`] for unreadable files, bad values or bad ranges.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_layers(None, path, None)
    }

    /// Loads and validates the configuration from its layers, each over
    /// the one before: `dev` (the `--dev` layout) or the defaults, the file
    /// at `path` (if any), the environment, and `flags` (the command
    /// line's settings). Relative paths are taken as
    /// [`ConfigFile::extract`] says. With `dev`, a `[cluster]` without a
    /// name is named after the listen port (`dev-9090`), and plain NATS on
    /// loopback is allowed. A reload loads the same layers again.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_layers(
        dev: Option<Arc<ConfigFile>>,
        path: Option<&Path>,
        flags: Option<Arc<Figment>>,
    ) -> Result<Config, ConfigError> {
        let base = dev.as_deref().cloned().unwrap_or_default();
        let mut figment = ConfigFile::figment_over(&base, path);
        if let Some(flags) = &flags {
            figment = figment.merge(Figment::clone(flags));
        }
        let mut file = ConfigFile::extract(&figment)?;
        if dev.is_some() {
            if let Some(c) = &mut file.cluster {
                if c.name.is_empty() {
                    c.name = format!("dev-{}", file.listen.port());
                }
            }
        }
        let mut config = Config::from_file(file, dev.is_some())?;
        config.source = path.map(Path::to_path_buf);
        config.flags = flags;
        config.dev = dev;
        Ok(config)
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
        f.limits.partial_bytes = u64::from(f.limits.max_event_bytes) - 1;
        let e = Config::try_from(f).unwrap_err().to_string();
        assert!(e.contains("limits.partial_bytes"), "{e}");

        let mut f = ConfigFile::default();
        f.groups.insert("bad group".into(), vec!["x".into()]);
        assert!(Config::try_from(f).is_err());

        let mut f = ConfigFile::default();
        f.transport.keep_alive_secs = 30;
        assert!(Config::try_from(f).is_err());

        let f = ConfigFile {
            workers: MAX_WORKERS + 1,
            ..ConfigFile::default()
        };
        let e = Config::try_from(f).unwrap_err().to_string();
        assert!(e.contains("workers = 1025 must be at most 1024"), "{e}");
    }

    #[test]
    fn one_worker_by_default_one_per_core_with_0_or_as_many_as_asked() {
        assert_eq!(Config::try_from(ConfigFile::default()).unwrap().workers, 1);
        let with = |workers| ConfigFile {
            workers,
            ..ConfigFile::default()
        };
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Config::try_from(with(0)).unwrap().workers, cores);
        assert_eq!(Config::try_from(with(3)).unwrap().workers, 3);
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

    /// A relative path from the file is the file's; one from the
    /// environment or a flag is the working directory's, and a reload
    /// (the same layers again) keeps the flags.
    #[test]
    fn relative_paths_follow_where_they_were_set() {
        figment::Jail::expect_with(|jail| {
            std::fs::create_dir(jail.directory().join("etc")).map_err(|e| e.to_string())?;
            jail.create_file(
                "etc/r.toml",
                "data_dir = \"data\"\n[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/r.pem\"\n",
            )?;
            jail.set_env("ICOM_TLS__CERT", "env/r.pem");
            let path = jail.directory().join("etc/r.toml");
            let flags = Arc::new(
                Figment::new()
                    .merge(Serialized::default("data_dir", "flag-data"))
                    .merge(Serialized::default("listen", "127.0.0.1:7001")),
            );
            let c =
                Config::load_layers(None, Some(&path), Some(flags)).map_err(|e| e.to_string())?;
            assert_eq!(c.tls.ca, jail.directory().join("etc/pki/ca.pem"));
            assert_eq!(
                c.tls.cert,
                PathBuf::from("env/r.pem"),
                "from the environment"
            );
            assert_eq!(c.data_dir, PathBuf::from("flag-data"), "from a flag");
            let again = Config::load_layers(c.dev.clone(), c.source.as_deref(), c.flags.clone())
                .map_err(|e| e.to_string())?;
            assert_eq!(again.listen, c.listen, "the flag's listen, again");
            assert_eq!(again.data_dir, c.data_dir);
            assert_eq!(again.tls.ca, c.tls.ca);
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
        let cluster_text = std::fs::read_to_string(root.join("cluster.example.toml")).unwrap();
        let cluster: ConfigFile =
            toml::from_str(&cluster_text).expect("the cluster example parses");
        let written: toml::Value = toml::from_str(&cluster_text).unwrap();
        let section = cluster.cluster.clone().expect("the example has [cluster]");
        let defaults = toml::Value::try_from(ClusterFile {
            ca: Some("x".into()),
            cert: Some("x".into()),
            key: Some("x".into()),
            ..ClusterFile::default()
        })
        .unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        keys(&defaults, "cluster.", &mut want);
        keys(&written, "", &mut have);
        for k in want {
            assert!(
                have.contains(&k),
                "the cluster example does not document {k}"
            );
        }
        // store_replicas has no fixed default (3, or 1 with --dev): the
        // example shows 3.
        assert_eq!(section.store_replicas, Some(3));
        assert_eq!(
            ClusterFile {
                urls: Vec::new(),
                name: String::new(),
                ca: None,
                cert: None,
                key: None,
                store_replicas: None,
                ..section
            },
            ClusterFile::default(),
            "the cluster example shows the defaults"
        );
        Config::try_from(cluster).expect("the cluster example validates");
        let policy_text = std::fs::read_to_string(root.join("policy.example.toml")).unwrap();
        let policy: ConfigFile = toml::from_str(&policy_text).expect("the policy example parses");
        Config::try_from(policy).expect("the policy example validates");
        let dev_text = std::fs::read_to_string(root.join("dev.example.toml")).unwrap();
        let dev: ConfigFile = toml::from_str(&dev_text).expect("the dev example parses");
        Config::from_file(dev, true).expect("the dev example validates");
    }
}

//! The extension's config, `icom.toml`: where it is found, what it holds,
//! and the checked [`Config`] the rest of the extension uses.
//!
//! Search order, first found wins:
//! 1. the file named by the environment variable `ICOM_CONFIG` (if it is set
//!    and the file is missing, that is an error: no silent fallback);
//! 2. `icom.toml` beside the library (`@icom/icom.toml` when the game loads
//!    `@icom/icom_x64.so`);
//! 3. `@icom/icom.toml` under the working directory (the game's folder);
//! 4. `icom.toml` in the working directory.
//!
//! Precedence: defaults < the file < `ICOM_*` environment variables
//! (`ICOM_ROUTER`, `ICOM_LIMITS__WINDOW`, …; `__` separates sections).
//! The router is `router` (one address) or `routers` (the routers of one
//! cluster, in order of preference); one source giving both is an error,
//! and `ICOM_ROUTER` or `ICOM_ROUTERS` replaces the file's either.
//! Relative paths (`ca`, `cert`, `key`, `logs.dir`) are relative to the
//! folder of the config file. The server's identity is not configured: it is
//! the Common Name of the certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use icom_client::{merge_source, ClientConfig, QueueConfig, ReconnectConfig};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::bridge::Bounds;
use crate::logs::LogSettings;
use crate::outbox::OutboxLimits;
use crate::payloads::PayloadLimits;

/// The config file's name.
pub(crate) const FILE_NAME: &str = "icom.toml";
/// The environment variable that names the config file.
pub(crate) const ENV_CONFIG: &str = "ICOM_CONFIG";
/// The mod folder's usual name.
pub(crate) const MOD_DIR: &str = "@icom";
/// The largest callback data or page: the game's output buffer is 10,240
/// bytes with its terminating NUL.
pub(crate) const MAX_INLINE_BYTES: usize = 10_000;

/// Why there is no usable config.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ConfigError {
    /// `ICOM_CONFIG` names a file that does not exist.
    #[error("ICOM_CONFIG names '{0}', which does not exist")]
    EnvMissing(PathBuf),
    /// No file in the search order exists.
    #[error("no icom.toml found; looked in: {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<PathBuf>),
    /// The file (or an `ICOM_*` variable) does not parse.
    #[error("cannot read '{}': {detail}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// A setting is missing or out of range.
    #[error("invalid setting {setting} in '{}': {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// The checked config.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The file it came from.
    pub(crate) file: PathBuf,
    /// How to reach the router, with paths made absolute.
    pub(crate) client: ClientConfig,
    /// The extension's own bounds.
    pub(crate) limits: Limits,
    /// Where to log.
    pub(crate) logs: LogSettings,
}

/// The extension's bounds, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) outbox: OutboxLimits,
    pub(crate) payloads: PayloadLimits,
    pub(crate) bridge: Bounds,
    /// Commands (sends, requests, forgets) waiting for their answer at once.
    pub(crate) commands_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        LimitsFile::default()
            .check()
            .unwrap_or_else(|(_, detail)| unreachable!("the defaults are valid: {detail}"))
    }
}

/// Finds the config file by the search order.
///
/// # Errors
/// [`ConfigError::EnvMissing`] or [`ConfigError::NotFound`].
pub(crate) fn find(
    env: Option<PathBuf>,
    library_dir: Option<&Path>,
    cwd: Option<&Path>,
) -> Result<PathBuf, ConfigError> {
    if let Some(path) = env.filter(|p| !p.as_os_str().is_empty()) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ConfigError::EnvMissing(path))
        };
    }
    let candidates = search_path(library_dir, cwd);
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(ConfigError::NotFound(candidates))
}

/// The places looked at after `ICOM_CONFIG`, in order.
pub(crate) fn search_path(library_dir: Option<&Path>, cwd: Option<&Path>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(dir) = library_dir {
        v.push(dir.join(FILE_NAME));
    }
    if let Some(cwd) = cwd {
        v.push(cwd.join(MOD_DIR).join(FILE_NAME));
        v.push(cwd.join(FILE_NAME));
    }
    v.dedup();
    v
}

/// Finds the config by the search order, using this process's environment,
/// library folder and working directory.
///
/// # Errors
/// As [`find`].
pub(crate) fn find_here(library_dir: Option<&Path>) -> Result<PathBuf, ConfigError> {
    let cwd = std::env::current_dir().ok();
    find(
        std::env::var_os(ENV_CONFIG).map(PathBuf::from),
        library_dir,
        cwd.as_deref(),
    )
}

/// Loads and checks a config file, with `ICOM_*` variables over it.
/// `default_log_dir` is used when the file does not set `logs.dir`.
///
/// # Errors
/// [`ConfigError::Parse`] or [`ConfigError::Invalid`].
pub(crate) fn load(path: &Path, default_log_dir: &Path) -> Result<Config, ConfigError> {
    let invalid = |e: icom_client::ConfigError| match e {
        icom_client::ConfigError::Invalid { setting, detail } => ConfigError::Invalid {
            path: path.to_owned(),
            setting,
            detail,
        },
        other => ConfigError::Parse {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    };
    // As the client library layers its sources: the highest that names
    // the router (`router` or `routers`) decides.
    let figment = Figment::from(Serialized::defaults(ConfigFile::default()));
    let figment = merge_source(figment, Toml::file_exact(path), "icom.toml").map_err(invalid)?;
    let file: ConfigFile = merge_source(figment, env_overrides(), "the ICOM_* environment")
        .map_err(invalid)?
        .extract()
        .map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    file.check(path, default_log_dir)
}

/// `ICOM_*` variables for the settings this file has (others, such as the
/// router's own, are left alone).
fn env_overrides() -> Env {
    const KEYS: [&str; 12] = [
        "router",
        "routers",
        "server_name",
        "ca",
        "cert",
        "key",
        "connect_timeout_ms",
        "ack_timeout_ms",
        "reconnect",
        "queue",
        "limits",
        "logs",
    ];
    Env::prefixed("ICOM_").split("__").filter(|key| {
        let top = key.as_str().split('.').next().unwrap_or_default();
        KEYS.contains(&top)
    })
}

/// `icom.toml` as written. Every field has a default; unknown keys are
/// errors, so that a typo does not silently keep a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    router: String,
    routers: Vec<String>,
    server_name: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    connect_timeout_ms: u64,
    ack_timeout_ms: u64,
    reconnect: ReconnectConfig,
    queue: QueueConfig,
    limits: LimitsFile,
    logs: LogsFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LimitsFile {
    callbacks: usize,
    callback_bytes: usize,
    window: usize,
    credit_timeout_ms: u64,
    pace_ms: u64,
    inline_bytes: usize,
    page_bytes: usize,
    payloads: usize,
    payload_bytes: usize,
    payload_age_ms: u64,
    max_depth: usize,
    max_data_bytes: usize,
    commands_in_flight: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LogsFile {
    dir: Option<PathBuf>,
    max_bytes: u64,
    keep: usize,
}

impl Default for ConfigFile {
    fn default() -> ConfigFile {
        let client = ClientConfig::default();
        ConfigFile {
            router: String::new(),
            routers: Vec::new(),
            server_name: String::new(),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            connect_timeout_ms: client.connect_timeout_ms,
            ack_timeout_ms: client.ack_timeout_ms,
            reconnect: client.reconnect,
            queue: client.queue,
            limits: LimitsFile::default(),
            logs: LogsFile::default(),
        }
    }
}

impl Default for LimitsFile {
    fn default() -> LimitsFile {
        LimitsFile {
            callbacks: 10_000,
            callback_bytes: 32 << 20,
            window: 200,
            credit_timeout_ms: 5_000,
            pace_ms: 20,
            inline_bytes: 8_192,
            page_bytes: 8_192,
            payloads: 64,
            payload_bytes: 64 << 20,
            payload_age_ms: 60_000,
            max_depth: 32,
            max_data_bytes: icom_protocol::DEFAULT_MAX_EVENT_BYTES,
            commands_in_flight: 4_096,
        }
    }
}

impl Default for LogsFile {
    fn default() -> LogsFile {
        LogsFile {
            dir: None,
            max_bytes: 1 << 20,
            keep: 3,
        }
    }
}

impl ConfigFile {
    fn check(self, path: &Path, default_log_dir: &Path) -> Result<Config, ConfigError> {
        let invalid = |setting: &'static str, detail: &str| ConfigError::Invalid {
            path: path.to_owned(),
            setting,
            detail: detail.to_owned(),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut client = ClientConfig::new(
            self.router,
            self.server_name.trim(),
            base.join(&self.ca),
            base.join(&self.cert),
            base.join(&self.key),
        );
        client.routers = self.routers;
        let routers = client.router_list().map_err(|e| match e {
            icom_client::ConfigError::Invalid { setting, detail } => invalid(setting, &detail),
            other => invalid("routers", &other.to_string()),
        })?;
        for (setting, value) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if value.as_os_str().is_empty() {
                return Err(invalid(setting, "required: a path to a PEM file"));
            }
        }
        if client.server_name.is_empty() {
            client.server_name = common_host(&routers).map_err(|d| invalid("server_name", &d))?;
        }
        client.agent = concat!("icom-extension/", env!("CARGO_PKG_VERSION")).into();
        client.connect_timeout_ms = self.connect_timeout_ms;
        client.ack_timeout_ms = self.ack_timeout_ms;
        client.reconnect = self.reconnect;
        client.queue = self.queue;
        let limits = self
            .limits
            .check()
            .map_err(|(setting, detail)| invalid(setting, &detail))?;
        let logs = LogSettings {
            dir: self
                .logs
                .dir
                .map_or_else(|| default_log_dir.to_owned(), |d| base.join(d)),
            max_bytes: self.logs.max_bytes,
            keep: self.logs.keep,
        };
        if logs.max_bytes < 1024 {
            return Err(invalid("logs.max_bytes", "must be at least 1024"));
        }
        if logs.keep > 100 {
            return Err(invalid("logs.keep", "must be at most 100"));
        }
        Ok(Config {
            file: path.to_owned(),
            client,
            limits,
            logs,
        })
    }
}

impl LimitsFile {
    fn check(&self) -> Result<Limits, (&'static str, String)> {
        let range = |setting: &'static str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err((setting, format!("{v} is not within {lo}..={hi}")))
            }
        };
        let ms = |setting: &'static str, v: u64| {
            if v >= 1 {
                Ok(Duration::from_millis(v))
            } else {
                Err((setting, "must be at least 1 ms".to_owned()))
            }
        };
        let page_bytes = range("limits.page_bytes", self.page_bytes, 1024, MAX_INLINE_BYTES)?;
        Ok(Limits {
            outbox: OutboxLimits {
                count: range("limits.callbacks", self.callbacks, 1, 10_000_000)?,
                bytes: range(
                    "limits.callback_bytes",
                    self.callback_bytes,
                    1 << 16,
                    u32::MAX as usize,
                )?,
                window: range("limits.window", self.window, 1, 100_000)?,
                inline_bytes: range(
                    "limits.inline_bytes",
                    self.inline_bytes,
                    256,
                    MAX_INLINE_BYTES,
                )?,
                credit_timeout: ms("limits.credit_timeout_ms", self.credit_timeout_ms)?,
                pace: ms("limits.pace_ms", self.pace_ms)?,
            },
            payloads: PayloadLimits {
                count: range("limits.payloads", self.payloads, 1, 100_000)?,
                bytes: range(
                    "limits.payload_bytes",
                    self.payload_bytes,
                    1 << 16,
                    u32::MAX as usize,
                )?,
                age: ms("limits.payload_age_ms", self.payload_age_ms)?,
                page_bytes,
            },
            bridge: Bounds {
                max_depth: range("limits.max_depth", self.max_depth, 1, 60)?,
                max_bytes: range("limits.max_data_bytes", self.max_data_bytes, 1, 16 << 20)?,
            },
            commands_in_flight: range(
                "limits.commands_in_flight",
                self.commands_in_flight,
                1,
                1_000_000,
            )?,
        })
    }
}

/// The host the routers share, the default TLS name: the routers of one
/// cluster share one name, so routers on different hosts need
/// `server_name`.
fn common_host(routers: &[String]) -> Result<String, String> {
    let mut hosts = routers.iter().map(|r| router_host(r));
    let first = hosts.next().unwrap_or_default();
    if hosts.all(|h| h == first) {
        Ok(first.to_owned())
    } else {
        Err(
            "required when the routers are on different hosts: the name in their \
             certificate, which the routers of one cluster share"
                .to_owned(),
        )
    }
}

/// The host of `host:port` (`[v6]:port` too), the default TLS name.
fn router_host(router: &str) -> &str {
    let router = router.trim();
    if let Some(rest) = router.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match router.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    const MINIMAL: &str = r#"
router = "icom.example.net:9090"
ca = "keys/ca.pem"
cert = "keys/eu-1.pem"
key = "/abs/eu-1.key"
"#;

    #[test]
    fn search_order() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("lib");
        let cwd = tmp.path().join("cwd");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(&cwd).unwrap();
        let err = find(None, Some(&lib), Some(&cwd)).unwrap_err();
        assert!(
            matches!(&err, ConfigError::NotFound(v) if v.len() == 3),
            "{err}"
        );
        let in_cwd = write(&cwd, FILE_NAME, MINIMAL);
        assert_eq!(find(None, Some(&lib), Some(&cwd)).unwrap(), in_cwd);
        let in_mod = write(&cwd, "@icom/icom.toml", MINIMAL);
        assert_eq!(find(None, Some(&lib), Some(&cwd)).unwrap(), in_mod);
        let beside = write(&lib, FILE_NAME, MINIMAL);
        assert_eq!(find(None, Some(&lib), Some(&cwd)).unwrap(), beside);
        let named = write(tmp.path(), "elsewhere.toml", MINIMAL);
        assert_eq!(
            find(Some(named.clone()), Some(&lib), Some(&cwd)).unwrap(),
            named
        );
        let missing = tmp.path().join("missing.toml");
        assert_eq!(
            find(Some(missing.clone()), Some(&lib), Some(&cwd)),
            Err(ConfigError::EnvMissing(missing))
        );
        // an empty variable counts as unset
        assert_eq!(
            find(Some(PathBuf::new()), Some(&lib), Some(&cwd)).unwrap(),
            beside
        );
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "mod/icom.toml", MINIMAL);
        let c = load(&path, Path::new("/default/logs")).unwrap();
        let dir = tmp.path().join("mod");
        assert_eq!(c.client.ca, dir.join("keys/ca.pem"));
        assert_eq!(c.client.cert, dir.join("keys/eu-1.pem"));
        assert_eq!(c.client.key, Path::new("/abs/eu-1.key"));
        assert_eq!(c.client.router, "icom.example.net:9090");
        assert_eq!(c.client.server_name, "icom.example.net");
        assert!(c.client.agent.starts_with("icom-extension/"));
        assert_eq!(c.logs.dir, Path::new("/default/logs"));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn settings_and_sections_override_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}server_name = \"localhost\"\n[reconnect]\nmax_ms = 5000\n\
             [queue]\nmode = \"fail_fast\"\n[limits]\nwindow = 50\npage_bytes = 4096\n\
             [logs]\ndir = \"mylogs\"\nkeep = 1\n"
        );
        let path = write(tmp.path(), FILE_NAME, &text);
        let c = load(&path, Path::new("/x")).unwrap();
        assert_eq!(c.client.server_name, "localhost");
        assert_eq!(c.client.reconnect.max_ms, 5000);
        assert_eq!(c.client.queue.mode, icom_client::QueueMode::FailFast);
        assert_eq!(c.limits.outbox.window, 50);
        assert_eq!(c.limits.payloads.page_bytes, 4096);
        assert_eq!(c.logs.dir, tmp.path().join("mylogs"));
        assert_eq!(c.logs.keep, 1);
    }

    #[test]
    fn mistakes_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        for (text, needle) in [
            ("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\n", "router"),
            ("router = \"r:1\"\ncert = \"b\"\nkey = \"c\"\n", "ca"),
            (&format!("{MINIMAL}routr = \"typo\"\n"), "routr"),
            (
                &format!("{MINIMAL}[limits]\npage_bytes = 20000\n"),
                "limits.page_bytes",
            ),
            (&format!("{MINIMAL}[limits]\nwindw = 1\n"), "windw"),
            (
                &format!("{MINIMAL}[logs]\nmax_bytes = 1\n"),
                "logs.max_bytes",
            ),
            ("router = [", "cannot read"),
        ] {
            let path = write(tmp.path(), FILE_NAME, text);
            let err = load(&path, Path::new("/x")).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn the_shipped_example_is_valid_and_says_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("icom.toml.example");
        let c = load(&example, Path::new("/x")).unwrap();
        assert_eq!(c.limits, Limits::default());
        let d = ClientConfig::default();
        assert_eq!(c.client.queue, d.queue);
        assert_eq!(c.client.reconnect, d.reconnect);
        assert_eq!(
            (c.client.connect_timeout_ms, c.client.ack_timeout_ms),
            (d.connect_timeout_ms, d.ack_timeout_ms)
        );
        assert_eq!(c.client.ca, example.parent().unwrap().join("keys/ca.pem"));
        assert_eq!(c.logs.max_bytes, 1 << 20);
    }

    #[test]
    fn routers_of_one_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = "ca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";
        let path = write(
            tmp.path(),
            FILE_NAME,
            &format!("routers = [\"r.example:9090\", \"r.example:9091\"]\n{keys}"),
        );
        let c = load(&path, Path::new("/x")).unwrap();
        assert_eq!(
            c.client.router_list().unwrap(),
            ["r.example:9090", "r.example:9091"]
        );
        assert_eq!(c.client.server_name, "r.example");
        // Different hosts share a name only if it is given.
        let text = format!("routers = [\"a.example:9090\", \"b.example:9090\"]\n{keys}");
        let path = write(tmp.path(), FILE_NAME, &text);
        let err = load(&path, Path::new("/x")).unwrap_err();
        assert!(
            matches!(
                &err,
                ConfigError::Invalid {
                    setting: "server_name",
                    ..
                }
            ),
            "{err}"
        );
        let path = write(
            tmp.path(),
            FILE_NAME,
            &format!("{text}server_name = \"icom.example\"\n"),
        );
        let c = load(&path, Path::new("/x")).unwrap();
        assert_eq!(c.client.server_name, "icom.example");
        for (text, needle) in [
            (
                format!("router = \"a:1\"\nrouters = [\"b:1\"]\n{keys}"),
                "both",
            ),
            (format!("routers = [\"a:1\", \"a:1\"]\n{keys}"), "twice"),
            (format!("routers = []\n{keys}"), "required"),
        ] {
            let path = write(tmp.path(), FILE_NAME, &text);
            let err = load(&path, Path::new("/x")).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn router_host_takes_off_the_port() {
        assert_eq!(router_host("icom.example.net:9090"), "icom.example.net");
        assert_eq!(router_host("127.0.0.1:9090"), "127.0.0.1");
        assert_eq!(router_host("[::1]:9090"), "::1");
        assert_eq!(router_host("localhost"), "localhost");
    }
}

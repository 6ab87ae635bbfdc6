//! Connection settings given on a command line, over the configuration
//! sources: the one way the `icom` CLI and `icom-bench` turn their
//! `--config`, `--dev`, `--router`, `--ca`, ... flags into a
//! [`ClientConfig`]. Plain data, no argument parser: each binary maps its
//! own flags onto [`ConfigOverrides`].

use std::path::PathBuf;

use figment::providers::Serialized;

use crate::config::{merge_source, ClientConfig};
use crate::error::ConfigError;

/// Settings that override a client's configuration, each one only when it
/// is given. [`ConfigOverrides::load`] layers them, lowest first:
///
/// 1. the defaults, or with [`dev`](ConfigOverrides::dev) the layout of
///    `icom-server --dev` ([`ClientConfig::dev`]);
/// 2. the TOML [`file`](ConfigOverrides::file), if any;
/// 3. `ICOM_*` environment variables (`ICOM_ROUTER`, `ICOM_SERVER_NAME`,
///    `ICOM_QUEUE__TIMEOUT_MS`, ...);
/// 4. the fields below that are given (`Some`, or a non-empty `routers`).
///
/// The highest of these that names the router (`router` or `routers`)
/// decides the routers; one that gives both is an error.
///
/// ```no_run
/// use icom_client::ConfigOverrides;
///
/// # fn demo() -> Result<(), icom_client::ConfigError> {
/// let overrides = ConfigOverrides {
///     file: Some("/etc/icom/ops.toml".into()),
///     router: Some("icom.example.org:9090".into()),
///     ..ConfigOverrides::default()
/// };
/// let config = overrides.load()?;
/// # let _ = config;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOverrides {
    /// A client config file (TOML) to load over the base.
    pub file: Option<PathBuf>,
    /// Start from the `icom-server --dev` layout, connecting as this
    /// identity, instead of the defaults.
    pub dev: Option<String>,
    /// The router's address, `host:port`.
    pub router: Option<String>,
    /// The routers of one cluster, in order of preference (instead of
    /// `router`; empty: not given).
    pub routers: Vec<String>,
    /// The name in the router's certificate.
    pub server_name: Option<String>,
    /// The cluster CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This server's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// This server's private key (PEM).
    pub key: Option<PathBuf>,
    /// How long a connection attempt may take, in ms.
    pub connect_timeout_ms: Option<u64>,
}

impl ConfigOverrides {
    /// The configuration: the base (defaults or dev layout) < the file <
    /// `ICOM_*` environment < these overrides.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] if the file does not exist;
    /// [`ConfigError::Load`] if the file or the environment does not load;
    /// [`ConfigError::Invalid`] if one of them, or these overrides, gives
    /// both `router` and `routers`.
    pub fn load(&self) -> Result<ClientConfig, ConfigError> {
        let base = match &self.dev {
            Some(identity) => ClientConfig::dev(identity),
            None => ClientConfig::default(),
        };
        let mut figment = ClientConfig::figment(&base, self.file.as_deref())?;
        // Naming the router here replaces what the file or the environment
        // said of `router` and `routers` alike.
        figment = match (&self.router, self.routers.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::Invalid {
                    setting: "routers",
                    detail: "both a router and a list of routers are given: give one".into(),
                })
            }
            (Some(v), true) => {
                merge_source(figment, Serialized::default("router", v), "the flags")?
            }
            (None, false) => merge_source(
                figment,
                Serialized::default("routers", &self.routers),
                "the flags",
            )?,
            (None, true) => figment,
        };
        if let Some(v) = &self.server_name {
            figment = figment.merge(("server_name", v));
        }
        if let Some(v) = &self.ca {
            figment = figment.merge(("ca", v));
        }
        if let Some(v) = &self.cert {
            figment = figment.merge(("cert", v));
        }
        if let Some(v) = &self.key {
            figment = figment.merge(("key", v));
        }
        if let Some(v) = self.connect_timeout_ms {
            figment = figment.merge(("connect_timeout_ms", v));
        }
        figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn nothing_given_is_the_defaults() {
        let c = ConfigOverrides::default().load().unwrap();
        assert_eq!(c, ClientConfig::default());
    }

    #[test]
    fn dev_is_the_base_and_flags_win_over_it() {
        let c = ConfigOverrides {
            dev: Some("server_2".into()),
            router: Some("10.0.0.1:9999".into()),
            ..ConfigOverrides::default()
        }
        .load()
        .unwrap();
        assert_eq!(c.router, "10.0.0.1:9999");
        assert_eq!(c.cert, Path::new("./icom-dev/server_2.pem"));
        assert_eq!(c.key, Path::new("./icom-dev/server_2.key"));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("icom.toml");
        std::fs::write(
            &path,
            "router = \"r.example:9999\"\nca = \"/x/ca.pem\"\ncert = \"/x/a.pem\"\n",
        )
        .unwrap();
        let c = ConfigOverrides {
            file: Some(path),
            cert: Some("/y/b.pem".into()),
            key: Some("/y/b.key".into()),
            server_name: Some("r.example".into()),
            connect_timeout_ms: Some(300),
            ..ConfigOverrides::default()
        }
        .load()
        .unwrap();
        assert_eq!(c.router, "r.example:9999");
        assert_eq!(c.ca, Path::new("/x/ca.pem"));
        assert_eq!(c.cert, Path::new("/y/b.pem"));
        assert_eq!(c.key, Path::new("/y/b.key"));
        assert_eq!(c.server_name, "r.example");
        assert_eq!(c.connect_timeout_ms, 300);
    }

    #[test]
    fn the_highest_source_naming_the_router_decides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("icom.toml");
        std::fs::write(&path, "routers = [\"a:1\", \"b:1\"]\n").unwrap();
        let file = Some(path.clone());
        // The file's list over the default router.
        let c = ConfigOverrides {
            file: file.clone(),
            ..ConfigOverrides::default()
        }
        .load()
        .unwrap();
        assert_eq!(
            (c.router.as_str(), c.routers.clone()),
            ("", vec!["a:1".to_owned(), "b:1".to_owned()])
        );
        assert_eq!(c.router_list().unwrap(), ["a:1", "b:1"]);
        // One router flag over the file's list.
        let c = ConfigOverrides {
            file: file.clone(),
            router: Some("c:1".into()),
            ..ConfigOverrides::default()
        }
        .load()
        .unwrap();
        assert_eq!(c.router_list().unwrap(), ["c:1"]);
        // Several over the dev layout's one.
        let c = ConfigOverrides {
            dev: Some("server_1".into()),
            routers: vec!["d:1".into(), "e:1".into()],
            ..ConfigOverrides::default()
        }
        .load()
        .unwrap();
        assert_eq!(c.router_list().unwrap(), ["d:1", "e:1"]);
        // Both in the flags, or both in the file: an error.
        let both = ConfigOverrides {
            router: Some("c:1".into()),
            routers: vec!["d:1".into()],
            ..ConfigOverrides::default()
        };
        assert!(matches!(
            both.load(),
            Err(ConfigError::Invalid {
                setting: "routers",
                ..
            })
        ));
        std::fs::write(&path, "router = \"a:1\"\nrouters = [\"b:1\"]\n").unwrap();
        let err = ConfigOverrides {
            file,
            ..ConfigOverrides::default()
        }
        .load()
        .unwrap_err();
        assert!(
            err.to_string().contains("the config file gives both"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = ConfigOverrides {
            file: Some("/nonexistent/icom.toml".into()),
            ..ConfigOverrides::default()
        }
        .load()
        .unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
    }
}

//! `[cluster]`: several routers sharing one routing space over NATS. Absent
//! (the default), the router is alone and needs nothing else.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[cluster]` as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterFile {
    /// The NATS servers to connect to (`tls://host:4222`, or `nats://` on
    /// loopback in `--dev` mode); any one of them is enough.
    pub urls: Vec<String>,
    /// This router's name, unique in the cluster: letters, digits, `_`, `-`.
    pub name: String,
    /// The first tokens of every subject ICOM uses, so that several ICOM
    /// clusters can share one NATS.
    pub prefix: String,
    /// The CA that NATS's certificate must chain to (PEM).
    pub ca: Option<PathBuf>,
    /// This router's client certificate for NATS (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// How often this router tells the others which servers it holds, in ms.
    pub heartbeat_ms: u64,
    /// A router not heard of for this long is taken as gone, and its
    /// servers are announced as gone, in ms.
    pub router_timeout_ms: u64,
    /// How long a send waits for another router's answer, in ms; past it
    /// the recipients there get `unreachable`.
    pub request_timeout_ms: u64,
    /// The longest a connect waits for NATS at start, in ms; the router
    /// serves its own servers meanwhile and keeps trying.
    pub connect_timeout_ms: u64,
    /// Copies JetStream keeps of every stored event (persistent events,
    /// offline queues), on as many NATS nodes: 1 to 5. Default 3 (1 with
    /// `--dev`).
    pub store_replicas: Option<u8>,
    /// The longest a persistent or ttl send waits for JetStream to confirm
    /// the write (a stream leader election included), in ms; past it the
    /// send gets `unreachable`.
    pub store_timeout_ms: u64,
}

impl Default for ClusterFile {
    fn default() -> Self {
        ClusterFile {
            urls: Vec::new(),
            name: String::new(),
            prefix: "icom".into(),
            ca: None,
            cert: None,
            key: None,
            heartbeat_ms: 1000,
            router_timeout_ms: 10_000,
            request_timeout_ms: 2000,
            connect_timeout_ms: 5000,
            store_replicas: None,
            store_timeout_ms: 5000,
        }
    }
}

/// The validated `[cluster]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// NATS server URLs.
    pub urls: Vec<String>,
    /// This router's name.
    pub name: String,
    /// The subject prefix.
    pub prefix: String,
    /// Mutual TLS to NATS: CA, certificate, key. `None` only for plain
    /// `nats://` URLs on loopback in dev mode.
    pub tls: Option<NatsTls>,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// Silence after which a router is taken as gone.
    pub router_timeout: Duration,
    /// Wait for another router's answer.
    pub request_timeout: Duration,
    /// Wait for NATS at start.
    pub connect_timeout: Duration,
    /// JetStream replicas of the shared store.
    pub store_replicas: usize,
    /// Wait for JetStream to confirm a write.
    pub store_timeout: Duration,
}

/// The files of the router's TLS client identity towards NATS.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsTls {
    /// CA certificate(s).
    pub ca: PathBuf,
    /// Client certificate chain.
    pub cert: PathBuf,
    /// Client key.
    pub key: PathBuf,
}

/// Whether `s` is a valid router name or subject token: 1 to 64 letters,
/// digits, `_` or `-`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `url` names a loopback host.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ClusterFile {
    /// Validates the section. `dev` allows plain `nats://` URLs on loopback
    /// without certificates; everywhere else TLS to NATS is required.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self, dev: bool) -> Result<Cluster, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.urls.is_empty() {
            return bad("cluster.urls must name at least one NATS server".into());
        }
        if self.urls.len() > 64 {
            return bad("cluster.urls: at most 64 URLs".into());
        }
        if !is_token(&self.name) {
            return bad(format!(
                "cluster.name = {:?} must be 1 to 64 letters, digits, '_' or '-' (unique in the cluster)",
                self.name
            ));
        }
        if !self.prefix.split('.').all(is_token) {
            return bad(format!(
                "cluster.prefix = {:?} must be tokens of letters, digits, '_' or '-', joined by '.'",
                self.prefix
            ));
        }
        let tls = match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Some(NatsTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, None) => None,
            _ => {
                return bad(
                    "cluster.ca, cluster.cert and cluster.key go together: set all three".into(),
                )
            }
        };
        for url in &self.urls {
            let scheme = url.split_once("://").map(|(s, _)| s);
            match scheme {
                Some("tls") => {}
                Some("nats") if tls.is_some() => {}
                Some("nats") if dev && is_loopback(url) => {}
                Some("nats") => {
                    return bad(format!(
                        "cluster.urls: {url} is plain NATS: routers need mutual TLS to NATS \
                         (tls:// with cluster.ca, cert and key); plain nats:// is allowed only \
                         on loopback in --dev mode"
                    ))
                }
                _ => {
                    return bad(format!(
                        "cluster.urls: {url} must start with tls:// or nats://"
                    ))
                }
            }
        }
        if tls.is_none() && !dev {
            return bad(
                "cluster.ca, cluster.cert and cluster.key are required (mutual TLS to NATS)".into(),
            );
        }
        let ms = Duration::from_millis;
        for (name, v, min, max) in [
            ("cluster.heartbeat_ms", self.heartbeat_ms, 50, 60_000),
            (
                "cluster.router_timeout_ms",
                self.router_timeout_ms,
                200,
                600_000,
            ),
            (
                "cluster.request_timeout_ms",
                self.request_timeout_ms,
                10,
                60_000,
            ),
            (
                "cluster.connect_timeout_ms",
                self.connect_timeout_ms,
                0,
                600_000,
            ),
            (
                "cluster.store_timeout_ms",
                self.store_timeout_ms,
                100,
                60_000,
            ),
        ] {
            if !(min..=max).contains(&v) {
                return bad(format!("{name} = {v} must be between {min} and {max}"));
            }
        }
        if self.router_timeout_ms < 2 * self.heartbeat_ms {
            return bad(format!(
                "cluster.router_timeout_ms = {} must be at least twice heartbeat_ms = {}",
                self.router_timeout_ms, self.heartbeat_ms
            ));
        }
        let store_replicas = self.store_replicas.unwrap_or(if dev { 1 } else { 3 });
        if !(1..=5).contains(&store_replicas) {
            return bad(format!(
                "cluster.store_replicas = {store_replicas} must be between 1 and 5"
            ));
        }
        Ok(Cluster {
            urls: self.urls.clone(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            tls,
            heartbeat: ms(self.heartbeat_ms),
            router_timeout: ms(self.router_timeout_ms),
            request_timeout: ms(self.request_timeout_ms),
            connect_timeout: ms(self.connect_timeout_ms),
            store_replicas: store_replicas.into(),
            store_timeout: ms(self.store_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(urls: &[&str]) -> ClusterFile {
        ClusterFile {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            name: "r1".into(),
            ..ClusterFile::default()
        }
    }

    #[test]
    fn plain_nats_only_on_loopback_in_dev_mode() {
        for url in [
            "nats://127.0.0.1:4222",
            "nats://localhost:4222",
            "nats://[::1]:4222",
        ] {
            assert!(file(&[url]).validate(true).is_ok(), "{url}");
            let e = file(&[url]).validate(false).unwrap_err().to_string();
            assert!(e.contains("mutual TLS"), "{e}");
        }
        let e = file(&["nats://10.0.0.1:4222"])
            .validate(true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain NATS"), "{e}");
        let e = file(&["http://x"]).validate(true).unwrap_err().to_string();
        assert!(e.contains("tls:// or nats://"), "{e}");
    }

    #[test]
    fn tls_files_go_together_and_names_are_tokens() {
        let mut f = file(&["tls://nats:4222"]);
        f.ca = Some("ca.pem".into());
        let e = f.validate(false).unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        f.cert = Some("r.pem".into());
        f.key = Some("r.key".into());
        let c = f.validate(false).unwrap();
        assert_eq!(c.tls.unwrap().key, PathBuf::from("r.key"));
        for name in ["", "a.b", "a b", &"x".repeat(65)] {
            let mut f = file(&["nats://127.0.0.1:1"]);
            f.name = name.to_owned();
            assert!(f.validate(true).is_err(), "{name:?}");
        }
        let mut f = file(&["nats://127.0.0.1:1"]);
        f.prefix = "a..b".into();
        assert!(f.validate(true).is_err());
        f.prefix = "community_1.icom".into();
        assert!(f.validate(true).is_ok());
    }

    #[test]
    fn timeouts_are_bounded() {
        let mut f = file(&["nats://127.0.0.1:1"]);
        f.router_timeout_ms = 1500;
        let e = f.validate(true).unwrap_err().to_string();
        assert!(e.contains("twice heartbeat_ms"), "{e}");
        f.router_timeout_ms = 3000;
        f.request_timeout_ms = 0;
        assert!(f.validate(true).is_err());
    }

    #[test]
    fn store_replicas_default_to_three_and_one_in_dev() {
        let mut f = file(&["nats://127.0.0.1:1"]);
        assert_eq!(f.validate(true).unwrap().store_replicas, 1);
        f.ca = Some("ca.pem".into());
        f.cert = Some("r.pem".into());
        f.key = Some("r.key".into());
        assert_eq!(f.validate(false).unwrap().store_replicas, 3);
        f.store_replicas = Some(6);
        let e = f.validate(false).unwrap_err().to_string();
        assert!(e.contains("between 1 and 5"), "{e}");
        f.store_replicas = Some(5);
        assert_eq!(f.validate(true).unwrap().store_replicas, 5);
    }
}

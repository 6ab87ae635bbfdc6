//! TLS and QUIC settings: the cluster CA as the only root, this server's
//! certificate for client authentication, ALPN `icom/1`, rustls on `ring`,
//! and a transport that lets the router open many event streams at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ms, ClientConfig};
use crate::error::ConfigError;

/// Builds the QUIC client config from the files `cfg` names.
///
/// # Errors
/// [`ConfigError`] naming the file, or the setting, that is not usable.
pub(crate) fn quic_config(cfg: &ClientConfig) -> Result<quinn::ClientConfig, ConfigError> {
    let ca = load_certs(&cfg.ca, "CA certificate")?;
    let chain = load_certs(&cfg.cert, "client certificate")?;
    let key = load_key(&cfg.key)?;

    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| ConfigError::Pem {
            what: "CA certificate",
            path: cfg.ca.clone(),
            detail: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| ConfigError::Tls(format!("certificate and key: {e}")))?;
    tls.alpn_protocols = vec![icom_protocol::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| ConfigError::Tls(e.to_string()))?;

    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport(cfg)?));
    Ok(config)
}

/// A client endpoint bound at `bind`, its UDP buffers sized as `cfg`
/// asks (a size the OS refuses leaves its default).
///
/// # Errors
/// The OS error when the socket cannot be bound.
pub(crate) fn endpoint(bind: SocketAddr, cfg: &ClientConfig) -> std::io::Result<quinn::Endpoint> {
    use quinn::udp::{UdpSockRef, UdpSocketState};
    let socket = std::net::UdpSocket::bind(bind)?;
    let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
    if cfg.udp_receive_buffer > 0 {
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), cfg.udp_receive_buffer);
    }
    if cfg.udp_send_buffer > 0 {
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), cfg.udp_send_buffer);
    }
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
}

fn transport(cfg: &ClientConfig) -> Result<TransportConfig, ConfigError> {
    if cfg.keep_alive_ms > 0 && cfg.keep_alive_ms >= cfg.idle_timeout_ms {
        return Err(ConfigError::Invalid {
            setting: "keep_alive_ms",
            detail: format!(
                "{} ms is not below idle_timeout_ms ({} ms): the connection would time out \
                 between keep-alives",
                cfg.keep_alive_ms, cfg.idle_timeout_ms
            ),
        });
    }
    let idle =
        IdleTimeout::try_from(ms(cfg.idle_timeout_ms)).map_err(|e| ConfigError::Invalid {
            setting: "idle_timeout_ms",
            detail: e.to_string(),
        })?;
    let inbound = &cfg.inbound;
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval((cfg.keep_alive_ms > 0).then(|| ms(cfg.keep_alive_ms)))
        .max_concurrent_uni_streams(VarInt::from_u32(
            inbound.initial_streams.min(inbound.max_streams),
        ))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(inbound.stream_window))
        .receive_window(VarInt::from_u32(inbound.connection_window))
        .send_window(u64::from(inbound.connection_window))
        .initial_rtt(Duration::from_millis(10));
    if cfg.ack_eliciting_threshold > 0 {
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(cfg.ack_eliciting_threshold))
            .max_ack_delay((cfg.max_ack_delay_ms > 0).then(|| ms(cfg.max_ack_delay_ms)));
        t.ack_frequency_config(Some(ack));
    }
    Ok(t)
}

fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    check_file(path, what)?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::Pem {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ConfigError::Pem {
            what,
            path: path.to_owned(),
            detail: "no CERTIFICATE block in the file".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    const WHAT: &str = "private key";
    check_file(path, WHAT)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| ConfigError::Pem {
        what: WHAT,
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn check_file(path: &Path, what: &'static str) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() || !path.is_file() {
        return Err(ConfigError::Missing {
            what,
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keep_alive_must_come_before_the_idle_timeout() {
        let defaults = ClientConfig::default();
        assert!(defaults.keep_alive_ms * 3 <= defaults.idle_timeout_ms);
        assert!(transport(&defaults).is_ok());
        let mut c = ClientConfig {
            keep_alive_ms: 6_000,
            idle_timeout_ms: 6_000,
            ..ClientConfig::default()
        };
        let err = transport(&c).unwrap_err();
        assert!(
            matches!(
                &err,
                ConfigError::Invalid {
                    setting: "keep_alive_ms",
                    ..
                }
            ),
            "{err}"
        );
        // No keep-alive at all is allowed.
        c.keep_alive_ms = 0;
        assert!(transport(&c).is_ok());
    }
}

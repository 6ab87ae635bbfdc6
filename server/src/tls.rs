//! TLS for the router: the server config (our chain, ALPN `icom/1`, client
//! certificates verified against the cluster CA and its CRL), the QUIC
//! transport settings, and reading a peer's identity from its certificate.

use std::sync::Arc;

use icom_protocol::{validate_server_id, ALPN};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use thiserror::Error;

use crate::config::{Config, Limits, Transport};

/// Why the TLS material could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error(transparent)]
    File(#[from] icom_certs::LoadError),
    /// The CA file holds no certificate.
    #[error("{0}: no CA certificate in this file")]
    NoCa(String),
    /// rustls refused the material.
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

/// Everything loaded from the TLS files, kept to check live peers on reload.
pub struct TlsMaterial {
    /// The QUIC server configuration to hand to the endpoint.
    pub server_config: quinn::ServerConfig,
    /// The parsed CRLs, to close revoked live connections.
    pub crls: Vec<webpki::CertRevocationList<'static>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("crls", &self.crls.len())
            .finish_non_exhaustive()
    }
}

/// Loads the CA, the CRL, the router's chain and key, and builds the QUIC
/// server configuration.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn load(config: &Config) -> Result<TlsMaterial, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = roots(&config.tls.ca)?;
    let crl_ders: Vec<CertificateRevocationListDer<'static>> = match &config.tls.crl {
        Some(p) => icom_certs::load_crls(p)?,
        None => Vec::new(),
    };
    let crls = crl_ders
        .iter()
        .map(|d| {
            webpki::OwnedCertRevocationList::from_der(d)
                .map(webpki::CertRevocationList::from)
                .map_err(|e| {
                    TlsError::Rustls(format!("CRL {}: {e:?}", display_opt(&config.tls.crl)))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crl_ders.is_empty() {
        verifier = verifier
            .with_crls(crl_ders)
            .only_check_end_entity_revocation();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Rustls(format!("client verifier: {e}")))?;
    let chain = icom_certs::load_certs(&config.tls.cert)?;
    let key = icom_certs::load_key(&config.tls.key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError::Rustls(format!(
                "{} / {}: {e}",
                config.tls.cert.display(),
                config.tls.key.display()
            ))
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server_config.transport_config(Arc::new(transport(&config.transport, &config.limits)));
    Ok(TlsMaterial {
        server_config,
        crls,
    })
}

/// Checks the router's TLS client identity towards NATS (`[cluster]`):
/// the CA holds a certificate, and the chain and key load and belong
/// together.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn check_nats_files(tls: &crate::config::NatsTls) -> Result<(), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = roots(&tls.ca)?;
    let chain = icom_certs::load_certs(&tls.cert)?;
    let key = icom_certs::load_key(&tls.key)?;
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            TlsError::Rustls(format!(
                "{} / {}: {e}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    Ok(())
}

/// The CA certificates of `path` as trust roots; at least one.
fn roots(path: &std::path::Path) -> Result<RootCertStore, TlsError> {
    let ca_path = path.display().to_string();
    let cas = icom_certs::load_certs(path)?;
    if cas.is_empty() {
        return Err(TlsError::NoCa(ca_path));
    }
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| TlsError::Rustls(format!("{ca_path}: {e}")))?;
    }
    Ok(roots)
}

fn display_opt(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The QUIC transport settings for client connections.
pub fn transport(t: &Transport, limits: &Limits) -> quinn::TransportConfig {
    let mut tc = quinn::TransportConfig::default();
    tc.max_concurrent_uni_streams(limits.initial_streams.into())
        .max_concurrent_bidi_streams(1u32.into())
        .stream_receive_window(t.stream_receive_window.into())
        .receive_window(t.receive_window.into())
        .send_window(t.send_window)
        .keep_alive_interval(t.keep_alive)
        .send_fairness(t.send_fairness)
        .enable_segmentation_offload(t.segmentation_offload)
        .datagram_receive_buffer_size(None);
    if t.ack_eliciting_threshold > 0 {
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(t.ack_eliciting_threshold.into())
            .max_ack_delay(t.max_ack_delay);
        tc.ack_frequency_config(Some(ack));
    }
    // The idle timeout is a few seconds to minutes: always a valid VarInt.
    if let Ok(idle) = quinn::IdleTimeout::try_from(t.idle_timeout) {
        tc.max_idle_timeout(Some(idle));
    }
    tc
}

/// Binds the router's UDP socket at `addr` with the buffer sizes of `t`.
/// Returns the socket and the receive and send buffer sizes the OS gave
/// (Linux reports twice what it grants, for its bookkeeping).
///
/// # Errors
/// The OS error when the address cannot be bound.
pub fn bind_udp(
    addr: std::net::SocketAddr,
    t: &Transport,
) -> std::io::Result<(std::net::UdpSocket, BufferSizes)> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sizes = size_buffers(&socket, t.udp_receive_buffer, t.udp_send_buffer);
    Ok((socket, sizes))
}

/// A UDP socket's buffer sizes: asked for, and granted by the OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferSizes {
    /// The receive buffer asked for, if any.
    pub receive_asked: Option<usize>,
    /// The receive buffer the OS reports.
    pub receive: Option<usize>,
    /// The send buffer asked for, if any.
    pub send_asked: Option<usize>,
    /// The send buffer the OS reports.
    pub send: Option<usize>,
}

impl BufferSizes {
    /// Whether the OS granted less than was asked for. Linux caps a
    /// request at `net.core.rmem_max` / `wmem_max` and reports twice what
    /// it grants (the other half is for its bookkeeping).
    pub fn capped(&self) -> bool {
        let reported = |asked: usize| {
            if cfg!(target_os = "linux") {
                asked.saturating_mul(2)
            } else {
                asked
            }
        };
        let short = |asked: Option<usize>, got: Option<usize>| match (asked, got) {
            (Some(a), Some(g)) => g < reported(a),
            _ => false,
        };
        short(self.receive_asked, self.receive) || short(self.send_asked, self.send)
    }
}

/// Asks for the given buffer sizes on `socket` (a failure leaves the OS
/// default) and reads back what the OS granted.
pub fn size_buffers(
    socket: &std::net::UdpSocket,
    receive: Option<usize>,
    send: Option<usize>,
) -> BufferSizes {
    use quinn::udp::{UdpSockRef, UdpSocketState};
    let Ok(state) = UdpSocketState::new(UdpSockRef::from(socket)) else {
        return BufferSizes::default();
    };
    if let Some(bytes) = receive {
        let _ = state.set_recv_buffer_size(UdpSockRef::from(socket), bytes);
    }
    if let Some(bytes) = send {
        let _ = state.set_send_buffer_size(UdpSockRef::from(socket), bytes);
    }
    BufferSizes {
        receive_asked: receive,
        receive: state.recv_buffer_size(UdpSockRef::from(socket)).ok(),
        send_asked: send,
        send: state.send_buffer_size(UdpSockRef::from(socket)).ok(),
    }
}

/// Why a peer's certificate gives no identity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    /// The connection has no peer certificate (cannot happen with our verifier).
    #[error("no client certificate")]
    NoCertificate,
    /// The leaf does not parse.
    #[error("the certificate does not parse: {0}")]
    Unparsable(String),
    /// The subject holds no CN, or several.
    #[error("the certificate subject holds {0} common names, not exactly one")]
    CnCount(usize),
    /// The CN breaks the server id rule.
    #[error("the common name {cn:?} is not a valid server id: {reason}")]
    BadCn {
        /// The CN, as found.
        cn: String,
        /// Why it is refused.
        reason: String,
    },
}

/// A verified peer: its server id and its leaf's serial (for revocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The CN of the leaf certificate.
    pub server_id: String,
    /// The leaf's serial number, big-endian bytes.
    pub serial: Vec<u8>,
}

/// Reads the identity from a connection's peer certificates.
///
/// # Errors
/// [`IdentityError`] when the leaf does not hold exactly one valid CN.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, IdentityError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoCertificate)?;
    identity_of(leaf)
}

/// Reads the identity from a leaf certificate.
///
/// # Errors
/// As [`peer_identity`].
pub fn identity_of(leaf: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let cns: Vec<_> = cert.subject().iter_common_name().collect();
    if cns.len() != 1 {
        return Err(IdentityError::CnCount(cns.len()));
    }
    let cn = cns[0].as_str().map_err(|e| IdentityError::BadCn {
        cn: String::from_utf8_lossy(cns[0].as_slice()).into_owned(),
        reason: e.to_string(),
    })?;
    validate_server_id(cn).map_err(|e| IdentityError::BadCn {
        cn: cn.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(PeerIdentity {
        server_id: cn.to_owned(),
        serial: cert.raw_serial().to_vec(),
    })
}

/// Whether a serial is on any of the CRLs.
pub fn is_revoked(crls: &[webpki::CertRevocationList<'static>], serial: &[u8]) -> bool {
    crls.iter()
        .any(|crl| matches!(crl.find_serial(serial), Ok(Some(_))))
}

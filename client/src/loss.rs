//! Why a connection ended or could not start, read from QUIC's error: the
//! router's close codes (PROTOCOL.md §4) and TLS alerts, the refused
//! certificate above all.

use icom_protocol::CloseCode;
use quinn::ConnectionError;

use crate::error::{ConnectError, IN_USE};

/// Why a connection ended, or could not start, as far as the client cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loss {
    /// `REPLACED`: another instance with this identity took over.
    Replaced,
    /// `IN_USE`: the identity is connected, and this client does not
    /// replace it (`replace = false`).
    InUse,
    /// The router refused the client certificate (a TLS alert).
    CertificateRefused(String),
    /// `BAD_IDENTITY` or `REVOKED`.
    Refused(String),
    /// This client does not trust the router's certificate.
    RouterNotTrusted(String),
    /// Another TLS alert from the router (its name).
    Handshake(String),
    /// The client closed it.
    LocallyClosed,
    /// Anything else: the router went away, the network, a timeout.
    Other(String),
}

impl Loss {
    /// Reads a QUIC connection error.
    pub(crate) fn of(e: &ConnectionError) -> Loss {
        match e {
            ConnectionError::ApplicationClosed(close) => {
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                match CloseCode::from_code(close.error_code.into_inner()) {
                    Some(CloseCode::Replaced) => Loss::Replaced,
                    Some(CloseCode::InUse) => Loss::InUse,
                    Some(c @ (CloseCode::BadIdentity | CloseCode::Revoked)) => {
                        Loss::Refused(with_reason(c.as_str(), &reason))
                    }
                    Some(CloseCode::Shutdown) => Loss::Other("the router shut down".into()),
                    Some(c) => Loss::Other(with_reason(
                        &format!("the router closed the connection ({c})"),
                        &reason,
                    )),
                    None => Loss::Other(format!("closed by the router: {close}")),
                }
            }
            ConnectionError::ConnectionClosed(close) => match alert(u64::from(close.error_code)) {
                Some(a) if CLIENT_CERT_ALERTS.contains(&a) => {
                    Loss::CertificateRefused(alert_name(a))
                }
                Some(a) => Loss::Handshake(alert_name(a)),
                None => Loss::Other(format!("the router aborted the connection: {close}")),
            },
            ConnectionError::TransportError(t) => match alert(u64::from(t.code)) {
                Some(_) => Loss::RouterNotTrusted(t.reason.clone()),
                None => Loss::Other(t.to_string()),
            },
            ConnectionError::LocallyClosed => Loss::LocallyClosed,
            ConnectionError::TimedOut => Loss::Other("the connection timed out".into()),
            other => Loss::Other(other.to_string()),
        }
    }

    /// Whether the router refused this client.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Loss::CertificateRefused(_) | Loss::Refused(_) | Loss::InUse
        )
    }

    pub(crate) fn into_connect_error(self) -> ConnectError {
        match self {
            Loss::Replaced => ConnectError::Replaced,
            Loss::InUse => ConnectError::InUse,
            Loss::CertificateRefused(alert) => ConnectError::CertificateRefused { alert },
            Loss::Refused(r) => ConnectError::Refused(r),
            Loss::RouterNotTrusted(r) => ConnectError::RouterNotTrusted(r),
            Loss::Handshake(a) => ConnectError::Handshake(format!("the router sent {a}")),
            Loss::LocallyClosed => ConnectError::Connection("closed by this client".into()),
            Loss::Other(r) => ConnectError::Connection(r),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::Replaced => f.write_str("replaced by a newer connection of the same identity"),
            Loss::InUse => f.write_str(IN_USE),
            Loss::CertificateRefused(a) => {
                write!(f, "the router refused this client's certificate ({a})")
            }
            Loss::Refused(r) => write!(f, "the router refused this client: {r}"),
            Loss::RouterNotTrusted(r) => write!(f, "the router's certificate is not trusted: {r}"),
            Loss::Handshake(a) => write!(f, "the TLS handshake failed: the router sent {a}"),
            Loss::LocallyClosed => f.write_str("closed by this client"),
            Loss::Other(r) => f.write_str(r),
        }
    }
}

fn with_reason(what: &str, reason: &str) -> String {
    if reason.is_empty() || reason == what {
        what.to_owned()
    } else {
        format!("{what}: {reason}")
    }
}

/// TLS alerts a server sends about the client's certificate.
const CLIENT_CERT_ALERTS: [u8; 9] = [42, 43, 44, 45, 46, 48, 49, 116, 115];

/// The TLS alert in a QUIC crypto error code (0x100–0x1ff).
fn alert(code: u64) -> Option<u8> {
    (0x100..0x200)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

fn alert_name(a: u8) -> String {
    let name = match a {
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        48 => "unknown_ca",
        49 => "access_denied",
        51 => "decrypt_error",
        80 => "internal_error",
        109 => "missing_extension",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => return format!("TLS alert {a}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use quinn::{ApplicationClose, ConnectionClose, TransportErrorCode, VarInt};

    use super::*;

    fn app_close(code: u32, reason: &'static str) -> ConnectionError {
        ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u32(code),
            reason: Bytes::from_static(reason.as_bytes()),
        })
    }

    #[test]
    fn close_codes_are_read() {
        assert_eq!(Loss::of(&app_close(1, "REPLACED")), Loss::Replaced);
        let revoked = Loss::of(&app_close(5, "REVOKED"));
        assert!(revoked.is_refusal());
        assert_eq!(revoked, Loss::Refused("REVOKED".into()));
        assert!(Loss::of(&app_close(2, "BAD_IDENTITY")).is_refusal());
        assert!(!Loss::of(&app_close(4, "SHUTDOWN")).is_refusal());
        let in_use = Loss::of(&app_close(7, "IN_USE"));
        assert_eq!(in_use, Loss::InUse);
        assert!(in_use.is_refusal());
        assert!(matches!(in_use.into_connect_error(), ConnectError::InUse));
    }

    #[test]
    fn tls_alerts_from_the_router_are_certificate_refusals() {
        let closed = |alert: u8| {
            ConnectionError::ConnectionClosed(ConnectionClose {
                error_code: TransportErrorCode::crypto(alert),
                frame_type: None,
                reason: Bytes::new(),
            })
        };
        let e = Loss::of(&closed(48)).into_connect_error();
        assert!(
            matches!(e, ConnectError::CertificateRefused { .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the router refused this client's certificate (unknown_ca)"
        );
        assert!(Loss::of(&closed(116)).is_refusal());
        assert!(matches!(Loss::of(&closed(120)), Loss::Handshake(_)));
    }
}

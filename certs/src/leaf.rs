//! Leaf certificates: what a router and a client certificate hold, and the
//! validity window every minted certificate gets.

use std::fmt;
use std::net::IpAddr;

use icom_protocol::validate_server_id;
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use rustls_pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::{Ca, CertError, Serial};

/// The CN of a router certificate minted without any DNS name.
pub const DEFAULT_ROUTER_CN: &str = "icom-router";

/// How far back the validity of a minted certificate starts, so that a peer
/// whose clock is a little behind still accepts it.
const BACKDATE: Duration = Duration::hours(1);

/// A freshly minted leaf certificate and its private key.
///
/// `Debug` leaves the private key out.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, PEM (one `CERTIFICATE` block, the leaf only).
    pub cert_pem: String,
    /// The private key, PEM (`PRIVATE KEY`, PKCS#8, ECDSA P-256).
    pub key_pem: String,
    /// The serial number (random, 16 bytes; see [`Serial`]).
    pub serial: Serial,
    /// Start of validity (UTC, whole seconds, as written in the certificate).
    pub not_before: OffsetDateTime,
    /// End of validity (UTC, whole seconds, as written in the certificate).
    pub not_after: OffsetDateTime,
    /// The subject's first Common Name; empty if the subject has none.
    pub common_name: String,
    pub(crate) cert_der: CertificateDer<'static>,
    /// PKCS#8 DER of the private key.
    pub(crate) key_der: Vec<u8>,
}

/// What goes into a leaf certificate. Crate-internal: the public methods fill
/// it with what the protocol allows, [`crate::testing`] with what it does not.
pub(crate) struct LeafSpec {
    /// Subject Common Names, in order; the second and later ones are written
    /// as separate attributes of the same type (only the test PKI does this).
    pub(crate) common_names: Vec<String>,
    pub(crate) sans: Vec<SanType>,
    pub(crate) ekus: Vec<ExtendedKeyUsagePurpose>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

impl Ca {
    /// Mints a router certificate: EKU serverAuth only, SANs `dns` and `ips`,
    /// CN the first DNS name (or [`DEFAULT_ROUTER_CN`] if there is none).
    ///
    /// # Errors
    /// [`CertError::NoSubjectAltName`] if both lists are empty,
    /// [`CertError::DnsName`] for a malformed DNS name, and the validity and
    /// signing errors of [`Ca::new`].
    pub fn issue_router(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
    ) -> Result<Issued, CertError> {
        self.issue_server(dns, ips, days, vec![ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// As [`Ca::issue_router`], with EKU clientAuth as well as serverAuth:
    /// for a NATS node, which presents the same certificate when it dials
    /// the other nodes' routes (NATS always verifies a route's certificate
    /// as a client certificate).
    ///
    /// # Errors
    /// As [`Ca::issue_router`].
    pub fn issue_node(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
    ) -> Result<Issued, CertError> {
        self.issue_server(
            dns,
            ips,
            days,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A certificate with SANs `dns` and `ips` and the EKUs `ekus`.
    fn issue_server(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Issued, CertError> {
        if dns.is_empty() && ips.is_empty() {
            return Err(CertError::NoSubjectAltName);
        }
        let mut sans = Vec::with_capacity(dns.len() + ips.len());
        for name in dns {
            if DnsName::try_from(name.as_str()).is_err() || name.parse::<IpAddr>().is_ok() {
                return Err(CertError::DnsName { name: name.clone() });
            }
            sans.push(SanType::DnsName(name.as_str().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cn = dns.first().map_or(DEFAULT_ROUTER_CN, String::as_str);
        let (not_before, not_after) = validity(days)?;
        self.issue(LeafSpec {
            common_names: vec![cn.to_owned()],
            sans,
            ekus,
            not_before,
            not_after,
        })
    }

    /// Mints a client certificate for `server_id`: CN = `server_id`, EKU
    /// clientAuth, no SAN.
    ///
    /// # Errors
    /// [`CertError::ServerId`] if `server_id` breaks the CN rule of
    /// docs/PROTOCOL.md §1, and the validity and signing errors of [`Ca::new`].
    pub fn issue_client(&self, server_id: &str, days: u32) -> Result<Issued, CertError> {
        validate_server_id(server_id).map_err(|cause| CertError::ServerId {
            id: server_id.to_owned(),
            cause,
        })?;
        let (not_before, not_after) = validity(days)?;
        self.issue(LeafSpec {
            common_names: vec![server_id.to_owned()],
            sans: Vec::new(),
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            not_before,
            not_after,
        })
    }
}

impl Issued {
    /// The certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The private key, DER (PKCS#8).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("common_name", &self.common_name)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"[elided]")
            .finish()
    }
}

/// The validity window for `days` days from now: starting [`BACKDATE`] ago,
/// in whole seconds as X.509 stores it.
pub(crate) fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    if days == 0 {
        return Err(CertError::ZeroDays);
    }
    let now = now_seconds();
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .filter(|t| t.year() <= 9999)
        .ok_or(CertError::TooManyDays { days })?;
    Ok((now - BACKDATE, not_after))
}

/// The current UTC time, truncated to whole seconds.
pub(crate) fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}
#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::load::parse;

    #[test]
    fn client_has_cn_and_client_auth_only() {
        let ca = Ca::new("CA", 30).unwrap();
        let leaf = ca.issue_client("eu-1.main_2", 825).unwrap();
        let info = parse(&leaf.cert_der).unwrap();
        assert_eq!(info.common_names, vec!["eu-1.main_2"]);
        assert_eq!(info.ekus, Some(vec!["clientAuth".to_owned()]));
        assert!(info.sans.is_empty());
        assert_eq!(info.serial, leaf.serial);
        assert_eq!(info.not_after, leaf.not_after);
        assert_eq!(leaf.common_name, "eu-1.main_2");
        assert!(!info.is_ca);
    }

    #[test]
    fn client_with_bad_id_is_refused() {
        let ca = Ca::new("CA", 30).unwrap();
        let long = "a".repeat(65);
        for bad in ["bad id!", "-x", "", long.as_str(), "a/b"] {
            let err = ca.issue_client(bad, 1).unwrap_err();
            assert!(matches!(err, CertError::ServerId { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn router_has_sans_and_server_auth_only() {
        let ca = Ca::new("CA", 30).unwrap();
        let leaf = ca
            .issue_router(
                &["router.example.org".into(), "localhost".into()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                825,
            )
            .unwrap();
        let info = parse(&leaf.cert_der).unwrap();
        assert_eq!(info.common_names, vec!["router.example.org"]);
        assert_eq!(info.ekus, Some(vec!["serverAuth".to_owned()]));
        assert_eq!(
            info.sans,
            vec!["DNS:router.example.org", "DNS:localhost", "IP:127.0.0.1"]
        );
        let ip_only = ca
            .issue_router(&[], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 1)
            .unwrap();
        assert_eq!(ip_only.common_name, DEFAULT_ROUTER_CN);
    }

    #[test]
    fn a_node_certificate_is_for_server_and_client() {
        let ca = Ca::new("CA", 30).unwrap();
        let leaf = ca.issue_node(&["nats-1".into()], &[], 825).unwrap();
        let info = parse(&leaf.cert_der).unwrap();
        assert_eq!(info.common_names, vec!["nats-1"]);
        assert_eq!(
            info.ekus,
            Some(vec!["serverAuth".to_owned(), "clientAuth".to_owned()])
        );
        assert_eq!(info.sans, vec!["DNS:nats-1"]);
        assert!(matches!(
            ca.issue_node(&[], &[], 1),
            Err(CertError::NoSubjectAltName)
        ));
    }

    #[test]
    fn router_needs_a_valid_name() {
        let ca = Ca::new("CA", 30).unwrap();
        assert!(matches!(
            ca.issue_router(&[], &[], 1),
            Err(CertError::NoSubjectAltName)
        ));
        for bad in ["bad name", "127.0.0.1", ""] {
            assert!(matches!(
                ca.issue_router(&[bad.to_owned()], &[], 1),
                Err(CertError::DnsName { .. })
            ));
        }
    }

    #[test]
    fn validity_bounds() {
        assert!(matches!(validity(0), Err(CertError::ZeroDays)));
        assert!(matches!(
            validity(u32::MAX),
            Err(CertError::TooManyDays { .. })
        ));
        let (nb, na) = validity(10).unwrap();
        assert!(nb < OffsetDateTime::now_utc());
        assert_eq!(na - nb, Duration::days(10) + BACKDATE);
    }

    #[test]
    fn serials_are_unique() {
        let ca = Ca::new("CA", 30).unwrap();
        let a = ca.issue_client("a", 1).unwrap();
        let b = ca.issue_client("a", 1).unwrap();
        assert_ne!(a.serial, b.serial);
        assert_eq!(parse(&b.cert_der).unwrap().serial, b.serial);
    }

    #[test]
    fn debug_hides_the_key() {
        let ca = Ca::new("CA", 30).unwrap();
        let leaf = ca.issue_client("a", 1).unwrap();
        let dbg = format!("{ca:?} {leaf:?}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");
        assert!(dbg.contains("elided"));
    }
}

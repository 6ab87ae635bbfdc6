//! The certificate authority: a self-signed CA that signs leaves and CRLs.
//! In memory only; [`crate::CertDir`] stores it.

use std::fmt;

use icom_protocol::NameError;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::leaf::{validity, LeafSpec};
use crate::{Issued, Serial};

/// Why a certificate, CA or CRL could not be minted or loaded.
#[derive(Debug, Error)]
pub enum CertError {
    /// A validity of zero days was asked for.
    #[error("a certificate must be valid for at least 1 day")]
    ZeroDays,
    /// The validity would end past the year 9999, which X.509 cannot express.
    #[error("a validity of {days} days ends past the year 9999: choose fewer days")]
    TooManyDays {
        /// The requested validity.
        days: u32,
    },
    /// A client certificate's server id breaks the CN rule.
    #[error("invalid server id {id:?}: {cause}")]
    ServerId {
        /// The refused id.
        id: String,
        /// The rule it breaks.
        cause: NameError,
    },
    /// A router certificate was asked for without any name to put in it.
    #[error("a router certificate needs at least one DNS name or IP address")]
    NoSubjectAltName,
    /// A router DNS name is not a valid DNS name.
    #[error("{name:?} is not a valid DNS name (IP addresses go in the IP list)")]
    DnsName {
        /// The refused name.
        name: String,
    },
    /// The CA certificate could not be parsed.
    #[error("the CA certificate is not a valid X.509 certificate: {0}")]
    CaParse(String),
    /// The CA certificate is not marked as a CA.
    #[error("the CA certificate is not a CA (basicConstraints CA is not set)")]
    NotCa,
    /// The CA key is not the key of the CA certificate.
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    /// rcgen refused to generate, parse or sign.
    #[error("certificate generation failed: {0}")]
    Rcgen(rcgen::Error),
}

/// A certificate authority that can sign router and client certificates and
/// CRLs. Self-signed, ECDSA P-256, `basicConstraints CA:TRUE, pathlen:0`, key
/// usages keyCertSign and cRLSign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    common_name: String,
    not_after: OffsetDateTime,
}

impl Ca {
    /// Mints a new self-signed CA named `common_name`, valid for `days` days.
    ///
    /// # Errors
    /// [`CertError::ZeroDays`], [`CertError::TooManyDays`], or
    /// [`CertError::Rcgen`] if key generation or signing fails.
    pub fn new(common_name: &str, days: u32) -> Result<Self, CertError> {
        let (not_before, not_after) = validity(days)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from_slice(Serial::random().as_bytes()));
        params.not_before = not_before;
        params.not_after = not_after;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            key_pem,
            common_name: common_name.to_owned(),
            not_after,
        })
    }

    /// Loads a CA back from its certificate and private key, both PEM.
    ///
    /// # Errors
    /// [`CertError::Rcgen`] if either does not parse, [`CertError::CaParse`]
    /// or [`CertError::NotCa`] if the certificate is not a CA certificate, and
    /// [`CertError::KeyMismatch`] if the key is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let pem = rcgen_pem_der(cert_pem)?;
        let cert_der = CertificateDer::from(pem);
        let (_, x509) =
            X509Certificate::from_der(&cert_der).map_err(|e| CertError::CaParse(e.to_string()))?;
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| CertError::CaParse(e.to_string()))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CertError::NotCa);
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::KeyMismatch);
        }
        let common_name = crate::load::common_names_of(&x509)
            .ok()
            .and_then(|cns| cns.into_iter().next())
            .unwrap_or_default();
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            common_name,
            not_after,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, DER: the trust anchor for routers and clients.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The CA's subject Common Name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A CRL signed by this CA revoking `revoked` (all revoked at
    /// `this_update`), PEM. Its CRL number is `this_update` in Unix
    /// milliseconds, so later CRLs carry larger numbers.
    ///
    /// # Errors
    /// [`CertError::Rcgen`] if `next_update` is not after `this_update`, or
    /// signing fails.
    pub fn crl(
        &self,
        revoked: &[Serial],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, CertError> {
        let entries: Vec<(Serial, OffsetDateTime)> =
            revoked.iter().map(|s| (s.clone(), this_update)).collect();
        let millis = this_update.unix_timestamp_nanos() / 1_000_000;
        let number = u64::try_from(millis).unwrap_or(0);
        self.crl_numbered(&entries, this_update, next_update, number)
    }

    /// A CRL with explicit revocation times and CRL number, PEM.
    pub(crate) fn crl_numbered(
        &self,
        revoked: &[(Serial, OffsetDateTime)],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        number: u64,
    ) -> Result<String, CertError> {
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial.as_bytes()),
                    revocation_time: *at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Mints a leaf exactly as `spec` says, with no rule checked.
    pub(crate) fn issue(&self, spec: LeafSpec) -> Result<Issued, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let serial = Serial::random();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for (i, cn) in spec.common_names.iter().enumerate() {
            // rcgen keeps one value per attribute type; a second CN goes in
            // under the CN OID spelled as a custom type.
            let ty = if i == 0 {
                DnType::CommonName
            } else {
                DnType::CustomDnType(vec![2, 5, 4, 3])
            };
            params.distinguished_name.push(ty, cn.as_str());
        }
        params.subject_alt_names = spec.sans;
        params.extended_key_usages = spec.ekus;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
            not_before: spec.not_before,
            not_after: spec.not_after,
            common_name: spec.common_names.into_iter().next().unwrap_or_default(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        Self::Rcgen(e)
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("common_name", &self.common_name)
            .field("not_after", &self.not_after)
            .field("key", &"[elided]")
            .finish()
    }
}
/// The DER body of the first PEM block of `pem`, through rcgen's error type.
fn rcgen_pem_der(pem: &str) -> Result<Vec<u8>, CertError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| CertError::CaParse(e.to_string()))
}
#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    #[test]
    fn ca_is_a_ca_with_cert_and_crl_signing() {
        let ca = Ca::new("Test CA", 30).unwrap();
        let (_, x509) = X509Certificate::from_der(&ca.cert_der).unwrap();
        assert!(x509.basic_constraints().unwrap().unwrap().value.ca);
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(x509.subject(), x509.issuer());
        x509.verify_signature(None).unwrap();
        assert!(ca.not_after() > OffsetDateTime::now_utc() + Duration::days(29));
    }

    #[test]
    fn ca_round_trips_through_pem_and_keeps_signing() {
        let ca = Ca::new("Round Trip CA", 30).unwrap();
        let back = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(back.common_name(), "Round Trip CA");
        let leaf = back.issue_client("dev-01", 1).unwrap();
        let (_, ca_x509) = X509Certificate::from_der(&ca.cert_der).unwrap();
        let (_, x509) = X509Certificate::from_der(&leaf.cert_der).unwrap();
        x509.verify_signature(Some(ca_x509.public_key())).unwrap();
        assert_eq!(x509.issuer(), ca_x509.subject());
    }

    #[test]
    fn ca_from_pem_refuses_a_foreign_key_and_a_leaf() {
        let ca = Ca::new("A", 30).unwrap();
        let other = Ca::new("B", 30).unwrap();
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), other.key_pem()),
            Err(CertError::KeyMismatch)
        ));
        let leaf = ca.issue_client("x", 1).unwrap();
        assert!(matches!(
            Ca::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(CertError::NotCa)
        ));
    }
}

//! What `icom-certs inspect` reports about a certificate file: its names, uses,
//! validity and fingerprint, whether it chains to a CA, whether it is revoked.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::index::Index;
use crate::load::{load_certs, parse};
use crate::{DirError, Serial};

/// A certificate file, read and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file inspected.
    pub file: PathBuf,
    /// How many certificates the file holds; the first one is described.
    pub certs_in_file: usize,
    /// The subject distinguished name.
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// Every subject Common Name (a client's server id: exactly one is valid).
    pub common_names: Vec<String>,
    /// Subject alternative names: `DNS:name`, `IP:addr`, …
    pub sans: Vec<String>,
    /// Extended key usages by name (`serverAuth`, `clientAuth`, …); `None`
    /// when the certificate has no EKU extension (any use).
    pub ekus: Option<Vec<String>>,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whether it is valid now.
    pub validity: Validity,
    /// SHA-256 of the DER, uppercase hex pairs joined by `:`.
    pub fingerprint_sha256: String,
    /// Its serial number.
    pub serial: Serial,
    /// Whether the directory's CA signed it.
    pub chains_to_ca: Chains,
    /// Whether the directory's index marks it revoked; `None` if the index
    /// does not know it (or there is no index).
    pub revoked: Option<bool>,
}

/// A certificate's validity at the time of inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    /// Now is within its validity.
    Valid,
    /// Its validity ended.
    Expired,
    /// Its validity has not started.
    NotYetValid,
}

/// Whether a certificate was signed by a directory's CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Chains {
    /// Its issuer is the CA and the CA's key verifies its signature.
    Yes,
    /// It was not signed by the CA.
    No,
    /// There is no CA in the directory to check against.
    Unknown,
}

/// Reads `file` and describes its first certificate, checked against `ca`
/// (if any) and `index` (if any).
pub(crate) fn inspect_file(
    file: &Path,
    ca: Option<&CertificateDer<'_>>,
    index: Option<&Index>,
) -> Result<Inspection, DirError> {
    let certs = load_certs(file)?;
    // load_certs never returns an empty list: it errors instead.
    let Some(der) = certs.first() else {
        return Err(DirError::Load(crate::LoadError::Empty {
            path: file.to_owned(),
            what: "certificate",
            marker: "CERTIFICATE",
        }));
    };
    let info = parse(der).map_err(|cause| DirError::Parse {
        path: file.to_owned(),
        cause,
    })?;
    let now = OffsetDateTime::now_utc();
    let validity = if now < info.not_before {
        Validity::NotYetValid
    } else if now > info.not_after {
        Validity::Expired
    } else {
        Validity::Valid
    };
    let chains_to_ca = match ca {
        None => Chains::Unknown,
        Some(ca) if signed_by(der, ca) => Chains::Yes,
        Some(_) => Chains::No,
    };
    let revoked = index
        .and_then(|index| index.by_serial(&info.serial))
        .map(|entry| entry.revoked);
    Ok(Inspection {
        file: file.to_owned(),
        certs_in_file: certs.len(),
        subject: info.subject,
        issuer: info.issuer,
        common_names: info.common_names,
        sans: info.sans,
        ekus: info.ekus,
        is_ca: info.is_ca,
        not_before: info.not_before,
        not_after: info.not_after,
        validity,
        fingerprint_sha256: fingerprint(der),
        serial: info.serial,
        chains_to_ca,
        revoked,
    })
}

/// Whether `cert` names `ca` as its issuer and `ca`'s key verifies its
/// signature.
pub(crate) fn signed_by(cert: &[u8], ca: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(ca),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// SHA-256 of `der` as `AB:CD:…`.
fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPki;

    #[test]
    fn signature_check_tells_our_ca_from_a_namesake() {
        let pki = TestPki::new();
        let ours = pki.client("dev-01");
        let theirs = pki.other_ca("dev-01");
        let ca = pki.ca().cert_der();
        assert!(signed_by(&ours.cert_der(), &ca));
        // Same issuer name, different key: only the signature tells.
        assert!(!signed_by(&theirs.cert_der(), &ca));
        assert!(signed_by(&ca, &ca), "a self-signed CA chains to itself");
        assert!(!signed_by(b"junk", &ca));
    }

    #[test]
    fn inspects_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let expired = pki.expired("old");
        let path = dir.path().join("old.pem");
        std::fs::write(&path, &expired.cert_pem).unwrap();
        let ca = pki.ca().cert_der();
        let report = inspect_file(&path, Some(&ca), None).unwrap();
        assert_eq!(report.common_names, vec!["old"]);
        assert_eq!(report.validity, Validity::Expired);
        assert_eq!(report.chains_to_ca, Chains::Yes);
        assert_eq!(report.revoked, None);
        assert_eq!(report.serial, expired.serial);
        assert_eq!(report.fingerprint_sha256.len(), 32 * 3 - 1);
        let report = inspect_file(&path, None, None).unwrap();
        assert_eq!(report.chains_to_ca, Chains::Unknown);
    }
}

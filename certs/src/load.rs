//! Reading certificates, keys and CRLs from PEM files, and reading the fields
//! ICOM cares about out of a certificate.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use thiserror::Error;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Serial;

/// Why a PEM file could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("could not read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM: {cause}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        cause: pem::Error,
    },
    /// The file holds no block of the wanted kind.
    #[error("{} holds no {what} (expected a PEM `-----BEGIN {marker}-----` block)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was looked for, in words.
        what: &'static str,
        /// The PEM marker looked for.
        marker: &'static str,
    },
}

/// Why a certificate's fields could not be read.
#[derive(Debug, Error)]
pub enum ParseError {
    /// The DER is not an X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Der(String),
    /// A subject Common Name is not a readable string.
    #[error("a subject common name is not a readable string")]
    CommonName,
    /// An extension ICOM reads (SAN, EKU, basic constraints) is malformed.
    #[error("malformed certificate extension: {0}")]
    Extension(String),
}

/// What ICOM reads out of a certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    pub(crate) common_names: Vec<String>,
    /// `DNS:name`, `IP:addr`, or `other` for any other kind.
    pub(crate) sans: Vec<String>,
    /// EKU purposes by name (`serverAuth`, `clientAuth`, …, or the OID);
    /// `None` when the certificate has no EKU extension.
    pub(crate) ekus: Option<Vec<String>>,
    pub(crate) is_ca: bool,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) serial: Serial,
}

/// Every certificate in a PEM file, in order (a chain, leaf first).
///
/// # Errors
/// [`LoadError`] naming `path` if it cannot be read, is not PEM, or holds no
/// `CERTIFICATE` block.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    load_all(path, "certificate", "CERTIFICATE")
}

/// The first private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
///
/// # Errors
/// [`LoadError`] naming `path` if it cannot be read, is not PEM, or holds no
/// private key block.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, LoadError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => LoadError::Empty {
            path: path.to_owned(),
            what: "private key",
            marker: "PRIVATE KEY",
        },
        cause => LoadError::Pem {
            path: path.to_owned(),
            cause,
        },
    })
}

/// Every CRL in a PEM file.
///
/// # Errors
/// [`LoadError`] naming `path` if it cannot be read, is not PEM, or holds no
/// `X509 CRL` block.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, LoadError> {
    load_all(path, "CRL", "X509 CRL")
}

/// Every subject Common Name of a certificate, in order. The router requires
/// exactly one (docs/PROTOCOL.md §1); this returns them all so that it can tell
/// none from several.
///
/// # Errors
/// [`ParseError::Der`] if `cert` is not a certificate, and
/// [`ParseError::CommonName`] if a CN is not a readable string.
pub fn common_name(cert: &CertificateDer<'_>) -> Result<Vec<String>, ParseError> {
    let (_, x509) = X509Certificate::from_der(cert).map_err(|e| ParseError::Der(e.to_string()))?;
    common_names_of(&x509)
}

/// The subject CNs of a parsed certificate.
pub(crate) fn common_names_of(x509: &X509Certificate<'_>) -> Result<Vec<String>, ParseError> {
    x509.subject()
        .iter_common_name()
        .map(|cn| {
            cn.as_str()
                .map(str::to_owned)
                .map_err(|_| ParseError::CommonName)
        })
        .collect()
}

/// Reads the fields ICOM shows and checks out of a DER certificate.
pub(crate) fn parse(der: &[u8]) -> Result<CertInfo, ParseError> {
    let (_, x509) = X509Certificate::from_der(der).map_err(|e| ParseError::Der(e.to_string()))?;
    let ext_err = |e: x509_parser::error::X509Error| ParseError::Extension(e.to_string());
    let sans = match x509.subject_alternative_name().map_err(ext_err)? {
        None => Vec::new(),
        Some(san) => san.value.general_names.iter().map(san_text).collect(),
    };
    let ekus = x509.extended_key_usage().map_err(ext_err)?.map(|eku| {
        let eku = eku.value;
        let named = [
            (eku.any, "any"),
            (eku.server_auth, "serverAuth"),
            (eku.client_auth, "clientAuth"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ];
        named
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| (*name).to_owned())
            .chain(eku.other.iter().map(|oid| oid.to_id_string()))
            .collect()
    });
    let is_ca = x509
        .basic_constraints()
        .map_err(ext_err)?
        .is_some_and(|bc| bc.value.ca);
    Ok(CertInfo {
        subject: x509.subject().to_string(),
        issuer: x509.issuer().to_string(),
        common_names: common_names_of(&x509)?,
        sans,
        ekus,
        is_ca,
        not_before: x509.validity().not_before.to_datetime(),
        not_after: x509.validity().not_after.to_datetime(),
        serial: Serial::from_bytes(x509.raw_serial()),
    })
}

/// One SAN as text.
fn san_text(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => format!("DNS:{dns}"),
        GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
            Ok(v4) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                Err(_) => "IP:(malformed)".to_owned(),
            },
        },
        GeneralName::URI(uri) => format!("URI:{uri}"),
        GeneralName::RFC822Name(mail) => format!("email:{mail}"),
        other => format!("other:{other:?}"),
    }
}

/// Every block of one kind in a PEM file.
fn load_all<T: PemObject>(
    path: &Path,
    what: &'static str,
    marker: &'static str,
) -> Result<Vec<T>, LoadError> {
    let bytes = read(path)?;
    let items = T::pem_slice_iter(&bytes)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|cause| LoadError::Pem {
            path: path.to_owned(),
            cause,
        })?;
    if items.is_empty() {
        return Err(LoadError::Empty {
            path: path.to_owned(),
            what,
            marker,
        });
    }
    Ok(items)
}

/// The whole file.
fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|cause| LoadError::Read {
        path: path.to_owned(),
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ca;

    #[test]
    fn loads_what_was_minted() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("CA", 30).unwrap();
        let leaf = ca.issue_client("dev-01", 1).unwrap();
        let crl = ca
            .crl(
                std::slice::from_ref(&leaf.serial),
                OffsetDateTime::now_utc(),
                OffsetDateTime::now_utc() + time::Duration::days(1),
            )
            .expect("signing a CRL");
        let chain = dir.path().join("chain.pem");
        std::fs::write(&chain, format!("{}{}", leaf.cert_pem, ca.cert_pem())).unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(&key, &leaf.key_pem).unwrap();
        let crl_path = dir.path().join("crl.pem");
        std::fs::write(&crl_path, crl).unwrap();

        let certs = load_certs(&chain).unwrap();
        assert_eq!(certs, vec![leaf.cert_der(), ca.cert_der()]);
        assert_eq!(
            load_key(&key).unwrap().secret_der(),
            leaf.key_der().secret_der()
        );
        assert_eq!(load_crls(&crl_path).unwrap().len(), 1);
        assert_eq!(common_name(&certs[0]).unwrap(), vec!["dev-01"]);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_certs(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");

        let key_only = dir.path().join("key-only.pem");
        let ca = Ca::new("CA", 1).unwrap();
        std::fs::write(&key_only, ca.key_pem()).unwrap();
        let err = load_certs(&key_only).unwrap_err().to_string();
        assert!(
            err.contains("key-only.pem") && err.contains("BEGIN CERTIFICATE"),
            "{err}"
        );
        let err = load_crls(&key_only).unwrap_err().to_string();
        assert!(err.contains("X509 CRL"), "{err}");

        let cert_only = dir.path().join("cert-only.pem");
        std::fs::write(&cert_only, ca.cert_pem()).unwrap();
        let err = load_key(&cert_only).unwrap_err().to_string();
        assert!(
            err.contains("cert-only.pem") && err.contains("private key"),
            "{err}"
        );
    }

    #[test]
    fn common_name_refuses_garbage() {
        assert!(matches!(
            common_name(&CertificateDer::from(vec![1, 2, 3])),
            Err(ParseError::Der(_))
        ));
    }
}

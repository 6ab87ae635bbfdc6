//! Verification exactly as a router and a client do it: rustls-webpki with the
//! CA as the only trust anchor, the CRL when there is one.

#![allow(dead_code, unreachable_pub)]

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{
    anchor_from_trusted_cert, CertRevocationList, EndEntityCert, KeyUsage, OwnedCertRevocationList,
    RevocationOptionsBuilder, ALL_VERIFICATION_ALGS,
};

/// Verifies `leaf` as a client certificate (EKU clientAuth if any EKU), as the
/// router does, against `ca` and, if given, the CRL `crl_der`.
pub fn verify_client(
    ca: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    crl_der: Option<&[u8]>,
) -> Result<(), webpki::Error> {
    verify(ca, leaf, crl_der, KeyUsage::client_auth())
}

/// Verifies `leaf` as the router's certificate for `name`, as a client does.
pub fn verify_router(
    ca: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    name: &str,
) -> Result<(), webpki::Error> {
    verify(ca, leaf, None, KeyUsage::server_auth())?;
    let name = ServerName::try_from(name).expect("a valid server name");
    EndEntityCert::try_from(leaf)?.verify_is_valid_for_subject_name(&name)
}

fn verify(
    ca: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    crl_der: Option<&[u8]>,
    usage: KeyUsage,
) -> Result<(), webpki::Error> {
    let anchors = [anchor_from_trusted_cert(ca)?];
    let ee = EndEntityCert::try_from(leaf)?;
    let crl: Option<CertRevocationList<'_>> = crl_der
        .map(OwnedCertRevocationList::from_der)
        .transpose()?
        .map(CertRevocationList::from);
    let crls: Vec<&CertRevocationList<'_>> = crl.iter().collect();
    let revocation = if crls.is_empty() {
        None
    } else {
        Some(
            RevocationOptionsBuilder::new(&crls)
                .expect("at least one CRL")
                .build(),
        )
    };
    ee.verify_for_usage(
        ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        usage,
        revocation,
        None,
    )
    .map(|_| ())
}

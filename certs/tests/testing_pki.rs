//! The test PKI, checked the way the router will check it: every good
//! certificate passes rustls-webpki and every bad one fails for its reason.

#![allow(clippy::unwrap_used)]

mod common;

use common::{verify_client, verify_router};
use icom_certs::testing::{BadClient, TestPki};
use icom_certs::{load_crls, CRL_FILE};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;

fn crl_der(pem: &str) -> Vec<u8> {
    CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn good_certificates_verify() {
    let pki = TestPki::new();
    let ca = pki.ca().cert_der();
    verify_client(&ca, &pki.client("eu-1").cert_der(), None).unwrap();
    // No EKU extension means any use (PROTOCOL.md §1).
    verify_client(&ca, &pki.no_eku("eu-1").cert_der(), None).unwrap();
    let router = pki.router();
    verify_router(&ca, &router.cert_der(), "localhost").unwrap();
    verify_router(&ca, &router.cert_der(), "127.0.0.1").unwrap();
    assert!(verify_router(&ca, &router.cert_der(), "example.org").is_err());
    // A router certificate is not a client certificate.
    assert!(verify_client(&ca, &router.cert_der(), None).is_err());
}

#[test]
fn a_nats_node_verifies_as_server_and_as_client() {
    let pki = TestPki::new();
    let ca = pki.ca().cert_der();
    let node = pki.nats_node().cert_der();
    verify_router(&ca, &node, "localhost").unwrap();
    verify_router(&ca, &node, "127.0.0.1").unwrap();
    assert!(verify_router(&ca, &node, "example.org").is_err());
    // Its cluster routes dial the other nodes with the same certificate.
    verify_client(&ca, &node, None).unwrap();
    // Not from another CA of the same name.
    let theirs = TestPki::new();
    assert!(verify_client(&theirs.ca().cert_der(), &node, None).is_err());
}

#[test]
fn every_bad_client_fails_for_its_reason() {
    let pki = TestPki::new();
    let ca = pki.ca().cert_der();
    for kind in BadClient::ALL {
        let err = verify_client(&ca, &pki.bad_client(kind, "eu-1").cert_der(), None)
            .expect_err(&format!("{kind:?} verified"));
        let expected = match kind {
            BadClient::Expired => matches!(err, webpki::Error::CertExpired { .. }),
            BadClient::NotYetValid => matches!(err, webpki::Error::CertNotValidYet { .. }),
            // Same issuer name as our CA: only the signature tells them apart.
            BadClient::OtherCa => matches!(err, webpki::Error::InvalidSignatureForPublicKey),
            BadClient::ServerAuthOnly => {
                matches!(err, webpki::Error::RequiredEkuNotFoundContext(_))
            }
        };
        assert!(expected, "{kind:?} failed with {err:?}");
    }
}

#[test]
fn identity_edge_cases_pass_the_handshake() {
    // These must be refused by the router after the handshake, not by TLS.
    let pki = TestPki::new();
    let ca = pki.ca().cert_der();
    for leaf in [
        pki.bad_cn("bad cn!"),
        pki.bad_cn(""),
        pki.two_cns("a", "b"),
        pki.no_cn(),
    ] {
        verify_client(&ca, &leaf.cert_der(), None).unwrap();
    }
}

#[test]
fn crl_revokes_exactly_what_it_lists() {
    let pki = TestPki::new();
    let ca = pki.ca().cert_der();
    let revoked = pki.client("eu-1");
    let kept = pki.client("eu-2");
    let crl = crl_der(&pki.crl_revoking(&[&revoked]));
    assert!(matches!(
        verify_client(&ca, &revoked.cert_der(), Some(&crl)),
        Err(webpki::Error::CertRevoked)
    ));
    verify_client(&ca, &kept.cert_der(), Some(&crl)).unwrap();
    let empty = crl_der(&pki.crl_revoking(&[]));
    verify_client(&ca, &revoked.cert_der(), Some(&empty)).unwrap();
    // A CRL from another CA is no authority on ours.
    let stranger = TestPki::new();
    let foreign = crl_der(&stranger.crl_revoking(&[&revoked]));
    assert!(verify_client(&ca, &revoked.cert_der(), Some(&foreign)).is_err());
}

#[test]
fn written_files_are_what_a_router_loads() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let files = pki.write_to(dir.path()).unwrap();
    assert_eq!(files.crl, dir.path().join(CRL_FILE));
    let router = icom_certs::load_certs(&files.router_cert).unwrap();
    verify_router(&pki.ca().cert_der(), &router[0], "localhost").unwrap();
    let crl = load_crls(&files.crl).unwrap();
    verify_client(
        &pki.ca().cert_der(),
        &pki.client("a").cert_der(),
        Some(&crl[0]),
    )
    .unwrap();
}

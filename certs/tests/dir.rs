//! `CertDir` through the library, as the router's `--dev` mode uses it, and the
//! damaged directories the CLI tests do not reach.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{verify_client, verify_router};
use icom_certs::{
    inspect, load_crls, Ca, CertDir, Chains, DirError, Kind, CA_KEY_FILE, CRL_FILE, INDEX_FILE,
};

fn crl_number(dir: &std::path::Path) -> u64 {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap()).unwrap();
    index["crl_number"].as_u64().unwrap()
}

#[test]
fn dev_mode_flow_through_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("icom-dev");
    let mut dir = CertDir::init(&root, "ICOM dev CA", 30, false).unwrap();
    let router = dir
        .issue_router(
            &["localhost".to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            30,
            false,
        )
        .unwrap();
    let client = dir.issue_client("dev-01", 30, false).unwrap();
    assert_eq!(client.cert_path, root.join("dev-01.pem"));
    assert_eq!(client.key_path, root.join("dev-01.key"));
    assert_eq!(router.issued.common_name, "localhost");

    let ca = dir.ca_cert();
    verify_router(&ca, &router.issued.cert_der(), "localhost").unwrap();
    let crl = load_crls(&dir.file(CRL_FILE)).unwrap().remove(0);
    verify_client(&ca, &client.issued.cert_der(), Some(&crl)).unwrap();

    let listed = dir.list();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].kind, Kind::Router);
    assert_eq!(listed[1].serial, client.issued.serial);
    assert_eq!(listed[1].not_after, client.issued.not_after);

    // A reopened directory sees the same thing.
    let reopened = CertDir::open(&root).unwrap();
    assert_eq!(reopened.list(), listed);
}

#[test]
fn every_crl_gets_a_larger_number_and_keeps_earlier_revocations() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = CertDir::init(tmp.path(), "CA", 30, false).unwrap();
    assert_eq!(crl_number(tmp.path()), 1);
    let a = dir.issue_client("a", 30, false).unwrap();
    let b = dir.issue_client("b", 30, false).unwrap();
    let outcome = dir.revoke("a").unwrap();
    assert_eq!(outcome.revoked.len(), 1);
    assert!(outcome.already.is_empty());
    assert_eq!(crl_number(tmp.path()), 2);
    let outcome = dir.revoke(&b.issued.serial.to_string()).unwrap();
    assert_eq!(outcome.revoked[0].common_name, "b");
    assert_eq!(crl_number(tmp.path()), 3);
    let outcome = dir.revoke("a").unwrap();
    assert!(outcome.revoked.is_empty());
    assert_eq!(outcome.already.len(), 1);

    let ca = dir.ca_cert();
    let crl = load_crls(&dir.file(CRL_FILE)).unwrap().remove(0);
    for issued in [&a.issued, &b.issued] {
        assert!(matches!(
            verify_client(&ca, &issued.cert_der(), Some(&crl)),
            Err(webpki::Error::CertRevoked)
        ));
    }
}

#[test]
fn a_directory_without_the_ca_key_can_list_and_inspect_but_not_sign() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = CertDir::init(tmp.path(), "CA", 30, false).unwrap();
    let client = dir.issue_client("a", 30, false).unwrap();
    std::fs::remove_file(tmp.path().join(CA_KEY_FILE)).unwrap();

    let mut dir = CertDir::open(tmp.path()).unwrap();
    assert_eq!(dir.list().len(), 1);
    let report = dir.inspect(&client.cert_path).unwrap();
    assert_eq!(report.chains_to_ca, Chains::Yes);
    assert_eq!(report.revoked, Some(false));
    let err = dir.issue_client("b", 30, false).unwrap_err().to_string();
    assert!(err.contains("ca.key"), "{err}");
    assert!(!tmp.path().join("b.pem").exists());
}

#[test]
fn a_foreign_ca_key_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = CertDir::init(tmp.path(), "CA", 30, false).unwrap();
    let stranger = Ca::new("CA", 30).unwrap();
    std::fs::write(tmp.path().join(CA_KEY_FILE), stranger.key_pem()).unwrap();
    let err = dir.issue_client("a", 30, false).unwrap_err();
    assert!(matches!(err, DirError::BadCa { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("ca.key") && msg.contains("does not belong"),
        "{msg}"
    );
}

#[test]
fn a_missing_or_corrupt_index_is_an_error_not_an_empty_list() {
    let tmp = tempfile::tempdir().unwrap();
    CertDir::init(tmp.path(), "CA", 30, false).unwrap();
    let index = tmp.path().join(INDEX_FILE);
    std::fs::write(&index, "{").unwrap();
    let err = CertDir::open(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("index.json") && err.contains("backup"),
        "{err}"
    );
    std::fs::remove_file(&index).unwrap();
    let err = CertDir::open(tmp.path()).unwrap_err();
    assert!(matches!(err, DirError::MissingIndex { .. }), "{err}");
}

#[test]
fn reserved_ids_never_touch_the_directory_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = CertDir::init(tmp.path(), "CA", 30, false).unwrap();
    let ca_before = std::fs::read(tmp.path().join("ca.pem")).unwrap();
    for id in ["ca", "CA", "router", "crl"] {
        let err = dir.issue_client(id, 30, true).unwrap_err();
        assert!(matches!(err, DirError::Reserved { .. }), "{id}: {err}");
    }
    assert_eq!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), ca_before);
    assert!(dir.list().is_empty());
}

#[test]
fn inspect_without_a_ca_is_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = CertDir::init(&tmp.path().join("a"), "CA", 30, false).unwrap();
    let client = dir.issue_client("a", 30, false).unwrap();
    let empty = tmp.path().join("empty");
    let report = inspect(&client.cert_path, &empty).unwrap();
    assert_eq!(report.chains_to_ca, Chains::Unknown);
    assert_eq!(report.revoked, None);
    let report = inspect(&client.cert_path, dir.path()).unwrap();
    assert_eq!(report.chains_to_ca, Chains::Yes);
}

//! The real `icom-certs` binary in a temp dir: the full init → router → client
//! → revoke → list/inspect cycle, checked with rustls-webpki as a router and a
//! client would check it, and every refusal it promises.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::{verify_client, verify_router};
use icom_certs::{load_certs, load_crls};

/// Runs `icom-certs --dir DIR ARGS…` with `ICOM_CERTS_DIR` unset.
fn icom(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_icom-certs"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("ICOM_CERTS_DIR")
        .output()
        .expect("running icom-certs")
}

/// Runs it and requires success; returns stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = icom(dir, args);
    assert!(
        out.status.success(),
        "icom-certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs it and requires exit code `code`; returns stderr.
fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let out = icom(dir, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "icom-certs {args:?}: stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// Every file in `dir` with its contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn list_json(dir: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(dir, &["list", "--json"])).unwrap()
}

/// A directory with a CA, a router certificate and a client `eu-1`.
fn issued_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["init", "--name", "Cycle CA"]);
    ok(
        dir,
        &[
            "router",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--days",
            "30",
        ],
    );
    ok(dir, &["client", "eu-1"]);
    tmp
}

#[test]
fn full_cycle_verifies_like_a_router_and_revocation_bites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let out = ok(dir, &["init"]);
    assert!(
        out.contains("icom-certs router"),
        "init names the next step: {out}"
    );
    let out = ok(dir, &["router", "--dns", "localhost", "--ip", "127.0.0.1"]);
    assert!(
        out.contains("router.pem") && out.contains("icom-certs client"),
        "{out}"
    );
    let out = ok(dir, &["client", "eu-1"]);
    assert!(
        out.contains("eu-1.pem") && out.contains("eu-1.key"),
        "{out}"
    );
    ok(dir, &["client", "eu-2"]);

    let ca = load_certs(&dir.join("ca.pem")).unwrap().remove(0);
    let router = load_certs(&dir.join("router.pem")).unwrap().remove(0);
    let eu1 = load_certs(&dir.join("eu-1.pem")).unwrap().remove(0);
    let eu2 = load_certs(&dir.join("eu-2.pem")).unwrap().remove(0);
    icom_certs::load_key(&dir.join("eu-1.key")).unwrap();
    assert_eq!(icom_certs::common_name(&eu1).unwrap(), vec!["eu-1"]);

    verify_router(&ca, &router, "localhost").unwrap();
    verify_router(&ca, &router, "127.0.0.1").unwrap();
    assert!(verify_router(&ca, &router, "elsewhere.example").is_err());
    assert!(
        verify_client(&ca, &router, None).is_err(),
        "router cert is no client cert"
    );

    // The CRL written by init is signed by the CA and revokes nothing.
    let empty_crl = load_crls(&dir.join("crl.pem")).unwrap().remove(0);
    verify_client(&ca, &eu1, Some(&empty_crl)).unwrap();

    let out = ok(dir, &["revoke", "eu-1"]);
    assert!(out.contains("crl.pem"), "{out}");
    let crl = load_crls(&dir.join("crl.pem")).unwrap().remove(0);
    assert_ne!(crl, empty_crl);
    assert!(matches!(
        verify_client(&ca, &eu1, Some(&crl)),
        Err(webpki::Error::CertRevoked)
    ));
    verify_client(&ca, &eu2, Some(&crl)).unwrap();
    verify_client(&ca, &eu1, None).unwrap();

    let entries = list_json(dir);
    assert_eq!(entries.len(), 3);
    let by_cn = |cn: &str| {
        entries
            .iter()
            .find(|e| e["common_name"] == cn)
            .unwrap_or_else(|| panic!("{cn} not listed"))
    };
    assert_eq!(by_cn("eu-1")["revoked"], true);
    assert!(by_cn("eu-1")["revoked_at"].is_string());
    assert_eq!(by_cn("eu-1")["kind"], "client");
    assert_eq!(by_cn("eu-1")["key_file"], "eu-1.key");
    assert_eq!(by_cn("eu-2")["revoked"], false);
    assert_eq!(by_cn("localhost")["kind"], "router");

    let table = ok(dir, &["list"]);
    assert!(table.starts_with("SERIAL"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    let eu1_file = dir.join("eu-1.pem");
    let out = ok(dir, &["inspect", eu1_file.to_str().unwrap()]);
    assert!(out.contains("chains to CA:  yes"), "{out}");
    assert!(out.contains("revoked:       YES"), "{out}");
    assert!(out.contains("clientAuth"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&ok(dir, &["inspect", eu1_file.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(report["chains_to_ca"], "yes");
    assert_eq!(report["revoked"], true);
    assert_eq!(report["common_names"][0], "eu-1");
    assert_eq!(report["serial"], by_cn("eu-1")["serial"]);
    assert_eq!(report["validity"], "valid");
}

#[test]
fn client_auth_makes_a_certificate_for_both_ends_as_a_nats_node_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["init"]);
    ok(dir, &["router", "--dns", "nats-1", "--client-auth"]);
    let ca = load_certs(&dir.join("ca.pem")).unwrap().remove(0);
    let node = load_certs(&dir.join("router.pem")).unwrap().remove(0);
    verify_router(&ca, &node, "nats-1").unwrap();
    verify_client(&ca, &node, None).unwrap();
    let entries = list_json(dir);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "router");
}

#[test]
fn revoke_by_serial_revokes_only_that_certificate() {
    let tmp = issued_dir();
    let dir = tmp.path();
    ok(dir, &["client", "eu-1", "--force"]);
    let entries = list_json(dir);
    let old = entries[1]["serial"].as_str().unwrap().to_owned();
    ok(dir, &["revoke", &old]);
    let entries = list_json(dir);
    assert_eq!(entries[1]["revoked"], true);
    assert_eq!(entries[2]["revoked"], false, "the reissued cert stays good");

    let ca = load_certs(&dir.join("ca.pem")).unwrap().remove(0);
    let current = load_certs(&dir.join("eu-1.pem")).unwrap().remove(0);
    let crl = load_crls(&dir.join("crl.pem")).unwrap().remove(0);
    verify_client(&ca, &current, Some(&crl)).unwrap();

    let err = fails(dir, &["revoke", "nobody"], 1);
    assert!(
        err.contains("nobody") && err.contains("index.json"),
        "{err}"
    );
}

#[test]
fn nothing_is_overwritten_without_force() {
    let tmp = issued_dir();
    let dir = tmp.path();
    let before = snapshot(dir);
    for (args, file) in [
        (&["init"][..], "ca.pem"),
        (&["router", "--dns", "localhost"][..], "router.pem"),
        (&["client", "eu-1"][..], "eu-1.pem"),
    ] {
        let err = fails(dir, args, 1);
        assert!(err.starts_with("error: "), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(file) && err.contains("--force"), "{err}");
    }
    assert_eq!(snapshot(dir), before, "a refused command changed a file");

    ok(dir, &["client", "eu-1", "--force"]);
    ok(dir, &["router", "--dns", "localhost", "--force"]);
    let after = snapshot(dir);
    assert_ne!(after["eu-1.pem"], before["eu-1.pem"]);
    assert_ne!(after["eu-1.key"], before["eu-1.key"]);
    assert_ne!(after["router.pem"], before["router.pem"]);
    let ca = load_certs(&dir.join("ca.pem")).unwrap().remove(0);
    let eu1 = load_certs(&dir.join("eu-1.pem")).unwrap().remove(0);
    verify_client(&ca, &eu1, None).unwrap();
    assert_eq!(list_json(dir).len(), 4);

    ok(dir, &["init", "--force"]);
    assert_ne!(snapshot(dir)["ca.pem"], before["ca.pem"]);
    assert!(list_json(dir).is_empty(), "a new CA starts a new index");
}

#[test]
fn bad_server_ids_are_refused_and_nothing_is_written() {
    let tmp = issued_dir();
    let dir = tmp.path();
    let before = snapshot(dir);
    let long = "a".repeat(65);
    for id in ["bad id!", "-x", long.as_str()] {
        let err = fails(dir, &["client", id], 1);
        assert!(err.starts_with("error: "), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("server id"), "{id:?}: {err}");
    }
    let err = fails(dir, &["client", "bad id!"], 1);
    assert!(
        err.contains("' '") && err.contains("letters, digits"),
        "{err}"
    );
    let err = fails(dir, &["client", &long], 1);
    assert!(err.contains("64"), "{err}");
    let err = fails(dir, &["client", "ca", "--force"], 1);
    assert!(err.contains("reserved"), "{err}");
    assert_eq!(snapshot(dir), before);
}

#[cfg(unix)]
#[test]
fn key_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = issued_dir();
    for key in ["ca.key", "router.key", "eu-1.key"] {
        let mode = std::fs::metadata(tmp.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    ok(tmp.path(), &["client", "eu-1", "--force"]);
    let mode = std::fs::metadata(tmp.path().join("eu-1.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "after --force");
}

#[test]
fn inspect_tells_our_ca_from_another_and_from_none() {
    let ours = issued_dir();
    let theirs = issued_dir();
    let foreign = theirs.path().join("eu-1.pem");
    let foreign = foreign.to_str().unwrap();

    let out = ok(ours.path(), &["inspect", foreign]);
    assert!(out.contains("chains to CA:  NO"), "{out}");
    assert!(out.contains("revoked:       unknown"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&ok(ours.path(), &["inspect", foreign, "--json"])).unwrap();
    assert_eq!(report["chains_to_ca"], "no");
    assert_eq!(report["revoked"], serde_json::Value::Null);

    let empty = tempfile::tempdir().unwrap();
    let out = ok(empty.path(), &["inspect", foreign]);
    assert!(out.contains("unknown (no CA in"), "{out}");

    let err = fails(ours.path(), &["inspect", "/nonexistent/x.pem"], 1);
    assert!(err.contains("/nonexistent/x.pem"), "{err}");
    let key = ours.path().join("eu-1.key");
    let err = fails(ours.path(), &["inspect", key.to_str().unwrap()], 1);
    assert!(
        err.contains("eu-1.key") && err.contains("no certificate"),
        "{err}"
    );
}

#[test]
fn no_ca_says_how_to_make_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    for args in [&["list"][..], &["client", "eu-1"], &["revoke", "eu-1"]] {
        let err = fails(&dir, args, 1);
        assert!(
            err.contains("no CA in") && err.contains("icom-certs init --dir"),
            "{err}"
        );
    }
    assert!(!dir.exists(), "a failed command created the directory");
}

#[test]
fn usage_errors_exit_2() {
    let tmp = issued_dir();
    let dir = tmp.path();
    fails(dir, &["router"], 2);
    fails(dir, &["router", "--ip", "not-an-ip"], 2);
    fails(dir, &["client"], 2);
    fails(dir, &["frobnicate"], 2);
}

#[test]
fn dir_comes_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("from-env");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_icom-certs"))
            .args(args)
            .env("ICOM_CERTS_DIR", &dir)
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    assert!(run(&["client", "eu-1"]).status.success());
    assert!(dir.join("ca.pem").exists() && dir.join("eu-1.pem").exists());
}

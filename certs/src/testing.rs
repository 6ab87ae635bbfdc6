//! A throwaway PKI for the workspace's tests: one CA, a router certificate for
//! `localhost`/127.0.0.1, a NATS node's certificate (server and client, for
//! the cluster mode's tests), client certificates, and every kind of
//! certificate the router must refuse (docs/PROTOCOL.md §1).
//!
//! Always compiled (not `cfg(test)`), because other crates' tests use it. Its
//! methods panic instead of returning errors: minting with the fixed,
//! known-good parameters used here fails only if the system's random number
//! generator does.
//!
//! ```
//! use icom_certs::testing::{BadClient, TestPki};
//!
//! let pki = TestPki::new();
//! let router = pki.router();
//! let good = pki.client("eu-1");
//! let crl = pki.crl_revoking(&[&good]);
//! for kind in BadClient::ALL {
//!     let bad = pki.bad_client(kind, "eu-1");
//!     assert_eq!(bad.common_name, "eu-1");
//! }
//! # let _ = (router, crl);
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{ExtendedKeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};

use crate::dir::{CA_CERT_FILE, CRL_FILE, ROUTER_CERT_FILE, ROUTER_KEY_FILE};
use crate::files::{write_atomic, Secrecy};
use crate::leaf::{now_seconds, validity, LeafSpec};
use crate::{Ca, DirError, Issued};

/// The test CA's name; the "other" CA has the same name, so that only the
/// signature tells them apart.
pub const TEST_CA_NAME: &str = "ICOM test CA";

/// Days of validity of the good certificates.
const DAYS: u32 = 30;

/// A client certificate that must fail the TLS handshake with a router
/// trusting [`TestPki::ca`].
///
/// A certificate with no EKU extension at all ([`TestPki::no_eku`]) is not
/// here: docs/PROTOCOL.md §1 accepts it. Identity errors that fail after the
/// handshake ([`TestPki::bad_cn`], [`TestPki::two_cns`], [`TestPki::no_cn`])
/// are not here either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadClient {
    /// Validity ended yesterday.
    Expired,
    /// Validity starts tomorrow.
    NotYetValid,
    /// Signed by another CA of the same name.
    OtherCa,
    /// EKU serverAuth only.
    ServerAuthOnly,
}

/// A CA and helpers that mint certificates from it.
#[derive(Debug)]
pub struct TestPki {
    ca: Ca,
    other: Ca,
}

/// Where [`TestPki::write_to`] put its files.
#[derive(Debug, Clone)]
pub struct TestFiles {
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `router.pem`.
    pub router_cert: PathBuf,
    /// `router.key` (0600 on unix).
    pub router_key: PathBuf,
    /// `crl.pem`, revoking nothing.
    pub crl: PathBuf,
}

impl BadClient {
    /// Every kind, for table-driven tests.
    pub const ALL: [Self; 4] = [
        Self::Expired,
        Self::NotYetValid,
        Self::OtherCa,
        Self::ServerAuthOnly,
    ];
}

impl TestPki {
    /// A fresh CA (and a second one of the same name for [`Self::other_ca`]).
    ///
    /// # Panics
    /// Only if the system's random number generator fails.
    pub fn new() -> Self {
        Self {
            ca: Ca::new(TEST_CA_NAME, DAYS).expect("minting a test CA"),
            other: Ca::new(TEST_CA_NAME, DAYS).expect("minting a test CA"),
        }
    }

    /// The CA the router and clients should trust.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// A router certificate for `localhost` and 127.0.0.1, EKU serverAuth.
    pub fn router(&self) -> Issued {
        self.ca
            .issue_router(
                &["localhost".to_owned()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                DAYS,
            )
            .expect("minting the test router certificate")
    }

    /// A certificate for a server that is also a client of its peers, as a
    /// NATS node is (it accepts clients, and dials the other nodes over
    /// mutual TLS on its cluster routes): CN `localhost`, SANs `localhost`
    /// and 127.0.0.1, EKU serverAuth and clientAuth.
    pub fn nats_node(&self) -> Issued {
        let localhost = "localhost"
            .try_into()
            .expect("localhost is a valid DNS name");
        self.leaf(
            &self.ca,
            vec!["localhost".to_owned()],
            vec![
                SanType::DnsName(localhost),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            good_validity(),
        )
    }

    /// A good client certificate for `id`.
    ///
    /// # Panics
    /// If `id` breaks the CN rule: use [`Self::bad_cn`] for that.
    pub fn client(&self, id: &str) -> Issued {
        self.ca
            .issue_client(id, DAYS)
            .unwrap_or_else(|e| panic!("TestPki::client: {e}"))
    }

    /// A client certificate for `id` of the given bad kind.
    pub fn bad_client(&self, kind: BadClient, id: &str) -> Issued {
        match kind {
            BadClient::Expired => self.expired(id),
            BadClient::NotYetValid => self.not_yet_valid(id),
            BadClient::OtherCa => self.other_ca(id),
            BadClient::ServerAuthOnly => self.server_auth_only(id),
        }
    }

    /// A client certificate whose validity ended a day ago.
    pub fn expired(&self, id: &str) -> Issued {
        let now = now_seconds();
        self.leaf(
            &self.ca,
            vec![id.to_owned()],
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            (now - Duration::days(DAYS.into()), now - Duration::days(1)),
        )
    }

    /// A client certificate whose validity starts in a day.
    pub fn not_yet_valid(&self, id: &str) -> Issued {
        let now = now_seconds();
        self.leaf(
            &self.ca,
            vec![id.to_owned()],
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            (now + Duration::days(1), now + Duration::days(DAYS.into())),
        )
    }

    /// A client certificate for `id` signed by another CA with the same name.
    pub fn other_ca(&self, id: &str) -> Issued {
        self.other
            .issue_client(id, DAYS)
            .unwrap_or_else(|e| panic!("TestPki::other_ca: {e}"))
    }

    /// A certificate for `id` whose only EKU is serverAuth.
    pub fn server_auth_only(&self, id: &str) -> Issued {
        self.leaf(
            &self.ca,
            vec![id.to_owned()],
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            good_validity(),
        )
    }

    /// A certificate for `id` with no EKU extension at all, which RFC 5280
    /// (and docs/PROTOCOL.md §1) reads as good for any use: the router accepts it.
    pub fn no_eku(&self, id: &str) -> Issued {
        self.leaf(
            &self.ca,
            vec![id.to_owned()],
            Vec::new(),
            Vec::new(),
            good_validity(),
        )
    }

    /// A client certificate with any CN at all, unchecked ("bad cn!", "",
    /// 65 characters…): it passes the handshake and must then be refused.
    pub fn bad_cn(&self, cn: &str) -> Issued {
        self.client_with_cns(vec![cn.to_owned()])
    }

    /// A client certificate whose subject holds two CNs, `a` then `b`.
    pub fn two_cns(&self, a: &str, b: &str) -> Issued {
        self.client_with_cns(vec![a.to_owned(), b.to_owned()])
    }

    /// A client certificate whose subject has no CN at all.
    pub fn no_cn(&self) -> Issued {
        self.client_with_cns(Vec::new())
    }

    /// A CRL signed by the CA revoking `certs`, PEM. `crl_revoking(&[])` is a
    /// valid empty CRL.
    pub fn crl_revoking(&self, certs: &[&Issued]) -> String {
        let serials: Vec<_> = certs.iter().map(|c| c.serial.clone()).collect();
        let now = now_seconds();
        self.ca
            .crl(
                &serials,
                now - Duration::minutes(1),
                now + Duration::days(1),
            )
            .expect("signing a test CRL")
    }

    /// Writes `ca.pem`, `router.pem`, `router.key` (a fresh [`Self::router`])
    /// and an empty `crl.pem` into `dir`, which must exist.
    ///
    /// # Errors
    /// [`DirError::Write`] naming the file that could not be written.
    pub fn write_to(&self, dir: &Path) -> Result<TestFiles, DirError> {
        let router = self.router();
        let files = TestFiles {
            ca_cert: dir.join(CA_CERT_FILE),
            router_cert: dir.join(ROUTER_CERT_FILE),
            router_key: dir.join(ROUTER_KEY_FILE),
            crl: dir.join(CRL_FILE),
        };
        let crl = self.crl_revoking(&[]);
        for (path, text, secrecy) in [
            (&files.ca_cert, self.ca.cert_pem(), Secrecy::Public),
            (
                &files.router_cert,
                router.cert_pem.as_str(),
                Secrecy::Public,
            ),
            (&files.router_key, router.key_pem.as_str(), Secrecy::Private),
            (&files.crl, crl.as_str(), Secrecy::Public),
        ] {
            write_atomic(path, text.as_bytes(), secrecy).map_err(|cause| DirError::Write {
                path: path.clone(),
                cause,
            })?;
        }
        Ok(files)
    }

    /// A clientAuth certificate from our CA with exactly these CNs.
    fn client_with_cns(&self, common_names: Vec<String>) -> Issued {
        self.leaf(
            &self.ca,
            common_names,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            good_validity(),
        )
    }

    /// Mints a leaf from `ca`, no rule checked.
    fn leaf(
        &self,
        ca: &Ca,
        common_names: Vec<String>,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        (not_before, not_after): (OffsetDateTime, OffsetDateTime),
    ) -> Issued {
        ca.issue(LeafSpec {
            common_names,
            sans,
            ekus,
            not_before,
            not_after,
        })
        .expect("minting a test certificate")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// The validity of good test certificates.
fn good_validity() -> (OffsetDateTime, OffsetDateTime) {
    validity(DAYS).expect("30 days is a valid validity")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{common_name, parse};
    use crate::{load_certs, load_crls, load_key};

    #[test]
    fn expired_and_not_yet_valid_really_are() {
        let pki = TestPki::new();
        let now = OffsetDateTime::now_utc();
        let expired = parse(&pki.expired("a").cert_der()).unwrap();
        assert!(expired.not_after < now && expired.not_before < expired.not_after);
        let early = parse(&pki.not_yet_valid("a").cert_der()).unwrap();
        assert!(early.not_before > now && early.not_after > early.not_before);
        let good = parse(&pki.client("a").cert_der()).unwrap();
        assert!(good.not_before < now && now < good.not_after);
    }

    #[test]
    fn eku_variants() {
        let pki = TestPki::new();
        let ekus = |i: Issued| parse(&i.cert_der()).unwrap().ekus;
        assert_eq!(
            ekus(pki.server_auth_only("a")),
            Some(vec!["serverAuth".to_owned()])
        );
        assert_eq!(ekus(pki.no_eku("a")), None);
        assert_eq!(ekus(pki.client("a")), Some(vec!["clientAuth".to_owned()]));
        assert_eq!(ekus(pki.router()), Some(vec!["serverAuth".to_owned()]));
    }

    #[test]
    fn subject_variants() {
        let pki = TestPki::new();
        let cns = |i: Issued| common_name(&i.cert_der()).unwrap();
        assert_eq!(cns(pki.bad_cn("bad cn!")), vec!["bad cn!"]);
        assert_eq!(cns(pki.bad_cn("")), vec![""]);
        assert_eq!(cns(pki.two_cns("a", "b")), vec!["a", "b"]);
        assert!(cns(pki.no_cn()).is_empty());
    }

    #[test]
    fn other_ca_has_our_issuer_name_but_not_our_signature() {
        let pki = TestPki::new();
        let ours = parse(&pki.ca().cert_der()).unwrap();
        let theirs = pki.other_ca("a");
        assert_eq!(parse(&theirs.cert_der()).unwrap().issuer, ours.subject);
        assert!(!crate::inspect::signed_by(
            &theirs.cert_der(),
            &pki.ca().cert_der()
        ));
        for kind in BadClient::ALL {
            if kind != BadClient::OtherCa {
                let bad = pki.bad_client(kind, "a");
                assert!(
                    crate::inspect::signed_by(&bad.cert_der(), &pki.ca().cert_der()),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn nats_node_serves_and_dials_as_localhost() {
        let pki = TestPki::new();
        let node = pki.nats_node();
        let info = parse(&node.cert_der()).unwrap();
        assert_eq!(info.common_names, vec!["localhost"]);
        assert_eq!(info.sans, vec!["DNS:localhost", "IP:127.0.0.1"]);
        assert_eq!(
            info.ekus,
            Some(vec!["serverAuth".to_owned(), "clientAuth".to_owned()])
        );
        assert!(!info.is_ca);
        assert!(crate::inspect::signed_by(
            &node.cert_der(),
            &pki.ca().cert_der()
        ));
    }

    #[test]
    fn router_names_localhost() {
        let info = parse(&TestPki::new().router().cert_der()).unwrap();
        assert_eq!(info.sans, vec!["DNS:localhost", "IP:127.0.0.1"]);
    }

    #[test]
    fn write_to_writes_loadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let files = pki.write_to(dir.path()).unwrap();
        assert_eq!(
            load_certs(&files.ca_cert).unwrap(),
            vec![pki.ca().cert_der()]
        );
        let router = load_certs(&files.router_cert).unwrap();
        assert_eq!(common_name(&router[0]).unwrap(), vec!["localhost"]);
        load_key(&files.router_key).unwrap();
        assert_eq!(load_crls(&files.crl).unwrap().len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.router_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

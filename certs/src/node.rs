//! A NATS node's certificate in a [`CertDir`]: `icom-certs router
//! --client-auth`. NATS presents a node's certificate both ways on a route
//! and always verifies it, so it needs clientAuth as well as serverAuth.

use std::net::IpAddr;

use crate::dir::{CertDir, DirError, Written, ROUTER_CERT_FILE, ROUTER_KEY_FILE};
use crate::index::Kind;

impl CertDir {
    /// As [`CertDir::issue_router`], with EKU clientAuth too (see
    /// [`crate::Ca::issue_node`]): a NATS node's certificate, written to
    /// `router.pem` and `router.key` and recorded as a router certificate.
    ///
    /// # Errors
    /// As [`CertDir::issue_router`].
    pub fn issue_node(
        &mut self,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
        force: bool,
    ) -> Result<Written, DirError> {
        let issued = self.load_ca()?.issue_node(dns, ips, days)?;
        let paths = (self.file(ROUTER_CERT_FILE), self.file(ROUTER_KEY_FILE));
        self.store(issued, Kind::Router, paths, force)
    }
}

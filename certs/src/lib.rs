//! ICOM certificates: the CA, the router's certificate, one client certificate
//! per game server, and the CRL (docs/PROTOCOL.md §1).
//!
//! - [`Ca`] mints in memory: [`Ca::issue_router`], [`Ca::issue_client`],
//!   [`Ca::crl`].
//! - [`CertDir`] keeps a CA and what it issued in a directory; the
//!   `icom-certs` CLI is a thin shell over it, and the router's `--dev` mode
//!   uses it too.
//! - [`load_certs`], [`load_key`], [`load_crls`] and [`common_name`] are what
//!   the router and clients need to read that material back.
//! - [`testing::TestPki`] gives every test in the workspace good and bad
//!   certificates without any rcgen code of its own.
//!
//! Errors are thiserror enums, one per kind of operation. Each message is a
//! self-contained lowercase one-liner naming the file at fault and including
//! the underlying cause, so `%e` in a log line says everything; for the same
//! reason they do not also expose that cause through `Error::source`, and a
//! printed error chain shows each cause once.
//!
//! ```
//! use icom_certs::Ca;
//!
//! let ca = Ca::new("ICOM CA", 3650)?;
//! let client = ca.issue_client("eu-1", 825)?;
//! assert_eq!(icom_certs::common_name(&client.cert_der())?, vec!["eu-1"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

mod ca;
mod dir;
mod files;
mod index;
mod inspect;
mod leaf;
mod load;
mod lock;
mod node;
mod serial;
pub mod testing;

pub use ca::{Ca, CertError};
pub use dir::{
    inspect, CertDir, DirError, Revocation, Written, CA_CERT_FILE, CA_KEY_FILE, CRL_FILE,
    INDEX_FILE, ROUTER_CERT_FILE, ROUTER_KEY_FILE,
};
pub use index::{IndexEntry, Kind};
pub use inspect::{Chains, Inspection, Validity};
pub use leaf::{Issued, DEFAULT_ROUTER_CN};
pub use load::{common_name, load_certs, load_crls, load_key, LoadError, ParseError};
pub use lock::{DirLock, LOCK_FILE};
pub use serial::{Serial, SerialParseError};

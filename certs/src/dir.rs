//! A certificate directory on disk: the CA, the certificates it issued, the
//! index and the CRL. The `icom-certs` CLI is a thin shell over this.
//!
//! Layout of a directory `DIR`:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the CA certificate and its key (0600) |
//! | `index.json` | every issued certificate ([`IndexEntry`]), revocations |
//! | `crl.pem` | the CA-signed CRL, rewritten on every revoke (empty after `init`) |
//! | `router.pem`, `router.key` | the router's certificate and key |
//! | `<SERVER_ID>.pem`, `<SERVER_ID>.key` | a game server's client certificate and key |

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use icom_protocol::validate_server_id;
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::Duration;

use crate::files::{self, Secrecy};
use crate::index::{Index, IndexEntry, Kind};
use crate::inspect::{inspect_file, Inspection};
use crate::leaf::now_seconds;
use crate::load::{load_certs, LoadError, ParseError};
use crate::{Ca, CertError, Issued};

/// The CA certificate's file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// The index's file name.
pub const INDEX_FILE: &str = "index.json";
/// The CRL's file name.
pub const CRL_FILE: &str = "crl.pem";
/// The router certificate's file name.
pub const ROUTER_CERT_FILE: &str = "router.pem";
/// The router key's file name.
pub const ROUTER_KEY_FILE: &str = "router.key";

/// Server ids whose files would clash with the directory's own files.
const RESERVED_IDS: [&str; 3] = ["ca", "crl", "router"];

/// Why an operation on a certificate directory failed. Each message is one
/// line naming the file and what to do.
#[derive(Debug, Error)]
pub enum DirError {
    /// The directory has no CA.
    #[error("no CA in {dir}: run `icom-certs init --dir {dir}` first", dir = .dir.display())]
    NoCa {
        /// The directory.
        dir: PathBuf,
    },
    /// A file to be written exists and `force` was not given.
    #[error("{} already exists: pass --force to overwrite it", .path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The server id would name a file the directory itself uses.
    #[error("server id {id:?} is reserved: its files would overwrite {}; choose another id", .path.display())]
    Reserved {
        /// The refused id.
        id: String,
        /// The file it would clash with.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("could not read {}: {cause}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// A file could not be written.
    #[error("could not write {}: {cause}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The directory could not be created.
    #[error("could not create directory {}: {cause}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The CA exists but its index does not.
    #[error("{} is missing: restore it from a backup (it records revocations), or start a new CA with `icom-certs init --force`", .path.display())]
    MissingIndex {
        /// The index file.
        path: PathBuf,
    },
    /// The index is not valid JSON of the expected shape.
    #[error("{} is not a valid index ({cause}): restore it from a backup", .path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What the JSON parser said.
        cause: serde_json::Error,
    },
    /// The CA certificate or key cannot be used.
    #[error("cannot use the CA in {} and {}: {cause}", .cert.display(), .key.display())]
    BadCa {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA key file.
        key: PathBuf,
        /// Why.
        cause: CertError,
    },
    /// Minting failed (a bad server id or DNS name, a bad validity, …).
    #[error(transparent)]
    Mint(#[from] CertError),
    /// A PEM file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A certificate file could not be parsed.
    #[error("{}: {cause}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: ParseError,
    },
    /// Nothing in the index matches a revoke target.
    #[error("no certificate with serial or server id {target:?} in {}: see `icom-certs list`", .index.display())]
    NotFound {
        /// What was looked for.
        target: String,
        /// The index searched.
        index: PathBuf,
    },
}

/// A certificate directory with a CA.
#[derive(Debug)]
pub struct CertDir {
    root: PathBuf,
    ca_cert: CertificateDer<'static>,
    index: Index,
}

/// A certificate issued into a directory, and where it was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The certificate and key.
    pub issued: Issued,
    /// Where the certificate went.
    pub cert_path: PathBuf,
    /// Where the key went (mode 0600 on unix).
    pub key_path: PathBuf,
}

/// What a revoke did.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The entries this call revoked.
    pub revoked: Vec<IndexEntry>,
    /// The matching entries that were already revoked.
    pub already: Vec<IndexEntry>,
    /// The CRL, rewritten in every case.
    pub crl_path: PathBuf,
}

impl CertDir {
    /// Creates a CA named `ca_name`, valid for `days` days, in `path`
    /// (created if missing), with an empty index and an empty CRL.
    ///
    /// # Errors
    /// [`DirError::Exists`] if `path` already holds any of those files and
    /// `force` is false; I/O and minting errors otherwise.
    pub fn init(path: &Path, ca_name: &str, days: u32, force: bool) -> Result<Self, DirError> {
        let targets = [CA_CERT_FILE, CA_KEY_FILE, INDEX_FILE, CRL_FILE].map(|f| path.join(f));
        refuse_clobber(&targets, force)?;
        let ca = Ca::new(ca_name, days)?;
        files::create_dir(path).map_err(|cause| DirError::CreateDir {
            path: path.to_owned(),
            cause,
        })?;
        let mut dir = Self {
            root: path.to_owned(),
            ca_cert: ca.cert_der(),
            index: Index::new(),
        };
        write(&dir.file(CA_KEY_FILE), ca.key_pem(), Secrecy::Private)?;
        write(&dir.file(CA_CERT_FILE), ca.cert_pem(), Secrecy::Public)?;
        dir.save_index()?;
        dir.write_crl(&ca)?;
        Ok(dir)
    }

    /// Opens an existing directory. The CA key is read only when something is
    /// signed, so a directory with `ca.pem` but no `ca.key` can list and
    /// inspect.
    ///
    /// # Errors
    /// [`DirError::NoCa`] if `path` has no `ca.pem`, [`DirError::MissingIndex`]
    /// or [`DirError::Index`] for a missing or corrupt index, and load errors.
    pub fn open(path: &Path) -> Result<Self, DirError> {
        let ca_path = path.join(CA_CERT_FILE);
        if !ca_path.exists() {
            return Err(DirError::NoCa {
                dir: path.to_owned(),
            });
        }
        let ca_cert = first_cert(&ca_path)?;
        let index = read_index(&path.join(INDEX_FILE))?.ok_or_else(|| DirError::MissingIndex {
            path: path.join(INDEX_FILE),
        })?;
        Ok(Self {
            root: path.to_owned(),
            ca_cert,
            index,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `DIR/<name>`, e.g. `dir.file(CRL_FILE)`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Where `server_id`'s certificate and key go: `DIR/<id>.pem`, `DIR/<id>.key`.
    pub fn client_paths(&self, server_id: &str) -> (PathBuf, PathBuf) {
        (
            self.file(&format!("{server_id}.pem")),
            self.file(&format!("{server_id}.key")),
        )
    }

    /// The CA certificate: the trust anchor.
    pub fn ca_cert(&self) -> CertificateDer<'static> {
        self.ca_cert.clone()
    }

    /// Issues the router certificate (see [`Ca::issue_router`]) into
    /// `router.pem` and `router.key`, and records it in the index.
    ///
    /// # Errors
    /// [`DirError::Exists`] if either file exists and `force` is false,
    /// [`DirError::Mint`] for bad names, CA, I/O and index errors.
    pub fn issue_router(
        &mut self,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
        force: bool,
    ) -> Result<Written, DirError> {
        let ca = self.load_ca()?;
        let issued = ca.issue_router(dns, ips, days)?;
        let paths = (self.file(ROUTER_CERT_FILE), self.file(ROUTER_KEY_FILE));
        self.store(issued, Kind::Router, paths, force)
    }

    /// Issues a client certificate for `server_id` (see [`Ca::issue_client`])
    /// into `<server_id>.pem` and `<server_id>.key`, and records it.
    ///
    /// # Errors
    /// [`DirError::Mint`] if `server_id` breaks the CN rule (nothing is
    /// written), [`DirError::Reserved`] for `ca`, `crl` and `router`,
    /// [`DirError::Exists`] if either file exists and `force` is false, CA,
    /// I/O and index errors.
    pub fn issue_client(
        &mut self,
        server_id: &str,
        days: u32,
        force: bool,
    ) -> Result<Written, DirError> {
        // Checked before the CA key is read: a bad id is refused in any case.
        validate_server_id(server_id).map_err(|cause| CertError::ServerId {
            id: server_id.to_owned(),
            cause,
        })?;
        if RESERVED_IDS.contains(&server_id.to_ascii_lowercase().as_str()) {
            return Err(DirError::Reserved {
                id: server_id.to_owned(),
                path: self.file(&format!("{}.pem", server_id.to_ascii_lowercase())),
            });
        }
        let issued = self.load_ca()?.issue_client(server_id, days)?;
        let paths = self.client_paths(server_id);
        self.store(issued, Kind::Client, paths, force)
    }

    /// Revokes the certificate with serial `target`, or else every
    /// certificate whose CN is `target` (a server id reissued with `--force`
    /// has several), records it in the index and rewrites `crl.pem`.
    ///
    /// # Errors
    /// [`DirError::NotFound`] if nothing matches; CA, I/O and index errors.
    pub fn revoke(&mut self, target: &str) -> Result<Revocation, DirError> {
        let matches = self.index.matching(target);
        if matches.is_empty() {
            return Err(DirError::NotFound {
                target: target.to_owned(),
                index: self.file(INDEX_FILE),
            });
        }
        let ca = self.load_ca()?;
        let now = now_seconds();
        let (mut revoked, mut already) = (Vec::new(), Vec::new());
        for i in matches {
            let entry = &mut self.index.certs[i];
            if entry.revoked {
                already.push(entry.clone());
            } else {
                entry.revoked = true;
                entry.revoked_at = Some(now);
                revoked.push(entry.clone());
            }
        }
        self.save_index()?;
        self.write_crl(&ca)?;
        Ok(Revocation {
            revoked,
            already,
            crl_path: self.file(CRL_FILE),
        })
    }

    /// Every certificate issued, oldest first.
    pub fn list(&self) -> Vec<IndexEntry> {
        self.index.certs.clone()
    }

    /// Describes the certificate in `file`, checked against this directory's
    /// CA and index.
    ///
    /// # Errors
    /// Load and parse errors naming `file`.
    pub fn inspect(&self, file: &Path) -> Result<Inspection, DirError> {
        inspect_file(file, Some(&self.ca_cert), Some(&self.index))
    }

    /// Writes `issued` to `paths` (unless one exists and not `force`) and
    /// records it.
    pub(crate) fn store(
        &mut self,
        issued: Issued,
        kind: Kind,
        (cert_path, key_path): (PathBuf, PathBuf),
        force: bool,
    ) -> Result<Written, DirError> {
        refuse_clobber(&[cert_path.clone(), key_path.clone()], force)?;
        write(&key_path, &issued.key_pem, Secrecy::Private)?;
        write(&cert_path, &issued.cert_pem, Secrecy::Public)?;
        self.index.certs.push(IndexEntry {
            serial: issued.serial.clone(),
            kind,
            common_name: issued.common_name.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            cert_file: file_name(&cert_path),
            key_file: file_name(&key_path),
            revoked: false,
            revoked_at: None,
        });
        self.save_index()?;
        Ok(Written {
            issued,
            cert_path,
            key_path,
        })
    }

    /// Reads the CA key and pairs it with the CA certificate.
    pub(crate) fn load_ca(&self) -> Result<Ca, DirError> {
        let (cert, key) = (self.file(CA_CERT_FILE), self.file(CA_KEY_FILE));
        let cert_pem = read_string(&cert)?;
        let key_pem = read_string(&key)?;
        Ca::from_pem(&cert_pem, &key_pem).map_err(|cause| DirError::BadCa { cert, key, cause })
    }

    /// Writes the index.
    fn save_index(&self) -> Result<(), DirError> {
        let path = self.file(INDEX_FILE);
        let json = self.index.to_json().map_err(|cause| DirError::Index {
            path: path.clone(),
            cause,
        })?;
        files::write_atomic(&path, &json, Secrecy::Public)
            .map_err(|cause| DirError::Write { path, cause })
    }

    /// Signs and writes the next CRL from the index, then records its number.
    /// It is valid until the CA expires (at least a day): freshness comes from
    /// the router reloading the file, not from nextUpdate.
    fn write_crl(&mut self, ca: &Ca) -> Result<(), DirError> {
        let now = now_seconds();
        let next_update = ca.not_after().max(now + Duration::days(1));
        let number = self.index.crl_number + 1;
        let pem = ca.crl_numbered(&self.index.revoked(), now, next_update, number)?;
        write(&self.file(CRL_FILE), &pem, Secrecy::Public)?;
        self.index.crl_number = number;
        self.save_index()
    }
}

/// Describes the certificate in `file`, checked against the CA and index in
/// `dir` when it has them: with no `ca.pem` there, [`crate::Chains::Unknown`];
/// with no index, `revoked` is `None`.
///
/// # Errors
/// Load and parse errors naming the file at fault.
pub fn inspect(file: &Path, dir: &Path) -> Result<Inspection, DirError> {
    let ca_path = dir.join(CA_CERT_FILE);
    let ca = if ca_path.exists() {
        Some(first_cert(&ca_path)?)
    } else {
        None
    };
    let index = read_index(&dir.join(INDEX_FILE))?;
    inspect_file(file, ca.as_ref(), index.as_ref())
}

/// [`DirError::Exists`] for the first of `paths` that exists, unless `force`.
fn refuse_clobber(paths: &[PathBuf], force: bool) -> Result<(), DirError> {
    if force {
        return Ok(());
    }
    match files::first_existing(paths.iter().map(PathBuf::as_path)) {
        Some(path) => Err(DirError::Exists {
            path: path.to_owned(),
        }),
        None => Ok(()),
    }
}

/// The first certificate in a PEM file.
fn first_cert(path: &Path) -> Result<CertificateDer<'static>, DirError> {
    // load_certs errors rather than returning an empty list, so the
    // fallback is never taken.
    load_certs(path)?
        .into_iter()
        .next()
        .ok_or_else(|| DirError::NoCa {
            dir: path.parent().unwrap_or(path).to_owned(),
        })
}

/// The index at `path`, or `None` if there is no such file.
fn read_index(path: &Path) -> Result<Option<Index>, DirError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_string(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|cause| DirError::Index {
            path: path.to_owned(),
            cause,
        })
}

/// A whole file as text.
fn read_string(path: &Path) -> Result<String, DirError> {
    std::fs::read_to_string(path).map_err(|cause| DirError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Writes `text` atomically.
fn write(path: &Path, text: &str, secrecy: Secrecy) -> Result<(), DirError> {
    files::write_atomic(path, text.as_bytes(), secrecy).map_err(|cause| DirError::Write {
        path: path.to_owned(),
        cause,
    })
}

/// The last component of `path`, as recorded in the index.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

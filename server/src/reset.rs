//! The router's QUIC endpoint keeps its keys across restarts, so that a
//! restarted router ends the connections of its previous run at once.
//!
//! A client whose router crashed keeps sending on its old connection. The
//! restarted router does not know that connection; it answers with a QUIC
//! stateless reset, which the client accepts only if it is signed with the
//! key the old run used, and only if the router recognises the connection
//! id as one it issued. Both keys are derived from one secret kept in the
//! data dir (`reset.key`, 32 random bytes, mode 0600, made on first
//! start), so a restart costs a client one keep-alive interval, not its
//! whole idle timeout. docs/PROTOCOL.md §1.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// The secret's file in the data dir.
pub const RESET_KEY_FILE: &str = "reset.key";
/// The secret's length, in bytes.
const SECRET_LEN: usize = 32;
/// The fewest time between two stateless resets the endpoint sends. quinn's
/// default (20 ms) would take 40 s to reset 2,000 clients after a restart;
/// resets are smaller than the packets that cause them, so they cannot
/// amplify a flood.
const MIN_RESET_INTERVAL: Duration = Duration::from_micros(100);

/// Why the endpoint's keys could not be loaded or made.
#[derive(Debug, Error)]
pub enum ResetKeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a key this router wrote.
    #[error("{path}: expected {SECRET_LEN} bytes, found {found}; delete the file to make a new key (connections of the previous run then wait for their idle timeout)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Its length.
        found: usize,
    },
    /// The system's random source failed.
    #[error("no random bytes for a new reset key")]
    Random,
}

/// The endpoint configuration, with the reset and connection-id keys
/// derived from the secret in `data_dir` (made if missing).
///
/// # Errors
/// [`ResetKeyError`]: an unreadable or corrupt key file, or a data dir
/// where it cannot be written.
pub fn endpoint_config(data_dir: &Path) -> Result<quinn::EndpointConfig, ResetKeyError> {
    let secret = load_or_make(&data_dir.join(RESET_KEY_FILE))?;
    let master = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    let reset = hmac::sign(&master, b"icom stateless reset key");
    let cids = hmac::sign(&master, b"icom connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cids.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config =
        quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
    config
        .cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        })
        .min_reset_interval(MIN_RESET_INTERVAL);
    Ok(config)
}

fn load_or_make(path: &Path) -> Result<[u8; SECRET_LEN], ResetKeyError> {
    let io = |source| ResetKeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::File::open(path) {
        Ok(file) => {
            let mut bytes = Vec::with_capacity(SECRET_LEN);
            // One byte more than a key, to tell a longer file.
            file.take(SECRET_LEN as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(io)?;
            <[u8; SECRET_LEN]>::try_from(bytes.as_slice()).map_err(|_| ResetKeyError::Corrupt {
                path: path.to_path_buf(),
                found: bytes.len(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; SECRET_LEN];
            SystemRandom::new()
                .fill(&mut secret)
                .map_err(|_| ResetKeyError::Random)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            write_secret(path, &secret).map_err(io)?;
            Ok(secret)
        }
        Err(e) => Err(io(e)),
    }
}

/// Writes the secret whole or not at all: a temporary file, synced, then
/// renamed over `path`.
fn write_secret(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("key.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(secret)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_secret_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join(RESET_KEY_FILE);
        let first = load_or_make(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        assert_eq!(load_or_make(&path).unwrap(), first);
        assert_ne!(first, [0u8; SECRET_LEN]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        endpoint_config(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_corrupt_secret_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESET_KEY_FILE);
        for len in [0, 31, 33, 4096] {
            std::fs::write(&path, vec![7u8; len]).unwrap();
            let err = load_or_make(&path).unwrap_err();
            assert!(
                matches!(err, ResetKeyError::Corrupt { found, .. } if found == len.min(33)),
                "{err}"
            );
            assert!(err.to_string().contains("delete the file"));
        }
    }
}

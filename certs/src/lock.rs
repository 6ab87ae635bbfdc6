//! One writer at a time in a certificate directory. Issuing reads the
//! index, signs and writes the index back; two processes doing that at
//! once (two `icom-certs` commands, or two routers started with `--dev` in
//! one empty directory) could lose a record or make two CAs. Each takes
//! the directory's lock first, an advisory OS lock on a file in it that
//! the OS releases when the process ends, however it ends.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::dir::DirError;
use crate::files;

/// The lock file in a certificate directory.
pub const LOCK_FILE: &str = ".lock";

/// The directory's lock, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if it is missing (owner-only on Unix) and waits until
    /// no other process holds its lock.
    ///
    /// # Errors
    /// [`DirError::CreateDir`] or [`DirError::Write`] when the directory or
    /// its lock file cannot be made or locked.
    pub fn acquire(dir: &Path) -> Result<DirLock, DirError> {
        files::create_dir(dir).map_err(|cause| DirError::CreateDir {
            path: dir.to_owned(),
            cause,
        })?;
        let path = dir.join(LOCK_FILE);
        let write_error = |cause| DirError::Write {
            path: path.clone(),
            cause,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(write_error)?;
        file.lock().map_err(write_error)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca");
        let first = DirLock::acquire(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _second = DirLock::acquire(&path).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "taken while the first holds it"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("taken once the first let go");
        waiter.join().unwrap();
    }
}

//! Writing certificate material to disk: atomically (a temp file in the same
//! directory, then a rename), private keys readable by their owner only, and
//! never over an existing file unless asked to.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Who may read a written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Secrecy {
    /// Certificates, CRLs, the index: the process umask decides.
    Public,
    /// Private keys: mode 0600 on unix.
    Private,
}

/// Writes `contents` to `path` atomically: a sibling temp file is written,
/// synced and renamed over `path`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], secrecy: Secrecy) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let result = write_new(&tmp, contents, secrecy).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        // Best effort: the temp file may not even exist.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The first of `paths` that exists, if any.
pub(crate) fn first_existing<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Option<&'a Path> {
    paths.into_iter().find(|p| p.exists())
}

/// Creates `dir` (and its parents) if missing, owner-only on unix.
pub(crate) fn create_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// A temp file name next to `path`, unique to this process.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Creates `path` (it must not exist), writes and syncs it.
fn write_new(path: &Path, contents: &[u8], secrecy: Secrecy) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secrecy == Secrecy::Private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secrecy;
    let mut file: File = match options.open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A temp file left by a crashed run of a process with our pid.
            fs::remove_file(path)?;
            options.open(path)?
        }
        other => other?,
    };
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pem");
        write_atomic(&path, b"one", Secrecy::Public).unwrap();
        write_atomic(&path, b"two", Secrecy::Public).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp file left behind");
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        write_atomic(&path, b"secret", Secrecy::Private).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn first_existing_finds_the_clash() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&b, "x").unwrap();
        assert_eq!(
            first_existing([a.as_path(), b.as_path()]),
            Some(b.as_path())
        );
        assert_eq!(first_existing([a.as_path()]), None);
    }
}

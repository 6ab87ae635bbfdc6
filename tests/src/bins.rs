//! The workspace's binaries, for tests in packages that do not own them
//! (cargo builds a dependency's library for a test, never its binaries).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Builds `bin` of `package` (once per test process) into the cargo target
/// dir the running test was built in, with the same profile, and returns
/// its path.
///
/// The variables cargo sets for the running test's own crate are removed
/// from the nested build: they would change build-script fingerprints
/// (ring's, among others) and make every later build start over.
///
/// # Panics
/// If the build fails.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = icom_protocol::lock(&BUILT);
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(bin) {
        return p.clone();
    }
    // target/<profile>/deps/<test>: the profile dir is two levels up.
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a cargo target layout")
        .to_owned();
    let target_dir = profile_dir.parent().expect("a cargo target dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let own = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                &*key,
                "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "RUST_RECURSION_COUNT"
            );
        if own {
            build.env_remove(&*key);
        }
    }
    let status = build
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bin",
            bin,
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building the {bin} binary");
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "no {bin} at {}", path.display());
    built.insert(bin.to_owned(), path.clone());
    path
}

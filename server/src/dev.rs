//! `--dev` mode: a throwaway CA, router certificate and client
//! certificates (two game servers, `server_1` and `server_2`, and an
//! operator, `ops`, for the `icom` CLI) in a directory, reused when
//! present, and a configuration that listens on 127.0.0.1:9090. With
//! `--config`, the file is layered over that configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use icom_certs::{
    CertDir, DirError, DirLock, CA_CERT_FILE, CRL_FILE, ROUTER_CERT_FILE, ROUTER_KEY_FILE,
};

use crate::config::ConfigFile;

/// The directory `--dev` uses, relative to the working directory.
pub const DEV_DIR: &str = "icom-dev";
/// The operator identity `--dev` mints for the `icom` CLI, which uses it
/// by default with `--dev`, so that it never replaces a game server's
/// connection.
pub const DEV_OPERATOR: &str = "ops";
/// The client identities `--dev` mints: two game servers and the operator.
pub const DEV_CLIENTS: [&str; 3] = ["server_1", "server_2", DEV_OPERATOR];
/// The address `--dev` listens on.
pub const DEV_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// Makes (or reuses) the dev PKI in `dir`, and returns a config file that
/// uses it (with `dir`'s paths as given: absolute ones survive a config
/// file layered over it, which rebases only relative paths).
///
/// # Errors
/// [`DirError`] when the directory cannot be written or holds a broken PKI.
pub fn prepare(dir: &Path) -> Result<ConfigFile, DirError> {
    // Another router started in the same directory at the same moment
    // prepares it first; this one then finds it ready. A directory that
    // is ready already is only read (it may be read-only).
    let ready = [CA_CERT_FILE, ROUTER_CERT_FILE]
        .into_iter()
        .map(|f| dir.join(f))
        .chain(DEV_CLIENTS.iter().map(|id| dir.join(format!("{id}.pem"))))
        .all(|f| f.exists());
    let _lock = if ready {
        None
    } else {
        Some(DirLock::acquire(dir)?)
    };
    let mut certs = if dir.join(CA_CERT_FILE).exists() {
        CertDir::open(dir)?
    } else {
        CertDir::init(dir, "ICOM dev CA (throwaway)", 3650, false)?
    };
    if !dir.join(ROUTER_CERT_FILE).exists() {
        certs.issue_router(
            &["localhost".to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            825,
            false,
        )?;
    }
    for id in DEV_CLIENTS {
        if !certs.client_paths(id).0.exists() {
            certs.issue_client(id, 825, false)?;
        }
    }
    let mut file = ConfigFile {
        listen: DEV_LISTEN,
        data_dir: dir.join("data"),
        ..ConfigFile::default()
    };
    file.tls.ca = dir.join(CA_CERT_FILE);
    file.tls.cert = dir.join(ROUTER_CERT_FILE);
    file.tls.key = dir.join(ROUTER_KEY_FILE);
    file.tls.crl = Some(dir.join(CRL_FILE));
    Ok(file)
}

/// The lines `--dev` prints: how to connect a client.
pub fn instructions(dir: &Path, addr: SocketAddr) -> String {
    let d = |f: &str| -> PathBuf { dir.join(f) };
    let (c1, k1) = (d("server_1.pem"), d("server_1.key"));
    format!(
        "ICOM router (dev mode) listening on {addr}\n\
         throwaway certificates in {dir}: CA {ca}, game servers server_1 and server_2, operator {DEV_OPERATOR}\n\
         connect a client as server_1:\n\
         \x20 icom listen --router {addr} --server-name localhost --ca {ca} --cert {c1} --key {k1}\n\
         or, from this directory: icom --dev --as server_1 listen\n\
         and send from server_2: icom --dev --as server_2 send --to server_1 --event hello --data '{{\"msg\":\"hi\"}}'\n\
         the CLI's own identity is {DEV_OPERATOR} (icom --dev peers, icom --dev listen --presence)",
        dir = dir.display(),
        ca = d("ca.pem").display(),
        c1 = c1.display(),
        k1 = k1.display(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use icom_certs::{Chains, Kind};

    use super::*;

    /// Routers started at the same moment in one empty directory share
    /// one CA, and each certificate is issued once.
    #[test]
    fn routers_preparing_one_directory_at_once_share_one_ca() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(DEV_DIR);
        let preparing: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || prepare(&dir).map(|_| ()))
            })
            .collect();
        for p in preparing {
            p.join().unwrap().unwrap();
        }
        let certs = CertDir::open(&dir).unwrap();
        let issued = certs.list();
        assert_eq!(
            issued.iter().filter(|e| e.kind == Kind::Router).count(),
            1,
            "{issued:?}"
        );
        assert_eq!(issued.len(), 1 + DEV_CLIENTS.len(), "{issued:?}");
        for file in ["router.pem", "server_1.pem", "server_2.pem", "ops.pem"] {
            let report = icom_certs::inspect(&dir.join(file), &dir).unwrap();
            assert_eq!(report.chains_to_ca, Chains::Yes, "{file}");
        }
    }
}

//! The router as a child process (`--spawn`, `idle`, `soak`): the real
//! `icom-server` binary with a generated PKI and configuration in a
//! temporary directory; and the client settings for routers the bench
//! did not start in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use icom_certs::testing::TestPki;
use icom_client::ClientConfig;
use icom_server::ConfigFile;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A router the bench did not start.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    /// The connection settings from the usual flags. A `{id}` in the
    /// certificate and key paths stands for each bench client's identity.
    pub(crate) base: ClientConfig,
    /// `--dev`: the identities are `server_1`, `server_2` of `./icom-dev`.
    pub(crate) dev: bool,
    /// Its process id on this machine, to measure it.
    pub(crate) pid: Option<u32>,
}

/// A fresh test PKI written into `dir`, and a router configuration that
/// uses it: 127.0.0.1 on any port, the store in `dir/data`.
///
/// # Errors
/// When the files cannot be written.
pub(crate) fn fresh_config(dir: &Path) -> anyhow::Result<(TestPki, ConfigFile)> {
    let pki = TestPki::new();
    let files = pki.write_to(dir)?;
    let mut file = ConfigFile {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.join("data"),
        ..ConfigFile::default()
    };
    file.tls.ca = files.ca_cert;
    file.tls.cert = files.router_cert;
    file.tls.key = files.router_key;
    file.tls.crl = Some(files.crl);
    Ok((pki, file))
}

/// A started `icom-server` child.
pub(crate) struct Spawned {
    pub(crate) addr: SocketAddr,
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) pki: Box<TestPki>,
    pub(crate) dir: TempDir,
}

/// Asks a child process to stop (SIGTERM).
#[cfg(unix)]
pub(crate) fn terminate(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not yet waited for, so it cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

#[cfg(not(unix))]
pub(crate) fn terminate(_pid: u32) {}

/// Starts `icom-server` with a fresh PKI and its configuration in a
/// temporary directory, and reads the address it listens on from its
/// (JSON) log.
pub(crate) async fn spawn(bin: &Path, tweak: impl Fn(&mut ConfigFile)) -> anyhow::Result<Spawned> {
    if !bin.is_file() {
        bail!(
            "no icom-server binary at {} (build it, or give --server-bin)",
            bin.display()
        );
    }
    let dir = tempfile::tempdir().context("making a temporary directory")?;
    let (pki, mut file) = fresh_config(dir.path())?;
    tweak(&mut file);
    let path = dir.path().join("icom-server.toml");
    std::fs::write(&path, toml_of(&file)?).context("writing the router's configuration")?;
    let mut child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(&path)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "warn,icom_server::server=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("the router exited at once")?;
    let stderr = child.stderr.take().context("the router's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = listening_addr(&line) {
                return Ok(addr);
            }
            eprintln!("icom-server: {line}");
        }
        bail!("icom-server exited before it listened")
    })
    .await
    .context("icom-server did not listen within 20 s")??;
    // Keep draining its log, so that it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "icom_bench::router", "{line}");
        }
    });
    Ok(Spawned {
        addr: found,
        child,
        pid,
        pki: Box::new(pki),
        dir,
    })
}

/// The configuration file for `file`: only the top-level keys that differ
/// from the defaults, so that an older binary (`--server-bin`), which
/// refuses keys it does not know, still reads it.
fn toml_of(file: &ConfigFile) -> anyhow::Result<String> {
    let value = |f: &ConfigFile| toml::Value::try_from(f).context("serialising the configuration");
    let (mut ours, defaults) = (value(file)?, value(&ConfigFile::default())?);
    if let (Some(t), Some(d)) = (ours.as_table_mut(), defaults.as_table()) {
        t.retain(|k, v| d.get(k) != Some(v));
    }
    toml::to_string(&ours).context("serialising the router's configuration")
}

/// The `addr` of the router's JSON `listening` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// Writes the certificate and key of `id` beside the PKI.
pub(crate) fn client_files(
    pki: &TestPki,
    dir: &Path,
    id: &str,
    dial: String,
) -> anyhow::Result<ClientConfig> {
    let issued = pki.client(id);
    let clients = dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    let cert = clients.join(format!("{id}.pem"));
    let key = clients.join(format!("{id}.key"));
    std::fs::write(&cert, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    Ok(ClientConfig::new(
        dial,
        "localhost",
        dir.join("ca.pem"),
        cert,
        key,
    ))
}

/// A remote router's client settings for `id`.
pub(crate) fn remote_client(r: &Remote, id: &str, dial: String) -> anyhow::Result<ClientConfig> {
    if r.dev {
        return Ok(ClientConfig {
            router: dial,
            ..ClientConfig::dev(id)
        });
    }
    let fill = |p: &Path| PathBuf::from(p.to_string_lossy().replace("{id}", id));
    if !r.base.cert.to_string_lossy().contains("{id}") {
        bail!(
            "a remote router needs a certificate per bench client: give --cert and --key with \
             '{{id}}' standing for the identity (the bench uses server_1, server_2, ...), or --dev"
        );
    }
    Ok(ClientConfig {
        router: dial,
        cert: fill(&r.base.cert),
        key: fill(&r.base.key),
        ..r.base.clone()
    })
}

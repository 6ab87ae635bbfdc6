//! A router running in-process for a test, with its PKI and files in a
//! temporary directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use icom_certs::testing::TestPki;
use icom_certs::Issued;
use icom_server::{Config, ConfigFile, ReloadHandle, ReloadReport, Server, Stats, StatsHandle};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::raw::RawClient;

type Mutate = Arc<dyn Fn(&mut ConfigFile) + Send + Sync>;

/// A router on 127.0.0.1 with a fresh test PKI (or, from
/// [`TestCluster::sibling`], the PKI of another: one cluster's routers).
pub struct TestCluster {
    pki: Arc<TestPki>,
    dir: TempDir,
    addr: SocketAddr,
    mutate: Mutate,
    running: Option<Running>,
}

struct Running {
    metrics: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    reload: ReloadHandle,
    stats: StatsHandle,
}

/// The files a client needs to connect to a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// The router's address.
    pub addr: SocketAddr,
    /// The name in the router's certificate.
    pub server_name: String,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The client certificate (PEM).
    pub cert: PathBuf,
    /// The client key (PEM).
    pub key: PathBuf,
}

impl TestCluster {
    /// Starts a router with the default configuration.
    pub async fn start() -> TestCluster {
        TestCluster::start_with(|_| {}).await
    }

    /// Starts a router whose configuration file `f` may change first.
    pub async fn start_with(f: impl Fn(&mut ConfigFile) + Send + Sync + 'static) -> TestCluster {
        TestCluster::start_on(Arc::new(TestPki::new()), Arc::new(f)).await
    }

    /// Starts a router with the PKI `pki` (another router's, from
    /// [`TestCluster::shared_pki`]) and the configuration changed by `f`.
    pub async fn start_with_pki(
        pki: Arc<TestPki>,
        f: impl Fn(&mut ConfigFile) + Send + Sync + 'static,
    ) -> TestCluster {
        TestCluster::start_on(pki, Arc::new(f)).await
    }

    /// Starts another router of the same cluster: the same CA and router
    /// name (`localhost`), so that a client's files work with both, and the
    /// same configuration changes; its own address and data dir.
    pub async fn sibling(&self) -> TestCluster {
        TestCluster::start_on(self.pki.clone(), self.mutate.clone()).await
    }

    /// As [`TestCluster::sibling`], with the configuration changed by `f`
    /// instead of this router's changes.
    pub async fn sibling_with(
        &self,
        f: impl Fn(&mut ConfigFile) + Send + Sync + 'static,
    ) -> TestCluster {
        TestCluster::start_on(self.pki.clone(), Arc::new(f)).await
    }

    async fn start_on(pki: Arc<TestPki>, mutate: Mutate) -> TestCluster {
        crate::init_tracing();
        let dir = tempfile::tempdir().expect("a temp dir");
        pki.write_to(dir.path()).expect("writing the test PKI");
        let mut cluster = TestCluster {
            pki,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            mutate,
            running: None,
        };
        cluster.launch().await;
        cluster
    }

    fn config_file(&self) -> ConfigFile {
        let d = self.dir.path();
        let mut file = ConfigFile {
            listen: self.addr,
            data_dir: d.join("data"),
            ..ConfigFile::default()
        };
        file.tls.ca = d.join("ca.pem");
        file.tls.cert = d.join("router.pem");
        file.tls.key = d.join("router.key");
        file.tls.crl = Some(d.join("crl.pem"));
        (self.mutate)(&mut file);
        file
    }

    async fn launch(&mut self) {
        let path = self.write_config_file();
        let config = Config::load(Some(&path)).expect("a valid test config");
        // A stopped router's socket is released by its endpoint driver a
        // moment after the stop: retry a bounded number of times.
        let mut tries = 0;
        let server = loop {
            match Server::bind(config.clone()).await {
                Ok(s) => break s,
                Err(icom_server::ServerError::Bind { .. }) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding the test router: {e}"),
            }
        };
        self.addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let reload = server.reload_handle();
        let stats = server.stats_handle();
        let metrics = server.metrics_addr();
        let task = tokio::spawn(server.run(shutdown.clone()));
        self.running = Some(Running {
            metrics,
            shutdown,
            task,
            reload,
            stats,
        });
    }

    /// Writes the configuration as the router's TOML file (what a reload
    /// re-reads) and returns its path.
    fn write_config_file(&self) -> PathBuf {
        let path = self.dir.path().join("icom-server.toml");
        let text = toml::to_string(&self.config_file()).expect("the config serialises");
        std::fs::write(&path, text).expect("writing the config file");
        path
    }

    /// Changes the configuration file (the reload picks it up): `f` runs
    /// after the start-up changes.
    pub fn rewrite_config(&mut self, f: impl Fn(&mut ConfigFile) + Send + Sync + 'static) {
        let before = self.mutate.clone();
        self.mutate = Arc::new(move |c| {
            before(c);
            f(c);
        });
        self.write_config_file();
    }

    /// The router's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The test PKI (its CA signed the router's certificate).
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The test PKI, shared (for another router of the same cluster).
    pub fn shared_pki(&self) -> Arc<TestPki> {
        self.pki.clone()
    }

    /// The temporary directory holding the PKI files and the data dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Mints a good client certificate for `id` and writes its files.
    pub fn client_files(&self, id: &str) -> ClientFiles {
        let issued = self.pki.client(id);
        self.files_for(id, &issued)
    }

    /// Writes the files of an already minted certificate under `name`.
    pub fn files_for(&self, name: &str, issued: &Issued) -> ClientFiles {
        let clients = self.dir.path().join("clients");
        std::fs::create_dir_all(&clients).expect("creating the clients dir");
        let cert = clients.join(format!("{name}.pem"));
        let key = clients.join(format!("{name}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("writing a client cert");
        std::fs::write(&key, &issued.key_pem).expect("writing a client key");
        ClientFiles {
            addr: self.addr,
            server_name: "localhost".to_owned(),
            ca: self.dir.path().join("ca.pem"),
            cert,
            key,
        }
    }

    /// Connects a raw peer with a good certificate for `id` and completes
    /// `hello` → `welcome`.
    pub async fn raw(&self, id: &str) -> RawClient {
        RawClient::welcomed(self.addr, &self.pki, id).await
    }

    /// As [`TestCluster::raw`], letting the router open at most `streams`
    /// delivery streams at once (a small number makes a recipient that
    /// does not read).
    ///
    /// # Panics
    /// If the handshake or `hello` fails.
    pub async fn raw_with_streams(&self, id: &str, streams: u32) -> RawClient {
        self.raw_issued(&self.pki.client(id), streams).await
    }

    /// As [`TestCluster::raw_with_streams`], with the certificate `issued`
    /// (kept by the caller, to revoke it later).
    ///
    /// # Panics
    /// If the handshake or `hello` fails.
    pub async fn raw_issued(&self, issued: &Issued, streams: u32) -> RawClient {
        let crypto = crate::raw::client_crypto(&self.pki, Some(issued));
        let mut c = RawClient::connect_opts(self.addr, crypto, streams)
            .await
            .expect("the handshake");
        c.hello().await.expect("welcome");
        c
    }

    /// As [`TestCluster::raw`], with a QUIC receive window of `window`
    /// bytes per stream: the router's writes to it (its acks on the control
    /// stream, a delivery) stop at that many unread bytes.
    ///
    /// # Panics
    /// If the handshake or `hello` fails.
    pub async fn raw_with_window(&self, id: &str, window: u32) -> RawClient {
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(window.into());
        let crypto = crate::raw::client_crypto(&self.pki, Some(&self.pki.client(id)));
        let mut c = RawClient::connect_transport(self.addr, crypto, transport)
            .await
            .expect("the handshake");
        c.hello().await.expect("welcome");
        c
    }

    /// Writes a CRL revoking `certs` where the router reads it.
    pub fn write_crl(&self, certs: &[&Issued]) {
        let pem = self.pki.crl_revoking(certs);
        std::fs::write(self.dir.path().join("crl.pem"), pem).expect("writing the CRL");
    }

    /// Reloads the running router.
    pub fn reload(&self) -> ReloadReport {
        self.running
            .as_ref()
            .expect("the router is running")
            .reload
            .reload()
            .expect("reloading the router")
    }

    /// Where the running router serves metrics, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().and_then(|r| r.metrics)
    }

    /// GETs `path` from the metrics endpoint; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.metrics_addr().expect("metrics are enabled");
        tokio::time::timeout(crate::WAIT, crate::http_get(addr, path))
            .await
            .expect("the metrics endpoint answers")
            .expect("an HTTP response with a status line")
    }

    /// The running router's counters.
    pub fn stats(&self) -> Stats {
        self.running
            .as_ref()
            .expect("the router is running")
            .stats
            .stats()
    }

    /// Stops the router (clients see `SHUTDOWN`) and waits until it has.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            tokio::time::timeout(crate::WAIT, r.task)
                .await
                .expect("the router stops within the bound")
                .expect("the router task does not panic");
        }
    }

    /// Starts the router again on the same address and data dir.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// Stops the router, leaves it down for `down` (a slow restart, an
    /// upgrade), and starts it again on the same address and data dir.
    pub async fn restart_after(&mut self, down: std::time::Duration) {
        self.stop().await;
        tokio::time::sleep(down).await;
        self.launch().await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown.cancel();
        }
    }
}

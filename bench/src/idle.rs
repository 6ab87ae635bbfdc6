//! `icom-bench idle`: K connected servers that send nothing, and what they
//! cost the router: resident memory per connection (its `VmRSS` with them,
//! less its `VmRSS` before them, over K), its peak, its descriptors, and
//! the CPU their keep-alives take. The router must be a process of its own
//! for its memory to be its own: the `icom-server` binary as a child (or a
//! remote router named by `--router-pid`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use icom_client::{Client, Events};
use tokio::sync::Semaphore;

use crate::cli::IdleArgs;
use crate::env::Env;
use crate::os;
use crate::report::{round, Report};
use crate::router::{Needs, Router};

/// Runs `idle`.
///
/// # Errors
/// When the router cannot be started or a server cannot connect.
pub(crate) async fn run(env: &Env, args: &IdleArgs) -> anyhow::Result<Report> {
    os::raise_fd_limit();
    let placement = env.own_process()?;
    let router = Router::start(
        &placement,
        Needs {
            connections: args.servers,
            ..Needs::default()
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let empty = router.usage();

    let started = Instant::now();
    let clients = connect_all(&router, args).await?;
    let connecting = started.elapsed();
    let settled = router.usage();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = router.usage();

    let k = u64::from(args.servers);
    let mut report = Report::new("idle");
    report.add("servers", "idle servers", k);
    report.add("connected", "connected", clients.len() as u64);
    report.seconds(
        "connect_seconds",
        "time to connect them all (s)",
        connecting,
    );
    report.rate("handshakes_per_s", "handshakes/s", k, connecting);
    if let (Some(before), Some(now)) = (empty.memory, after.memory) {
        let grown = now.rss_kib.saturating_sub(before.rss_kib);
        report.add(
            "router_rss_empty_kib",
            "router RSS, no one connected (KiB)",
            before.rss_kib,
        );
        report.add(
            "router_rss_kib",
            "router RSS, all connected (KiB)",
            now.rss_kib,
        );
        report.add("router_peak_rss_kib", "router peak RSS (KiB)", now.peak_kib);
        report.add(
            "rss_per_connection_kib",
            "RSS per connection (KiB)",
            round(grown as f64 / k.max(1) as f64, 2),
        );
        report.add(
            "router_rss_mib",
            "router RSS, all connected (MiB)",
            round(now.rss_kib as f64 / 1024.0, 1),
        );
    }
    report.add_opt("router_fds", "router file descriptors", after.fds);
    if let (Some(a), Some(b)) = (settled.cpu, after.cpu) {
        let cpu = b.saturating_sub(a);
        report.add(
            "idle_router_cores",
            "router cores busy while idle",
            round(cpu.as_secs_f64() / args.settle_secs.max(1) as f64, 4),
        );
    }
    if let (Some(a), Some(b)) = (empty.cpu, settled.cpu) {
        report.add(
            "router_cpu_ms_per_handshake",
            "router CPU per handshake (ms)",
            round(b.saturating_sub(a).as_secs_f64() * 1e3 / k.max(1) as f64, 3),
        );
    }
    report.add("method", "method", router.method());
    report.check(
        clients.len() as u64 == k,
        format!("{} of {k} servers connected", clients.len()),
    );
    close_all(clients).await;
    env.stop(router).await;
    Ok(report)
}

/// Connects `servers` clients, `concurrency` handshakes at a time.
async fn connect_all(router: &Router, args: &IdleArgs) -> anyhow::Result<Vec<(Client, Events)>> {
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::new();
    for i in 0..args.servers {
        let config = router.client(&format!("server_{}", i + 1))?;
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            Client::connect(config).await
        }));
    }
    let mut clients = Vec::with_capacity(tasks.len());
    for t in tasks {
        let client = t.await?.context("connecting an idle server")?;
        clients.push(client);
    }
    Ok(clients)
}

/// Closes every client, a few dozen at a time.
pub(crate) async fn close_all(clients: Vec<(Client, Events)>) {
    let mut tasks = Vec::new();
    for (client, events) in clients {
        tasks.push(tokio::spawn(async move {
            client.close().await;
            drop(events);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

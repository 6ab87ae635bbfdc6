//! `icom-bench join`: K servers connecting at once, as after a datacenter
//! restart. It measures the time until every one is welcomed, then until
//! presence has settled (every client knows every other), the presence
//! messages and batches the router sent (its `/metrics`), and the router's
//! CPU per join and peak memory. The router runs as a process of its own,
//! as for `idle`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use icom_client::{Client, ClientConfig, Events};
use tokio::sync::Semaphore;

use crate::cli::JoinArgs;
use crate::env::Env;
use crate::idle::close_all;
use crate::os;
use crate::report::{round, Report};
use crate::router::{Needs, Router};

/// Runs `join`.
///
/// # Errors
/// When the router cannot be started or a server cannot connect.
pub(crate) async fn run(env: &Env, args: &JoinArgs) -> anyhow::Result<Report> {
    os::raise_fd_limit();
    let metrics = SocketAddr::from(([127, 0, 0, 1], icom_tests::free_tcp_port()));
    let router = Router::start(
        &env.own_process()?,
        Needs {
            connections: args.servers,
            metrics: Some(metrics),
            ..Needs::default()
        },
    )
    .await?;
    let k = args.servers as usize;
    let mut configs = Vec::with_capacity(k);
    for i in 0..k {
        let mut config = router.client(&format!("server_{}", i + 1))?;
        config.connect_timeout_ms = args.timeout_secs * 1000;
        configs.push(config);
    }
    let before = router.usage();

    let started = Instant::now();
    let clients = connect_all(configs, args.concurrency).await?;
    let welcomed = started.elapsed();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let settled = loop {
        let known = clients
            .iter()
            .filter(|(c, _)| c.peers().len() + 1 == k)
            .count();
        if known == k {
            break Some(started.elapsed());
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = router.usage();
    let scraped = scrape(metrics).await;

    let mut report = Report::new("join");
    report.add("servers", "servers joining at once", k as u64);
    report.add("welcomed", "welcomed", clients.len() as u64);
    report.seconds("welcome_seconds", "time until all welcomed (s)", welcomed);
    report.rate("handshakes_per_s", "handshakes/s", k as u64, welcomed);
    if let Some(settled) = settled {
        report.seconds("settle_seconds", "time until presence settled (s)", settled);
    }
    for (key, label, metric) in [
        (
            "presence_messages",
            "presence messages sent",
            "icom_presence_messages_total",
        ),
        (
            "presence_batches",
            "presence batches sent",
            "icom_presence_batches_total",
        ),
    ] {
        let value = scraped
            .as_deref()
            .and_then(|body| icom_tests::metric(body, metric));
        report.add_opt(key, label, value.map(|v| v as u64));
    }
    if let (Some(a), Some(b)) = (before.cpu, after.cpu) {
        report.add(
            "router_cpu_ms_per_join",
            "router CPU per join, handshake and presence (ms)",
            round(b.saturating_sub(a).as_secs_f64() * 1e3 / k.max(1) as f64, 3),
        );
    }
    if let Some(m) = after.memory {
        report.add("router_peak_rss_kib", "router peak RSS (KiB)", m.peak_kib);
    }
    report.add("method", "method", router.method());
    report.check(
        clients.len() == k,
        format!("{} of {k} servers welcomed", clients.len()),
    );
    report.check(
        settled.is_some(),
        format!("presence did not settle within {} s", args.timeout_secs),
    );
    close_all(clients).await;
    env.stop(router).await;
    Ok(report)
}

/// Connects every config, `concurrency` handshakes at a time.
async fn connect_all(
    configs: Vec<ClientConfig>,
    concurrency: usize,
) -> anyhow::Result<Vec<(Client, Events)>> {
    let gate = Arc::new(Semaphore::new(concurrency.clamp(1, configs.len().max(1))));
    let tasks: Vec<_> = configs
        .into_iter()
        .map(|config| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await;
                Client::connect(config).await
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    for t in tasks {
        clients.push(t.await?.context("connecting a joining server")?);
    }
    Ok(clients)
}

/// The router's `/metrics` text, if it answers within a few seconds.
async fn scrape(addr: SocketAddr) -> Option<String> {
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        icom_tests::http_get(addr, "/metrics"),
    )
    .await
    .ok()??;
    (got.0 == 200).then_some(got.1)
}

//! `icom-bench soak`: mixed traffic through churn, for minutes or hours,
//! while the router's memory and descriptors are sampled. Steady servers
//! send direct events, broadcasts, requests (answered by each other),
//! persistent events under a few reused ids (so they replace each other),
//! events with a ttl for servers that come and go, and `forget`s. Churning
//! servers connect, disconnect and replace themselves (a second connection
//! with the same identity). The router is the `icom-server` binary as a
//! child process, so its figures are its own. Not part of CI.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use icom_client::{Client, Events, MsgPack, SendError, SendOptions, Target};
use icom_protocol::lock;
use rand::Rng;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::cli::SoakArgs;
use crate::env::Env;
use crate::os;
use crate::payload;
use crate::report::Report;
use crate::router::{Needs, Router};

/// Identities that come and go.
const CHURNERS: u32 = 8;
/// Persistent ids the steady servers reuse.
const PERSIST_IDS: u32 = 16;

/// Outcomes, by operation and result.
#[derive(Debug, Default)]
struct Tally {
    outcomes: Mutex<BTreeMap<String, u64>>,
    ops: AtomicU64,
    received: AtomicU64,
}

impl Tally {
    fn count(&self, what: String) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        *lock(&self.outcomes).entry(what).or_default() += 1;
    }
}

/// Runs `soak`.
///
/// # Errors
/// When the router or a steady server cannot be started.
pub(crate) async fn run(env: &Env, args: &SoakArgs) -> anyhow::Result<Report> {
    os::raise_fd_limit();
    let duration = match (args.minutes, args.seconds) {
        (_, Some(s)) => Duration::from_secs(s),
        (Some(m), None) => Duration::from_secs(m * 60),
        (None, None) => Duration::from_secs(600),
    };
    let placement = env.own_process()?;
    let mut router = Router::start(
        &placement,
        Needs {
            connections: args.servers + 2 * CHURNERS,
            ..Needs::default()
        },
    )
    .await?;
    let tally = Arc::new(Tally::default());
    // Traffic stops first; the inboxes keep answering until it has.
    let stop = CancellationToken::new();
    let stop_inboxes = CancellationToken::new();
    let mut inboxes = Vec::new();
    let mut tasks = Vec::new();
    let mut steady = Vec::new();
    for i in 0..args.servers {
        let (client, events) = env
            .connect(&router, &format!("server_{}", i + 1), 1024)
            .await?;
        inboxes.push(tokio::spawn(answer(
            events,
            tally.clone(),
            stop_inboxes.clone(),
        )));
        steady.push(client);
    }
    for (i, client) in steady.iter().enumerate() {
        let me = i as u32;
        tasks.push(tokio::spawn(traffic(
            client.clone(),
            me,
            args.clone(),
            tally.clone(),
            stop.clone(),
        )));
    }
    let churn = {
        let mut configs = Vec::new();
        for j in 0..CHURNERS {
            configs.push(router.client(&format!("churn_{j}"))?);
        }
        tokio::spawn(churn(configs, args.churn_ms, tally.clone(), stop.clone()))
    };

    let mut samples = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(args.sample_secs.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let usage = router.usage();
        let sample = (started.elapsed(), usage, tally.ops.load(Ordering::Relaxed));
        eprintln!(
            "soak t={:>5}s rss={} KiB fds={} ops={} received={}",
            sample.0.as_secs(),
            usage.memory.map_or(0, |m| m.rss_kib),
            usage.fds.unwrap_or(0),
            sample.2,
            tally.received.load(Ordering::Relaxed)
        );
        samples.push(sample);
        if started.elapsed() >= duration {
            break;
        }
    }
    stop.cancel();
    let _ = churn.await;
    for t in tasks {
        let _ = t.await;
    }
    stop_inboxes.cancel();
    for t in inboxes {
        let _ = t.await;
    }
    let end = router.usage();

    let mut report = Report::new("soak");
    report.seconds("seconds", "ran for (s)", started.elapsed());
    report.add("samples", "samples", samples.len() as u64);
    report.add("ops", "operations", tally.ops.load(Ordering::Relaxed));
    report.add(
        "received",
        "events received",
        tally.received.load(Ordering::Relaxed),
    );
    for (what, n) in lock(&tally.outcomes).iter() {
        report.add(&format!("outcome_{what}"), what, *n);
    }
    let rss: Vec<u64> = samples
        .iter()
        .filter_map(|s| s.1.memory.map(|m| m.rss_kib))
        .collect();
    let fds: Vec<u64> = samples.iter().filter_map(|s| s.1.fds).collect();
    for (key, label, v) in [
        ("rss_kib", "router RSS (KiB)", &rss),
        ("fds", "router fds", &fds),
    ] {
        if let (Some(first), Some(last)) = (v.first(), v.last()) {
            report.add(
                &format!("{key}_first"),
                &format!("{label}, first sample"),
                *first,
            );
            report.add(
                &format!("{key}_last"),
                &format!("{label}, last sample"),
                *last,
            );
            let max = v.iter().max().copied().unwrap_or(0);
            report.add(&format!("{key}_max"), &format!("{label}, highest"), max);
        }
    }
    report.add_opt(
        "router_peak_rss_kib",
        "router peak RSS (KiB)",
        end.memory.map(|m| m.peak_kib),
    );
    report.add("method", "method", router.method());
    report.check(router.alive(), "the router is still running");
    report.check(tally.ops.load(Ordering::Relaxed) > 0, "no operation ran");
    for c in steady {
        c.close().await;
    }
    env.stop(router).await;
    Ok(report)
}

/// One steady server's traffic: a mix of every kind of operation.
async fn traffic(
    client: Client,
    me: u32,
    args: SoakArgs,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let data = || MsgPack(payload::stamped(args.size));
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        n += 1;
        let (peer, slot, churner) = {
            let mut rng = rand::rng();
            let servers = args.servers.max(1);
            let peer = (me + 1 + rng.random_range(0..servers.max(2) - 1)) % servers;
            (
                format!("server_{}", peer + 1),
                rng.random_range(0..PERSIST_IDS),
                rng.random_range(0..CHURNERS),
            )
        };
        let (kind, outcome) = match n % 6 {
            0 => ("direct", sent(client.send(&peer, "soak", data()).await)),
            1 => ("broadcast", sent(client.broadcast("soak", data()).await)),
            2 => {
                let r = client
                    .request(&peer, "soak.req", data(), Duration::from_secs(10))
                    .await;
                let outcome = match r {
                    Ok(_) => "ok".to_owned(),
                    Err(icom_client::RequestError::Send(e)) => sent(Err(e)),
                    Err(e) => variant(&e),
                };
                ("request", outcome)
            }
            3 => {
                let options = SendOptions::new().persist(format!("soak-{slot}"));
                let r = client.send_to(Target::All, "soak", data(), options).await;
                ("persist", sent(r))
            }
            4 => {
                let to = Target::Server(format!("churn_{churner}"));
                let options = SendOptions::new().ttl(Duration::from_secs(30));
                (
                    "ttl",
                    sent(client.send_to(to, "soak", data(), options).await),
                )
            }
            _ => {
                let outcome = match client.forget(&format!("soak-{slot}")).await {
                    Ok(_) => "ok".to_owned(),
                    Err(icom_client::ForgetError::Refused { code, .. }) => code.as_str().to_owned(),
                    Err(e) => variant(&e),
                };
                ("forget", outcome)
            }
        };
        tally.count(format!("{kind}_{outcome}"));
    }
}

/// A send's outcome: `ok`, the ack's error code, or the error's kind.
fn sent(r: Result<icom_client::Ack, SendError>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(SendError::Refused { code, .. }) => code.as_str().to_owned(),
        Err(e) => variant(&e),
    }
}

/// An error's variant name, in snake case.
fn variant(e: &impl std::fmt::Debug) -> String {
    let debug = format!("{e:?}");
    let name: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A steady server's inbox: replies to requests, counts the rest.
async fn answer(mut events: Events, tally: Arc<Tally>, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            () = stop.cancelled() => return,
        };
        let Some(event) = event else { return };
        tally.received.fetch_add(1, Ordering::Relaxed);
        if event.event == "soak.req" {
            tokio::spawn(async move {
                let _ = event.reply(MsgPack::nil()).await;
            });
        }
    }
}

/// Connects, disconnects and replaces the churning identities.
async fn churn(
    configs: Vec<icom_client::ClientConfig>,
    every_ms: u64,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut live: Vec<Option<(Client, tokio::task::JoinHandle<()>)>> =
        (0..configs.len()).map(|_| None).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tick.tick().await;
        let (j, replace) = {
            let mut rng = rand::rng();
            (rng.random_range(0..configs.len()), rng.random_bool(0.3))
        };
        let step = match live[j].take() {
            Some((old, inbox)) if replace => {
                // A second connection with the same identity: the router
                // closes the older one with REPLACED.
                let step = match connect(&configs[j], &tally, &stop).await {
                    Some(new) => {
                        live[j] = Some(new);
                        "replace"
                    }
                    None => "replace_failed",
                };
                old.close().await;
                inbox.abort();
                step
            }
            Some((old, inbox)) => {
                old.close().await;
                inbox.abort();
                "disconnect"
            }
            None => match connect(&configs[j], &tally, &stop).await {
                Some(new) => {
                    live[j] = Some(new);
                    "connect"
                }
                None => "connect_failed",
            },
        };
        tally.count(format!("churn_{step}"));
    }
    for (client, inbox) in live.into_iter().flatten() {
        client.close().await;
        inbox.abort();
    }
}

/// Connects a churning identity and counts what it receives.
async fn connect(
    config: &icom_client::ClientConfig,
    tally: &Arc<Tally>,
    stop: &CancellationToken,
) -> Option<(Client, tokio::task::JoinHandle<()>)> {
    let (client, events) = Client::connect(config.clone()).await.ok()?;
    let inbox = tokio::spawn(answer(events, tally.clone(), stop.clone()));
    Some((client, inbox))
}

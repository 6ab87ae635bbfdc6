//! Cluster mode: this router and others share one routing space over
//! NATS (`[cluster]`). Live routing is core NATS, with no state on disk:
//!
//! - every router publishes on `<prefix>.view` which servers it holds: a
//!   change at once (a delta), everything every `heartbeat_ms` (a beat);
//!   a router silent for `router_timeout_ms` is gone, and so are its
//!   servers ([`view`]);
//! - an identity that connects here while another router holds it is
//!   taken over: a request to that router (`<prefix>.rtr.<name>.takeover`)
//!   closes the old connection with `REPLACED`; the newest claim holds
//!   wherever claims cross;
//! - an event for servers elsewhere goes once to each of their routers
//!   (`<prefix>.rtr.<name>.deliver`, a NATS request), which puts it in the
//!   recipients' outbound queues and answers per recipient.
//!
//! Persistent events and offline queues live in JetStream ([`Vault`]).
//! docs/PROTOCOL.md §12 says what clients see of it.

mod error;
mod follow;
mod forward;
mod import;
mod link;
mod mirror;
mod publish;
mod quiet;
mod stream;
mod vault;
mod view;
mod wire;

pub use error::ClusterError;
pub use import::{import_store, Imported, IMPORTED_FILE};
pub(crate) use vault::Vault;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use icom_protocol::lock;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::publish::Local;
use self::quiet::Every;
use self::quiet::Quiet;
use self::view::View;
use self::wire::{Notice, Outcome, Takeover};
use crate::clock::now_ms;
use crate::config::{Cluster, Config};
use crate::connection::retire;
use crate::metrics::{ClusterMetrics, Reason};
use crate::outbound::PushError;
use crate::router::{Owner, Peer, Table};
use crate::space::{Elsewhere, Pending, Reached, Space};

/// Local changes waiting for the publisher, at most; past it a change is
/// left to the next beat.
const CHANGES_QUEUE: usize = 65_536;

/// The least time between two moves of one identity from router to
/// router.
const TAKEOVER_HOLD: Duration = Duration::from_secs(1);

/// How long a connection whose identity another router took stays open at
/// most, for what was queued for it to be written and acknowledged. Only a
/// client that does not read or acknowledge meets it: a live one is done
/// within a few round trips, and a client that moved closes the old
/// connection itself 2 s after the move.
const RETIRE: Duration = Duration::from_secs(5);

/// The routing space of a cluster on NATS.
#[derive(Debug)]
pub(crate) struct Nats {
    cfg: Cluster,
    client: Client,
    table: Arc<Table>,
    view: Mutex<View>,
    epoch: u64,
    up: Arc<AtomicBool>,
    /// Wakes the publisher for a beat at once (after a reconnect).
    beat_now: Arc<Notify>,
    changes: mpsc::Sender<Local>,
    changes_rx: Mutex<Option<mpsc::Receiver<Local>>>,
    metrics: ClusterMetrics,
    /// Set when the router stops: its servers leave with the last notice.
    stopping: AtomicBool,
    forwarder: forward::Forwarder,
}

impl Nats {
    /// Connects to NATS (waiting at most `connect_timeout` for a first
    /// connection; the client keeps trying after that), and, if NATS is
    /// there, prepares the shared store.
    ///
    /// # Errors
    /// [`ClusterError`] for bad URLs, unreadable TLS files, or a NATS
    /// that cannot hold the store (too old, no JetStream, too few nodes).
    pub(crate) async fn connect(
        cfg: Cluster,
        config: &Config,
        table: Arc<Table>,
        metrics: ClusterMetrics,
    ) -> Result<(Arc<Nats>, Arc<Vault>), ClusterError> {
        let link::Link {
            client,
            up,
            beat_now,
            connects,
        } = link::connect(&cfg, config.limits.max_event_bytes, metrics.link_up.clone()).await?;
        let vault = Vault::new(
            &cfg,
            config,
            client.clone(),
            table.clone(),
            up.clone(),
            connects,
        );
        if up.load(Ordering::Acquire) {
            match vault.prepare().await {
                Ok(()) => {}
                // A NATS that cannot hold the store at all: say so now.
                Err(e) if e.is_lasting() => return Err(e),
                // Busy or electing: the store is prepared once it answers;
                // durable sends wait for it meanwhile.
                Err(e) => warn!("{e}; retrying"),
            }
        }
        let epoch = now_ms();
        let (changes, changes_rx) = mpsc::channel(CHANGES_QUEUE);
        let forwarder = forward::Forwarder::new(
            client.clone(),
            metrics.clone(),
            &cfg.prefix,
            cfg.request_timeout,
        );
        let nats = Arc::new(Nats {
            view: Mutex::new(View::new(&cfg.name, epoch, cfg.router_timeout)),
            cfg,
            client,
            table,
            epoch,
            up,
            beat_now,
            changes,
            changes_rx: Mutex::new(Some(changes_rx)),
            metrics,
            stopping: AtomicBool::new(false),
            forwarder,
        });
        Ok((nats, Arc::new(vault)))
    }

    fn subject(&self, router: &str, what: &str) -> String {
        format!("{}.rtr.{router}.{what}", self.cfg.prefix)
    }

    fn view_subject(&self) -> String {
        format!("{}.view", self.cfg.prefix)
    }

    /// Applies what the view says of `ids` to the table; a peer here
    /// whose identity another router claimed later is given up.
    fn settle(&self, ids: &[Arc<str>]) {
        let owners: Vec<(Arc<str>, Option<Owner>)> = {
            let view = lock(&self.view);
            ids.iter().map(|id| (id.clone(), view.owner(id))).collect()
        };
        for (id, owner) in owners {
            let newer = owner.clone();
            if let Some(peer) = self.table.set_remote(&id, owner) {
                if let Some(o) = newer {
                    let theirs = (o.since, &*o.router);
                    if theirs > (peer.since, self.cfg.name.as_str()) {
                        self.give_up(&peer, o);
                    }
                }
            }
        }
        let (routers, _) = lock(&self.view).counts();
        self.metrics.routers.set(routers as i64);
        self.metrics
            .remote_servers
            .set(self.table.remote_count() as i64);
    }

    /// Retires `peer` because `to` holds its identity now: nothing more is
    /// routed to it, what waits in its queue is still written, and it is
    /// closed with `REPLACED` once the client has acknowledged that, or
    /// after [`RETIRE`]. A client moving back to `to` reads the old
    /// connection until it closes, so nothing queued for it here is lost.
    fn give_up(&self, peer: &Arc<Peer>, to: Owner) {
        info!(server_id = %peer.server_id, router = %to.router, "identity taken over by another router");
        self.metrics.taken_over.inc();
        // Out of the table first: its cleanup then announces nothing, and
        // events for it go to `to` from now on.
        retire(&self.table, peer, RETIRE);
        let _ = self.changes.try_send(Local::Offline {
            id: peer.server_id.clone(),
            moved_to: Some(to),
        });
    }

    /// Applies the other routers' notices, and forgets the silent ones.
    async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut sub = match self.client.subscribe(self.view_subject()).await {
            Ok(s) => s,
            Err(e) => {
                error!("cluster: cannot subscribe to {}: {e}", self.view_subject());
                return;
            }
        };
        let mut expire = tokio::time::interval(self.cfg.heartbeat / 2);
        let mut quiet = Quiet::default();
        loop {
            tokio::select! {
                msg = futures_util::StreamExt::next(&mut sub) => {
                    let Some(msg) = msg else { return };
                    let notice = match Notice::decode(&msg.payload) {
                        Ok(n) => n,
                        Err(e) => {
                            if quiet.malformed.ready() {
                                warn!("cluster: a malformed notice on {} (said once a minute): {e}", msg.subject);
                            }
                            continue;
                        }
                    };
                    let applied = lock(&self.view).apply(notice, Instant::now());
                    if applied.same_name && quiet.same_name.ready() {
                        error!(name = %self.cfg.name, "cluster: another router runs under this router's name; cluster.name must be unique (said once a minute)");
                    }
                    self.settle(&applied.touched);
                }
                _ = expire.tick() => {
                    let (touched, gone) = lock(&self.view).expire(Instant::now(), self.cfg.router_timeout);
                    for router in &gone {
                        warn!(router = %router, "cluster: router silent for {:?}: its servers are gone", self.cfg.router_timeout);
                    }
                    if !touched.is_empty() || !gone.is_empty() {
                        self.settle(&touched);
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Answers other routers' forwards and takeovers.
    async fn serve(self: Arc<Self>, shutdown: CancellationToken) {
        let subscribe = |what: &str| self.client.subscribe(self.subject(&self.cfg.name, what));
        let (mut deliver, mut takeover) =
            match (subscribe("deliver").await, subscribe("takeover").await) {
                (Ok(d), Ok(t)) => (d, t),
                (Err(e), _) | (_, Err(e)) => {
                    error!("cluster: cannot subscribe to this router's subjects: {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                msg = futures_util::StreamExt::next(&mut deliver) => {
                    let Some(msg) = msg else { return };
                    let Some(reply) = msg.reply else { continue };
                    let answer = match wire::decode_batch(msg.payload) {
                        Ok(events) => {
                            self.metrics.received.inc_by(events.len() as u64);
                            let mut outcomes = Vec::new();
                            for (ids, event) in &events {
                                outcomes.extend(self.deliver_here(ids, event));
                            }
                            wire::encode_outcomes(&outcomes)
                        }
                        Err(e) => {
                            warn!("cluster: a malformed forward: {e}");
                            continue;
                        }
                    };
                    let _ = self.client.publish(reply, answer).await;
                }
                msg = futures_util::StreamExt::next(&mut takeover) => {
                    let Some(msg) = msg else { return };
                    match Takeover::decode(&msg.payload) {
                        Ok(t) => self.taken(t),
                        Err(e) => warn!("cluster: a malformed takeover: {e}"),
                    }
                    if let Some(reply) = msg.reply {
                        let _ = self.client.publish(reply, Bytes::new()).await;
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Puts a forwarded event in the queues of the recipients here.
    fn deliver_here(&self, ids: &[String], event: &Bytes) -> Vec<Outcome> {
        ids.iter()
            .map(|id| match self.table.local(id) {
                Some(peer) => match peer.outbound.push(event.clone()) {
                    Ok(()) => Outcome::Delivered,
                    Err(PushError::Full) => Outcome::Congested,
                    Err(PushError::Closed) => Outcome::NotFound,
                },
                None => match self.table.remote_owner(id) {
                    Some(o) => Outcome::Moved(o.router.to_string()),
                    None => Outcome::NotFound,
                },
            })
            .collect()
    }

    /// Another router claims `t.id`: the connection here gives it up if
    /// the claim is newer.
    fn taken(&self, t: Takeover) {
        let Some(peer) = self.table.local(&t.id) else {
            return;
        };
        if (t.since, t.by.as_str()) <= (peer.since, self.cfg.name.as_str()) {
            debug!(server_id = %t.id, by = %t.by, "an older claim than the connection here: kept");
            return;
        }
        let owner = Owner {
            router: t.by.into(),
            since: t.since,
        };
        self.table.set_remote(&peer.server_id, Some(owner.clone()));
        self.give_up(&peer, owner);
    }
}

impl Nats {
    async fn forward_to(
        &self,
        router: &Arc<str>,
        ids: &[Arc<str>],
        wire: &Bytes,
    ) -> Vec<Result<Reached, String>> {
        self.forwarder.forward(router, ids, wire).await
    }
}

impl Space for Nats {
    fn joined<'a>(&'a self, peer: &'a Arc<Peer>) -> Pending<'a, ()> {
        Box::pin(async move {
            if let Some(owner) = self.table.remote_owner(&peer.server_id) {
                // An identity that moved less than TAKEOVER_HOLD ago waits
                // for the rest of it: one that flaps between routers (two
                // copies of one certificate) moves at most once per hold.
                let age = now_ms().saturating_sub(owner.since);
                let hold = TAKEOVER_HOLD.as_millis() as u64;
                if age < hold {
                    self.metrics.takeovers_held.inc();
                    tokio::time::sleep(Duration::from_millis(hold - age)).await;
                }
                if self.reachable() {
                    let ask = Takeover {
                        id: peer.server_id.to_string(),
                        by: self.cfg.name.clone(),
                        since: peer.since,
                    };
                    let subject = self.subject(&owner.router, "takeover");
                    if let Err(e) = self.client.request(subject, ask.encode()).await {
                        debug!(router = %owner.router, "takeover not confirmed: {e}");
                    }
                }
            }
            peer.announced.store(true, Ordering::Release);
            let _ = self.changes.try_send(Local::Online {
                id: peer.server_id.clone(),
                since: peer.since,
            });
        })
    }

    fn left(&self, server_id: &str, _session: u64) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let _ = self.changes.try_send(Local::Offline {
            id: server_id.into(),
            moved_to: None,
        });
    }

    fn forward(&self, to: Elsewhere, wire: Bytes) -> Pending<'_, Vec<(Arc<str>, Reached)>> {
        Box::pin(async move {
            let mut out = Vec::new();
            if !self.reachable() {
                for id in to.into_iter().flat_map(|(_, ids)| ids) {
                    out.push((
                        id,
                        Reached::Unreachable("this router has lost the cluster (NATS)".into()),
                    ));
                }
                self.metrics
                    .forward_failures
                    .get_or_create(&Reason {
                        reason: "link_down".into(),
                    })
                    .inc();
                return out;
            }
            let asks = to
                .iter()
                .map(|(router, ids)| self.forward_to(router, ids, &wire));
            let answers = futures_util::future::join_all(asks).await;
            // Recipients that moved meanwhile: asked once more, at their
            // new router.
            let mut moved: HashMap<String, Vec<Arc<str>>> = HashMap::new();
            for ((router, ids), reached) in to.into_iter().zip(answers) {
                for (id, r) in ids.into_iter().zip(reached) {
                    match r {
                        Err(to) if to != *router && to != self.cfg.name => {
                            moved.entry(to).or_default().push(id);
                        }
                        // It moved here meanwhile.
                        Err(to) if to == self.cfg.name => {
                            let here = match self.deliver_here(&[id.to_string()], &wire).pop() {
                                Some(Outcome::Delivered) => Reached::Delivered,
                                Some(Outcome::Congested) => Reached::Congested,
                                _ => Reached::NotFound,
                            };
                            out.push((id, here));
                        }
                        Err(_) => out.push((id, Reached::NotFound)),
                        Ok(r) => out.push((id, r)),
                    }
                }
            }
            for (router, ids) in moved {
                let reached = self.forward_to(&Arc::from(router), &ids, &wire).await;
                for (id, r) in ids.into_iter().zip(reached) {
                    out.push((id, r.unwrap_or(Reached::NotFound)));
                }
            }
            out
        })
    }

    fn reachable(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn run(self: Arc<Self>, shutdown: CancellationToken) -> Pending<'static, ()> {
        Box::pin(async move {
            let Some(rx) = lock(&self.changes_rx).take() else {
                return;
            };
            info!(name = %self.cfg.name, prefix = %self.cfg.prefix, "cluster: joining over NATS");
            let publisher = publish::Publisher {
                client: self.client.clone(),
                subject: self.view_subject(),
                router: self.cfg.name.clone(),
                epoch: self.epoch,
                heartbeat: self.cfg.heartbeat,
                table: self.table.clone(),
                up: self.up.clone(),
                beat_now: self.beat_now.clone(),
                rtt: self.metrics.nats_rtt.clone(),
            };
            let publish = tokio::spawn(publisher.run(rx, shutdown.clone()));
            let watch = tokio::spawn(self.clone().watch(shutdown.clone()));
            let serve = tokio::spawn(self.clone().serve(shutdown.clone()));
            let _ = tokio::join!(publish, watch, serve);
            // Its servers are moving to other routers (clients that were
            // closed with SHUTDOWN dial the next router at once): give them
            // a moment to claim their identities there, then tell the
            // others that this router is gone, so
            // that a moved server never shows as offline and one that did
            // not move goes at once, not after router_timeout_ms.
            let grace = self
                .cfg
                .heartbeat
                .clamp(Duration::from_millis(250), Duration::from_secs(2));
            tokio::time::sleep(grace).await;
            let bye = Notice::Gone {
                router: self.cfg.name.clone(),
                epoch: self.epoch,
            };
            if self.reachable() {
                let _ = self.client.publish(self.view_subject(), bye.encode()).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
            }
        })
    }
}

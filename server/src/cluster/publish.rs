//! This router's side of `<prefix>.view`: every change of the servers held
//! here at once (a delta, numbered), and all of them every heartbeat (a
//! beat, from the routing table itself, so that a delta lost or dropped is
//! repaired by the next beat).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::wire::{Change, Member, Notice};
use crate::router::{Owner, Table};

/// A change of the servers held here, for the publisher.
#[derive(Debug)]
pub(super) enum Local {
    Online {
        id: Arc<str>,
        since: u64,
    },
    Offline {
        id: Arc<str>,
        moved_to: Option<Owner>,
    },
}

/// What the publisher needs.
pub(super) struct Publisher {
    pub(super) client: Client,
    pub(super) subject: String,
    pub(super) router: String,
    pub(super) epoch: u64,
    pub(super) heartbeat: Duration,
    pub(super) table: Arc<Table>,
    pub(super) up: Arc<AtomicBool>,
    pub(super) beat_now: Arc<Notify>,
    pub(super) rtt: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Publisher {
    /// Publishes the changes of the servers held here, and a beat every
    /// `heartbeat`; measures the NATS round trip at each beat.
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Local>, shutdown: CancellationToken) {
        let subject = self.subject.clone();
        let mut seq = 0u64;
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            let beat = tokio::select! {
                n = rx.recv_many(&mut batch, 1024) => {
                    if n == 0 { return; }
                    false
                }
                _ = tick.tick() => true,
                () = self.beat_now.notified() => true,
                () = shutdown.cancelled() => return,
            };
            let notice = if beat {
                let members = self
                    .table
                    .claims()
                    .into_iter()
                    .map(|(id, since)| Member { id, since })
                    .collect();
                Notice::Beat {
                    router: self.router.clone(),
                    epoch: self.epoch,
                    seq,
                    members,
                }
            } else {
                seq += 1;
                let changes = batch
                    .drain(..)
                    .map(|c| match c {
                        Local::Online { id, since } => Change {
                            id: id.to_string(),
                            since,
                            online: true,
                            moved_to: None,
                        },
                        Local::Offline { id, moved_to } => Change {
                            id: id.to_string(),
                            since: moved_to.as_ref().map_or(0, |o| o.since),
                            online: false,
                            moved_to: moved_to.map(|o| o.router.to_string()),
                        },
                    })
                    .collect();
                Notice::Delta {
                    router: self.router.clone(),
                    epoch: self.epoch,
                    seq,
                    changes,
                }
            };
            if let Err(e) = self.client.publish(subject.clone(), notice.encode()).await {
                debug!("cluster: publishing a notice failed: {e}");
            }
            if beat && self.up.load(Ordering::Acquire) {
                let t = Instant::now();
                if self.client.flush().await.is_ok() {
                    self.rtt.set(t.elapsed().as_secs_f64());
                }
            }
        }
    }
}

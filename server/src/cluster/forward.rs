//! Events for servers of another router: one NATS request to its
//! `deliver` subject per batch, and what became of each recipient. Each
//! other router has a queue and a task; the task takes whatever events
//! are waiting (at most [`BATCH_EVENTS`] and about [`BATCH_BYTES`]) and
//! sends them as one request, at once: under load, events travel
//! together and NATS's cost per message is shared; one event alone waits
//! for nothing. Up to [`BATCHES_IN_FLIGHT`] requests per router are
//! answered at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use icom_protocol::lock;
use tokio::sync::{mpsc, oneshot};

use super::wire::{self, Outcome};
use crate::metrics::{ClusterMetrics, Reason};
use crate::space::Reached;

/// The most events in one request.
const BATCH_EVENTS: usize = 1024;
/// A request takes no event that would make it larger than this, as
/// encoded (NATS's default `max_payload` is 1 MiB; one event alone, up to
/// `limits.max_event_bytes` with its recipients, goes by itself).
const BATCH_BYTES: usize = 256 << 10;
/// Requests to one router waiting for their answer at once.
const BATCHES_IN_FLIGHT: usize = 64;
/// Events waiting for one router's task, at most; a send past it waits.
const QUEUE: usize = 16_384;
/// Other routers with a queue, at most (names come from NATS notices).
const MAX_ROUTERS: usize = 1024;

/// What became of each recipient of one event (`Err`: it moved to that
/// router).
pub(super) type Answer = Vec<Result<Reached, String>>;

/// A router's queue, and its task's state.
type Queue = (mpsc::Sender<Job>, Arc<Target>);

struct Job {
    ids: Vec<Arc<str>>,
    wire: Bytes,
    done: oneshot::Sender<Answer>,
}

/// The queues to the other routers.
#[derive(Debug)]
pub(super) struct Forwarder {
    client: Client,
    metrics: ClusterMetrics,
    prefix: String,
    timeout: Duration,
    queues: Mutex<HashMap<Arc<str>, Queue>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} recipients)", self.ids.len())
    }
}

impl Forwarder {
    pub(super) fn new(
        client: Client,
        metrics: ClusterMetrics,
        prefix: &str,
        timeout: Duration,
    ) -> Forwarder {
        Forwarder {
            client,
            metrics,
            prefix: prefix.to_owned(),
            timeout,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Hands `wire` for `ids` to `router`, and waits for its answer.
    pub(super) async fn forward(
        &self,
        router: &Arc<str>,
        ids: &[Arc<str>],
        wire: &Bytes,
    ) -> Answer {
        let unreachable = |why: &str| vec![Ok(Reached::Unreachable(why.to_owned())); ids.len()];
        let Some((queue, target)) = self.queue(router) else {
            return unreachable("too many routers");
        };
        let (done, answer) = oneshot::channel();
        let job = Job {
            ids: ids.to_vec(),
            wire: wire.clone(),
            done,
        };
        if target.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            // Nothing queued or in flight: no batch to join, so it goes
            // from here, a hand-off to the router's task the fewer.
            target.send(vec![job]).await;
        } else if queue.send(job).await.is_err() {
            target.busy.fetch_sub(1, Ordering::AcqRel);
            return unreachable("the router's queue is closed");
        }
        answer
            .await
            .unwrap_or_else(|_| unreachable("the forward was dropped"))
    }

    fn queue(&self, router: &Arc<str>) -> Option<Queue> {
        let mut queues = lock(&self.queues);
        if let Some((q, t)) = queues.get(router) {
            if !q.is_closed() {
                return Some((q.clone(), t.clone()));
            }
        }
        if queues.len() >= MAX_ROUTERS {
            // The idle ones go (routers come and go under new names over
            // a cluster's life): a task ends once its queue is dropped and
            // empty, and a router asked again gets a new one.
            queues.retain(|_, (q, t)| !q.is_closed() && t.busy.load(Ordering::Acquire) > 0);
            if queues.len() >= MAX_ROUTERS {
                return None;
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let to = Arc::new(Target {
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            router: router.clone(),
            subject: format!("{}.rtr.{router}.deliver", self.prefix),
            timeout: self.timeout,
            busy: AtomicUsize::new(0),
        });
        tokio::spawn(to.clone().run(rx));
        queues.insert(router.clone(), (tx.clone(), to.clone()));
        Some((tx, to))
    }
}

/// One other router, as its task sees it.
#[derive(Debug)]
struct Target {
    client: Client,
    metrics: ClusterMetrics,
    router: Arc<str>,
    subject: String,
    timeout: Duration,
    /// Events queued or in flight to it.
    busy: AtomicUsize,
}

impl Target {
    /// Takes batches off the queue and sends them, polling the requests
    /// in flight itself (no task per batch: one wake-up fewer per event
    /// at low load).
    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) {
        let mut in_flight = FuturesUnordered::new();
        // A job taken that did not fit the last batch: the next one's first.
        let mut held: Option<Job> = None;
        loop {
            let first = match held.take() {
                Some(job) if in_flight.len() < BATCHES_IN_FLIGHT => job,
                other => {
                    held = other;
                    tokio::select! {
                        Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                        first = rx.recv(), if held.is_none() && in_flight.len() < BATCHES_IN_FLIGHT => {
                            match first {
                                Some(job) => job,
                                None => break,
                            }
                        }
                    }
                }
            };
            let jobs = batch(first, &mut rx, &mut held);
            in_flight.push(self.send(jobs));
        }
        while in_flight.next().await.is_some() {}
    }

    async fn send(&self, jobs: Vec<Job>) {
        // Counted out even if this is dropped half-way (the sender's
        // connection ended): the count must not stay up for ever.
        let _done = Done(&self.busy, jobs.len());
        self.answer(jobs).await;
    }

    async fn answer(&self, jobs: Vec<Job>) {
        let body = wire::encode_batch(jobs.iter().map(|j| (&j.ids[..], &j.wire)));
        let counts: Vec<usize> = jobs.iter().map(|j| j.ids.len()).collect();
        self.metrics.forwarded.inc_by(jobs.len() as u64);
        let answers = match self.client.request(self.subject.clone(), body).await {
            Ok(msg) => match wire::decode_outcomes(msg.payload, counts.iter().sum()) {
                Ok(outcomes) => Ok(outcomes),
                Err(e) => Err(self.failed("error", format!("answered badly: {e}"))),
            },
            // Nobody listens on its subject: it is reconnecting to NATS,
            // or dead and not yet timed out. Either way it cannot be
            // asked now.
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                Err(self.failed("no_router", "is not listening on NATS".into()))
            }
            Err(e) if e.kind() == RequestErrorKind::TimedOut => Err(self.failed(
                "timeout",
                format!("did not answer within {} ms", self.timeout.as_millis()),
            )),
            Err(e) => Err(self.failed("error", format!("could not be asked: {e}"))),
        };
        match answers {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (job, n) in jobs.into_iter().zip(counts) {
                    let answer = outcomes.by_ref().take(n).map(reached).collect();
                    let _ = job.done.send(answer);
                }
            }
            Err(why) => {
                for job in jobs {
                    let _ = job
                        .done
                        .send(vec![Ok(Reached::Unreachable(why.clone())); job.ids.len()]);
                }
            }
        }
    }

    /// Counts a failed request by `kind`; the message for the ack.
    fn failed(&self, kind: &str, what: String) -> String {
        self.metrics
            .forward_failures
            .get_or_create(&Reason {
                reason: kind.to_owned(),
            })
            .inc();
        format!("router '{}' {what}", self.router)
    }
}

/// A batch: `first`, and the jobs waiting behind it while they fit in
/// [`BATCH_EVENTS`] and [`BATCH_BYTES`] (as encoded, recipients and all);
/// the first that does not fit is left in `held`. One job alone may be
/// larger: it goes by itself.
fn batch(first: Job, rx: &mut mpsc::Receiver<Job>, held: &mut Option<Job>) -> Vec<Job> {
    let mut size = encoded_len(&first);
    let mut jobs = vec![first];
    while jobs.len() < BATCH_EVENTS {
        let Ok(job) = rx.try_recv() else { break };
        let more = encoded_len(&job);
        if size + more > BATCH_BYTES {
            *held = Some(job);
            break;
        }
        size += more;
        jobs.push(job);
    }
    jobs
}

/// What `job` adds to a batch ([`wire::encode_batch`]): its length, its
/// count of recipients, each recipient with its length, and the event.
fn encoded_len(job: &Job) -> usize {
    8 + job.ids.iter().map(|id| 1 + id.len()).sum::<usize>() + job.wire.len()
}

/// Takes events out of a [`Target`]'s count when dropped.
struct Done<'a>(&'a AtomicUsize, usize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

fn reached(o: Outcome) -> Result<Reached, String> {
    match o {
        Outcome::Delivered => Ok(Reached::Delivered),
        Outcome::Congested => Ok(Reached::Congested),
        Outcome::NotFound => Ok(Reached::NotFound),
        Outcome::Moved(to) => Err(to),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn job(recipients: usize, id_len: usize, event: usize) -> Job {
        Job {
            ids: (0..recipients)
                .map(|i| Arc::from(format!("{i:0id_len$}").as_str()))
                .collect(),
            wire: Bytes::from(vec![7u8; event]),
            done: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_counts_its_recipients_and_stays_within_its_bytes() {
        // 100 broadcasts, each to 500 servers of 20-character ids there:
        // about 10 KiB of recipients to 300 bytes of event.
        let (tx, mut rx) = mpsc::channel(QUEUE);
        for _ in 0..100 {
            tx.try_send(job(500, 20, 300)).unwrap();
        }
        let mut held = None;
        let mut batches = Vec::new();
        let first = rx.try_recv().unwrap();
        let mut next = Some(first);
        while let Some(first) = next {
            let jobs = batch(first, &mut rx, &mut held);
            let body = wire::encode_batch(jobs.iter().map(|j| (&j.ids[..], &j.wire)));
            assert_eq!(body.len(), jobs.iter().map(encoded_len).sum::<usize>());
            assert!(body.len() <= BATCH_BYTES, "{} bytes", body.len());
            batches.push(jobs.len());
            next = held.take().or_else(|| rx.try_recv().ok());
        }
        assert_eq!(batches.iter().sum::<usize>(), 100, "{batches:?}");
        assert!(batches.len() >= 4, "{batches:?}");
    }

    #[test]
    fn an_event_larger_than_a_batch_goes_alone() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        tx.try_send(job(1, 8, 100)).unwrap();
        let mut held = None;
        let jobs = batch(job(1, 8, BATCH_BYTES + 1), &mut rx, &mut held);
        assert_eq!(jobs.len(), 1);
        assert_eq!(held.take().map(|j| j.wire.len()), Some(100));
        // And small ones fill a batch up to its count.
        for _ in 0..BATCH_EVENTS + 5 {
            tx.try_send(job(1, 8, 10)).unwrap();
        }
        let jobs = batch(job(1, 8, 10), &mut rx, &mut held);
        assert_eq!(jobs.len(), BATCH_EVENTS);
    }

    #[tokio::test]
    async fn the_queues_of_idle_routers_make_room_for_new_ones() {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .unwrap();
        let f = Forwarder::new(
            client,
            ClusterMetrics::default(),
            "icom",
            Duration::from_secs(1),
        );
        let busy = f.queue(&Arc::from("busy")).unwrap();
        busy.1.busy.store(1, Ordering::Release);
        for i in 1..MAX_ROUTERS {
            assert!(f.queue(&Arc::from(format!("r{i}").as_str())).is_some());
        }
        assert_eq!(lock(&f.queues).len(), MAX_ROUTERS);
        // A router never seen before, with every place taken: the idle
        // ones go, the busy one stays.
        assert!(f.queue(&Arc::from("new")).is_some());
        let queues = lock(&f.queues);
        assert_eq!(queues.len(), 2);
        assert!(queues.contains_key("busy") && queues.contains_key("new"));
    }
}

//! One recipient's outbound queue: encoded deliveries waiting for their
//! stream, bounded in count and bytes. Past either bound a push fails and
//! the sender's ack says `congested`; the router's memory does not grow.
//!
//! A queue ends in one of three ways: taken when its connection ends
//! ([`Outbound::take_waiting`], for the deliveries to be passed on to where
//! the identity is now), handed over to the connection that replaced it
//! here ([`Outbound::hand_over`]), or finished when another router of a
//! cluster took the identity ([`Outbound::finish`]): what waits is still
//! written to the old connection, which the client reads until it closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use icom_protocol::lock;
use tokio::sync::Notify;

/// A bounded FIFO of encoded deliveries for one connection.
#[derive(Debug)]
pub(crate) struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    /// Wakes [`Outbound::retired`] once the writer of a finished queue is
    /// done.
    done: Notify,
    /// Set by [`Outbound::finish`]; read by the writer for each delivery
    /// (an atomic, not the lock).
    finishing: AtomicBool,
    max_events: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    closed: bool,
    /// The writer of a finished queue wrote everything and saw it
    /// acknowledged ([`Outbound::all_written`]).
    retired: bool,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue is at its bound.
    Full,
    /// The connection is gone.
    Closed,
}

impl Outbound {
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> Outbound {
        Outbound {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            done: Notify::new(),
            finishing: AtomicBool::new(false),
            max_events,
            max_bytes,
        }
    }

    /// Queues one delivery, unless the queue is at a bound or closed.
    pub(crate) fn push(&self, item: Bytes) -> Result<(), PushError> {
        {
            let mut s = lock(&self.state);
            if s.closed {
                return Err(PushError::Closed);
            }
            if s.queue.len() >= self.max_events || s.bytes + item.len() > self.max_bytes {
                return Err(PushError::Full);
            }
            s.bytes += item.len();
            s.queue.push_back(item);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Moves every waiting delivery into `out`, waiting for one if there is
    /// none. Returns false once the queue is closed (or finished) and
    /// drained. The bytes taken still count against the bound until
    /// [`Outbound::written`] says they left, so a writer stuck on a stream
    /// holds at most the bound, not the bound again in its hand.
    pub(crate) async fn pop_all(&self, out: &mut Vec<Bytes>) -> bool {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = lock(&self.state);
                if !s.queue.is_empty() {
                    out.extend(s.queue.drain(..));
                    return true;
                }
                if s.closed {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Releases `len` bytes taken by [`Outbound::pop_all`]: handed to QUIC,
    /// or dropped.
    pub(crate) fn written(&self, len: usize) {
        let mut s = lock(&self.state);
        s.bytes = s.bytes.saturating_sub(len);
    }

    /// Closes the queue to pushes and keeps what waits, for the writer to
    /// write; the writer then says so with [`Outbound::all_written`].
    pub(crate) fn finish(&self) {
        self.finishing.store(true, Ordering::Release);
        lock(&self.state).closed = true;
        self.notify.notify_one();
    }

    /// Whether the queue was finished ([`Outbound::finish`]): what the
    /// writer writes now is the last, and worth watching until the client
    /// has it.
    pub(crate) fn is_finishing(&self) -> bool {
        self.finishing.load(Ordering::Acquire)
    }

    /// Said by the writer once a finished queue is written and what it
    /// wrote acknowledged; wakes [`Outbound::retired`].
    pub(crate) fn all_written(&self) {
        lock(&self.state).retired = true;
        self.done.notify_waiters();
    }

    /// Waits until the writer of this finished queue says
    /// [`Outbound::all_written`].
    pub(crate) async fn retired(&self) {
        loop {
            let done = self.done.notified();
            if lock(&self.state).retired {
                return;
            }
            done.await;
        }
    }

    /// Closes this queue and moves what waits in it to `to` (the queue of
    /// the connection that replaced this one), as far as `to`'s bounds
    /// allow. Returns how many did not fit and were dropped. What this
    /// queue's writer has taken already it writes, or passes on when it
    /// cannot open a stream ([`crate::deliveries::pass_on`]).
    pub(crate) fn hand_over(&self, to: &Outbound) -> usize {
        to.push_all(self.take_waiting())
    }

    /// Queues each of `items` that fits; returns how many did not.
    pub(crate) fn push_all(&self, items: impl IntoIterator<Item = Bytes>) -> usize {
        items
            .into_iter()
            .map(|item| self.push(item))
            .filter(Result::is_err)
            .count()
    }

    /// Closes the queue and returns what waits in it, for the caller to
    /// pass on (its connection ended).
    pub(crate) fn take_waiting(&self) -> VecDeque<Bytes> {
        let waiting = {
            let mut s = lock(&self.state);
            s.closed = true;
            let waiting = std::mem::take(&mut s.queue);
            let len: usize = waiting.iter().map(Bytes::len).sum();
            s.bytes = s.bytes.saturating_sub(len);
            waiting
        };
        self.notify.notify_one();
        waiting
    }

    /// Deliveries waiting now, and their bytes with those being written.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let s = lock(&self.state);
        (s.queue.len(), s.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_by_count_and_bytes() {
        let q = Outbound::new(3, 10);
        assert_eq!(q.push(Bytes::from_static(b"aaaa")), Ok(()));
        assert_eq!(q.push(Bytes::from_static(b"bbbb")), Ok(()));
        assert_eq!(q.push(Bytes::from_static(b"ccc")), Err(PushError::Full));
        assert_eq!(q.push(Bytes::from_static(b"cc")), Ok(()));
        assert_eq!(q.push(Bytes::from_static(b"")), Err(PushError::Full));
        assert_eq!(q.depth(), (3, 10));
        let mut out = Vec::new();
        assert!(q.pop_all(&mut out).await);
        assert_eq!(out.len(), 3);
        // Taken but not yet written: still counted, still full.
        assert_eq!(q.depth(), (0, 10));
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Full));
        for b in out.drain(..) {
            q.written(b.len());
        }
        assert_eq!(q.depth(), (0, 0));
        assert_eq!(q.push(Bytes::from_static(b"x")), Ok(()));
        assert!(q.pop_all(&mut out).await);
        assert!(q.take_waiting().is_empty());
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Closed));
        assert!(!q.pop_all(&mut out).await);
    }

    #[tokio::test]
    async fn a_queue_whose_connection_ended_gives_what_waits_to_be_passed_on() {
        let q = Outbound::new(8, 100);
        q.push(Bytes::from_static(b"a")).unwrap();
        assert_eq!(q.take_waiting(), [Bytes::from_static(b"a")]);
        assert_eq!(q.depth(), (0, 0));
        assert_eq!(q.push(Bytes::from_static(b"b")), Err(PushError::Closed));
        let mut out = Vec::new();
        assert!(!q.pop_all(&mut out).await);
        assert!(out.is_empty());
        assert!(!q.is_finishing());
    }

    #[tokio::test]
    async fn a_finished_queue_still_gives_what_waits_then_ends() {
        let q = Outbound::new(8, 100);
        q.push(Bytes::from_static(b"a")).unwrap();
        q.push(Bytes::from_static(b"b")).unwrap();
        assert!(!q.is_finishing());
        q.finish();
        assert!(q.is_finishing());
        assert_eq!(q.push(Bytes::from_static(b"c")), Err(PushError::Closed));
        let mut out = Vec::new();
        assert!(q.pop_all(&mut out).await);
        assert_eq!(out, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(!q.pop_all(&mut out).await);
        assert_eq!(out.len(), 2);
    }

    #[tokio::test]
    async fn a_writer_waiting_on_an_empty_queue_wakes_when_it_is_finished() {
        let q = std::sync::Arc::new(Outbound::new(8, 100));
        let writer = {
            let q = q.clone();
            tokio::spawn(async move { q.pop_all(&mut Vec::new()).await })
        };
        tokio::task::yield_now().await;
        q.finish();
        assert!(!writer.await.unwrap());
    }

    #[tokio::test]
    async fn retired_waits_for_the_writer_to_say_all_is_written() {
        let q = std::sync::Arc::new(Outbound::new(8, 100));
        q.finish();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.retired().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        q.all_written();
        waiter.await.unwrap();
        // Said before anyone waits: still seen.
        q.retired().await;
    }

    #[tokio::test]
    async fn a_hand_over_moves_what_waits_within_the_new_bounds() {
        let old = Outbound::new(8, 100);
        for item in [&b"aa"[..], b"bb", b"cc"] {
            old.push(Bytes::copy_from_slice(item)).unwrap();
        }
        // One delivery in the old writer's hand: it stays the old one's.
        let mut hand = Vec::new();
        assert!(old.pop_all(&mut hand).await);
        for item in [&b"dd"[..], b"ee", b"ff"] {
            old.push(Bytes::copy_from_slice(item)).unwrap();
        }
        let new = Outbound::new(2, 100);
        new.push(Bytes::from_static(b"n")).unwrap();
        assert_eq!(old.hand_over(&new), 2, "one fits, two do not");
        assert_eq!(old.push(Bytes::from_static(b"x")), Err(PushError::Closed));
        assert_eq!(old.depth(), (0, 6), "the three in hand still count");
        let mut out = Vec::new();
        assert!(new.pop_all(&mut out).await);
        assert_eq!(out, [Bytes::from_static(b"n"), Bytes::from_static(b"dd")]);
    }
}

//! One recipient's outbound queue: encoded deliveries waiting for their
//! stream, bounded in count and bytes. Past either bound a push fails and
//! the sender's ack says `congested`; the router's memory does not grow.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use icom_protocol::lock;
use tokio::sync::Notify;

/// A bounded FIFO of encoded deliveries for one connection.
#[derive(Debug)]
pub(crate) struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    max_events: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    closed: bool,
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
    /// none. Returns false once the queue is closed and drained. The bytes
    /// taken still count against the bound until [`Outbound::written`]
    /// says they left, so a writer stuck on a stream holds at most the
    /// bound, not the bound again in its hand.
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

    /// Closes the queue: pushes fail, waiting deliveries are dropped.
    pub(crate) fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.queue.clear();
        s.bytes = 0;
        drop(s);
        self.notify.notify_one();
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
        q.close();
        assert_eq!(q.push(Bytes::from_static(b"x")), Err(PushError::Closed));
        assert!(!q.pop_all(&mut out).await);
    }
}

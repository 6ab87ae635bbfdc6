//! Replay ordering (PROTOCOL.md §5). After `welcome` the router opens the
//! streams of the stored events due to this client, then sends `replayed
//! {count}`. Streams can arrive out of order, so deliveries are held back
//! until `replayed` has come and at least `count` deliveries with it (or a
//! deadline passes, or the buffer is full), then handed on sorted by
//! `(sent_ms, id)`, before any later live delivery.

use crate::event::Event;

/// Deliveries held back while the stored events are replayed.
#[derive(Debug)]
pub(crate) struct ReplayBuffer {
    held: Vec<Event>,
    received: usize,
    expected: Option<usize>,
    capacity: usize,
}

impl ReplayBuffer {
    /// A buffer that holds at most `capacity` deliveries (at least one).
    pub(crate) fn new(capacity: usize) -> ReplayBuffer {
        ReplayBuffer {
            held: Vec::new(),
            received: 0,
            expected: None,
            capacity: capacity.max(1),
        }
    }

    /// A delivery arrived (`event` is `None` when it was dropped as a
    /// duplicate or taken by a request: it still counts).
    pub(crate) fn received(&mut self, event: Option<Event>) {
        self.received += 1;
        if let Some(event) = event {
            self.held.push(event);
        }
    }

    /// The router sent `replayed {count}`.
    pub(crate) fn replayed(&mut self, count: u32) {
        self.expected = Some(count as usize);
    }

    /// Whether `replayed` has come.
    pub(crate) fn has_count(&self) -> bool {
        self.expected.is_some()
    }

    /// Whether the replay is complete, or the buffer is full: time to hand
    /// the held deliveries on.
    pub(crate) fn ready(&self) -> bool {
        self.expected.is_some_and(|n| self.received >= n) || self.held.len() >= self.capacity
    }

    /// How far the replay got: received, and expected if known.
    pub(crate) fn progress(&self) -> (usize, Option<usize>) {
        (self.received, self.expected)
    }

    /// The held deliveries, oldest first by `(sent_ms, id)`.
    pub(crate) fn into_sorted(mut self) -> Vec<Event> {
        self.held.sort_by_key(|e| (e.sent_ms, e.id));
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event;

    #[test]
    fn held_deliveries_come_out_sorted_by_sent_ms_then_id() {
        let mut r = ReplayBuffer::new(100);
        for (from, id, sent) in [("b", 5, 30), ("a", 9, 10), ("a", 2, 30), ("c", 1, 20)] {
            r.received(Some(test_event(from, id, sent)));
        }
        assert!(!r.ready());
        r.replayed(4);
        assert!(r.ready());
        let order: Vec<(u64, u64)> = r.into_sorted().iter().map(|e| (e.sent_ms, e.id)).collect();
        assert_eq!(order, [(10, 9), (20, 1), (30, 2), (30, 5)]);
    }

    #[test]
    fn ready_only_when_the_count_has_arrived() {
        let mut r = ReplayBuffer::new(100);
        r.replayed(3);
        assert!(r.has_count());
        assert!(!r.ready());
        r.received(Some(test_event("a", 1, 1)));
        r.received(None); // a duplicate still counts
        assert!(!r.ready());
        assert_eq!(r.progress(), (2, Some(3)));
        r.received(Some(test_event("a", 3, 1)));
        assert!(r.ready());
        assert_eq!(r.into_sorted().len(), 2);
    }

    #[test]
    fn zero_count_is_ready_at_once() {
        let mut r = ReplayBuffer::new(100);
        assert!(!r.ready());
        r.replayed(0);
        assert!(r.ready());
    }

    #[test]
    fn a_full_buffer_is_ready_without_the_count() {
        let mut r = ReplayBuffer::new(3);
        for id in 0..3 {
            assert!(!r.ready());
            r.received(Some(test_event("a", id, 0)));
        }
        assert!(r.ready());
        assert!(!r.has_count());
    }
}

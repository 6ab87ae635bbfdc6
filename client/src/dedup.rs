//! De-duplication of redelivered events (PROTOCOL.md §5): persistent and
//! stored events are at-least-once, so the client remembers the last
//! `(from, id)` pairs it handed on, in a window of bounded size.

use std::collections::{HashSet, VecDeque};

/// The last `capacity` `(from, id)` pairs seen; the oldest leaves first.
#[derive(Debug)]
pub(crate) struct Dedup {
    seen: HashSet<(Box<str>, u64)>,
    order: VecDeque<(Box<str>, u64)>,
    capacity: usize,
}

impl Dedup {
    /// A window of `capacity` pairs; 0 turns de-duplication off.
    pub(crate) fn new(capacity: usize) -> Dedup {
        Dedup {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records `(from, id)`; false when it is already in the window (a
    /// duplicate, to drop).
    pub(crate) fn first_time(&mut self, from: &str, id: u64) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let key: (Box<str>, u64) = (from.into(), id);
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }

    /// How many pairs the window holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_caught_per_sender() {
        let mut d = Dedup::new(16);
        assert!(d.first_time("a", 1));
        assert!(!d.first_time("a", 1));
        assert!(d.first_time("b", 1));
        assert!(d.first_time("a", 2));
        assert!(!d.first_time("b", 1));
    }

    #[test]
    fn the_window_is_bounded_and_forgets_the_oldest() {
        let mut d = Dedup::new(100);
        for id in 0..10_000 {
            assert!(d.first_time("a", id));
            assert!(d.len() <= 100);
        }
        assert_eq!(d.len(), 100);
        assert_eq!(d.order.len(), 100);
        // The last 100 are remembered, the ones before are not.
        assert!(!d.first_time("a", 9_999));
        assert!(!d.first_time("a", 9_900));
        assert!(d.first_time("a", 9_899));
    }

    #[test]
    fn capacity_zero_turns_it_off() {
        let mut d = Dedup::new(0);
        assert!(d.first_time("a", 1));
        assert!(d.first_time("a", 1));
        assert_eq!(d.len(), 0);
    }
}

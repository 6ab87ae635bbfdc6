//! Received events that SQF may still answer with `icom:reply`.
//!
//! Every received event is a possible request (docs/PROTOCOL.md: a request is an
//! ordinary send). Its `"<id>@<from>"` handle (the `request` field of the
//! `event` callback) names it, unambiguously, since ids are only unique per
//! sender. The register keeps the last `capacity` events, without their
//! payloads, for at most `age`: a reply to anything older is refused with a
//! clear error rather than sent to a guess.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bounded register of `T` (the received event, without its payload),
/// by `(id, from)`.
#[derive(Debug)]
pub(crate) struct Requests<T> {
    capacity: usize,
    age: Duration,
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    by_key: HashMap<(u64, String), T>,
    order: VecDeque<((u64, String), Instant)>,
}

impl<T: Clone> Requests<T> {
    pub(crate) fn new(capacity: usize, age: Duration) -> Requests<T> {
        Requests {
            capacity: capacity.max(1),
            age,
            inner: Mutex::new(Inner {
                by_key: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// Remembers the event `id` from `from`.
    pub(crate) fn remember(&self, id: u64, from: &str, event: T, now: Instant) {
        let key = (id, from.to_owned());
        let mut inner = self.lock();
        inner.expire(now, self.age);
        while inner.order.len() >= self.capacity {
            if let Some((old, _)) = inner.order.pop_front() {
                inner.by_key.remove(&old);
            }
        }
        if inner.by_key.insert(key.clone(), event).is_none() {
            inner.order.push_back((key, now));
        }
    }

    /// The event `id` from `from`, if it is still remembered.
    pub(crate) fn find(&self, id: u64, from: &str, now: Instant) -> Option<T> {
        let mut inner = self.lock();
        inner.expire(now, self.age);
        inner.by_key.get(&(id, from.to_owned())).cloned()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn age(&self) -> Duration {
        self.age
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // Updates keep both collections consistent; a poisoned lock is usable.
        icom_protocol::lock(&self.inner)
    }
}

impl<T> Inner<T> {
    fn expire(&mut self, now: Instant, age: Duration) {
        while let Some((_, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < age {
                break;
            }
            if let Some((key, _)) = self.order.pop_front() {
                self.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count_and_age_and_keyed_by_sender() {
        let r = Requests::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        r.remember(1, "a", "a1", t0);
        r.remember(1, "b", "b1", t0);
        assert_eq!(r.find(1, "a", t0), Some("a1"));
        assert_eq!(r.find(1, "b", t0), Some("b1"));
        r.remember(2, "a", "a2", t0);
        assert_eq!(r.find(1, "a", t0), None, "the oldest made room");
        assert_eq!(r.find(2, "a", t0), Some("a2"));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(r.find(2, "a", later), None, "expired");
        // a redelivery does not take a second slot
        r.remember(3, "c", "c3", later);
        r.remember(3, "c", "c3", later);
        r.remember(4, "c", "c4", later);
        assert_eq!(r.find(3, "c", later), Some("c3"));
    }
}

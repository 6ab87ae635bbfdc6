//! Event ids (PROTOCOL.md §3): never zero, never reused, rising, starting
//! from Unix milliseconds × 1000 so that they keep rising across restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Hands out rising ids from a time-based start.
#[derive(Debug)]
pub(crate) struct IdGen {
    next: AtomicU64,
}

impl IdGen {
    /// Starts at the current Unix time in ms × 1000.
    pub(crate) fn new() -> IdGen {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 1000)
        });
        IdGen::starting_at(ms.saturating_mul(1000))
    }

    /// Starts at `first` (1 if `first` is 0: id 0 is not allowed).
    pub(crate) fn starting_at(first: u64) -> IdGen {
        IdGen {
            next: AtomicU64::new(first.max(1)),
        }
    }

    /// The next id.
    pub(crate) fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn ids_start_from_the_clock_and_rise() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids = IdGen::new();
        let a = ids.next();
        let b = ids.next();
        assert!(a >= now_ms * 1000 && a < (now_ms + 60_000) * 1000);
        assert_eq!(b, a + 1);
        // A restart a millisecond later still starts above every id handed out.
        let later = IdGen::starting_at((now_ms + 1) * 1000);
        assert!(later.next() > b || b - a < 1000);
    }

    #[test]
    fn ids_are_unique_across_threads_and_never_zero() {
        let ids = Arc::new(IdGen::starting_at(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..1000).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4000);
        assert_eq!(all[0], 1);
    }
}

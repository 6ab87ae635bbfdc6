//! Reconnect delays: exponential backoff with full jitter (a uniform pick
//! between zero and the capped exponential), reset once a connection has
//! stayed up for a healthy period. The supervisor draws one delay per
//! round of routers (`crate::routers::Rotation`), not per router.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The shape of the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackoffPolicy {
    /// The cap of the first delay.
    pub(crate) initial: Duration,
    /// The largest cap.
    pub(crate) max: Duration,
    /// A connection that lasted this long resets the backoff.
    pub(crate) healthy_after: Duration,
}

/// The state of the backoff between attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    connected_at: Option<Instant>,
    rng: StdRng,
}

impl Backoff {
    /// A fresh backoff, seeded from the OS.
    pub(crate) fn new(policy: BackoffPolicy) -> Backoff {
        Backoff::with_rng(policy, StdRng::from_os_rng())
    }

    fn with_rng(policy: BackoffPolicy, rng: StdRng) -> Backoff {
        Backoff {
            policy,
            attempt: 0,
            connected_at: None,
            rng,
        }
    }

    /// How many delays were handed out since the last reset.
    #[cfg(test)]
    fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The cap of the next delay: `initial × 2^attempt`, at most `max`.
    pub(crate) fn cap(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.policy
            .initial
            .saturating_mul(factor)
            .min(self.policy.max)
    }

    /// The next delay, uniform in `[0, cap]`; each call doubles the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// A connection is up.
    pub(crate) fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// The connection is gone: if it was up for the healthy period, the
    /// next delay starts from `initial` again (and this says true).
    pub(crate) fn disconnected(&mut self) -> bool {
        let healthy = self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= self.policy.healthy_after);
        if healthy {
            self.attempt = 0;
        }
        healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(30),
        healthy_after: Duration::from_secs(10),
    };

    fn seeded(seed: u64) -> Backoff {
        Backoff::with_rng(POLICY, StdRng::seed_from_u64(seed))
    }

    #[tokio::test(start_paused = true)]
    async fn delays_stay_within_the_doubling_cap() {
        let mut b = seeded(1);
        for attempt in 0..40u32 {
            let cap = b.cap();
            let expected = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(30));
            assert_eq!(cap, expected, "attempt {attempt}");
            let started = Instant::now();
            let delay = b.next_delay();
            tokio::time::sleep(delay).await;
            let slept = started.elapsed();
            assert!(
                slept <= cap + Duration::from_millis(1),
                "{slept:?} > {cap:?}"
            );
        }
        assert_eq!(b.cap(), Duration::from_secs(30));
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut b = seeded(7);
        for _ in 0..12 {
            b.next_delay();
        }
        // At the 30 s cap, 200 draws are spread over the whole range.
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(*min < Duration::from_secs(3), "min {min:?}");
        assert!(*max > Duration::from_secs(27), "max {max:?}");
        let mut distinct = delays.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 190);
        // Two clients do not pick the same delays.
        let mut other = seeded(8);
        for _ in 0..12 {
            other.next_delay();
        }
        assert_ne!(delays[0], other.next_delay());
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_connection_resets_the_backoff() {
        let mut b = seeded(3);
        for _ in 0..6 {
            b.next_delay();
        }
        assert_eq!(b.cap(), Duration::from_millis(6400));

        // A connection that drops after a moment does not reset it.
        b.connected();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!b.disconnected());
        assert_eq!(b.attempt(), 6);
        b.next_delay();
        assert_eq!(b.cap(), Duration::from_millis(12_800));

        // One that stayed up for the healthy period does.
        b.connected();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.disconnected());
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.cap(), Duration::from_millis(100));
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

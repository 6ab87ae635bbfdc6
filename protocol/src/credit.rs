//! Stream credit that grows with use. Each event is a stream, so the
//! number of streams a peer may have open at once caps it at that many
//! events per round trip. A QUIC stack sets aside state for every stream it
//! allows (quinn: a table slot per stream, some 50 bytes), so a large
//! limit costs every connection memory, idle or not. [`StreamCredit`]
//! starts a peer small and doubles its limit, up to a maximum, as soon as
//! it uses a good part of it: when half of the allowed streams are open at
//! once, or when half as many streams as allowed arrived within two round
//! trips. Credit is never taken back.
//!
//! Sans-IO: the caller reports each accepted stream with the time and the
//! path's round-trip time, and applies the limit this returns.

use std::time::{Duration, Instant};

/// The credit policy of one peer.
#[derive(Debug, Clone)]
pub struct StreamCredit {
    limit: u32,
    max: u32,
    /// Streams accepted since `since`.
    accepted: u32,
    since: Option<Instant>,
}

/// The shortest round trip the policy assumes: on loopback a measured RTT
/// of a few microseconds would make every burst look slow.
const MIN_RTT: Duration = Duration::from_millis(1);

impl StreamCredit {
    /// A peer allowed `initial` streams at once, growing up to `max`.
    pub fn new(initial: u32, max: u32) -> StreamCredit {
        let max = max.max(1);
        StreamCredit {
            limit: initial.clamp(1, max),
            max,
            accepted: 0,
            since: None,
        }
    }

    /// The streams the peer may have open at once now.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Records one accepted stream. `open` counts the peer's streams open
    /// now, this one included; `now` and `rtt` give the time and the
    /// path's round-trip time (each is asked for only when needed: a
    /// clock read per stream is a measurable part of a stream's cost).
    /// Returns the new limit when the peer should be given more.
    pub fn accepted(
        &mut self,
        open: u32,
        now: impl FnOnce() -> Instant,
        rtt: impl FnOnce() -> Duration,
    ) -> Option<u32> {
        if self.limit >= self.max {
            return None;
        }
        let half = (self.limit / 2).max(1);
        if open >= half {
            return Some(self.raise(now()));
        }
        self.accepted += 1;
        let (since, now) = match self.since {
            Some(_) if self.accepted < half => return None,
            Some(since) => (since, now()),
            None => {
                let now = now();
                self.since = Some(now);
                if self.accepted < half {
                    return None;
                }
                (now, now)
            }
        };
        let busy = now.saturating_duration_since(since) < 2 * rtt().max(MIN_RTT);
        self.accepted = 0;
        self.since = Some(now);
        busy.then(|| self.raise(now))
    }

    fn raise(&mut self, now: Instant) -> u32 {
        self.limit = self.limit.saturating_mul(2).min(self.max);
        self.accepted = 0;
        self.since = Some(now);
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(80);

    #[test]
    fn streams_left_open_raise_the_limit_up_to_the_maximum() {
        let mut c = StreamCredit::new(128, 1024);
        let now = Instant::now();
        let mut raised = Vec::new();
        for open in 1..=1024 {
            if let Some(l) = c.accepted(open, || now, || RTT) {
                raised.push(l);
            }
        }
        assert_eq!(raised, vec![256, 512, 1024]);
        assert_eq!(c.accepted(1024, || now, || RTT), None, "capped");
    }

    #[test]
    fn a_burst_within_two_round_trips_raises_it() {
        let mut c = StreamCredit::new(128, 16_384);
        let t0 = Instant::now();
        // 64 streams, each read at once (one open at a time), within 10 ms.
        let mut last = None;
        for i in 0..64u32 {
            let at = t0 + Duration::from_micros(150 * u64::from(i));
            last = c.accepted(1, || at, || RTT);
        }
        assert_eq!(last, Some(256));
    }

    #[test]
    fn a_trickle_leaves_it_alone() {
        let mut c = StreamCredit::new(128, 16_384);
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            let at = t0 + Duration::from_millis(10 * i);
            assert_eq!(c.accepted(1, || at, || RTT), None);
        }
        assert_eq!(c.limit(), 128);
    }

    #[test]
    fn the_limit_starts_within_bounds() {
        assert_eq!(StreamCredit::new(0, 10).limit(), 1);
        assert_eq!(StreamCredit::new(50, 10).limit(), 10);
    }
}

//! Presence in batches: the table records who came and went, and this task
//! sends the changes, in order, to every client as one buffer per client.
//! A batch waits `limits.presence_batch_ms` after its first change; while
//! batches keep carrying several changes (a mass join: every write then
//! costs a packet to every connected client), the wait doubles, up to
//! `limits.presence_batch_max_ms`, and it falls back once a batch carries
//! one change or none. A mass join of N servers so costs each client a
//! write per batch, not one per join. docs/PROTOCOL.md §3.2 says what a
//! client may rely on.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// Sends presence batches until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut burst = false;
    let mut window = Duration::ZERO;
    loop {
        tokio::select! {
            () = shared.table.changed() => {}
            () = shutdown.cancelled() => return,
        }
        let limits = shared.config().limits;
        window = next_window(
            window,
            burst,
            limits.presence_batch,
            limits.presence_batch_max,
        );
        if !window.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                () = shutdown.cancelled() => return,
            }
        }
        let (changes, sent) = shared.table.send_presence();
        burst = changes > 1;
        if sent > 0 {
            shared.metrics.presence_batches.inc();
            shared.metrics.presence_messages.inc_by(sent);
        }
    }
}

/// The wait of the next batch: `base` after a quiet batch, double the last
/// (at most `max`) after a burst.
fn next_window(last: Duration, burst: bool, base: Duration, max: Duration) -> Duration {
    if burst {
        (last * 2).clamp(base, max.max(base))
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_doubles_in_a_burst_and_falls_back_after() {
        let (base, max) = (Duration::from_millis(20), Duration::from_millis(1000));
        let mut w = next_window(Duration::ZERO, false, base, max);
        assert_eq!(w, base);
        let mut seen = Vec::new();
        for _ in 0..8 {
            w = next_window(w, true, base, max);
            seen.push(w.as_millis());
        }
        assert_eq!(seen, [40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert_eq!(next_window(w, false, base, max), base);
        // A maximum under the base leaves the base.
        assert_eq!(next_window(base, true, base, Duration::ZERO), base);
        // A base of 0 stays 0 until a burst, then grows from nothing: 0.
        assert_eq!(
            next_window(Duration::ZERO, true, Duration::ZERO, max),
            Duration::ZERO
        );
    }
}

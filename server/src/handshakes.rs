//! The handshakes under way at once (`limits.max_handshakes`). A burst of
//! connections (every game server back after a router restart, or failing
//! over from a lost router) would otherwise interleave all their round
//! trips, each step of each waiting behind every other's: several times as
//! long in all, and some past the client's idle timeout. Past the limit, a
//! new connection waits its turn.
//!
//! A handshake holds its place for [`HOLD`] at most. When most of the
//! handshakes of the last [`WARY`] held their places that long (as a flood
//! of Initials from spoofed addresses, which never finish, does), the
//! router is wary: while every place is taken, a new connection from an
//! address not yet validated is sent a QUIC Retry instead of a place in
//! the line, so that such a flood cannot hold the places. A burst of real
//! clients is not (a few of them are slow on a busy machine, not most),
//! since the extra round trip costs a burst more than it saves.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use icom_protocol::lock;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long a handshake holds its place at most.
pub(crate) const HOLD: Duration = Duration::from_secs(1);

/// The window over which the router counts slow handshakes against
/// quick ones.
pub(crate) const WARY: Duration = Duration::from_secs(10);

/// The places of the handshakes under way.
#[derive(Debug)]
pub(crate) struct Handshakes {
    places: Arc<Semaphore>,
    window: Mutex<Window>,
}

/// Handshakes that gave their places up, since `start`.
#[derive(Debug)]
struct Window {
    start: Instant,
    quick: u64,
    slow: u64,
}

/// One handshake's place.
#[derive(Debug)]
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    of: Arc<Handshakes>,
}

impl Handshakes {
    /// At most `max` handshakes under way at once.
    pub(crate) fn new(max: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            places: Arc::new(Semaphore::new(max.max(1))),
            window: Mutex::new(Window {
                start: Instant::now(),
                quick: 0,
                slow: 0,
            }),
        })
    }

    /// A place, if one is free now.
    pub(crate) fn try_take(self: &Arc<Handshakes>) -> Option<Place> {
        let permit = self.places.clone().try_acquire_owned().ok()?;
        Some(Place {
            _permit: permit,
            of: self.clone(),
        })
    }

    /// Waits for a place (`None` only if the places were closed, which
    /// nothing does).
    pub(crate) async fn take(self: &Arc<Handshakes>) -> Option<Place> {
        let permit = self.places.clone().acquire_owned().await.ok()?;
        Some(Place {
            _permit: permit,
            of: self.clone(),
        })
    }

    /// Whether most handshakes of the current window held their places
    /// past [`HOLD`].
    pub(crate) fn wary(&self) -> bool {
        let w = lock(&self.window);
        w.slow > w.quick && w.start.elapsed() < WARY
    }

    /// Counts a handshake that gave its place up, quick or slow.
    fn count(&self, slow: bool) {
        let mut w = lock(&self.window);
        if w.start.elapsed() >= WARY {
            *w = Window {
                start: Instant::now(),
                quick: 0,
                slow: 0,
            };
        }
        if slow {
            w.slow += 1;
        } else {
            w.quick += 1;
        }
    }
}

impl Place {
    /// Waits for `handshake` to finish, keeping the place for [`HOLD`] at
    /// most; `slow` runs when it gives the place up unfinished.
    pub(crate) async fn hold<F: Future>(
        self,
        mut handshake: Pin<&mut F>,
        slow: impl FnOnce(),
    ) -> F::Output {
        match tokio::time::timeout(HOLD, handshake.as_mut()).await {
            Ok(done) => {
                self.of.count(false);
                done
            }
            Err(_) => {
                self.of.count(true);
                drop(self);
                slow();
                handshake.await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slow_handshakes_give_their_places_up_and_most_of_them_make_the_router_wary() {
        let h = Handshakes::new(1);
        assert!(!h.wary());
        let slow = std::cell::Cell::new(0);
        let quick = || async { 7 };
        let never = || async {
            tokio::time::sleep(HOLD * 3).await;
            8
        };
        let place = h.try_take().unwrap();
        assert!(h.try_take().is_none(), "one place");
        let out = place
            .hold(std::pin::pin!(quick()), || slow.set(slow.get() + 1))
            .await;
        assert_eq!((out, slow.get()), (7, 0));
        assert!(!h.wary(), "a quick handshake changes nothing");

        // A slow one gives its place up after HOLD, and goes on.
        let place = h.try_take().unwrap();
        let other = tokio::spawn({
            let h = h.clone();
            async move {
                tokio::time::sleep(HOLD + Duration::from_millis(10)).await;
                assert!(h.try_take().is_some(), "the place is free");
            }
        });
        let out = place
            .hold(std::pin::pin!(never()), || slow.set(slow.get() + 1))
            .await;
        assert_eq!((out, slow.get()), (8, 1));
        other.await.unwrap();
        assert!(!h.wary(), "one slow of two: not most");

        let place = h.try_take().unwrap();
        place
            .hold(std::pin::pin!(never()), || slow.set(slow.get() + 1))
            .await;
        assert!(h.wary(), "two slow of three");
        tokio::time::sleep(WARY).await;
        assert!(!h.wary(), "for the window only");
        let place = h.try_take().unwrap();
        place.hold(std::pin::pin!(quick()), || {}).await;
        assert!(!h.wary(), "a new window");
    }
}

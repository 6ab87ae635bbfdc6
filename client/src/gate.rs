//! The gate every operation passes to reach the live connection. While the
//! client is disconnected, operations wait at the gate in a bounded queue
//! for a bounded time, or fail at once, as configured; nothing waits
//! forever and nothing grows without bound. While the client moves back to
//! a router it prefers, the live connection is held: operations wait for
//! the move (in either mode), as bounded as any wait.

use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::config::{ms, QueueConfig, QueueMode};
use crate::error::Unavailable;

/// What the gate holds.
#[derive(Debug, Clone)]
pub(crate) enum Slot<T> {
    /// No connection right now.
    Down,
    /// The live connection.
    Up(T),
    /// The live connection, held while the client moves to another router:
    /// new operations wait for the move, whatever the mode.
    Held(T),
    /// The client is closed, for good.
    Closed,
}

/// The live connection, or a bounded wait for it.
#[derive(Debug)]
pub(crate) struct Gate<T> {
    slot: watch::Sender<Slot<T>>,
    waiting: Semaphore,
    capacity: usize,
    mode: QueueMode,
    timeout: Duration,
}

impl<T: Clone> Gate<T> {
    /// A gate that is down, queueing as `cfg` says.
    pub(crate) fn new(cfg: &QueueConfig) -> Gate<T> {
        let capacity = cfg.capacity.min(Semaphore::MAX_PERMITS);
        Gate {
            slot: watch::Sender::new(Slot::Down),
            waiting: Semaphore::new(capacity),
            capacity,
            mode: cfg.mode,
            timeout: ms(cfg.timeout_ms),
        }
    }

    /// The live connection, if there is one now (held or not).
    pub(crate) fn current(&self) -> Option<T> {
        match &*self.slot.borrow() {
            Slot::Up(t) | Slot::Held(t) => Some(t.clone()),
            Slot::Down | Slot::Closed => None,
        }
    }

    /// The live connection; while there is none, waits in the queue.
    ///
    /// # Errors
    /// [`Unavailable`]: fail-fast mode, queue full, timed out, or closed.
    pub(crate) async fn get(&self) -> Result<T, Unavailable> {
        match &*self.slot.borrow() {
            Slot::Up(t) => return Ok(t.clone()),
            Slot::Closed => return Err(Unavailable::Closed),
            Slot::Down if self.mode == QueueMode::FailFast => {
                return Err(Unavailable::Disconnected)
            }
            Slot::Down | Slot::Held(_) => {}
        }
        let _place = self
            .waiting
            .try_acquire()
            .map_err(|_| Unavailable::QueueFull(self.capacity))?;
        let mut rx = self.slot.subscribe();
        let waited = tokio::time::timeout(
            self.timeout,
            rx.wait_for(|s| matches!(s, Slot::Up(_) | Slot::Closed)),
        )
        .await;
        match waited {
            Err(_) => Err(Unavailable::QueueTimeout(self.timeout)),
            Ok(Err(_)) => Err(Unavailable::Closed),
            Ok(Ok(slot)) => match &*slot {
                Slot::Up(t) => Ok(t.clone()),
                Slot::Down | Slot::Held(_) | Slot::Closed => Err(Unavailable::Closed),
            },
        }
    }

    /// A connection is live: waiting operations go on.
    pub(crate) fn up(&self, t: T) {
        self.slot.send_if_modified(|s| {
            if matches!(s, Slot::Closed) {
                return false;
            }
            *s = Slot::Up(t);
            true
        });
    }

    /// The connection that `is_it` recognises is gone (nothing changes if
    /// another one is live by now).
    pub(crate) fn down_if(&self, is_it: impl Fn(&T) -> bool) {
        self.take_down(true, is_it);
    }

    /// As [`Gate::down_if`], but a held connection stays held: the move
    /// decides what follows.
    pub(crate) fn down_if_up(&self, is_it: impl Fn(&T) -> bool) {
        self.take_down(false, is_it);
    }

    fn take_down(&self, held_too: bool, is_it: impl Fn(&T) -> bool) {
        self.slot.send_if_modified(|s| {
            let live = match s {
                Slot::Up(t) => t,
                Slot::Held(t) if held_too => t,
                _ => return false,
            };
            if !is_it(live) {
                return false;
            }
            *s = Slot::Down;
            true
        });
    }

    /// Holds the live connection that `is_it` recognises: operations wait
    /// from now on, until [`Gate::release_if`] or another connection comes
    /// up. False if that connection is not the live one.
    pub(crate) fn hold_if(&self, is_it: impl Fn(&T) -> bool) -> bool {
        self.slot.send_if_modified(|s| match s {
            Slot::Up(t) if is_it(t) => {
                *s = Slot::Held(t.clone());
                true
            }
            _ => false,
        })
    }

    /// Lets operations use the held connection that `is_it` recognises
    /// again (the move did not happen).
    pub(crate) fn release_if(&self, is_it: impl Fn(&T) -> bool) {
        self.slot.send_if_modified(|s| match s {
            Slot::Held(t) if is_it(t) => {
                *s = Slot::Up(t.clone());
                true
            }
            _ => false,
        });
    }

    /// Closes the gate for good: every waiting operation fails.
    pub(crate) fn close(&self) {
        self.slot.send_replace(Slot::Closed);
    }

    /// How many operations wait now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.capacity - self.waiting.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;

    fn gate(mode: QueueMode, capacity: usize, timeout_ms: u64) -> Arc<Gate<u32>> {
        Arc::new(Gate::new(&QueueConfig {
            mode,
            capacity,
            timeout_ms,
        }))
    }

    /// An operation waiting at the gate, in a task of its own.
    fn spawn_waiter(g: &Arc<Gate<u32>>) -> tokio::task::JoinHandle<Result<u32, Unavailable>> {
        let g = g.clone();
        tokio::spawn(async move { g.get().await })
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_go_on_when_the_connection_comes_up() {
        let g = gate(QueueMode::Wait, 4, 10_000);
        let waiter = spawn_waiter(&g);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(g.waiting(), 1);
        g.up(7);
        assert_eq!(waiter.await.unwrap().unwrap(), 7);
        assert_eq!(g.waiting(), 0);
        assert_eq!(g.get().await.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded() {
        let g = gate(QueueMode::Wait, 2, 10_000);
        let waiters: Vec<_> = (0..2).map(|_| spawn_waiter(&g)).collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(g.waiting(), 2);
        match g.get().await {
            Err(Unavailable::QueueFull(2)) => {}
            other => panic!("expected QueueFull, got {other:?}"),
        }
        g.up(1);
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_times_out_and_frees_its_place() {
        let g = gate(QueueMode::Wait, 1, 3_000);
        let started = Instant::now();
        match g.get().await {
            Err(Unavailable::QueueTimeout(t)) => assert_eq!(t, Duration::from_secs(3)),
            other => panic!("expected QueueTimeout, got {other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(g.waiting(), 0);
        // The place is free again.
        assert!(matches!(g.get().await, Err(Unavailable::QueueTimeout(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_does_not_wait() {
        let g = gate(QueueMode::FailFast, 10, 10_000);
        let started = Instant::now();
        assert!(matches!(g.get().await, Err(Unavailable::Disconnected)));
        assert_eq!(started.elapsed(), Duration::ZERO);
        g.up(3);
        assert_eq!(g.get().await.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn down_if_only_takes_down_that_connection() {
        let g = gate(QueueMode::FailFast, 1, 1);
        g.up(1);
        g.down_if(|c| *c == 2);
        assert_eq!(g.current(), Some(1));
        g.down_if(|c| *c == 1);
        assert_eq!(g.current(), None);
        // A held connection is taken down only by `down_if`.
        g.up(1);
        assert!(g.hold_if(|c| *c == 1));
        g.down_if_up(|c| *c == 1);
        assert_eq!(g.current(), Some(1), "still held");
        g.release_if(|c| *c == 1);
        g.down_if_up(|c| *c == 1);
        assert_eq!(g.current(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_connection_makes_operations_wait_even_in_fail_fast_mode() {
        let g = gate(QueueMode::FailFast, 2, 5_000);
        g.up(1);
        assert!(!g.hold_if(|c| *c == 2), "only the live connection is held");
        assert!(g.hold_if(|c| *c == 1));
        assert_eq!(g.current(), Some(1), "still the live connection");
        let waiter = spawn_waiter(&g);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(g.waiting(), 1);
        // The move: the new connection comes up, and the waiter takes it.
        g.up(2);
        assert_eq!(waiter.await.unwrap().unwrap(), 2);
        // A move that did not happen: the held connection is released.
        assert!(g.hold_if(|c| *c == 2));
        let waiter = spawn_waiter(&g);
        tokio::time::sleep(Duration::from_millis(10)).await;
        g.release_if(|c| *c == 2);
        assert_eq!(waiter.await.unwrap().unwrap(), 2);
        // A held connection that is lost is down: fail fast again.
        assert!(g.hold_if(|c| *c == 2));
        g.down_if(|c| *c == 2);
        assert!(matches!(g.get().await, Err(Unavailable::Disconnected)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_is_bounded_like_any_wait() {
        let g = gate(QueueMode::Wait, 1, 2_000);
        g.up(1);
        assert!(g.hold_if(|c| *c == 1));
        let started = Instant::now();
        assert!(matches!(g.get().await, Err(Unavailable::QueueTimeout(_))));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_ends_every_wait() {
        let g = gate(QueueMode::Wait, 4, 60_000);
        let waiter = spawn_waiter(&g);
        tokio::time::sleep(Duration::from_millis(10)).await;
        g.close();
        assert!(matches!(waiter.await.unwrap(), Err(Unavailable::Closed)));
        g.up(1);
        assert!(matches!(g.get().await, Err(Unavailable::Closed)));
    }
}

//! Writes made on a thread, their commit waited for by a task.
//!
//! [`Store::deferring`] runs a closure in which the store's writes return
//! as soon as they are made in memory and queued for the next commit; the
//! [`Durable`] it returns resolves, as a task, once every one of them is
//! committed. The router runs its store work this way (`keep::Local`): a
//! write does only its memory work, on the sender's task, and the wait for
//! the disk holds no thread at all, so any number of writers can share one
//! commit (group commit) for the cost of a task each; only the leader's
//! commit takes a blocking thread.
//!
//! Outside such a scope, or on another store, a write waits for its commit
//! on its own thread, as the methods of [`Store`] say.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::Arc;

use super::log::{Lead, Ticket, Turn};
use super::{Store, StoreError};

thread_local! {
    /// This thread's deferral scope, if it is in one.
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

struct Scope {
    /// The store whose writes are deferred, by address.
    store: usize,
    /// The batches of the writes made in the scope.
    tickets: Vec<Ticket>,
}

/// Writes made in memory and queued for a commit, not yet known to be on
/// disk: [`Durable::settled`] says when they are. Dropped unsettled (the
/// task waiting for it cancelled), it still sees them committed, from a
/// task of its own (once: if that task is dropped too, as when the
/// runtime shuts down, the next writer's commit takes them).
#[derive(Debug)]
#[must_use = "the writes are on disk only once settled"]
pub struct Durable {
    store: Arc<Store>,
    tickets: Vec<Ticket>,
    /// Whether a drop before settling hands the rest to a task.
    adopt: bool,
}

impl Store {
    /// Runs `f` with this store's writes deferred (see the module's
    /// documentation): each write in `f` returns once made in memory and
    /// queued; the [`Durable`] returned with `f`'s value is settled once
    /// they are all committed. A write that `f` saw fail (a bound, an
    /// I/O error) is not in it.
    pub fn deferring<T>(self: &Arc<Store>, f: impl FnOnce() -> T) -> (T, Durable) {
        let scope = Scope {
            store: address(self),
            tickets: Vec::new(),
        };
        let outer = SCOPE.with(|s| s.replace(Some(scope)));
        // Restores the outer scope even if `f` panics.
        let mut restore = Restore(Some(outer));
        let value = f();
        let tickets = restore.take().map_or_else(Vec::new, |s| s.tickets);
        (
            value,
            Durable {
                store: self.clone(),
                tickets,
                adopt: true,
            },
        )
    }

    /// Whether this thread defers this store's writes; if so, `ticket` is
    /// added to the scope.
    pub(super) fn defer(&self, ticket: &Ticket) -> bool {
        SCOPE.with(|s| match &mut *s.borrow_mut() {
            Some(scope) if scope.store == address(self) => {
                scope.tickets.push(ticket.clone());
                true
            }
            _ => false,
        })
    }

    /// Waits on this thread until the rows behind `ticket` are committed,
    /// or defers that wait to the scope this thread is in.
    pub(super) fn settle(&self, ticket: &Ticket) -> Result<(), StoreError> {
        if self.defer(ticket) {
            return Ok(());
        }
        match self.log.wait_turn(ticket) {
            Turn::Done(result) => result.map_err(StoreError::Io),
            Turn::Lead(lead) => Commit::new(self, lead).run().map_err(StoreError::Io),
            Turn::Wait => Err(StoreError::Io("the store's log woke a waiter early".into())),
        }
    }
}

impl Durable {
    /// Waits, as a task, until every write is committed; leads a commit
    /// (on a blocking thread) when none is under way.
    ///
    /// # Errors
    /// [`StoreError::Io`] when a commit failed: then those writes are not
    /// in the store.
    pub async fn settled(mut self) -> Result<(), StoreError> {
        while let Some(ticket) = self.tickets.last().cloned() {
            settle(&self.store, &ticket).await?;
            self.tickets.pop();
        }
        Ok(())
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if self.tickets.is_empty() || !self.adopt {
            return;
        }
        // Writers that nobody waits for any more still need a leader.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let rest = Durable {
                store: self.store.clone(),
                tickets: std::mem::take(&mut self.tickets),
                adopt: false,
            };
            runtime.spawn(async move {
                if let Err(e) = rest.settled().await {
                    tracing::warn!("a store write nobody waited for failed: {e}");
                }
            });
        }
    }
}

/// Waits for one batch as a task, leading its commit if it comes to that.
async fn settle(store: &Arc<Store>, ticket: &Ticket) -> Result<(), StoreError> {
    loop {
        let notified = ticket.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match store.log.turn(ticket) {
            Turn::Done(result) => return result.map_err(StoreError::Io),
            Turn::Lead(lead) => {
                // Owned by the closure: dropped unrun (the runtime shutting
                // down), it still fails its batch.
                let commit = Commit::new(store.clone(), lead);
                return match tokio::task::spawn_blocking(move || commit.run()).await {
                    Ok(result) => result.map_err(StoreError::Io),
                    Err(e) => Err(StoreError::Io(format!("the store's commit failed: {e}"))),
                };
            }
            Turn::Wait => notified.await,
        }
    }
}

/// A leader's commit, of a store `S` (`&Store` on the writer's thread,
/// `Arc<Store>` sent to a blocking thread). Dropped before it finished (a
/// panic in the database, or never run), it fails its batch and the store
/// recovers, so that no commit stays under way for ever.
struct Commit<S: Deref<Target = Store>> {
    store: S,
    lead: Option<Lead>,
}

impl<S: Deref<Target = Store>> Commit<S> {
    fn new(store: S, lead: Lead) -> Commit<S> {
        Commit {
            store,
            lead: Some(lead),
        }
    }

    /// Commits the batch; on failure the store recovers (see
    /// [`Store::recover`]) before any other commit starts.
    fn run(mut self) -> Result<(), String> {
        let result = match &self.lead {
            Some(lead) => self.store.log.write(lead),
            None => Err("the commit ran twice".into()),
        };
        if let Err(why) = &result {
            self.store.recover(why);
        }
        if let Some(lead) = self.lead.take() {
            self.store.log.finish(lead, result.clone());
        }
        result
    }
}

impl<S: Deref<Target = Store>> Drop for Commit<S> {
    fn drop(&mut self) {
        if let Some(lead) = self.lead.take() {
            let why = "the store's commit did not finish";
            self.store.recover(why);
            self.store.log.finish(lead, Err(why.into()));
        }
    }
}

/// Puts the outer deferral scope back, and hands out the inner one.
struct Restore(Option<Option<Scope>>);

impl Restore {
    fn take(&mut self) -> Option<Scope> {
        let outer = self.0.take()?;
        SCOPE.with(|s| s.replace(outer))
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = self.take();
    }
}

fn address(store: &Store) -> usize {
    std::ptr::from_ref(store) as usize
}

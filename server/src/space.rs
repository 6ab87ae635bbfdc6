//! The routing space beyond this router: nothing, when the router is
//! alone (the default, [`Alone`]), or the other routers of a cluster on
//! NATS ([`crate::cluster::Nats`]). Dispatch, policy, acks and outbound
//! queues are one code path above this seam; what changes is where the
//! servers that are not connected here are, and how an event reaches
//! them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::router::Peer;

/// A boxed future, so that the space can be a trait object.
pub(crate) type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What became of a recipient on another router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reached {
    /// Its router took the event into its outbound queue.
    Delivered,
    /// Its outbound queue is full.
    Congested,
    /// It is connected nowhere (it left meanwhile, or its router is gone).
    NotFound,
    /// Its router could not be asked or did not answer: why.
    Unreachable(String),
}

/// The servers on other routers, by router, that one event goes to.
pub(crate) type Elsewhere = Vec<(Arc<str>, Vec<Arc<str>>)>;

/// The routing space beyond this router.
pub(crate) trait Space: Send + Sync + std::fmt::Debug {
    /// `peer` was just registered here: make its identity this router's
    /// in the whole space (another router holding it gives it up with
    /// `REPLACED`), before the peer's events are routed.
    fn joined<'a>(&'a self, peer: &'a Arc<Peer>) -> Pending<'a, ()>;

    /// The connection `session` of `server_id` ended here (it was not
    /// replaced).
    fn left(&self, server_id: &str, session: u64);

    /// Hands the encoded `deliver` to servers on other routers, once per
    /// router, and says what became of each recipient.
    fn forward(&self, to: Elsewhere, wire: Bytes) -> Pending<'_, Vec<(Arc<str>, Reached)>>;

    /// Whether the other routers can be reached now (alone: always).
    fn reachable(&self) -> bool;

    /// The router is stopping: its connections are about to close with
    /// `SHUTDOWN`, and their servers should not be announced as gone one
    /// by one (they are moving to other routers).
    fn stopping(&self) {}

    /// The space's own work, until `shutdown`.
    fn run(self: Arc<Self>, shutdown: CancellationToken) -> Pending<'static, ()>;
}

/// One router on its own: every server is connected here or nowhere.
#[derive(Debug, Default)]
pub(crate) struct Alone;

impl Space for Alone {
    fn joined<'a>(&'a self, _: &'a Arc<Peer>) -> Pending<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn left(&self, _: &str, _: u64) {}

    fn forward(&self, to: Elsewhere, _: Bytes) -> Pending<'_, Vec<(Arc<str>, Reached)>> {
        // Nothing resolves to another router when there is none.
        let none = to
            .into_iter()
            .flat_map(|(_, ids)| ids)
            .map(|id| (id, Reached::NotFound))
            .collect();
        Box::pin(std::future::ready(none))
    }

    fn reachable(&self) -> bool {
        true
    }

    fn run(self: Arc<Self>, _: CancellationToken) -> Pending<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

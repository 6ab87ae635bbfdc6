//! Moving back to a router the client prefers. The list of routers is in
//! order of preference; after a failover the client is on a later one.
//! While it is, every `reconnect.return_ms` (plus up to half of it again,
//! at random) it dials the routers before it, in order, and moves to the
//! first that welcomes it, making the new connection before breaking the
//! old:
//!
//! 1. the QUIC handshake with the preferred router, while the old
//!    connection serves on: a router that is still down costs nothing but
//!    the attempt;
//! 2. the old connection is held: new operations wait at the gate (in
//!    either queue mode), and what is in flight on it is answered there,
//!    for at most [`DRAIN`];
//! 3. `hello` and `welcome` on the new connection, within [`GREET`];
//!    operations go on there, and the requests waiting for a reply wait on
//!    it. If the router refuses, or is slower, the old connection is
//!    released and serves on, and the next move waits twice as long. (If
//!    the old connection was closed with `REPLACED` before the `hello`,
//!    another instance took the identity: the move is given up. A
//!    `REPLACED` soon after the `hello` is the move's own doing, even when
//!    `welcome` came too late: [`loss_of`].)
//! 4. the old connection ends: in a cluster, its router closes it
//!    (`REPLACED`) once the new router has the identity and what was
//!    queued on the old one is written, with no presence change for the
//!    other servers; otherwise the client closes it
//!    (`NORMAL`) after at most [`RETIRE`], having read what came on it
//!    meanwhile.
//!
//! The old connection may close while the move is under way: in a
//! cluster, its router closes it as soon as the new router takes the
//! identity, which is before `welcome` comes. The move then finishes
//! first ([`finish`]), and the close is not taken for a takeover.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use icom_protocol::CloseCode;
use rand::Rng;
use tokio::time::Instant;

use crate::config::ms;
use crate::connection::FrameReader;
use crate::connection::Live;
use crate::core::Core;
use crate::error::ConnectError;
use crate::loss::Loss;

/// How long a move waits for the answers of what is in flight on the old
/// connection before it goes on (what is still unanswered then fails as
/// lost when the old connection ends).
pub(crate) const DRAIN: Duration = Duration::from_secs(2);

/// How long the old connection stays open after a move, at most, for its
/// router to close it or the last answers and deliveries on it to arrive.
pub(crate) const RETIRE: Duration = Duration::from_secs(2);

/// How long a move waits for `welcome` once it has said `hello`: a router
/// slower than this is not one to move to, and operations wait meanwhile
/// (at most [`DRAIN`] and this, well within the queue's 10 s default).
pub(crate) const GREET: Duration = Duration::from_secs(3);

/// How often the drain looks at what is still unanswered.
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// A connection the client moved to: the index of its router, the
/// connection, and its control stream.
pub(crate) type Moved = (usize, Arc<Live>, FrameReader);

/// Waits until the client, on router `index` over `live`, has moved to a
/// router earlier in the list, and returns that connection (in use:
/// operations go on over it; the caller reports it). Never returns when
/// there is no better router (the first of the list, or moving back is
/// off), nor for a client that must not replace its identity, which a
/// router of the cluster would refuse.
pub(crate) async fn back(core: &Arc<Core>, index: usize, live: &Arc<Live>) -> Moved {
    let every = core.cfg.reconnect.return_ms;
    if index == 0 || every == 0 || !core.cfg.replace {
        return std::future::pending().await;
    }
    loop {
        // After moves that failed, less often: up to 64 times.
        let every = every.saturating_mul(1 << core.failed_moves.load(Ordering::Relaxed).min(6));
        let wait = every.saturating_add(rand::rng().random_range(0..=every / 2));
        tokio::time::sleep(ms(wait)).await;
        for better in 0..index {
            if let Some(moved) = try_move(core, better, live).await {
                return moved;
            }
        }
    }
}

/// One attempt to move from `old` to router `index`.
async fn try_move(core: &Arc<Core>, index: usize, old: &Arc<Live>) -> Option<Moved> {
    let router = core.routers.get(index);
    let conn = match core.dial(index).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(router, error = %e, "a router earlier in the list does not answer yet");
            return None;
        }
    };
    let Some(held) = Hold::new(core, old) else {
        conn.close(0u32.into(), b"");
        return None;
    };
    // What waits on a connection that closed meanwhile gets no answer.
    let deadline = Instant::now() + DRAIN;
    while core.unanswered_on(old) > 0
        && Instant::now() < deadline
        && old.conn.close_reason().is_none()
    {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    // Another instance took the identity meanwhile: not to be taken back.
    if old
        .conn
        .close_reason()
        .is_some_and(|e| Loss::of(&e) == Loss::Replaced)
    {
        conn.close(0u32.into(), b"");
        return None;
    }
    old.said_hello_elsewhere();
    let greeted = tokio::time::timeout(GREET, core.greet(index, conn))
        .await
        .unwrap_or(Err(ConnectError::Timeout(GREET)));
    match greeted {
        Ok((new, reader)) => {
            held.moved();
            core.moved(old, &new);
            core.failed_moves.store(0, Ordering::Relaxed);
            tracing::info!(from = %old.router, to = %new.router, "moved back to a router earlier in the list");
            tokio::spawn(retire(core.clone(), old.clone()));
            Some((index, new, reader))
        }
        Err(e) => {
            core.failed_moves.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(router, error = %e, "could not move back to a router earlier in the list; staying");
            None
        }
    }
}

/// How long after its own move said `hello` elsewhere a `REPLACED` close
/// of the old connection is taken as that move's doing: the move's bound
/// on `welcome`, the router's bound on closing a connection it gives up
/// (5 s, docs/PROTOCOL.md §12.3), and a margin.
const OWN_REPLACE: Duration = Duration::from_secs(10);

/// Why `live` ended, as its close says; except that a `REPLACED` soon
/// after a move off it said `hello` elsewhere is that move's doing, not a
/// takeover by another instance: the move did not finish (`welcome` came
/// late), the identity is on the router moved to or nowhere, and the
/// client reconnects at once instead of waiting as after a takeover.
pub(crate) fn loss_of(live: &Live, e: &quinn::ConnectionError) -> Loss {
    match Loss::of(e) {
        Loss::Replaced if live.said_hello_elsewhere_within(OWN_REPLACE) => Loss::Other(
            "replaced after a move to a router earlier in the list that did not finish".into(),
        ),
        loss => loss,
    }
}

/// The connection `old` closed while [`back`] may be moving off it: if a
/// move is under way (the connection is held), waits for it, as long as a
/// move can take at most, and returns the connection moved to. `None` if
/// no move was under way, or it failed.
pub(crate) async fn finish(
    core: &Core,
    old: &Live,
    mut back: Pin<&mut impl Future<Output = Moved>>,
) -> Option<Moved> {
    let deadline = Instant::now() + DRAIN + GREET;
    while core.is_held(old) && Instant::now() < deadline {
        tokio::select! {
            moved = back.as_mut() => return Some(moved),
            () = tokio::time::sleep(DRAIN_POLL) => {}
        }
    }
    None
}

/// Ends the old connection after a move: its router closes it, or the
/// client does after [`RETIRE`] (at once if the client closes); then what
/// still waits on it fails.
async fn retire(core: Arc<Core>, old: Arc<Live>) {
    tokio::select! {
        _ = old.conn.closed() => {}
        () = tokio::time::sleep(RETIRE) => old.close(CloseCode::Normal),
        () = core.shutdown.cancelled() => old.close(CloseCode::Normal),
    }
    core.gone(&old);
}

/// The old connection held for a move; released when dropped unless the
/// move happened (an attempt that fails, or a caller that gives up).
struct Hold<'a> {
    core: &'a Core,
    live: &'a Live,
    moved: bool,
}

impl<'a> Hold<'a> {
    fn new(core: &'a Core, live: &'a Live) -> Option<Hold<'a>> {
        core.hold(live).then_some(Hold {
            core,
            live,
            moved: false,
        })
    }

    fn moved(mut self) {
        self.moved = true;
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if !self.moved {
            self.core.release(self.live);
        }
    }
}

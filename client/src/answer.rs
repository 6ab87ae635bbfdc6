//! What waits for an answer, and how the answer reaches it: the kinds of
//! answer ([`Answer`]), the route an answer takes ([`Route`]: one waiting
//! operation, or a publisher's channel) and the slot the session keeps it
//! in ([`Slot`]), which tells a channel when its route is dropped
//! unanswered.

use icom_protocol::{Ack, Roster};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use crate::event::Event;
use crate::session::Kind;

/// What a request gets.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The reply.
    Event(Event),
    /// The server asked disconnected before it replied.
    PeerLeft,
}

/// Where an answer goes.
#[derive(Debug)]
pub(crate) enum Route<T> {
    /// To one waiting operation.
    Once(oneshot::Sender<T>),
    /// Onto a channel that many operations share (a
    /// [`Publisher`](crate::Publisher)'s), with the id; a route dropped
    /// unanswered (the connection went away) sends `None` instead. The
    /// permit is the operation's place in the in-flight window: it goes
    /// along with the answer, held until the answer is read, so answers
    /// nobody reads cannot pile up past the window.
    Stream {
        id: u64,
        tx: mpsc::UnboundedSender<Answered<T>>,
        permit: OwnedSemaphorePermit,
    },
}

/// An answer on a shared channel: the operation's id, the answer (`None`:
/// lost with its connection), and its place in the in-flight window.
pub(crate) type Answered<T> = (u64, Option<T>, OwnedSemaphorePermit);

/// A route as the session keeps it: a stream route dropped unanswered
/// tells its channel.
#[derive(Debug)]
pub(crate) struct Slot<T>(Option<Route<T>>);

impl<T> Slot<T> {
    pub(crate) fn new(route: Route<T>) -> Slot<T> {
        Slot(Some(route))
    }

    pub(crate) fn take(mut self) -> Option<Route<T>> {
        self.0.take()
    }

    /// Hands `value` on; gives it back if nobody takes it.
    pub(crate) fn send(mut self, value: T) -> Result<(), T> {
        match self.0.take() {
            Some(Route::Once(tx)) => tx.send(value),
            Some(Route::Stream { id, tx, permit }) => match tx.send((id, Some(value), permit)) {
                Ok(()) => Ok(()),
                Err(e) => e.0 .1.map_or(Ok(()), Err),
            },
            None => Err(value),
        }
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        if let Some(Route::Stream { id, tx, permit }) = self.0.take() {
            let _ = tx.send((id, None, permit));
        }
    }
}

/// What the session keeps for one waiting operation.
#[derive(Debug)]
pub(crate) enum Waiting {
    Ack(Slot<Ack>),
    Pong(Slot<()>),
    Reply(Slot<Reply>),
    Roster(Slot<Roster>),
}

/// An answer the router (or a peer) gives, and the kind the session files
/// it under.
pub(crate) trait Answer: Sized {
    /// Its kind.
    const KIND: Kind;
    /// Files a slot.
    fn wrap(slot: Slot<Self>) -> Waiting;
    /// The slot back, if it is of this kind.
    fn unwrap(w: Waiting) -> Option<Slot<Self>>;
}

impl Answer for Ack {
    const KIND: Kind = Kind::Ack;
    fn wrap(slot: Slot<Ack>) -> Waiting {
        Waiting::Ack(slot)
    }
    fn unwrap(w: Waiting) -> Option<Slot<Ack>> {
        match w {
            Waiting::Ack(s) => Some(s),
            _ => None,
        }
    }
}

impl Answer for () {
    const KIND: Kind = Kind::Pong;
    fn wrap(slot: Slot<()>) -> Waiting {
        Waiting::Pong(slot)
    }
    fn unwrap(w: Waiting) -> Option<Slot<()>> {
        match w {
            Waiting::Pong(s) => Some(s),
            _ => None,
        }
    }
}

impl Answer for Roster {
    const KIND: Kind = Kind::Roster;
    fn wrap(slot: Slot<Roster>) -> Waiting {
        Waiting::Roster(slot)
    }
    fn unwrap(w: Waiting) -> Option<Slot<Roster>> {
        match w {
            Waiting::Roster(s) => Some(s),
            _ => None,
        }
    }
}

impl Answer for Reply {
    const KIND: Kind = Kind::Reply;
    fn wrap(slot: Slot<Reply>) -> Waiting {
        Waiting::Reply(slot)
    }
    fn unwrap(w: Waiting) -> Option<Slot<Reply>> {
        match w {
            Waiting::Reply(s) => Some(s),
            _ => None,
        }
    }
}

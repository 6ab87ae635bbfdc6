//! The client's bookkeeping as a state machine without I/O, as quinn-proto
//! sits under quinn: event ids ([`Ids`]), the link (which connection, if
//! any, operations may use, and whether it is held for a move back to a
//! preferred router), what waits for an `ack`, a `pong` or a reply,
//! de-duplication by `(from, id)`, and who else is connected
//! ([`Session`]). Tokio tasks feed it what happened and carry out what it
//! answers; it never waits, reads a clock or touches a socket, so every
//! rule is tested here.
//!
//! [`Session`] is generic over `W`, what an operation waits with: the
//! client uses one-shot channels, the tests plain values. [`Ids`] needs no
//! lock: the send path takes an id for every event, and measured under the
//! session's lock it contended with the acks (`limit`: 16% fewer events/s).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use icom_protocol::{validate_server_id, Presence};

use crate::dedup::Dedup;

/// The most other servers a session keeps: a router that announces more
/// (or ids that are not server ids) is not followed past this, and that is
/// logged.
pub(crate) const MAX_PEERS: usize = 100_000;

/// Event ids (docs/PROTOCOL.md §3): never 0, never reused, rising from a
/// start the caller picks (the client: Unix ms × 1000, so that they keep
/// rising across its restarts).
#[derive(Debug)]
pub(crate) struct Ids(AtomicU64);

impl Ids {
    /// Ids from `first` on (1 if `first` is 0).
    pub(crate) fn starting_at(first: u64) -> Ids {
        Ids(AtomicU64::new(first.max(1)))
    }

    /// The next id. After `u64::MAX` it wraps around, past 0.
    pub(crate) fn next(&self) -> u64 {
        loop {
            let id = self.0.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }
}

/// Which connection operations may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// None now; one may come.
    Down,
    /// This connection (its generation), welcomed.
    Up(u64),
    /// The client is closed: none will come.
    Closed,
}

/// What an answer from the router is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// An `ack` of a send or forget, by its id.
    Ack,
    /// A `pong`, by the ping's nonce.
    Pong,
    /// An event whose `reply_to` is a request's id.
    Reply,
    /// A `roster`, by the `who`'s id.
    Roster,
}

/// Why [`Session::expect`] refused to record a waiter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Gone<W>(pub(crate) W);

/// One waiting operation.
#[derive(Debug)]
struct Entry<W> {
    /// The connection it went out on: it fails when that one goes.
    generation: u64,
    /// The server a request waits on: it fails when that one leaves.
    peer: Option<Box<str>>,
    waiter: W,
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub(crate) struct Session<W> {
    generation: u64,
    link: Link,
    /// The connection held for a move (see [`Session::hold`]).
    held: Option<u64>,
    waiting: HashMap<(Kind, u64), Entry<W>>,
    dedup: Dedup,
    peers: BTreeSet<String>,
}

impl<W> Session<W> {
    /// A session remembering the last `dedup_window` `(from, id)` pairs.
    pub(crate) fn new(dedup_window: usize) -> Session<W> {
        Session {
            generation: 0,
            link: Link::Down,
            held: None,
            waiting: HashMap::new(),
            dedup: Dedup::new(dedup_window),
            peers: BTreeSet::new(),
        }
    }

    /// A number for the next connection attempt.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Which connection operations may use now.
    pub(crate) fn link(&self) -> Link {
        self.link
    }

    /// Whether an operation may start on connection `generation` now:
    /// it is the one in use, and not held for a move.
    pub(crate) fn accepts(&self, generation: u64) -> bool {
        self.link == Link::Up(generation) && self.held != Some(generation)
    }

    /// Whether connection `generation` is held for a move.
    pub(crate) fn is_held(&self, generation: u64) -> bool {
        self.held == Some(generation)
    }

    /// Holds connection `generation`, the one in use, for a move: no
    /// operation starts on it any more, so that once what waits on it now
    /// is answered, nothing more will come on it. False if it is not the
    /// one in use.
    pub(crate) fn hold(&mut self, generation: u64) -> bool {
        let ok = self.link == Link::Up(generation);
        if ok {
            self.held = Some(generation);
        }
        ok
    }

    /// Operations may start on connection `generation` again: the move
    /// did not happen.
    pub(crate) fn release(&mut self, generation: u64) {
        if self.held == Some(generation) {
            self.held = None;
        }
    }

    /// Connection `generation` was welcomed, with these other servers
    /// connected: they become the peer set, and the difference from the
    /// set before (the last connection's, kept while disconnected) is
    /// returned as presence changes, those who left first. Ignored once
    /// the session is closed.
    pub(crate) fn connected(&mut self, generation: u64, peers: &[String]) -> Vec<Presence> {
        if self.link == Link::Closed {
            return Vec::new();
        }
        self.link = Link::Up(generation);
        self.held = None;
        let mut now = BTreeSet::new();
        for id in peers {
            if now.len() == MAX_PEERS {
                tracing::warn!(
                    "the welcome names more than {MAX_PEERS} servers: following the first"
                );
                break;
            }
            if validate_server_id(id).is_ok() {
                now.insert(id.clone());
            }
        }
        let left = self.peers.difference(&now).map(|id| change(id, false));
        let came = now.difference(&self.peers).map(|id| change(id, true));
        let changes = left.chain(came).collect();
        self.peers = now;
        changes
    }

    /// Connection `generation` is gone: operations stop using it (if it is
    /// the one in use), and what waits on it is handed back, to be failed.
    /// Says whether the link went down.
    pub(crate) fn disconnected(&mut self, generation: u64) -> (bool, Vec<W>) {
        let down = self.link == Link::Up(generation);
        if down {
            self.link = Link::Down;
        }
        self.release(generation);
        let ids: Vec<(Kind, u64)> = self
            .waiting
            .iter()
            .filter(|(_, e)| e.generation == generation)
            .map(|(k, _)| *k)
            .collect();
        let failed = ids
            .iter()
            .filter_map(|k| self.waiting.remove(k))
            .map(|e| e.waiter)
            .collect();
        (down, failed)
    }

    /// How many operations wait for an answer on connection `generation`
    /// itself (acks, pongs, rosters; not replies, which come to whichever
    /// connection the identity has).
    pub(crate) fn unanswered_on(&self, generation: u64) -> usize {
        self.waiting
            .iter()
            .filter(|(k, e)| k.0 != Kind::Reply && e.generation == generation)
            .count()
    }

    /// The client moved from connection `from` to `to`, which is in use
    /// now: the requests waiting for a reply wait on `to`, where replies
    /// come from now on; what waits on `from` itself stays there.
    pub(crate) fn moved(&mut self, from: u64, to: u64) {
        for (k, e) in &mut self.waiting {
            if k.0 == Kind::Reply && e.generation == from {
                e.generation = to;
            }
        }
    }

    /// The client closes: no connection will be used again, and every
    /// waiter is handed back, to be failed.
    pub(crate) fn close(&mut self) -> Vec<W> {
        self.link = Link::Closed;
        self.waiting.drain().map(|(_, e)| e.waiter).collect()
    }

    /// Records that `waiter` waits for the answer of `kind` to `id` on
    /// connection `generation` (and, for a request, on server `peer`).
    ///
    /// # Errors
    /// [`Gone`], with the waiter, when that connection is no longer the
    /// one in use: nothing can answer it there.
    pub(crate) fn expect(
        &mut self,
        kind: Kind,
        id: u64,
        generation: u64,
        peer: Option<&str>,
        waiter: W,
    ) -> Result<(), Gone<W>> {
        if !self.accepts(generation) {
            return Err(Gone(waiter));
        }
        let entry = Entry {
            generation,
            peer: peer.map(Box::from),
            waiter,
        };
        self.waiting.insert((kind, id), entry);
        Ok(())
    }

    /// Takes back what waits for `id`, without an answer (the caller gave
    /// up, or its event never left).
    pub(crate) fn unexpect(&mut self, kind: Kind, id: u64) -> Option<W> {
        self.waiting.remove(&(kind, id)).map(|e| e.waiter)
    }

    /// The answer of `kind` to `id` came: who waits for it, if anyone.
    pub(crate) fn answered(&mut self, kind: Kind, id: u64) -> Option<W> {
        self.unexpect(kind, id)
    }

    /// A `presence` came: the peer set follows it (a change it already
    /// reflects, or an id that is not a server id, changes nothing), and
    /// when a server left, the requests waiting on it are handed back, to
    /// be failed. Says whether the set changed.
    pub(crate) fn presence(&mut self, p: &Presence) -> (bool, Vec<W>) {
        if p.online {
            let changed = if validate_server_id(&p.server_id).is_err() {
                false
            } else if self.peers.len() >= MAX_PEERS {
                tracing::warn!(server_id = %p.server_id, "more than {MAX_PEERS} servers announced: not following this one");
                false
            } else {
                self.peers.insert(p.server_id.clone())
            };
            return (changed, Vec::new());
        }
        let changed = self.peers.remove(&p.server_id);
        let ids: Vec<(Kind, u64)> = self
            .waiting
            .iter()
            .filter(|(k, e)| k.0 == Kind::Reply && e.peer.as_deref() == Some(&*p.server_id))
            .map(|(k, _)| *k)
            .collect();
        let failed = ids
            .iter()
            .filter_map(|k| self.waiting.remove(k))
            .map(|e| e.waiter)
            .collect();
        (changed, failed)
    }

    /// Records a delivery `(from, id)`; false when it came before (a
    /// redelivery, to drop).
    pub(crate) fn first_time(&mut self, from: &str, id: u64) -> bool {
        self.dedup.first_time(from, id)
    }

    /// The other servers connected, as far as `welcome` and `presence`
    /// told, in order; while disconnected, the last connection's.
    pub(crate) fn peers(&self) -> impl Iterator<Item = &String> {
        self.peers.iter()
    }

    /// How many operations wait.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

fn change(id: &str, online: bool) -> Presence {
    Presence {
        server_id: id.to_owned(),
        online,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn presence(id: &str, online: bool) -> Presence {
        Presence {
            server_id: id.into(),
            online,
        }
    }

    fn up(s: &mut Session<&'static str>) -> u64 {
        let g = s.next_generation();
        s.connected(g, &["b".into(), "c".into()]);
        g
    }

    #[test]
    fn ids_rise_from_the_start_and_are_never_zero() {
        let ids = Ids::starting_at(0);
        assert_eq!(ids.next(), 1);
        assert_eq!(ids.next(), 2);
        let ids = Ids::starting_at(1_700_000_000_000_000);
        let a = ids.next();
        assert!(ids.next() > a);
        let ids = Ids::starting_at(u64::MAX);
        assert_eq!(ids.next(), u64::MAX);
        assert_eq!(ids.next(), 1, "wrapping skips 0");
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let ids = std::sync::Arc::new(Ids::starting_at(1));
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..10_000).map(|_| ids.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 40_000);
    }

    #[test]
    fn waiters_are_recorded_only_on_the_connection_in_use() {
        let mut s = Session::new(8);
        assert_eq!(s.link(), Link::Down);
        assert_eq!(s.expect(Kind::Ack, 1, 1, None, "a"), Err(Gone("a")));
        let g = up(&mut s);
        assert_eq!(s.link(), Link::Up(g));
        assert_eq!(s.expect(Kind::Ack, 1, g + 1, None, "a"), Err(Gone("a")));
        s.expect(Kind::Ack, 1, g, None, "a").unwrap();
        assert_eq!(s.answered(Kind::Ack, 1), Some("a"));
        assert_eq!(s.answered(Kind::Ack, 1), None, "answered once");
    }

    #[test]
    fn kinds_do_not_mix() {
        let mut s = Session::new(8);
        let g = up(&mut s);
        s.expect(Kind::Ack, 5, g, None, "ack").unwrap();
        s.expect(Kind::Reply, 5, g, Some("b"), "reply").unwrap();
        s.expect(Kind::Pong, 5, g, None, "pong").unwrap();
        assert_eq!(s.answered(Kind::Pong, 5), Some("pong"));
        assert_eq!(s.answered(Kind::Reply, 5), Some("reply"));
        assert_eq!(s.answered(Kind::Ack, 5), Some("ack"));
    }

    #[test]
    fn a_lost_connection_fails_its_waiters_and_only_its_own() {
        let mut s = Session::new(8);
        let old = up(&mut s);
        s.expect(Kind::Ack, 1, old, None, "old ack").unwrap();
        s.expect(Kind::Reply, 1, old, Some("b"), "old reply")
            .unwrap();
        let new = up(&mut s);
        s.expect(Kind::Ack, 2, new, None, "new ack").unwrap();
        // The old connection's end is noticed after the new one came up:
        // the link stays on the new one.
        let (down, mut failed) = s.disconnected(old);
        failed.sort_unstable();
        assert!(!down);
        assert_eq!(failed, vec!["old ack", "old reply"]);
        assert_eq!(s.link(), Link::Up(new));
        let (down, failed) = s.disconnected(new);
        assert!(down);
        assert_eq!(failed, vec!["new ack"]);
        assert_eq!(s.link(), Link::Down);
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn a_move_keeps_the_replies_waiting_and_leaves_the_acks_on_the_old_connection() {
        let mut s = Session::new(8);
        let old = up(&mut s);
        s.expect(Kind::Ack, 1, old, None, "old ack").unwrap();
        s.expect(Kind::Pong, 2, old, None, "old pong").unwrap();
        s.expect(Kind::Reply, 1, old, Some("b"), "reply").unwrap();
        assert_eq!(s.unanswered_on(old), 2, "the reply waits on the identity");
        assert_eq!(s.answered(Kind::Pong, 2), Some("old pong"));
        assert_eq!(s.unanswered_on(old), 1);
        let new = up(&mut s);
        s.moved(old, new);
        assert_eq!((s.unanswered_on(old), s.unanswered_on(new)), (1, 0));
        // The old connection goes: only its own ack fails; the reply still
        // waits, on the new one.
        let (down, failed) = s.disconnected(old);
        assert!(!down);
        assert_eq!(failed, vec!["old ack"]);
        assert_eq!(s.answered(Kind::Reply, 1), Some("reply"));
    }

    #[test]
    fn a_held_connection_takes_no_new_waiter_until_released_or_moved_from() {
        let mut s = Session::new(8);
        let old = up(&mut s);
        s.expect(Kind::Ack, 1, old, None, "before").unwrap();
        assert!(!s.hold(old + 1), "only the connection in use is held");
        assert!(s.hold(old));
        assert!(!s.accepts(old));
        assert_eq!(
            s.expect(Kind::Ack, 2, old, None, "during"),
            Err(Gone("during"))
        );
        assert_eq!(s.unanswered_on(old), 1, "what came before still waits");
        assert_eq!(s.link(), Link::Up(old), "held is still in use");
        s.release(old);
        s.expect(Kind::Ack, 2, old, None, "after").unwrap();
        // Held again, then moved from: the new connection takes waiters.
        assert!(s.hold(old));
        let new = up(&mut s);
        s.moved(old, new);
        assert!(s.accepts(new));
        s.expect(Kind::Ack, 3, new, None, "new").unwrap();
        assert_eq!(s.expect(Kind::Ack, 4, old, None, "old"), Err(Gone("old")));
    }

    #[test]
    fn a_closed_session_stays_closed() {
        let mut s = Session::new(8);
        let g = up(&mut s);
        s.expect(Kind::Pong, 9, g, None, "ping").unwrap();
        assert_eq!(s.close(), vec!["ping"]);
        assert_eq!(s.link(), Link::Closed);
        s.connected(g + 1, &[]);
        assert_eq!(s.link(), Link::Closed);
        assert_eq!(s.expect(Kind::Ack, 1, g + 1, None, "x"), Err(Gone("x")));
    }

    #[test]
    fn presence_keeps_the_peers_and_fails_requests_to_a_server_that_left() {
        let mut s = Session::new(8);
        let g = up(&mut s);
        assert_eq!(s.peers().collect::<Vec<_>>(), ["b", "c"]);
        s.expect(Kind::Reply, 1, g, Some("b"), "to b").unwrap();
        s.expect(Kind::Reply, 2, g, Some("c"), "to c").unwrap();
        s.expect(Kind::Ack, 3, g, None, "ack").unwrap();
        assert_eq!(s.presence(&presence("d", true)), (true, vec![]));
        assert_eq!(s.presence(&presence("b", false)), (true, vec!["to b"]));
        assert_eq!(s.peers().collect::<Vec<_>>(), ["c", "d"]);
        assert_eq!(s.waiting(), 2);
        // What the set already says changes nothing; nor does a name that
        // is not a server id.
        assert_eq!(s.presence(&presence("d", true)), (false, vec![]));
        assert_eq!(s.presence(&presence("zz", false)), (false, vec![]));
        assert_eq!(s.presence(&presence("bad id!", true)), (false, vec![]));
        // A welcome replaces the peer set whole, and says what changed:
        // those who left first, then those who came.
        assert_eq!(
            s.connected(g, &["x".into(), "c".into()]),
            vec![presence("d", false), presence("x", true)]
        );
        assert_eq!(s.peers().collect::<Vec<_>>(), ["c", "x"]);
    }

    #[test]
    fn a_reconnect_reports_the_difference_and_the_set_survives_the_gap() {
        let mut s: Session<()> = Session::new(8);
        let g = s.next_generation();
        // The first welcome: everyone is new.
        assert_eq!(
            s.connected(g, &["a".into(), "b".into()]),
            vec![presence("a", true), presence("b", true)]
        );
        let _ = s.disconnected(g);
        // While disconnected, the last known set stays.
        assert_eq!(s.peers().collect::<Vec<_>>(), ["a", "b"]);
        // The next welcome: only what changed meanwhile.
        let g = s.next_generation();
        assert_eq!(
            s.connected(g, &["b".into(), "c".into(), "not valid!".into()]),
            vec![presence("a", false), presence("c", true)]
        );
        assert_eq!(s.peers().collect::<Vec<_>>(), ["b", "c"]);
        // The same set again: nothing.
        let g = s.next_generation();
        assert!(s.connected(g, &["c".into(), "b".into()]).is_empty());
    }

    #[test]
    fn the_peer_set_is_bounded() {
        let mut s: Session<()> = Session::new(8);
        let g = s.next_generation();
        let many: Vec<String> = (0..MAX_PEERS + 5).map(|i| format!("s{i}")).collect();
        assert_eq!(s.connected(g, &many).len(), MAX_PEERS);
        assert_eq!(s.presence(&presence("one-more", true)), (false, vec![]));
        assert_eq!(s.peers().count(), MAX_PEERS);
        // Leaving still works, and makes room.
        assert_eq!(s.presence(&presence("s0", false)), (true, vec![]));
        assert_eq!(s.presence(&presence("one-more", true)), (true, vec![]));
    }

    #[test]
    fn deliveries_are_de_duplicated_by_sender_and_id() {
        let mut s: Session<()> = Session::new(2);
        assert!(s.first_time("a", 1));
        assert!(!s.first_time("a", 1));
        assert!(s.first_time("b", 1), "another sender, same id");
        assert!(s.first_time("a", 2));
        // The window holds two pairs: ("a", 1) has left it.
        assert!(s.first_time("a", 1));
    }

    #[test]
    fn a_caller_that_gives_up_takes_its_waiter_back() {
        let mut s = Session::new(8);
        let g = up(&mut s);
        s.expect(Kind::Ack, 4, g, None, "w").unwrap();
        assert_eq!(s.unexpect(Kind::Ack, 4), Some("w"));
        assert_eq!(s.answered(Kind::Ack, 4), None);
    }
}

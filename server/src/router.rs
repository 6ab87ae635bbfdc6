//! The routing table: who is connected here, under which session, which
//! servers other routers of a cluster hold (as [`crate::space`] tells it),
//! and how an event reaches each recipient. The one module that knows
//! where a server is.

use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use icom_protocol::{
    encode_frame, lock, read, write, CloseCode, Control, Groups, Presence, Recipients, RosterEntry,
    MAX_ROSTER_PAGE,
};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use crate::outbound::Outbound;

/// One connected, welcomed identity.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) server_id: Arc<str>,
    /// Unique per connection, to tell a replaced connection from its successor.
    pub(crate) session: u64,
    pub(crate) conn: quinn::Connection,
    pub(crate) outbound: Outbound,
    /// Encoded control frames waiting for the control stream: a queue of
    /// small handles, so that an idle connection's queue stays small, and
    /// a frame for many peers (presence) is encoded once.
    pub(crate) control: mpsc::Sender<Bytes>,
    /// The leaf certificate's serial, for revocation on reload.
    pub(crate) serial: Vec<u8>,
    /// When this connection claimed its identity (ms; in a cluster, later
    /// than any claim of the identity this router knew of): the newest
    /// claim holds the identity.
    pub(crate) since: u64,
    /// Set once the cluster was told of this claim (after a takeover's
    /// hold): until then, the claim is not in this router's beats either.
    pub(crate) announced: std::sync::atomic::AtomicBool,
}

impl Peer {
    /// Queues encoded control frames without waiting; a client that does
    /// not read its control stream loses them, and the loss is logged.
    pub(crate) fn try_frame(&self, frame: Bytes) {
        if let Err(e) = self.control.try_send(frame) {
            warn!(server_id = %self.server_id, "control queue full or closed, dropped a frame: {e}");
        }
    }

    pub(crate) fn close(&self, code: CloseCode) {
        self.conn
            .close(code.code().into(), code.as_str().as_bytes());
    }
}

/// Where a server held by another router of the cluster is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The router's name.
    pub(crate) router: Arc<str>,
    /// Its claim's time (see [`Peer::since`]).
    pub(crate) since: u64,
}

/// The servers connected here, and those other routers hold. Hashed with
/// FxHash, not SipHash (a lookup for every event): only the router puts
/// keys in, from a certificate its CA signed or its cluster's presence, so
/// nobody can choose keys that collide; a name a send looks up costs a
/// probe, whatever it is.
#[derive(Debug, Default)]
struct Members {
    local: FxHashMap<Arc<str>, Arc<Peer>>,
    remote: FxHashMap<Arc<str>, Owner>,
}

impl Members {
    /// Whether `id` is online anywhere, as far as this router knows.
    fn online(&self, id: &str) -> bool {
        self.local.contains_key(id) || self.remote.contains_key(id)
    }

    /// Every online identity, once each.
    fn ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.local.keys().chain(
            self.remote
                .keys()
                .filter(|id| !self.local.contains_key(&***id)),
        )
    }
}

/// The table of connected identities.
#[derive(Debug, Default)]
pub(crate) struct Table {
    peers: RwLock<Members>,
    /// Presence changes not sent yet, in the order they happened (see
    /// [`crate::presence`]).
    changes: Mutex<Vec<(Arc<str>, bool)>>,
    /// Wakes the presence task when `changes` gets its first entry.
    changed: Notify,
    /// Connections out of the table whose last deliveries are still being
    /// written ([`crate::connection::retire`]).
    retiring: Mutex<Vec<Arc<Peer>>>,
}

impl Table {
    /// Registers a peer and, in the same step, queues its welcome, built by
    /// `welcome` from the identities the other clients have been told of
    /// (the table as of the last presence batch, see [`Table::send_presence`]):
    /// the new peer then gets exactly the batches that follow, and nothing
    /// (a presence from a peer registering at the same moment) reaches it
    /// before its welcome. An older connection with the same identity is
    /// replaced (closed with `REPLACED`, no presence change; the deliveries
    /// waiting in its queue move to the new one's); otherwise the
    /// identity is recorded as come online, for the next batch.
    ///
    /// With `replace` false, an identity that is online (here, or on
    /// another router as far as this one knows) is left as it is: nothing
    /// is registered or queued, and the result is [`InUse`].
    pub(crate) fn register(
        &self,
        peer: Arc<Peer>,
        replace: bool,
        welcome: impl FnOnce(Vec<String>) -> Bytes,
    ) -> Result<(), InUse> {
        let old = {
            let mut map = write(&self.peers);
            let was_online = map.online(&peer.server_id);
            if was_online && !replace {
                return Err(InUse);
            }
            let old = map.local.insert(peer.server_id.clone(), peer.clone());
            let mut changes = lock(&self.changes);
            // What the others have been told: an identity with an odd
            // number of changes waiting is told the opposite of its state
            // now (connects and disconnects of one identity alternate).
            let mut waiting: HashMap<&str, bool> = HashMap::new();
            for (id, _) in changes.iter() {
                let odd = waiting.entry(&**id).or_insert(false);
                *odd = !*odd;
            }
            let odd = |id: &str| waiting.get(id).copied().unwrap_or(false);
            let mut told: Vec<String> = map
                .ids()
                .filter(|id| !odd(id))
                .map(|id| id.to_string())
                .collect();
            // Gone, but not announced as gone yet.
            told.extend(
                waiting
                    .iter()
                    .filter(|(id, odd)| **odd && !map.online(id))
                    .map(|(id, _)| (*id).to_owned()),
            );
            told.retain(|id| **id != *peer.server_id);
            // The peer's control queue is new and holds at least one frame
            // (`limits.control_queue` >= 1): the welcome is always queued.
            peer.try_frame(welcome(told));
            if !was_online {
                record(&mut changes, &self.changed, peer.server_id.clone(), true);
            }
            old
        };
        if let Some(old) = old {
            debug!(server_id = %peer.server_id, "replacing the older connection");
            // What waits for the identity is the new connection's now.
            let dropped = old.outbound.hand_over(&peer.outbound);
            if dropped > 0 {
                warn!(server_id = %peer.server_id, dropped, "replacing the older connection: deliveries over the queue's bounds dropped");
            }
            old.close(CloseCode::Replaced);
        }
        Ok(())
    }

    /// Removes the identity if it is still held by `session`, and records
    /// that it left (unless another router holds it), for the next
    /// presence batch. A replaced connection's cleanup removes nothing.
    pub(crate) fn unregister(&self, server_id: &str, session: u64) -> bool {
        let mut map = write(&self.peers);
        let id = match map.local.get_key_value(server_id) {
            Some((id, p)) if p.session == session => id.clone(),
            _ => return false,
        };
        map.local.remove(server_id);
        if !map.remote.contains_key(server_id) {
            record(&mut lock(&self.changes), &self.changed, id, false);
        }
        true
    }

    /// Takes `peer` out of the table as [`Table::unregister`] does, and
    /// keeps it among the retiring connections until [`Table::retired`]:
    /// its queue still counts in the gauges, and shutdown or a revocation
    /// still closes it.
    pub(crate) fn retire(&self, peer: &Arc<Peer>) {
        self.unregister(&peer.server_id, peer.session);
        lock(&self.retiring).push(peer.clone());
    }

    /// Forgets `peer` as retiring: it is closed.
    pub(crate) fn retired(&self, peer: &Peer) {
        lock(&self.retiring).retain(|p| p.session != peer.session);
    }

    /// Records that another router holds `id` (`Some`), or none does,
    /// announcing the change if `id` came online or went offline in all.
    /// Returns the peer connected here under `id`, if any, for the caller
    /// to settle which claim holds.
    pub(crate) fn set_remote(&self, id: &Arc<str>, owner: Option<Owner>) -> Option<Arc<Peer>> {
        let mut map = write(&self.peers);
        let before = map.online(id);
        match owner {
            Some(o) => {
                map.remote.insert(id.clone(), o);
            }
            None => {
                map.remote.remove(id);
            }
        }
        let after = map.online(id);
        if before != after {
            record(&mut lock(&self.changes), &self.changed, id.clone(), after);
        }
        map.local.get(id).cloned()
    }

    /// The router that holds `id`, if another does.
    pub(crate) fn remote_owner(&self, id: &str) -> Option<Owner> {
        read(&self.peers).remote.get(id).cloned()
    }

    /// The peer connected here under `id`.
    pub(crate) fn local(&self, id: &str) -> Option<Arc<Peer>> {
        read(&self.peers).local.get(id).cloned()
    }

    /// Every identity connected here whose claim the cluster was told of
    /// ([`Peer::announced`]), with its claim's time.
    pub(crate) fn claims(&self) -> Vec<(String, u64)> {
        read(&self.peers)
            .local
            .values()
            .filter(|p| p.announced.load(std::sync::atomic::Ordering::Acquire))
            .map(|p| (p.server_id.to_string(), p.since))
            .collect()
    }

    /// The time for a new claim of `id`: now, or later than the claim of
    /// the router that holds it, whichever is larger (a clock behind
    /// another router's must not lose a takeover).
    pub(crate) fn claim_since(&self, id: &str, now_ms: u64) -> u64 {
        let remote = read(&self.peers).remote.get(id).map_or(0, |o| o.since + 1);
        now_ms.max(remote)
    }

    /// Waits until a presence change is recorded.
    pub(crate) async fn changed(&self) {
        if lock(&self.changes).is_empty() {
            self.changed.notified().await;
        }
    }

    /// Takes the changes recorded since the last call, and sends them to
    /// every connected peer as one batch: each peer gets one buffer of
    /// `presence` frames, without those about itself. Returns how many
    /// changes the batch held, and how many `presence` messages were queued
    /// in all. The table stays locked throughout, so that no peer registers
    /// between the batch and its sending (its welcome would then count the
    /// batch in, and it would get the batch too).
    pub(crate) fn send_presence(&self) -> (usize, u64) {
        let map = read(&self.peers);
        let changes = std::mem::take(&mut *lock(&self.changes));
        let map = &map.local;
        if changes.is_empty() {
            return (0, 0);
        }
        let batch = PresenceBatch::new(&changes);
        let mut sent = 0;
        for peer in map.values() {
            let (parts, count) = batch.for_peer(&peer.server_id);
            for part in parts {
                peer.try_frame(part);
            }
            sent += count as u64;
        }
        (changes.len(), sent)
    }

    /// One page of `who` for `me` (docs/PROTOCOL.md §3.1): the identities
    /// online now, `me` left out, ordered, from the first after `after`, at
    /// most [`MAX_ROSTER_PAGE`]; each with its router's name (`here` for
    /// those connected to this router). Says whether more follow. One pass
    /// over the table, keeping the smallest ids in a bounded heap.
    pub(crate) fn roster(
        &self,
        me: &str,
        after: Option<&str>,
        here: Option<&str>,
    ) -> (Vec<RosterEntry>, bool) {
        let map = read(&self.peers);
        let mut page: BinaryHeap<&Arc<str>> = BinaryHeap::new();
        let mut more = false;
        for id in map.ids() {
            if **id == *me || after.is_some_and(|a| **id <= *a) {
                continue;
            }
            if page.len() < MAX_ROSTER_PAGE {
                page.push(id);
                continue;
            }
            more = true;
            if page.peek().is_some_and(|largest| id < *largest) {
                page.pop();
                page.push(id);
            }
        }
        let entries = page
            .into_sorted_vec()
            .into_iter()
            .map(|id| RosterEntry {
                server_id: id.to_string(),
                router: match map.remote.get(id) {
                    Some(owner) if !map.local.contains_key(id) => Some(owner.router.to_string()),
                    _ => here.map(str::to_owned),
                },
            })
            .collect();
        (entries, more)
    }

    /// Every peer connected here.
    pub(crate) fn all(&self) -> Vec<Arc<Peer>> {
        read(&self.peers).local.values().cloned().collect()
    }

    /// The connections out of the table still writing their last
    /// deliveries ([`Table::retire`]).
    pub(crate) fn retiring(&self) -> Vec<Arc<Peer>> {
        lock(&self.retiring).clone()
    }

    /// How many servers other routers hold (and none here).
    pub(crate) fn remote_count(&self) -> usize {
        let map = read(&self.peers);
        map.remote
            .keys()
            .filter(|id| !map.local.contains_key(&***id))
            .count()
    }

    /// Resolves a send's target to the peers it reaches here, the servers
    /// it reaches on other routers (by router), and the named servers that
    /// are offline. The send has passed [`icom_protocol::SendRef::validate`]:
    /// a single named server is not checked again.
    ///
    /// # Errors
    /// The target's error (the send is `invalid`).
    pub(crate) fn resolve(
        &self,
        from: &str,
        to: &icom_protocol::TargetRef<'_>,
        groups: &Groups,
    ) -> Result<Resolved, icom_protocol::TargetError> {
        let map = read(&self.peers);
        let mut out = Resolved::default();
        // One named server, the most frequent target: no list of one.
        if let icom_protocol::TargetRef::Server(id) = to {
            out.place(&map, id, true);
            return Ok(out);
        }
        let (ids, named) = match to.resolve(from, map.ids().map(|k| &**k), groups)? {
            Recipients::Named(ids) => (ids, true),
            Recipients::Connected(ids) => (ids, false),
        };
        for id in ids {
            out.place(&map, id, named);
        }
        Ok(out)
    }
}

impl Resolved {
    /// Adds server `id`: connected here, on another router, or (when it
    /// was named) offline.
    fn place(&mut self, map: &Members, id: &str, named: bool) {
        if let Some(peer) = map.local.get(id) {
            self.peers.push(peer.clone());
        } else if let Some((id, owner)) = map.remote.get_key_value(id) {
            match self.remote.iter_mut().find(|(r, _)| *r == owner.router) {
                Some((_, ids)) => ids.push(id.clone()),
                None => self.remote.push((owner.router.clone(), vec![id.clone()])),
            }
        } else if named {
            self.offline.push(id.to_owned());
        }
    }
}

/// Why [`Table::register`] did not register a peer: its identity is
/// online, and the peer asked not to replace it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InUse;

/// The recipients of one send that are connected here: nearly always one,
/// kept inline (no allocation per event).
pub(crate) type LocalPeers = SmallVec<[Arc<Peer>; 1]>;

/// Where one send goes.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    /// Recipients connected here.
    pub(crate) peers: LocalPeers,
    /// Recipients on other routers, by router.
    pub(crate) remote: Vec<(Arc<str>, Vec<Arc<str>>)>,
    /// Named recipients that are not connected.
    pub(crate) offline: Vec<String>,
}

/// Records that `id` came (`online`) or went, waking the presence task.
fn record(changes: &mut Vec<(Arc<str>, bool)>, changed: &Notify, id: Arc<str>, online: bool) {
    changes.push((id, online));
    if changes.len() == 1 {
        changed.notify_one();
    }
}

/// Presence changes encoded once, as consecutive `presence` frames.
struct PresenceBatch {
    all: Bytes,
    /// How many frames `all` holds.
    count: usize,
    /// Where each identity's frames sit in `all`.
    spans: HashMap<Arc<str>, Vec<std::ops::Range<usize>>>,
}

impl PresenceBatch {
    fn new(changes: &[(Arc<str>, bool)]) -> PresenceBatch {
        let mut all = Vec::new();
        let mut spans: HashMap<Arc<str>, Vec<std::ops::Range<usize>>> = HashMap::new();
        for (id, online) in changes {
            let start = all.len();
            all.extend(encode_frame(&Control::Presence(Presence {
                server_id: id.to_string(),
                online: *online,
            })));
            spans.entry(id.clone()).or_default().push(start..all.len());
        }
        PresenceBatch {
            all: Bytes::from(all),
            count: changes.len(),
            spans,
        }
    }

    /// The frames for `peer` (all but those about itself), as slices of
    /// the one shared buffer, and how many frames.
    fn for_peer(&self, peer: &str) -> (Vec<Bytes>, usize) {
        let Some(own) = self.spans.get(peer) else {
            return (vec![self.all.clone()], self.count);
        };
        let mut parts = Vec::with_capacity(own.len() + 1);
        let mut from = 0;
        for span in own {
            if span.start > from {
                parts.push(self.all.slice(from..span.start));
            }
            from = span.end;
        }
        if from < self.all.len() {
            parts.push(self.all.slice(from..));
        }
        (parts, self.count - own.len())
    }
}

/// A control message as a frame for [`Peer::control`].
pub(crate) fn frame(msg: &Control) -> Bytes {
    Bytes::from(encode_frame(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table holding `ids` as servers of other routers (router `r<n % 3>`),
    /// which need no connection.
    fn remote_table(ids: &[String]) -> Table {
        let table = Table::default();
        for (n, id) in ids.iter().enumerate() {
            let owner = Owner {
                router: format!("r{}", n % 3).into(),
                since: 1,
            };
            let _ = table.set_remote(&Arc::from(id.as_str()), Some(owner));
        }
        table
    }

    #[test]
    fn the_roster_pages_through_every_server_once_in_order() {
        let mut ids: Vec<String> = (0..2 * MAX_ROSTER_PAGE + 7)
            .map(|n| format!("s{n:05}"))
            .collect();
        // In the table in no particular order.
        ids.reverse();
        let table = remote_table(&ids);
        let mut got: Vec<RosterEntry> = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let (page, more) = table.roster("s00003", after.as_deref(), Some("here"));
            pages += 1;
            assert!(page.len() <= MAX_ROSTER_PAGE);
            after = page.last().map(|e| e.server_id.clone());
            got.extend(page);
            if !more {
                break;
            }
        }
        assert_eq!(pages, 3);
        ids.sort();
        ids.retain(|id| id != "s00003");
        let listed: Vec<&str> = got.iter().map(|e| e.server_id.as_str()).collect();
        assert_eq!(listed, ids, "each once, in order, the asker left out");
        // Each with the router that holds it.
        let e = got.iter().find(|e| e.server_id == "s00000").unwrap();
        let n = 2 * MAX_ROSTER_PAGE + 6; // s00000 was the last inserted
        assert_eq!(e.router.as_deref(), Some(format!("r{}", n % 3).as_str()));
    }

    #[test]
    fn a_short_roster_is_one_page_and_after_skips_what_came_before() {
        let table = remote_table(&["b".into(), "a".into(), "c".into()]);
        let (page, more) = table.roster("x", None, None);
        assert!(!more);
        let ids: Vec<&str> = page.iter().map(|e| e.server_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let (page, more) = table.roster("x", Some("a"), None);
        assert!(!more);
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].server_id, "b");
        // Past the last: empty, and nothing more.
        assert_eq!(table.roster("x", Some("c"), None), (Vec::new(), false));
        assert_eq!(
            Table::default().roster("x", None, None),
            (Vec::new(), false)
        );
    }
}

//! Who else is connected, as a stream of changes: [`Presences`], from
//! [`Client::presence`](crate::Client::presence). The peer set itself is
//! the session's; this reader keeps its own view of it, which starts as the
//! set at the moment it was made and follows each change it hands out.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Weak};

use icom_protocol::Presence;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

use crate::core::Core;

/// Where a [`Presences`] takes the peer set from, with a receiver of the
/// changes that follow it (`None` once the client is closed); the client's
/// [`Core`], or a stand-in in tests.
pub(crate) trait PeerSource: Send + Sync {
    fn follow(&self) -> (BTreeSet<String>, Option<broadcast::Receiver<Presence>>);
}

impl PeerSource for Core {
    fn follow(&self) -> (BTreeSet<String>, Option<broadcast::Receiver<Presence>>) {
        self.follow_peers()
    }
}

/// The changes of the set of other servers connected, from the moment the
/// stream was made: each server that came (`online: true`) or left.
///
/// - It starts from [`Presences::peers`], the set when it was made (empty
///   before the client's first `welcome`), and every change it hands out
///   is a change of that view: a server announced online is not in it, one
///   announced offline is. Folding the changes into the starting set gives
///   the client's set ([`Client::peers`](crate::Client::peers)).
/// - After a reconnect, the new `welcome` is compared with the set before:
///   only the servers that came or left meanwhile are reported, not every
///   server again. While the client is disconnected, nothing changes.
/// - A reader that falls more than 1024 changes behind is not left with a
///   gap: it catches up with the difference between its view and the set
///   now.
/// - It ends when the client is closed.
pub struct Presences {
    source: Weak<dyn PeerSource>,
    rx: Option<broadcast::Receiver<Presence>>,
    view: BTreeSet<String>,
    /// Changes found on catching up, not handed out yet.
    pending: VecDeque<Presence>,
}

impl std::fmt::Debug for Presences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presences")
            .field("peers", &self.view.len())
            .field("pending", &self.pending.len())
            .field("open", &self.rx.is_some())
            .finish()
    }
}

impl Presences {
    pub(crate) fn new(source: Arc<dyn PeerSource>) -> Presences {
        let (view, rx) = source.follow();
        Presences {
            source: Arc::downgrade(&source),
            rx,
            view,
            pending: VecDeque::new(),
        }
    }

    /// The other servers connected as this stream has told so far: the set
    /// it started from with every change it handed out applied, in order.
    pub fn peers(&self) -> Vec<String> {
        self.view.iter().cloned().collect()
    }

    /// The next change; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Presence> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                self.apply(&change);
                return Some(change);
            }
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Ok(change) => {
                    if self.apply(&change) {
                        return Some(change);
                    }
                }
                Err(RecvError::Lagged(_)) => self.catch_up(),
                Err(RecvError::Closed) => self.rx = None,
            }
        }
    }

    /// The next change if one is waiting, without waiting (to gather a
    /// burst); `None` when none is, or once the client is closed.
    pub fn try_next(&mut self) -> Option<Presence> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                self.apply(&change);
                return Some(change);
            }
            match self.rx.as_mut()?.try_recv() {
                Ok(change) => {
                    if self.apply(&change) {
                        return Some(change);
                    }
                }
                Err(TryRecvError::Lagged(_)) => self.catch_up(),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Closed) => {
                    self.rx = None;
                    return None;
                }
            }
        }
    }

    /// Applies `change` to the view; false if it changed nothing.
    fn apply(&mut self, change: &Presence) -> bool {
        if change.online {
            self.view.insert(change.server_id.clone())
        } else {
            self.view.remove(&change.server_id)
        }
    }

    /// Fell behind: takes the set now with a fresh place in the channel,
    /// and queues the difference from the view (those who left first).
    fn catch_up(&mut self) {
        let Some(source) = self.source.upgrade() else {
            self.rx = None;
            return;
        };
        let (now, rx) = source.follow();
        self.rx = rx;
        let left = self.view.difference(&now).map(|id| Presence {
            server_id: id.clone(),
            online: false,
        });
        let came = now.difference(&self.view).map(|id| Presence {
            server_id: id.clone(),
            online: true,
        });
        self.pending = left.chain(came).collect();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A peer set and its channel, as the core keeps them.
    struct Set {
        inner: Mutex<(BTreeSet<String>, Option<broadcast::Sender<Presence>>)>,
    }

    impl Set {
        fn new(ids: &[&str], backlog: usize) -> Arc<Set> {
            Arc::new(Set {
                inner: Mutex::new((
                    ids.iter().map(|s| (*s).to_owned()).collect(),
                    Some(broadcast::Sender::new(backlog)),
                )),
            })
        }

        fn change(&self, id: &str, online: bool) {
            let mut inner = self.inner.lock().unwrap();
            let changed = if online {
                inner.0.insert(id.to_owned())
            } else {
                inner.0.remove(id)
            };
            if changed {
                let _ = inner.1.as_ref().unwrap().send(p(id, online));
            }
        }

        fn close(&self) {
            self.inner.lock().unwrap().1.take();
        }
    }

    impl PeerSource for Set {
        fn follow(&self) -> (BTreeSet<String>, Option<broadcast::Receiver<Presence>>) {
            let inner = self.inner.lock().unwrap();
            (
                inner.0.clone(),
                inner.1.as_ref().map(broadcast::Sender::subscribe),
            )
        }
    }

    fn p(id: &str, online: bool) -> Presence {
        Presence {
            server_id: id.into(),
            online,
        }
    }

    #[tokio::test]
    async fn changes_follow_the_set_from_where_the_stream_started() {
        let set = Set::new(&["a", "b"], 16);
        let mut stream = Presences::new(set.clone());
        assert_eq!(stream.peers(), ["a", "b"]);
        assert_eq!(stream.try_next(), None, "nothing waits");
        set.change("c", true);
        set.change("a", false);
        assert_eq!(stream.next().await, Some(p("c", true)));
        assert_eq!(stream.try_next(), Some(p("a", false)));
        assert_eq!(stream.peers(), ["b", "c"]);
        set.close();
        assert_eq!(stream.next().await, None);
        assert_eq!(stream.next().await, None, "and stays ended");
    }

    #[tokio::test]
    async fn a_reader_that_fell_behind_gets_the_difference_not_a_gap() {
        let set = Set::new(&["a", "b"], 4);
        let mut stream = Presences::new(set.clone());
        // Far more changes than the channel holds: b flaps, c..z come, a
        // leaves.
        for _ in 0..5 {
            set.change("b", false);
            set.change("b", true);
        }
        for c in 'c'..='z' {
            set.change(&c.to_string(), true);
        }
        set.change("a", false);
        let mut got = Vec::new();
        while stream.peers() != set.follow().0.into_iter().collect::<Vec<_>>() {
            got.push(stream.next().await.unwrap());
        }
        // What changed in all: a left, c..z came; b's flaps cancel out.
        let mut want = vec![p("a", false)];
        want.extend(('c'..='z').map(|c| p(&c.to_string(), true)));
        assert_eq!(got, want);
        // And it follows on from there.
        set.change("b", false);
        assert_eq!(stream.next().await, Some(p("b", false)));
    }

    #[tokio::test]
    async fn a_stream_made_after_close_ends_at_once() {
        let set = Set::new(&["a"], 4);
        set.close();
        let mut stream = Presences::new(set.clone());
        assert_eq!(stream.peers(), ["a"]);
        assert_eq!(stream.next().await, None);
    }
}

//! What this router knows of the others: which servers each holds, built
//! from their notices (without I/O, so that it is tested with plain
//! values). A server is owned by the router with the newest claim; one
//! that moved is held for its new router until that router's own notice
//! arrives (notices of different routers may cross), so that a takeover
//! never shows as offline then online.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wire::{Change, Member, Notice};
use crate::router::Owner;

#[derive(Debug)]
struct Router {
    epoch: u64,
    seq: u64,
    members: HashMap<Arc<str>, u64>,
    heard: Instant,
}

/// Other routers known at once, at most; notices of more are ignored.
pub(crate) const MAX_ROUTERS: usize = 1024;

/// A server that moved to `router`, not yet in that router's notices.
#[derive(Debug)]
struct Moving {
    router: Arc<str>,
    since: u64,
    until: Instant,
}

/// What applying a notice did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Servers whose owner may have changed.
    pub(crate) touched: Vec<Arc<str>>,
    /// The notice came from a router of this router's own name, another
    /// incarnation: two routers share a name.
    pub(crate) same_name: bool,
}

/// The other routers and their servers.
#[derive(Debug)]
pub(crate) struct View {
    me: String,
    epoch: u64,
    routers: HashMap<Arc<str>, Router>,
    moving: HashMap<Arc<str>, Moving>,
    /// How long a moved server is held for its new router.
    hold: Duration,
}

impl View {
    pub(crate) fn new(me: &str, epoch: u64, hold: Duration) -> View {
        View {
            me: me.to_owned(),
            epoch,
            routers: HashMap::new(),
            moving: HashMap::new(),
            hold,
        }
    }

    /// Applies a notice received at `now`.
    pub(crate) fn apply(&mut self, notice: Notice, now: Instant) -> Applied {
        let (router, epoch, seq) = match &notice {
            Notice::Beat {
                router, epoch, seq, ..
            }
            | Notice::Delta {
                router, epoch, seq, ..
            } => (router.clone(), *epoch, *seq),
            Notice::Gone { router, epoch } => (router.clone(), *epoch, 0),
        };
        let mut out = Applied::default();
        if router == self.me {
            out.same_name = epoch != self.epoch;
            return out;
        }
        if let Notice::Gone { .. } = notice {
            // Its last word: forgotten at once, unless it restarted since.
            if let Some(r) = self.routers.get(router.as_str()) {
                if r.epoch <= epoch {
                    out.touched.extend(r.members.keys().cloned());
                    self.routers.remove(router.as_str());
                }
            }
            out.touched.sort_unstable();
            return out;
        }
        let name: Arc<str> = match self.routers.get_key_value(router.as_str()) {
            Some((k, _)) => k.clone(),
            // Names come from the network: a bounded number of routers.
            None if self.routers.len() >= MAX_ROUTERS => return out,
            None => router.into(),
        };
        let state = self.routers.entry(name.clone()).or_insert_with(|| Router {
            epoch,
            seq: 0,
            members: HashMap::new(),
            heard: now,
        });
        if epoch < state.epoch {
            // An older incarnation's notice, still on its way.
            return out;
        }
        if epoch > state.epoch {
            // The router restarted: what it held before is gone.
            out.touched.extend(state.members.keys().cloned());
            *state = Router {
                epoch,
                seq: 0,
                members: HashMap::new(),
                heard: now,
            };
        }
        state.heard = now;
        match notice {
            Notice::Gone { .. } => {}
            Notice::Beat { members, .. } => {
                if seq < state.seq {
                    return out;
                }
                state.seq = seq;
                let new: HashMap<Arc<str>, u64> = members
                    .into_iter()
                    .map(|Member { id, since }| (Arc::from(id), since))
                    .collect();
                for (id, since) in &state.members {
                    if new.get(id) != Some(since) {
                        out.touched.push(id.clone());
                    }
                }
                for (id, since) in &new {
                    if state.members.get(id) != Some(since) {
                        out.touched.push(id.clone());
                    }
                }
                state.members = new;
            }
            Notice::Delta { changes, .. } => {
                if seq <= state.seq {
                    return out;
                }
                state.seq = seq;
                for Change {
                    id,
                    since,
                    online,
                    moved_to,
                } in changes
                {
                    let id: Arc<str> = id.into();
                    if online {
                        state.members.insert(id.clone(), since);
                    } else {
                        state.members.remove(&id);
                        if let Some(to) = moved_to {
                            // Bounded like a notice: past it a move is not
                            // held, and may show as offline then online.
                            if to != self.me && self.moving.len() < super::wire::MAX_NAMES {
                                self.moving.insert(
                                    id.clone(),
                                    Moving {
                                        router: to.into(),
                                        since,
                                        until: now + self.hold,
                                    },
                                );
                            }
                        }
                    }
                    out.touched.push(id);
                }
            }
        }
        // A move is settled once its new router names the server.
        self.moving.retain(|id, m| {
            !self
                .routers
                .get(&m.router)
                .is_some_and(|r| r.members.contains_key(id))
        });
        out.touched.sort_unstable();
        out.touched.dedup();
        out
    }

    /// Forgets routers silent for `timeout` and moves past their hold;
    /// returns the servers touched and the routers forgotten.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
    ) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let mut touched = Vec::new();
        let mut gone = Vec::new();
        self.routers.retain(|name, r| {
            let alive = now.saturating_duration_since(r.heard) < timeout;
            if !alive {
                touched.extend(r.members.keys().cloned());
                gone.push(name.clone());
            }
            alive
        });
        self.moving.retain(|id, m| {
            let keep = m.until > now && !gone.contains(&m.router);
            if !keep {
                touched.push(id.clone());
            }
            keep
        });
        touched.sort_unstable();
        touched.dedup();
        (touched, gone)
    }

    /// The router that holds `id` now, if any other does: the newest
    /// claim wins (ties: the larger router name), then a move on its way.
    pub(crate) fn owner(&self, id: &str) -> Option<Owner> {
        let best = self
            .routers
            .iter()
            .filter_map(|(name, r)| r.members.get(id).map(|s| (*s, name)))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        if let Some((since, router)) = best {
            return Some(Owner {
                router: router.clone(),
                since,
            });
        }
        self.moving.get(id).map(|m| Owner {
            router: m.router.clone(),
            since: m.since,
        })
    }

    /// Routers heard from, and the servers they hold (counted once each).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let mut ids: Vec<&Arc<str>> = self
            .routers
            .values()
            .flat_map(|r| r.members.keys())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        (self.routers.len(), ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(router: &str, epoch: u64, seq: u64, members: &[(&str, u64)]) -> Notice {
        Notice::Beat {
            router: router.into(),
            epoch,
            seq,
            members: members
                .iter()
                .map(|(id, since)| Member {
                    id: (*id).into(),
                    since: *since,
                })
                .collect(),
        }
    }

    fn delta(
        router: &str,
        epoch: u64,
        seq: u64,
        id: &str,
        since: u64,
        online: bool,
        moved_to: Option<&str>,
    ) -> Notice {
        Notice::Delta {
            router: router.into(),
            epoch,
            seq,
            changes: vec![Change {
                id: id.into(),
                since,
                online,
                moved_to: moved_to.map(Into::into),
            }],
        }
    }

    fn owner(v: &View, id: &str) -> Option<String> {
        v.owner(id).map(|o| o.router.to_string())
    }

    const HOLD: Duration = Duration::from_secs(5);

    #[test]
    fn beats_and_deltas_build_the_view_in_order() {
        let now = Instant::now();
        let mut v = View::new("c", 1, HOLD);
        let a = v.apply(beat("a", 1, 0, &[("s1", 10)]), now);
        assert_eq!(a.touched, [Arc::from("s1")]);
        assert_eq!(owner(&v, "s1").as_deref(), Some("a"));
        v.apply(delta("a", 1, 1, "s2", 11, true, None), now);
        assert_eq!(owner(&v, "s2").as_deref(), Some("a"));
        // A repeated or older delta changes nothing.
        assert!(v
            .apply(delta("a", 1, 1, "s2", 11, false, None), now)
            .touched
            .is_empty());
        assert_eq!(owner(&v, "s2").as_deref(), Some("a"));
        // A beat older than the last delta is not applied.
        v.apply(beat("a", 1, 0, &[]), now);
        assert_eq!(v.counts(), (1, 2));
        // A beat as new as the deltas is the truth: s2 left meanwhile.
        let a = v.apply(beat("a", 1, 2, &[("s1", 10)]), now);
        assert_eq!(a.touched, [Arc::from("s2")]);
        assert_eq!(owner(&v, "s2"), None);
    }

    #[test]
    fn a_restarted_router_starts_empty_and_old_notices_are_ignored() {
        let now = Instant::now();
        let mut v = View::new("c", 1, HOLD);
        v.apply(beat("a", 1, 5, &[("s1", 10), ("s2", 10)]), now);
        let a = v.apply(delta("a", 2, 1, "s3", 20, true, None), now);
        assert_eq!(
            a.touched,
            [Arc::from("s1"), Arc::from("s2"), Arc::from("s3")]
        );
        assert_eq!(owner(&v, "s1"), None);
        assert_eq!(owner(&v, "s3").as_deref(), Some("a"));
        assert!(v
            .apply(beat("a", 1, 9, &[("s1", 10)]), now)
            .touched
            .is_empty());
        assert_eq!(owner(&v, "s1"), None);
    }

    #[test]
    fn the_newest_claim_owns_and_a_move_never_shows_offline() {
        let now = Instant::now();
        let mut v = View::new("c", 1, HOLD);
        v.apply(beat("a", 1, 0, &[("x", 10)]), now);
        v.apply(beat("b", 1, 0, &[]), now);
        // a's "x moved to b" arrives before b's own claim.
        v.apply(delta("a", 1, 1, "x", 20, false, Some("b")), now);
        assert_eq!(owner(&v, "x").as_deref(), Some("b"));
        // b's beat from before the claim does not drop the move.
        v.apply(beat("b", 1, 0, &[]), now);
        assert_eq!(owner(&v, "x").as_deref(), Some("b"));
        v.apply(delta("b", 1, 1, "x", 20, true, None), now);
        assert_eq!(owner(&v, "x").as_deref(), Some("b"));
        // Both claim at once: the newer wins, then the larger name.
        v.apply(delta("a", 1, 2, "y", 30, true, None), now);
        v.apply(delta("b", 1, 2, "y", 31, true, None), now);
        assert_eq!(owner(&v, "y").as_deref(), Some("b"));
        v.apply(delta("a", 1, 3, "z", 40, true, None), now);
        v.apply(delta("b", 1, 3, "z", 40, true, None), now);
        assert_eq!(owner(&v, "z").as_deref(), Some("b"));
    }

    #[test]
    fn a_silent_router_and_an_unsettled_move_expire() {
        let t0 = Instant::now();
        let mut v = View::new("c", 1, HOLD);
        v.apply(beat("a", 1, 0, &[("s1", 1)]), t0);
        v.apply(beat("b", 1, 0, &[("s2", 1)]), t0);
        v.apply(delta("b", 1, 1, "s2", 5, false, Some("d")), t0);
        assert_eq!(owner(&v, "s2").as_deref(), Some("d"));
        let t1 = t0 + Duration::from_secs(3);
        v.apply(beat("a", 1, 0, &[("s1", 1)]), t1);
        let (touched, gone) = v.expire(t0 + Duration::from_secs(4), Duration::from_secs(4));
        assert_eq!(gone, [Arc::from("b")]);
        assert!(touched.is_empty(), "{touched:?}");
        assert_eq!(owner(&v, "s1").as_deref(), Some("a"));
        let (touched, _) = v.expire(t0 + Duration::from_secs(6), Duration::from_secs(4));
        assert_eq!(touched, [Arc::from("s2")]);
        assert_eq!(owner(&v, "s2"), None);
        let (touched, gone) = v.expire(t1 + Duration::from_secs(4), Duration::from_secs(4));
        assert_eq!(
            (touched, gone),
            (vec![Arc::from("s1")], vec![Arc::from("a")])
        );
        assert_eq!(v.counts(), (0, 0));
    }

    #[test]
    fn a_router_that_says_it_is_gone_is_forgotten_at_once() {
        let now = Instant::now();
        let mut v = View::new("c", 1, HOLD);
        v.apply(beat("a", 5, 0, &[("s1", 1)]), now);
        // A farewell of an older incarnation changes nothing.
        assert!(v
            .apply(
                Notice::Gone {
                    router: "a".into(),
                    epoch: 4
                },
                now
            )
            .touched
            .is_empty());
        let a = v.apply(
            Notice::Gone {
                router: "a".into(),
                epoch: 5,
            },
            now,
        );
        assert_eq!(a.touched, [Arc::from("s1")]);
        assert_eq!((owner(&v, "s1"), v.counts()), (None, (0, 0)));
    }

    #[test]
    fn the_routers_known_are_bounded() {
        let now = Instant::now();
        let mut v = View::new("c", 1, HOLD);
        for i in 0..MAX_ROUTERS {
            v.apply(beat(&format!("r{i}"), 1, 0, &[]), now);
        }
        let a = v.apply(beat("one-too-many", 1, 0, &[("s", 1)]), now);
        assert!(a.touched.is_empty());
        assert_eq!(owner(&v, "s"), None);
        assert_eq!(v.counts().0, MAX_ROUTERS);
        // A known router is still heard.
        v.apply(beat("r0", 1, 1, &[("s", 1)]), now);
        assert_eq!(owner(&v, "s").as_deref(), Some("r0"));
    }

    #[test]
    fn notices_of_this_routers_name_are_not_applied() {
        let mut v = View::new("a", 7, HOLD);
        let now = Instant::now();
        assert_eq!(
            v.apply(beat("a", 7, 0, &[("s", 1)]), now),
            Applied::default()
        );
        assert!(v.apply(beat("a", 8, 0, &[("s", 1)]), now).same_name);
        assert_eq!(owner(&v, "s"), None);
        // A move to this router is not held: it has the server itself.
        v.apply(beat("b", 1, 0, &[("s", 1)]), now);
        v.apply(delta("b", 1, 1, "s", 2, false, Some("a")), now);
        assert_eq!(owner(&v, "s"), None);
    }
}

//! The routing table: who is connected, under which session, and how an
//! event reaches each recipient. The one module that knows where a server
//! is; a future shared backplane replaces what is behind this boundary.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use icom_protocol::{
    Ack, AckCode, AckError, CloseCode, Control, Deliver, Groups, Presence, Recipients, Send,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::outbound::{Outbound, PushError};

/// One connected, welcomed identity.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) server_id: Arc<str>,
    /// Unique per connection, to tell a replaced connection from its successor.
    pub(crate) session: u64,
    pub(crate) conn: quinn::Connection,
    pub(crate) outbound: Outbound,
    pub(crate) control: mpsc::Sender<Control>,
    /// The leaf certificate's serial, for revocation on reload.
    pub(crate) serial: Vec<u8>,
}

impl Peer {
    /// Queues a control frame without waiting; a client that does not read
    /// its control stream loses the frame, and the loss is logged.
    pub(crate) fn try_control(&self, msg: Control) {
        if let Err(e) = self.control.try_send(msg) {
            warn!(server_id = %self.server_id, "control queue full or closed, dropped a frame: {e}");
        }
    }

    pub(crate) fn close(&self, code: CloseCode) {
        self.conn
            .close(code.code().into(), code.as_str().as_bytes());
    }
}

/// The table of connected identities.
#[derive(Debug, Default)]
pub(crate) struct Table {
    peers: RwLock<HashMap<Arc<str>, Arc<Peer>>>,
}

/// The outcome of registering a connection.
pub(crate) struct Registered {
    /// Every other connected identity, for `welcome`.
    pub(crate) peers: Vec<String>,
}

impl Table {
    /// Registers a peer. An older connection with the same identity is
    /// replaced in the same step (closed with `REPLACED`, no presence
    /// change); otherwise every other peer is told it came online.
    pub(crate) fn register(&self, peer: Arc<Peer>) -> Registered {
        let (old, others) = {
            let mut map = write(&self.peers);
            let old = map.insert(peer.server_id.clone(), peer.clone());
            let others: Vec<Arc<Peer>> = map
                .values()
                .filter(|p| p.server_id != peer.server_id)
                .cloned()
                .collect();
            (old, others)
        };
        match old {
            Some(old) => {
                debug!(server_id = %peer.server_id, "replacing the older connection");
                old.outbound.close();
                old.close(CloseCode::Replaced);
            }
            None => {
                for p in &others {
                    p.try_control(Control::Presence(Presence {
                        server_id: peer.server_id.to_string(),
                        online: true,
                    }));
                }
            }
        }
        Registered {
            peers: others.iter().map(|p| p.server_id.to_string()).collect(),
        }
    }

    /// Removes the identity if it is still held by `session`; tells the
    /// others it left. A replaced connection's cleanup removes nothing.
    pub(crate) fn unregister(&self, server_id: &str, session: u64) -> bool {
        let others: Vec<Arc<Peer>> = {
            let mut map = write(&self.peers);
            match map.get(server_id) {
                Some(p) if p.session == session => {
                    map.remove(server_id);
                }
                _ => return false,
            }
            map.values().cloned().collect()
        };
        for p in others {
            p.try_control(Control::Presence(Presence {
                server_id: server_id.to_owned(),
                online: false,
            }));
        }
        true
    }

    /// Every connected peer.
    pub(crate) fn all(&self) -> Vec<Arc<Peer>> {
        read(&self.peers).values().cloned().collect()
    }

    /// How many identities are connected.
    pub(crate) fn len(&self) -> usize {
        read(&self.peers).len()
    }

    /// Routes one valid send from `from` and builds its ack. `sent_ms` is
    /// the router's clock.
    pub(crate) fn route(&self, from: &str, send: &Send, groups: &Groups, sent_ms: u64) -> Ack {
        if let Err(e) = send.validate(groups) {
            return Ack::failed(send.id, AckCode::Invalid, e.to_string());
        }
        let wire = Bytes::from(
            Deliver {
                from: from.to_owned(),
                id: send.id,
                event: send.event.clone(),
                data: send.data.clone(),
                persist_id: None,
                reply_to: send.reply_to,
                sent_ms,
            }
            .encode(),
        );
        let mut tally = Tally::new(send.id);
        let map = read(&self.peers);
        let resolved = match send.to.resolve(from, map.keys().map(|k| &**k), groups) {
            Ok(r) => r,
            Err(e) => return Ack::failed(send.id, AckCode::Invalid, e.to_string()),
        };
        match resolved {
            Recipients::Named(ids) => {
                for id in ids {
                    match map.get(id) {
                        Some(peer) => tally.push(peer, &wire),
                        None => {
                            tally.fail(AckCode::NotFound, format!("server '{id}' is not connected"))
                        }
                    }
                }
            }
            Recipients::Connected(ids) => {
                for id in ids {
                    if let Some(peer) = map.get(id) {
                        tally.push(peer, &wire);
                    }
                }
            }
        }
        tally.ack
    }
}

/// Counts deliveries into an ack, keeping the first failure.
struct Tally {
    ack: Ack,
}

impl Tally {
    fn new(id: u64) -> Tally {
        Tally {
            ack: Ack {
                id,
                ok: true,
                delivered: 0,
                queued: 0,
                persist_id: None,
                error: None,
            },
        }
    }

    fn push(&mut self, peer: &Peer, wire: &Bytes) {
        match peer.outbound.push(wire.clone()) {
            Ok(()) => self.ack.delivered += 1,
            Err(PushError::Full) => self.fail(
                AckCode::Congested,
                format!("the outbound queue of server '{}' is full", peer.server_id),
            ),
            Err(PushError::Closed) => self.fail(
                AckCode::NotFound,
                format!("server '{}' is not connected", peer.server_id),
            ),
        }
    }

    fn fail(&mut self, code: AckCode, message: String) {
        self.ack.ok = false;
        if self.ack.error.is_none() {
            self.ack.error = Some(AckError { code, message });
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // The map is only ever changed by single inserts and removes: it is
    // consistent even if a holder panicked.
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

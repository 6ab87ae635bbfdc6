//! The routing table: who is connected, under which session, and how an
//! event reaches each recipient. The one module that knows where a server
//! is; a future shared backplane replaces what is behind this boundary.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use icom_protocol::{
    encode_frame, read, write, Ack, AckCode, AckError, CloseCode, Control, Groups, Presence,
    Recipients,
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
    /// Encoded control frames waiting for the control stream: a queue of
    /// small handles, so that an idle connection's queue stays small, and
    /// a frame for many peers (presence) is encoded once.
    pub(crate) control: mpsc::Sender<Bytes>,
    /// The leaf certificate's serial, for revocation on reload.
    pub(crate) serial: Vec<u8>,
}

impl Peer {
    /// Queues a control frame without waiting; a client that does not read
    /// its control stream loses the frame, and the loss is logged.
    pub(crate) fn try_control(&self, msg: Control) {
        self.try_frame(frame(&msg));
    }

    /// As [`Peer::try_control`], for a frame already encoded.
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

/// The table of connected identities.
#[derive(Debug, Default)]
pub(crate) struct Table {
    peers: RwLock<HashMap<Arc<str>, Arc<Peer>>>,
}

impl Table {
    /// Registers a peer and, in the same step, queues its welcome, built by
    /// `welcome` from every other connected identity: nothing (a presence
    /// from a peer registering at the same moment) can reach the new peer
    /// before its welcome. An older connection with the same identity is
    /// replaced (closed with `REPLACED`, no presence change); otherwise
    /// every other peer is told it came online. Presence is queued under
    /// the table's lock, so the presence of one identity is never
    /// reordered by a concurrent register and unregister.
    pub(crate) fn register(&self, peer: Arc<Peer>, welcome: impl FnOnce(Vec<String>) -> Control) {
        let old = {
            let mut map = write(&self.peers);
            let old = map.insert(peer.server_id.clone(), peer.clone());
            let others: Vec<&Arc<Peer>> = map
                .values()
                .filter(|p| p.server_id != peer.server_id)
                .collect();
            // The peer's control queue is new and holds at least one frame
            // (`limits.control_queue` >= 1): the welcome is always queued.
            peer.try_control(welcome(
                others.iter().map(|p| p.server_id.to_string()).collect(),
            ));
            if old.is_none() {
                let online = frame(&Control::Presence(Presence {
                    server_id: peer.server_id.to_string(),
                    online: true,
                }));
                for p in others {
                    p.try_frame(online.clone());
                }
            }
            old
        };
        if let Some(old) = old {
            debug!(server_id = %peer.server_id, "replacing the older connection");
            old.outbound.close();
            old.close(CloseCode::Replaced);
        }
    }

    /// Removes the identity if it is still held by `session`; tells the
    /// others it left. A replaced connection's cleanup removes nothing.
    pub(crate) fn unregister(&self, server_id: &str, session: u64) -> bool {
        let mut map = write(&self.peers);
        match map.get(server_id) {
            Some(p) if p.session == session => {
                map.remove(server_id);
            }
            _ => return false,
        }
        let offline = frame(&Control::Presence(Presence {
            server_id: server_id.to_owned(),
            online: false,
        }));
        for p in map.values() {
            p.try_frame(offline.clone());
        }
        true
    }

    /// Every connected peer.
    pub(crate) fn all(&self) -> Vec<Arc<Peer>> {
        read(&self.peers).values().cloned().collect()
    }

    /// Resolves a send's target to the connected peers it reaches and
    /// the named servers that are offline.
    ///
    /// # Errors
    /// The target's error (the send is `invalid`).
    pub(crate) fn resolve(
        &self,
        from: &str,
        to: &icom_protocol::Target,
        groups: &Groups,
    ) -> Result<Resolved, icom_protocol::TargetError> {
        let map = read(&self.peers);
        let mut out = Resolved::default();
        match to.resolve(from, map.keys().map(|k| &**k), groups)? {
            Recipients::Named(ids) => {
                for id in ids {
                    match map.get(id) {
                        Some(peer) => out.peers.push(peer.clone()),
                        None => out.offline.push(id.to_owned()),
                    }
                }
            }
            Recipients::Connected(ids) => {
                out.peers
                    .extend(ids.into_iter().filter_map(|id| map.get(id).cloned()));
            }
        }
        Ok(out)
    }
}

/// Where one send goes.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    /// Connected recipients.
    pub(crate) peers: Vec<Arc<Peer>>,
    /// Named recipients that are not connected.
    pub(crate) offline: Vec<String>,
}

/// Counts deliveries into an ack, keeping the first failure.
pub(crate) struct Tally {
    pub(crate) ack: Ack,
}

impl Tally {
    pub(crate) fn new(id: u64) -> Tally {
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

    /// Hands `wire` to `peer`'s outbound queue. Returns false when the peer
    /// is gone (it left after the send was resolved): what that means for
    /// the ack depends on the send, so the caller decides.
    pub(crate) fn push(&mut self, peer: &Peer, wire: &Bytes) -> bool {
        match peer.outbound.push(wire.clone()) {
            Ok(()) => self.ack.delivered += 1,
            Err(PushError::Full) => self.fail(
                AckCode::Congested,
                format!("the outbound queue of server '{}' is full", peer.server_id),
            ),
            Err(PushError::Closed) => return false,
        }
        true
    }

    pub(crate) fn fail(&mut self, code: AckCode, message: String) {
        self.ack.ok = false;
        if self.ack.error.is_none() {
            self.ack.error = Some(AckError { code, message });
        }
    }
}

/// A control message as a frame for [`Peer::control`].
pub(crate) fn frame(msg: &Control) -> Bytes {
    Bytes::from(encode_frame(msg))
}

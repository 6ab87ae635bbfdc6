//! The floor router's connections: their events, the control stream, and
//! the routing of each whole event stream.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use icom_protocol::{
    append_frame, decode_control, frame_len, Ack, AckCode, Control, DeliverRef, Limits, Replayed,
    SendRef, TargetRef, Welcome, FRAME_HEADER_LEN,
};
use quinn_proto::{ConnectionHandle, Dir, Event, StreamEvent, StreamId, VarInt};
use rustls::pki_types::CertificateDer;

/// Every connection, and who is who.
pub(super) struct Router {
    pub(super) endpoint: quinn_proto::Endpoint,
    pub(super) peers: Peers,
    by_id: HashMap<Arc<str>, ConnectionHandle>,
    pub(super) limits: Limits,
    /// Deliveries routed from one connection's events, to hand to their
    /// connections after them.
    deliveries: Vec<(ConnectionHandle, Bytes)>,
    /// The connections, listed for a pass.
    handles: Vec<ConnectionHandle>,
}

/// The connections, by handle: quinn-proto's handles are small indices,
/// reused, so a slot each (no hashing on the per-event path).
#[derive(Default)]
pub(super) struct Peers(Vec<Option<Peer>>);

impl Peers {
    pub(super) fn get(&self, h: ConnectionHandle) -> Option<&Peer> {
        self.0.get(h.0).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, h: ConnectionHandle) -> Option<&mut Peer> {
        self.0.get_mut(h.0).and_then(Option::as_mut)
    }

    pub(super) fn insert(&mut self, h: ConnectionHandle, peer: Peer) {
        if self.0.len() <= h.0 {
            self.0.resize_with(h.0 + 1, || None);
        }
        self.0[h.0] = Some(peer);
    }

    pub(super) fn handles(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .map(|(i, _)| ConnectionHandle(i))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (ConnectionHandle, &mut Peer)> {
        self.0
            .iter_mut()
            .enumerate()
            .filter_map(|(i, p)| Some((ConnectionHandle(i), p.as_mut()?)))
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.0.iter_mut().filter_map(Option::as_mut)
    }

    /// Keeps the connections `keep` says to; returns whether any went.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Peer) -> bool) -> bool {
        let mut gone = false;
        for slot in &mut self.0 {
            if slot.as_ref().is_some_and(|p| !keep(p)) {
                *slot = None;
                gone = true;
            }
        }
        gone
    }
}

/// One connection.
pub(super) struct Peer {
    pub(super) conn: quinn_proto::Connection,
    /// Its server id, once the handshake is done.
    id: Option<Arc<str>>,
    /// The control stream, once the client opened it.
    control: Option<StreamId>,
    /// Control bytes read and not yet a whole frame.
    control_in: Vec<u8>,
    /// Control frames (welcome, acks) the stream has not taken yet.
    control_out: Vec<u8>,
    /// Event streams read in part.
    partial: HashMap<StreamId, Vec<Bytes>>,
    /// Deliveries waiting for a stream (no credit), in order.
    waiting: VecDeque<Bytes>,
    /// Deliveries written in part (no room in the connection's window).
    unsent: HashMap<StreamId, Bytes>,
}

impl Router {
    pub(super) fn new(endpoint: quinn_proto::Endpoint, limits: Limits) -> Router {
        Router {
            endpoint,
            peers: Peers::default(),
            by_id: HashMap::new(),
            limits,
            deliveries: Vec::new(),
            handles: Vec::new(),
        }
    }

    /// Takes every connection's events: welcomes, routes and acks. Returns
    /// whether anything happened.
    pub(super) fn pass(&mut self, now: Instant) -> bool {
        let mut busy = false;
        self.handles.clear();
        self.handles.extend(self.peers.handles());
        for i in 0..self.handles.len() {
            let h = self.handles[i];
            while let Some(ev) = self.peers.get_mut(h).and_then(|p| p.conn.poll()) {
                busy = true;
                self.event(h, ev);
            }
            for (to, wire) in self.deliveries.drain(..) {
                if let Some(p) = self.peers.get_mut(to) {
                    p.deliver(wire);
                }
            }
        }
        for (h, peer) in self.peers.iter_mut() {
            peer.flush_control();
            while let Some(ev) = peer.conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(h, ev) {
                    peer.conn.handle_event(back);
                }
            }
            if peer.conn.poll_timeout().is_some_and(|t| t <= now) {
                peer.conn.handle_timeout(now);
            }
        }
        busy
    }

    /// One event of connection `h`.
    fn event(&mut self, h: ConnectionHandle, ev: Event) {
        let Some(peer) = self.peers.get_mut(h) else {
            return;
        };
        match ev {
            Event::Connected => {
                let id = peer
                    .conn
                    .crypto_session()
                    .peer_identity()
                    .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
                    .and_then(|certs| {
                        let leaf = certs.first()?;
                        icom_server::tls::identity_of(leaf).ok()
                    });
                if let Some(id) = id {
                    let id: Arc<str> = id.server_id.into();
                    peer.id = Some(id.clone());
                    self.by_id.insert(id, h);
                }
            }
            Event::ConnectionLost { .. } => {
                if let Some(id) = &peer.id {
                    if self.by_id.get(id) == Some(&h) {
                        self.by_id.remove(id);
                    }
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                while let Some(id) = peer.conn.streams().accept(Dir::Bi) {
                    peer.control.get_or_insert(id);
                }
                self.read_control(h);
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                while let Some(id) = self
                    .peers
                    .get_mut(h)
                    .and_then(|p| p.conn.streams().accept(Dir::Uni))
                {
                    self.read_event(h, id);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                if peer.control == Some(id) {
                    self.read_control(h);
                } else if peer.partial.contains_key(&id) {
                    self.read_event(h, id);
                }
            }
            Event::Stream(StreamEvent::Writable { id }) => {
                if peer.control == Some(id) {
                    peer.flush_control();
                } else if let Some(rest) = peer.unsent.remove(&id) {
                    peer.write(id, rest);
                }
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                while let Some(wire) = peer.waiting.pop_front() {
                    if let Some(id) = peer.conn.streams().open(Dir::Uni) {
                        peer.write(id, wire);
                    } else {
                        peer.waiting.push_front(wire);
                        break;
                    }
                }
            }
            _ => {}
        }
    }

    /// Reads the control stream: a `hello` is answered with `welcome`;
    /// nothing else is read.
    fn read_control(&mut self, h: ConnectionHandle) {
        let limits = self.limits;
        let Some(peer) = self.peers.get_mut(h) else {
            return;
        };
        let Some(ctl) = peer.control else {
            return;
        };
        let mut stream = peer.conn.recv_stream(ctl);
        let Ok(mut chunks) = stream.read(true) else {
            return;
        };
        while let Ok(Some(c)) = chunks.next(usize::MAX) {
            peer.control_in.extend_from_slice(&c.bytes);
        }
        let _ = chunks.finalize();
        while peer.control_in.len() >= FRAME_HEADER_LEN {
            let mut header = [0u8; FRAME_HEADER_LEN];
            header.copy_from_slice(&peer.control_in[..FRAME_HEADER_LEN]);
            let Ok(len) = frame_len(header) else {
                peer.control_in.clear();
                return;
            };
            if peer.control_in.len() < FRAME_HEADER_LEN + len {
                return;
            }
            let frame: Vec<u8> = peer.control_in.drain(..FRAME_HEADER_LEN + len).collect();
            if let Ok(Some(Control::Hello(_))) = decode_control(&frame[FRAME_HEADER_LEN..]) {
                let me = peer.id.as_deref().unwrap_or_default().to_owned();
                let welcome = Welcome {
                    session_id: "00000000-0000-0000-0000-000000000000".into(),
                    server_id: me,
                    groups: Vec::new(),
                    peers: self
                        .by_id
                        .iter()
                        .filter(|(_, o)| **o != h)
                        .map(|(id, _)| id.to_string())
                        .collect(),
                    limits,
                    features: None,
                };
                append_frame(&mut peer.control_out, &Control::Welcome(welcome));
                append_frame(
                    &mut peer.control_out,
                    &Control::Replayed(Replayed { count: 0 }),
                );
            }
        }
    }

    /// Reads an event stream; a whole one is routed and acked.
    fn read_event(&mut self, h: ConnectionHandle, id: StreamId) {
        let max = self.limits.max_event_bytes as usize;
        let Some(peer) = self.peers.get_mut(h) else {
            return;
        };
        // Nearly every stream is whole at once: no lookup for those.
        let mut body = if peer.partial.is_empty() {
            Vec::new()
        } else {
            peer.partial.remove(&id).unwrap_or_default()
        };
        let mut stream = peer.conn.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else {
            return;
        };
        let mut end = false;
        let mut failed = false;
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(c)) => body.push(c.bytes),
                Ok(None) => {
                    end = true;
                    break;
                }
                Err(quinn_proto::ReadError::Blocked) => break,
                Err(quinn_proto::ReadError::Reset(_)) => {
                    failed = true;
                    break;
                }
            }
        }
        let _ = chunks.finalize();
        let len: usize = body.iter().map(Bytes::len).sum();
        if failed {
            return;
        }
        if len > max {
            let _ = peer.conn.recv_stream(id).stop(VarInt::from_u32(0));
            let ack = Ack::failed(0, AckCode::TooLarge, "over max_event_bytes");
            append_frame(&mut peer.control_out, &Control::Ack(ack));
            return;
        }
        if !end {
            peer.partial.insert(id, body);
            return;
        }
        let bytes = match body.len() {
            1 => body.pop().unwrap_or_default(),
            _ => body.concat().into(),
        };
        let ack = self.route(h, &bytes);
        if let Some(peer) = self.peers.get_mut(h) {
            append_frame(&mut peer.control_out, &Control::Ack(ack));
        }
    }

    /// Delivers one event to each recipient (handed over at the end of the
    /// connection's events) and returns its ack.
    fn route(&mut self, h: ConnectionHandle, bytes: &[u8]) -> Ack {
        let send = match SendRef::decode(bytes) {
            Ok(s) => s,
            Err(e) => {
                return Ack::failed(e.id.unwrap_or(0), AckCode::Malformed, e.to_string());
            }
        };
        let Some(me) = self.peers.get(h).and_then(|p| p.id.clone()) else {
            return Ack::failed(send.id, AckCode::Malformed, "not welcomed");
        };
        let start = self.deliveries.len();
        match &send.to {
            TargetRef::Server(id) => self
                .deliveries
                .extend(self.by_id.get(*id).map(|t| (*t, Bytes::new()))),
            TargetRef::Servers(ids) => {
                let found = ids.iter().filter_map(|id| self.by_id.get(*id));
                self.deliveries.extend(found.map(|t| (*t, Bytes::new())));
            }
            TargetRef::All => {
                let others = self.by_id.values().filter(|t| **t != h);
                self.deliveries.extend(others.map(|t| (*t, Bytes::new())));
            }
            _ => self
                .deliveries
                .extend(self.by_id.values().map(|t| (*t, Bytes::new()))),
        }
        let wire = Bytes::from(
            DeliverRef {
                from: &me,
                id: send.id,
                event: send.event,
                data: send.data,
                persist_id: None,
                reply_to: send.reply_to,
                sent_ms: 0,
            }
            .encode(),
        );
        for d in &mut self.deliveries[start..] {
            d.1 = wire.clone();
        }
        Ack::delivered(send.id, (self.deliveries.len() - start) as u32)
    }

    /// Forgets the connections that are over.
    pub(super) fn reap(&mut self) {
        if self.peers.retain(|p| !p.conn.is_drained()) {
            let peers = &self.peers;
            self.by_id.retain(|_, h| peers.get(*h).is_some());
        }
    }
}

impl Peer {
    pub(super) fn new(conn: quinn_proto::Connection) -> Peer {
        Peer {
            conn,
            id: None,
            control: None,
            control_in: Vec::new(),
            control_out: Vec::new(),
            partial: HashMap::new(),
            waiting: VecDeque::new(),
            unsent: HashMap::new(),
        }
    }

    /// One delivery, on a stream of its own (or waiting for one).
    fn deliver(&mut self, wire: Bytes) {
        if self.waiting.is_empty() {
            if let Some(id) = self.conn.streams().open(Dir::Uni) {
                self.write(id, wire);
                return;
            }
        }
        self.waiting.push_back(wire);
    }

    /// Writes what the stream takes of `wire`, and finishes it when all is
    /// written.
    fn write(&mut self, id: StreamId, wire: Bytes) {
        let mut stream = self.conn.send_stream(id);
        let mut chunks = [wire];
        match stream.write_chunks(&mut chunks) {
            Ok(_) if chunks[0].is_empty() => {
                let _ = stream.finish();
            }
            Ok(_) | Err(quinn_proto::WriteError::Blocked) => {
                let [rest] = chunks;
                self.unsent.insert(id, rest);
            }
            Err(_) => {}
        }
    }

    /// Writes what the control stream takes of the frames waiting.
    fn flush_control(&mut self) {
        let Some(ctl) = self.control else {
            return;
        };
        if self.control_out.is_empty() {
            return;
        }
        if let Ok(n) = self.conn.send_stream(ctl).write(&self.control_out) {
            self.control_out.drain(..n);
        }
    }
}

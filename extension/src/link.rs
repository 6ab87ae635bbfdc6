//! The network side: one session with the router at a time, run on the
//! extension's tokio runtime, turning the client's states, events and
//! presence changes into callbacks. The commands' own tasks are in
//! [`crate::exchange`]. Nothing here runs on the game thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use icom_client::{Client, Event, Presences, State};
use icom_protocol::lock;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, Bounds};
use crate::callback::{Callback, Kind, Received};
use crate::config;
use crate::outbox::Outbox;
use crate::requests::Requests;

/// The most presence changes one `presence` callback carries: a burst
/// (a datacenter's servers reconnecting) costs the game one callback per
/// this many, not one per server.
const PRESENCE_BATCH: usize = 100;

/// What the session and the command tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) requests: Requests<Event>,
    pub(crate) bounds: Bounds,
    /// The folder of the library, for the config search.
    pub(crate) library_dir: Option<PathBuf>,
    /// A config file to use instead of searching (tests).
    pub(crate) config_file: Option<PathBuf>,
    /// Where logs go when the config does not say.
    pub(crate) default_log_dir: PathBuf,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl Shared {
    pub(crate) fn push(&self, callback: Callback) {
        self.outbox.push(callback);
    }

    pub(crate) fn push_state(&self, value: serde_json::Value) {
        self.push(Callback::new(Kind::State, &value));
    }
}

/// The session slot.
#[derive(Debug, Default)]
pub(crate) struct Link {
    slot: Mutex<Slot>,
    generation: AtomicU64,
}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Idle,
    Active(Active),
}

#[derive(Debug)]
struct Active {
    generation: u64,
    address: Option<String>,
    /// The routers to dial, in order, once the config is loaded.
    routers: Vec<String>,
    client: watch::Receiver<Option<Client>>,
    cancel: CancellationToken,
}

/// What `status` reports of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkStatus {
    pub(crate) state: String,
    pub(crate) server_id: Option<String>,
    /// The router connected to; when not connected, the one being dialled
    /// or last lost.
    pub(crate) router: Option<String>,
    /// The routers configured, in order.
    pub(crate) routers: Vec<String>,
    pub(crate) peers: usize,
}

/// What [`Link::open`] decided.
pub(crate) enum Opened {
    /// A new session: run [`session`] with these.
    New(Session),
    /// A session with the same address already runs.
    Already,
}

/// The arguments of a new session's task.
pub(crate) struct Session {
    generation: u64,
    address: Option<String>,
    expected_id: Option<String>,
    tx: watch::Sender<Option<Client>>,
    cancel: CancellationToken,
}

impl Link {
    /// Claims the slot for a new session, or says one already runs.
    ///
    /// # Errors
    /// A session to another address runs: disconnect first.
    pub(crate) fn open(
        &self,
        address: Option<String>,
        expected_id: Option<String>,
    ) -> Result<Opened, String> {
        let mut slot = lock(&self.slot);
        if let Slot::Active(active) = &*slot {
            if address.is_none() || active.address == address {
                return Ok(Opened::Already);
            }
            return Err(format!(
                "already connected (to {}); call icom:disconnect first",
                active.address.as_deref().unwrap_or("the configured router")
            ));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        *slot = Slot::Active(Active {
            generation,
            address: address.clone(),
            routers: Vec::new(),
            client: rx,
            cancel: cancel.clone(),
        });
        Ok(Opened::New(Session {
            generation,
            address,
            expected_id,
            tx,
            cancel,
        }))
    }

    /// Ends the session, if any; returns the router it was on (`None`
    /// inside when it was not connected), or `None` without a session.
    pub(crate) fn close(&self) -> Option<Option<String>> {
        match std::mem::take(&mut *lock(&self.slot)) {
            Slot::Active(active) => {
                // Before the cancel: the session then closes its client.
                let router = active.client.borrow().as_ref().and_then(Client::router);
                active.cancel.cancel();
                Some(router)
            }
            Slot::Idle => None,
        }
    }

    /// The client of the session, to wait for in a command's task.
    ///
    /// # Errors
    /// No session: the mission has not connected.
    pub(crate) fn client(&self) -> Result<watch::Receiver<Option<Client>>, String> {
        match &*lock(&self.slot) {
            Slot::Active(active) => Ok(active.client.clone()),
            Slot::Idle => Err("not connected: call icom:connect first".into()),
        }
    }

    pub(crate) fn status(&self) -> LinkStatus {
        let slot = lock(&self.slot);
        let Slot::Active(active) = &*slot else {
            return LinkStatus {
                state: "idle".into(),
                server_id: None,
                router: None,
                routers: Vec::new(),
                peers: 0,
            };
        };
        let routers = active.routers.clone();
        let first = routers.first().cloned().or_else(|| active.address.clone());
        let Some(client) = active.client.borrow().clone() else {
            return LinkStatus {
                state: "starting".into(),
                server_id: None,
                router: first,
                routers,
                peers: 0,
            };
        };
        drop(slot);
        let state = client.state();
        let welcome = client.welcome();
        LinkStatus {
            state: state_json(&state).0,
            server_id: welcome.as_ref().map(|w| w.server_id.clone()),
            router: client
                .router()
                .or_else(|| state.router().map(str::to_owned))
                .or(first),
            routers,
            peers: client.peers().len(),
        }
    }

    /// The other servers connected, as the session's client knows them
    /// now (while it is disconnected, as it last knew them); none without
    /// a session.
    pub(crate) fn peers(&self) -> Vec<String> {
        let slot = lock(&self.slot);
        let Slot::Active(active) = &*slot else {
            return Vec::new();
        };
        let client = active.client.borrow().clone();
        drop(slot);
        client.map(|c| c.peers()).unwrap_or_default()
    }

    fn set_routers(&self, generation: u64, routers: &[String]) {
        if let Slot::Active(a) = &mut *lock(&self.slot) {
            if a.generation == generation {
                a.routers = routers.to_vec();
            }
        }
    }

    /// Frees the slot if it still holds this session.
    fn release(&self, generation: u64) {
        let mut slot = lock(&self.slot);
        if matches!(&*slot, Slot::Active(a) if a.generation == generation) {
            *slot = Slot::Idle;
        }
    }
}

/// Runs one session: loads the config, starts the client, and turns its
/// states and events into callbacks until it is closed.
pub(crate) async fn session(shared: Arc<Shared>, link: Arc<Link>, s: Session) {
    let found = match &shared.config_file {
        Some(path) => Ok(path.clone()),
        None => config::find_here(shared.library_dir.as_deref()),
    };
    let config = found.and_then(|path| config::load(&path, &shared.default_log_dir));
    let config = match config {
        Ok(c) => c,
        Err(e) => return fail(&shared, &link, s.generation, "config", &e.to_string()),
    };
    let mut client_config = config.client;
    if let Some(address) = &s.address {
        // An address given to icom:connect is the one router to dial.
        client_config = client_config.with_routers([address.clone()]);
    }
    let routers = match client_config.router_list() {
        Ok(routers) => routers,
        Err(e) => return fail(&shared, &link, s.generation, "config", &e.to_string()),
    };
    link.set_routers(s.generation, &routers);
    let first = routers.first().cloned().unwrap_or_default();
    tracing::info!(
        target: "icom::connection",
        routers = %routers.join(", "),
        server_name = %client_config.server_name,
        config = %config.file.display(),
        cert = %client_config.cert.display(),
        "connecting"
    );
    shared.push_state(json!({"state": "connecting", "router": first, "routers": routers}));
    let (client, mut events) = match Client::start(client_config) {
        Ok(started) => started,
        Err(e) => return fail(&shared, &link, s.generation, "config", &e.to_string()),
    };
    let mut states = client.states();
    let mut presence = client.presence();
    // The game's view starts from nothing: servers the client knew of
    // before this stream began (a welcome quicker than this line) come
    // first.
    let known: Vec<(String, bool)> = presence.peers().into_iter().map(|id| (id, true)).collect();
    for batch in known.chunks(PRESENCE_BATCH) {
        shared.push(Callback::presence(batch));
    }
    let mut following = true;
    // Nobody waiting is fine: the receiver lives in the slot.
    let _ = s.tx.send(Some(client.clone()));
    loop {
        tokio::select! {
            () = s.cancel.cancelled() => {
                // `closed` went to the game with the command: a session
                // started after it must not get it late.
                let router = client.router();
                client.close().await;
                tracing::info!(target: "icom::connection", router = ?router, "disconnected by the mission");
                break;
            }
            event = events.next() => match event {
                Some(event) => on_event(&shared, event),
                None => break,
            },
            state = states.next() => match state {
                Some(state) => on_state(&shared, &client, s.expected_id.as_deref(), &state),
                None => break,
            },
            change = presence.next(), if following => match change {
                Some(change) => on_presence(&shared, (change.server_id, change.online), &mut presence),
                None => following = false,
            },
        }
    }
    link.release(s.generation);
}

/// Hands the game `first` and every change already waiting behind it, in
/// order, [`PRESENCE_BATCH`] to a callback.
fn on_presence(shared: &Shared, first: (String, bool), presence: &mut Presences) {
    let mut batch = vec![first];
    loop {
        while batch.len() < PRESENCE_BATCH {
            match presence.try_next() {
                Some(change) => batch.push((change.server_id, change.online)),
                None => break,
            }
        }
        if let [(server_id, online)] = batch.as_slice() {
            tracing::info!(target: "icom::connection", server_id = %server_id, online, "presence");
        } else {
            let online = batch.iter().filter(|(_, on)| *on).count();
            let offline = batch.len() - online;
            tracing::info!(target: "icom::connection", online, offline, "presence, several at once");
        }
        shared.push(Callback::presence(&batch));
        if batch.len() < PRESENCE_BATCH {
            return;
        }
        batch.clear();
        match presence.try_next() {
            Some(change) => batch.push((change.server_id, change.online)),
            None => return,
        }
    }
}

fn fail(shared: &Shared, link: &Link, generation: u64, code: &str, message: &str) {
    tracing::error!(target: "icom::connection", code, "cannot connect: {message}");
    shared.push(Callback::error(code, message));
    shared.push_state(json!({"state": "disconnected", "reason": message}));
    link.release(generation);
}

fn on_state(shared: &Shared, client: &Client, expected: Option<&str>, state: &State) {
    let (name, mut value) = state_json(state);
    let router = state.router().unwrap_or_default();
    if let State::Connected { server_id, .. } = state {
        if let Some(welcome) = client.welcome() {
            value["groups"] = json!(welcome.groups);
            value["peers"] = json!(welcome.peers);
        }
        tracing::info!(target: "icom::connection", router, server_id = %server_id, "connected");
        if let Some(expected) = expected.filter(|e| *e != server_id) {
            let message = format!(
                "icom:connect named server id '{expected}', but the certificate says '{server_id}'; \
                 the certificate is the identity, so other servers know this one as '{server_id}'"
            );
            tracing::warn!(target: "icom::connection", "{message}");
            shared.push(Callback::error("identity", &message));
        }
    } else if matches!(state, State::Disconnected { .. } | State::Refused { .. }) {
        tracing::warn!(target: "icom::connection", router, state = %name, "{value}");
    } else {
        tracing::info!(target: "icom::connection", router, state = %name, "{value}");
    }
    shared.push_state(value);
}

/// A state's name and its callback JSON, with the router it is about
/// (`null` if none).
fn state_json(state: &State) -> (String, serde_json::Value) {
    let mut value = match state {
        State::Connected {
            server_id,
            session_id,
            ..
        } => json!({"state": "connected", "server_id": server_id, "session_id": session_id}),
        State::Disconnected { reason, .. } => json!({"state": "disconnected", "reason": reason}),
        State::Reconnecting { attempt, delay, .. } => {
            json!({"state": "reconnecting", "attempt": attempt, "delay": delay.as_secs_f64()})
        }
        State::Replaced { retry_in, .. } => {
            json!({"state": "replaced", "retry_in": retry_in.as_secs_f64()})
        }
        State::Refused { reason, .. } => json!({"state": "refused", "reason": reason}),
        State::Closed => json!({"state": "closed"}),
        other => json!({"state": "unknown", "detail": format!("{other:?}")}),
    };
    value["router"] = json!(state.router());
    let name = value["state"].as_str().unwrap_or("unknown").to_owned();
    (name, value)
}

fn on_event(shared: &Shared, event: Event) {
    shared.received.fetch_add(1, Ordering::Relaxed);
    let json = match bridge::msgpack_to_json(&event.data, shared.bounds) {
        Ok(json) => json,
        Err(e) => {
            let message = format!(
                "event '{}' from {} (id {}) was dropped: {e}",
                event.event, event.from, event.id
            );
            tracing::warn!(target: "icom::events", "{message}");
            shared.push(Callback::error("bad_data", &message));
            return;
        }
    };
    tracing::info!(
        target: "icom::events",
        event = %event.event,
        from = %event.from,
        id = event.id,
        bytes = event.data.len(),
        persist_id = event.persist_id.as_deref(),
        "received"
    );
    let callback = Callback::event(
        &Received {
            event: &event.event,
            from: &event.from,
            id: event.id,
            persist_id: event.persist_id.as_deref(),
            reply_to: event.reply_to,
            sent_ms: event.sent_ms,
        },
        &json,
    );
    let (id, from) = (event.id, event.from.clone());
    let mut light = event;
    light.drop_data();
    shared.requests.remember(id, &from, light, Instant::now());
    shared.push(callback);
}

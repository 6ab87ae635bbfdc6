//! Control messages (docs/PROTOCOL.md §3): the frames of the control stream, in
//! both directions, and the small shapes they share.

use serde::{Deserialize, Serialize};

use crate::codes::AckCode;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A message of the control stream. On the wire, a map with one key (the
/// message's snake_case name) whose value is the map of its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Client → router, the first frame.
    Hello(Hello),
    /// Router → client, the answer to `hello`.
    Welcome(Welcome),
    /// Router → client, after every stored event due has been opened.
    Replayed(Replayed),
    /// Router → client, one per `send` and per `forget`.
    Ack(Ack),
    /// Router → client, another server connected or left.
    Presence(Presence),
    /// Client → router, drop a persistent event.
    Forget(Forget),
    /// Client → router, application-level round trip.
    Ping(Ping),
    /// Router → client, the answer to `ping`.
    Pong(Pong),
    /// Client → router, who is connected now (only to a router whose
    /// `welcome` lists [`FEATURE_WHO`]).
    Who(Who),
    /// Router → client, the answer to `who`: one page of the servers
    /// connected.
    Roster(Roster),
}

impl Control {
    /// The wire names of every control message this version knows.
    pub const NAMES: [&'static str; 10] = [
        "hello", "welcome", "replayed", "ack", "presence", "forget", "ping", "pong", "who",
        "roster",
    ];

    /// The message's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Hello(_) => "hello",
            Control::Welcome(_) => "welcome",
            Control::Replayed(_) => "replayed",
            Control::Ack(_) => "ack",
            Control::Presence(_) => "presence",
            Control::Forget(_) => "forget",
            Control::Ping(_) => "ping",
            Control::Pong(_) => "pong",
            Control::Who(_) => "who",
            Control::Roster(_) => "roster",
        }
    }
}

/// `hello {protocol, agent, replace?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub protocol: u32,
    /// Free text naming the client software, e.g. `icom-extension/0.1.0`.
    pub agent: String,
    /// `Some(false)`: do not replace a connection of this identity that is
    /// up; the router closes this one with `IN_USE` instead. Absent (or
    /// true): the newest connection wins (docs/PROTOCOL.md §1.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<bool>,
}

impl Hello {
    /// A `hello` for ICOM/1 from `agent`, with the default replacement rule.
    pub fn new(agent: impl Into<String>) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            agent: agent.into(),
            replace: None,
        }
    }
}

/// In `welcome.features`: the router honours `hello.replace`.
pub const FEATURE_REPLACE: &str = "replace";
/// In `welcome.features`: the router answers `who` with `roster`.
pub const FEATURE_WHO: &str = "who";

/// `welcome {session_id, server_id, groups, peers, limits, features?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// A hyphenated UUID naming this connection.
    pub session_id: String,
    /// The client's identity: its certificate's CN.
    pub server_id: String,
    /// The config groups the client belongs to.
    pub groups: Vec<String>,
    /// Every other connected identity.
    pub peers: Vec<String>,
    /// The limits the router enforces on this client.
    pub limits: Limits,
    /// What this router does beyond the base of ICOM/1 ([`FEATURE_REPLACE`],
    /// [`FEATURE_WHO`]); absent from older routers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

impl Welcome {
    /// Whether the router said it has `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == feature))
    }
}

/// The limits in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest encoded `send` the router accepts, in bytes.
    pub max_event_bytes: u32,
    /// The concurrent uni streams this client may open.
    pub max_streams: u32,
}

/// `replayed {count}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// How many stored events were opened for the client.
    pub count: u32,
}

/// `ack {id, ok, delivered, queued, persist_id?, error?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The id of the `send` or `forget`; 0 when it could not be read.
    pub id: u64,
    /// Whether every recipient got the event delivered or queued.
    pub ok: bool,
    /// Recipients the event was handed to.
    pub delivered: u32,
    /// Offline recipients it was stored for.
    pub queued: u32,
    /// The persist id under which the event is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_id: Option<String>,
    /// The first failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AckError>,
}

impl Ack {
    /// An ok ack: handed to `delivered` recipients, nothing queued or
    /// stored.
    pub fn delivered(id: u64, delivered: u32) -> Ack {
        Ack {
            id,
            ok: true,
            delivered,
            queued: 0,
            persist_id: None,
            error: None,
        }
    }

    /// A failed ack with nothing delivered or queued.
    pub fn failed(id: u64, code: AckCode, message: impl Into<String>) -> Ack {
        Ack {
            id,
            ok: false,
            delivered: 0,
            queued: 0,
            persist_id: None,
            error: Some(AckError {
                code,
                message: message.into(),
            }),
        }
    }
}

/// The `error` of an ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckError {
    /// What went wrong.
    pub code: AckCode,
    /// A readable explanation.
    pub message: String,
}

/// `presence {server_id, online}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The server that connected or left.
    pub server_id: String,
    /// Whether it is now connected.
    pub online: bool,
}

/// `forget {id, persist_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forget {
    /// A request id, echoed by the ack.
    pub id: u64,
    /// The persistent event to drop.
    pub persist_id: String,
}

/// `ping {nonce}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed by the `pong`.
    pub nonce: u64,
}

/// `pong {nonce}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The nonce of the `ping`.
    pub nonce: u64,
}

/// `who {id, after?}`: the servers connected now, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// Chosen by the client, echoed by the `roster`.
    pub id: u64,
    /// Start after this server id (the last of the previous page); absent:
    /// from the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `roster {id, servers, more}`: one page of the answer to `who`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// The `id` of the `who`.
    pub id: u64,
    /// Servers connected, ordered by id, the asking client left out.
    pub servers: Vec<RosterEntry>,
    /// Whether more follow: ask again with `after` the last id of this page.
    pub more: bool,
}

/// One server of a `roster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// The server's identity.
    pub server_id: String,
    /// In cluster mode, the name of the router it is connected to; absent
    /// for a router on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
}

/// The most servers one `roster` carries (so that a page stays well under
/// the 1 MiB frame bound).
pub const MAX_ROSTER_PAGE: usize = 1000;

/// `persist`: how a persistent send is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persist {
    /// The router makes an id and returns it in the ack.
    Auto,
    /// A custom id; a later persistent send with the same id replaces it.
    Id(String),
}

//! What the extension tells the game later, through the arma-rs callback:
//! name `icom`, function = the kind, data = JSON text for `fromJSON`.
//! Every id is a string, since SQF numbers are 32-bit floats.
//!
//! | kind | data |
//! |---|---|
//! | `ack` | `{"id", "ok", "delivered", "queued", "persist_id"?, "error"?: {"code", "message"}}` |
//! | `event` | `{"event", "from", "id", "request", "persist_id"?, "reply_to"?, "sent_ms", "data"}` |
//! | `reply` | `{"id", "from", "data"}` or `{"id", "error": {"code", "message"}}` |
//! | `state` | `{"state", ...}`: connecting, connected, disconnected, reconnecting, replaced, refused, closed |
//! | `error` | `{"code", "message"}` |
//! | `presence` | `[[server_id, online], ...]`: servers that came (`true`) or left, in order |
//! | `large` | `{"kind", "handle", "size", "pages"}`: fetch the pages with `icom:fetch` |

use serde_json::{json, Value};

/// The callback's kind: its `function` argument in SQF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// The router's answer to a send or forget.
    Ack,
    /// An event from another server.
    Event,
    /// The reply to a request, or its timeout.
    Reply,
    /// The connection's state changed.
    State,
    /// Something went wrong that no command's result could say.
    Error,
    /// A payload too large for one callback, waiting to be fetched.
    Large,
    /// Servers that connected or left, several at once.
    Presence,
}

impl Kind {
    /// Every kind, in the order `status` reports them.
    pub(crate) const ALL: [Kind; 7] = [
        Kind::Ack,
        Kind::Event,
        Kind::Reply,
        Kind::State,
        Kind::Error,
        Kind::Large,
        Kind::Presence,
    ];

    /// The name SQF sees as `_function`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Ack => "ack",
            Kind::Event => "event",
            Kind::Reply => "reply",
            Kind::State => "state",
            Kind::Error => "error",
            Kind::Large => "large",
            Kind::Presence => "presence",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One callback, waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Callback {
    pub(crate) kind: Kind,
    /// JSON text.
    pub(crate) data: String,
}

/// The fields of a received event that the callback carries besides its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received<'a> {
    pub(crate) event: &'a str,
    pub(crate) from: &'a str,
    pub(crate) id: u64,
    pub(crate) persist_id: Option<&'a str>,
    pub(crate) reply_to: Option<u64>,
    pub(crate) sent_ms: u64,
}

impl Callback {
    pub(crate) fn new(kind: Kind, value: &Value) -> Callback {
        Callback {
            kind,
            data: value.to_string(),
        }
    }

    /// The router's ack of the command that returned `ticket`.
    pub(crate) fn ack(
        ticket: u64,
        ok: bool,
        delivered: u32,
        queued: u32,
        persist_id: Option<&str>,
        error: Option<(&str, &str)>,
    ) -> Callback {
        let mut v = json!({
            "id": ticket.to_string(),
            "ok": ok,
            "delivered": delivered,
            "queued": queued,
        });
        if let Some(p) = persist_id {
            v["persist_id"] = json!(p);
        }
        if let Some((code, message)) = error {
            v["error"] = json!({"code": code, "message": message});
        }
        Callback::new(Kind::Ack, &v)
    }

    /// A failed ack: the command did not reach the router, or got no answer.
    pub(crate) fn ack_failed(ticket: u64, code: &str, message: &str) -> Callback {
        Callback::ack(ticket, false, 0, 0, None, Some((code, message)))
    }

    /// An event; `data` is the payload's JSON text.
    pub(crate) fn event(r: &Received<'_>, data: &str) -> Callback {
        let mut v = json!({
            "event": r.event,
            "from": r.from,
            "id": r.id.to_string(),
            "request": format!("{}@{}", r.id, r.from),
            "sent_ms": r.sent_ms.to_string(),
        });
        if let Some(p) = r.persist_id {
            v["persist_id"] = json!(p);
        }
        if let Some(id) = r.reply_to {
            v["reply_to"] = json!(id.to_string());
        }
        Callback::with_data(Kind::Event, &v, data)
    }

    /// The reply to the request that returned `ticket`.
    pub(crate) fn reply(ticket: u64, from: &str, data: &str) -> Callback {
        let v = json!({"id": ticket.to_string(), "from": from});
        Callback::with_data(Kind::Reply, &v, data)
    }

    /// A request that got no reply: `timeout`, or why it failed.
    pub(crate) fn reply_failed(ticket: u64, code: &str, message: &str) -> Callback {
        let v = json!({
            "id": ticket.to_string(),
            "error": {"code": code, "message": message},
        });
        Callback::new(Kind::Reply, &v)
    }

    /// Servers that came (`true`) or left, in the order it happened.
    pub(crate) fn presence(changes: &[(String, bool)]) -> Callback {
        Callback::new(Kind::Presence, &json!(changes))
    }

    pub(crate) fn error(code: &str, message: &str) -> Callback {
        Callback::new(Kind::Error, &json!({"code": code, "message": message}))
    }

    /// Appends `"data": <data>` to the object `v`, without parsing `data`.
    fn with_data(kind: Kind, v: &Value, data: &str) -> Callback {
        let mut text = v.to_string();
        // `v` is a non-empty object, so its text ends with `}`.
        text.pop();
        text.reserve(data.len() + 9);
        text.push_str(",\"data\":");
        text.push_str(data);
        text.push('}');
        Callback { kind, data: text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(c: &Callback) -> Value {
        serde_json::from_str(&c.data).unwrap()
    }

    #[test]
    fn event_carries_ids_as_strings_and_data_as_json() {
        let c = Callback::event(
            &Received {
                event: "supply_drop",
                from: "eu-1",
                id: 1_732_233_600_000_001,
                persist_id: None,
                reply_to: None,
                sent_ms: 1_732_233_600_123,
            },
            r#"{"coords":[1234.5,5678.9,0.0]}"#,
        );
        assert_eq!(c.kind.as_str(), "event");
        assert_eq!(
            parse(&c),
            json!({
                "event": "supply_drop", "from": "eu-1", "id": "1732233600000001",
                "request": "1732233600000001@eu-1", "sent_ms": "1732233600123",
                "data": {"coords": [1234.5, 5678.9, 0.0]}
            })
        );
    }

    #[test]
    fn acks_and_replies() {
        let c = Callback::ack(7, true, 2, 1, Some("p"), None);
        assert_eq!(
            parse(&c),
            json!({"id": "7", "ok": true, "delivered": 2, "queued": 1, "persist_id": "p"})
        );
        let c = Callback::ack_failed(8, "not_found", "server 'x' is not connected");
        assert_eq!(parse(&c)["error"]["code"], "not_found");
        let c = Callback::reply(9, "us-1", "null");
        assert_eq!(parse(&c), json!({"id": "9", "from": "us-1", "data": null}));
        let c = Callback::reply_failed(9, "timeout", "no reply within 5 s");
        assert_eq!(parse(&c)["error"]["code"], "timeout");
    }

    #[test]
    fn presence_is_an_array_of_pairs_in_order() {
        let c = Callback::presence(&[("eu-2".into(), false), ("us-1".into(), true)]);
        assert_eq!(c.kind.as_str(), "presence");
        assert_eq!(parse(&c), json!([["eu-2", false], ["us-1", true]]));
    }
}

//! Received events, and the stream that hands them to the application.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use icom_protocol::{Ack, Deliver};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::data::{DataError, ToData};
use crate::error::{SendError, Unavailable};

/// An event the router delivered: the protocol's [`Deliver`] (its fields
/// read through this type: `event.from`, `event.data`, ...), and the way
/// back to reply to it.
#[derive(Clone)]
pub struct Event {
    deliver: Deliver,
    replier: Weak<dyn Replier>,
}

/// What sends a reply for an [`Event`]: the client it came through, held
/// weakly, so that an event kept after its client closed does not keep
/// the client alive.
pub(crate) trait Replier: std::marker::Send + Sync {
    /// Sends `data` back to `to`'s sender, as the reply to it.
    fn reply<'a>(
        self: Arc<Self>,
        to: &'a Deliver,
        data: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Ack, SendError>> + std::marker::Send + 'a>>;
}

impl Deref for Event {
    type Target = Deliver;

    fn deref(&self) -> &Deliver {
        &self.deliver
    }
}

impl Event {
    pub(crate) fn new(deliver: Deliver, replier: Weak<dyn Replier>) -> Event {
        Event { deliver, replier }
    }

    /// The delivery as the router sent it.
    pub fn deliver(&self) -> &Deliver {
        &self.deliver
    }

    /// The delivery, without the way back.
    pub fn into_deliver(self) -> Deliver {
        self.deliver
    }

    /// Lets go of the payload, to keep the event (to reply to it later)
    /// without holding its bytes.
    pub fn drop_data(&mut self) {
        self.deliver.data = Bytes::new();
    }

    /// The payload as JSON.
    ///
    /// # Errors
    /// [`DataError::Decode`] when it has no JSON form (binary data, map keys
    /// that are not strings).
    pub fn json(&self) -> Result<serde_json::Value, DataError> {
        self.decode()
    }

    /// The payload decoded as `T`.
    ///
    /// # Errors
    /// [`DataError::Decode`] when the payload does not fit `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DataError> {
        Ok(rmp_serde::from_slice(&self.data)?)
    }

    /// The whole event as one JSON object: `from`, `id`, `event`, `data`,
    /// `persist_id`, `reply_to`, `sent_ms` (absent values are `null`).
    ///
    /// # Errors
    /// [`DataError::Decode`] when the payload has no JSON form.
    pub fn to_json(&self) -> Result<serde_json::Value, DataError> {
        Ok(serde_json::json!({
            "from": self.from,
            "id": self.id,
            "event": self.event,
            "data": self.json()?,
            "persist_id": self.persist_id,
            "reply_to": self.reply_to,
            "sent_ms": self.sent_ms,
        }))
    }

    /// Replies to this event: sends `data` back to its sender, under the
    /// same event name, marked as the reply to this event's id. A
    /// [`Client::request`](crate::Client::request) on the other side gets it.
    ///
    /// # Errors
    /// [`SendError`] as for [`Client::send`](crate::Client::send);
    /// [`Unavailable::Closed`] once the client is gone.
    pub async fn reply(&self, data: impl ToData) -> Result<Ack, SendError> {
        let Some(replier) = self.replier.upgrade() else {
            return Err(Unavailable::Closed.into());
        };
        replier.reply(&self.deliver, data.to_data()?).await
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("from", &self.from)
            .field("id", &self.id)
            .field("event", &self.event)
            .field("data", &format_args!("{} bytes", self.data.len()))
            .field("persist_id", &self.persist_id)
            .field("reply_to", &self.reply_to)
            .field("sent_ms", &self.sent_ms)
            .finish()
    }
}

/// The stream of received events, from [`Client::connect`](crate::Client::connect).
///
/// Replies to this client's own requests go to those requests, not here.
/// Events wait in a bounded buffer until taken; while it is full, the
/// client stops reading and the router holds the rest back (its bounded
/// queue for this client fills, and senders get `congested`); replies to
/// requests wait behind it too, so keep reading while a request is out.
/// Dropping the stream discards what arrives.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Events {
        Events { rx }
    }

    /// The next event; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Polls for the next event (to adapt `Events` to a `Stream`).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// Replies to nothing: for events made in tests.
#[cfg(test)]
struct NoReplies;

#[cfg(test)]
impl Replier for NoReplies {
    fn reply<'a>(
        self: Arc<Self>,
        _: &'a Deliver,
        _: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Ack, SendError>> + std::marker::Send + 'a>> {
        Box::pin(async { Err(Unavailable::Closed.into()) })
    }
}

#[cfg(test)]
pub(crate) fn test_event(from: &str, id: u64, sent_ms: u64) -> Event {
    Event::new(
        Deliver {
            from: from.into(),
            id,
            event: "test".into(),
            data: Bytes::from_static(icom_protocol::NIL),
            persist_id: None,
            reply_to: None,
            sent_ms,
        },
        Weak::<NoReplies>::new(),
    )
}

//! The tasks of the commands that wait for the router: each sends, waits
//! for its answer on the extension's runtime, and reports it as a callback
//! (`ack`, or `reply` for a request) carrying the command's ticket.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use icom_client::{
    Ack, Client, Event, ForgetError, MsgPack, RequestError, SendError, SendOptions, Unavailable,
};
use icom_protocol::Target;
use tokio::sync::watch;

use crate::bridge::{self, Bounds};
use crate::callback::Callback;
use crate::link::Shared;

/// How long a command waits for a session that is still starting (loading
/// its config and certificates) before it fails.
const START_WAIT: Duration = Duration::from_secs(30);

/// The payload of a command: converted on the game thread when small, on
/// the runtime when large (so that the command still returns at once).
#[derive(Debug)]
pub(crate) enum Data {
    Ready(Bytes),
    Json(String),
}

impl Data {
    fn bytes(self, bounds: Bounds) -> Result<Bytes, String> {
        match self {
            Data::Ready(b) => Ok(b),
            Data::Json(text) => bridge::json_to_msgpack(&text, bounds)
                .map(Bytes::from)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Waits for the session's client (it may still be starting).
async fn client(mut rx: watch::Receiver<Option<Client>>) -> Result<Client, String> {
    let waited = tokio::time::timeout(START_WAIT, rx.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(client)) => client.clone().ok_or_else(|| "not connected".to_owned()),
        Ok(Err(_)) => Err("the connection could not start (see the error callback)".into()),
        Err(_) => Err(format!(
            "the connection did not start within {START_WAIT:?}"
        )),
    }
}

/// A send (`send`, `broadcast`, `send_to`): its ack becomes the `ack` callback.
pub(crate) async fn send(
    shared: Arc<Shared>,
    rx: watch::Receiver<Option<Client>>,
    ticket: u64,
    target: Target,
    event: String,
    data: Data,
    options: SendOptions,
) {
    let result = match (client(rx).await, data.bytes(shared.bounds)) {
        (Err(e), _) => Err(("unavailable", e)),
        (_, Err(e)) => Err(("invalid", e)),
        (Ok(client), Ok(bytes)) => {
            let size = bytes.len();
            let r = client
                .send_to(target.clone(), &event, MsgPack(bytes), options)
                .await;
            log_send(ticket, &event, &target, size, &r);
            Ok(r)
        }
    };
    shared.push(ack_callback(
        &shared,
        ticket,
        result.map_err(|(c, m)| (c.to_owned(), m)),
    ));
}

/// A reply to a received event.
pub(crate) async fn reply(shared: Arc<Shared>, ticket: u64, request: Event, data: Data) {
    let result = match data.bytes(shared.bounds) {
        Err(e) => Err(("invalid".to_owned(), e)),
        Ok(bytes) => {
            let size = bytes.len();
            let r = request.reply(MsgPack(bytes)).await;
            let target = Target::Server(request.from.clone());
            log_send(ticket, &request.event, &target, size, &r);
            Ok(r)
        }
    };
    shared.push(ack_callback(&shared, ticket, result));
}

/// A request: its reply, or why there is none, becomes the `reply` callback.
pub(crate) async fn request(
    shared: Arc<Shared>,
    rx: watch::Receiver<Option<Client>>,
    ticket: u64,
    server: String,
    event: String,
    data: Data,
    timeout: Duration,
) {
    let client = match client(rx).await {
        Ok(c) => c,
        Err(e) => return shared.push(Callback::reply_failed(ticket, "unavailable", &e)),
    };
    let bytes = match data.bytes(shared.bounds) {
        Ok(b) => b,
        Err(e) => return shared.push(Callback::reply_failed(ticket, "invalid", &e)),
    };
    let callback = match client
        .request(&server, &event, MsgPack(bytes), timeout)
        .await
    {
        Ok(reply) => match bridge::msgpack_to_json(&reply.data, shared.bounds) {
            Ok(json) => {
                tracing::info!(target: "icom::events", ticket, event = %event, from = %reply.from, bytes = reply.data.len(), "reply received");
                Callback::reply(ticket, &reply.from, &json)
            }
            Err(e) => Callback::reply_failed(ticket, "bad_data", &e.to_string()),
        },
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            let code = match &e {
                RequestError::Timeout(_) => "timeout".to_owned(),
                RequestError::ConnectionLost => "connection_lost".to_owned(),
                RequestError::PeerLeft(_) => "peer_left".to_owned(),
                RequestError::Send(send) => send_code(send),
            };
            tracing::warn!(target: "icom::events", ticket, event = %event, to = %server, code = %code, "request failed: {e}");
            Callback::reply_failed(ticket, &code, &e.to_string())
        }
    };
    shared.push(callback);
}

/// A forget: its ack becomes the `ack` callback.
pub(crate) async fn forget(
    shared: Arc<Shared>,
    rx: watch::Receiver<Option<Client>>,
    ticket: u64,
    persist_id: String,
) {
    let callback = match client(rx).await {
        Err(e) => Callback::ack_failed(ticket, "unavailable", &e),
        Ok(client) => match client.forget(&persist_id).await {
            Ok(ack) => {
                tracing::info!(target: "icom::events", ticket, persist_id = %persist_id, "forgotten");
                ack_of(ticket, &ack)
            }
            Err(ForgetError::Refused { ack, .. }) => ack_of(ticket, &ack),
            Err(e) => {
                let code = match &e {
                    ForgetError::Unavailable(_) => "unavailable",
                    ForgetError::Invalid(_) => "invalid",
                    ForgetError::ConnectionLost => "connection_lost",
                    ForgetError::AckTimeout(_) => "timeout",
                    _ => "failed",
                };
                Callback::ack_failed(ticket, code, &e.to_string())
            }
        },
    };
    shared.push(callback);
}

fn ack_callback(
    shared: &Shared,
    ticket: u64,
    result: Result<Result<Ack, SendError>, (String, String)>,
) -> Callback {
    match result {
        Ok(Ok(ack)) => {
            shared.sent.fetch_add(1, Ordering::Relaxed);
            ack_of(ticket, &ack)
        }
        Ok(Err(SendError::Refused { ack, .. })) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            ack_of(ticket, &ack)
        }
        Ok(Err(e)) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            Callback::ack_failed(ticket, &send_code(&e), &e.to_string())
        }
        Err((code, message)) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            Callback::ack_failed(ticket, &code, &message)
        }
    }
}

fn ack_of(ticket: u64, ack: &Ack) -> Callback {
    let error = ack
        .error
        .as_ref()
        .map(|e| (e.code.as_str(), e.message.as_str()));
    Callback::ack(
        ticket,
        ack.ok,
        ack.delivered,
        ack.queued,
        ack.persist_id.as_deref(),
        error,
    )
}

/// The `ack` error code of a send that got no ack from the router.
fn send_code(e: &SendError) -> String {
    match e {
        SendError::Unavailable(Unavailable::QueueTimeout(_)) | SendError::AckTimeout(_) => {
            "timeout"
        }
        SendError::Unavailable(_) => "unavailable",
        SendError::Data(_) | SendError::Invalid(_) => "invalid",
        SendError::TooLarge { .. } => "too_large",
        SendError::ConnectionLost => "connection_lost",
        SendError::Refused { code, .. } => code.as_str(),
    }
    .to_owned()
}

fn log_send(ticket: u64, event: &str, target: &Target, bytes: usize, r: &Result<Ack, SendError>) {
    match r {
        Ok(ack) => tracing::info!(
            target: "icom::events",
            ticket, event, to = ?target, bytes,
            delivered = ack.delivered, queued = ack.queued,
            "sent"
        ),
        Err(e) => tracing::warn!(
            target: "icom::events",
            ticket, event, to = ?target, bytes,
            "send failed: {e}"
        ),
    }
}

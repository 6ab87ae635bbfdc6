//! The send path: validate, encode once, pass the gate, open one stream
//! per event, and wait for the router's ack (and, for a request, register
//! the reply's waiter before the event leaves).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{
    validate_event_name, validate_persist_id, Ack, Deliver, Persist, Send, Target,
};

use crate::answer::Reply;
use crate::connection::Live;
use crate::core::{Core, WaitError, Waiter, ATTEMPTS};
use crate::error::{refusal, SendError};
use crate::event::Replier;

/// Options of [`Client::send_to`](crate::Client::send_to).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Store the event for servers that connect later (PROTOCOL.md §5).
    pub persist: Option<Persist>,
    /// Keep it this long for offline named recipients (at least 1 ms).
    pub ttl: Option<Duration>,
}

impl SendOptions {
    /// No persistence, no ttl.
    pub fn new() -> SendOptions {
        SendOptions::default()
    }

    /// Persist under this id; a later persistent send with the same id
    /// replaces it.
    pub fn persist(mut self, id: impl Into<String>) -> SendOptions {
        self.persist = Some(Persist::Id(id.into()));
        self
    }

    /// Persist under an id the router makes (returned in the ack).
    pub fn persist_auto(mut self) -> SendOptions {
        self.persist = Some(Persist::Auto);
        self
    }

    /// Keep the event this long for offline recipients.
    pub fn ttl(mut self, ttl: Duration) -> SendOptions {
        self.ttl = Some(ttl);
        self
    }
}

/// Sends an event and waits for its ack.
pub(crate) async fn send(
    core: &Arc<Core>,
    to: Target,
    event: &str,
    data: Bytes,
    options: &SendOptions,
    reply_to: Option<u64>,
) -> Result<Ack, SendError> {
    let (ack, _) = transmit(core, to, event, data, options, reply_to, false).await?;
    Ok(ack)
}

/// Sends an event, waits for its ack, and (if `want_reply`) returns a
/// waiter for the reply, registered before the event left.
pub(crate) async fn transmit(
    core: &Arc<Core>,
    to: Target,
    event: &str,
    data: Bytes,
    options: &SendOptions,
    reply_to: Option<u64>,
    want_reply: bool,
) -> Result<(Ack, Option<Waiter<Reply>>), SendError> {
    check(event, options)?;
    let timeout = core.ack_timeout;
    let _permit = core.window().await?;
    let id = core.next_id();
    // A request to one server fails at once if that server leaves.
    let peer = match (&to, want_reply) {
        (Target::Server(server), true) => Some(server.clone()),
        _ => None,
    };
    let bytes = encode(id, to, event, data, options, reply_to)?;
    for _ in 0..ATTEMPTS {
        let live = core.gate.get().await?;
        fits(&bytes, &live)?;
        let reply = if want_reply {
            let Some(waiter) = core.register::<Reply>(id, &live, peer.as_deref()) else {
                core.stale(&live);
                continue;
            };
            Some(waiter)
        } else {
            None
        };
        let Some(ack) = core.register::<Ack>(id, &live, None) else {
            core.stale(&live);
            continue;
        };
        match tokio::time::timeout(timeout, live.write_event(bytes.clone())).await {
            Err(_) => return Err(SendError::AckTimeout(timeout)),
            Ok(Err(_)) => {
                core.gone(&live);
                continue;
            }
            Ok(Ok(())) => {}
        }
        return match ack.wait(timeout).await {
            Ok(ack) if ack.ok => Ok((ack, reply)),
            Ok(ack) => {
                let (code, message, ack) = refusal(ack);
                Err(SendError::Refused { code, message, ack })
            }
            Err(WaitError::Lost) => Err(SendError::ConnectionLost),
            Err(WaitError::Timeout) => Err(SendError::AckTimeout(timeout)),
        };
    }
    Err(SendError::ConnectionLost)
}

/// A received event's reply goes out as any send does.
impl Replier for Core {
    fn reply<'a>(
        self: Arc<Self>,
        to: &'a Deliver,
        data: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<Ack, SendError>> + std::marker::Send + 'a>> {
        Box::pin(async move {
            let target = Target::Server(to.from.clone());
            send(
                &self,
                target,
                &to.event,
                data,
                &SendOptions::default(),
                Some(to.id),
            )
            .await
        })
    }
}

/// Checks what the router would refuse as `invalid` before anything is sent.
pub(crate) fn check(event: &str, options: &SendOptions) -> Result<(), SendError> {
    validate_event_name(event).map_err(|e| SendError::Invalid(e.to_string()))?;
    if let Some(Persist::Id(id)) = &options.persist {
        validate_persist_id(id).map_err(|e| SendError::Invalid(e.to_string()))?;
    }
    Ok(())
}

/// Checks an encoded send against the limit the router announced.
pub(crate) fn fits(bytes: &Bytes, live: &Live) -> Result<(), SendError> {
    let max = live.welcome.limits.max_event_bytes;
    if bytes.len() > max as usize {
        return Err(SendError::TooLarge {
            size: bytes.len(),
            max,
        });
    }
    Ok(())
}

/// Encodes a `send` as the whole content of its stream.
pub(crate) fn encode(
    id: u64,
    to: Target,
    event: &str,
    data: Bytes,
    options: &SendOptions,
    reply_to: Option<u64>,
) -> Result<Bytes, SendError> {
    let ttl_ms = options.ttl.map(ttl_ms).transpose()?;
    Ok(Bytes::from(
        Send {
            id,
            to,
            event: event.into(),
            data,
            persist: options.persist.clone(),
            ttl_ms,
            reply_to,
        }
        .encode(),
    ))
}

fn ttl_ms(ttl: Duration) -> Result<u32, SendError> {
    match u32::try_from(ttl.as_millis()) {
        Ok(0) => Err(SendError::Invalid("ttl must be at least 1 ms".into())),
        Ok(ms) => Ok(ms),
        Err(_) => Err(SendError::Invalid(format!(
            "ttl must be at most {} ms",
            u32::MAX
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_checked() {
        assert!(ttl_ms(Duration::ZERO).is_err());
        assert!(ttl_ms(Duration::from_micros(999)).is_err());
        assert_eq!(ttl_ms(Duration::from_secs(60)).unwrap(), 60_000);
        assert!(ttl_ms(Duration::from_secs(u64::from(u32::MAX))).is_err());
    }

    #[test]
    fn options_build() {
        let o = SendOptions::new()
            .persist("notice")
            .ttl(Duration::from_secs(5));
        assert_eq!(o.persist, Some(Persist::Id("notice".into())));
        assert_eq!(o.ttl, Some(Duration::from_secs(5)));
        assert_eq!(
            SendOptions::new().persist_auto().persist,
            Some(Persist::Auto)
        );
    }
}

//! The send path: validate, encode once, pass the gate, open one stream
//! per event, and wait for the router's ack (and, for a request, register
//! the reply's waiter before the event leaves).

use std::time::Duration;

use bytes::Bytes;
use icom_protocol::{validate_event_name, validate_persist_id, Ack, Persist, Send, Target};

use crate::client::{Core, ATTEMPTS};
use crate::connection::{Reply, WaitError, Waiter, ACKS, REPLIES};
use crate::error::{refusal, SendError, Unavailable};
use tokio::sync::OwnedSemaphorePermit;

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

impl Core {
    /// Sends an event and waits for its ack.
    pub(crate) async fn send(
        &self,
        to: Target,
        event: &str,
        data: Bytes,
        options: &SendOptions,
        reply_to: Option<u64>,
    ) -> Result<Ack, SendError> {
        let (ack, _) = self
            .transmit(to, event, data, options, reply_to, false)
            .await?;
        Ok(ack)
    }

    /// Sends an event, waits for its ack, and (if `want_reply`) returns a
    /// waiter for the reply, registered before the event left.
    pub(crate) async fn transmit(
        &self,
        to: Target,
        event: &str,
        data: Bytes,
        options: &SendOptions,
        reply_to: Option<u64>,
        want_reply: bool,
    ) -> Result<(Ack, Option<Waiter<Reply>>), SendError> {
        check(event, options)?;
        let timeout = self.ack_timeout;
        let _permit = self.window().await?;
        let id = self.ids.next();
        // A request to one server fails at once if that server leaves.
        let peer = match (&to, want_reply) {
            (Target::Server(server), true) => Some(server.clone()),
            _ => None,
        };
        let bytes = encode(id, to, event, data, options, reply_to)?;
        for _ in 0..ATTEMPTS {
            let live = self.gate.get().await?;
            let max = live.welcome.limits.max_event_bytes;
            if bytes.len() > max as usize {
                return Err(SendError::TooLarge {
                    size: bytes.len(),
                    max,
                });
            }
            let reply = if want_reply {
                let Some(waiter) = live.register(REPLIES, id, peer.as_deref()) else {
                    self.gone(&live);
                    continue;
                };
                Some(waiter)
            } else {
                None
            };
            let Some(ack) = live.register(ACKS, id, None) else {
                self.gone(&live);
                continue;
            };
            match tokio::time::timeout(timeout, live.write_event(bytes.clone())).await {
                Err(_) => return Err(SendError::AckTimeout(timeout)),
                Ok(Err(_)) => {
                    self.gone(&live);
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
}

impl Core {
    /// A place in the in-flight window (`max_in_flight`), waited for at
    /// most the ack timeout.
    pub(crate) async fn window(&self) -> Result<OwnedSemaphorePermit, SendError> {
        let timeout = self.ack_timeout;
        tokio::time::timeout(timeout, self.in_flight.clone().acquire_owned())
            .await
            .map_err(|_| SendError::AckTimeout(timeout))?
            .map_err(|_| Unavailable::Closed.into())
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

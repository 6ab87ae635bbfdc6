//! Pipelined sending: a [`Publisher`] puts each event on its way and
//! returns at once, without waiting for the router's ack; the acks come
//! back, as they arrive, through the [`Outcomes`] that came with it, each
//! with its event's id. For bursts, bridges and benchmarks that send many
//! events; [`Client::send`](crate::Client::send) is simpler when one at a
//! time will do.
//!
//! No task, channel or timer is made per event: every ack of a publisher
//! goes onto one channel. Events in flight share the client's window
//! (`max_in_flight`) with every other send: `publish` waits for room. An
//! event keeps its place in the window until its outcome is read, so read
//! the outcomes as you publish: unread, they stop the publisher (and every
//! other send) at the window, rather than piling up without bound.

use std::sync::Arc;

use icom_protocol::{Ack, Target};
use tokio::sync::mpsc;

use crate::answer::{Answered, Route};
use crate::core::{Core, ATTEMPTS};
use crate::data::ToData;
use crate::error::{refusal, SendError};
use crate::outbound::{check, encode, fits, SendOptions};

/// Sends events without waiting for their acks; see [`Client::publisher`](crate::Client::publisher).
/// Cloning is cheap: every clone's acks go to the same [`Outcomes`].
#[derive(Debug, Clone)]
pub struct Publisher {
    core: Arc<Core>,
    tx: mpsc::UnboundedSender<Answered<Ack>>,
}

/// The acks of a [`Publisher`]'s events, in the order they arrive.
#[derive(Debug)]
pub struct Outcomes {
    rx: mpsc::UnboundedReceiver<Answered<Ack>>,
}

/// What became of one published event.
#[derive(Debug)]
pub struct Published {
    /// The event's id, as [`Publisher::publish`] returned it.
    pub id: u64,
    /// Its ack when it is ok; otherwise the refusal
    /// ([`SendError::Refused`], with the ack) or the loss
    /// ([`SendError::ConnectionLost`]: the connection ended before the ack
    /// came, and the event may or may not have been routed).
    pub result: Result<Ack, SendError>,
}

impl Publisher {
    pub(crate) fn new(core: Arc<Core>) -> (Publisher, Outcomes) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Publisher { core, tx }, Outcomes { rx })
    }

    /// Sends `event` with `data` to `to`, and returns its id once its
    /// stream is written: its ack comes through [`Outcomes::next`]. Waits
    /// for the connection as the queue config says, and for room in the
    /// in-flight window.
    ///
    /// # Errors
    /// [`SendError`] when the event did not leave: invalid, too large, no
    /// connection, or no room in the window within the ack timeout.
    pub async fn publish(
        &self,
        to: &Target,
        event: &str,
        data: impl ToData,
        options: &SendOptions,
    ) -> Result<u64, SendError> {
        let core = &self.core;
        let data = data.to_data()?;
        check(event, options)?;
        let mut permit = core.window().await?;
        let id = core.next_id();
        let bytes = encode(id, to.clone(), event, data, options, None)?;
        let timeout = core.ack_timeout;
        for _ in 0..ATTEMPTS {
            let live = core.gate.get().await?;
            fits(&bytes, &live)?;
            let to = Route::Stream {
                id,
                tx: self.tx.clone(),
                permit,
            };
            if let Err(to) = core.expect::<Ack>(id, &live, None, to) {
                permit = take_permit(to)?;
                core.stale(&live);
                continue;
            }
            match tokio::time::timeout(timeout, live.write_event(bytes.clone())).await {
                Ok(Ok(())) => return Ok(id),
                Err(_) => {
                    let _ = core.unexpect::<Ack>(id);
                    return Err(SendError::AckTimeout(timeout));
                }
                Ok(Err(_)) => {
                    // Nothing reached the router: try the next connection.
                    let Some(to) = core.unexpect::<Ack>(id) else {
                        // The connection went, and told the outcomes.
                        return Ok(id);
                    };
                    permit = take_permit(to)?;
                    core.gone(&live);
                }
            }
        }
        Err(SendError::ConnectionLost)
    }
}

/// The window place back from an answer route that was not used.
fn take_permit(to: Route<Ack>) -> Result<tokio::sync::OwnedSemaphorePermit, SendError> {
    match to {
        Route::Stream { permit, .. } => Ok(permit),
        Route::Once(_) => Err(SendError::ConnectionLost),
    }
}

impl Outcomes {
    /// The next ack (or loss) of a published event. Waits for it as long
    /// as it takes: the router acks every send, and a connection that
    /// dies fails what it carried; wrap it in a timeout to bound the wait.
    /// `None` once the client and every publisher are gone.
    pub async fn next(&mut self) -> Option<Published> {
        self.rx.recv().await.map(outcome)
    }

    /// Moves the outcomes that are ready, at most `limit`, into `out`,
    /// waiting for one if none is; returns how many (0 once the client
    /// and every publisher are gone).
    pub async fn next_many(&mut self, out: &mut Vec<Published>, limit: usize) -> usize {
        let mut raw = Vec::with_capacity(limit.min(1024));
        let n = self.rx.recv_many(&mut raw, limit).await;
        out.extend(raw.into_iter().map(outcome));
        n
    }
}

/// Reads an answer; its place in the window is given back here.
fn outcome((id, ack, _place): Answered<Ack>) -> Published {
    let result = match ack {
        Some(ack) if ack.ok => Ok(ack),
        Some(ack) => {
            let (code, message, ack) = refusal(ack);
            Err(SendError::Refused { code, message, ack })
        }
        None => Err(SendError::ConnectionLost),
    };
    Published { id, result }
}

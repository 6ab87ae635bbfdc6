//! The control stream, router → client: acks, pongs, rosters, presence and
//! `replayed`, each handed to whoever waits for it.

use std::sync::Arc;

use icom_protocol::{CloseCode, Control};
use tokio::sync::oneshot;

use crate::connection::{FrameError, FrameReader, Live};
use crate::core::Core;

/// Reads control frames until the connection ends. `replayed` gets the
/// count of the router's `replayed`.
pub(crate) async fn run(
    core: Arc<Core>,
    live: Arc<Live>,
    mut reader: FrameReader,
    replayed: oneshot::Sender<u32>,
) {
    let mut replayed = Some(replayed);
    loop {
        match reader.next().await {
            Ok(Control::Ack(ack)) => {
                let id = ack.id;
                if core.answer(id, ack).is_err() {
                    tracing::debug!(id, "ack for nothing that waits (timed out, or id 0)");
                }
            }
            Ok(Control::Pong(pong)) => {
                let _ = core.answer(pong.nonce, ());
            }
            Ok(Control::Roster(roster)) => {
                let _ = core.answer(roster.id, roster);
            }
            Ok(Control::Presence(p)) => {
                tracing::debug!(server_id = %p.server_id, online = p.online, "presence");
                core.presence(&live, &p);
            }
            Ok(Control::Replayed(r)) => {
                if let Some(tx) = replayed.take() {
                    let _ = tx.send(r.count);
                }
            }
            Ok(other) => {
                tracing::debug!(
                    message = other.name(),
                    "ignoring an unexpected control message"
                );
            }
            Err(FrameError::Protocol(e)) => {
                tracing::warn!(error = %e, "the router broke the control stream framing");
                live.close(CloseCode::Protocol);
                return;
            }
            Err(FrameError::Closed(e)) => {
                if live.conn.close_reason().is_none() {
                    tracing::warn!(error = %e, "the router ended the control stream");
                    live.close(CloseCode::Normal);
                }
                return;
            }
        }
    }
}

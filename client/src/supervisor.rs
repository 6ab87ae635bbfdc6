//! Staying connected: serve the live connection until it ends, report why,
//! wait (exponential backoff with full jitter, or a long wait after
//! `REPLACED`), connect again; until the client is closed.

use std::sync::Arc;
use std::time::Duration;

use icom_protocol::CloseCode;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::ms;
use crate::connection::{FrameReader, Live};
use crate::core::Core;
use crate::event::Event;
use crate::loss::Loss;
use crate::state::State;
use crate::{control, inbound};

/// Makes a welcomed connection the live one: operations go on, and the
/// state says so.
pub(crate) fn publish(core: &Core, live: &Arc<Live>) {
    core.up(live);
    tracing::info!(
        server_id = %live.welcome.server_id,
        session_id = %live.welcome.session_id,
        "connected to the router"
    );
    core.state.set(State::Connected {
        server_id: live.welcome.server_id.clone(),
        session_id: live.welcome.session_id.clone(),
    });
}

/// Runs until the client is closed. `first` is the connection `connect`
/// made and published, if any.
pub(crate) async fn run(
    core: Arc<Core>,
    first: Option<(Arc<Live>, FrameReader)>,
    events: mpsc::Sender<Event>,
) {
    let mut backoff = Backoff::new(core.cfg.backoff());
    let mut next = first;
    loop {
        let mut waited = false;
        if let Some((live, reader)) = next.take() {
            backoff.connected();
            let Some(loss) = serve(&core, live, reader, &events).await else {
                break;
            };
            backoff.disconnected();
            tracing::warn!(reason = %loss, "disconnected from the router");
            if loss == Loss::Replaced {
                let retry_in = ms(core.cfg.reconnect.replaced_delay_ms);
                core.state.set(State::Replaced { retry_in });
                if !sleep(&core, retry_in).await {
                    break;
                }
                waited = true;
            } else if loss.is_refusal() {
                core.state.set(State::Refused {
                    reason: loss.to_string(),
                });
            } else {
                core.state.set(State::Disconnected {
                    reason: loss.to_string(),
                });
            }
        }
        if !waited {
            let delay = backoff.next_delay();
            core.state.set(State::Reconnecting {
                attempt: backoff.attempt(),
                delay,
            });
            if !sleep(&core, delay).await {
                break;
            }
        }
        let attempt = tokio::select! {
            () = core.shutdown.cancelled() => break,
            attempt = core.establish() => attempt,
        };
        match attempt {
            Ok(pair) => {
                publish(&core, &pair.0);
                next = Some(pair);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reconnect failed");
                let reason = e.to_string();
                core.state.set(if e.is_refused() {
                    State::Refused { reason }
                } else {
                    State::Disconnected { reason }
                });
            }
        }
    }
    core.closed();
    core.state.set(State::Closed);
}

/// Serves one connection until it ends (`Some(why)`) or the client is
/// closed (`None`).
async fn serve(
    core: &Arc<Core>,
    live: Arc<Live>,
    reader: FrameReader,
    events: &mpsc::Sender<Event>,
) -> Option<Loss> {
    let span = tracing::info_span!(
        "connection",
        server_id = %live.welcome.server_id,
        remote = %live.conn.remote_address(),
    );
    let (replayed_tx, replayed_rx) = oneshot::channel();
    let control = control::run(core.clone(), live.clone(), reader, replayed_tx);
    tokio::spawn(control.instrument(span.clone()));
    let inbound = inbound::run(core.clone(), live.clone(), events.clone(), replayed_rx);
    tokio::spawn(inbound.instrument(span));
    let loss = tokio::select! {
        () = core.shutdown.cancelled() => {
            live.close(CloseCode::Normal);
            None
        }
        e = live.conn.closed() => Some(Loss::of(&e)),
    };
    core.gone(&live);
    loss
}

/// Sleeps, unless the client is closed first (then false).
async fn sleep(core: &Core, delay: Duration) -> bool {
    tokio::select! {
        () = core.shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

//! Staying connected: serve the live connection until it ends, report why,
//! move on to the next router of the list, and connect again; until the
//! client is closed. A lost connection or a failed attempt moves on to
//! the next router at once; once every router of a round has failed, the
//! backoff (exponential, full jitter) waits before the next round. After
//! `REPLACED` the client waits long and tries the same router again.

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
use crate::routers::Rotation;
use crate::state::State;
use crate::{control, inbound};

/// A connection `connect` made: the index of its router, the connection,
/// and its control stream.
pub(crate) type First = (usize, Arc<Live>, FrameReader);

/// Makes a welcomed connection the live one: operations go on, and the
/// state says so.
pub(crate) fn publish(core: &Core, live: &Arc<Live>) {
    core.up(live);
    tracing::info!(
        server_id = %live.welcome.server_id,
        session_id = %live.welcome.session_id,
        router = %live.router,
        "connected to the router"
    );
    core.state.set(State::Connected {
        server_id: live.welcome.server_id.clone(),
        session_id: live.welcome.session_id.clone(),
        router: live.router.clone(),
    });
}

/// Runs until the client is closed. `first` is the connection `connect`
/// made and published, if any.
pub(crate) async fn run(core: Arc<Core>, first: Option<First>, events: mpsc::Sender<Event>) {
    let mut backoff = Backoff::new(core.cfg.backoff());
    let mut rotation = Rotation::new(core.routers.len());
    // Attempts since the last healthy connection.
    let mut attempts: u32 = 0;
    let mut next = first.map(|(index, live, reader)| {
        rotation.connected(index);
        (live, reader)
    });
    loop {
        if let Some((live, reader)) = next.take() {
            backoff.connected();
            let Some(loss) = serve(&core, live.clone(), reader, &events).await else {
                break;
            };
            if backoff.disconnected() {
                attempts = 0;
            }
            let router = live.router.clone();
            tracing::warn!(reason = %loss, router = %router, "disconnected from the router");
            if loss == Loss::Replaced {
                let retry_in = ms(core.cfg.reconnect.replaced_delay_ms);
                core.state.set(State::Replaced { retry_in, router });
                if !sleep(&core, retry_in).await {
                    break;
                }
                rotation.again();
            } else {
                failed(&core, &loss, router);
                rotation.failed();
            }
        }
        let mut delay = Duration::ZERO;
        if rotation.round_over() {
            delay = backoff.next_delay();
            rotation.new_round();
        }
        let index = rotation.current();
        let router = core.routers.get(index).to_owned();
        attempts = attempts.saturating_add(1);
        core.state.set(State::Reconnecting {
            attempt: attempts,
            delay,
            router: router.clone(),
        });
        if !sleep(&core, delay).await {
            break;
        }
        let attempt = tokio::select! {
            () = core.shutdown.cancelled() => break,
            attempt = core.establish(index) => attempt,
        };
        match attempt {
            Ok(pair) => {
                publish(&core, &pair.0);
                rotation.connected(index);
                next = Some(pair);
            }
            Err(e) => {
                tracing::warn!(error = %e, router = %router, "reconnect failed");
                let reason = e.to_string();
                core.state.set(if e.is_refused() {
                    State::Refused { reason, router }
                } else {
                    State::Disconnected {
                        reason,
                        router: Some(router),
                    }
                });
                rotation.failed();
            }
        }
    }
    core.closed();
    core.state.set(State::Closed);
}

/// Reports a lost connection (not `REPLACED`).
fn failed(core: &Core, loss: &Loss, router: String) {
    let reason = loss.to_string();
    core.state.set(if loss.is_refusal() {
        State::Refused { reason, router }
    } else {
        State::Disconnected {
            reason,
            router: Some(router),
        }
    });
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
        router = %live.router,
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

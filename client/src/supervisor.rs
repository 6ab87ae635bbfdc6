//! Staying connected: serve the live connection until it ends, report why,
//! move on to the next router of the list, and connect again; until the
//! client is closed. A lost connection or a failed attempt moves on to
//! the next router at once; once every router of a round has failed, the
//! backoff (exponential, full jitter) waits before the next round. After
//! `REPLACED` the client waits long and tries the same router again. On a
//! router that is not the first of the list, it moves back to an earlier
//! one once that one answers again (`crate::homing`).

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
use crate::{control, homing, inbound};

/// A connection `connect` made: the index of its router, the connection,
/// and its control stream.
pub(crate) type First = (usize, Arc<Live>, FrameReader);

/// Makes a welcomed connection the live one: operations go on, and the
/// state says so.
pub(crate) fn publish(core: &Core, live: &Arc<Live>) {
    core.up(live);
    report(core, live);
}

/// Says that `live` is the connection in use: the log, and the state.
fn report(core: &Core, live: &Live) {
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
        (index, live, reader)
    });
    loop {
        if let Some((index, live, reader)) = next.take() {
            backoff.connected();
            let loss = match serve(&core, index, live.clone(), reader, &events).await {
                Served::Closed => break,
                Served::Moved((index, live, reader)) => {
                    report(&core, &live);
                    rotation.connected(index);
                    next = Some((index, live, reader));
                    continue;
                }
                Served::Lost(loss) => loss,
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
            Ok((live, reader)) => {
                publish(&core, &live);
                rotation.connected(index);
                next = Some((index, live, reader));
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

/// How serving one connection ended.
enum Served {
    /// The connection ended.
    Lost(Loss),
    /// The client moved to a router earlier in the list, over this
    /// connection (published); the old one ends by itself.
    Moved(homing::Moved),
    /// The client was closed.
    Closed,
}

/// Serves one connection, to router `index`, until it ends, the client
/// moves back to a router earlier in the list, or the client is closed.
async fn serve(
    core: &Arc<Core>,
    index: usize,
    live: Arc<Live>,
    reader: FrameReader,
    events: &mpsc::Sender<Event>,
) -> Served {
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
    let back = homing::back(core, index, &live);
    tokio::pin!(back);
    let served = tokio::select! {
        () = core.shutdown.cancelled() => {
            live.close(CloseCode::Normal);
            Served::Closed
        }
        e = live.conn.closed() => match homing::finish(core, &live, back.as_mut()).await {
            Some(moved) => return Served::Moved(moved),
            None => Served::Lost(homing::loss_of(&live, &e)),
        },
        moved = &mut back => return Served::Moved(moved),
    };
    core.gone(&live);
    served
}

/// Sleeps, unless the client is closed first (then false).
async fn sleep(core: &Core, delay: Duration) -> bool {
    tokio::select! {
        () = core.shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

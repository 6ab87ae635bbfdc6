//! Presence in batches: the table records who came and went, and this task
//! sends the changes, in order, to every client every
//! `limits.presence_batch_ms` (while something changed), as one buffer per
//! client. A mass join of N servers then costs each client one write (and
//! one wake-up of its writer) per batch, not one per join.
//! docs/PROTOCOL.md §3.2 says what a client may rely on.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// Sends presence batches until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shared.table.changed() => {}
            () = shutdown.cancelled() => return,
        }
        let window = shared.config().limits.presence_batch;
        if !window.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                () = shutdown.cancelled() => return,
            }
        }
        let sent = shared.table.send_presence();
        if sent > 0 {
            shared.metrics.presence_batches.inc();
            shared.metrics.presence_messages.inc_by(sent);
        }
    }
}

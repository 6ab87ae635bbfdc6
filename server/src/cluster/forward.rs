//! One event for some servers of another router: a NATS request to its
//! `deliver` subject, and what became of each recipient.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;

use super::wire::{self, Outcome};
use crate::metrics::{ClusterMetrics, Reason};
use crate::space::Reached;

/// One request to `router` (at `subject`) with `ids`; what became of each
/// (`Err`: it moved to that router).
pub(super) async fn forward_to(
    client: &Client,
    metrics: &ClusterMetrics,
    (router, subject): (&str, String),
    timeout: Duration,
    ids: &[Arc<str>],
    wire: &Bytes,
) -> Vec<Result<Reached, String>> {
    let body = wire::encode_forward(ids.iter().map(|i| &**i), wire);
    let unreachable = |why: String| vec![Ok(Reached::Unreachable(why)); ids.len()];
    metrics.forwarded.inc();
    let failed = |kind: &str| {
        metrics
            .forward_failures
            .get_or_create(&Reason {
                reason: kind.to_owned(),
            })
            .inc();
    };
    match client.request(subject, body).await {
        Ok(msg) => match wire::decode_outcomes(msg.payload, ids.len()) {
            Ok(outcomes) => outcomes
                .into_iter()
                .map(|o| match o {
                    Outcome::Delivered => Ok(Reached::Delivered),
                    Outcome::Congested => Ok(Reached::Congested),
                    Outcome::NotFound => Ok(Reached::NotFound),
                    Outcome::Moved(to) => Err(to),
                })
                .collect(),
            Err(e) => {
                failed("error");
                unreachable(format!("router '{router}' answered badly: {e}"))
            }
        },
        Err(e) => match e.kind() {
            // Nobody listens on its subject: it is reconnecting to
            // NATS, or dead and not yet timed out. Either way it
            // cannot be asked now.
            RequestErrorKind::NoResponders => {
                failed("no_router");
                unreachable(format!("router '{router}' is not listening on NATS"))
            }
            RequestErrorKind::TimedOut => {
                failed("timeout");
                unreachable(format!(
                    "router '{router}' did not answer within {} ms",
                    timeout.as_millis()
                ))
            }
            _ => {
                failed("error");
                unreachable(format!("router '{router}' could not be asked: {e}"))
            }
        },
    }
}

//! The JetStream stream of the cluster's store: its name, its byte
//! limit, the NATS versions that can hold it, and what a failure to
//! create it means.

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};

use super::ClusterError;

/// The oldest NATS server with per-message TTL.
const MIN_NATS: (u64, u64) = (2, 11);

/// The stream's name for a subject prefix.
pub(crate) fn stream_name(prefix: &str) -> String {
    format!("{}_store", prefix.replace('.', "_"))
}

/// The stream's own byte limit for a store bound of `max_bytes`.
pub(crate) fn stream_bytes(max_bytes: usize) -> usize {
    max_bytes
        .saturating_add(max_bytes / 4)
        .saturating_add(16 << 20)
}

/// Whether NATS `version` has per-message TTL.
///
/// # Errors
/// Says which version is needed.
pub(crate) fn check_version(version: &str) -> Result<(), String> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    match (major, minor) {
        (Some(ma), Some(mi)) if (ma, mi) >= MIN_NATS => Ok(()),
        _ => Err(format!(
            "NATS server {version:?} is too old for the cluster's store: ICOM needs \
             nats-server {}.{} or newer (per-message TTL for expiring events)",
            MIN_NATS.0, MIN_NATS.1
        )),
    }
}

/// The error of creating stream `stream` (or updating it), with a hint at
/// what to change; a timeout may pass, anything else is lasting.
pub(crate) fn create_error(e: &CreateStreamError, stream: &str, replicas: usize) -> ClusterError {
    let text = e.to_string();
    let hint = if text.contains("insufficient resources") || text.contains("replicas") {
        format!(
            " (cluster.store_replicas = {replicas}: NATS needs at least that many JetStream nodes)"
        )
    } else if ["not enabled", "no responders", "unavailable"]
        .iter()
        .any(|m| text.contains(m))
    {
        " (is JetStream enabled on the NATS servers?)".to_owned()
    } else {
        String::new()
    };
    let message = format!("creating the stream {stream}: {text}{hint}");
    if e.kind() == CreateStreamErrorKind::TimedOut {
        ClusterError::passing(message)
    } else {
        ClusterError::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_2_11_are_refused() {
        for ok in ["2.11.0", "2.15.1", "v2.12.0-beta.1", "3.0.0"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for old in ["2.10.22", "2.9.10", "", "x.y"] {
            let e = check_version(old).unwrap_err();
            assert!(e.contains("2.11 or newer"), "{e}");
        }
        assert_eq!(stream_name("community.eu"), "community_eu_store");
    }

    #[test]
    fn only_a_timeout_creating_the_stream_may_pass() {
        let e = create_error(
            &CreateStreamError::new(CreateStreamErrorKind::TimedOut),
            "icom_store",
            3,
        );
        assert!(!e.is_lasting(), "{e}");
        assert!(
            e.to_string().contains("creating the stream icom_store"),
            "{e}"
        );
        let e = create_error(
            &CreateStreamError::new(CreateStreamErrorKind::JetStreamUnavailable),
            "icom_store",
            3,
        );
        assert!(e.is_lasting(), "{e}");
        assert!(e.to_string().contains("is JetStream enabled"), "{e}");
        // Lasting whatever its text says: the kind decides, not the words.
        let e = ClusterError::new("the request timed out, and will again");
        assert!(e.is_lasting());
    }
}

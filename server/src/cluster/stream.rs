//! The JetStream stream of the cluster's store: its name, its byte
//! limit, and the NATS versions that can hold it.

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
}
